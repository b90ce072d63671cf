//! ocfs2-csi: a CSI driver that carves OCFS2 volumes out of shared SAN LUNs
//! and lets many nodes mount them at once.
//!
//! The binary (`src/main.rs`) only parses flags and wires these modules.

pub mod backoff;
pub mod cluster;
pub mod controller;
pub mod csi;
pub mod disk;
pub mod escape;
pub mod identity;
pub mod k8s;
pub mod metrics;
pub mod mountinfo;
pub mod node;
pub mod ocfs2;
#[cfg(test)]
mod sanity;
pub mod server;
pub mod status;
pub mod tools;
pub mod vmdisk;
pub mod volume;
