//! Bringing a node into the o2cb cluster and keeping it there: kernel
//! prerequisites, configfs membership, global heartbeat on every LUN, the
//! lock domain, adopting volumes a previous plugin process staged, and
//! following the membership source afterwards.
//!
//! Everything here adopts what the kernel already runs: a restarted plugin
//! writes nothing and restarts nothing.

use super::device;
use super::lun_owner::{self, OwnerProblem};
use super::volumes::NodeVolumes;
use crate::backoff::Backoff;
use crate::cluster::slots::{self, HeartbeatSlots, SlotRegion, SlotsInUse};
use crate::cluster::{
    self, ClusterConfig, ClusterError, ConfigFs, HeartbeatStart, HeartbeatState, JoinReport,
    KernelPaths, MembershipSource,
};
use crate::ocfs2::layout::HeartbeatMode;
use crate::ocfs2::tools::Ocfs2Tools;
use crate::tools::Runner;
use crate::volume::entry::{HEARTBEAT_NUMBER, TYPE_HEARTBEAT};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Startup {
    pub cluster: ClusterConfig,
    /// The installation's cluster ID: every LUN must carry it (lun_owner).
    pub cluster_id: String,
    pub node_name: String,
    pub members: Arc<dyn MembershipSource>,
    pub runner: Arc<dyn Runner>,
    pub tools: Ocfs2Tools,
    pub paths: KernelPaths,
    pub luns: Vec<PathBuf>,
    pub volumes: Arc<NodeVolumes>,
    /// How often the membership source is re-read.
    pub poll: Duration,
}

/// Pauses between tries to join (a LUN or a member may show up late).
const JOIN_BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(12));

/// Why joining stopped for good (anything else is retried).
#[derive(Debug, thiserror::Error)]
#[error("refusing to join: {0}")]
pub struct Fatal(pub ClusterError);

impl Startup {
    /// Joins (retrying what may pass, e.g. a LUN not visible yet), marks the
    /// plugin ready, then follows the membership source until the process
    /// ends. Returns only on a conflict that must not be overridden.
    pub async fn run(self) -> Fatal {
        let joined = JOIN_BACKOFF
            .retry("cannot join the o2cb cluster yet", |_| async {
                match self.join_once().await {
                    Ok(()) => Ok(Ok(())),
                    // Not retried: the outer Ok ends the retries.
                    Err(JoinError::Fatal(e)) => Ok(Err(Fatal(e))),
                    Err(JoinError::Retry(why)) => {
                        self.volumes.set_ready(Some(why.clone()));
                        Err(why)
                    }
                }
            })
            .await;
        if let Err(fatal) = joined {
            return fatal;
        }
        self.volumes.set_ready(None);
        tracing::info!(cluster = %self.cluster.name, node = %self.node_name, "node ready");
        let mut live = cluster::live_nodes(&self.paths.debugfs).unwrap_or_default();
        loop {
            tokio::time::sleep(self.poll).await;
            self.report_heartbeat(&mut live).await;
            match self.follow_members().await {
                Ok(Some(report)) => tracing::info!(?report, "cluster membership updated"),
                Ok(None) => {}
                Err(JoinError::Fatal(e)) => return Fatal(e),
                Err(JoinError::Retry(why)) => {
                    tracing::warn!(error = %why, "membership not followed this time")
                }
            }
        }
    }

    async fn join_once(&self) -> Result<(), JoinError> {
        let t = Instant::now();
        // Before anything is written to configfs or the LUNs.
        for lun in &self.luns {
            lun_owner::check(lun, &self.cluster_id)
                .await
                .map_err(|problem| match problem {
                    OwnerProblem::Refused(why) => JoinError::Fatal(ClusterError::Config(why)),
                    OwnerProblem::NotYet(why) => JoinError::Retry(why),
                })?;
        }
        let done = cluster::ensure_prerequisites(self.runner.as_ref(), &self.paths)
            .await
            .map_err(JoinError::from)?;
        if !done.is_empty() {
            tracing::info!(?done, "kernel prepared for o2cb");
        }
        if let Some(report) = self.follow_members().await? {
            tracing::info!(
                ?report,
                seconds = t.elapsed().as_secs_f64(),
                "o2cb cluster joined"
            );
        }
        if self.cluster.heartbeat == HeartbeatMode::Global {
            for lun in &self.luns {
                self.heartbeat(lun).await?;
            }
        }
        let adopted = self
            .volumes
            .adopt()
            .await
            .map_err(|e| JoinError::Retry(format!("adopting staged volumes: {e}")))?;
        tracing::info!(
            adopted,
            seconds = t.elapsed().as_secs_f64(),
            "cluster membership and heartbeat in place"
        );
        Ok(())
    }

    /// Brings configfs to the source's members; None when nothing changed.
    async fn follow_members(&self) -> Result<Option<JoinReport>, JoinError> {
        let members = self
            .members
            .members()
            .await
            .map_err(|e| JoinError::Retry(e.to_string()))?;
        let configfs = ConfigFs::new(&self.paths.configfs);
        let (cfg, name, debugfs) = (
            self.cluster.clone(),
            self.node_name.clone(),
            self.paths.debugfs.clone(),
        );
        let report = tokio::task::spawn_blocking(move || {
            // Nodes that heartbeat are never removed, whatever the source says.
            let live = live_or_everyone(cluster::live_nodes(&debugfs));
            configfs.join(&cfg, &name, &members, &live)
        })
        .await
        .map_err(|e| JoinError::Retry(e.to_string()))??;
        let changed = !report.added.is_empty()
            || !report.removed.is_empty()
            || report.cluster == cluster::ClusterOrigin::Created;
        Ok(changed.then_some(report))
    }

    /// Logs the members that stopped or resumed heartbeating since `before`
    /// (then updated), by name where the membership source knows it: the
    /// first thing an operator wants to see when a node dies or is cut off.
    async fn report_heartbeat(&self, before: &mut BTreeSet<u8>) {
        let Ok(now) = cluster::live_nodes(&self.paths.debugfs) else {
            return;
        };
        let (lost, back) = heartbeat_changes(before, &now);
        *before = now;
        if lost.is_empty() && back.is_empty() {
            return;
        }
        let members = self.members.members().await.unwrap_or_default();
        let name = |n: u8| {
            members
                .iter()
                .find(|m| m.number == n)
                .map_or_else(|| "unknown".to_string(), |m| m.name.clone())
        };
        for n in lost {
            tracing::warn!(
                member = %name(n),
                number = n,
                dead_threshold = self.cluster.timeouts.dead_threshold,
                "o2cb member stopped heartbeating: it is down or cut off; the cluster evicts it \
                 after the dead threshold and recovers its locks, I/O that needs them waits until then"
            );
        }
        for n in back {
            tracing::info!(member = %name(n), number = n, "o2cb member heartbeating (joined or back)");
        }
    }

    /// Starts (or adopts) global heartbeat on `lun`'s heartbeat partition.
    async fn heartbeat(&self, lun: &Path) -> Result<(), JoinError> {
        let device = heartbeat_device(lun).await?;
        let info = self
            .tools
            .inspect(&device)
            .await
            .map_err(|e| JoinError::Retry(e.to_string()))?
            .ok_or_else(|| {
                JoinError::Retry(format!(
                    "{} holds no heartbeat filesystem (has the controller initialised the LUN?)",
                    device.display()
                ))
            })?;
        // Another o2cb cluster's heartbeat device would make this node a
        // member of that cluster's disk heartbeat under a name it never had.
        if info.cluster_name.as_deref() != Some(self.cluster.name.as_str()) {
            return Err(JoinError::Fatal(ClusterError::Config(format!(
                "{}: the heartbeat device belongs to o2cb cluster {:?}, but this node runs {:?}; \
                 refusing to heartbeat on it",
                device.display(),
                info.cluster_name.unwrap_or_default(),
                self.cluster.name
            ))));
        }
        let region = cluster::region_name(&info.uuid);
        let configfs = ConfigFs::new(&self.paths.configfs);
        // A restarted plugin finds it running: no need to read the geometry.
        if let HeartbeatState::Running { dev } =
            configfs.region_state(&self.cluster.name, &region)?
        {
            tracing::info!(lun = %lun.display(), %region, %dev, "global heartbeat already running; adopted");
            return Ok(());
        }
        let geometry = cluster::geometry(self.runner.as_ref(), &device).await?;
        match configfs
            .start_or_adopt(&self.cluster.name, &region, &device, geometry)
            .await?
        {
            HeartbeatStart::Adopted { dev } => {
                tracing::info!(lun = %lun.display(), %region, %dev, "global heartbeat already running; adopted")
            }
            HeartbeatStart::Started { elapsed, .. } => tracing::info!(
                lun = %lun.display(),
                %region,
                seconds = elapsed.as_secs_f64(),
                "global heartbeat started"
            ),
        }
        Ok(())
    }
}

/// The live set to plan a join with: the kernel's, or every number when it
/// cannot be read, so that a round that does not know who heartbeats
/// removes or changes nobody (an unreadable set is not an empty one).
fn live_or_everyone(read: Result<BTreeSet<u8>, ClusterError>) -> BTreeSet<u8> {
    read.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read which o2cb members heartbeat: removing or changing no member this round");
        (0..=cluster::membership::MAX_NODE_NUMBER).collect()
    })
}

/// The o2cb numbers in use around this node, for a claim to avoid
/// (`k8s::members`): the number this node's kernel already runs as (a
/// restarted plugin), else every number whose slot advances in the
/// heartbeat region of any LUN, read from the disk, plus this kernel's live
/// set when it runs the cluster. Read before joining, so it finds the
/// heartbeat partitions itself.
pub struct DiskSlots {
    pub cluster: String,
    pub node_name: String,
    pub luns: Vec<PathBuf>,
    pub runner: Arc<dyn Runner>,
    pub tools: Ocfs2Tools,
    pub paths: KernelPaths,
}

impl DiskSlots {
    /// This node's number if its kernel already runs the cluster with it.
    fn kernel_number(&self) -> Result<Option<u8>, String> {
        let current = match ConfigFs::new(&self.paths.configfs).current() {
            Ok(current) => current,
            // configfs or the node manager not there yet: no cluster runs.
            Err(ClusterError::Missing { .. }) => None,
            Err(e) => return Err(e.to_string()),
        };
        Ok(current.filter(|c| c.name == self.cluster).and_then(|c| {
            c.nodes
                .iter()
                .find(|n| n.local && n.name == self.node_name && n.is_complete())
                .map(|n| n.number)
        }))
    }

    async fn in_use(&self) -> Result<SlotsInUse, String> {
        if let Some(mine) = self.kernel_number()? {
            return Ok(SlotsInUse {
                mine: Some(mine),
                busy: Default::default(),
            });
        }
        let mut busy = std::collections::BTreeMap::new();
        let runs = ConfigFs::new(&self.paths.configfs)
            .current()
            .ok()
            .flatten()
            .is_some();
        if runs {
            let live = cluster::live_nodes(&self.paths.debugfs).map_err(|e| e.to_string())?;
            for n in live {
                busy.insert(n, "this node's kernel sees it live".to_string());
            }
        }
        let mut regions = Vec::new();
        for lun in &self.luns {
            let device = heartbeat_device(lun).await.map_err(|e| e.to_string())?;
            let info = self
                .tools
                .inspect(&device)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} holds no heartbeat filesystem", device.display()))?;
            let g = cluster::geometry(self.runner.as_ref(), &device)
                .await
                .map_err(|e| e.to_string())?;
            regions.push(SlotRegion {
                name: format!(
                    "heartbeat region {} on {}",
                    cluster::region_name(&info.uuid),
                    device.display()
                ),
                device,
                offset: g.start_block * u64::from(g.block_bytes),
                block_bytes: g.block_bytes,
            });
        }
        let seen = tokio::task::spawn_blocking(move || slots::advancing(&regions, slots::WATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the heartbeat slots: {e}"))?;
        for (n, region) in seen {
            busy.entry(n).or_insert(region);
        }
        Ok(SlotsInUse { mine: None, busy })
    }
}

impl HeartbeatSlots for DiskSlots {
    fn in_use(&self) -> BoxFuture<'_, Result<SlotsInUse, String>> {
        Box::pin(DiskSlots::in_use(self))
    }
}

/// Node numbers that stopped heartbeating and those that started, between
/// two readings of the live set.
fn heartbeat_changes(before: &BTreeSet<u8>, now: &BTreeSet<u8>) -> (Vec<u8>, Vec<u8>) {
    (
        before.difference(now).copied().collect(),
        now.difference(before).copied().collect(),
    )
}

/// Sets up the map of `lun`'s heartbeat partition and returns its device.
async fn heartbeat_device(lun: &Path) -> Result<PathBuf, JoinError> {
    let lun = lun.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let table = device::read_table(&lun)
            .map_err(|e| format!("{}: reading the partition table: {e}", lun.display()))?;
        let p = match table.partition(HEARTBEAT_NUMBER) {
            Some(p) if p.type_guid == TYPE_HEARTBEAT => p,
            _ => {
                return Err(format!(
                    "{}: partition {HEARTBEAT_NUMBER} is not our heartbeat partition (has the controller initialised the LUN?)",
                    lun.display()
                ))
            }
        };
        let ss = table.sector_size;
        let extent = (p.first_lba * ss, p.size_sectors() * ss);
        device::ensure_map(&lun, &device::heartbeat_map_name(&table.disk_guid), &[extent])
            .map(|(dev, _)| dev)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| JoinError::Retry(e.to_string()))?
    .map_err(JoinError::Retry)
}

enum JoinError {
    Fatal(ClusterError),
    Retry(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Fatal(e) => e.fmt(f),
            JoinError::Retry(why) => f.write_str(why),
        }
    }
}

impl From<ClusterError> for JoinError {
    fn from(e: ClusterError) -> JoinError {
        if e.is_conflict() {
            JoinError::Fatal(e)
        } else {
            JoinError::Retry(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_live_set_removes_nobody() {
        use crate::cluster::{plan_join, CurrentCluster, CurrentNode, Member, Timeouts};
        let cfg = ClusterConfig {
            name: "lab".into(),
            heartbeat: HeartbeatMode::Global,
            timeouts: Timeouts::default(),
            port: 7777,
        };
        let node = |name: &str, number: u8, local: bool| CurrentNode {
            name: name.into(),
            number,
            address: std::net::Ipv4Addr::new(10, 0, 0, number + 1),
            port: 7777,
            local,
        };
        let current = CurrentCluster {
            name: "lab".into(),
            heartbeat: HeartbeatMode::Global,
            timeouts: Timeouts::default(),
            nodes: vec![node("a", 0, true), node("b", 1, false)],
        };
        // The source lost b (an API that answered with fewer Leases).
        let members = [Member {
            name: "a".into(),
            number: 0,
            address: std::net::Ipv4Addr::new(10, 0, 0, 1),
            port: 7777,
        }];
        let failed = Err(ClusterError::Config("EIO".into()));
        let plan = plan_join(
            &cfg,
            "a",
            &members,
            Some(&current),
            &live_or_everyone(failed),
        )
        .unwrap();
        assert!(plan.report.removed.is_empty(), "{:?}", plan.report);
        assert!(plan.steps.is_empty(), "{:?}", plan.steps);
        // Read, and b not in it: b goes.
        let read = Ok(BTreeSet::from([0]));
        let plan = plan_join(&cfg, "a", &members, Some(&current), &live_or_everyone(read)).unwrap();
        assert_eq!(plan.report.removed, ["b"]);
    }

    #[test]
    fn heartbeat_changes_name_lost_and_returning_members() {
        let set = |v: &[u8]| v.iter().copied().collect::<BTreeSet<u8>>();
        assert_eq!(
            heartbeat_changes(&set(&[0, 1, 2]), &set(&[0, 1, 2])),
            (vec![], vec![])
        );
        assert_eq!(
            heartbeat_changes(&set(&[0, 1, 2]), &set(&[0, 1])),
            (vec![2], vec![])
        );
        assert_eq!(
            heartbeat_changes(&set(&[0, 1]), &set(&[0, 1, 2])),
            (vec![], vec![2])
        );
        assert_eq!(
            heartbeat_changes(&set(&[0, 3]), &set(&[0, 4])),
            (vec![3], vec![4])
        );
    }
}
