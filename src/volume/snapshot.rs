//! How a snapshot is written on its LUN: a partition of its own, which no
//! node ever stages (nodes look volumes up by their types, and these are
//! not volume types), so it is read-only by construction.
//!
//! - The partition type says pending (being copied) or ready, and what the
//!   copy holds: a filesystem with global or local heartbeat, or raw block.
//!   The attribute bits hold the source's geometry, as a volume's do.
//! - The first MiB is the snapshot's header: block 0 names the snapshot's
//!   source volume and the moment it was cut (ListSnapshots reports both).
//!   It is written after the copy and before the table marks the snapshot
//!   ready.
//! - The source's bytes follow, as they lay in the source volume: the
//!   *image*. It starts 1 MiB in, so `blkid`, udev and mount, which look for
//!   a filesystem at a partition's start, never find one in a snapshot.
//! - The unique GUID derives from the snapshot's name in a namespace of its
//!   own, so a snapshot and a volume of the same name never collide.

use super::entry::{attributes, gpt_name, layout_from, Content, Placement, State, VolumeEntry};
use super::extents::Extent;
use crate::disk::gpt::{Gpt, Partition};
use crate::disk::lun_io::BlockIo;
use crate::ocfs2::layout::{HeartbeatMode, Layout, MIB};
use std::io;
use uuid::Uuid;

pub const TYPE_SNAPSHOT_PENDING_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d1");
pub const TYPE_SNAPSHOT_PENDING_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d2");
pub const TYPE_SNAPSHOT_PENDING_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d3");
pub const TYPE_SNAPSHOT_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d4");
pub const TYPE_SNAPSHOT_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d5");
pub const TYPE_SNAPSHOT_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932d6");

/// The header's space in front of the image.
pub const HEADER_BYTES: u64 = MIB;
/// The part of the header that holds anything (one block of every sector
/// size we support).
const HEADER_BLOCK: usize = 4096;
const MAGIC: &[u8; 16] = b"OCFS2CSI-SNAPSH\0";
const VERSION: u32 = 1;

/// A snapshot as read from its GPT entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub number: u32,
    pub guid: Uuid,
    /// The snapshot's name as far as GPT's 36 characters hold it.
    pub name: String,
    /// Pending (being copied) or Ready.
    pub state: State,
    pub content: Content,
    pub heartbeat: HeartbeatMode,
    pub layout: Layout,
    /// The partition's offset on the LUN: where the header starts.
    pub offset: u64,
    /// The partition's bytes: the header and the image.
    pub size: u64,
}

impl SnapshotEntry {
    /// The source's bytes as a volume of their own, for the copy engine
    /// and the filesystem tools: one extent, past the header.
    pub fn image(&self) -> VolumeEntry {
        let extent = Extent {
            offset: self.offset + HEADER_BYTES,
            size: self.size - HEADER_BYTES,
        };
        VolumeEntry {
            number: self.number,
            guid: self.guid,
            name: self.name.clone(),
            state: self.state,
            content: self.content,
            heartbeat: self.heartbeat,
            layout: self.layout.clone(),
            offset: extent.offset,
            size: extent.size,
            extents: vec![extent],
        }
    }

    /// What the snapshot restores: its image's usable bytes, which are the
    /// source's when it was cut.
    pub fn usable_bytes(&self) -> u64 {
        self.image().usable_bytes()
    }

    /// The type of this snapshot's entry once ready.
    pub fn ready_type(&self) -> Uuid {
        snapshot_type(State::Ready, self.content, self.heartbeat)
    }
}

/// The partition bytes of a snapshot of `source`.
pub fn partition_bytes(source: &VolumeEntry) -> u64 {
    HEADER_BYTES + source.size
}

/// The pending entry of a snapshot of `source` at `at`.
pub fn pending_partition(at: Placement, guid: Uuid, name: &str, source: &VolumeEntry) -> Partition {
    Partition {
        number: at.number,
        type_guid: snapshot_type(State::Pending, source.content, source.heartbeat),
        unique_guid: guid,
        first_lba: at.first_lba,
        last_lba: at.last_lba,
        attributes: match source.content {
            Content::Ocfs2 => attributes(&source.layout),
            Content::Block => 0,
        },
        name: gpt_name(name),
    }
}

fn snapshot_type(state: State, content: Content, heartbeat: HeartbeatMode) -> Uuid {
    use {Content::*, HeartbeatMode::*};
    let ready = state != State::Pending;
    match (ready, content, heartbeat) {
        (false, Ocfs2, Global) => TYPE_SNAPSHOT_PENDING_GLOBAL,
        (false, Ocfs2, Local) => TYPE_SNAPSHOT_PENDING_LOCAL,
        (false, Block, _) => TYPE_SNAPSHOT_PENDING_BLOCK,
        (true, Ocfs2, Global) => TYPE_SNAPSHOT_GLOBAL,
        (true, Ocfs2, Local) => TYPE_SNAPSHOT_LOCAL,
        (true, Block, _) => TYPE_SNAPSHOT_BLOCK,
    }
}

/// The snapshot in entry `p`, or None for anything else.
pub fn snapshot_entry(p: &Partition, sector_size: u64) -> Option<SnapshotEntry> {
    use {Content::*, HeartbeatMode::*};
    let (state, content, heartbeat) = match p.type_guid {
        TYPE_SNAPSHOT_PENDING_GLOBAL => (State::Pending, Ocfs2, Global),
        TYPE_SNAPSHOT_PENDING_LOCAL => (State::Pending, Ocfs2, Local),
        TYPE_SNAPSHOT_PENDING_BLOCK => (State::Pending, Block, Global),
        TYPE_SNAPSHOT_GLOBAL => (State::Ready, Ocfs2, Global),
        TYPE_SNAPSHOT_LOCAL => (State::Ready, Ocfs2, Local),
        TYPE_SNAPSHOT_BLOCK => (State::Ready, Block, Global),
        _ => return None,
    };
    let size = p.size_sectors() * sector_size;
    // A snapshot holds its header and at least a MiB of image.
    if size <= HEADER_BYTES {
        return None;
    }
    Some(SnapshotEntry {
        number: p.number,
        guid: p.unique_guid,
        name: p.name.clone(),
        state,
        content,
        heartbeat,
        layout: layout_from(p.attributes),
        offset: p.first_lba * sector_size,
        size,
    })
}

/// Every snapshot of `table`, in partition order.
pub fn snapshots(table: &Gpt) -> Vec<SnapshotEntry> {
    table
        .partitions
        .iter()
        .filter_map(|p| snapshot_entry(p, table.sector_size))
        .collect()
}

/// What a snapshot's header records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The partition GUID of the source volume (its LUN is the snapshot's).
    pub source: Uuid,
    /// When the copy began, in seconds and nanoseconds since the epoch.
    pub created_secs: i64,
    pub created_nanos: i32,
}

impl Header {
    /// The header of a copy of `source` that began at `began`.
    pub fn new(source: Uuid, began: std::time::SystemTime) -> Header {
        let since = began
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Header {
            source,
            created_secs: since.as_secs() as i64,
            created_nanos: since.subsec_nanos() as i32,
        }
    }

    fn encode(&self, guid: &Uuid) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BLOCK];
        b[..16].copy_from_slice(MAGIC);
        b[16..20].copy_from_slice(&VERSION.to_le_bytes());
        b[24..40].copy_from_slice(guid.as_bytes());
        b[40..56].copy_from_slice(self.source.as_bytes());
        b[56..64].copy_from_slice(&self.created_secs.to_le_bytes());
        b[64..68].copy_from_slice(&self.created_nanos.to_le_bytes());
        let crc = crc32fast::hash(&b[..68]);
        b[68..72].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header of snapshot `guid` in `b`, if `b` is one: its magic,
    /// version, checksum and GUID must all match.
    fn decode(b: &[u8], guid: &Uuid) -> Option<Header> {
        let b = b.get(..72)?;
        let field = |r: std::ops::Range<usize>| b[r].to_vec();
        if &b[..16] != MAGIC
            || u32::from_le_bytes(b[16..20].try_into().ok()?) != VERSION
            || u32::from_le_bytes(b[68..72].try_into().ok()?) != crc32fast::hash(&b[..68])
            || field(24..40) != guid.as_bytes()
        {
            return None;
        }
        Some(Header {
            source: Uuid::from_slice(&b[40..56]).ok()?,
            created_secs: i64::from_le_bytes(b[56..64].try_into().ok()?),
            created_nanos: i32::from_le_bytes(b[64..68].try_into().ok()?),
        })
    }
}

/// Writes the header of snapshot `e` durably.
pub fn write_header(io: &dyn BlockIo, e: &SnapshotEntry, header: &Header) -> io::Result<()> {
    io.write_at(e.offset, &header.encode(&e.guid))?;
    io.sync()
}

/// Zeroes the header of snapshot `e` durably: what it recorded is gone
/// before its entry is.
pub fn clear_header(io: &dyn BlockIo, e: &SnapshotEntry) -> io::Result<()> {
    io.write_at(e.offset, &[0u8; HEADER_BLOCK])?;
    io.sync()
}

/// The header of snapshot `e`, or None when it holds none (a pending
/// snapshot, or one whose header was lost).
pub fn read_header(io: &dyn BlockIo, e: &SnapshotEntry) -> io::Result<Option<Header>> {
    let mut b = vec![0u8; HEADER_BLOCK];
    io.read_at(e.offset, &mut b)?;
    Ok(Header::decode(&b, &e.guid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::MemIo;
    use crate::volume::entry::{block_partition, volume_entry, volume_partition};

    fn source(content: Content, hb: HeartbeatMode) -> VolumeEntry {
        let at = Placement {
            number: 2,
            first_lba: 2048,
            last_lba: 2048 + 64 * 2048 - 1,
        };
        let layout = Layout::for_size(60 * MIB, 4, None, None, None);
        let p = match content {
            Content::Ocfs2 => volume_partition(at, Uuid::nil(), "src", State::Ready, hb, &layout),
            Content::Block => block_partition(at, Uuid::nil(), "src", State::Ready),
        };
        volume_entry(&p, 512).unwrap()
    }

    #[test]
    fn a_snapshot_keeps_its_source_kind_and_is_no_volume() {
        let mut types = std::collections::HashSet::new();
        for (content, hb) in [
            (Content::Ocfs2, HeartbeatMode::Global),
            (Content::Ocfs2, HeartbeatMode::Local),
            (Content::Block, HeartbeatMode::Global),
        ] {
            let src = source(content, hb);
            let bytes = partition_bytes(&src);
            let at = Placement {
                number: 9,
                first_lba: 1 << 20,
                last_lba: (1 << 20) + bytes / 512 - 1,
            };
            let guid = Uuid::new_v4();
            let mut p = pending_partition(at, guid, "snap", &src);
            assert!(volume_entry(&p, 512).is_none(), "nodes must never find it");
            let e = snapshot_entry(&p, 512).unwrap();
            assert_eq!(e.state, State::Pending);
            assert!(types.insert(p.type_guid));
            p.type_guid = e.ready_type();
            assert!(types.insert(p.type_guid));
            let e = snapshot_entry(&p, 512).unwrap();
            assert_eq!(
                (e.state, e.content, e.heartbeat),
                (State::Ready, content, hb)
            );
            assert_eq!(e.layout, src.layout);
            // The image is the source's bytes, 1 MiB in.
            let image = e.image();
            assert_eq!(image.size, src.size);
            assert_eq!(image.offset, e.offset + HEADER_BYTES);
            assert_eq!(image.usable_bytes(), src.usable_bytes());
            assert_eq!(e.usable_bytes(), src.usable_bytes());
        }
    }

    #[test]
    fn the_header_round_trips_and_names_its_own_snapshot() {
        let io = MemIo::new(4096, 8 * MIB);
        let p = pending_partition(
            Placement {
                number: 3,
                first_lba: 256,
                last_lba: 1023,
            },
            Uuid::new_v4(),
            "s",
            &source(Content::Block, HeartbeatMode::Global),
        );
        let e = snapshot_entry(&p, 4096).unwrap();
        assert_eq!(read_header(&io, &e).unwrap(), None);
        let h = Header {
            source: Uuid::new_v4(),
            created_secs: 1_765_000_000,
            created_nanos: 123,
        };
        write_header(&io, &e, &h).unwrap();
        assert_eq!(read_header(&io, &e).unwrap(), Some(h.clone()));
        // Another snapshot's header in its place is none of this one's.
        let other = SnapshotEntry {
            guid: Uuid::new_v4(),
            ..e.clone()
        };
        assert_eq!(read_header(&io, &other).unwrap(), None);
        // A flipped bit is caught.
        let mut b = vec![0u8; 4096];
        io.read_at(e.offset, &mut b).unwrap();
        b[60] ^= 1;
        io.write_at(e.offset, &b).unwrap();
        assert_eq!(read_header(&io, &e).unwrap(), None);
    }
}
