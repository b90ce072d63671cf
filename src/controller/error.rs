//! One error type per controller RPC, each mapped to a gRPC code in one
//! exhaustive `match`, so a new variant forces a decision about its code.
//!
//! Kubelet and the sidecars retry Unavailable, Aborted, Cancelled and
//! DeadlineExceeded as "still in progress"; a finished failure never uses
//! them (the test at the bottom pins this). The exceptions are the ones the
//! CSI spec asks for: an operation already in flight for the same volume
//! (Aborted) and a controller that has not opened its LUNs yet
//! (Unavailable); and one that is not finished: LUN I/O that did not answer
//! within its bound and may still land (DeadlineExceeded). A controller
//! that is not (or no longer) its LUN's writer answers Unavailable: another
//! controller serves the change, or this one after taking over; a table
//! that changed between the read and the write of a change, Aborted.

use super::writer::WriterError;
use crate::disk::blocking::Stalled;
use crate::disk::gpt::GptError;
use crate::ocfs2::tools::Ocfs2Error;
pub use crate::server::status::{status, RpcError};
use crate::tools::ToolError;
use tonic::Code;

/// Failures shared by every RPC that touches a LUN.
#[derive(Debug, thiserror::Error)]
pub enum LunError {
    #[error("the controller is not ready: {0}")]
    NotReady(String),
    #[error("another operation on volume {0} is in progress")]
    InFlight(String),
    #[error("partition table of {lun}: {source}")]
    Table {
        lun: String,
        #[source]
        source: GptError,
    },
    #[error("I/O on {lun}: {source}")]
    Io {
        lun: String,
        #[source]
        source: std::io::Error,
    },
    /// The LUN did not answer in time; the I/O may still complete.
    #[error("{what} on {lun}: {source}")]
    Stalled {
        lun: String,
        what: &'static str,
        #[source]
        source: Stalled,
    },
    #[error("{lun}: {source}")]
    Writer {
        lun: String,
        #[source]
        source: WriterError,
    },
    #[error(
        "the partition table of {lun} changed between this change's read and its write \
             (another writer's stamp {found:?}, expected {expected:?}); nothing was written"
    )]
    TableChanged {
        lun: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Ocfs2(#[from] Ocfs2Error),
}

impl LunError {
    fn code(&self) -> Code {
        match self {
            LunError::NotReady(_) => Code::Unavailable,
            LunError::InFlight(_) | LunError::TableChanged { .. } => Code::Aborted,
            LunError::Writer { .. } => Code::Unavailable,
            // Not finished: the I/O may still land, and the retry then
            // finds its result (the work stays in flight meanwhile).
            LunError::Stalled { .. } => Code::DeadlineExceeded,
            // This host does not see the LUN's new size yet (a path down
            // keeps multipathd from resizing): a retry may.
            LunError::Table {
                source: GptError::DeviceSmaller { .. },
                ..
            } => Code::Unavailable,
            LunError::Table { .. }
            | LunError::Io { .. }
            | LunError::Tool(_)
            | LunError::Ocfs2(_) => Code::Internal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    CapacityOutOfRange(String),
    #[error("volume {name} already exists with different properties: {why}")]
    Incompatible { name: String, why: String },
    #[error(
        "not enough contiguous free space for {needed} bytes (partition of {partition} bytes); \
         the largest volume that fits now is {largest} bytes"
    )]
    NoSpace {
        needed: u64,
        partition: u64,
        largest: u64,
    },
    #[error("no free GPT entry left on any usable LUN (a LUN holds at most {max} volumes and extents together)")]
    NoPartitionNumber { max: u32 },
    /// A DeleteVolume of the same name has begun (its entry is Deleting);
    /// once it has finished, a retry creates the volume anew.
    #[error("volume {0} is being deleted; retry once the delete has finished")]
    BeingDeleted(String),
    #[error("source volume {0} does not exist")]
    SourceNotFound(String),
    /// CDI and the CSI spec clone only unused sources: OCFS2 cannot be
    /// frozen, so a copy of a volume in use is not a consistent one.
    #[error(
        "source volume {volume} is in use ({users}); OCFS2 cannot be frozen, so a volume is \
         {action} only while no node mounts or publishes it (a copy of a volume in use would \
         not be consistent): stop its users first"
    )]
    SourceInUse {
        volume: String,
        users: String,
        action: &'static str,
    },
    #[error("snapshot {0} does not exist")]
    SnapshotNotFound(String),
    /// The copy may not match its source; a retry copies again.
    #[error("{0}")]
    CopyVoided(String),
    #[error(transparent)]
    Lun(#[from] LunError),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "volume {volume} is still mounted on {} (its slot map says so); unmount it \
         everywhere first. If those nodes crashed, mounting and unmounting the volume on a \
         live node or running fsck.ocfs2 recovers their slots",
        .nodes.join(", ")
    )]
    Mounted { volume: String, nodes: Vec<String> },
    #[error(
        "raw block volume {volume} is still staged on {} (their marks in its header say so); \
         unstage it there first. A node that crashed clears its mark when its node plugin \
         starts again; marks of a node gone for good stay until a node plugin with its o2cb \
         number starts",
        .holders.join(", ")
    )]
    Held {
        volume: String,
        holders: Vec<String>,
    },
    #[error(transparent)]
    Lun(#[from] LunError),
}

#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    CapacityOutOfRange(String),
    #[error(
        "volume {volume} cannot grow to {wanted} bytes: {why}; it can grow to at most \
         {possible} bytes"
    )]
    NoRoom {
        volume: String,
        wanted: u64,
        possible: u64,
        why: String,
    },
    #[error("volume {0} is still being created; expand it once CreateVolume has finished")]
    NotCreated(String),
    #[error(transparent)]
    Lun(#[from] LunError),
}

/// ValidateVolumeCapabilities and ControllerGetVolume.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Lun(#[from] LunError),
}

/// ListVolumes and GetCapacity.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{0}")]
    InvalidArgument(String),
    /// The spec asks for Aborted when the token is not one we handed out.
    #[error("starting_token {0:?} is not valid")]
    BadToken(String),
    #[error(transparent)]
    Lun(#[from] LunError),
}

impl RpcError for CreateError {
    fn code(&self) -> Code {
        match self {
            CreateError::InvalidArgument(_) => Code::InvalidArgument,
            CreateError::CapacityOutOfRange(_) => Code::OutOfRange,
            CreateError::Incompatible { .. } => Code::AlreadyExists,
            CreateError::NoSpace { .. } | CreateError::NoPartitionNumber { .. } => {
                Code::ResourceExhausted
            }
            CreateError::BeingDeleted(_) | CreateError::CopyVoided(_) => Code::Aborted,
            CreateError::SourceNotFound(_) | CreateError::SnapshotNotFound(_) => Code::NotFound,
            CreateError::SourceInUse { .. } => Code::FailedPrecondition,
            CreateError::Lun(e) => e.code(),
        }
    }
}

impl RpcError for DeleteError {
    fn code(&self) -> Code {
        match self {
            DeleteError::InvalidArgument(_) => Code::InvalidArgument,
            DeleteError::Mounted { .. } | DeleteError::Held { .. } => Code::FailedPrecondition,
            DeleteError::Lun(e) => e.code(),
        }
    }
}

impl RpcError for ExpandError {
    fn code(&self) -> Code {
        match self {
            ExpandError::InvalidArgument(_) => Code::InvalidArgument,
            ExpandError::NotFound(_) => Code::NotFound,
            ExpandError::CapacityOutOfRange(_) | ExpandError::NoRoom { .. } => Code::OutOfRange,
            ExpandError::NotCreated(_) => Code::FailedPrecondition,
            ExpandError::Lun(e) => e.code(),
        }
    }
}

impl RpcError for LookupError {
    fn code(&self) -> Code {
        match self {
            LookupError::InvalidArgument(_) => Code::InvalidArgument,
            LookupError::NotFound(_) => Code::NotFound,
            LookupError::Lun(e) => e.code(),
        }
    }
}

impl RpcError for ListError {
    fn code(&self) -> Code {
        match self {
            ListError::InvalidArgument(_) => Code::InvalidArgument,
            ListError::BadToken(_) => Code::Aborted,
            ListError::Lun(e) => e.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes the sidecars treat as "still running, call again".
    const RETRY: [Code; 4] = [
        Code::Unavailable,
        Code::Aborted,
        Code::Cancelled,
        Code::DeadlineExceeded,
    ];

    fn lun_errors() -> Vec<(LunError, bool)> {
        let gpt = || GptError::Corrupt("x".into());
        vec![
            (LunError::NotReady("opening".into()), true),
            (LunError::InFlight("v".into()), true),
            (
                LunError::Writer {
                    lun: "l".into(),
                    source: WriterError::NotWriter(None),
                },
                true,
            ),
            (
                LunError::TableChanged {
                    lun: "l".into(),
                    expected: "a".into(),
                    found: "b".into(),
                },
                true,
            ),
            (
                LunError::Stalled {
                    lun: "l".into(),
                    what: "reading",
                    source: Stalled(std::time::Duration::from_secs(1)),
                },
                true,
            ),
            (
                LunError::Table {
                    lun: "l".into(),
                    source: gpt(),
                },
                false,
            ),
            (
                LunError::Table {
                    lun: "l".into(),
                    source: GptError::DeviceSmaller {
                        table_sectors: 2,
                        device_sectors: 1,
                    },
                },
                true,
            ),
            (
                LunError::Io {
                    lun: "l".into(),
                    source: std::io::Error::other("x"),
                },
                false,
            ),
            (
                LunError::Tool(ToolError::Failed {
                    command: "c".into(),
                    code: Some(1),
                    stderr: "e".into(),
                }),
                false,
            ),
        ]
    }

    /// Every variant of every RPC error, with whether it is allowed a retry
    /// code (only "in flight", "not ready" and the spec's bad list token).
    fn all() -> Vec<(Code, bool, String)> {
        let mut out = Vec::new();
        let mut push =
            |e: &dyn RpcError, may_retry: bool| out.push((e.code(), may_retry, e.to_string()));
        for (e, r) in lun_errors() {
            push(&CreateError::Lun(e), r);
        }
        for (e, r) in lun_errors() {
            push(&DeleteError::Lun(e), r);
        }
        for (e, r) in lun_errors() {
            push(&ExpandError::Lun(e), r);
        }
        for (e, r) in lun_errors() {
            push(&LookupError::Lun(e), r);
        }
        for (e, r) in lun_errors() {
            push(&ListError::Lun(e), r);
        }
        push(&CreateError::InvalidArgument("x".into()), false);
        push(&CreateError::CapacityOutOfRange("x".into()), false);
        push(
            &CreateError::Incompatible {
                name: "n".into(),
                why: "w".into(),
            },
            false,
        );
        push(
            &CreateError::NoSpace {
                needed: 1,
                partition: 2,
                largest: 0,
            },
            false,
        );
        push(&CreateError::NoPartitionNumber { max: 254 }, false);
        push(&CreateError::BeingDeleted("x".into()), true);
        push(&DeleteError::InvalidArgument("x".into()), false);
        push(
            &DeleteError::Mounted {
                volume: "v".into(),
                nodes: vec!["o2cb node 1".into()],
            },
            false,
        );
        push(
            &DeleteError::Held {
                volume: "v".into(),
                holders: vec!["n1 (o2cb node 1)".into()],
            },
            false,
        );
        push(&ExpandError::InvalidArgument("x".into()), false);
        push(&ExpandError::NotFound("x".into()), false);
        push(&ExpandError::CapacityOutOfRange("x".into()), false);
        push(
            &ExpandError::NoRoom {
                volume: "v".into(),
                wanted: 2,
                possible: 1,
                why: "full".into(),
            },
            false,
        );
        push(&ExpandError::NotCreated("x".into()), false);
        push(&LookupError::InvalidArgument("x".into()), false);
        push(&LookupError::NotFound("x".into()), false);
        push(&ListError::InvalidArgument("x".into()), false);
        push(&ListError::BadToken("x".into()), true);
        out
    }

    #[test]
    fn finished_failures_never_use_retry_codes() {
        for (code, may_retry, msg) in all() {
            if !may_retry {
                assert!(!RETRY.contains(&code), "{msg} maps to {code:?}");
            }
        }
    }

    #[test]
    fn in_flight_and_not_ready_are_retried() {
        let codes: Vec<Code> = all()
            .into_iter()
            .filter(|(_, r, _)| *r)
            .map(|(c, _, _)| c)
            .collect();
        assert!(codes.iter().all(|c| RETRY.contains(c)));
        assert!(codes.contains(&Code::Aborted) && codes.contains(&Code::Unavailable));
    }

    #[test]
    fn status_message_carries_the_cause_chain() {
        let e = CreateError::Lun(LunError::Table {
            lun: "/dev/sdb".into(),
            source: GptError::Corrupt("both copies bad".into()),
        });
        let s = status(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("/dev/sdb"), "{}", s.message());
        assert!(s.message().contains("both copies bad"), "{}", s.message());
    }
}
