//! Checks on what a Node RPC asks for, before anything is touched: paths
//! and volume context (mount flags: `crate::volume::mount_options`). Pure
//! functions (apart from looking at a
//! path's own inode), so every refusal is unit-tested.

use crate::ocfs2::layout::HeartbeatMode;
use crate::volume::entry::Content;
use crate::volume::mount_options::MountFlagError;
use std::path::{Component, Path, PathBuf};
use uuid::Uuid;

/// What was wrong with a request; always InvalidArgument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} {value:?} is not a volume ID of this driver")]
    VolumeId { field: &'static str, value: String },
    #[error("{field} {path:?} {why}")]
    Path {
        field: &'static str,
        path: String,
        why: &'static str,
    },
    #[error(transparent)]
    MountFlag(#[from] MountFlagError),
    #[error("volume_capability is missing")]
    NoCapability,
    #[error("the request asks for block access; this call serves filesystem volumes only")]
    Block,
    #[error("fs_type {0:?} is not supported: volumes are OCFS2")]
    FsType(String),
    #[error("access mode {0} is unknown")]
    AccessMode(i32),
    #[error("volume_context key {key:?} {why}")]
    Context { key: &'static str, why: String },
    #[error("capacity_range: {0}")]
    Capacity(String),
}

const MAX_PATH: usize = 4096;

/// A path the CO gives us to mount on: absolute, without `.`/`..`
/// components (so it cannot climb out of where the CO meant), and its last
/// component, when it exists, not a symlink (we would mount on whatever it
/// points at).
pub fn mount_path(field: &'static str, value: &str) -> Result<PathBuf, BadRequest> {
    let bad = |why| BadRequest::Path {
        field,
        path: value.chars().take(200).collect(),
        why,
    };
    if value.is_empty() {
        return Err(BadRequest::Empty { field });
    }
    if value.len() > MAX_PATH || value.contains('\0') {
        return Err(bad("is too long or contains NUL"));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(bad("is not absolute"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || value.split('/').any(|c| c == "." || c == "..")
    {
        return Err(bad("contains . or .. components"));
    }
    if path.parent().is_none() {
        return Err(bad("is the root directory"));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(bad("is a symbolic link")),
        _ => Ok(path.to_path_buf()),
    }
}

/// The bytes a NodeExpandVolume asks for at least (0: no minimum). A range
/// cannot be negative or end below its start.
pub fn capacity(range: Option<&crate::csi::CapacityRange>) -> Result<u64, BadRequest> {
    let Some(r) = range else { return Ok(0) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(BadRequest::Capacity(format!(
            "negative bytes (required {}, limit {})",
            r.required_bytes, r.limit_bytes
        )));
    }
    if r.limit_bytes != 0 && r.limit_bytes < r.required_bytes {
        return Err(BadRequest::Capacity(format!(
            "limit {} is below required {}",
            r.limit_bytes, r.required_bytes
        )));
    }
    Ok(r.required_bytes as u64)
}

/// What the volume holds, as the controller wrote it in the context
/// (volumes made before the key existed are filesystem volumes).
pub fn context_content(
    ctx: &std::collections::HashMap<String, String>,
) -> Result<Content, BadRequest> {
    match ctx.get("content").map(String::as_str) {
        None | Some("filesystem") => Ok(Content::Ocfs2),
        Some("block") => Ok(Content::Block),
        Some(other) => Err(BadRequest::Context {
            key: "content",
            why: format!(
                "{:?} must be filesystem or block",
                other.chars().take(64).collect::<String>()
            ),
        }),
    }
}

/// A raw block volume's context: its cluster's name.
pub fn block_context(
    ctx: &std::collections::HashMap<String, String>,
) -> Result<String, BadRequest> {
    ctx.get("clusterName").cloned().ok_or(BadRequest::Context {
        key: "clusterName",
        why: "is missing (was the volume made by this driver?)".into(),
    })
}

/// What the controller put in the volume context, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeContext {
    pub fs_uuid: Uuid,
    pub cluster_name: String,
    pub heartbeat: HeartbeatMode,
}

pub fn volume_context(
    ctx: &std::collections::HashMap<String, String>,
) -> Result<VolumeContext, BadRequest> {
    let get = |key: &'static str| {
        ctx.get(key).ok_or(BadRequest::Context {
            key,
            why: "is missing (was the volume made by this driver?)".into(),
        })
    };
    let fs_uuid = get("fsUuid")?;
    let fs_uuid = Uuid::try_parse(fs_uuid).map_err(|_| BadRequest::Context {
        key: "fsUuid",
        why: format!(
            "{:?} is not a UUID",
            fs_uuid.chars().take(64).collect::<String>()
        ),
    })?;
    let cluster_name = get("clusterName")?.clone();
    let heartbeat = get("heartbeat")?;
    let heartbeat = HeartbeatMode::parse(heartbeat).ok_or(BadRequest::Context {
        key: "heartbeat",
        why: "must be global or local".into(),
    })?;
    Ok(VolumeContext {
        fs_uuid,
        cluster_name,
        heartbeat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_plain() {
        assert!(mount_path("p", "/var/lib/kubelet/x/globalmount").is_ok());
        for bad in ["", "relative/x", "/a/../etc", "/a/./b", "/", "/a\0b"] {
            assert!(mount_path("p", bad).is_err(), "{bad:?} accepted");
        }
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert_eq!(
            mount_path("target_path", link.to_str().unwrap()),
            Err(BadRequest::Path {
                field: "target_path",
                path: link.to_str().unwrap().into(),
                why: "is a symbolic link"
            })
        );
    }

    #[test]
    fn capacity_ranges_are_checked() {
        use crate::csi::CapacityRange;
        let range = |required_bytes, limit_bytes| CapacityRange {
            required_bytes,
            limit_bytes,
        };
        assert_eq!(capacity(None), Ok(0));
        assert_eq!(capacity(Some(&range(5, 0))), Ok(5));
        assert_eq!(capacity(Some(&range(5, 5))), Ok(5));
        for bad in [range(-1, 0), range(0, -1), range(6, 5)] {
            assert!(matches!(capacity(Some(&bad)), Err(BadRequest::Capacity(_))));
        }
    }

    #[test]
    fn content_comes_from_the_context() {
        let mut ctx = std::collections::HashMap::new();
        assert_eq!(context_content(&ctx), Ok(Content::Ocfs2));
        ctx.insert("content".to_string(), "block".to_string());
        assert_eq!(context_content(&ctx), Ok(Content::Block));
        ctx.insert("content".to_string(), "filesystem".to_string());
        assert_eq!(context_content(&ctx), Ok(Content::Ocfs2));
        ctx.insert("content".to_string(), "tape".to_string());
        assert!(context_content(&ctx).is_err());
        assert!(block_context(&ctx).is_err());
        ctx.insert("clusterName".to_string(), "c".to_string());
        assert_eq!(block_context(&ctx).as_deref(), Ok("c"));
    }

    #[test]
    fn context_needs_all_keys() {
        let mut ctx = std::collections::HashMap::new();
        assert!(volume_context(&ctx).is_err());
        ctx.insert("fsUuid".into(), Uuid::nil().to_string());
        ctx.insert("clusterName".into(), "c".into());
        ctx.insert("heartbeat".into(), "global".into());
        assert_eq!(
            volume_context(&ctx).unwrap().heartbeat,
            HeartbeatMode::Global
        );
        ctx.insert("heartbeat".into(), "none".into());
        assert!(volume_context(&ctx).is_err());
        ctx.insert("heartbeat".into(), "local".into());
        ctx.insert("fsUuid".into(), "nope".into());
        assert!(volume_context(&ctx).is_err());
    }
}
