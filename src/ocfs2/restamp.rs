//! A new identity (UUID and label) for a byte copy of an OCFS2 filesystem.
//!
//! A clone must not keep its source's UUID: two filesystems with one UUID
//! in one o2cb cluster share a DLM domain, and their nodes corrupt each
//! other. `tunefs.ocfs2 -U/-L` need the cluster running, and 1.8.7's
//! `--cloned-volume` ignores its label; so we rewrite the superblocks the
//! way libocfs2's `ocfs2_write_super` does: the primary (block 2) and every
//! backup the `backup-super` feature says exists, each with a fresh
//! metadata checksum when `metaecc` is on. Nothing else changes: in
//! particular `s_uuid_hash` stays, as tunefs leaves it (it seeds the xattr
//! and indexed-directory hashes already on disk).
//!
//! Pure: the caller reads and writes the blocks.

use super::blockcheck;
use uuid::Uuid;

const SIGNATURE: &[u8] = b"OCFSV2";
/// OCFS2_SUPER_BLOCK_BLKNO.
pub(crate) const SUPERBLOCK_BLKNO: u64 = 2;

// struct ocfs2_dinode (ocfs2_fs.h).
/// `i_clusters`: for the superblock, the filesystem's size in clusters.
pub(crate) const I_CLUSTERS: usize = 0x14;
/// `i_blkno`: the block's own number; backups hold theirs, not 2.
pub(crate) const I_BLKNO: usize = 0x50;
/// `i_fs_generation`: stamped into every group descriptor (`bg_generation`).
pub(crate) const I_FS_GENERATION: usize = 0x60;
/// `id2`: where `struct ocfs2_super_block` starts.
const SUPER: usize = 0xC0;
// struct ocfs2_super_block, from `id2`.
const S_FEATURE_COMPAT: usize = SUPER + 0x1C;
const S_FEATURE_INCOMPAT: usize = SUPER + 0x20;
const S_BLOCKSIZE_BITS: usize = SUPER + 0x38;
const S_CLUSTERSIZE_BITS: usize = SUPER + 0x3C;
pub(crate) const S_FIRST_CLUSTER_GROUP: usize = SUPER + 0x48;
const S_LABEL: usize = SUPER + 0x50;
const S_UUID: usize = SUPER + 0x90;
/// OCFS2_MAX_VOL_LABEL_LEN, NUL included.
const LABEL_LEN: usize = 64;

/// OCFS2_FEATURE_COMPAT_BACKUP_SB.
const COMPAT_BACKUP_SB: u32 = 0x0001;
/// OCFS2_FEATURE_INCOMPAT_META_ECC.
const INCOMPAT_META_ECC: u32 = 0x0800;
/// OCFS2_FEATURE_INCOMPAT_LOCAL_MOUNT: a single-node filesystem.
const INCOMPAT_LOCAL_MOUNT: u32 = 0x0008;
/// OCFS2_BACKUP_SB_START: backup i sits at 1 GiB << 2i (1, 4, 16, 64,
/// 256 GiB, 1 TiB).
const BACKUP_SB_START: u64 = 1 << 30;
/// OCFS2_MAX_BACKUP_SUPERBLOCKS.
const MAX_BACKUP_SUPERBLOCKS: u32 = 6;

/// What a clone gets instead of its source's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uuid: Uuid,
    /// Stored NUL-padded; cut to 63 bytes at a character boundary.
    pub label: String,
}

/// The fields of a superblock block we need, after checking they make sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SuperFields {
    pub block_bits: u32,
    pub cluster_bits: u32,
    /// i_clusters: the filesystem's size in clusters.
    pub clusters: u64,
    pub blkno: u64,
    pub fs_generation: u32,
    pub first_cluster_group: u64,
    pub backup_sb: bool,
    pub meta_ecc: bool,
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | u64::from(le_u32(b, at + 4)) << 32
}

/// Decodes a superblock (primary or backup) from exactly one block: the
/// signature, and a block size that is the length of `block`.
pub(crate) fn super_fields(block: &[u8]) -> Result<SuperFields, String> {
    if block.len() < 512 || !block.starts_with(SIGNATURE) {
        return Err("no OCFS2 superblock signature (OCFSV2)".into());
    }
    let block_bits = le_u32(block, S_BLOCKSIZE_BITS);
    if !(9..=12).contains(&block_bits) || block.len() != 1 << block_bits {
        return Err(format!(
            "superblock says block size bits {block_bits}, but it was read as a block of {} bytes",
            block.len()
        ));
    }
    let cluster_bits = le_u32(block, S_CLUSTERSIZE_BITS);
    if !(12..=20).contains(&cluster_bits) {
        return Err(format!(
            "superblock says cluster size bits {cluster_bits}, not 12 to 20"
        ));
    }
    Ok(SuperFields {
        block_bits,
        cluster_bits,
        clusters: u64::from(le_u32(block, I_CLUSTERS)),
        blkno: le_u64(block, I_BLKNO),
        fs_generation: le_u32(block, I_FS_GENERATION),
        first_cluster_group: le_u64(block, S_FIRST_CLUSTER_GROUP),
        backup_sb: le_u32(block, S_FEATURE_COMPAT) & COMPAT_BACKUP_SB != 0,
        meta_ecc: le_u32(block, S_FEATURE_INCOMPAT) & INCOMPAT_META_ECC != 0,
    })
}

/// The primary superblock's fields; Err unless it says it is block 2.
pub(crate) fn primary_fields(primary: &[u8]) -> Result<SuperFields, String> {
    let sb = super_fields(primary)?;
    if sb.blkno != SUPERBLOCK_BLKNO {
        return Err(format!(
            "primary superblock says it is block {}, not {SUPERBLOCK_BLKNO}",
            sb.blkno
        ));
    }
    Ok(sb)
}

/// Byte offsets (from the filesystem's start) of the primary superblock
/// and of every backup, primary first, given the primary superblock block
/// as read (exactly one filesystem block). Err if it is not a superblock.
///
/// The filesystem's size is the primary's own (i_clusters), not the
/// device's: a backup exists only inside the filesystem, and a device
/// larger than its filesystem holds nothing of it past the end. The rule is
/// libocfs2's `ocfs2_get_backup_super_offsets`: none without the
/// `backup-super` feature, else backup i at 1 GiB << 2i while that block
/// is below the filesystem's block count.
pub fn superblock_offsets(primary: &[u8]) -> Result<Vec<u64>, String> {
    let sb = primary_fields(primary)?;
    let fs_blocks = sb.clusters << (sb.cluster_bits - sb.block_bits);
    let mut offsets = vec![SUPERBLOCK_BLKNO << sb.block_bits];
    if sb.backup_sb {
        offsets.extend(
            (0..MAX_BACKUP_SUPERBLOCKS)
                .map(|i| BACKUP_SB_START << (2 * i))
                .take_while(|at| at >> sb.block_bits < fs_blocks),
        );
    }
    Ok(offsets)
}

/// The label as stored: at most 63 bytes (cut at a character boundary),
/// NUL-padded to 64.
fn label_field(label: &str) -> Result<[u8; LABEL_LEN], String> {
    if label.contains('\0') {
        return Err(format!("label {label:?} holds a NUL byte"));
    }
    let mut end = label.len().min(LABEL_LEN - 1);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    let mut field = [0u8; LABEL_LEN];
    field[..end].copy_from_slice(&label.as_bytes()[..end]);
    Ok(field)
}

/// Rewrites one superblock block (primary or backup) in place with `id`.
/// `at` is the block's byte offset in the filesystem: the block must say
/// it is that block (i_blkno), which catches a backup offset computed for
/// another block size and a block that is not a superblock at all. On Err
/// `block` is unchanged.
pub fn restamp(block: &mut [u8], at: u64, id: &Identity) -> Result<(), String> {
    let sb = superblock_at(block, at)?;
    let label = label_field(&id.label)?;
    block[S_LABEL..S_LABEL + LABEL_LEN].copy_from_slice(&label);
    block[S_UUID..S_UUID + 16].copy_from_slice(id.uuid.as_bytes());
    if sb.meta_ecc {
        blockcheck::stamp(block, blockcheck::DINODE_CHECK);
    }
    Ok(())
}

/// The superblock block read at byte `at`, checked to say it is that
/// block (i_blkno): which catches a backup offset computed for another
/// block size and a block that is not a superblock at all.
fn superblock_at(block: &[u8], at: u64) -> Result<SuperFields, String> {
    let sb = super_fields(block).map_err(|e| format!("at byte {at}: {e}"))?;
    let block_size = 1u64 << sb.block_bits;
    if !at.is_multiple_of(block_size) || sb.blkno != at / block_size {
        return Err(format!(
            "superblock at byte {at} says it is block {} of {block_size} bytes",
            sb.blkno
        ));
    }
    Ok(sb)
}

/// Marks one superblock block (primary or backup, read at byte `at`) as a
/// local filesystem, or a cluster one again. A clone bigger than its
/// source grows with `tunefs.ocfs2 -S` while it is still pending, so no
/// node can mount it; tunefs takes the cluster's lock for anything but a
/// local filesystem, and the controller is no cluster member. So the clone
/// is local for the grow only: the primary before, every superblock the
/// grow left after. On Err `block` is unchanged.
pub fn set_local(block: &mut [u8], at: u64, local: bool) -> Result<(), String> {
    let sb = superblock_at(block, at)?;
    let incompat = le_u32(block, S_FEATURE_INCOMPAT);
    let incompat = match local {
        true => incompat | INCOMPAT_LOCAL_MOUNT,
        false => incompat & !INCOMPAT_LOCAL_MOUNT,
    };
    block[S_FEATURE_INCOMPAT..S_FEATURE_INCOMPAT + 4].copy_from_slice(&incompat.to_le_bytes());
    if sb.meta_ecc {
        blockcheck::stamp(block, blockcheck::DINODE_CHECK);
    }
    Ok(())
}

/// Real filesystems for the tests: `mkfs.ocfs2` on sparse image files.
#[cfg(test)]
pub(crate) mod testimg {
    use std::path::PathBuf;
    use std::process::Command;

    pub struct Image {
        _dir: tempfile::TempDir,
        pub path: PathBuf,
    }

    /// A filesystem of `size` bytes, 4 KiB blocks, `cluster_size` clusters,
    /// two slots, a 4 MiB journal (or 16 clusters when that is more).
    pub fn mkfs(size: u64, cluster_size: u64, extra: &[&str]) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let out = Command::new("mkfs.ocfs2")
            .args(["-F", "-x", "-q", "--cluster-stack=o2cb"])
            .args(["--cluster-name=testclu", "--global-heartbeat"])
            .args(["-N", "2", "-b", "4096", "-C"])
            .arg(cluster_size.to_string())
            // mkfs refuses a journal of few clusters (16 MiB for 1 MiB ones).
            .arg("-J")
            .arg(format!(
                "size={}K",
                (4 << 10).max((16 * cluster_size) >> 10)
            ))
            .args(extra)
            .arg(&path)
            .output()
            .expect("mkfs.ocfs2 (ocfs2-tools) is installed by scripts/deps.sh");
        assert!(out.status.success(), "{out:?}");
        Image { _dir: dir, path }
    }

    /// `debugfs.ocfs2 [args] -R request image`: its stdout, which must not
    /// be empty (debugfs exits 0 even when it cannot open the image).
    pub fn debugfs(img: &Image, args: &[&str], request: &str) -> String {
        let out = Command::new("debugfs.ocfs2")
            .args(args)
            .arg("-R")
            .arg(request)
            .arg(&img.path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && !stdout.trim().is_empty(), "{out:?}");
        stdout
    }

    pub fn read_at(img: &Image, at: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let f = std::fs::File::open(&img.path).unwrap();
        f.read_exact_at(&mut buf, at).unwrap();
        buf
    }

    pub fn write_at(img: &Image, at: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap();
        f.write_all_at(data, at).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testimg::{debugfs, mkfs, read_at, write_at, Image};
    use super::*;
    use crate::ocfs2::superblock;
    use std::process::Command;

    const GIB: u64 = 1 << 30;
    const OLD_UUID: &str = "11111111-2222-3333-4444-555555555555";

    fn image(size: u64, extra: &[&str]) -> Image {
        let mut args = vec!["-L", "source-vol", "-U", OLD_UUID];
        args.extend_from_slice(extra);
        mkfs(size, 4096, &args)
    }

    fn fsck_ok(img: &Image) {
        let out = Command::new("fsck.ocfs2")
            .arg("-fn")
            .arg(&img.path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// Restamps every superblock of `img` the way a clone will.
    fn restamp_image(img: &Image, id: &Identity) -> Vec<u64> {
        let primary = read_at(img, 2 * 4096, 4096);
        let offsets = superblock_offsets(&primary).unwrap();
        for &at in &offsets {
            let mut block = read_at(img, at, 4096);
            restamp(&mut block, at, id).unwrap();
            write_at(img, at, &block);
        }
        offsets
    }

    fn check_identity(img: &Image, offsets: &[u64], id: &Identity, ecc: bool) {
        fsck_ok(img);
        let hex = id.uuid.simple().to_string().to_uppercase();
        // debugfs -s N opens the filesystem through backup N, checking its
        // signature and (with metaecc) its checksum as it does the primary.
        for n in 0..offsets.len() {
            let args = if n == 0 {
                vec![]
            } else {
                vec!["-s".to_string(), n.to_string()]
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let stats = debugfs(img, &args, "stats");
            assert!(
                stats.contains(&format!("\tLabel: {}\n", id.label)),
                "{stats}"
            );
            assert!(stats.contains(&format!("\tUUID: {hex}\n")), "{stats}");
        }
        for &at in offsets {
            let block = read_at(img, at, 4096);
            let mut head = vec![0u8; 3 * 4096];
            head[2 * 4096..].copy_from_slice(&block);
            let sb = superblock::decode(&head).expect("a superblock");
            assert_eq!((sb.uuid, sb.label.as_str()), (id.uuid, id.label.as_str()));
            assert_eq!(le_u64(&block, I_BLKNO), at / 4096);
            if ecc {
                assert!(blockcheck::verify(&block, blockcheck::DINODE_CHECK));
            } else {
                assert_eq!(
                    blockcheck::stored(&block, blockcheck::DINODE_CHECK),
                    Some((0, 0))
                );
            }
        }
    }

    #[test]
    fn restamps_every_superblock_of_real_images() {
        for (size, features, backups) in [
            (GIB + GIB / 2, "--fs-features=metaecc", 1),
            (GIB + GIB / 2, "--fs-features=nometaecc", 1),
            (5 * GIB, "--fs-features=metaecc", 2),
            (5 * GIB, "--fs-features=nometaecc", 2),
        ] {
            let img = image(size, &[features]);
            let id = Identity {
                uuid: Uuid::new_v4(),
                label: format!("clone-{size}-{features}"),
            };
            let offsets = restamp_image(&img, &id);
            let mut want = vec![8192, GIB];
            if backups == 2 {
                want.push(4 * GIB);
            }
            assert_eq!(offsets, want, "{size} {features}");
            check_identity(&img, &offsets, &id, features.ends_with("=metaecc"));
        }
    }

    #[test]
    fn backups_only_where_the_feature_and_the_size_say() {
        // Below 1 GiB there is no backup, with the feature on or not.
        let img = image(512 << 20, &[]);
        let primary = read_at(&img, 8192, 4096);
        assert_eq!(superblock_offsets(&primary).unwrap(), [8192]);
        // A filesystem of exactly 1 GiB ends where its first backup would
        // be; mkfs writes none.
        let img = image(GIB, &[]);
        let primary = read_at(&img, 8192, 4096);
        assert_eq!(superblock_offsets(&primary).unwrap(), [8192]);
        // Without the feature the block at 1 GiB is data, never touched.
        let img = image(GIB + GIB / 2, &["--fs-features=nobackup-super,metaecc"]);
        let primary = read_at(&img, 8192, 4096);
        assert_eq!(superblock_offsets(&primary).unwrap(), [8192]);
        let id = Identity {
            uuid: Uuid::new_v4(),
            label: "no-backups".into(),
        };
        let offsets = restamp_image(&img, &id);
        check_identity(&img, &offsets, &id, true);
        // The device may be larger than its filesystem: the size is the
        // superblock's.
        let img = image(GIB + GIB / 2, &[]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap()
            .set_len(6 * GIB)
            .unwrap();
        let primary = read_at(&img, 8192, 4096);
        assert_eq!(superblock_offsets(&primary).unwrap(), [8192, GIB]);
    }

    #[test]
    fn a_missing_backup_is_an_error() {
        let img = image(GIB + GIB / 2, &[]);
        let primary = read_at(&img, 8192, 4096);
        let offsets = superblock_offsets(&primary).unwrap();
        assert_eq!(offsets, [8192, GIB]);
        let id = Identity {
            uuid: Uuid::new_v4(),
            label: "x".into(),
        };
        let mut zeroes = vec![0u8; 4096];
        let err = restamp(&mut zeroes, GIB, &id).unwrap_err();
        assert!(err.contains("signature"), "{err}");
        assert_eq!(zeroes, vec![0u8; 4096]);
        // The primary's bytes at another place: its i_blkno says 2.
        let mut moved = primary.clone();
        let err = restamp(&mut moved, GIB, &id).unwrap_err();
        assert!(err.contains("block 2"), "{err}");
        assert_eq!(moved, primary);
        // Read with the wrong block size.
        let mut short = primary[..2048].to_vec();
        assert!(restamp(&mut short, 8192, &id).is_err());
        assert!(superblock_offsets(&primary[..2048]).is_err());
        assert!(superblock_offsets(&[0u8; 4096]).is_err());
        // A backup is not a primary.
        let backup = read_at(&img, GIB, 4096);
        let err = superblock_offsets(&backup).unwrap_err();
        assert!(err.contains("not 2"), "{err}");
    }

    #[test]
    fn labels_are_cut_at_a_character_boundary() {
        let img = image(64 << 20, &["--fs-features=metaecc"]);
        let primary = read_at(&img, 8192, 4096);
        // 62 ASCII bytes and a 2-byte character: 64 bytes, cut to 62.
        let long = format!("{}é", "a".repeat(62));
        let mut block = primary.clone();
        let id = Identity {
            uuid: Uuid::new_v4(),
            label: long,
        };
        restamp(&mut block, 8192, &id).unwrap();
        assert_eq!(&block[S_LABEL..S_LABEL + 62], "a".repeat(62).as_bytes());
        assert_eq!(&block[S_LABEL + 62..S_LABEL + 64], &[0, 0]);
        assert!(blockcheck::verify(&block, blockcheck::DINODE_CHECK));
        // Exactly 63 bytes fit.
        let id = Identity {
            uuid: id.uuid,
            label: "b".repeat(70),
        };
        restamp(&mut block, 8192, &id).unwrap();
        assert_eq!(&block[S_LABEL..S_LABEL + 63], "b".repeat(63).as_bytes());
        assert_eq!(block[S_LABEL + 63], 0);
        // A shorter label leaves nothing of the longer one behind.
        let id = Identity {
            uuid: id.uuid,
            label: "short".into(),
        };
        restamp(&mut block, 8192, &id).unwrap();
        assert_eq!(&block[S_LABEL..S_LABEL + 6], b"short\0");
        assert!(block[S_LABEL + 5..S_LABEL + 64].iter().all(|&b| b == 0));
        // Only the label, the UUID and the check changed.
        let mut a = primary.clone();
        let mut b = block.clone();
        for buf in [&mut a, &mut b] {
            buf[S_LABEL..S_UUID + 16].fill(0);
            buf[blockcheck::DINODE_CHECK..blockcheck::DINODE_CHECK + 8].fill(0);
        }
        assert_eq!(a, b);
        let nul = Identity {
            uuid: id.uuid,
            label: "a\0b".into(),
        };
        assert!(restamp(&mut block, 8192, &nul).is_err());
    }

    /// The offline grow a bigger clone gets: local for tunefs -S, then a
    /// cluster filesystem again in every superblock, fsck clean.
    #[test]
    fn a_filesystem_marked_local_grows_without_the_cluster() {
        for extra in [&["--fs-features=metaecc"][..], &[]] {
            let img = image(1200 << 20, extra);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&img.path)
                .unwrap()
                .set_len(2400 << 20)
                .unwrap();
            let mut primary = read_at(&img, 8192, 4096);
            set_local(&mut primary, 8192, true).unwrap();
            write_at(&img, 8192, &primary);
            assert!(debugfs(&img, &[], "stats").contains(" local "));
            let out = Command::new("tunefs.ocfs2")
                .arg("-S")
                .arg(&img.path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let primary = read_at(&img, 8192, 4096);
            let offsets = superblock_offsets(&primary).unwrap();
            assert_eq!(offsets, vec![8192, GIB], "the grow made a backup at 1 GiB");
            for at in offsets {
                let mut block = read_at(&img, at, 4096);
                set_local(&mut block, at, false).unwrap();
                write_at(&img, at, &block);
            }
            fsck_ok(&img);
            let stats = debugfs(&img, &[], "stats");
            assert!(!stats.contains(" local "), "{stats}");
            assert!(stats.contains("Clusters: 614400"), "{stats}");
            let backup = debugfs(&img, &["-s", "1"], "stats");
            assert!(!backup.contains(" local "), "{backup}");
        }
    }
}
