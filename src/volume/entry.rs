//! How a volume is written into the GPT, the source of truth for which
//! volumes exist.
//!
//! - The partition type says what the partition is: the LUN's heartbeat
//!   device, an OCFS2 volume with global or local heartbeat, or a raw block
//!   volume; each still being created (mkfs or zeroing not confirmed),
//!   ready, ready and being copied by a clone, or being deleted.
//! - The type-specific attribute bits 48-63 hold the volume's geometry
//!   (slots, cluster size, journal size), so its usable capacity can be
//!   computed from the table alone, the same way it was when it was made.
//! - The unique GUID is derived from the volume name; the partition name
//!   holds the volume name (as much of it as GPT's 36 characters allow).

use super::extents::{self, Extent};
use crate::disk::gpt::{Gpt, Partition};
use crate::ocfs2::layout::{HeartbeatMode, Layout, MIB};
use uuid::Uuid;

pub const TYPE_HEARTBEAT: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a1");
pub const TYPE_PENDING_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a2");
pub const TYPE_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a3");
pub const TYPE_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a4");
pub const TYPE_PENDING_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a5");
pub const TYPE_DELETING_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a6");
pub const TYPE_DELETING_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932a7");
pub const TYPE_PENDING_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932b1");
pub const TYPE_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932b2");
pub const TYPE_DELETING_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932b3");
pub const TYPE_CLONING_GLOBAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932c1");
pub const TYPE_CLONING_LOCAL: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932c2");
pub const TYPE_CLONING_BLOCK: Uuid = uuid::uuid!("3f0e6b0a-5c2d-4b6e-8a51-6f63736932c3");

/// Partition 1 is the heartbeat device; volumes use 2..=MAX_PARTITION.
pub const HEARTBEAT_NUMBER: u32 = 1;
pub const FIRST_VOLUME_NUMBER: u32 = 2;
/// The kernel names partitions 1 to 255 (DISK_MAX_PARTS is 256).
pub const MAX_PARTITION: u32 = 255;
pub const HEARTBEAT_BYTES: u64 = 16 * MIB;
/// A raw block volume's head begins with this much of its own: the
/// header with the nodes' holder marks (`volume::block_header`). The
/// device a node publishes starts after it.
pub const BLOCK_HEADER_BYTES: u64 = MIB;
/// Partitions start and end on 1 MiB boundaries.
pub const ALIGN: u64 = MIB;
/// GPT names hold 36 UTF-16 code units.
pub const NAME_UNITS: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Allocated; mkfs has not been confirmed. Only CreateVolume (a retry
    /// with the same name) or DeleteVolume touch it.
    Pending,
    Ready,
    /// DeleteVolume has begun: nodes refuse to stage it, and unmount it
    /// again when they find it so right after mounting. Only DeleteVolume
    /// (a retry finishes the work) touches it; a CreateVolume of its name
    /// is told to retry.
    Deleting,
    /// Ready, but a clone is copying its bytes: nodes refuse to stage it
    /// (a copy of a filesystem being written is not one), and it goes back
    /// to Ready when the copy ends. A controller that starts finds no copy
    /// of its own running and puts it back (`Volumes::lun_opened`).
    Cloning,
}

impl State {
    /// Whether the volume exists for the CO: ready, or ready and being
    /// copied.
    pub fn is_live(self) -> bool {
        matches!(self, State::Ready | State::Cloning)
    }

    /// Its name where people read it (metrics labels, status).
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Ready => "ready",
            State::Deleting => "deleting",
            State::Cloning => "cloning",
        }
    }
}

/// What a volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// An OCFS2 filesystem, mounted by the nodes.
    Ocfs2,
    /// Raw bytes, published to pods as a block device (volumeMode: Block).
    Block,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Content::Ocfs2 => "filesystem",
            Content::Block => "block",
        })
    }
}

/// How a volume's usable bytes and its partition's bytes relate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// OCFS2's journals and metadata, as accounted.
    Ocfs2(Layout),
    /// The header and nothing else.
    Block,
}

impl Sizing {
    /// What a partition of `bytes` gives the user.
    pub fn usable_bytes(&self, bytes: u64) -> u64 {
        match self {
            Sizing::Ocfs2(layout) => layout.usable_bytes(bytes, ALIGN),
            Sizing::Block => bytes.saturating_sub(BLOCK_HEADER_BYTES) / ALIGN * ALIGN,
        }
    }

    /// The partition bytes that give the user at least `usable`.
    pub fn partition_bytes(&self, usable: u64) -> u64 {
        match self {
            Sizing::Ocfs2(layout) => layout.partition_bytes(usable, ALIGN),
            Sizing::Block => BLOCK_HEADER_BYTES + usable.div_ceil(ALIGN) * ALIGN,
        }
    }
}

/// A volume as read from its GPT entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEntry {
    pub number: u32,
    pub guid: Uuid,
    pub name: String,
    pub state: State,
    pub content: Content,
    /// OCFS2 volumes' heartbeat; raw block volumes have none (Global here,
    /// never looked at).
    pub heartbeat: HeartbeatMode,
    /// OCFS2 volumes' geometry used for capacity accounting (journal size
    /// rounded up to a power of two, block size assumed 4 KiB).
    pub layout: Layout,
    /// The head entry's offset on the LUN: where the filesystem starts.
    pub offset: u64,
    /// The volume's size: its extents' sizes added up.
    pub size: u64,
    /// The head first, then the extents the volume grew into, in order.
    pub extents: Vec<Extent>,
}

impl VolumeEntry {
    pub fn usable_bytes(&self) -> u64 {
        self.sizing().usable_bytes(self.size)
    }

    pub fn sizing(&self) -> Sizing {
        match self.content {
            Content::Ocfs2 => Sizing::Ocfs2(self.layout.clone()),
            Content::Block => Sizing::Block,
        }
    }

    /// The partition type of this volume in `state`.
    pub fn type_in(&self, state: State) -> Uuid {
        match self.content {
            Content::Ocfs2 => type_guid(state, self.heartbeat),
            Content::Block => block_type_guid(state),
        }
    }

    /// The ranges of the LUN (offset, bytes) a node's device lays end to
    /// end: every extent, less a raw block volume's header.
    pub fn device_extents(&self) -> Vec<(u64, u64)> {
        let skip = match self.content {
            Content::Ocfs2 => 0,
            Content::Block => BLOCK_HEADER_BYTES,
        };
        let mut out: Vec<(u64, u64)> = self.extents.iter().map(|e| (e.offset, e.size)).collect();
        if let Some(head) = out.first_mut() {
            let skip = skip.min(head.1);
            *head = (head.0 + skip, head.1 - skip);
        }
        out.retain(|e| e.1 > 0);
        out
    }

    /// The bytes of a node's device: [`Self::device_extents`] added up.
    pub fn device_bytes(&self) -> u64 {
        self.device_extents().iter().map(|e| e.1).sum()
    }

    /// The head entry's range: all the filesystem's own metadata that
    /// inspection reads (superblock, slot map, journals) lies in it, since
    /// mkfs ran on the head alone and tunefs -S only adds allocation
    /// groups in the space it grows into.
    pub fn head(&self) -> Extent {
        self.extents[0]
    }

    /// Where byte `at` of the volume lies on the LUN, if the volume has it.
    pub fn lun_offset(&self, at: u64) -> Option<u64> {
        let mut start = 0;
        for e in &self.extents {
            if at < start + e.size {
                return Some(e.offset + (at - start));
            }
            start += e.size;
        }
        None
    }
}

/// The layout as it is accounted for: what the attribute bits can hold.
pub fn accounted(layout: &Layout) -> Layout {
    Layout {
        slots: layout.slots,
        block_size: 4096,
        cluster_size: layout.cluster_size,
        journal_size: layout.journal_size.next_power_of_two(),
    }
}

pub fn attributes(layout: &Layout) -> u64 {
    let slots = u64::from(layout.slots) & 0xff;
    let cluster = u64::from(layout.cluster_size.trailing_zeros().saturating_sub(12)) & 0xf;
    let journal_mib = (layout.journal_size / MIB).next_power_of_two();
    let journal = u64::from(journal_mib.trailing_zeros()) & 0xf;
    (slots << 48) | (cluster << 56) | (journal << 60)
}

pub fn layout_from(attributes: u64) -> Layout {
    Layout {
        slots: ((attributes >> 48) & 0xff) as u32,
        block_size: 4096,
        cluster_size: 1 << (12 + ((attributes >> 56) & 0xf)),
        journal_size: MIB << ((attributes >> 60) & 0xf),
    }
}

/// The GPT name for a volume: as much of its name as fits.
pub fn gpt_name(volume_name: &str) -> String {
    let mut units = 0;
    volume_name
        .chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= NAME_UNITS
        })
        .collect()
}

/// Where a partition sits: its entry number and its sectors (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
}

pub fn volume_partition(
    at: Placement,
    guid: Uuid,
    name: &str,
    state: State,
    heartbeat: HeartbeatMode,
    layout: &Layout,
) -> Partition {
    Partition {
        number: at.number,
        type_guid: type_guid(state, heartbeat),
        unique_guid: guid,
        first_lba: at.first_lba,
        last_lba: at.last_lba,
        attributes: attributes(layout),
        name: gpt_name(name),
    }
}

/// A raw block volume's entry (its attribute bits hold no geometry).
pub fn block_partition(at: Placement, guid: Uuid, name: &str, state: State) -> Partition {
    Partition {
        number: at.number,
        type_guid: block_type_guid(state),
        unique_guid: guid,
        first_lba: at.first_lba,
        last_lba: at.last_lba,
        attributes: 0,
        name: gpt_name(name),
    }
}

/// The partition type of a raw block volume in `state`.
pub fn block_type_guid(state: State) -> Uuid {
    match state {
        State::Pending => TYPE_PENDING_BLOCK,
        State::Ready => TYPE_BLOCK,
        State::Deleting => TYPE_DELETING_BLOCK,
        State::Cloning => TYPE_CLONING_BLOCK,
    }
}

/// The partition type of an OCFS2 volume in `state` with `heartbeat`.
pub fn type_guid(state: State, heartbeat: HeartbeatMode) -> Uuid {
    match (state, heartbeat) {
        (State::Pending, HeartbeatMode::Global) => TYPE_PENDING_GLOBAL,
        (State::Pending, HeartbeatMode::Local) => TYPE_PENDING_LOCAL,
        (State::Ready, HeartbeatMode::Global) => TYPE_GLOBAL,
        (State::Ready, HeartbeatMode::Local) => TYPE_LOCAL,
        (State::Deleting, HeartbeatMode::Global) => TYPE_DELETING_GLOBAL,
        (State::Deleting, HeartbeatMode::Local) => TYPE_DELETING_LOCAL,
        (State::Cloning, HeartbeatMode::Global) => TYPE_CLONING_GLOBAL,
        (State::Cloning, HeartbeatMode::Local) => TYPE_CLONING_LOCAL,
    }
}

/// The volume whose head entry is `p` in `table`, with all its extents, or
/// None for anything that is not a volume's head.
pub fn volume_in(table: &Gpt, p: &Partition) -> Option<VolumeEntry> {
    let mut e = volume_entry(p, table.sector_size)?;
    e.extents = extents::extents(table, p);
    e.size = e.extents.iter().map(|x| x.size).sum();
    Some(e)
}

/// The raw block volumes of `table`, each with all its extents.
pub fn block_volumes(table: &Gpt) -> Vec<VolumeEntry> {
    table
        .partitions
        .iter()
        .filter_map(|p| volume_in(table, p))
        .filter(|e| e.content == Content::Block)
        .collect()
}

/// Whether `p` is a volume's head entry.
pub fn is_volume(p: &Partition) -> bool {
    volume_entry(p, 512).is_some()
}

/// The volume in one GPT entry alone, as if it had no further extents, or
/// None for anything that is not a volume. [`volume_in`] is the volume.
pub fn volume_entry(p: &Partition, sector_size: u64) -> Option<VolumeEntry> {
    use {Content::*, HeartbeatMode::*};
    let (state, content, heartbeat) = match p.type_guid {
        TYPE_PENDING_GLOBAL => (State::Pending, Ocfs2, Global),
        TYPE_PENDING_LOCAL => (State::Pending, Ocfs2, Local),
        TYPE_GLOBAL => (State::Ready, Ocfs2, Global),
        TYPE_LOCAL => (State::Ready, Ocfs2, Local),
        TYPE_DELETING_GLOBAL => (State::Deleting, Ocfs2, Global),
        TYPE_DELETING_LOCAL => (State::Deleting, Ocfs2, Local),
        TYPE_PENDING_BLOCK => (State::Pending, Block, Global),
        TYPE_BLOCK => (State::Ready, Block, Global),
        TYPE_DELETING_BLOCK => (State::Deleting, Block, Global),
        TYPE_CLONING_GLOBAL => (State::Cloning, Ocfs2, Global),
        TYPE_CLONING_LOCAL => (State::Cloning, Ocfs2, Local),
        TYPE_CLONING_BLOCK => (State::Cloning, Block, Global),
        _ => return None,
    };
    Some(VolumeEntry {
        number: p.number,
        guid: p.unique_guid,
        name: p.name.clone(),
        state,
        content,
        heartbeat,
        layout: layout_from(p.attributes),
        offset: p.first_lba * sector_size,
        size: (p.last_lba - p.first_lba + 1) * sector_size,
        extents: vec![Extent::of(p, sector_size)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocfs2::layout::KIB;

    #[test]
    fn geometry_survives_the_attribute_bits() {
        for (slots, cluster, journal) in [
            (1, 4 * KIB, 4 * MIB),
            (255, MIB, 1024 * MIB),
            (16, 64 * KIB, 8 * MIB),
        ] {
            let layout = Layout {
                slots,
                block_size: 4096,
                cluster_size: cluster,
                journal_size: journal,
            };
            let at = Placement {
                number: 7,
                first_lba: 2048,
                last_lba: 4095,
            };
            let p = volume_partition(
                at,
                Uuid::new_v4(),
                "pvc-x",
                State::Ready,
                HeartbeatMode::Local,
                &layout,
            );
            let e = volume_entry(&p, 512).unwrap();
            assert_eq!(e.layout, accounted(&layout));
            assert_eq!(e.heartbeat, HeartbeatMode::Local);
            assert_eq!(e.size, 2048 * 512);
            assert_eq!(e.offset, 2048 * 512);
        }
    }

    #[test]
    fn journal_is_accounted_rounded_up() {
        let l = Layout {
            slots: 2,
            block_size: 4096,
            cluster_size: 4096,
            journal_size: 100 * MIB,
        };
        assert_eq!(accounted(&l).journal_size, 128 * MIB);
    }

    #[test]
    fn every_state_keeps_its_heartbeat_mode() {
        let l = Layout::for_size(MIB, 2, None, None, None);
        let mut types = std::collections::HashSet::new();
        for state in [
            State::Pending,
            State::Ready,
            State::Deleting,
            State::Cloning,
        ] {
            for hb in [HeartbeatMode::Global, HeartbeatMode::Local] {
                let at = Placement {
                    number: 2,
                    first_lba: 1,
                    last_lba: 2,
                };
                let p = volume_partition(at, Uuid::nil(), "n", state, hb, &l);
                assert!(types.insert(p.type_guid), "{state:?} {hb:?}");
                let e = volume_entry(&p, 512).unwrap();
                assert_eq!((e.state, e.heartbeat), (state, hb));
            }
        }
    }

    #[test]
    fn block_volumes_keep_their_state_and_skip_the_header() {
        for state in [
            State::Pending,
            State::Ready,
            State::Deleting,
            State::Cloning,
        ] {
            let at = Placement {
                number: 3,
                first_lba: 2048,
                last_lba: 2048 + 3 * 2048 - 1,
            };
            let p = block_partition(at, Uuid::nil(), "blk", state);
            let e = volume_entry(&p, 512).unwrap();
            assert_eq!((e.state, e.content), (state, Content::Block));
            assert_eq!(e.type_in(state), p.type_guid);
            assert_eq!(e.usable_bytes(), 2 * MIB);
            assert_eq!(e.device_extents(), vec![(2 * MIB, 2 * MIB)]);
            assert_eq!(e.device_bytes(), e.usable_bytes());
        }
        assert_eq!(Sizing::Block.partition_bytes(1), 2 * MIB);
        assert_eq!(Sizing::Block.partition_bytes(5 * MIB), 6 * MIB);
        assert_eq!(Sizing::Block.usable_bytes(6 * MIB), 5 * MIB);
        assert_eq!(Sizing::Block.usable_bytes(MIB / 2), 0);
    }

    #[test]
    fn a_block_volume_device_spans_every_extent() {
        let at = Placement {
            number: 3,
            first_lba: 2048,
            last_lba: 4095,
        };
        let mut e =
            volume_entry(&block_partition(at, Uuid::nil(), "b", State::Ready), 512).unwrap();
        e.extents.push(Extent {
            offset: 10 * MIB,
            size: 4 * MIB,
        });
        e.size = 5 * MIB;
        assert_eq!(e.device_extents(), vec![(10 * MIB, 4 * MIB)]);
        assert_eq!(e.device_bytes(), 4 * MIB);
        assert_eq!(e.usable_bytes(), 4 * MIB);
    }

    #[test]
    fn every_partition_type_is_distinct() {
        let all = [
            TYPE_HEARTBEAT,
            TYPE_PENDING_GLOBAL,
            TYPE_GLOBAL,
            TYPE_LOCAL,
            TYPE_PENDING_LOCAL,
            TYPE_DELETING_GLOBAL,
            TYPE_DELETING_LOCAL,
            TYPE_PENDING_BLOCK,
            TYPE_BLOCK,
            TYPE_DELETING_BLOCK,
            TYPE_CLONING_GLOBAL,
            TYPE_CLONING_LOCAL,
            TYPE_CLONING_BLOCK,
            super::extents::TYPE_EXTENT,
            crate::volume::snapshot::TYPE_SNAPSHOT_PENDING_GLOBAL,
            crate::volume::snapshot::TYPE_SNAPSHOT_PENDING_LOCAL,
            crate::volume::snapshot::TYPE_SNAPSHOT_PENDING_BLOCK,
            crate::volume::snapshot::TYPE_SNAPSHOT_GLOBAL,
            crate::volume::snapshot::TYPE_SNAPSHOT_LOCAL,
            crate::volume::snapshot::TYPE_SNAPSHOT_BLOCK,
        ];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }

    #[test]
    fn names_are_cut_to_36_units() {
        let name = "pvc-0d7c8ab2-53f5-4c1e-9b71-0f1a2b3c4d5e";
        assert_eq!(gpt_name(name).encode_utf16().count(), 36);
        assert_eq!(gpt_name("short"), "short");
        assert_eq!(gpt_name(&"😀".repeat(20)).encode_utf16().count(), 36);
    }
}
