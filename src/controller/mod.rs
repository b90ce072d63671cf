//! The controller plugin: carves OCFS2 volumes out of shared LUNs.
//!
//! - `pool`: opening and initialising LUNs
//! - `allocate`: where volumes and their extents go (pure)
//! - `volumes`: the work of each RPC, free of gRPC
//! - `service`: the gRPC glue
//! - `writer`: the LUN's writer lease (one writer per partition table)
//! - `gauges`: what the metrics read of the LUNs at each scrape
//! - `scan`: what a LUN holds when its table is gone (`scan-lun`, read-only)
//! - `params`, `error`: the pieces they share
//!
//! What the node shares with it (volume IDs, the GPT entry format, mount
//! options) is in `crate::volume`; in-flight tracking in `crate::server`.

pub mod allocate;
pub mod error;
pub mod fs_image;
pub mod gauges;
pub mod params;
pub mod pool;
pub mod scan;
pub mod service;
#[cfg(test)]
pub mod testing;
pub mod volumes;
pub mod writer;

pub use service::ControllerService;
pub use volumes::Volumes;
