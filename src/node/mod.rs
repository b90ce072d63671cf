//! The node plugin.
//!
//! Joining the o2cb cluster, staging, publishing and growing volumes are the
//! node issue's work. Until then the Node service is honest about it: it
//! advertises no capabilities, answers NodeGetInfo, treats unpublish and
//! unstage of paths where nothing is mounted as done (they are idempotent by
//! definition), and refuses everything else as Unimplemented.

pub mod mounts;
pub mod partition_sync;
pub mod service;

pub use service::NodeService;
