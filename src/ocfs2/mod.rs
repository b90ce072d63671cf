//! OCFS2 itself: how a volume is laid out for a requested size, the
//! arguments of its tools, and what they tell about a filesystem on disk.

pub mod bitmap;
pub mod blockcheck;
pub mod layout;
pub mod restamp;
pub mod superblock;
pub mod tools;

pub use layout::{HeartbeatMode, Layout};
pub use tools::{FsInfo, Ocfs2Tools};

/// Longest label OCFS2 stores (OCFS2_MAX_VOL_LABEL_LEN is 64 bytes with NUL).
pub const MAX_LABEL_BYTES: usize = 63;

/// o2cb cluster names: at most 16 bytes (the on-disk cluster info and
/// ocfs2-tools hold no more), letters, digits, '_' and '-'.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 16 {
        return Err(format!(
            "cluster name {name:?} must be 1 to 16 characters long"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "cluster name {name:?} may only hold letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}
