//! Which clusters an OCFS2 filesystem uses, from its global bitmap: a clone
//! copies only those (a fresh volume is mostly free space).
//!
//! The global bitmap is a chain allocator: chains of group descriptors,
//! each group a bitmap of consecutive clusters. `debugfs.ocfs2` lists the
//! chains' first groups; we walk the groups ourselves from the raw blocks,
//! checking each one, since a cluster missed here is a cluster of data the
//! clone silently lacks. A group's bit b is cluster `start + b`, `start`
//! being 0 for the first cluster group (its descriptor lives inside cluster
//! 0..1 rather than at its group's start) and the descriptor's own cluster
//! for every other group: the kernel's `ocfs2_desc_bitmap_to_cluster_off`.
//!
//! The bitmap is only the truth for a cleanly unmounted filesystem: a dirty
//! journal may hold allocations not yet written to it.

use super::blockcheck;
use super::restamp::{le_u16, le_u32, le_u64, primary_fields};
use std::collections::HashSet;

/// The chains of the global bitmap, as `debugfs.ocfs2 -R "stat
/// //global_bitmap"` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chains {
    /// Block number of each chain's first group descriptor, by chain index.
    pub first_groups: Vec<u64>,
}

/// The numbers of a row of the chain table: `index total used free block`.
fn chain_row(line: &str) -> Option<[u64; 5]> {
    let words: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    words.try_into().ok()
}

fn number_after(text: &str, key: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(key)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| format!("no {key:?} in debugfs.ocfs2 stat output"))
}

/// Parses `debugfs.ocfs2 -R "stat //global_bitmap"` (its stdout): the
/// table after the `##  Total  Used  Free  Block#` header, whose row count
/// must be the `Next Free Rec` it announces. The group tables printed
/// after it (`##  Block#  Total ...`) are not read: we read the groups.
pub fn parse_chains(debugfs_stat_output: &str) -> Result<Chains, String> {
    let text = debugfs_stat_output;
    // 1 for the global bitmap, a bit per cluster; the other chain
    // allocators (inodes, extent blocks) count blocks.
    let bpc = number_after(text, "Bits per Cluster:")?;
    if bpc != 1 {
        return Err(format!(
            "Bits per Cluster: {bpc}: not the global bitmap (which has 1)"
        ));
    }
    let count = number_after(text, "Next Free Rec:")?;
    let mut lines = text.lines().skip_while(|line| {
        line.split_whitespace().collect::<Vec<_>>() != ["##", "Total", "Used", "Free", "Block#"]
    });
    if lines.next().is_none() {
        return Err("no chain table (## Total Used Free Block#) in debugfs.ocfs2 output".into());
    }
    let mut first_groups = Vec::new();
    for row in lines.map_while(chain_row) {
        let [index, total, used, _free, block] = row;
        if index != first_groups.len() as u64 || used > total {
            return Err(format!("bad chain row {row:?}"));
        }
        first_groups.push(block);
    }
    if first_groups.len() as u64 != count || first_groups.is_empty() {
        return Err(format!(
            "debugfs.ocfs2 announced {count} chains, listed {}",
            first_groups.len()
        ));
    }
    Ok(Chains { first_groups })
}

/// What walking the bitmap needs to know of the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u64,
    pub cluster_size: u64,
    /// Block number of the first cluster group's descriptor
    /// (`s_first_cluster_group`): its bit 0 is cluster 0.
    pub first_cluster_group: u64,
    /// The filesystem's size in clusters (the superblock's `i_clusters`,
    /// which is also the global bitmap's size).
    pub total_clusters: u64,
    /// `i_fs_generation`: every group descriptor of this filesystem carries
    /// it, which tells them from stale ones of an earlier mkfs.
    pub fs_generation: u32,
    /// The `metaecc` feature: group descriptors carry a checksum.
    pub meta_ecc: bool,
}

/// Geometry from the primary superblock block (exactly one block as read).
pub fn geometry(primary: &[u8]) -> Result<Geometry, String> {
    let sb = primary_fields(primary)?;
    if sb.clusters == 0 {
        return Err("superblock says the filesystem has no clusters".into());
    }
    Ok(Geometry {
        block_size: 1 << sb.block_bits,
        cluster_size: 1 << sb.cluster_bits,
        first_cluster_group: sb.first_cluster_group,
        total_clusters: sb.clusters,
        fs_generation: sb.fs_generation,
        meta_ecc: sb.meta_ecc,
    })
}

const GROUP_SIGNATURE: &[u8] = b"GROUP01\0";
// struct ocfs2_group_desc (ocfs2_fs.h).
const BG_SIZE: usize = 0x08;
const BG_BITS: usize = 0x0A;
const BG_FREE_BITS_COUNT: usize = 0x0C;
const BG_CHAIN: usize = 0x0E;
const BG_GENERATION: usize = 0x10;
const BG_NEXT_GROUP: usize = 0x18;
const BG_BLKNO: usize = 0x28;
const BG_BITMAP: usize = 0x40;

/// Appends the runs of set bits among the first `bits` bits of `bitmap`
/// (little-endian bit order), shifted by `start`, merging with the last
/// run when adjacent. Returns how many bits were set.
fn push_runs(runs: &mut Vec<(u64, u64)>, bitmap: &[u8], bits: u64, start: u64) -> u64 {
    let mut set = 0;
    let mut push = |cluster: u64, count: u64| {
        set += count;
        match runs.last_mut() {
            Some((first, len)) if *first + *len == cluster => *len += count,
            _ => runs.push((cluster, count)),
        }
    };
    for (at, &byte) in bitmap.iter().enumerate() {
        let base = at as u64 * 8;
        if base >= bits {
            break;
        }
        // The last byte may hold bits past the group's end.
        let valid = (bits - base).min(8);
        let byte = if valid < 8 {
            byte & ((1u8 << valid) - 1)
        } else {
            byte
        };
        match byte {
            0 => {}
            0xFF => push(start + base, 8),
            _ => (0..8)
                .filter(|b| byte & (1 << b) != 0)
                .for_each(|b| push(start + base + b, 1)),
        }
    }
    set
}

/// Every used cluster as runs (first cluster, count), sorted and merged.
/// `read_block(blkno, buf)` reads one filesystem block.
///
/// Refuses (Err) rather than guess at anything that does not add up: a
/// group that is not a group descriptor of this filesystem and chain,
/// a bitmap whose set bits disagree with its free count, groups that
/// overlap, leave clusters uncovered or reach past the end, a chain that
/// loops.
pub fn used_runs(
    chains: &Chains,
    geo: &Geometry,
    mut read_block: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Vec<(u64, u64)>, String> {
    let block_size = usize::try_from(geo.block_size)
        .ok()
        .filter(|b| (512..=4096).contains(b) && b.is_power_of_two())
        .ok_or_else(|| format!("block size {} is not OCFS2's", geo.block_size))?;
    if geo.cluster_size < geo.block_size || !geo.cluster_size.is_power_of_two() {
        return Err(format!("cluster size {} is not OCFS2's", geo.cluster_size));
    }
    let blocks_per_cluster = geo.cluster_size / geo.block_size;
    let mut buf = vec![0u8; block_size];
    let mut seen = HashSet::new();
    // (first cluster, clusters) of every group, to check they tile the fs.
    let mut groups: Vec<(u64, u64)> = Vec::new();
    // Runs of each group, in walk order; sorted at the end.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (chain, &first) in chains.first_groups.iter().enumerate() {
        let mut blkno = first;
        if blkno == 0 {
            return Err(format!("chain {chain} has no group"));
        }
        while blkno != 0 {
            let at = format!("chain {chain}, group descriptor at block {blkno}");
            // Every group holds at least one cluster, so more groups than
            // clusters means a loop we did not catch by block number.
            if !seen.insert(blkno) || seen.len() as u64 > geo.total_clusters {
                return Err(format!("{at}: seen before (the chains loop)"));
            }
            read_block(blkno, &mut buf).map_err(|e| format!("{at}: read: {e}"))?;
            let gd = &buf[..];
            if !gd.starts_with(GROUP_SIGNATURE) {
                return Err(format!("{at}: no group descriptor signature (GROUP01)"));
            }
            let bg_blkno = le_u64(gd, BG_BLKNO);
            if bg_blkno != blkno {
                return Err(format!("{at}: says it is block {bg_blkno}"));
            }
            if geo.meta_ecc && !blockcheck::verify(gd, blockcheck::GROUP_DESC_CHECK) {
                return Err(format!("{at}: bad metadata checksum"));
            }
            let generation = le_u32(gd, BG_GENERATION);
            if generation != geo.fs_generation {
                return Err(format!(
                    "{at}: generation {generation:#x}, the filesystem's is {:#x}",
                    geo.fs_generation
                ));
            }
            let bg_chain = le_u16(gd, BG_CHAIN);
            if usize::from(bg_chain) != chain {
                return Err(format!("{at}: says it is in chain {bg_chain}"));
            }
            let size = usize::from(le_u16(gd, BG_SIZE));
            let bits = u64::from(le_u16(gd, BG_BITS));
            let free = u64::from(le_u16(gd, BG_FREE_BITS_COUNT));
            if bits == 0 || free > bits || bits > size as u64 * 8 || BG_BITMAP + size > block_size {
                return Err(format!(
                    "{at}: bitmap of {size} bytes, {bits} bits, {free} free does not fit"
                ));
            }
            let start = if blkno == geo.first_cluster_group {
                0
            } else if blkno.is_multiple_of(blocks_per_cluster) {
                blkno / blocks_per_cluster
            } else {
                return Err(format!("{at}: not at the start of a cluster"));
            };
            if start + bits > geo.total_clusters {
                return Err(format!(
                    "{at}: covers clusters {start}..{} past the filesystem's {}",
                    start + bits,
                    geo.total_clusters
                ));
            }
            let set = push_runs(&mut runs, &gd[BG_BITMAP..BG_BITMAP + size], bits, start);
            if set != bits - free {
                return Err(format!(
                    "{at}: {set} bits set but {} used by its count",
                    bits - free
                ));
            }
            groups.push((start, bits));
            blkno = le_u64(gd, BG_NEXT_GROUP);
        }
    }
    groups.sort_unstable();
    let mut end = 0;
    for &(start, bits) in &groups {
        if start != end {
            return Err(format!(
                "the groups do not tile the filesystem: clusters {}..{} {}",
                start.min(end),
                start.max(end),
                if start < end { "twice" } else { "in none" }
            ));
        }
        end = start + bits;
    }
    if end != geo.total_clusters {
        return Err(format!(
            "the groups cover {end} clusters of the filesystem's {}",
            geo.total_clusters
        ));
    }
    runs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (first, count) in runs {
        match merged.last_mut() {
            Some((f, c)) if *f + *c == first => *c += count,
            _ => merged.push((first, count)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocfs2::restamp::testimg::{debugfs, mkfs, read_at};
    use std::collections::HashMap;

    const GIB: u64 = 1 << 30;

    fn walk_image(size: u64, cluster_size: u64, features: &str) {
        let what = format!("{size} bytes, {cluster_size}-byte clusters, {features}");
        let img = mkfs(size, cluster_size, &[features]);
        let primary = read_at(&img, 8192, 4096);
        let geo = geometry(&primary).unwrap();
        assert_eq!(
            (geo.block_size, geo.cluster_size, geo.total_clusters),
            (4096, cluster_size, size / cluster_size),
            "{what}"
        );
        let stat = debugfs(&img, &[], "stat //global_bitmap");
        let chains = parse_chains(&stat).unwrap();
        let runs = used_runs(&chains, &geo, |blkno, buf| {
            buf.copy_from_slice(&read_at(&img, blkno * 4096, 4096));
            Ok(())
        })
        .unwrap();
        let total = number_after(&stat, "Bitmap Total:").unwrap();
        let used = number_after(&stat, "Used:").unwrap();
        assert_eq!(total, geo.total_clusters, "{what}");
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), used, "{what}");
        assert_eq!(runs[0].0, 0, "cluster 0 is used: {what}");
        for pair in runs.windows(2) {
            assert!(pair[0].0 + pair[0].1 < pair[1].0, "{what}: {runs:?}");
        }
        let (last, count) = runs[runs.len() - 1];
        assert!(last + count <= geo.total_clusters, "{what}");
        // The backup superblocks' clusters are allocated.
        let used_at = |byte: u64| {
            let c = byte / cluster_size;
            runs.iter().any(|&(f, n)| f <= c && c < f + n)
        };
        for at in [GIB, 4 * GIB, 16 * GIB] {
            if at < size {
                assert!(used_at(at), "{what}: backup at {at}");
            }
        }
    }

    #[test]
    fn agrees_with_debugfs_on_real_images() {
        for (size, cluster_size) in [
            (64 << 20, 4096),
            (GIB + GIB / 2, 4096),
            (5 * GIB, 4096),
            (2 * GIB, 64 << 10),
            (3 * GIB, 1 << 20),
        ] {
            for features in ["--fs-features=metaecc", "--fs-features=nometaecc"] {
                walk_image(size, cluster_size, features);
            }
        }
    }

    #[test]
    fn follows_chains_of_several_groups() {
        // 40 GiB of 4 KiB clusters: 1301 groups in 243 chains.
        walk_image(40 * GIB, 4096, "--fs-features=metaecc");
    }

    const STAT: &str = "\tInode: 11   Mode: 0644   Generation: 922132243 (0x36f69f13)
\tType: Regular   Attr: 0x0   Flags: Valid System Allocbitmap Chain 
\tBitmap Total: 393216   Used: 5663   Free: 387553
\tClusters per Group: 32256   Bits per Cluster: 1
\tCount: 243   Next Free Rec: 3
\t##   Total        Used         Free         Block#
\t0    32256        5650         26606        3
\t1    32256        1            32255        32256
\t2    6144         1            6143         387072

\tGroup Chain: 0   Parent Inode: 11  Generation: 922132243
\t##   Block#            Total    Used     Free     Contig   Size
\t0    3                 32256    5650     26606    26606    4032
";

    #[test]
    fn parses_the_chain_table() {
        assert_eq!(parse_chains(STAT).unwrap().first_groups, [3, 32256, 387072]);
        // A row short of what the header announced.
        let short = STAT.replace("\t2    6144         1            6143         387072\n", "");
        assert!(parse_chains(&short).is_err());
        // An inode allocator is a chain allocator too, of blocks.
        let inodes = STAT.replace("Bits per Cluster: 1", "Bits per Cluster: 8");
        assert!(parse_chains(&inodes).is_err());
        let no_table = STAT.replace("##   Total", "Total");
        assert!(parse_chains(&no_table).is_err());
        assert!(parse_chains("").is_err());
        let bad_index = STAT.replace("\t1    32256 ", "\t7    32256 ");
        assert!(parse_chains(&bad_index).is_err());
    }

    /// A filesystem of 4 KiB blocks and clusters in memory: block number ->
    /// block.
    struct Disk {
        blocks: HashMap<u64, Vec<u8>>,
        geo: Geometry,
    }

    fn group(blkno: u64, chain: u16, bits: u16, used: &[u64], next: u64, ecc: bool) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..8].copy_from_slice(GROUP_SIGNATURE);
        b[BG_SIZE..BG_SIZE + 2].copy_from_slice(&(bits.div_ceil(8)).to_le_bytes());
        b[BG_BITS..BG_BITS + 2].copy_from_slice(&bits.to_le_bytes());
        let free = bits - used.len() as u16;
        b[BG_FREE_BITS_COUNT..BG_FREE_BITS_COUNT + 2].copy_from_slice(&free.to_le_bytes());
        b[BG_CHAIN..BG_CHAIN + 2].copy_from_slice(&chain.to_le_bytes());
        b[BG_GENERATION..BG_GENERATION + 4].copy_from_slice(&0xABCDu32.to_le_bytes());
        b[BG_NEXT_GROUP..BG_NEXT_GROUP + 8].copy_from_slice(&next.to_le_bytes());
        b[BG_BLKNO..BG_BLKNO + 8].copy_from_slice(&blkno.to_le_bytes());
        for &u in used {
            b[BG_BITMAP + u as usize / 8] |= 1 << (u % 8);
        }
        if ecc {
            blockcheck::stamp(&mut b, blockcheck::GROUP_DESC_CHECK);
        }
        b
    }

    /// Two groups of 40 clusters in one chain: the first cluster group's
    /// descriptor at block 3 (inside cluster 3 but covering 0..40), the
    /// second at block 40 (covering 40..80).
    fn two_groups(ecc: bool) -> Disk {
        let mut blocks = HashMap::new();
        blocks.insert(3, group(3, 0, 40, &[0, 1, 2, 3, 39], 40, ecc));
        blocks.insert(
            40,
            group(40, 0, 40, &[0, 5, 6, 7, 8, 9, 10, 11, 12, 13], 0, ecc),
        );
        Disk {
            blocks,
            geo: Geometry {
                block_size: 4096,
                cluster_size: 4096,
                first_cluster_group: 3,
                total_clusters: 80,
                fs_generation: 0xABCD,
                meta_ecc: ecc,
            },
        }
    }

    fn walk(disk: &Disk) -> Result<Vec<(u64, u64)>, String> {
        let chains = Chains {
            first_groups: vec![3],
        };
        used_runs(&chains, &disk.geo, |blkno, buf| {
            let b = disk
                .blocks
                .get(&blkno)
                .ok_or_else(|| std::io::Error::other("past the end"))?;
            buf.copy_from_slice(b);
            Ok(())
        })
    }

    #[test]
    fn walks_a_hand_built_chain() {
        for ecc in [false, true] {
            let disk = two_groups(ecc);
            // 39 and 40 (bit 0 of the second group) merge across groups.
            assert_eq!(walk(&disk).unwrap(), [(0, 4), (39, 2), (45, 9)]);
        }
    }

    fn walk_err(disk: &Disk) -> String {
        walk(disk).unwrap_err()
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        let mut disk = two_groups(true);
        disk.blocks.get_mut(&40).unwrap()[BG_BITMAP] ^= 0x02;
        assert!(walk_err(&disk).contains("checksum"));

        let mut disk = two_groups(false);
        disk.blocks.get_mut(&40).unwrap()[BG_BITMAP] ^= 0x02;
        assert!(walk_err(&disk).contains("bits set"));

        // A loop: the second group points back to the first.
        let mut disk = two_groups(false);
        disk.blocks.insert(40, group(40, 0, 40, &[], 3, false));
        assert!(walk_err(&disk).contains("loop"));
        // A group pointing to itself.
        disk.blocks.insert(40, group(40, 0, 40, &[], 40, false));
        assert!(walk_err(&disk).contains("loop"));

        let mut disk = two_groups(false);
        disk.blocks.get_mut(&40).unwrap()[..8].copy_from_slice(b"INODE01\0");
        assert!(walk_err(&disk).contains("signature"));

        let mut disk = two_groups(false);
        disk.blocks.insert(40, group(41, 0, 40, &[], 0, false));
        assert!(walk_err(&disk).contains("says it is block 41"));

        let mut disk = two_groups(false);
        disk.blocks.insert(40, group(40, 1, 40, &[], 0, false));
        assert!(walk_err(&disk).contains("chain 1"));

        let mut disk = two_groups(false);
        disk.geo.fs_generation = 7;
        assert!(walk_err(&disk).contains("generation"));

        let mut disk = two_groups(false);
        disk.geo.total_clusters = 70;
        assert!(walk_err(&disk).contains("past the filesystem"));

        let mut disk = two_groups(false);
        disk.geo.total_clusters = 100;
        assert!(walk_err(&disk).contains("cover 80 clusters"));

        // Overlapping groups: the second starts inside the first.
        let mut disk = two_groups(false);
        disk.blocks.get_mut(&3).unwrap()[BG_NEXT_GROUP..BG_NEXT_GROUP + 8]
            .copy_from_slice(&30u64.to_le_bytes());
        disk.blocks.insert(30, group(30, 0, 40, &[], 0, false));
        assert!(walk_err(&disk).contains("twice"));

        // The chain points past the device.
        let mut disk = two_groups(false);
        disk.blocks.remove(&40);
        assert!(walk_err(&disk).contains("read"));

        // More bits than the bitmap holds.
        let mut disk = two_groups(false);
        disk.blocks.get_mut(&40).unwrap()[BG_SIZE..BG_SIZE + 2]
            .copy_from_slice(&2u16.to_le_bytes());
        assert!(walk_err(&disk).contains("does not fit"));

        let disk = two_groups(false);
        let chains = Chains {
            first_groups: vec![3, 0],
        };
        assert!(used_runs(&chains, &disk.geo, |_, _| Ok(())).is_err());
    }

    #[test]
    fn bits_past_a_group_are_ignored() {
        let mut runs = Vec::new();
        // 10 bits: the second byte's bits 2..8 lie past the group.
        assert_eq!(push_runs(&mut runs, &[0xFF, 0xFF], 10, 100), 10);
        assert_eq!(runs, [(100, 10)]);
        let mut runs = Vec::new();
        assert_eq!(push_runs(&mut runs, &[0b1010_0001], 8, 0), 3);
        assert_eq!(runs, [(0, 1), (5, 1), (7, 1)]);
    }

    #[test]
    fn geometry_of_a_superblock_only() {
        assert!(geometry(&[0u8; 4096]).is_err());
        let img = mkfs(64 << 20, 65536, &[]);
        let geo = geometry(&read_at(&img, 8192, 4096)).unwrap();
        assert_eq!((geo.cluster_size, geo.total_clusters), (65536, 1024));
        assert!(!geo.meta_ecc);
    }
}
