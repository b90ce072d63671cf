//! Errors of joining the o2cb cluster. [`Conflict`] is kept apart: it means
//! the host is set up differently from what this node was told, and only an
//! operator can settle that, so the binary stops on it instead of retrying.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::tools::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// The members handed to the planner break a rule (a source other than
    /// the static file may produce them).
    #[error("invalid membership: {0}")]
    Members(String),
    #[error("this node ({name}) is not in the membership source")]
    NotAMember { name: String },
    #[error("{path} does not exist; {hint}")]
    Missing { path: PathBuf, hint: &'static str },
    #[error("{path} holds several o2cb clusters ({}); the kernel allows only one", .names.join(", "))]
    SeveralClusters { path: PathBuf, names: Vec<String> },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} reads {value:?}, expected {expected}")]
    Value {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },
    #[error("creating {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("removing {path}: {source}")]
    Rmdir { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("opening heartbeat device {path} read-write: {source}")]
    OpenDevice { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("could not understand `{command}` output: {what}")]
    ToolOutput { command: String, what: String },
    #[error(
        "{path} reads {found:?}: this host's OCFS2 cluster stack is not o2cb; \
         refusing to join an o2cb cluster on it"
    )]
    WrongStack { path: PathBuf, found: String },
    /// The blocking configfs work panicked or was cancelled.
    #[error("configfs task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ClusterError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClusterError::Conflict(_))
    }
}

/// The running cluster disagrees with this node's configuration. Nothing
/// was changed when one of these is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error(
        "configfs already holds o2cb cluster {existing:?}; this node is configured for \
         {wanted:?}; the host is already in another o2cb cluster, refusing to change it \
         (nothing was changed)"
    )]
    OtherCluster { existing: String, wanted: String },
    #[error(
        "o2cb cluster {cluster:?} is running with other settings than this node's: {}; \
         the kernel cannot change them while the cluster is in use, so the shared \
         configuration must be made to match (nothing was changed)",
        list(.differences)
    )]
    Settings {
        cluster: String,
        differences: Vec<Difference>,
    },
    #[error(
        "this node ({name}) is the local node of o2cb cluster {cluster:?} as {running}, \
         but the membership source says {wanted}; refusing to change this node's identity \
         under a running cluster (nothing was changed)"
    )]
    LocalChanged {
        cluster: String,
        name: String,
        running: String,
        wanted: String,
    },
    #[error(
        "node {other:?} is already the local node of o2cb cluster {cluster:?}, not this \
         node ({name}); refusing to change it (nothing was changed)"
    )]
    OtherLocal {
        cluster: String,
        name: String,
        other: String,
    },
    #[error(
        "this node ({name}) cannot take {what} in o2cb cluster {cluster:?}: node {holder:?} \
         still heartbeats with it (nothing was changed)"
    )]
    Taken {
        cluster: String,
        name: String,
        holder: String,
        what: String,
    },
}

/// One setting that differs between the running cluster and ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub setting: &'static str,
    pub running: String,
    pub configured: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} but configured as {}",
            self.setting, self.running, self.configured
        )
    }
}

fn list(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
