//! Reading an OCFS2 superblock from its bytes, without the tools: what a
//! scan of a LUN whose partition table is gone needs to name each volume it
//! finds (label, UUID, cluster, size). Offsets are those of `struct
//! ocfs2_dinode` and `struct ocfs2_super_block` (ocfs2_fs.h).

use uuid::Uuid;

const SIGNATURE: &[u8] = b"OCFSV2";
/// Where the superblock's fields start inside its inode (`id2`).
const SUPER: usize = 0xC0;
/// `i_clusters` of the superblock inode: the volume's size in clusters.
const I_CLUSTERS: usize = 20;
const S_FEATURE_INCOMPAT: usize = SUPER + 32;
const S_BLOCKSIZE_BITS: usize = SUPER + 56;
const S_CLUSTERSIZE_BITS: usize = SUPER + 60;
const S_MAX_SLOTS: usize = SUPER + 64;
const S_LABEL: usize = SUPER + 80;
const S_UUID: usize = SUPER + 144;
const S_CLUSTER_NAME: usize = SUPER + 168;
/// OCFS2_FEATURE_INCOMPAT_HEARTBEAT_DEV: made by `mkfs.ocfs2 -H`.
const HEARTBEAT_DEV: u32 = 0x0002;
/// OCFS2_FEATURE_INCOMPAT_CLUSTERINFO: the cluster name is on disk.
const CLUSTERINFO: u32 = 0x4000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub label: String,
    pub uuid: Uuid,
    pub block_size: u64,
    pub cluster_size: u64,
    pub slots: u16,
    /// The size the superblock records, in bytes (clusters x cluster size).
    pub bytes: u64,
    pub cluster_name: Option<String>,
    /// A heartbeat device (`mkfs.ocfs2 -H`), not a volume.
    pub heartbeat: bool,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes the superblock of the filesystem whose first bytes are `head`
/// (it is block 2, so `head` must hold at least 8 KiB plus one block for
/// 4 KiB blocks). None when there is none or its fields make no sense.
pub fn decode(head: &[u8]) -> Option<Superblock> {
    for bits in 9..=12u32 {
        let at = 2usize << bits;
        let Some(sb) = head.get(at..at + (1 << bits)) else {
            continue;
        };
        if !sb.starts_with(SIGNATURE) || le_u32(sb, S_BLOCKSIZE_BITS) != bits {
            continue;
        }
        let cluster_bits = le_u32(sb, S_CLUSTERSIZE_BITS);
        if !(12..=20).contains(&cluster_bits) {
            return None;
        }
        let incompat = le_u32(sb, S_FEATURE_INCOMPAT);
        let cluster_name = (incompat & CLUSTERINFO != 0)
            .then(|| text(&sb[S_CLUSTER_NAME..S_CLUSTER_NAME + 16]))
            .filter(|n| !n.is_empty());
        return Some(Superblock {
            label: text(&sb[S_LABEL..S_LABEL + 64]),
            uuid: Uuid::from_slice(&sb[S_UUID..S_UUID + 16]).ok()?,
            block_size: 1 << bits,
            cluster_size: 1 << cluster_bits,
            slots: u16::from_le_bytes([sb[S_MAX_SLOTS], sb[S_MAX_SLOTS + 1]]),
            bytes: u64::from(le_u32(sb, I_CLUSTERS)) << cluster_bits,
            cluster_name,
            heartbeat: incompat & HEARTBEAT_DEV != 0,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `mkfs.ocfs2` (the real one) on a file; returns its first 16 KiB.
    fn mkfs(size: u64, args: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let out = Command::new("mkfs.ocfs2")
            .args(["-F", "-q", "--cluster-stack=o2cb", "--cluster-name=testclu"])
            .args(args)
            .arg(&img)
            .output()
            .expect("mkfs.ocfs2 (ocfs2-tools) is installed by scripts/deps.sh");
        assert!(out.status.success(), "{out:?}");
        std::fs::read(&img).unwrap()[..16384].to_vec()
    }

    #[test]
    fn reads_what_mkfs_wrote() {
        let head = mkfs(
            100 << 20,
            &[
                "-b",
                "4096",
                "-C",
                "8192",
                "-N",
                "3",
                "-J",
                "size=4M",
                "-L",
                "pvc-label",
                "-U",
                "11111111-2222-3333-4444-555555555555",
            ],
        );
        let sb = decode(&head).expect("a superblock");
        assert_eq!(sb.label, "pvc-label");
        assert_eq!(sb.uuid.to_string(), "11111111-2222-3333-4444-555555555555");
        assert_eq!((sb.block_size, sb.cluster_size, sb.slots), (4096, 8192, 3));
        assert_eq!(sb.bytes, 100 << 20);
        assert_eq!(sb.cluster_name.as_deref(), Some("testclu"));
        assert!(!sb.heartbeat);
    }

    #[test]
    fn tells_a_heartbeat_device() {
        let head = mkfs(16 << 20, &["-H", "-x", "-L", "ocfs2-csi-heartbeat"]);
        let sb = decode(&head).expect("a superblock");
        assert!(sb.heartbeat);
        assert_eq!(sb.label, "ocfs2-csi-heartbeat");
        assert_eq!(sb.block_size, 512);
    }

    #[test]
    fn anything_else_is_none() {
        assert_eq!(decode(&[0u8; 16384]), None);
        let mut fake = vec![0u8; 16384];
        fake[8192..8198].copy_from_slice(SIGNATURE);
        // Signature without a block size that matches its place.
        assert_eq!(decode(&fake), None);
        assert_eq!(decode(&fake[..100]), None);
    }
}
