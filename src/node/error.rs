//! Everything a Node RPC can fail with, and its gRPC code, in one place.
//!
//! kubelet retries any error, but Aborted/Unavailable read as "still in
//! progress" to a human and to csi-sanity: only a busy volume, a plugin that
//! has not joined its cluster yet and a grow waiting for other nodes use
//! them.

use super::device::LocateError;
use super::dlm::DlmError;
use super::grow::Unconfirmed;
use super::request::BadRequest;
use crate::ocfs2::tools::Ocfs2Error;
pub use crate::server::status::{status, RpcError};
use crate::volume::entry::Content;
use std::path::PathBuf;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error("the volume belongs to o2cb cluster {volume:?}; this node is in {node:?}")]
    WrongCluster { volume: String, node: String },
    #[error("the volume uses {volume} heartbeat; this node's cluster runs {node} heartbeat")]
    WrongHeartbeat { volume: String, node: String },
    #[error("the volume is a {volume} volume; the request asks for {asked} access")]
    WrongContent { volume: Content, asked: Content },
    #[error("node plugin not ready: {0}")]
    NotReady(String),
    #[error("an operation on this volume is already in progress on this node")]
    InFlight,
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("{device} holds no OCFS2 filesystem; refusing to mount (never formatted here)")]
    NoFilesystem { device: PathBuf },
    #[error("{device} holds filesystem {found} ({what}), the volume context says {wanted}")]
    OtherFilesystem {
        device: PathBuf,
        found: String,
        wanted: String,
        what: &'static str,
    },
    #[error("the volume is already staged at {0}")]
    StagedElsewhere(PathBuf),
    #[error("{path} already has another mount ({what})")]
    PathInUse { path: PathBuf, what: String },
    #[error("the volume is not staged on this node{0}")]
    NotStaged(String),
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("no volume {0:?} exists (not an ID of this driver)")]
    NoSuchVolume(String),
    #[error("the volume is not staged on this node, or not at {0}")]
    NotHere(PathBuf),
    #[error("{path} is still in use: {why}")]
    Busy { path: PathBuf, why: String },
    #[error("growth waits for node(s) that do not see the bigger device yet: {}", list(.0))]
    Unconfirmed(Vec<Unconfirmed>),
    #[error("the volume is mounted on nodes {0:?}; online growth on several nodes needs global heartbeat (the volume uses local heartbeat)")]
    LocalMultiNode(Vec<u32>),
    /// Staged by a version that mounted the kernel's partition: that device
    /// never grows now, so the filesystem must not grow past it.
    #[error("the volume is mounted from {staged}, not from its map {map} (staged by an earlier version); unstage and stage it again on this node to grow it")]
    OldDevice { staged: PathBuf, map: PathBuf },
    #[error(
        "{required} bytes asked for; the volume's device has {partition} (grow the volume first)"
    )]
    OutOfRange { required: u64, partition: u64 },
    #[error("{what} did not answer within {after:?} (a hung cluster filesystem or LUN?); retry")]
    Stalled {
        what: String,
        after: std::time::Duration,
    },
    /// Between the confirmation and tunefs, this node's map changed size
    /// (the table grew again): a grow now would pass what the other nodes
    /// confirmed.
    #[error("this node's map is {kernel:?} bytes now, not the {confirmed} every node confirmed; not growing (retry confirms again)")]
    SizeMoved { confirmed: u64, kernel: Option<u64> },
    #[error("the filesystem's on-disk size ({on_disk} bytes) still differs from the mounted size ({live} bytes): its last grow is not written home yet; retry")]
    Unsettled { on_disk: u64, live: u64 },
    #[error(transparent)]
    Dlm(#[from] DlmError),
    #[error(transparent)]
    Tool(#[from] Ocfs2Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn list(nodes: &[Unconfirmed]) -> String {
    nodes
        .iter()
        .map(|u| format!("node {} {}", u.node, u.why))
        .collect::<Vec<_>>()
        .join("; ")
}

impl NodeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> NodeError {
        NodeError::Io {
            what: what.into(),
            source,
        }
    }
}

impl RpcError for NodeError {
    fn code(&self) -> Code {
        match self {
            NodeError::BadRequest(_) | NodeError::WrongContent { .. } => Code::InvalidArgument,
            NodeError::WrongCluster { .. }
            | NodeError::WrongHeartbeat { .. }
            | NodeError::NoFilesystem { .. }
            | NodeError::OtherFilesystem { .. }
            | NodeError::NotStaged(_)
            | NodeError::Busy { .. }
            | NodeError::LocalMultiNode(_)
            | NodeError::OldDevice { .. } => Code::FailedPrecondition,
            NodeError::NotReady(_)
            | NodeError::Unconfirmed(_)
            | NodeError::Unsettled { .. }
            | NodeError::SizeMoved { .. }
            | NodeError::Stalled { .. } => Code::Unavailable,
            NodeError::OutOfRange { .. } => Code::OutOfRange,
            NodeError::InFlight => Code::Aborted,
            NodeError::StagedElsewhere(_) | NodeError::PathInUse { .. } => Code::AlreadyExists,
            NodeError::NotMounted(_) | NodeError::NotHere(_) | NodeError::NoSuchVolume(_) => {
                Code::NotFound
            }
            NodeError::Locate(e) => match e {
                LocateError::NoLun { .. } | LocateError::NoPartition { .. } => Code::NotFound,
                LocateError::NotAVolume { .. }
                | LocateError::Deleting { .. }
                | LocateError::NotBlock { .. } => Code::FailedPrecondition,
                LocateError::Pending { .. } | LocateError::Cloning { .. } => Code::Unavailable,
                LocateError::Map { .. } | LocateError::Mismatch { .. } | LocateError::Io { .. } => {
                    Code::Internal
                }
            },
            NodeError::Dlm(DlmError::Timeout { .. }) => Code::Aborted,
            NodeError::Dlm(_) | NodeError::Tool(_) | NodeError::Io { .. } => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_states_use_retry_codes() {
        let retry = [
            Code::Aborted,
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
        ];
        let finished = [
            NodeError::BadRequest(BadRequest::NoCapability),
            NodeError::NoFilesystem {
                device: "/dev/x".into(),
            },
            NodeError::NotMounted("/x".into()),
            NodeError::StagedElsewhere("/x".into()),
            NodeError::LocalMultiNode(vec![0, 1]),
            NodeError::OutOfRange {
                required: 2,
                partition: 1,
            },
            NodeError::io("x", std::io::Error::other("y")),
        ];
        for e in finished {
            assert!(!retry.contains(&e.code()), "{e} uses a retry code");
        }
        for e in [
            NodeError::InFlight,
            NodeError::NotReady("joining".into()),
            NodeError::Unconfirmed(vec![]),
            NodeError::Stalled {
                what: "statfs".into(),
                after: std::time::Duration::from_secs(1),
            },
        ] {
            assert!(retry.contains(&e.code()), "{e}");
        }
    }
}
