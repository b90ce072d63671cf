//! The node plugin: stage, publish and grow OCFS2 volumes on a node that is
//! a member of the o2cb cluster (joining it is `crate::cluster`).

pub mod device;
pub mod dlm;
pub mod error;
pub mod filesystem;
pub mod gauges;
pub mod grow;
pub mod holders;
pub mod lun_owner;
pub mod mounts;
pub mod records;
pub mod request;
pub mod service;
pub mod startup;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod volumes;

pub use service::NodeService;
pub use volumes::{NodeConfig, NodeEffects, NodeVolumes};
