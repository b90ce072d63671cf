//! Keeps this node's kernel partitions of a LUN equal to the LUN's GPT.
//!
//! Another host may create, grow or delete volumes while this node has
//! others mounted, so the table is re-read with O_DIRECT (this host's page
//! cache may hold the old one) and each difference is applied on its own
//! with BLKPG. Nothing in use is ever removed or shrunk: the kernel's own
//! busy check on delete decides what "in use" means, with no window between
//! checking and acting.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crate::disk::gpt::{self, GptError};
use crate::disk::kernel_partitions::{
    blkpg_add, blkpg_delete, blkpg_resize, block_device_name, kernel_partitions,
    partition_device_name, BlkpgFailure, KernelPartition,
};
use crate::disk::lun_io::LunFile;

/// A partition as the GPT has it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WantedPartition {
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
}

/// One BLKPG operation of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The table no longer has this partition.
    Delete(KernelPartition),
    /// The number now names a range with another start (in practice another
    /// volume, made after the old one was deleted). This step deletes the old
    /// partition; the `Add` of the same number later in the plan makes the
    /// new one. Kept apart from `Delete` so a caller can refuse it when the
    /// old partition is in use, and then skip that `Add`.
    Replace {
        from: KernelPartition,
        to: WantedPartition,
    },
    /// Same start, new size (bytes). A shrink must not hit a partition in
    /// use; a grow is what an online volume expansion needs.
    Resize {
        number: u32,
        start_bytes: u64,
        from: u64,
        to: u64,
    },
    Add(WantedPartition),
}

impl Change {
    pub fn number(&self) -> u32 {
        match self {
            Change::Delete(k) => k.number,
            Change::Replace { from, .. } => from.number,
            Change::Resize { number, .. } => *number,
            Change::Add(w) => w.number,
        }
    }
}

/// The changes that turn the kernel's partitions into the table's, ordered
/// so the kernel's view never has two overlapping partitions in between:
/// deletes, replaced partitions' deletes, shrinks, grows, adds.
///
/// Why that is enough, given non-overlapping table entries: once everything
/// that goes away or shrinks is done, each remaining kernel partition lies
/// within its own final range, and final ranges are disjoint, so growing
/// any one of them to its final range or adding one at its final range
/// cannot collide with another.
pub fn plan(table: &[WantedPartition], kernel: &[KernelPartition]) -> Vec<Change> {
    let wanted: BTreeMap<u32, &WantedPartition> = table.iter().map(|w| (w.number, w)).collect();
    let have: BTreeMap<u32, &KernelPartition> = kernel.iter().map(|k| (k.number, k)).collect();
    let (mut deletes, mut replaces, mut shrinks, mut grows, mut adds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (&number, &k) in &have {
        let Some(&&w) = wanted.get(&number) else {
            deletes.push(Change::Delete(*k));
            continue;
        };
        let resize = Change::Resize {
            number,
            start_bytes: k.start_bytes,
            from: k.size_bytes,
            to: w.size_bytes,
        };
        if w.start_bytes != k.start_bytes {
            replaces.push(Change::Replace { from: *k, to: w });
            adds.push(Change::Add(w));
        } else if w.size_bytes < k.size_bytes {
            shrinks.push(resize);
        } else if w.size_bytes > k.size_bytes {
            grows.push(resize);
        }
    }
    adds.extend(
        wanted
            .values()
            .filter(|w| !have.contains_key(&w.number))
            .map(|&&w| Change::Add(w)),
    );
    adds.sort_by_key(Change::number);
    [deletes, replaces, shrinks, grows, adds].concat()
}

/// What `sync` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<WantedPartition>,
    /// Partitions whose size changed, as `Change::Resize`.
    pub resized: Vec<Change>,
    /// Includes the old range of a partition that moved (its new range is in
    /// `added`).
    pub deleted: Vec<KernelPartition>,
}

/// `added [2, 3], resized [4], deleted []`: partition numbers.
impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let added: Vec<u32> = self.added.iter().map(|p| p.number).collect();
        let resized: Vec<u32> = self.resized.iter().map(Change::number).collect();
        let deleted: Vec<u32> = self.deleted.iter().map(|p| p.number).collect();
        write!(
            f,
            "added {added:?}, resized {resized:?}, deleted {deleted:?}"
        )
    }
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.resized.is_empty() && self.deleted.is_empty()
    }
}

/// Why one partition was left as it is.
#[derive(Debug, thiserror::Error)]
pub enum PartitionFailure {
    /// The kernel refused to delete it because something has it open
    /// (mounted, or a process holds it).
    #[error("partition {number} ({device}) is in use; not going to {action} it")]
    InUse {
        number: u32,
        device: String,
        action: Refused,
    },
    /// Adding or growing it would overlap a partition that could not be
    /// removed.
    #[error("partition {number} ({device}) cannot be {action}: partition {by} still holds part of its range")]
    Blocked {
        number: u32,
        device: String,
        action: &'static str,
        by: u32,
    },
    #[error("partition {number} ({device}): {source}")]
    Ioctl {
        number: u32,
        device: String,
        source: io::Error,
    },
}

impl PartitionFailure {
    pub fn number(&self) -> u32 {
        match self {
            PartitionFailure::InUse { number, .. }
            | PartitionFailure::Blocked { number, .. }
            | PartitionFailure::Ioctl { number, .. } => *number,
        }
    }
}

/// What was refused because the partition is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Delete,
    /// Delete in order to re-add it elsewhere (`Change::Replace`).
    Move,
    Shrink,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Delete => "delete",
            Refused::Move => "move",
            Refused::Shrink => "shrink",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{disk}: opening for direct I/O: {source}")]
    Open { disk: PathBuf, source: io::Error },
    #[error("{disk}: reading the partition table: {source}")]
    ReadTable { disk: PathBuf, source: GptError },
    /// The table read fine but breaks the rules (e.g. overlapping entries);
    /// acting on it could overlap kernel partitions, so nothing is done.
    #[error("{disk}: refusing to follow an invalid partition table: {source}")]
    InvalidTable { disk: PathBuf, source: GptError },
    #[error("{disk}: reading the kernel's partitions: {source}")]
    KernelPartitions { disk: PathBuf, source: io::Error },
    /// Everything else was applied (`done`); these partitions were not.
    #[error("{disk}: partitions not synced: {}", join(.failures))]
    Incomplete {
        disk: PathBuf,
        done: SyncReport,
        failures: Vec<PartitionFailure>,
    },
}

fn join(failures: &[PartitionFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The partition-sync lock. Two syncs of one disk at once would plan from
/// the same state and trip over each other's changes; a sync takes
/// milliseconds, so one at a time. A grower also holds it (see [`hold`])
/// from its last look at its kernel partition's size to the end of
/// `tunefs.ocfs2 -S`, so no sync of this process resizes the partition
/// under the grow.
static SYNC_LOCK: SyncLock = SyncLock {
    held: Mutex::new(false),
    free: Condvar::new(),
};

struct SyncLock {
    held: Mutex<bool>,
    free: Condvar,
}

/// The partition-sync lock, held until dropped; it may cross threads (and
/// `.await`s), unlike a `MutexGuard`.
#[must_use = "the lock is released when this is dropped"]
pub struct SyncHold(());

impl Drop for SyncHold {
    fn drop(&mut self) {
        *SYNC_LOCK.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        SYNC_LOCK.free.notify_one();
    }
}

/// Takes the partition-sync lock, waiting while a sync (or another holder)
/// has it. Blocking: call it from a blocking thread.
pub fn hold() -> SyncHold {
    let mut held = SYNC_LOCK.held.lock().unwrap_or_else(|p| p.into_inner());
    while *held {
        held = SYNC_LOCK.free.wait(held).unwrap_or_else(|p| p.into_inner());
    }
    *held = true;
    SyncHold(())
}

/// Makes the kernel's partitions of the whole disk `disk` match its GPT.
///
/// Blocking (O_DIRECT reads and ioctls): call it from `spawn_blocking` in
/// async code. Partitions in use are neither deleted, moved nor shrunk; they
/// are named in `SyncError::Incomplete` after everything else is applied.
pub fn sync(disk: &Path) -> Result<SyncReport, SyncError> {
    let _serial = hold();
    let path = || disk.to_path_buf();
    let lun = LunFile::open(disk).map_err(|source| SyncError::Open {
        disk: path(),
        source,
    })?;
    let table = gpt::read(&lun)
        .map_err(|source| SyncError::ReadTable {
            disk: path(),
            source,
        })?
        .gpt;
    table.validate().map_err(|source| SyncError::InvalidTable {
        disk: path(),
        source,
    })?;
    let wanted: Vec<WantedPartition> = table
        .partitions
        .iter()
        .map(|p| WantedPartition {
            number: p.number,
            start_bytes: p.first_lba * table.sector_size,
            size_bytes: p.size_sectors() * table.sector_size,
        })
        .collect();
    let kernel_err = |source| SyncError::KernelPartitions {
        disk: path(),
        source,
    };
    let kernel = kernel_partitions(disk).map_err(kernel_err)?;
    let name = block_device_name(disk).map_err(kernel_err)?;
    let changes = plan(&wanted, &kernel);
    if changes.is_empty() {
        return Ok(SyncReport::default());
    }
    // BLKPG needs no write access; the LUN's fd is O_DIRECT read-write and
    // private to LunFile, so open the disk once more.
    let fd = File::open(disk).map_err(|source| SyncError::Open {
        disk: path(),
        source,
    })?;
    let mut applier = Applier {
        ops: &mut Blkpg(fd),
        disk_name: name,
        current: kernel.iter().map(|k| (k.number, *k)).collect(),
        refused: HashSet::new(),
        report: SyncReport::default(),
        failures: Vec::new(),
    };
    for change in &changes {
        applier.apply(change);
    }
    if applier.failures.is_empty() {
        Ok(applier.report)
    } else {
        Err(SyncError::Incomplete {
            disk: path(),
            done: applier.report,
            failures: applier.failures,
        })
    }
}

/// The kernel operations, behind a trait so the apply logic can be tested
/// against a fake kernel.
trait PartitionOps {
    fn add(&mut self, number: u32, start: u64, size: u64) -> io::Result<()>;
    fn resize(&mut self, number: u32, start: u64, size: u64) -> io::Result<()>;
    fn delete(&mut self, number: u32) -> io::Result<()>;
}

struct Blkpg(File);

impl PartitionOps for Blkpg {
    fn add(&mut self, number: u32, start: u64, size: u64) -> io::Result<()> {
        blkpg_add(self.0.as_fd(), number, start, size)
    }
    fn resize(&mut self, number: u32, start: u64, size: u64) -> io::Result<()> {
        blkpg_resize(self.0.as_fd(), number, start, size)
    }
    fn delete(&mut self, number: u32) -> io::Result<()> {
        blkpg_delete(self.0.as_fd(), number)
    }
}

/// Applies a plan step by step, carrying on past failures and tracking
/// what the kernel has, so a step that a refused one blocks is reported as
/// blocked instead of failing in the kernel with a bare EBUSY.
struct Applier<'a> {
    ops: &'a mut dyn PartitionOps,
    disk_name: String,
    current: BTreeMap<u32, KernelPartition>,
    /// Numbers whose Replace was refused: their Add must not happen.
    refused: HashSet<u32>,
    report: SyncReport,
    failures: Vec<PartitionFailure>,
}

enum Deleted {
    Yes,
    InUse,
    Failed(io::Error),
}

impl Applier<'_> {
    fn device(&self, number: u32) -> String {
        partition_device_name(&self.disk_name, number)
    }

    fn apply(&mut self, change: &Change) {
        match *change {
            Change::Delete(k) => match self.delete(k.number) {
                Deleted::Yes => self.report.deleted.push(k),
                Deleted::InUse => self.in_use(k.number, Refused::Delete),
                Deleted::Failed(e) => self.ioctl_failed(k.number, e),
            },
            Change::Replace { from, .. } => match self.delete(from.number) {
                Deleted::Yes => self.report.deleted.push(from),
                Deleted::InUse => {
                    self.refused.insert(from.number);
                    self.in_use(from.number, Refused::Move)
                }
                Deleted::Failed(e) => {
                    self.refused.insert(from.number);
                    self.ioctl_failed(from.number, e)
                }
            },
            Change::Resize {
                number,
                start_bytes,
                from,
                to,
            } if to < from => self.shrink(*change, number, start_bytes, to),
            Change::Resize {
                number,
                start_bytes,
                to,
                ..
            } => {
                let grown = KernelPartition {
                    number,
                    start_bytes,
                    size_bytes: to,
                };
                if self.blocked(&grown, "grown") {
                    return;
                }
                match self.ops.resize(number, start_bytes, to) {
                    Ok(()) => {
                        self.current.insert(number, grown);
                        self.report.resized.push(*change);
                    }
                    Err(e) => self.ioctl_failed(number, e),
                }
            }
            Change::Add(w) => {
                if self.refused.contains(&w.number) {
                    // Its old range is still there; the refusal is reported.
                    return;
                }
                let k = KernelPartition {
                    number: w.number,
                    start_bytes: w.start_bytes,
                    size_bytes: w.size_bytes,
                };
                if self.blocked(&k, "added") {
                    return;
                }
                match self.ops.add(w.number, w.start_bytes, w.size_bytes) {
                    Ok(()) => {
                        self.current.insert(w.number, k);
                        self.report.added.push(w);
                    }
                    Err(e) => self.ioctl_failed(w.number, e),
                }
            }
        }
    }

    /// BLKPG resize does not care whether the partition is open, and a
    /// mounted filesystem on a shrunken partition gets I/O errors. Deleting
    /// and re-adding it lets the kernel's atomic busy check refuse instead.
    fn shrink(&mut self, change: Change, number: u32, start: u64, size: u64) {
        match self.delete(number) {
            Deleted::Yes => {}
            Deleted::InUse => return self.in_use(number, Refused::Shrink),
            Deleted::Failed(e) => return self.ioctl_failed(number, e),
        }
        match self.ops.add(number, start, size) {
            Ok(()) => {
                self.current.insert(
                    number,
                    KernelPartition {
                        number,
                        start_bytes: start,
                        size_bytes: size,
                    },
                );
                self.report.resized.push(change);
            }
            // Gone from the kernel now; the next sync adds it back.
            Err(e) => self.ioctl_failed(number, e),
        }
    }

    fn delete(&mut self, number: u32) -> Deleted {
        let result = match self.ops.delete(number) {
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => return Deleted::InUse,
            // Already gone (someone else deleted it): the state we want.
            Err(e) if BlkpgFailure::of(&e).is_some_and(|f| f.errno == nix::errno::Errno::ENXIO) => {
                Deleted::Yes
            }
            Err(e) => return Deleted::Failed(e),
            Ok(()) => Deleted::Yes,
        };
        self.current.remove(&number);
        result
    }

    /// Whether `k` would overlap a partition the kernel still has (one whose
    /// removal was refused); if so, records that.
    fn blocked(&mut self, k: &KernelPartition, action: &'static str) -> bool {
        let end = k.start_bytes + k.size_bytes;
        let Some(by) = self.current.values().find(|o| {
            o.number != k.number
                && o.start_bytes < end
                && k.start_bytes < o.start_bytes + o.size_bytes
        }) else {
            return false;
        };
        self.failures.push(PartitionFailure::Blocked {
            number: k.number,
            device: self.device(k.number),
            action,
            by: by.number,
        });
        true
    }

    fn in_use(&mut self, number: u32, action: Refused) {
        self.failures.push(PartitionFailure::InUse {
            number,
            device: self.device(number),
            action,
        });
    }

    fn ioctl_failed(&mut self, number: u32, source: io::Error) {
        self.failures.push(PartitionFailure::Ioctl {
            number,
            device: self.device(number),
            source,
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sync_lock_is_held_across_threads_until_dropped() {
        use std::sync::mpsc;
        use std::time::Duration;
        let held = super::hold();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _mine = super::hold();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second holder got the lock while it was held"
        );
        // Released from another thread than the one that took it.
        std::thread::spawn(move || drop(held)).join().unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn report_names_partition_numbers() {
        let report = SyncReport {
            added: vec![w(2, 1, 1), w(3, 2, 1)],
            resized: vec![Change::Resize {
                number: 4,
                start_bytes: 0,
                from: 1,
                to: 2,
            }],
            deleted: vec![],
        };
        assert_eq!(report.to_string(), "added [2, 3], resized [4], deleted []");
    }

    fn w(number: u32, start_mib: u64, size_mib: u64) -> WantedPartition {
        WantedPartition {
            number,
            start_bytes: start_mib * MIB,
            size_bytes: size_mib * MIB,
        }
    }

    fn k(number: u32, start_mib: u64, size_mib: u64) -> KernelPartition {
        KernelPartition {
            number,
            start_bytes: start_mib * MIB,
            size_bytes: size_mib * MIB,
        }
    }

    fn resize(number: u32, start_mib: u64, from_mib: u64, to_mib: u64) -> Change {
        Change::Resize {
            number,
            start_bytes: start_mib * MIB,
            from: from_mib * MIB,
            to: to_mib * MIB,
        }
    }

    fn as_kernel(w: &WantedPartition) -> KernelPartition {
        KernelPartition {
            number: w.number,
            start_bytes: w.start_bytes,
            size_bytes: w.size_bytes,
        }
    }

    fn overlap(a: &KernelPartition, b: &KernelPartition) -> bool {
        a.start_bytes < b.start_bytes + b.size_bytes && b.start_bytes < a.start_bytes + a.size_bytes
    }

    /// Applies `changes` to a model of the kernel, checking after each step
    /// what the kernel would check (no overlap, no duplicate number, resize
    /// keeps the start) and that the end state is `table`.
    fn check_plan(table: &[WantedPartition], kernel: &[KernelPartition], changes: &[Change]) {
        let mut state: BTreeMap<u32, KernelPartition> =
            kernel.iter().map(|k| (k.number, *k)).collect();
        for (i, c) in changes.iter().enumerate() {
            match *c {
                Change::Delete(k) | Change::Replace { from: k, .. } => {
                    assert_eq!(state.remove(&k.number), Some(k), "step {i}: {c:?}")
                }
                Change::Resize {
                    number,
                    start_bytes,
                    from,
                    to,
                } => {
                    let p = state
                        .get_mut(&number)
                        .expect("resize of a present partition");
                    assert_eq!((p.start_bytes, p.size_bytes), (start_bytes, from), "{c:?}");
                    p.size_bytes = to;
                }
                Change::Add(w) => {
                    let prev = state.insert(w.number, as_kernel(&w));
                    assert!(prev.is_none(), "step {i}: add of a present number: {c:?}");
                }
            }
            let parts: Vec<_> = state.values().collect();
            for (x, a) in parts.iter().enumerate() {
                for b in &parts[x + 1..] {
                    assert!(!overlap(a, b), "step {i} ({c:?}) overlaps {a:?} and {b:?}");
                }
            }
        }
        let end: Vec<KernelPartition> = state.into_values().collect();
        let mut want: Vec<KernelPartition> = table.iter().map(as_kernel).collect();
        want.sort_by_key(|p| p.number);
        assert_eq!(end, want);
        // Phases: removals, shrinks, grows, adds.
        let phase = |c: &Change| match c {
            Change::Delete(_) | Change::Replace { .. } => 0,
            Change::Resize { from, to, .. } if to < from => 1,
            Change::Resize { .. } => 2,
            Change::Add(_) => 3,
        };
        assert!(
            changes.windows(2).all(|p| phase(&p[0]) <= phase(&p[1])),
            "out of order: {changes:?}"
        );
    }

    #[test]
    fn plans() {
        struct Case {
            name: &'static str,
            table: Vec<WantedPartition>,
            kernel: Vec<KernelPartition>,
            want: Vec<Change>,
        }
        let cases = vec![
            Case {
                name: "in sync",
                table: vec![w(1, 1, 10), w(2, 11, 10)],
                kernel: vec![k(1, 1, 10), k(2, 11, 10)],
                want: vec![],
            },
            Case {
                name: "empty",
                table: vec![],
                kernel: vec![],
                want: vec![],
            },
            Case {
                name: "add",
                table: vec![w(1, 1, 10), w(3, 30, 5), w(2, 11, 10)],
                kernel: vec![k(1, 1, 10)],
                want: vec![Change::Add(w(2, 11, 10)), Change::Add(w(3, 30, 5))],
            },
            Case {
                name: "delete",
                table: vec![w(2, 11, 10)],
                kernel: vec![k(1, 1, 10), k(2, 11, 10), k(3, 21, 1)],
                want: vec![Change::Delete(k(1, 1, 10)), Change::Delete(k(3, 21, 1))],
            },
            Case {
                name: "grow",
                table: vec![w(1, 1, 20)],
                kernel: vec![k(1, 1, 10)],
                want: vec![resize(1, 1, 10, 20)],
            },
            Case {
                name: "shrink",
                table: vec![w(1, 1, 5)],
                kernel: vec![k(1, 1, 10)],
                want: vec![resize(1, 1, 10, 5)],
            },
            Case {
                name: "move",
                table: vec![w(1, 50, 10)],
                kernel: vec![k(1, 1, 10)],
                want: vec![
                    Change::Replace {
                        from: k(1, 1, 10),
                        to: w(1, 50, 10),
                    },
                    Change::Add(w(1, 50, 10)),
                ],
            },
            Case {
                // p2 deleted, p1 grows into its space, p3 shrinks, p4 new
                // where p3's tail was, p5 moved onto p2's old tail.
                name: "mixed",
                table: vec![w(1, 1, 15), w(3, 30, 5), w(4, 40, 5), w(5, 16, 4)],
                kernel: vec![k(1, 1, 10), k(2, 11, 10), k(3, 30, 15), k(5, 60, 4)],
                want: vec![
                    Change::Delete(k(2, 11, 10)),
                    Change::Replace {
                        from: k(5, 60, 4),
                        to: w(5, 16, 4),
                    },
                    resize(3, 30, 15, 5),
                    resize(1, 1, 10, 15),
                    Change::Add(w(4, 40, 5)),
                    Change::Add(w(5, 16, 4)),
                ],
            },
            Case {
                // Two volumes' numbers swapped places: only safe as two
                // deletes followed by two adds.
                name: "swap",
                table: vec![w(1, 20, 10), w(2, 1, 10)],
                kernel: vec![k(1, 1, 10), k(2, 20, 10)],
                want: vec![
                    Change::Replace {
                        from: k(1, 1, 10),
                        to: w(1, 20, 10),
                    },
                    Change::Replace {
                        from: k(2, 20, 10),
                        to: w(2, 1, 10),
                    },
                    Change::Add(w(1, 20, 10)),
                    Change::Add(w(2, 1, 10)),
                ],
            },
        ];
        for c in cases {
            let got = plan(&c.table, &c.kernel);
            assert_eq!(got, c.want, "case {}", c.name);
            check_plan(&c.table, &c.kernel, &got);
        }
    }

    /// Non-overlapping ranges on a 64 MiB disk under random numbers 1..=8.
    fn random_table(next: &mut dyn FnMut(u64) -> u64) -> Vec<WantedPartition> {
        let mut numbers: Vec<u32> = (1..=8).collect();
        let mut out = Vec::new();
        let mut cursor = next(3);
        let count = next(9);
        while out.len() < count as usize {
            let size = 1 + next(8);
            if cursor + size > 64 {
                break;
            }
            let n = numbers.remove(next(numbers.len() as u64) as usize);
            out.push(w(n, cursor, size));
            cursor += size + next(4);
        }
        out
    }

    /// Random tables against kernels holding another random table: every
    /// plan must keep the kernel overlap-free at every step.
    #[test]
    fn random_plans_never_overlap() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            // xorshift64*: deterministic, no dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        };
        let mut kinds = [0usize; 5];
        for _ in 0..5000 {
            let table = random_table(&mut next);
            let kernel: Vec<KernelPartition> =
                random_table(&mut next).iter().map(as_kernel).collect();
            let changes = plan(&table, &kernel);
            check_plan(&table, &kernel, &changes);
            for c in &changes {
                kinds[match c {
                    Change::Delete(_) => 0,
                    Change::Replace { .. } => 1,
                    Change::Resize { from, to, .. } if to < from => 2,
                    Change::Resize { .. } => 3,
                    Change::Add(_) => 4,
                }] += 1;
            }
        }
        assert!(
            kinds.iter().all(|&n| n > 100),
            "too few of some kind: {kinds:?}"
        );
    }

    /// A fake kernel with BLKPG's rules: EBUSY for deleting an open
    /// partition, adding a taken number or an overlapping range.
    #[derive(Default)]
    struct FakeKernel {
        parts: BTreeMap<u32, KernelPartition>,
        open: HashSet<u32>,
        ops: Vec<String>,
    }

    fn busy() -> io::Error {
        io::Error::from(io::ErrorKind::ResourceBusy)
    }

    impl PartitionOps for FakeKernel {
        fn add(&mut self, number: u32, start: u64, size: u64) -> io::Result<()> {
            self.ops.push(format!("add {number}"));
            let new = KernelPartition {
                number,
                start_bytes: start,
                size_bytes: size,
            };
            if self.parts.contains_key(&number) || self.parts.values().any(|p| overlap(p, &new)) {
                return Err(busy());
            }
            self.parts.insert(number, new);
            Ok(())
        }
        fn resize(&mut self, number: u32, start: u64, size: u64) -> io::Result<()> {
            self.ops.push(format!("resize {number}"));
            let new = KernelPartition {
                number,
                start_bytes: start,
                size_bytes: size,
            };
            if self
                .parts
                .values()
                .any(|p| p.number != number && overlap(p, &new))
            {
                return Err(busy());
            }
            self.parts.insert(number, new);
            Ok(())
        }
        fn delete(&mut self, number: u32) -> io::Result<()> {
            self.ops.push(format!("delete {number}"));
            if self.open.contains(&number) {
                return Err(busy());
            }
            self.parts.remove(&number);
            Ok(())
        }
    }

    fn run(
        kernel: &mut FakeKernel,
        table: &[WantedPartition],
    ) -> (SyncReport, Vec<PartitionFailure>) {
        let start: Vec<KernelPartition> = kernel.parts.values().copied().collect();
        let changes = plan(table, &start);
        let mut a = Applier {
            current: kernel.parts.clone(),
            ops: kernel,
            disk_name: "loop9".into(),
            refused: HashSet::new(),
            report: SyncReport::default(),
            failures: Vec::new(),
        };
        for c in &changes {
            a.apply(c);
        }
        (a.report, a.failures)
    }

    fn fake(parts: &[KernelPartition], open: &[u32]) -> FakeKernel {
        FakeKernel {
            parts: parts.iter().map(|p| (p.number, *p)).collect(),
            open: open.iter().copied().collect(),
            ops: Vec::new(),
        }
    }

    fn messages(failures: &[PartitionFailure]) -> Vec<String> {
        failures.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn open_partitions_grow_but_are_not_deleted_shrunk_or_moved() {
        let before = [k(1, 1, 10), k(2, 11, 10), k(3, 30, 10), k(4, 50, 10)];
        let mut kernel = fake(&before, &[1, 2, 3, 4]);
        // 1 deleted, 2 grows, 3 shrinks, 4 moves.
        let table = [w(2, 11, 15), w(3, 30, 5), w(4, 70, 10)];
        let (report, failures) = run(&mut kernel, &table);
        assert_eq!(
            messages(&failures),
            [
                "partition 1 (loop9p1) is in use; not going to delete it",
                "partition 4 (loop9p4) is in use; not going to move it",
                "partition 3 (loop9p3) is in use; not going to shrink it",
            ]
        );
        assert_eq!(report.resized, [resize(2, 11, 10, 15)]);
        assert!(report.added.is_empty() && report.deleted.is_empty());
        let mut after = before;
        after[1].size_bytes = 15 * MIB;
        assert_eq!(kernel.parts.values().copied().collect::<Vec<_>>(), after);
    }

    #[test]
    fn what_a_refused_partition_blocks_is_reported_and_the_rest_applied() {
        let mut kernel = fake(&[k(1, 1, 10), k(2, 11, 10), k(3, 30, 10)], &[2]);
        // 2 is gone from the table but open; 1 would grow over it and 4
        // would be added on it; 3 is deleted regardless.
        let table = [w(1, 1, 15), w(4, 16, 4)];
        let (report, failures) = run(&mut kernel, &table);
        assert_eq!(
            messages(&failures),
            [
                "partition 2 (loop9p2) is in use; not going to delete it",
                "partition 1 (loop9p1) cannot be grown: partition 2 still holds part of its range",
                "partition 4 (loop9p4) cannot be added: partition 2 still holds part of its range",
            ]
        );
        assert_eq!(report.deleted, [k(3, 30, 10)]);
        // Only the kernel's own refusal reached it; nothing failed there.
        assert_eq!(kernel.ops, ["delete 2", "delete 3"]);
    }

    #[test]
    fn a_refused_move_skips_its_add() {
        let mut kernel = fake(&[k(1, 1, 10)], &[1]);
        let (report, failures) = run(&mut kernel, &[w(1, 20, 10)]);
        assert_eq!(
            messages(&failures),
            ["partition 1 (loop9p1) is in use; not going to move it"]
        );
        assert!(report.is_empty());
        assert_eq!(kernel.ops, ["delete 1"]);
    }

    #[test]
    fn unused_partitions_follow_every_kind_of_change() {
        let mut kernel = fake(&[k(1, 1, 10), k(2, 11, 10), k(3, 30, 10), k(5, 60, 4)], &[]);
        let table = [w(1, 1, 15), w(3, 30, 5), w(4, 40, 5), w(5, 16, 4)];
        let (report, failures) = run(&mut kernel, &table);
        assert!(failures.is_empty(), "{failures:?}");
        let mut want: Vec<KernelPartition> = table.iter().map(as_kernel).collect();
        want.sort();
        assert_eq!(kernel.parts.values().copied().collect::<Vec<_>>(), want);
        assert_eq!(report.deleted, [k(2, 11, 10), k(5, 60, 4)]);
        assert_eq!(report.resized, [resize(3, 30, 10, 5), resize(1, 1, 10, 15)]);
        assert_eq!(report.added, [w(4, 40, 5), w(5, 16, 4)]);
        // The shrink went through delete + add, so the busy check ran.
        assert_eq!(
            kernel.ops,
            ["delete 2", "delete 5", "delete 3", "add 3", "resize 1", "add 4", "add 5"]
        );
    }
}
