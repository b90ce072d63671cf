//! The controller plugin: carves OCFS2 volumes out of shared LUNs.
//!
//! - `pool`: opening and initialising LUNs
//! - `entry`: how a volume is recorded in the GPT
//! - `volumes`: the work of each RPC, free of gRPC
//! - `service`: the gRPC glue
//! - `params`, `volume_id`, `inflight`, `error`: the pieces they share

pub mod entry;
pub mod error;
pub mod inflight;
pub mod params;
pub mod pool;
pub mod service;
pub mod volume_id;
pub mod volumes;

pub use service::ControllerService;
pub use volumes::Volumes;
