//! `ocfs2-csi status`: what an operator asks first on a bad day, in one
//! read-only look from a node: the o2cb members and their heartbeat per
//! region, each LUN's volumes and space, who mounts which volume, grows
//! that wait, and Nodes the driver took out of service.
//!
//! It runs where a node plugin runs (`kubectl exec` into its pod), because
//! the kernel's view of o2cb and the LUNs themselves are only there.
//! Nothing is written: the LUNs are opened read-only, configfs, debugfs
//! and the plugin's records are read. The Kubernetes side (the membership
//! Leases, tainted Nodes, waiting grows, which Nodes use which volume) is
//! read with the operator's own credentials by the kubectl plugin
//! (`deploy/kubectl-ocfs2_csi`), which runs this in a node plugin pod
//! first: the node plugin's ServiceAccount may not list Nodes or Events.

pub mod local;
pub mod render;

use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Everything `status` prints, as gathered.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The o2cb cluster name the driver uses.
    pub cluster: String,
    /// This node's name (the plugin's --node-id), when known.
    pub node: Option<String>,
    /// This node's kernel, or why it could not be read.
    pub kernel: Result<Kernel, String>,
    pub luns: Vec<Lun>,
    /// Volumes this node's plugin stages, with the nodes their slot maps
    /// name.
    pub staged: Result<Vec<Staged>, String>,
}

/// o2cb as this node's kernel has it.
#[derive(Debug, Serialize)]
pub struct Kernel {
    /// None when the cluster is not set up on this node.
    pub cluster: Option<KernelCluster>,
    /// Numbers o2hb sees heartbeating, over all regions.
    pub live: BTreeSet<u8>,
    pub regions: Vec<Region>,
}

#[derive(Debug, Serialize)]
pub struct KernelCluster {
    pub heartbeat: String,
    pub dead_threshold: u32,
    /// (number, name, address) of each node configfs lists.
    pub nodes: Vec<(u8, String, String)>,
}

/// One heartbeat region: o2hb's view of it on this node.
#[derive(Debug, Serialize)]
pub struct Region {
    pub name: String,
    /// What it is: a LUN's heartbeat partition or a volume (from the LUN
    /// tables); None when no LUN of this node holds it.
    pub what: Option<String>,
    pub live: Option<BTreeSet<u8>>,
    /// Since this node's last completed write to it.
    pub write_age_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Lun {
    pub path: PathBuf,
    /// Why its table could not be read.
    pub error: Option<String>,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub largest_free_bytes: u64,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Serialize)]
pub struct Volume {
    /// The CSI volume handle.
    pub handle: String,
    /// The name given at CreateVolume (the PV's, with the provisioner).
    pub name: String,
    pub state: String,
    /// `filesystem` or `block`.
    pub content: String,
    pub partition_bytes: u64,
    pub extents: usize,
    /// The filesystem's size: statfs where this node mounts it, else what
    /// its superblock on disk records (which may lag a grow by a journal
    /// commit). Less than the partition while a grow has not reached it.
    pub filesystem_bytes: Option<u64>,
    /// `mounted here` or `on disk`.
    pub filesystem_from: Option<String>,
    /// Its heartbeat region name (the filesystem UUID), when it has one.
    pub region: Option<String>,
}

/// A volume this node stages.
#[derive(Debug, Serialize)]
pub struct Staged {
    pub handle: String,
    pub path: PathBuf,
    pub block: bool,
    /// What statfs says the mounted filesystem holds.
    pub filesystem_bytes: Option<u64>,
    /// The o2cb numbers its slot map holds (every node that mounts it), or
    /// why they could not be read. Raw block volumes have none.
    pub slots: Option<Result<Vec<u32>, String>>,
}

/// Where `status` looks: what the node plugin is given, from the same
/// flags and environment.
pub struct Sources {
    pub cluster: String,
    pub node: Option<String>,
    pub luns: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub paths: crate::cluster::KernelPaths,
    pub tools: crate::ocfs2::tools::Ocfs2Tools,
}

/// Reads everything once. Nothing fails the whole: each part says why it
/// could not be read.
pub async fn gather(sources: &Sources) -> Report {
    let wait = local::READ_WAIT;
    let luns = local::luns(&sources.luns, wait).await;
    let what = local::region_names(&luns);
    let (kernel_paths, cluster) = (sources.paths.clone(), sources.cluster.clone());
    let kernel = local::bounded("reading configfs and debugfs", wait, move || {
        local::kernel(&kernel_paths, &cluster, &what)
    })
    .await
    .and_then(|k| k);
    let staged = local::staged(&sources.state_dir, &sources.tools, wait).await;
    let mut luns = luns;
    if let Ok(staged) = &staged {
        local::prefer_mounted_sizes(&mut luns, staged);
    }
    Report {
        cluster: sources.cluster.clone(),
        node: sources.node.clone(),
        kernel,
        luns,
        staged,
    }
}
