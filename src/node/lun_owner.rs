//! A node uses only LUNs of its own cluster: before it heartbeats on a LUN
//! (or mounts anything from it), it reads the LUN's ownership stamp, which
//! the controller writes when it initialises or first opens the LUN.

use crate::disk::lun_io::LunFile;
use crate::disk::ownership::{self, OwnershipError};
use std::path::Path;

/// Why a LUN may not be used (yet).
#[derive(Debug, PartialEq, Eq)]
pub enum OwnerProblem {
    /// Stamped by another cluster, or holding a stamp we cannot read: an
    /// operator must look; waiting will not help.
    Refused(String),
    /// Not stamped yet, or not readable now: the controller may not have
    /// opened it yet, or a path is down.
    NotYet(String),
}

/// Checks `lun`'s stamp against this node's cluster ID (read-only, direct
/// I/O, on a blocking thread).
pub async fn check(lun: &Path, cluster_id: &str) -> Result<(), OwnerProblem> {
    let (path, ours) = (lun.to_path_buf(), cluster_id.to_string());
    tokio::task::spawn_blocking(move || {
        let name = path.display();
        let io = LunFile::open_read_only(&path)
            .map_err(|e| OwnerProblem::NotYet(format!("{name}: opening: {e}")))?;
        match ownership::read(&io) {
            Ok(Some(o)) if o.cluster_id == ours => Ok(()),
            Ok(Some(o)) => Err(OwnerProblem::Refused(format!(
                "{name} belongs to another cluster: its ownership stamp names {}, but this node \
                 runs cluster ID {ours:?}; refusing to heartbeat on it or mount from it",
                o.describe()
            ))),
            Ok(None) => Err(OwnerProblem::NotYet(format!(
                "{name} carries no ownership stamp yet (the controller writes it when it opens \
                 the LUN)"
            ))),
            Err(OwnershipError::Io(e)) => Err(OwnerProblem::NotYet(format!(
                "{name}: reading the ownership stamp: {e}"
            ))),
            Err(e) => Err(OwnerProblem::Refused(format!("{name}: {e}"))),
        }
    })
    .await
    .unwrap_or_else(|e| Err(OwnerProblem::NotYet(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::ownership::Ownership;
    use uuid::Uuid;

    #[tokio::test]
    async fn only_our_own_stamp_passes() {
        let dir = tempfile::tempdir().unwrap();
        let lun = dir.path().join("lun.raw");
        std::fs::File::create(&lun)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        assert!(matches!(
            check(&lun, "ours").await,
            Err(OwnerProblem::NotYet(_))
        ));
        let stamp = |id: &str| Ownership {
            cluster_id: id.into(),
            cluster_name: "ocfs2csi".into(),
            disk_guid: Uuid::nil(),
            stamped_at: 1,
            stamped_by: "test".into(),
        };
        let io = LunFile::open(&lun).unwrap();
        ownership::write(&io, &stamp("theirs")).unwrap();
        match check(&lun, "ours").await {
            Err(OwnerProblem::Refused(why)) => {
                assert!(
                    why.contains("\"theirs\"") && why.contains("\"ours\""),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        ownership::write(&io, &stamp("ours")).unwrap();
        assert_eq!(check(&lun, "ours").await, Ok(()));
    }
}
