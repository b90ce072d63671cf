//! How big a partition must be so that the filesystem on it offers at least
//! the bytes the user asked for, and the mkfs geometry chosen by size.
//!
//! OCFS2 spends space on one journal per node slot, on per-slot allocator
//! groups, and on allocation bitmaps that grow with the volume. Measured with
//! mkfs.ocfs2 1.8.7 (4 KiB blocks) the non-journal part is at most about
//! 4 MiB per slot plus 1.06 MiB per GiB plus a few MiB; [`Layout::overhead`]
//! is a slightly generous bound of that, and a test checks it against real
//! mkfs runs over a matrix of sizes and slot counts.

use std::fmt;
use std::time::Duration;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// How nodes heartbeat for a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// One heartbeat per node on the LUN's heartbeat partition.
    Global,
    /// A heartbeat per mounted volume, inside the volume.
    Local,
}

impl HeartbeatMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HeartbeatMode::Global => "global",
            HeartbeatMode::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Option<HeartbeatMode> {
        match s {
            "global" => Some(HeartbeatMode::Global),
            "local" => Some(HeartbeatMode::Local),
            _ => None,
        }
    }
}

impl fmt::Display for HeartbeatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mkfs geometry of one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub slots: u32,
    pub block_size: u64,
    pub cluster_size: u64,
    /// Per slot.
    pub journal_size: u64,
}

/// Node slots when the StorageClass does not say: enough for a typical set of
/// nodes sharing a volume, each slot costing one small journal.
pub const DEFAULT_SLOTS: u32 = 16;
pub const MAX_SLOTS: u32 = 255;
pub const MIN_JOURNAL: u64 = 4 * MIB;
pub const MAX_JOURNAL: u64 = GIB;

/// How long one mkfs.ocfs2 may run before it is killed.
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(600);
/// The write rate (bytes per second) mkfs is planned for: a slow SAN, with
/// room to spare. mkfs zeroes every slot's journal in full (libocfs2's
/// `ocfs2_format_journal`: uncached 1 MiB writes, one after the other), so
/// its time grows with slots x journal size; one 1 GbE iSCSI path alone
/// carries about 110 MiB/s.
pub const MKFS_SLOWEST_WRITE: u64 = 32 * MIB;
/// The most journal bytes (all slots together) one mkfs may be asked to
/// write: what [`MKFS_SLOWEST_WRITE`] gets through in [`MKFS_TIMEOUT`],
/// 18.75 GiB. Every default geometry stays under it (255 slots of the
/// largest default journal, 64 MiB, are 15.9 GiB). More would have mkfs
/// killed at the limit, the create retried and killed again, on the
/// shared LUN, forever; such a StorageClass is refused instead.
pub const MAX_JOURNAL_TOTAL: u64 = MKFS_TIMEOUT.as_secs() * MKFS_SLOWEST_WRITE;

impl Layout {
    /// The geometry for a volume of about `bytes`, with the caller's
    /// overrides (StorageClass parameters) taking precedence.
    pub fn for_size(
        bytes: u64,
        slots: u32,
        block_size: Option<u64>,
        cluster_size: Option<u64>,
        journal_size: Option<u64>,
    ) -> Layout {
        let cluster_size = cluster_size.unwrap_or_else(|| default_cluster_size(bytes));
        Layout {
            slots,
            block_size: block_size.unwrap_or(4 * KIB),
            cluster_size,
            journal_size: journal_size.unwrap_or_else(|| {
                default_journal_size(bytes).max(min_journal(cluster_size).next_power_of_two())
            }),
        }
    }

    /// Why mkfs.ocfs2 would refuse this geometry, or could not format it
    /// within [`MKFS_TIMEOUT`], if so.
    pub fn check(&self) -> Result<(), String> {
        let min = min_journal(self.cluster_size);
        if self.journal_size < min {
            return Err(format!(
                "journalSize {} is too small for clusterSize {}: mkfs.ocfs2 needs at least \
                 9 clusters ({} bytes) per journal",
                self.journal_size, self.cluster_size, min
            ));
        }
        check_journal_total(self.slots, round_up(self.journal_size, self.cluster_size))
    }

    /// Bytes of a partition of `partition_bytes` that the filesystem keeps for
    /// itself (an upper bound).
    pub fn overhead(&self, partition_bytes: u64) -> u64 {
        let journals = u64::from(self.slots) * round_up(self.journal_size, self.cluster_size);
        let per_slot = u64::from(self.slots) * (4 * MIB + MIB / 4);
        let proportional = partition_bytes / 900;
        // Cluster rounding of the system files, and the smallest volumes'
        // fixed system files.
        let fixed = 24 * MIB + 64 * self.cluster_size;
        journals + per_slot + proportional + fixed
    }

    /// The partition size (a multiple of `align`) for a filesystem offering
    /// at least `usable` bytes.
    pub fn partition_bytes(&self, usable: u64, align: u64) -> u64 {
        let mut size = usable.saturating_add(self.overhead(usable));
        // The bound grows with the partition; two rounds settle it.
        for _ in 0..2 {
            size = usable.saturating_add(self.overhead(size));
        }
        round_up(size, align.max(self.cluster_size))
    }

    /// The usable bytes we promise for a partition of `partition_bytes`: the
    /// largest request (in whole MiB) whose partition would fit in it.
    pub fn usable_bytes(&self, partition_bytes: u64, align: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, partition_bytes / MIB);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.partition_bytes(mid * MIB, align) <= partition_bytes {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo * MIB
    }
}

/// Why mkfs.ocfs2 could not write `slots` journals of `journal_size` each
/// within [`MKFS_TIMEOUT`] (more than [`MAX_JOURNAL_TOTAL`]), if so. The
/// message names both StorageClass parameters, their product and the limit.
pub fn check_journal_total(slots: u32, journal_size: u64) -> Result<(), String> {
    let journals = u64::from(slots).saturating_mul(journal_size);
    if journals <= MAX_JOURNAL_TOTAL {
        return Ok(());
    }
    Err(format!(
        "nodeSlots {slots} x journalSize {}Mi = {}Mi of journals, more than the {}Mi \
         mkfs.ocfs2 can write within its {} s limit (it zeroes every journal in full; \
         planned for a LUN that writes {} MiB/s): lower nodeSlots or journalSize",
        journal_size / MIB,
        journals / MIB,
        MAX_JOURNAL_TOTAL / MIB,
        MKFS_TIMEOUT.as_secs(),
        MKFS_SLOWEST_WRITE / MIB,
    ))
}

/// 4 KiB clusters keep small files cheap; big volumes (VM images) get larger
/// clusters so their files need fewer extents.
pub fn default_cluster_size(bytes: u64) -> u64 {
    if bytes < 64 * GIB {
        4 * KIB
    } else if bytes < TIB {
        64 * KIB
    } else {
        MIB
    }
}

const TIB: u64 = 1 << 40;

/// About a thousandth of the volume per slot, a power of two between 4 and
/// 64 MiB: small volumes stay cheap (10 GiB with 16 slots spends 128 MiB on
/// journals), big ones get room for metadata bursts.
pub fn default_journal_size(bytes: u64) -> u64 {
    let target = (bytes / 1024).clamp(MIN_JOURNAL, 64 * MIB);
    // Largest power of two not above the target.
    1u64 << (63 - target.leading_zeros())
}

/// mkfs.ocfs2 1.8 refuses journals under 9 clusters ("Journal size too
/// small for filesystem").
fn min_journal(cluster_size: u64) -> u64 {
    9 * cluster_size
}

pub fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to).saturating_mul(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_and_cluster_follow_size() {
        assert_eq!(default_journal_size(GIB), 4 * MIB);
        assert_eq!(default_journal_size(10 * GIB), 8 * MIB);
        assert_eq!(default_journal_size(100 * GIB), 64 * MIB);
        assert_eq!(default_journal_size(10 * TIB), 64 * MIB);
        assert_eq!(default_cluster_size(GIB), 4 * KIB);
        assert_eq!(default_cluster_size(100 * GIB), 64 * KIB);
        assert_eq!(default_cluster_size(2 * TIB), MIB);
    }

    #[test]
    fn partition_covers_request_plus_overhead_and_is_aligned() {
        let l = Layout::for_size(10 * GIB, 16, None, None, None);
        let p = l.partition_bytes(10 * GIB, MIB);
        assert_eq!(p % MIB, 0);
        assert!(p >= 10 * GIB + l.overhead(p) - MIB, "{p}");
        // The goal: under 3% at 10 GiB with 16 slots.
        let overhead = (p - 10 * GIB) as f64 / (10 * GIB) as f64;
        assert!(overhead < 0.03, "{overhead}");
    }

    #[test]
    fn usable_inverts_partition_bytes() {
        for gib in [1u64, 3, 10, 100] {
            let l = Layout::for_size(gib * GIB, 16, None, None, None);
            let p = l.partition_bytes(gib * GIB, MIB);
            assert_eq!(l.usable_bytes(p, MIB), gib * GIB);
            assert!(l.usable_bytes(p - MIB, MIB) < gib * GIB);
        }
    }

    #[test]
    fn journal_covers_nine_clusters() {
        let big_clusters = Layout::for_size(GIB, 16, None, Some(MIB), None);
        assert_eq!(big_clusters.journal_size, 16 * MIB);
        assert!(big_clusters.check().is_ok());
        let l = Layout::for_size(GIB, 16, None, Some(512 * KIB), None);
        assert_eq!(l.journal_size, 8 * MIB);
        let too_small = Layout::for_size(GIB, 16, None, Some(MIB), Some(8 * MIB));
        assert!(too_small.check().unwrap_err().contains("9 clusters"));
        // Big volumes default to 1 MiB clusters; a small explicit journal is refused.
        let big = Layout::for_size(2 * TIB, 16, None, None, Some(4 * MIB));
        assert!(big.check().is_err());
        assert!(Layout::for_size(2 * TIB, 16, None, None, None)
            .check()
            .is_ok());
    }

    #[test]
    fn journals_mkfs_cannot_write_in_time_are_refused() {
        // The limit is the timeout times the planned write rate: 18.75 GiB.
        assert_eq!(MAX_JOURNAL_TOTAL, 19200 * MIB);
        let explicit =
            |slots, journal| Layout::for_size(100 * GIB, slots, None, None, Some(journal));
        // The largest that fit: 16 slots of the largest journal allowed, and
        // 150 slots of 128 MiB (exactly the limit).
        assert!(explicit(16, MAX_JOURNAL).check().is_ok());
        assert!(explicit(150, 128 * MIB).check().is_ok());
        for (slots, journal, product) in [
            (151, 128 * MIB, "19328Mi"),
            (32, GIB, "32768Mi"),
            (255, 256 * MIB, "65280Mi"),
            (MAX_SLOTS, MAX_JOURNAL, "261120Mi"),
        ] {
            let err = explicit(slots, journal).check().unwrap_err();
            // Which parameters, their product, the limit and why.
            for part in [
                format!("nodeSlots {slots}"),
                format!("journalSize {}Mi", journal / MIB),
                format!("= {product} of journals"),
                "19200Mi".to_string(),
                "600 s".to_string(),
            ] {
                assert!(
                    err.contains(&part),
                    "{slots} x {journal}: {part:?} not in {err}"
                );
            }
        }
    }

    #[test]
    fn every_default_geometry_formats_in_time() {
        // Whatever the size, cluster size and slots, the defaults never hit
        // the mkfs limit: only an explicit journalSize can.
        for bytes in [GIB, 10 * GIB, 100 * GIB, 2 * TIB, 64 * TIB] {
            for cluster in [None, Some(4 * KIB), Some(64 * KIB), Some(MIB)] {
                for slots in [1, DEFAULT_SLOTS, 128, MAX_SLOTS] {
                    let l = Layout::for_size(bytes, slots, None, cluster, None);
                    assert!(l.check().is_ok(), "{l:?}: {:?}", l.check());
                }
            }
        }
    }

    #[test]
    fn tiny_partition_offers_nothing() {
        let l = Layout::for_size(MIB, 16, None, None, None);
        assert_eq!(l.usable_bytes(16 * MIB, MIB), 0);
    }
}
