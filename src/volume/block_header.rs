//! The first MiB of a raw block volume's head: how the controller knows,
//! from the LUN alone, which nodes hold the volume (DeleteVolume refuses
//! while any does). It plays the part an OCFS2 volume's slot map plays,
//! without the Kubernetes API or the DLM (the controller is in neither
//! cluster).
//!
//! - Block 0 (4 KiB) names the volume: a magic and its partition GUID.
//!   CreateVolume writes it last, after zeroing, so a volume whose block 0
//!   is not its own holds nothing a node could have published.
//! - Block 1 + N is the holder mark of o2cb node number N (0-254): written
//!   by node N at NodeStage before it reports success, zeroed at
//!   NodeUnstage. Node numbers are unique among live nodes (invariant 1),
//!   so each block has one writer. A node restarted with marks it has no
//!   stage record for clears them (`node::volumes::adopt`).
//!
//! Every write is one aligned 4 KiB block followed by a sync, so a mark is
//! either there or not, whatever the sector size (512 or 4096).

use crate::disk::lun_io::BlockIo;
use std::io;
use uuid::Uuid;

/// One header block (a multiple of every sector size we support).
pub const BLOCK: u64 = 4096;
/// Node numbers 0..=254 have a mark each.
pub const MAX_NODES: usize = 255;
/// Bytes read to see every mark: the identity and the marks.
pub const HEADER_BYTES: u64 = BLOCK * (1 + MAX_NODES as u64);

const IDENTITY_MAGIC: &[u8; 16] = b"OCFS2CSI-BLKVOL\0";
const HOLDER_MAGIC: &[u8; 16] = b"OCFS2CSI-HOLDER\0";
const VERSION: u32 = 1;
/// Node names longer than this are cut (for messages only).
const MAX_NODE_NAME: usize = 200;

/// A node that holds the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub number: u8,
    /// The node's name as it wrote it (Kubernetes node name).
    pub node: String,
    /// When it staged the volume (seconds since the epoch).
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (o2cb node {})", self.node, self.number)
    }
}

/// Block 0 of a volume with partition GUID `guid`.
pub fn identity(guid: &Uuid) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..16].copy_from_slice(IDENTITY_MAGIC);
    b[16..20].copy_from_slice(&VERSION.to_le_bytes());
    b[24..40].copy_from_slice(guid.as_bytes());
    b
}

/// The mark of node `number` on volume `guid`.
pub fn mark(guid: &Uuid, number: u8, node: &str, since: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..16].copy_from_slice(HOLDER_MAGIC);
    b[16] = number;
    b[24..32].copy_from_slice(&since.to_le_bytes());
    b[32..48].copy_from_slice(guid.as_bytes());
    let name = &node.as_bytes()[..node.len().min(MAX_NODE_NAME)];
    b[48..50].copy_from_slice(&(name.len() as u16).to_le_bytes());
    b[50..50 + name.len()].copy_from_slice(name);
    b
}

/// Where node `number`'s mark lies, from the start of the volume's head.
pub fn mark_offset(number: u8) -> u64 {
    BLOCK * (1 + u64::from(number))
}

/// The holders in a header read from the volume's head (`HEADER_BYTES`),
/// or None when block 0 is not volume `guid`'s identity (never finished
/// being created, or wiped by a delete).
pub fn holders(header: &[u8], guid: &Uuid) -> Option<Vec<Holder>> {
    let block = |i: usize| &header[i * BLOCK as usize..(i + 1) * BLOCK as usize];
    let id = block(0);
    if &id[..16] != IDENTITY_MAGIC || &id[24..40] != guid.as_bytes() {
        return None;
    }
    let mut out = Vec::new();
    for n in 0..MAX_NODES {
        let b = block(1 + n);
        // A mark of another volume that once lay here is not this one's
        // (CreateVolume zeroes the whole volume, so there is none; this is
        // belt and braces), and a mark in the wrong block is no mark.
        if &b[..16] != HOLDER_MAGIC || &b[32..48] != guid.as_bytes() || usize::from(b[16]) != n {
            continue;
        }
        let len = usize::from(u16::from_le_bytes([b[48], b[49]])).min(MAX_NODE_NAME);
        out.push(Holder {
            number: b[16],
            node: String::from_utf8_lossy(&b[50..50 + len]).into_owned(),
            since: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        });
    }
    Some(out)
}

/// Reads the holders of volume `guid` whose head starts at `head` on `io`.
pub fn read_holders(io: &dyn BlockIo, head: u64, guid: &Uuid) -> io::Result<Option<Vec<Holder>>> {
    let mut header = vec![0u8; HEADER_BYTES as usize];
    io.read_at(head, &mut header)?;
    Ok(holders(&header, guid))
}

/// Writes block 0 (the last step of creating the volume).
pub fn write_identity(io: &dyn BlockIo, head: u64, guid: &Uuid) -> io::Result<()> {
    io.write_at(head, &identity(guid))?;
    io.sync()
}

/// Writes node `number`'s mark, durably.
pub fn set_mark(
    io: &dyn BlockIo,
    head: u64,
    guid: &Uuid,
    number: u8,
    node: &str,
) -> io::Result<()> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    io.write_at(head + mark_offset(number), &mark(guid, number, node, since))?;
    io.sync()
}

/// Zeroes node `number`'s mark, durably.
pub fn clear_mark(io: &dyn BlockIo, head: u64, number: u8) -> io::Result<()> {
    io.write_at(head + mark_offset(number), &vec![0u8; BLOCK as usize])?;
    io.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::MemIo;

    const HEAD: u64 = 2 << 20;

    #[test]
    fn the_header_fits_the_space_kept_for_it() {
        assert_eq!(HEADER_BYTES, crate::volume::entry::BLOCK_HEADER_BYTES);
        assert_eq!(mark_offset(254) + BLOCK, HEADER_BYTES);
    }

    #[test]
    fn marks_come_and_go_per_node() {
        for sector in [512, 4096] {
            let io = MemIo::new(sector, 8 << 20);
            let guid = Uuid::new_v4();
            assert_eq!(read_holders(&io, HEAD, &guid).unwrap(), None);
            write_identity(&io, HEAD, &guid).unwrap();
            assert_eq!(read_holders(&io, HEAD, &guid).unwrap(), Some(vec![]));
            set_mark(&io, HEAD, &guid, 0, "node-a").unwrap();
            set_mark(&io, HEAD, &guid, 254, &"n".repeat(300)).unwrap();
            let held = read_holders(&io, HEAD, &guid).unwrap().unwrap();
            assert_eq!(held.len(), 2);
            assert_eq!((held[0].number, held[0].node.as_str()), (0, "node-a"));
            assert_eq!(held[1].number, 254);
            assert_eq!(held[1].node.len(), MAX_NODE_NAME);
            assert!(held[0].since > 0);
            clear_mark(&io, HEAD, 0).unwrap();
            let held = read_holders(&io, HEAD, &guid).unwrap().unwrap();
            assert_eq!(held.iter().map(|h| h.number).collect::<Vec<_>>(), [254]);
            // Another volume's GUID reads as no identity at all.
            assert_eq!(read_holders(&io, HEAD, &Uuid::new_v4()).unwrap(), None);
        }
    }

    #[test]
    fn a_mark_of_another_volume_or_in_the_wrong_block_is_none() {
        let io = MemIo::new(512, 8 << 20);
        let (guid, old) = (Uuid::new_v4(), Uuid::new_v4());
        write_identity(&io, HEAD, &guid).unwrap();
        io.write_at(HEAD + mark_offset(3), &mark(&old, 3, "x", 1))
            .unwrap();
        io.write_at(HEAD + mark_offset(4), &mark(&guid, 5, "y", 1))
            .unwrap();
        assert_eq!(read_holders(&io, HEAD, &guid).unwrap(), Some(vec![]));
    }
}
