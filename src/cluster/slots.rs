//! o2hb's heartbeat slots read straight from the disk: which o2cb node
//! numbers some node still heartbeats with, whatever the Kubernetes API
//! says. A node about to claim a number reads every region it will
//! heartbeat on (every LUN's heartbeat partition) and never claims a number
//! whose slot advances.
//!
//! Slot `n` of a region is block `start_block + n` of its device, holding
//! the kernel's `struct o2hb_disk_heartbeat_block` (little-endian):
//!
//! ```text
//! 0  __le64 hb_seq         seconds of wall-clock time at the write
//! 8  __u8   hb_node        the writer's node number
//! 9  __u8   hb_pad1[3]
//! 12 __le32 hb_cksum
//! 16 __le64 hb_generation  random, new each time the writer starts
//! 24 __le32 hb_dead_ms
//! ```
//!
//! A live node rewrites its slot every heartbeat interval (2 s) with a new
//! `hb_seq`; so a slot whose sequence or generation changes between two
//! readings more than an interval apart is in use. Reads use O_DIRECT: the
//! page cache would show the slot as this host last read it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::geometry::REGION_BLOCKS;
use crate::disk::lun_io::{BlockIo, LunFile};

/// o2hb writes every slot once per this interval (O2HB_REGION_TIMEOUT_MS).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long the slots are watched: two intervals and a margin, so a writer
/// that is a little late (a loaded host) is still seen.
pub const WATCH: Duration = Duration::from_secs(5);

/// What one slot holds, as far as telling it moves goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Slot {
    pub seq: u64,
    pub node: u8,
    pub generation: u64,
}

/// Decodes one heartbeat block (at least 32 bytes).
pub fn decode(block: &[u8]) -> Slot {
    let le64 = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
    Slot {
        seq: le64(0),
        node: block[8],
        generation: le64(16),
    }
}

/// Where one region's slots lie: slot 0 at byte `offset` of `device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRegion {
    /// How logs name it (the region's name and its device).
    pub name: String,
    pub device: PathBuf,
    pub offset: u64,
    pub block_bytes: u32,
}

/// Reads every slot of `region` (O_DIRECT where the device allows it).
pub fn read_slots(region: &SlotRegion) -> io::Result<Vec<Slot>> {
    let io = LunFile::open_read_only(&region.device)?;
    let bytes = region.block_bytes as usize;
    if bytes < 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("heartbeat block size {bytes} is below 32 bytes"),
        ));
    }
    let mut buf = vec![0u8; bytes * REGION_BLOCKS as usize];
    io.read_at(region.offset, &mut buf)?;
    Ok(buf.chunks(bytes).map(decode).collect())
}

/// The node numbers whose slot changed between two readings of a region.
pub fn advanced(before: &[Slot], after: &[Slot]) -> BTreeSet<u8> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b.seq != a.seq || b.generation != a.generation)
        .filter_map(|(n, _)| u8::try_from(n).ok())
        .collect()
}

/// The numbers whose slot advances in any of `regions` during `watch`
/// (read at the start and then every second), each with the region it was
/// seen on. Blocking: it sleeps for `watch`. A region that cannot be read
/// is an error: a slot nobody could read is not known to be free.
pub fn advancing(regions: &[SlotRegion], watch: Duration) -> io::Result<BTreeMap<u8, String>> {
    let first: Vec<Vec<Slot>> = regions.iter().map(read_slots).collect::<Result<_, _>>()?;
    let mut seen = BTreeMap::new();
    let start = Instant::now();
    loop {
        let left = watch.saturating_sub(start.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(1)));
        for (region, before) in regions.iter().zip(&first) {
            for n in advanced(before, &read_slots(region)?) {
                seen.entry(n).or_insert_with(|| region.name.clone());
            }
        }
        if start.elapsed() >= watch {
            return Ok(seen);
        }
    }
}

/// The node numbers in use around this node, for a claim to avoid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotsInUse {
    /// The number this node's kernel already runs as (a restarted plugin):
    /// the only one it can use without leaving the cluster, and its own
    /// heartbeat, not another node's.
    pub mine: Option<u8>,
    /// Numbers some other node heartbeats with now, each with where that
    /// was seen (a region on disk, or this kernel's live set).
    pub busy: BTreeMap<u8, String>,
}

/// Finds the numbers in use (see [`SlotsInUse`]). The node plugin's reads
/// the LUNs' heartbeat regions and the kernel; tests give their own.
pub trait HeartbeatSlots: Send + Sync {
    fn in_use(&self) -> BoxFuture<'_, Result<SlotsInUse, String>>;
}

/// A fixed answer: what a caller that has no heartbeat device of its own
/// (a test, a tool on another host) knows.
impl HeartbeatSlots for SlotsInUse {
    fn in_use(&self) -> BoxFuture<'_, Result<SlotsInUse, String>> {
        Box::pin(async move { Ok(self.clone()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    const BLOCK: usize = 512;
    const START: u64 = 3;

    fn block(seq: u64, node: u8, generation: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[0..8].copy_from_slice(&seq.to_le_bytes());
        b[8] = node;
        b[16..24].copy_from_slice(&generation.to_le_bytes());
        b[24..28].copy_from_slice(&22_000u32.to_le_bytes());
        b
    }

    fn write_slot(file: &std::path::Path, n: u8, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.seek(SeekFrom::Start((START + u64::from(n)) * BLOCK as u64))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn region(file: &std::path::Path) -> SlotRegion {
        SlotRegion {
            name: "R on test".into(),
            device: file.to_path_buf(),
            offset: START * BLOCK as u64,
            block_bytes: BLOCK as u32,
        }
    }

    #[test]
    fn decodes_the_kernels_block() {
        let s = decode(&block(0x1122_3344_5566_7788, 7, 0xdead_beef));
        assert_eq!(
            s,
            Slot {
                seq: 0x1122_3344_5566_7788,
                node: 7,
                generation: 0xdead_beef
            }
        );
    }

    #[test]
    fn a_slot_advances_when_its_sequence_or_generation_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hb");
        std::fs::write(&file, vec![0u8; (START as usize + 255) * BLOCK]).unwrap();
        write_slot(&file, 0, &block(100, 0, 1));
        write_slot(&file, 1, &block(100, 1, 2));
        write_slot(&file, 2, &block(50, 2, 3)); // a node that died: stands still
        let before = read_slots(&region(&file)).unwrap();
        assert_eq!(before.len(), 255);
        assert_eq!(before[2].seq, 50);
        write_slot(&file, 0, &block(102, 0, 1)); // heartbeats on
        write_slot(&file, 1, &block(100, 1, 9)); // restarted within the second
        let after = read_slots(&region(&file)).unwrap();
        assert_eq!(advanced(&before, &after), BTreeSet::from([0, 1]));
        assert!(advanced(&after, &after).is_empty());
    }

    #[test]
    fn advancing_watches_every_region() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for f in [&a, &b] {
            std::fs::write(f, vec![0u8; (START as usize + 255) * BLOCK]).unwrap();
        }
        write_slot(&a, 4, &block(10, 4, 1));
        write_slot(&b, 9, &block(10, 9, 1));
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for seq in 11..15 {
                    std::thread::sleep(Duration::from_millis(300));
                    write_slot(&b, 9, &block(seq, 9, 1));
                }
            })
        };
        let seen = advancing(&[region(&a), region(&b)], Duration::from_secs(2)).unwrap();
        writer.join().unwrap();
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![9]);
        // A region that cannot be read is an error, not "nobody there".
        let mut gone = region(&a);
        gone.device = dir.path().join("missing");
        assert!(advancing(&[region(&a), gone], Duration::ZERO).is_err());
    }
}
