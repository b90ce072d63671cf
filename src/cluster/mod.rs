//! Joining the o2cb cluster by writing configfs directly, without
//! /etc/ocfs2/cluster.conf or the o2cb tool.
//!
//! At start the node plugin makes sure the kernel is ready
//! ([`ensure_prerequisites`]), reads the members ([`MembershipSource`]),
//! brings configfs to them ([`ConfigFs::join`]) and, for global heartbeat,
//! starts or adopts the region on the heartbeat device
//! ([`geometry()`], [`ConfigFs::start_or_adopt`]). Whatever the kernel already runs is
//! adopted, never restarted; what cannot be reconciled without disturbing a
//! running cluster is a [`Conflict`].

pub mod config;
pub mod configfs;
pub mod error;
pub mod geometry;
pub mod heartbeat;
pub mod kernel;
pub mod membership;
pub mod plan;
pub mod slots;
pub mod state;

#[cfg(test)]
mod testing;

pub use config::{ClusterConfig, Timeouts, DEFAULT_PORT};
pub use configfs::{ConfigFs, CONFIGFS_ROOT};
pub use error::{ClusterError, Conflict, Difference};
pub use geometry::{geometry, HeartbeatGeometry};
pub use heartbeat::{
    live_nodes, region_live_nodes, region_name, HeartbeatStart, HeartbeatState, DEBUGFS_ROOT,
};
pub use kernel::{ensure_prerequisites, KernelPaths};
pub use membership::{parse_members, Member, MembershipError, MembershipSource, StaticMembers};
pub use plan::{plan_join, ClusterOrigin, JoinPlan, JoinReport, KeptAlive, Step};
pub use slots::{HeartbeatSlots, SlotsInUse};
pub use state::{CurrentCluster, CurrentNode};
