//! The Kubernetes API, for what must be shared across nodes without a
//! static file: o2cb node numbers and member addresses, and the cluster's
//! own identity; and the Events users read.

pub mod cluster_id;
pub mod events;
pub mod members;
pub mod out_of_service;

pub use members::{KubeError, KubeMembers};
pub use out_of_service::OutOfService;
