//! What the Node RPCs do, apart from gRPC: stage (find, check, mount),
//! publish (bind), unpublish, unstage, stats and online growth.
//!
//! Every side effect goes through a trait of [`NodeEffects`], so this logic
//! runs in-process against the fakes of `super::testing`; the real ones are
//! proven in the lab. Blocking calls run on blocking threads. Reads (mount
//! table, stage records, sysfs, statfs) have a bounded wait: a hung cluster
//! filesystem must not hang an RPC for good. Changes (mount, unmount, the
//! map set-up inside locate) are not abandoned half-way: they hold the
//! volume's in-flight guard, so a retry meanwhile is answered at once
//! (Aborted) instead of piling a second call onto the stuck one.

use super::device::{self, DmLocator, LocateError, Located, Locator, MapHold};
use super::dlm::{Domain, Mode};
use super::error::NodeError;
use super::filesystem::Inspector;
use super::grow::{self, Reporters, Resync};
use super::holders::HolderMarks;
use super::mounts::{MountTable, Mounter, ProcMountTable, SystemMounter};
use super::records::{Records, StageRecord, StageRecords};
use super::request::{self, BadRequest};
use crate::csi::{volume_capability, CapacityRange, VolumeCapability};
use crate::k8s::events::VolumeEvents;
use crate::metrics::{self, GrowOutcome, GrowWait};
use crate::mountinfo::MountEntry;
use crate::ocfs2::layout::HeartbeatMode;
use crate::ocfs2::tools::Ocfs2Tools;
use crate::server::inflight::{Guard, InFlight};
use crate::server::Readiness;
use crate::volume::entry::{Content, ALIGN};
use crate::volume::id::VolumeId;
use crate::volume::mount_options::mount_options;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What this node is, fixed at start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub node_number: u8,
    pub cluster_name: String,
    pub heartbeat: HeartbeatMode,
    pub luns: Vec<PathBuf>,
    /// Where dlmfs is mounted (`/dlm`).
    pub dlm_mount: PathBuf,
}

/// The node's side effects, each behind its trait.
#[derive(Clone)]
pub struct NodeEffects {
    /// OCFS2 mounts, bind mounts, unmounts.
    pub mounter: Arc<dyn Mounter>,
    pub mount_table: Arc<dyn MountTable>,
    pub records: Arc<dyn StageRecords>,
    /// Volume ID to device; each volume's map in step with the GPT.
    pub locator: Arc<dyn Locator>,
    /// The filesystem check before a stage mounts.
    pub inspector: Arc<dyn Inspector>,
    /// This node's holder marks in raw block volumes' headers.
    pub marks: Arc<dyn HolderMarks>,
    /// Growth only: the slot map, the on-disk size and `tunefs.ocfs2 -S`
    /// (proven in the lab; in-process tests reach expand's checks before
    /// any of them runs).
    pub tools: Ocfs2Tools,
}

impl NodeEffects {
    /// The real ones: mount.ocfs2 and system calls, this process's mount
    /// table, records in the state folder, the LUNs' GPTs, debugfs.ocfs2.
    pub fn system(tools: Ocfs2Tools, records: Records) -> NodeEffects {
        NodeEffects {
            mounter: Arc::new(SystemMounter::new(tools.clone())),
            mount_table: Arc::new(ProcMountTable),
            records: Arc::new(records),
            locator: Arc::new(DmLocator),
            inspector: Arc::new(tools.clone()),
            marks: super::holders::on_luns(),
            tools,
        }
    }
}

pub struct NodeVolumes {
    cfg: NodeConfig,
    mounter: Arc<dyn Mounter>,
    mount_table: Arc<dyn MountTable>,
    records: Arc<dyn StageRecords>,
    locator: Arc<dyn Locator>,
    inspector: Arc<dyn Inspector>,
    marks: Arc<dyn HolderMarks>,
    tools: Ocfs2Tools,
    reporters: Reporters,
    inflight: InFlight,
    /// Volumes with a statfs that has not returned (one at a time each, so
    /// a hung filesystem does not collect a stuck thread per stats call).
    statfs: InFlight,
    /// None when ready; else why not (joining the cluster, heartbeat).
    not_ready: Mutex<Option<String>>,
    /// Where news for users goes (Kubernetes Events), when it goes anywhere.
    events: Mutex<Option<Arc<dyn VolumeEvents>>>,
}

pub struct StageRequest<'a> {
    pub volume_id: &'a str,
    pub staging_path: &'a str,
    pub capability: Option<&'a VolumeCapability>,
    pub context: &'a std::collections::HashMap<String, String>,
}

pub struct PublishRequest<'a> {
    pub volume_id: &'a str,
    pub staging_path: &'a str,
    pub target_path: &'a str,
    pub capability: Option<&'a VolumeCapability>,
    pub read_only: bool,
}

/// Bytes and inodes of a mounted volume, and whether it looks healthy.
#[derive(Clone, Debug)]
pub struct VolumeStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
    /// None = healthy; else what is wrong.
    pub abnormal: Option<String>,
    /// A raw block volume: only `total_bytes` means anything.
    pub block: bool,
}

pub fn volume_id(field: &'static str, value: &str) -> Result<VolumeId, NodeError> {
    if value.is_empty() {
        return Err(BadRequest::Empty { field }.into());
    }
    VolumeId::parse(value).ok_or_else(|| {
        BadRequest::VolumeId {
            field,
            value: value.chars().take(200).collect(),
        }
        .into()
    })
}

/// For RPCs that look a volume up (stats, expand): an ID that is not ours
/// names no volume here, which the spec calls NotFound.
pub fn existing_volume_id(value: &str) -> Result<VolumeId, NodeError> {
    match volume_id("volume_id", value) {
        Err(NodeError::BadRequest(BadRequest::VolumeId { value, .. })) => {
            Err(NodeError::NoSuchVolume(value))
        }
        other => other,
    }
}

/// Stats and expand: missing fields first (InvalidArgument), then whether
/// the volume exists (NotFound).
fn lookup_args(volume: &str, path: &str) -> Result<VolumeId, NodeError> {
    if volume.is_empty() {
        return Err(BadRequest::Empty { field: "volume_id" }.into());
    }
    if path.is_empty() {
        return Err(BadRequest::Empty {
            field: "volume_path",
        }
        .into());
    }
    existing_volume_id(volume)
}

/// `target` already has mount `m`, which is not the one asked for.
fn taken(target: PathBuf, m: &MountEntry) -> NodeError {
    NodeError::PathInUse {
        path: target,
        what: format!(
            "{} from {} (read-only: {})",
            m.fs_type,
            m.source,
            m.read_only()
        ),
    }
}

/// What the capability asks for, if it says.
fn asked_content(cap: Option<&VolumeCapability>) -> Option<Content> {
    match cap?.access_type.as_ref()? {
        volume_capability::AccessType::Mount(_) => Some(Content::Ocfs2),
        volume_capability::AccessType::Block(_) => Some(Content::Block),
    }
}

/// A filesystem volume with allowed mount flags; returns the flags.
pub fn mount_capability(cap: Option<&VolumeCapability>) -> Result<Vec<String>, NodeError> {
    let cap = cap.ok_or(BadRequest::NoCapability)?;
    if let Some(mode) = &cap.access_mode {
        if crate::csi::volume_capability::access_mode::Mode::try_from(mode.mode).is_err() {
            return Err(BadRequest::AccessMode(mode.mode).into());
        }
    }
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && m.fs_type != "ocfs2" {
                return Err(BadRequest::FsType(m.fs_type.chars().take(64).collect()).into());
            }
            Ok(mount_options(&m.mount_flags).map_err(BadRequest::from)?)
        }
        Some(volume_capability::AccessType::Block(_)) => Err(BadRequest::Block.into()),
        None => Err(BadRequest::NoCapability.into()),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::io(what, source)
}

/// Runs `f` on a blocking thread and waits for it to the end.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::io(what, std::io::Error::other(e)))
}

/// A size report of a device that never grows (see `start_reporter`).
fn old_device_size(device: PathBuf) -> Resync {
    Arc::new(move || {
        let device = device.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use crate::disk::lun_io::{BlockIo, LunFile};
                LunFile::open_read_only(&device)
                    .map(|f| f.size_bytes())
                    .map_err(|e| format!("{}: {e}", device.display()))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    })
}

/// Runs `f` on a blocking thread and waits at most `wait` (the thread
/// itself cannot be stopped; it ends when its call returns).
async fn bounded<T: Send + 'static>(
    what: &str,
    wait: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    match tokio::time::timeout(wait, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(NodeError::io(what, std::io::Error::other(e))),
        Err(_) => Err(NodeError::Stalled {
            what: what.into(),
            after: wait,
        }),
    }
}

/// Longest wait for a checkpoint before growing (several commit intervals).
const SETTLE_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a read of the mount table, a stage record or sysfs.
const READ_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for statfs, which takes a cluster lock: longer means the
/// cluster is recovering a node or the LUN is not answering.
const STATFS_WAIT: Duration = Duration::from_secs(15);

/// Ready once the node has joined its cluster (and started heartbeat).
impl Readiness for NodeVolumes {
    fn is_ready(&self) -> bool {
        self.not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

impl NodeVolumes {
    /// A node with the real side effects.
    pub fn new(cfg: NodeConfig, tools: Ocfs2Tools, records: Records) -> NodeVolumes {
        NodeVolumes::with_effects(cfg, NodeEffects::system(tools, records))
    }

    pub fn with_effects(cfg: NodeConfig, effects: NodeEffects) -> NodeVolumes {
        NodeVolumes {
            cfg,
            mounter: effects.mounter,
            mount_table: effects.mount_table,
            records: effects.records,
            locator: effects.locator,
            inspector: effects.inspector,
            marks: effects.marks,
            tools: effects.tools,
            reporters: Reporters::default(),
            inflight: InFlight::default(),
            statfs: InFlight::default(),
            not_ready: Mutex::new(Some("joining the o2cb cluster".into())),
            events: Mutex::new(None),
        }
    }

    /// Posts news for users (a grow that waits for nodes) to `events`.
    pub fn set_events(&self, events: Arc<dyn VolumeEvents>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn set_ready(&self, why_not: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = why_not;
    }

    fn ensure_ready(&self) -> Result<(), NodeError> {
        match &*self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(NodeError::NotReady(why.clone())),
        }
    }

    fn begin(&self, id: &VolumeId) -> Result<Guard, NodeError> {
        self.inflight
            .try_begin(id.partition)
            .ok_or(NodeError::InFlight)
    }

    fn domain(&self) -> Result<Domain, NodeError> {
        Ok(Domain::join(&self.cfg.dlm_mount, grow::DOMAIN)?)
    }

    fn resync(&self, lun: PathBuf, number: u32) -> Resync {
        let locator = self.locator.clone();
        Arc::new(move || {
            let (lun, locator) = (lun.clone(), locator.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || locator.resync(&lun, number))
                    .await
                    .map_err(|e| e.to_string())?
            })
        })
    }

    async fn locate(&self, id: VolumeId) -> Result<Located, NodeError> {
        let (luns, locator) = (self.cfg.luns.clone(), self.locator.clone());
        Ok(blocking("locating the volume", move || locator.locate(&luns, &id)).await??)
    }

    /// The size of the filesystem mounted at `path`, as the kernel has it.
    async fn mounted_bytes(&self, path: &Path) -> Result<u64, NodeError> {
        let (table, p) = (self.mount_table.clone(), path.to_path_buf());
        bounded("statfs", STATFS_WAIT, move || table.fs_bytes(&p))
            .await?
            .map_err(io(format!("statfs {}", path.display())))
    }

    /// The topmost mount at `path`.
    async fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>, NodeError> {
        let (table, p) = (self.mount_table.clone(), path.to_path_buf());
        bounded("reading the mount table", READ_WAIT, move || {
            table.mount_at(&p)
        })
        .await?
        .map_err(io("reading the mount table"))
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, NodeError> {
        let table = self.mount_table.clone();
        bounded("reading the mount table", READ_WAIT, move || table.mounts())
            .await?
            .map_err(io("reading the mount table"))
    }

    async fn record(&self, guid: uuid::Uuid) -> Result<Option<StageRecord>, NodeError> {
        let records = self.records.clone();
        bounded("reading the stage record", READ_WAIT, move || {
            records.get(&guid)
        })
        .await?
        .map_err(io("reading the stage record"))
    }

    async fn put_record(&self, record: StageRecord) -> Result<(), NodeError> {
        let records = self.records.clone();
        blocking("writing the stage record", move || records.put(&record))
            .await?
            .map_err(io("writing the stage record"))
    }

    async fn remove_record(&self, guid: uuid::Uuid) -> Result<(), NodeError> {
        let records = self.records.clone();
        blocking("removing the stage record", move || records.remove(&guid))
            .await?
            .map_err(io("removing the stage record"))
    }

    /// Unmounts `target`; the outer error is the thread, the inner the
    /// unmount's own.
    async fn unmount(&self, target: &Path) -> Result<std::io::Result<()>, NodeError> {
        let (mounter, t) = (self.mounter.clone(), target.to_path_buf());
        blocking("unmounting", move || mounter.unmount(&t)).await
    }

    /// The stage record of `id` for a publish from `staging` asking for
    /// `asked`: staged there, and holding that.
    async fn staged(
        &self,
        id: VolumeId,
        staging: &Path,
        asked: Content,
    ) -> Result<StageRecord, NodeError> {
        let record = self
            .record(id.partition)
            .await?
            .ok_or_else(|| NodeError::NotStaged(String::new()))?;
        let holds = if record.block {
            Content::Block
        } else {
            Content::Ocfs2
        };
        if holds != asked {
            return Err(NodeError::WrongContent {
                volume: holds,
                asked,
            });
        }
        if record.staging_path != staging {
            return Err(NodeError::NotStaged(format!(
                " at {} (it is staged at {})",
                staging.display(),
                record.staging_path.display()
            )));
        }
        Ok(record)
    }

    /// The mount at `path` of the device in `record`, if any.
    async fn our_mount(
        &self,
        path: &Path,
        record: &StageRecord,
    ) -> Result<Option<MountEntry>, NodeError> {
        let m = self.mount_at(path).await?;
        Ok(m.filter(|m| m.fs_type == "ocfs2" && Path::new(&m.source) == record.device))
    }

    pub async fn stage(&self, r: StageRequest<'_>) -> Result<(), NodeError> {
        let id = volume_id("volume_id", r.volume_id)?;
        let staging = request::mount_path("staging_target_path", r.staging_path)?;
        let content = request::context_content(r.context)?;
        if asked_content(r.capability) == Some(Content::Block) || content == Content::Block {
            return self.stage_block(id, staging, r).await;
        }
        let options = mount_capability(r.capability)?;
        let ctx = request::volume_context(r.context)?;
        if ctx.cluster_name != self.cfg.cluster_name {
            return Err(NodeError::WrongCluster {
                volume: ctx.cluster_name,
                node: self.cfg.cluster_name.clone(),
            });
        }
        if ctx.heartbeat != self.cfg.heartbeat {
            return Err(NodeError::WrongHeartbeat {
                volume: ctx.heartbeat.as_str().into(),
                node: self.cfg.heartbeat.as_str().into(),
            });
        }
        self.ensure_ready()?;
        let _busy = self.begin(&id)?;

        if let Some(record) = self.record(id.partition).await? {
            if let Some(m) = self.our_mount(&record.staging_path, &record).await? {
                if record.staging_path != staging {
                    return Err(NodeError::StagedElsewhere(record.staging_path));
                }
                if record.mount_options != options || m.read_only() {
                    return Err(NodeError::PathInUse {
                        path: staging,
                        what: format!("staged with options {:?}", record.mount_options),
                    });
                }
                // Already done (a retry, or a restarted plugin): make sure
                // growth can reach this node.
                self.start_reporter(&record).await?;
                return Ok(());
            }
        }
        if let Some(m) = self.mount_at(&staging).await? {
            return Err(NodeError::PathInUse {
                path: staging,
                what: format!("{} from {}", m.fs_type, m.source),
            });
        }
        // Global heartbeat: hold the volume lock shared from sync to the
        // first size report, so a grow elsewhere either sees this node or
        // happens before our sync (see `grow`).
        let global = self.cfg.heartbeat == HeartbeatMode::Global;
        let _volume_lock = if global {
            Some(
                self.domain()?
                    .lock(
                        &grow::volume_lock(&id.partition),
                        Mode::Shared,
                        grow::VOLUME_WAIT,
                    )
                    .await?,
            )
        } else {
            None
        };
        let located = self.locate(id).await?;
        self.check_filesystem(&located, &ctx).await?;
        let record = StageRecord {
            volume_id: id.to_string(),
            partition_guid: id.partition,
            lun: located.lun.clone(),
            partition_number: located.entry.number,
            device: located.device.clone(),
            staging_path: staging.clone(),
            fs_uuid: ctx.fs_uuid,
            heartbeat: ctx.heartbeat.as_str().into(),
            mount_options: options.clone(),
            block: false,
            head_offset: 0,
        };
        // Only now, with everything checked, is anything created.
        let created = match std::fs::create_dir(&staging) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(NodeError::io(format!("creating {}", staging.display()), e)),
        };
        // Recorded before mounting: a crash right after the mount still
        // leaves what Unstage needs.
        self.put_record(record.clone()).await?;
        let undo = |e: NodeError| async {
            let _ = self.remove_record(id.partition).await;
            if created {
                let _ = std::fs::remove_dir(&staging);
            }
            e
        };
        // A DeleteVolume marks the entry Deleting, waits, then wipes if no
        // node shows in the slot map (`controller::volumes::delete`). So:
        // look at the entry right before mounting (the controller's wait
        // covers from here to our slot in the slot map), and again after
        // mounting: one that is Deleting (or gone) now may be wiped at any
        // moment, so it is unmounted again. A clone's copy of its source
        // (Cloning) runs the same protocol (`controller::volumes::clone`).
        if let Err(e) = self.still_ours(id, &located).await {
            return Err(undo(e).await);
        }
        if let Err(e) = self
            .mounter
            .mount_ocfs2(&located.device, &staging, &options)
            .await
        {
            return Err(undo(e.into()).await);
        }
        if let Err(e) = self.still_ours(id, &located).await {
            tracing::warn!(volume = %id, staging = %staging.display(), error = %e, "the volume is being deleted or copied; unmounting it again");
            if let Err(u) = self
                .unmount(&staging)
                .await
                .and_then(|r| r.map_err(io(format!("unmounting {}", staging.display()))))
            {
                // The record stays for Unstage (and the controller's slot
                // map check sees this node).
                tracing::error!(staging = %staging.display(), error = %u, "could not unmount a volume being deleted");
                return Err(e);
            }
            return Err(undo(e).await);
        }
        tracing::info!(device = %located.device.display(), staging = %staging.display(), ?options, "volume staged");
        if global {
            if let Err(e) = self.start_reporter(&record).await {
                // A mount growth cannot reach must not stay.
                let _ = self.unmount(&staging).await;
                let _ = self.remove_record(id.partition).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The volume's entry is still Ready at the place `located` found it.
    async fn still_ours(&self, id: VolumeId, located: &Located) -> Result<(), NodeError> {
        let now = self.locate(id).await?;
        if (now.entry.offset, now.entry.number) != (located.entry.offset, located.entry.number) {
            return Err(NodeError::Locate(LocateError::NoPartition {
                lun: located.lun.clone(),
                partition: id.partition,
            }));
        }
        Ok(())
    }

    async fn start_reporter(&self, record: &StageRecord) -> Result<(), NodeError> {
        if self.cfg.heartbeat != HeartbeatMode::Global {
            return Ok(());
        }
        let resync = if record.device == device::map_path(&record.partition_guid) {
            self.resync(record.lun.clone(), record.partition_number)
        } else {
            // Mounted from the kernel's partition by an earlier version:
            // that device never grows now, so this node keeps reporting its
            // size and no grow goes past it (`OldDevice` tells the grower).
            old_device_size(record.device.clone())
        };
        self.reporters
            .start(
                self.domain()?,
                record.partition_guid,
                self.cfg.node_number,
                resync,
            )
            .await
            .map_err(|e| NodeError::io("publishing the partition size", std::io::Error::other(e)))
    }

    async fn check_filesystem(
        &self,
        located: &Located,
        ctx: &request::VolumeContext,
    ) -> Result<(), NodeError> {
        let device = located.device.clone();
        let info = self
            .inspector
            .inspect(&device)
            .await?
            .ok_or(NodeError::NoFilesystem {
                device: device.clone(),
            })?;
        let differs = |what, found: String, wanted: String| NodeError::OtherFilesystem {
            device: device.clone(),
            found,
            wanted,
            what,
        };
        if info.uuid != ctx.fs_uuid {
            return Err(differs(
                "UUID",
                info.uuid.to_string(),
                ctx.fs_uuid.to_string(),
            ));
        }
        if info.cluster_name.as_deref() != Some(ctx.cluster_name.as_str()) {
            return Err(differs(
                "cluster name",
                format!("{:?}", info.cluster_name),
                ctx.cluster_name.clone(),
            ));
        }
        let hb = if info.global_heartbeat {
            "global"
        } else {
            "local"
        };
        if hb != ctx.heartbeat.as_str() {
            return Err(differs(
                "heartbeat",
                hb.into(),
                ctx.heartbeat.as_str().into(),
            ));
        }
        Ok(())
    }

    pub async fn unstage(&self, volume: &str, staging: &str) -> Result<(), NodeError> {
        let id = volume_id("volume_id", volume)?;
        let staging = request::mount_path("staging_target_path", staging)?;
        let _busy = self.begin(&id)?;
        let record = self.record(id.partition).await?;
        if let Some(record) = record.as_ref().filter(|r| r.block) {
            return self.unstage_block(id, &staging, record).await;
        }
        if let Some(m) = self.mount_at(&staging).await? {
            let ours = record
                .as_ref()
                .is_some_and(|r| m.fs_type == "ocfs2" && Path::new(&m.source) == r.device);
            if !ours {
                return Err(NodeError::PathInUse {
                    path: staging,
                    what: format!("{} from {}, not this volume", m.fs_type, m.source),
                });
            }
            let others: Vec<PathBuf> = self
                .mounts()
                .await?
                .into_iter()
                .filter(|o| o.device == m.device && o.mount_point != staging)
                .map(|o| o.mount_point)
                .collect();
            if !others.is_empty() {
                return Err(NodeError::Busy {
                    path: staging,
                    why: format!("still published at {others:?}"),
                });
            }
            self.unmount(&staging).await?.map_err(|e| NodeError::Busy {
                path: staging.clone(),
                why: format!("unmount failed: {e}"),
            })?;
            tracing::info!(staging = %staging.display(), "volume unstaged");
        }
        // The reporter goes first: its size reports re-create a missing map.
        self.reporters.stop(&id.partition);
        self.remove_record(id.partition).await?;
        let locator = self.locator.clone();
        match blocking("removing the volume's map", move || locator.release(&id)).await? {
            Ok(()) => {}
            // Unmounted and forgotten: a map left over holds no data and is
            // set up again by the next stage.
            Err(why) => {
                tracing::warn!(volume = %id.partition, why, "could not remove the volume's map")
            }
        }
        Ok(())
    }

    pub async fn publish(&self, r: PublishRequest<'_>) -> Result<(), NodeError> {
        let id = volume_id("volume_id", r.volume_id)?;
        let staging = request::mount_path("staging_target_path", r.staging_path)?;
        let target = request::mount_path("target_path", r.target_path)?;
        if asked_content(r.capability) == Some(Content::Block) {
            return self.publish_block(id, staging, target, r).await;
        }
        mount_capability(r.capability)?;
        let _busy = self.begin(&id)?;
        let record = self.staged(id, &staging, Content::Ocfs2).await?;
        let stage = self.our_mount(&staging, &record).await?.ok_or_else(|| {
            NodeError::NotStaged(format!(" ({} is not mounted)", staging.display()))
        })?;
        if let Some(m) = self.mount_at(&target).await? {
            if m.device == stage.device && m.read_only() == r.read_only {
                return Ok(());
            }
            return Err(taken(target, &m));
        }
        match std::fs::create_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(NodeError::io(format!("creating {}", target.display()), e))
            }
            _ => {}
        }
        let (mounter, s, t, ro) = (
            self.mounter.clone(),
            staging.clone(),
            target.clone(),
            r.read_only,
        );
        blocking("bind mounting", move || mounter.bind(&s, &t, ro))
            .await?
            .map_err(io(format!("bind mount on {}", target.display())))?;
        tracing::info!(target = %target.display(), read_only = r.read_only, "volume published");
        Ok(())
    }

    pub async fn unpublish(&self, volume: &str, target: &str) -> Result<(), NodeError> {
        let id = volume_id("volume_id", volume)?;
        let target = request::mount_path("target_path", target)?;
        let _busy = self.begin(&id)?;
        if self.mount_at(&target).await?.is_some() {
            self.unmount(&target).await?.map_err(|e| NodeError::Busy {
                path: target.clone(),
                why: format!("unmount failed: {e}"),
            })?;
            tracing::info!(target = %target.display(), "volume unpublished");
        }
        // A directory for a filesystem volume, a file for a block one.
        let removed = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&target),
            Ok(_) => std::fs::remove_file(&target),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NodeError::io(format!("removing {}", target.display()), e))
            }
            _ => Ok(()),
        }
    }

    pub async fn stats(&self, volume: &str, path: &str) -> Result<VolumeStats, NodeError> {
        let id = lookup_args(volume, path)?;
        let path = PathBuf::from(path);
        let record = self.record(id.partition).await?;
        if let Some(record) = record.as_ref().filter(|r| r.block) {
            return self.block_stats(&path, record).await;
        }
        let Some(m) = self.mount_at(&path).await? else {
            return Err(NodeError::NotMounted(path));
        };
        let Some(record) = record.filter(|r| Path::new(&m.source) == r.device) else {
            return Err(NodeError::NotHere(path));
        };
        let statvfs = match self.statfs.try_begin(id.partition) {
            None => Err("an earlier statfs of this volume has not returned yet".to_string()),
            Some(running) => {
                let p = path.clone();
                let statfs = move || {
                    let _running = running;
                    nix::sys::statvfs::statvfs(&p)
                };
                match bounded("statfs", STATFS_WAIT, statfs).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(format!("statfs failed: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let mut abnormal = Vec::new();
        if m.fs_read_only() && !record.mount_options.iter().any(|o| o == "ro") {
            abnormal.push(
                "the filesystem went read-only (an I/O or on-disk error; see the kernel log)"
                    .to_string(),
            );
        }
        let (locator, lun) = (self.locator.clone(), record.lun.clone());
        let number = record.partition_number;
        match bounded("reading partitions", READ_WAIT, move || {
            locator.partition_bytes(&lun, number)
        })
        .await?
        {
            Ok(Some(_)) => {}
            Ok(None) => abnormal.push(format!("the device {} vanished", record.device.display())),
            Err(e) => abnormal.push(format!(
                "the LUN {} cannot be read: {e}",
                record.lun.display()
            )),
        }
        let s = match statvfs {
            Ok(s) => s,
            Err(e) => {
                abnormal.push(e);
                return Ok(VolumeStats {
                    total_bytes: 0,
                    available_bytes: 0,
                    used_bytes: 0,
                    total_inodes: 0,
                    free_inodes: 0,
                    used_inodes: 0,
                    abnormal: Some(abnormal.join("; ")),
                    block: false,
                });
            }
        };
        let frsize = s.fragment_size() as u64;
        let total = s.blocks() as u64 * frsize;
        let free = s.blocks_free() as u64 * frsize;
        Ok(VolumeStats {
            total_bytes: total,
            available_bytes: s.blocks_available() as u64 * frsize,
            used_bytes: total.saturating_sub(free),
            total_inodes: s.files() as u64,
            free_inodes: s.files_free() as u64,
            used_inodes: (s.files() as u64).saturating_sub(s.files_free() as u64),
            abnormal: (!abnormal.is_empty()).then(|| abnormal.join("; ")),
            block: false,
        })
    }

    /// Grows the filesystem to its (already grown) partition, once for the
    /// whole cluster; a no-op where it already fills the partition. Returns
    /// the filesystem's size.
    pub async fn expand(
        &self,
        volume: &str,
        path: &str,
        capability: Option<&VolumeCapability>,
        range: Option<&CapacityRange>,
    ) -> Result<u64, NodeError> {
        let id = lookup_args(volume, path)?;
        let required = request::capacity(range)?;
        let block = self.record(id.partition).await?.filter(|r| r.block);
        if let Some(record) = block {
            return self.expand_block(id, record, capability, required).await;
        }
        if capability.is_some() {
            mount_capability(capability)?;
        }
        let result = self.expand_filesystem(id, path, required).await;
        if let Err(NodeError::Unconfirmed(missing)) = &result {
            let events = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let (Some(events), Some(size)) = (events, missing.first().map(|u| u.wanted)) {
                let waiting = missing.iter().map(|u| (u.node, u.why.clone())).collect();
                events.grow_waiting(volume, size, waiting);
            }
        }
        metrics::grow_ended(match &result {
            Ok((_, true)) => GrowOutcome::Grown,
            Ok((_, false)) => GrowOutcome::AlreadyFull,
            Err(NodeError::Unconfirmed(_)) => GrowOutcome::NodesBehind,
            Err(_) => GrowOutcome::Failed,
        });
        result.map(|(bytes, _)| bytes)
    }

    /// `expand` of a filesystem volume: its size, and whether this call
    /// grew it.
    async fn expand_filesystem(
        &self,
        id: VolumeId,
        path: &str,
        required: u64,
    ) -> Result<(u64, bool), NodeError> {
        self.ensure_ready()?;
        let path = PathBuf::from(path);
        if self.mount_at(&path).await?.is_none() {
            return Err(NodeError::NotMounted(path));
        }
        let record = self
            .record(id.partition)
            .await?
            .ok_or_else(|| NodeError::NotHere(path.clone()))?;
        let _busy = self.begin(&id)?;
        let global = self.cfg.heartbeat == HeartbeatMode::Global;
        let domain = if global { Some(self.domain()?) } else { None };
        let waited = Instant::now();
        let _volume_lock = match &domain {
            Some(d) => Some(
                d.lock(
                    &grow::volume_lock(&id.partition),
                    Mode::Exclusive,
                    grow::VOLUME_WAIT,
                )
                .await?,
            ),
            None => None,
        };
        metrics::grow_waited(GrowWait::VolumeLock, waited.elapsed().as_secs_f64());
        let located = self.locate(id).await?;
        if record.device != located.device {
            return Err(NodeError::OldDevice {
                staged: record.device,
                map: located.device,
            });
        }
        // The map is what the controller grew; the filesystem can grow to
        // it and no further.
        if required > located.entry.size {
            return Err(NodeError::OutOfRange {
                required,
                partition: located.entry.size,
            });
        }
        // Grown already (by another node, or an earlier call): the mounted
        // filesystem says so without reading the disk, which the slot map,
        // the size checks and tunefs below all do. A partition grows by
        // whole MiB and every OCFS2 cluster size divides one, so a
        // filesystem less than a MiB short of its partition has no whole
        // cluster to grow into. (statfs takes the global bitmap's cluster
        // lock: it sees another node's grow at once.)
        let live = self.mounted_bytes(&path).await?;
        if live + ALIGN > located.entry.size {
            tracing::info!(device = %located.device.display(), bytes = live, "filesystem already fills its device");
            return Ok((live, false));
        }
        let nodes = self.tools.mounted_nodes(&located.device).await?;
        match &domain {
            Some(d) => {
                let waited = Instant::now();
                let missing = grow::confirm_all(
                    d,
                    &id.partition,
                    self.cfg.node_number,
                    &nodes,
                    located.entry.size,
                )
                .await;
                metrics::grow_waited(GrowWait::NodeSizes, waited.elapsed().as_secs_f64());
                if !missing.is_empty() {
                    return Err(NodeError::Unconfirmed(missing));
                }
            }
            None if nodes.iter().any(|n| *n != u32::from(self.cfg.node_number)) => {
                return Err(NodeError::LocalMultiNode(nodes));
            }
            None => {}
        }
        let waited = Instant::now();
        let (fs_bytes, cluster) = self.settled_size(&located.device, &path).await?;
        metrics::grow_waited(GrowWait::Journal, waited.elapsed().as_secs_f64());
        if fs_bytes + cluster <= located.entry.size {
            // tunefs grows to this node's map, which must be exactly what
            // every node confirmed: held from here to the end of tunefs, no
            // map change of this plugin (another stage's, a size report's)
            // can grow it further meanwhile.
            let _map_held = self.confirmed_size(&located).await?;
            let started = Instant::now();
            self.tools.grow(&located.device).await?;
            let after = self.mounted_bytes(&path).await?;
            tracing::info!(
                device = %located.device.display(),
                from = fs_bytes,
                to = after,
                nodes = ?nodes,
                seconds = started.elapsed().as_secs_f64(),
                "filesystem grown online"
            );
            return Ok((after, true));
        }
        tracing::info!(device = %located.device.display(), bytes = fs_bytes, "filesystem already fills its device");
        Ok((fs_bytes, false))
    }

    /// Takes the map lock and checks, under it, that the size of the
    /// volume's map is still the one confirmed (`located`'s, which every
    /// other node reported at least).
    async fn confirmed_size(&self, located: &Located) -> Result<MapHold, NodeError> {
        let held = bounded("waiting for the map lock", READ_WAIT, device::hold).await?;
        let (locator, lun, number) = (
            self.locator.clone(),
            located.lun.clone(),
            located.entry.number,
        );
        let kernel = bounded("reading the map's size", READ_WAIT, move || {
            locator.partition_bytes(&lun, number)
        })
        .await?
        .map_err(io("reading the map's size"))?;
        if kernel != Some(located.entry.size) {
            return Err(NodeError::SizeMoved {
                confirmed: located.entry.size,
                kernel,
            });
        }
        Ok(held)
    }

    /// The filesystem's size once the disk agrees with the kernel, and its
    /// cluster size.
    ///
    /// tunefs reads the allocator layout from disk, but a grow this node
    /// made a moment ago may still sit in its journal (OCFS2 writes it home
    /// at the next checkpoint, every commit interval, 5 s by default). A
    /// tunefs working from that stale layout could write new group
    /// descriptors over space the filesystem already uses, so it runs only
    /// when the on-disk size equals what the mounted filesystem reports.
    /// (Another node's unwritten grow is no risk: our statfs takes the
    /// bitmap's cluster lock, which makes that node write it home.)
    async fn settled_size(&self, device: &Path, mounted: &Path) -> Result<(u64, u64), NodeError> {
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        loop {
            let live = self.mounted_bytes(mounted).await?;
            let (on_disk, cluster) = self.tools.fs_bytes(device).await?;
            if on_disk == live {
                return Ok((on_disk, cluster));
            }
            if std::time::Instant::now() > deadline {
                return Err(NodeError::Unsettled { on_disk, live });
            }
            tracing::info!(
                on_disk,
                live,
                "waiting for the journal to write the last grow home"
            );
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// After a restart: every volume still mounted gets its reporter back;
    /// records whose mount is gone are kept for Unstage to clean up.
    pub async fn adopt(&self) -> Result<usize, NodeError> {
        let mut adopted = 0;
        let records = self.records.clone();
        let all = bounded("reading stage records", READ_WAIT, move || records.all())
            .await?
            .map_err(io("reading stage records"))?;
        let mut block = Vec::new();
        for record in all {
            let record = match record {
                Ok(r) => r,
                Err((path, e)) => {
                    tracing::error!(record = %path.display(), error = %e, "unreadable stage record ignored");
                    continue;
                }
            };
            if record.block {
                block.push(record.partition_guid);
                if self.adopt_block(&record).await {
                    adopted += 1;
                }
                continue;
            }
            if self
                .our_mount(&record.staging_path, &record)
                .await?
                .is_some()
            {
                self.start_reporter(&record).await?;
                adopted += 1;
                tracing::info!(volume = %record.volume_id, staging = %record.staging_path.display(), "staged volume adopted");
            } else {
                tracing::warn!(volume = %record.volume_id, staging = %record.staging_path.display(), "staged volume is no longer mounted; waiting for Unstage");
            }
        }
        self.clear_stale_marks(&block).await;
        Ok(adopted)
    }
}

mod block;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};

    fn cap(access: AccessType, mode: i32) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode }),
        }
    }

    #[test]
    fn ids_that_are_not_ours_are_invalid_to_stage_and_unknown_to_look_up() {
        assert!(matches!(
            volume_id("volume_id", "fake-vol"),
            Err(NodeError::BadRequest(BadRequest::VolumeId { .. }))
        ));
        assert!(matches!(
            existing_volume_id("fake-vol"),
            Err(NodeError::NoSuchVolume(_))
        ));
        assert!(matches!(
            existing_volume_id(""),
            Err(NodeError::BadRequest(BadRequest::Empty { .. }))
        ));
        let id = format!("ocfs2-v1:{}:{}", uuid::Uuid::nil(), uuid::Uuid::max());
        assert_eq!(existing_volume_id(&id).unwrap().to_string(), id);
    }

    #[tokio::test]
    async fn a_read_that_does_not_return_is_abandoned_as_stalled() {
        use crate::server::status::RpcError;
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let wait = Duration::from_millis(10);
        // The call cannot return before it is released, whatever the pace.
        let err = bounded("reading the mount table", wait, move || hang.recv())
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::Stalled { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        release.send(()).unwrap();
        assert_eq!(bounded("x", wait * 1000, || 7).await.unwrap(), 7);
    }

    #[test]
    fn capabilities_are_checked() {
        let mount = |flags: &[&str], fs: &str| {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            })
        };
        assert_eq!(
            mount_capability(Some(&cap(mount(&["noatime"], ""), 5))).unwrap(),
            ["noatime"]
        );
        assert!(mount_capability(Some(&cap(mount(&[], "ocfs2"), 1))).is_ok());
        for bad in [
            cap(mount(&[], "ext4"), 5),
            cap(mount(&["nocluster"], ""), 5),
            cap(AccessType::Block(BlockVolume {}), 5),
            cap(mount(&[], ""), 99),
        ] {
            assert!(matches!(
                mount_capability(Some(&bad)),
                Err(NodeError::BadRequest(_))
            ));
        }
        assert!(mount_capability(None).is_err());
    }
}
