//! The o2cb cluster as configfs holds it, as plain data: what the planner
//! reads and `configfs` reads and writes (the planner does not depend on
//! how configfs is driven).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::ocfs2::layout::HeartbeatMode;

use super::config::Timeouts;
use super::membership::{describe, Member};

/// The cluster directory, relative to the configfs root.
pub fn cluster_dir(cluster: &str) -> PathBuf {
    Path::new("cluster").join(cluster)
}

/// A node directory, relative to the configfs root.
pub fn node_dir(cluster: &str, node: &str) -> PathBuf {
    cluster_dir(cluster).join("node").join(node)
}

/// A heartbeat region directory, relative to the configfs root.
pub fn region_dir(cluster: &str, region: &str) -> PathBuf {
    cluster_dir(cluster).join("heartbeat").join(region)
}

/// A node entry as configfs holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentNode {
    pub name: String,
    pub number: u8,
    pub address: Ipv4Addr,
    pub port: u16,
    pub local: bool,
}

impl CurrentNode {
    /// An unset port or address reads back as 0 / 0.0.0.0: the entry was
    /// left half-made (its number cannot be set before both), so it holds
    /// no number and no peer can be using it.
    pub fn is_complete(&self) -> bool {
        self.port != 0 && !self.address.is_unspecified()
    }

    pub fn matches(&self, m: &Member) -> bool {
        self.is_complete()
            && self.number == m.number
            && self.address == m.address
            && self.port == m.port
    }

    pub fn describe(&self) -> String {
        describe(self.number, self.address, self.port)
    }
}

/// The cluster configfs holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentCluster {
    pub name: String,
    pub heartbeat: HeartbeatMode,
    pub timeouts: Timeouts,
    /// Sorted by name.
    pub nodes: Vec<CurrentNode>,
}
