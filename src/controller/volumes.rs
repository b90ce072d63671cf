//! The controller's work on volumes, free of gRPC: create, delete, expand,
//! list, capacity and lookup over the pool's LUNs.

use super::allocate::{grow_plan, place_volume};
use super::error::{CreateError, DeleteError, ExpandError, ListError, LookupError, LunError};
use super::fs_image::{FsImage, Ocfs2Image};
use super::params::{check_capabilities, content_of, VolumeParams};
use super::pool::Lun;
use crate::cluster::MembershipSource;
use crate::csi::VolumeCapability;
use crate::disk::blocking::run_blocking;
use crate::disk::gpt::{Gpt, Partition};
use crate::disk::region::{with_region, RegionDevices};
use crate::ocfs2::layout::{round_up, HeartbeatMode, Layout, GIB, MIB};
use crate::ocfs2::tools::{MkfsSpec, Ocfs2Tools};
use crate::ocfs2::MAX_LABEL_BYTES;
use crate::server::inflight::{Guard, InFlight};
use crate::server::Readiness;
use crate::volume::entry::{
    self, block_partition, volume_entry, volume_in, volume_partition, Content, Placement, Sizing,
    State, VolumeEntry, ALIGN, FIRST_VOLUME_NUMBER, MAX_PARTITION,
};
use crate::volume::extents::extent_entries;
use crate::volume::id::{filesystem_uuid, partition_guid, VolumeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Size of a volume when the request names none.
pub const DEFAULT_VOLUME_BYTES: u64 = GIB;
/// CSI names are at most 128 bytes in practice (Kubernetes: 63 + prefix).
pub const MAX_NAME_BYTES: usize = 128;

/// What nodes need to find and mount a volume (the CSI volume context).
pub mod context_keys {
    pub const LUN_GUID: &str = "lunGuid";
    pub const PARTITION_GUID: &str = "partitionGuid";
    pub const FS_UUID: &str = "fsUuid";
    pub const CLUSTER_NAME: &str = "clusterName";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const HEARTBEAT_UUID: &str = "heartbeatUuid";
    /// `filesystem` or `block` (volumes made before it was added:
    /// filesystem).
    pub const CONTENT: &str = "content";
}

/// A volume as the RPCs report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub capacity: u64,
    pub context: HashMap<String, String>,
    /// What a clone or a restored snapshot was made from.
    pub source: Option<ContentSource>,
}

/// What a new volume starts from, besides nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    Volume(String),
    Snapshot(String),
}

pub struct CreateRequest<'a> {
    pub name: &'a str,
    pub required_bytes: i64,
    pub limit_bytes: i64,
    pub capabilities: &'a [VolumeCapability],
    pub parameters: &'a HashMap<String, String>,
    pub source: Option<ContentSource>,
}

#[derive(Debug)]
pub struct Capacity {
    pub available: u64,
    pub maximum_volume: u64,
}

pub struct Volumes {
    /// Every configured LUN in --lun order: open, or why not (yet). Each is
    /// opened on its own, so one bad LUN does not stop the others.
    luns: RwLock<Vec<LunSlot>>,
    tools: Ocfs2Tools,
    regions: Arc<dyn RegionDevices>,
    cluster_name: String,
    inflight: InFlight,
    /// Tests: DeleteVolume's wait instead of [`delete_grace`].
    delete_grace: Option<Duration>,
    /// The filesystems clones copy.
    images: Arc<dyn FsImage>,
    /// Who the o2cb node numbers are, to name them in refusals.
    members: Option<Arc<dyn MembershipSource>>,
}

/// How long DeleteVolume waits between marking an entry Deleting and its
/// last look at the slot map (see `delete`): the longest a node's stage may
/// take from its last look at the entry to holding a slot in the slot map.
/// mount.ocfs2 takes 0.2-0.3 s with global heartbeat (measured in TCG
/// guests) and about 10 s with local heartbeat, which starts the volume's
/// heartbeat before it joins; each with room to spare.
pub fn delete_grace(heartbeat: HeartbeatMode) -> Duration {
    match heartbeat {
        HeartbeatMode::Global => Duration::from_secs(3),
        HeartbeatMode::Local => Duration::from_secs(20),
    }
}

/// One configured LUN.
struct LunSlot {
    path: PathBuf,
    state: Result<Arc<Lun>, String>,
    /// A first try at opening it ended (either way).
    tried: bool,
}

/// Ready once every LUN had its first try at opening and one of them is
/// open and answering: the others are retried behind. Not ready while
/// every open LUN fails its I/O (the liveness probe then restarts the
/// controller, which opens everything afresh).
impl Readiness for Volumes {
    fn is_ready(&self) -> bool {
        let slots = self.slots();
        slots.iter().all(|s| s.tried)
            && slots.iter().any(|s| {
                s.state.as_ref().is_ok_and(|lun| match lun.io.failing() {
                    None => true,
                    Some(why) => {
                        tracing::warn!(lun = %lun.name(), why, "LUN failing");
                        false
                    }
                })
            })
    }
}

impl Volumes {
    pub fn new(tools: Ocfs2Tools, regions: Arc<dyn RegionDevices>, cluster_name: String) -> Self {
        Volumes {
            luns: RwLock::new(Vec::new()),
            images: Arc::new(Ocfs2Image::new(tools.clone(), regions.clone())),
            tools,
            regions,
            cluster_name,
            inflight: InFlight::default(),
            delete_grace: None,
            members: None,
        }
    }

    /// Names o2cb nodes in refusals by what `members` says.
    pub fn with_members(mut self, members: Arc<dyn MembershipSource>) -> Self {
        self.members = Some(members);
        self
    }

    /// Tests with fakes: clones see filesystems through `images`.
    pub fn with_images(mut self, images: Arc<dyn FsImage>) -> Self {
        self.images = images;
        self
    }

    /// Tests with fakes: a shorter wait in DeleteVolume (see `delete`).
    pub fn with_delete_grace(mut self, grace: Duration) -> Self {
        self.delete_grace = Some(grace);
        self
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<LunSlot>> {
        self.luns.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The LUNs to expect (--lun), none open yet.
    pub fn expect_luns(&self, paths: &[PathBuf]) {
        *self.luns.write().unwrap_or_else(|p| p.into_inner()) = paths
            .iter()
            .map(|path| LunSlot {
                path: path.clone(),
                state: Err("still being opened".into()),
                tried: false,
            })
            .collect();
    }

    /// Every LUN open at once (tests).
    pub fn set_luns(&self, luns: Vec<Arc<Lun>>) {
        *self.luns.write().unwrap_or_else(|p| p.into_inner()) = luns
            .into_iter()
            .map(|l| LunSlot {
                path: l.path.clone(),
                state: Ok(l),
                tried: true,
            })
            .collect();
    }

    /// `lun` opened; refused when it is an open LUN under another path.
    pub fn lun_opened(&self, lun: Arc<Lun>) -> Result<(), super::pool::OpenError> {
        let mut slots = self.luns.write().unwrap_or_else(|p| p.into_inner());
        let same = slots
            .iter()
            .filter_map(|s| s.state.as_ref().ok())
            .find(|l| l.disk_guid == lun.disk_guid && l.path != lun.path)
            .map(|first| super::pool::same_lun(first, &lun));
        let state = match &same {
            Some(e) => Err(e.to_string()),
            None => Ok(lun.clone()),
        };
        match slots.iter_mut().find(|s| s.path == lun.path) {
            Some(slot) => (slot.state, slot.tried) = (state, true),
            None => slots.push(LunSlot {
                path: lun.path.clone(),
                state,
                tried: true,
            }),
        }
        same.map_or(Ok(()), Err)
    }

    /// Opening `path` failed (its opener retries), or it stopped working.
    pub fn lun_failed(&self, path: &Path, why: String) {
        let mut slots = self.luns.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.iter_mut().find(|s| s.path == path) {
            (slot.state, slot.tried) = (Err(why), true);
        }
    }

    /// Whether every configured LUN is open.
    pub fn all_open(&self) -> bool {
        self.missing().is_none()
    }

    /// The LUNs not open, with why, or None when every LUN is open.
    fn missing(&self) -> Option<String> {
        let missing: Vec<String> = self
            .slots()
            .iter()
            .filter_map(|s| {
                s.state
                    .as_ref()
                    .err()
                    .map(|why| format!("{}: {why}", s.path.display()))
            })
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// The open LUNs with their place in --lun order; Unavailable when none.
    fn open_luns(&self) -> Result<Vec<(usize, Arc<Lun>)>, LunError> {
        let open: Vec<(usize, Arc<Lun>)> = self
            .slots()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.state.as_ref().ok().map(|l| (i, l.clone())))
            .collect();
        if open.is_empty() {
            return Err(LunError::NotReady(match self.missing() {
                Some(why) => format!("no LUN is open: {why}"),
                None => "no LUN is configured".into(),
            }));
        }
        Ok(open)
    }

    /// Every LUN, when every one is open: what must see them all (a create
    /// looking for an earlier try of itself, a complete listing).
    fn all_luns(&self, what: &str) -> Result<Vec<Arc<Lun>>, LunError> {
        if let Some(why) = self.missing() {
            return Err(LunError::NotReady(format!(
                "{what} needs every LUN and some are not open: {why}"
            )));
        }
        Ok(self.open_luns()?.into_iter().map(|(_, l)| l).collect())
    }

    /// The open LUN with disk GUID `guid`; Unavailable, not None, while
    /// some LUN is not open (it may be that one).
    fn lun_by_guid(&self, guid: &uuid::Uuid) -> Result<Option<Arc<Lun>>, LunError> {
        let found = self
            .open_luns()?
            .into_iter()
            .map(|(_, l)| l)
            .find(|l| l.disk_guid == *guid);
        match (found, self.missing()) {
            (Some(l), _) => Ok(Some(l)),
            (None, Some(why)) => Err(LunError::NotReady(format!(
                "LUN {guid} is not among the open LUNs, and some are not open: {why}"
            ))),
            (None, None) => Ok(None),
        }
    }

    /// Claims the volume for one operation; a second one gets Aborted. The
    /// claim is shared with blocking I/O that may outlive the call (see
    /// `wipe`), so it ends when the last holder lets go.
    fn begin(&self, key: uuid::Uuid, what: &str) -> Result<Arc<Guard>, LunError> {
        self.inflight
            .try_begin(key)
            .map(Arc::new)
            .ok_or_else(|| LunError::InFlight(what.to_string()))
    }

    fn context(&self, lun: &Lun, e: &VolumeEntry, name: Option<&str>) -> HashMap<String, String> {
        use context_keys::*;
        let mut c = HashMap::from([
            (LUN_GUID.to_string(), lun.disk_guid.to_string()),
            (PARTITION_GUID.to_string(), e.guid.to_string()),
            (CLUSTER_NAME.to_string(), self.cluster_name.clone()),
            (CONTENT.to_string(), e.content.to_string()),
        ]);
        if e.content == Content::Block {
            return c;
        }
        c.insert(HEARTBEAT.into(), e.heartbeat.to_string());
        if e.heartbeat == HeartbeatMode::Global {
            c.insert(HEARTBEAT_UUID.into(), lun.heartbeat_uuid.to_string());
        }
        if let Some(name) = name {
            c.insert(FS_UUID.into(), filesystem_uuid(name).to_string());
        }
        c
    }

    fn info(&self, lun: &Lun, e: &VolumeEntry, name: Option<&str>) -> VolumeInfo {
        VolumeInfo {
            id: VolumeId {
                lun: lun.disk_guid,
                partition: e.guid,
            },
            capacity: e.usable_bytes(),
            context: self.context(lun, e, name),
            source: None,
        }
    }

    pub async fn create(&self, req: CreateRequest<'_>) -> Result<VolumeInfo, CreateError> {
        let name = req.name;
        validate_name(name).map_err(CreateError::InvalidArgument)?;
        let usable = requested_bytes(req.required_bytes, req.limit_bytes)?;
        check_capabilities(req.capabilities).map_err(CreateError::InvalidArgument)?;
        let content = content_of(req.capabilities).map_err(CreateError::InvalidArgument)?;
        let params = VolumeParams::parse(req.parameters).map_err(CreateError::InvalidArgument)?;
        match &req.source {
            None => {}
            Some(ContentSource::Snapshot(snapshot_id)) => {
                let guard = self.begin(partition_guid(name), name)?;
                let restore = snapshot::RestoreRequest {
                    name,
                    snapshot_id,
                    content,
                    required_bytes: req.required_bytes,
                    limit_bytes: req.limit_bytes,
                    params: &params,
                };
                return self.create_from_snapshot(restore, &guard).await;
            }
            Some(ContentSource::Volume(source_id)) => {
                let guard = self.begin(partition_guid(name), name)?;
                let clone = clone::CloneRequest {
                    name,
                    source_id,
                    content,
                    required_bytes: req.required_bytes,
                    limit_bytes: req.limit_bytes,
                    params: &params,
                };
                return self.create_clone(clone, &guard).await;
            }
        }
        // An earlier try of this create may be on any LUN the parameters
        // allow: with no `lun`, every LUN must be open to look.
        let luns: Vec<Arc<Lun>> = match &params.lun {
            None => self.all_luns("a create with no lun parameter")?,
            Some(_) => self.open_luns()?.into_iter().map(|(_, l)| l).collect(),
        };
        let candidates: Vec<&Arc<Lun>> = match &params.lun {
            None => luns.iter().collect(),
            Some(want) => {
                let found: Vec<_> = luns.iter().filter(|l| l.matches(want)).collect();
                if found.is_empty() {
                    if let Some(why) = self.missing() {
                        return Err(LunError::NotReady(format!(
                            "parameter lun {want:?} names no open LUN, and some are not open: {why}"
                        ))
                        .into());
                    }
                    return Err(CreateError::InvalidArgument(format!(
                        "parameter lun {want:?} names none of this controller's LUNs"
                    )));
                }
                found
            }
        };
        let guid = partition_guid(name);
        let guard = self.begin(guid, name)?;
        let layout = Layout::for_size(
            usable,
            params.slots,
            params.block_size,
            params.cluster_size,
            params.journal_size,
        );
        // A StorageClass serves both volume modes: its OCFS2 parameters
        // are checked above and count for filesystem volumes only.
        let sizing = match content {
            Content::Ocfs2 => {
                layout.check().map_err(CreateError::InvalidArgument)?;
                Sizing::Ocfs2(entry::accounted(&layout))
            }
            Content::Block => Sizing::Block,
        };

        // A retry finds what an earlier call made, on any LUN.
        for lun in &luns {
            let table = lun.read_table().await?;
            let Some(p) = table.find_by_guid(&guid) else {
                continue;
            };
            let existing = volume_in(&table, p).ok_or_else(|| CreateError::Incompatible {
                name: name.to_string(),
                why: format!("partition {} with its GUID is not a volume", p.number),
            })?;
            if existing.state == State::Deleting {
                return Err(CreateError::BeingDeleted(name.to_string()));
            }
            let mismatch = compatibility(
                &existing,
                &sizing,
                &params,
                usable,
                req.limit_bytes,
                candidates.iter().any(|c| Arc::ptr_eq(c, lun)),
            );
            if let Some(why) = mismatch {
                return Err(CreateError::Incompatible {
                    name: name.to_string(),
                    why,
                });
            }
            if existing.state == State::Pending {
                tracing::info!(
                    volume = name,
                    partition = existing.number,
                    "resuming an interrupted create"
                );
                self.make(lun, &existing, name, &layout, &params, &guard)
                    .await?;
            }
            return Ok(self.info(lun, &existing, Some(name)));
        }

        let partition_bytes = sizing.partition_bytes(usable);
        let (lun, created) = self
            .allocate_volume(
                &candidates,
                name,
                &sizing,
                partition_bytes,
                usable,
                params.heartbeat,
            )
            .await?;
        match content {
            Content::Ocfs2 => tracing::info!(
                volume = name,
                lun = %lun.name(),
                partition = created.number,
                partition_bytes,
                usable,
                slots = layout.slots,
                journal = layout.journal_size,
                cluster = layout.cluster_size,
                "partition allocated, formatting"
            ),
            Content::Block => tracing::info!(
                volume = name,
                lun = %lun.name(),
                partition = created.number,
                partition_bytes,
                usable,
                "partition allocated for a raw block volume, zeroing"
            ),
        }
        self.make(lun, &created, name, &layout, &params, &guard)
            .await?;
        Ok(self.info(lun, &created, Some(name)))
    }

    /// Makes a pending volume what it is to hold, then marks it ready.
    async fn make(
        &self,
        lun: &Arc<Lun>,
        e: &VolumeEntry,
        name: &str,
        layout: &Layout,
        params: &VolumeParams,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
        match e.content {
            Content::Ocfs2 => {
                self.format_and_confirm(lun, e, name, layout, params, guard)
                    .await
            }
            Content::Block => self.zero_and_confirm(lun, e, name, guard).await,
        }
    }

    /// Reserves a pending volume partition on the first LUN with room.
    async fn allocate_volume<'l>(
        &self,
        candidates: &[&'l Arc<Lun>],
        name: &str,
        sizing: &Sizing,
        partition_bytes: u64,
        usable: u64,
        heartbeat: HeartbeatMode,
    ) -> Result<(&'l Arc<Lun>, VolumeEntry), CreateError> {
        let guid = partition_guid(name);
        let build = |at| match sizing {
            Sizing::Ocfs2(layout) => {
                volume_partition(at, guid, name, State::Pending, heartbeat, layout)
            }
            Sizing::Block => block_partition(at, guid, name, State::Pending),
        };
        let (lun, p) = self
            .allocate(candidates, sizing, partition_bytes, usable, &build)
            .await?;
        let e = volume_entry(&p, lun.sector_size()).expect("a volume partition");
        Ok((lun, e))
    }

    /// Reserves a pending partition that `build` makes on the first LUN
    /// with room.
    /// `build` makes the pending entry for a place; `sizing` says what a
    /// LUN's free space would give, for the refusal's figures.
    async fn allocate<'l>(
        &self,
        candidates: &[&'l Arc<Lun>],
        sizing: &Sizing,
        partition_bytes: u64,
        usable: u64,
        build: &(dyn Fn(Placement) -> Partition + Send + Sync),
    ) -> Result<(&'l Arc<Lun>, Partition), CreateError> {
        let mut largest = 0u64;
        let mut lun_capacity = 0u64;
        let mut numbers_left = false;
        for &lun in candidates {
            let _locked = lun.lock().await;
            let mut table = lun.read_table().await?;
            let ss = lun.sector_size();
            // Full as this host sees it: the array may have grown it.
            if place_volume(&table, partition_bytes / ss).is_none() && take_new_space(lun).await {
                table = lun.read_table().await?;
            }
            lun_capacity = lun_capacity.max(
                sizing.usable_bytes((table.last_usable_lba - table.first_usable_lba + 1) * ss),
            );
            let Some(number) =
                (FIRST_VOLUME_NUMBER..=MAX_PARTITION).find(|n| table.partition(*n).is_none())
            else {
                continue;
            };
            numbers_left = true;
            let sectors = partition_bytes / ss;
            let extents = table.free_extents(ALIGN / ss);
            largest = largest.max(
                extents
                    .iter()
                    .map(|(f, l)| sizing.usable_bytes((l - f + 1) * ss))
                    .max()
                    .unwrap_or(0),
            );
            let Some(first) = place_volume(&table, sectors) else {
                continue;
            };
            let at = Placement {
                number,
                first_lba: first,
                last_lba: first + sectors - 1,
            };
            let p = build(at);
            table.partitions.push(p.clone());
            table.partitions.sort_by_key(|p| p.number);
            lun.write_table(&table).await?;
            return Ok((lun, p));
        }
        if !numbers_left {
            return Err(CreateError::NoPartitionNumber {
                max: MAX_PARTITION - FIRST_VOLUME_NUMBER + 1,
            });
        }
        if usable > lun_capacity {
            return Err(CreateError::CapacityOutOfRange(format!(
                "{usable} bytes is more than an empty LUN of this pool could hold \
                 (at most {lun_capacity} bytes with these parameters)"
            )));
        }
        Err(CreateError::NoSpace {
            needed: usable,
            partition: partition_bytes,
            largest,
        })
    }

    /// mkfs on a pending partition, then marks it ready. If mkfs fails the
    /// partition is wiped and dropped again, so nothing half-made stays.
    async fn format_and_confirm(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
        name: &str,
        layout: &Layout,
        params: &VolumeParams,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
        let spec = MkfsSpec {
            cluster_name: self.cluster_name.clone(),
            label: label(name),
            uuid: filesystem_uuid(name),
            layout: layout.clone(),
            heartbeat: params.heartbeat,
            features: params.features.clone(),
        };
        let tools = &self.tools;
        let spec = &spec;
        let formatted = with_region(
            self.regions.as_ref(),
            &lun.path,
            e.offset,
            e.size,
            |dev| async move { tools.mkfs(spec, &dev).await.map_err(LunError::from) },
        )
        .await;
        if let Err(err) = formatted {
            tracing::error!(volume = name, error = %err, "mkfs failed; removing the partition again");
            if let Err(undo) = self.wipe_and_remove(lun, e, guard).await {
                tracing::error!(volume = name, error = %undo, "could not remove the pending partition; a retry or DeleteVolume will");
            }
            return Err(err);
        }
        let _locked = lun.lock().await;
        let mut table = lun.read_table().await?;
        let p = table
            .partitions
            .iter_mut()
            .find(|p| p.unique_guid == e.guid)
            .ok_or_else(|| {
                LunError::NotReady(format!("partition of {name} vanished during create"))
            })?;
        let at = Placement {
            number: p.number,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        };
        let ready = volume_partition(at, e.guid, name, State::Ready, e.heartbeat, &e.layout);
        *p = ready;
        lun.write_table(&table).await?;
        Ok(())
    }

    /// Zeroes the filesystem signatures (primary and backup superblocks),
    /// discards the space where the LUN can, then drops the GPT entry.
    async fn wipe_and_remove(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
        wipe(lun, e, guard.clone()).await?;
        let _locked = lun.lock().await;
        let mut table = lun.read_table().await?;
        let before = table.partitions.len();
        let extents: Vec<u32> = extent_entries(&table, &e.guid)
            .into_iter()
            .map(|(_, p)| p.number)
            .collect();
        // The head and its extents go in one table write.
        table
            .partitions
            .retain(|p| p.unique_guid != e.guid && !extents.contains(&p.number));
        if table.partitions.len() != before {
            lun.write_table(&table).await?;
        }
        Ok(())
    }

    /// DeleteVolume. A node may be staging the volume right now: the
    /// kubelet gives up on a NodeStage long before the node does (its waits
    /// add up to minutes), so "not in the slot map" alone proves nothing
    /// about the next second. The entry is therefore first marked Deleting,
    /// which every node checks before it mounts and again right after
    /// (`node::volumes::stage`, unmounting a volume found Deleting or gone):
    ///
    /// 1. slot map not empty: refuse, nothing changed;
    /// 2. write the entry Deleting (one table write, under the writer lease);
    /// 3. wait [`delete_grace`]: a node that read Ready before step 2 mounts
    ///    within it (its last check is right before mount.ocfs2, and the
    ///    mount takes its slot early; measured 0.3 s with global heartbeat,
    ///    10 s with local), a node that reads after step 2 refuses;
    /// 4. read the slot map again. A node there mounted during the window:
    ///    if it read the entry after mounting it saw Deleting and unmounts,
    ///    if before, it stays. Either way nothing is wiped: the entry goes
    ///    back to Ready and the delete is refused (a retry decides again);
    /// 5. otherwise every node that could mount it is past its post-mount
    ///    check, which saw Deleting, or never mounts: wipe, then drop.
    ///
    /// What stays open: a mount that takes longer than the grace from its
    /// node's last check to taking its slot (a DLM recovery in progress);
    /// that node unmounts once its mount returns, but its filesystem was
    /// wiped under it meanwhile. A retry after a crash finds the entry
    /// Deleting and runs the same steps from 1 (a volume whose signature is
    /// already gone has nothing a node could mount, and skips the wait).
    pub async fn delete(&self, volume_id: &str) -> Result<(), DeleteError> {
        if volume_id.is_empty() {
            return Err(DeleteError::InvalidArgument(
                "volume_id must not be empty".into(),
            ));
        }
        let Some(id) = VolumeId::parse(volume_id) else {
            tracing::info!(
                volume_id,
                "not a volume ID of this driver; nothing to delete"
            );
            return Ok(());
        };
        let Some(lun) = self.lun_by_guid(&id.lun)? else {
            tracing::warn!(
                volume_id,
                "its LUN is not in this controller's pool; nothing to delete here"
            );
            return Ok(());
        };
        let lun = &*lun;
        let guard = self.begin(id.partition, volume_id)?;
        let table = lun.read_table().await?;
        let Some(p) = table.find_by_guid(&id.partition) else {
            return Ok(());
        };
        let Some(e) = volume_in(&table, p) else {
            return Err(DeleteError::InvalidArgument(format!(
                "{volume_id} names partition {}, which is not a volume",
                p.number
            )));
        };
        let Some(nodes) = self.users(lun, &e).await? else {
            // No filesystem (wiped by an interrupted delete, or mkfs never
            // ran): nothing a node could mount.
            self.wipe_and_remove(lun, &e, &guard).await?;
            tracing::info!(volume_id, partition = e.number, "volume deleted");
            return Ok(());
        };
        if !nodes.is_empty() {
            if e.state == State::Deleting {
                // An interrupted delete that found a node mounted.
                set_state(lun, &e, State::Ready).await?;
            }
            return Err(nodes.refusal(volume_id, self.members.as_deref()).await);
        }
        // A pending entry was never stageable: no node can be mid-stage.
        let stageable = e.state != State::Pending;
        if e.state != State::Deleting {
            set_state(lun, &e, State::Deleting).await?;
        }
        if stageable {
            let grace = self.delete_grace.unwrap_or(delete_grace(e.heartbeat));
            tracing::info!(
                volume_id,
                grace_ms = grace.as_millis() as u64,
                "marked deleting; waiting for stages that began before to show"
            );
            tokio::time::sleep(grace).await;
            let nodes = self.users(lun, &e).await?;
            if let Some(nodes) = nodes.filter(|n| !n.is_empty()) {
                tracing::warn!(
                    volume_id,
                    ?nodes,
                    "a stage took the volume while it was being deleted; it stays"
                );
                set_state(lun, &e, State::Ready).await?;
                return Err(nodes.refusal(volume_id, self.members.as_deref()).await);
            }
        }
        self.wipe_and_remove(lun, &e, &guard).await?;
        tracing::info!(
            volume_id,
            partition = e.number,
            bytes = e.size,
            "volume deleted"
        );
        Ok(())
    }

    /// Who uses the volume as the LUN shows it: the OCFS2 slot map's
    /// nodes, or a raw block volume's holder marks. None when there is
    /// nothing a node could stage (no filesystem, no block header).
    async fn users(&self, lun: &Lun, e: &VolumeEntry) -> Result<Option<Users>, LunError> {
        Ok(match e.content {
            Content::Ocfs2 => self.mounted_nodes(lun, e).await?.map(Users::Mounted),
            Content::Block => self.block_holders(lun, e).await?.map(Users::Held),
        })
    }

    /// The o2cb nodes in the volume's slot map, or None when the region
    /// holds no filesystem.
    async fn mounted_nodes(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
    ) -> Result<Option<Vec<u32>>, LunError> {
        let tools = &self.tools;
        let head = e.head();
        with_region(
            self.regions.as_ref(),
            &lun.path,
            head.offset,
            head.size,
            |dev| async move {
                match tools.inspect(&dev).await.map_err(LunError::from)? {
                    None => Ok(None),
                    Some(_) => Ok(Some(
                        tools.mounted_nodes(&dev).await.map_err(LunError::from)?,
                    )),
                }
            },
        )
        .await
    }

    pub async fn expand(
        &self,
        volume_id: &str,
        required_bytes: i64,
        limit_bytes: i64,
        capability: Option<&VolumeCapability>,
    ) -> Result<u64, ExpandError> {
        if volume_id.is_empty() {
            return Err(ExpandError::InvalidArgument(
                "volume_id must not be empty".into(),
            ));
        }
        if required_bytes < 0 || limit_bytes < 0 {
            return Err(ExpandError::InvalidArgument(
                "capacity_range bytes must not be negative".into(),
            ));
        }
        if limit_bytes > 0 && required_bytes > limit_bytes {
            return Err(ExpandError::CapacityOutOfRange(format!(
                "required_bytes {required_bytes} is more than limit_bytes {limit_bytes}"
            )));
        }
        let asked = match capability {
            Some(cap) => {
                let caps = std::slice::from_ref(cap);
                check_capabilities(caps).map_err(ExpandError::InvalidArgument)?;
                Some(content_of(caps).map_err(ExpandError::InvalidArgument)?)
            }
            None => None,
        };
        let not_found = || ExpandError::NotFound(super::params::clip(volume_id));
        let id = VolumeId::parse(volume_id).ok_or_else(not_found)?;
        let lun = self.lun_by_guid(&id.lun)?.ok_or_else(not_found)?;
        let lun = &*lun;
        let _guard = self.begin(id.partition, volume_id)?;
        let _locked = lun.lock().await;
        let mut table = lun.read_table().await?;
        let p = table
            .find_by_guid(&id.partition)
            .ok_or_else(not_found)?
            .clone();
        let e = volume_in(&table, &p)
            .filter(|e| e.state != State::Deleting)
            .ok_or_else(not_found)?;
        if e.state == State::Pending {
            return Err(ExpandError::NotCreated(volume_id.to_string()));
        }
        if e.state == State::Cloning {
            // A clone copies it (an interrupted one is put back by the
            // LUN's writer): its size must not change under the copy.
            return Err(LunError::InFlight(format!("{volume_id} (being cloned)")).into());
        }
        if asked.is_some_and(|c| c != e.content) {
            return Err(ExpandError::InvalidArgument(format!(
                "{volume_id} is a {} volume; the capability asks for {}",
                e.content,
                asked.expect("checked")
            )));
        }
        let wanted = round_up(required_bytes as u64, MIB);
        let current = e.usable_bytes();
        if wanted <= current {
            return Ok(current);
        }
        let sizing = e.sizing();
        let new_bytes = sizing.partition_bytes(wanted);
        let mut plan = grow_plan(&table, &e, new_bytes - e.size);
        if plan.is_err() && take_new_space(lun).await {
            table = lun.read_table().await?;
            plan = grow_plan(&table, &e, new_bytes - e.size);
        }
        let growth = plan.map_err(|room| ExpandError::NoRoom {
            volume: volume_id.to_string(),
            wanted,
            possible: sizing.usable_bytes(e.size + room.bytes),
            why: room.why,
        })?;
        if e.content == Content::Block {
            // Under the LUN's lock, before the table names the space: no
            // node can map it yet, and no create can take it.
            self.zero_growth(lun, &e, &growth).await?;
        }
        growth.apply(&mut table, &e);
        lun.write_table(&table).await?;
        let grown = sizing.usable_bytes(new_bytes);
        tracing::info!(
            volume_id,
            from = current,
            to = grown,
            bytes = new_bytes,
            in_place = growth.in_place_sectors * lun.sector_size(),
            new_extents = growth.added.len(),
            extents = e.extents.len() + growth.added.len(),
            "volume grown in the table; nodes grow their maps, then the filesystem"
        );
        Ok(grown)
    }

    /// One page of ready volumes, in a stable order (LUN, partition number).
    /// The token names the next volume's position rather than a count, so
    /// volumes created or deleted between pages neither shift nor repeat
    /// the rest.
    pub async fn list(
        &self,
        max_entries: i64,
        starting_token: &str,
    ) -> Result<(Vec<VolumeInfo>, String), ListError> {
        if max_entries < 0 {
            return Err(ListError::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        let start = if starting_token.is_empty() {
            (0, 0)
        } else {
            parse_token(starting_token)
                .ok_or_else(|| ListError::BadToken(super::params::clip(starting_token)))?
        };
        let limit = if max_entries == 0 {
            usize::MAX
        } else {
            max_entries as usize
        };
        let mut page = Vec::new();
        // A page is only complete with every LUN: the token is an index.
        self.all_luns("listing volumes")?;
        for (index, lun) in self.open_luns()? {
            let table = lun.read_table().await?;
            for p in &table.partitions {
                let key = (index as u32, p.number);
                let ready = volume_in(&table, p).filter(|e| e.state.is_live());
                let Some(e) = ready.filter(|_| key >= start) else {
                    continue;
                };
                if page.len() == limit {
                    return Ok((page, format!("{}.{}", key.0, key.1)));
                }
                page.push(self.info(&lun, &e, None));
            }
        }
        Ok((page, String::new()))
    }

    /// ValidateVolumeCapabilities: the volume must exist; then Ok(Ok) when
    /// the capabilities and parameters can be served, Ok(Err(why)) when not.
    pub async fn validate(
        &self,
        volume_id: &str,
        capabilities: &[VolumeCapability],
        parameters: &HashMap<String, String>,
    ) -> Result<Result<(), String>, LookupError> {
        let info = self.get(volume_id).await?;
        if capabilities.is_empty() {
            return Err(LookupError::InvalidArgument(
                "volume_capabilities must not be empty".into(),
            ));
        }
        let content = info.context.get(context_keys::CONTENT).cloned();
        Ok(check_capabilities(capabilities)
            .and_then(|()| content_of(capabilities))
            .and_then(|asked| match content {
                Some(c) if c != asked.to_string() => Err(format!(
                    "the volume is a {c} volume; the capabilities ask for {asked}"
                )),
                _ => Ok(()),
            })
            .and_then(|()| VolumeParams::parse(parameters).map(drop)))
    }

    /// A ready volume by ID.
    pub async fn get(&self, volume_id: &str) -> Result<VolumeInfo, LookupError> {
        if volume_id.is_empty() {
            return Err(LookupError::InvalidArgument(
                "volume_id must not be empty".into(),
            ));
        }
        let not_found = || LookupError::NotFound(super::params::clip(volume_id));
        let id = VolumeId::parse(volume_id).ok_or_else(not_found)?;
        let lun = self.lun_by_guid(&id.lun)?.ok_or_else(not_found)?;
        let lun = &*lun;
        let table = lun.read_table().await?;
        let p = table.find_by_guid(&id.partition).ok_or_else(not_found)?;
        let e = volume_in(&table, p)
            .filter(|e| e.state.is_live())
            .ok_or_else(not_found)?;
        Ok(self.info(lun, &e, None))
    }

    /// What every configured LUN holds now, for the metrics: open or why
    /// not, and for an open one its space and volumes.
    pub async fn usage(&self) -> Vec<LunUsage> {
        let slots: Vec<(PathBuf, Result<Arc<Lun>, String>)> = self
            .slots()
            .iter()
            .map(|s| (s.path.clone(), s.state.clone()))
            .collect();
        let mut out = Vec::with_capacity(slots.len());
        for (path, state) in slots {
            let space = match state {
                Err(why) => Err(why),
                Ok(lun) => match lun.read_table().await {
                    Err(e) => Err(e.to_string()),
                    Ok(table) => Ok(space_of(&table, lun.sector_size(), lun.writer.holds())),
                },
            };
            out.push(LunUsage { path, space });
        }
        out
    }

    /// Free space for volumes with these parameters: the sum over free
    /// extents of what each could hold, and the largest single volume.
    /// Capabilities we cannot serve have no capacity (the spec's answer).
    pub async fn capacity(
        &self,
        parameters: &HashMap<String, String>,
        capabilities: &[VolumeCapability],
    ) -> Result<Capacity, ListError> {
        let params = VolumeParams::parse(parameters).map_err(ListError::InvalidArgument)?;
        let mut cap = Capacity {
            available: 0,
            maximum_volume: 0,
        };
        let content = match capabilities.is_empty() {
            true => Ok(Content::Ocfs2),
            false => check_capabilities(capabilities).and_then(|()| content_of(capabilities)),
        };
        let Ok(content) = content else {
            return Ok(cap);
        };
        let block = content == Content::Block;
        for (_, lun) in self.open_luns()? {
            if params.lun.as_deref().is_some_and(|want| !lun.matches(want)) {
                continue;
            }
            let table = lun.read_table().await?;
            if !(FIRST_VOLUME_NUMBER..=MAX_PARTITION).any(|n| table.partition(n).is_none()) {
                continue;
            }
            let ss = lun.sector_size();
            for (first, last) in table.free_extents(ALIGN / ss) {
                let bytes = (last - first + 1) * ss;
                let sizing = if block {
                    Sizing::Block
                } else {
                    Sizing::Ocfs2(entry::accounted(&Layout::for_size(
                        bytes,
                        params.slots,
                        params.block_size,
                        params.cluster_size,
                        params.journal_size,
                    )))
                };
                let usable = sizing.usable_bytes(bytes);
                cap.available += usable;
                cap.maximum_volume = cap.maximum_volume.max(usable);
            }
        }
        Ok(cap)
    }
}

/// One configured LUN as the metrics show it.
#[derive(Debug)]
pub struct LunUsage {
    pub path: PathBuf,
    /// Its space, or why it is not open (or its table unreadable).
    pub space: Result<LunSpace, String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct LunSpace {
    /// The table's usable range.
    pub size_bytes: u64,
    /// Held by partitions (volumes, and the heartbeat partition).
    pub used_bytes: u64,
    /// Free and aligned: what new volumes can have.
    pub free_bytes: u64,
    pub largest_free_bytes: u64,
    /// Volumes by their entry state (pending, ready, deleting, cloning).
    pub volumes: Vec<(State, u64)>,
    /// This process holds the LUN's writer lease.
    pub writer: bool,
}

fn space_of(table: &Gpt, sector_size: u64, writer: bool) -> LunSpace {
    let free: Vec<u64> = table
        .free_extents(ALIGN / sector_size)
        .iter()
        .map(|(first, last)| (last - first + 1) * sector_size)
        .collect();
    let mut volumes: Vec<(State, u64)> = Vec::new();
    for e in table.partitions.iter().filter_map(|p| volume_in(table, p)) {
        match volumes.iter_mut().find(|(s, _)| *s == e.state) {
            Some((_, n)) => *n += 1,
            None => volumes.push((e.state, 1)),
        }
    }
    LunSpace {
        size_bytes: (table.last_usable_lba + 1).saturating_sub(table.first_usable_lba)
            * sector_size,
        used_bytes: table
            .partitions
            .iter()
            .map(|p| p.size_sectors() * sector_size)
            .sum(),
        free_bytes: free.iter().sum(),
        largest_free_bytes: free.iter().copied().max().unwrap_or(0),
        volumes,
        writer,
    }
}

/// The nodes a volume is in use on.
#[derive(Debug)]
enum Users {
    Mounted(Vec<u32>),
    Held(Vec<crate::volume::block_header::Holder>),
}

impl Users {
    fn is_empty(&self) -> bool {
        match self {
            Users::Mounted(n) => n.is_empty(),
            Users::Held(h) => h.is_empty(),
        }
    }

    /// The refusal of a delete, naming o2cb nodes by their members' names
    /// where `members` knows them.
    async fn refusal(self, volume: &str, members: Option<&dyn MembershipSource>) -> DeleteError {
        let volume = volume.to_string();
        match self {
            Users::Mounted(numbers) => {
                let known = match members {
                    Some(m) => m.members().await.unwrap_or_default(),
                    None => Vec::new(),
                };
                let nodes = numbers
                    .iter()
                    .map(|n| match known.iter().find(|m| u32::from(m.number) == *n) {
                        Some(m) => format!("{} (o2cb node {n})", m.name),
                        None => format!("o2cb node {n}"),
                    })
                    .collect();
                DeleteError::Mounted { volume, nodes }
            }
            Users::Held(h) => DeleteError::Held {
                volume,
                holders: h.iter().map(|h| h.to_string()).collect(),
            },
        }
    }
}

/// Rewrites the type of `e`'s entry to `state` (same place, same GUID).
async fn set_state(lun: &Lun, e: &VolumeEntry, state: State) -> Result<(), LunError> {
    let _locked = lun.lock().await;
    let mut table = lun.read_table().await?;
    let p = entry_mut(&mut table, e)?;
    let wanted = e.type_in(state);
    if p.type_guid == wanted {
        return Ok(());
    }
    p.type_guid = wanted;
    lun.write_table(&table).await
}

/// `e`'s head entry in `table` (same place, same GUID), or NotReady when
/// it vanished since `e` was read.
fn entry_mut<'t>(table: &'t mut Gpt, e: &VolumeEntry) -> Result<&'t mut Partition, LunError> {
    table
        .partitions
        .iter_mut()
        .find(|p| p.unique_guid == e.guid && p.number == e.number)
        .ok_or_else(|| {
            LunError::NotReady(format!(
                "partition {} of {} vanished meanwhile",
                e.number, e.name
            ))
        })
}

/// When a LUN has no room left as this host sees it: whether the array
/// grew it and the table now spans more (`Lun::take_new_space`; the
/// caller holds the LUN's lock). A failed look is logged and counts as no:
/// the caller's "no room" answer stands, and the log says why the new
/// space, if any, was not seen.
async fn take_new_space(lun: &Lun) -> bool {
    lun.take_new_space().await.unwrap_or_else(|e| {
        tracing::warn!(lun = %lun.name(), error = %e, "the LUN is full; looking for space the array added failed");
        false
    })
}

/// `LUN.PARTITION`, as `list` hands out.
fn parse_token(token: &str) -> Option<(u32, u32)> {
    let (lun, number) = token.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(lun) && digits(number)) {
        return None;
    }
    Some((lun.parse().ok()?, number.parse().ok()?))
}

/// Why an existing volume does not match a repeated CreateVolume, if it
/// does not.
fn compatibility(
    existing: &VolumeEntry,
    sizing: &Sizing,
    params: &VolumeParams,
    usable: u64,
    limit: i64,
    on_allowed_lun: bool,
) -> Option<String> {
    let have = existing.usable_bytes();
    let (asked, accounted) = match sizing {
        Sizing::Ocfs2(layout) => (Content::Ocfs2, Some(layout)),
        Sizing::Block => (Content::Block, None),
    };
    if existing.content != asked {
        Some(format!(
            "it is a {} volume, this request asks for {asked}",
            existing.content
        ))
    } else if let Some(accounted) = accounted.filter(|a| existing.layout != **a) {
        Some(format!(
            "it has {} slots, {} byte clusters and {} byte journals (as accounted), this \
             request asks for {}, {} and {}",
            existing.layout.slots,
            existing.layout.cluster_size,
            existing.layout.journal_size,
            accounted.slots,
            accounted.cluster_size,
            accounted.journal_size
        ))
    } else if existing.content == Content::Ocfs2 && existing.heartbeat != params.heartbeat {
        Some(format!(
            "it uses {} heartbeat, this request asks for {}",
            existing.heartbeat, params.heartbeat
        ))
    } else if have < usable || (limit > 0 && have > limit as u64) {
        Some(format!(
            "it holds {have} bytes, this request asks for {usable} bytes (limit {limit})"
        ))
    } else if !on_allowed_lun {
        Some("it lives on another LUN than the lun parameter names".into())
    } else {
        None
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes long; at most {MAX_NAME_BYTES} are supported",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

/// The usable bytes to provision: the request rounded up to whole MiB,
/// within the limit.
fn requested_bytes(required: i64, limit: i64) -> Result<u64, CreateError> {
    if required < 0 || limit < 0 {
        return Err(CreateError::InvalidArgument(
            "capacity_range bytes must not be negative".into(),
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && required > limit {
        return Err(CreateError::CapacityOutOfRange(format!(
            "required_bytes {required} is more than limit_bytes {limit}"
        )));
    }
    let wanted = if required == 0 {
        DEFAULT_VOLUME_BYTES
    } else {
        round_up(required, MIB)
    };
    if limit == 0 || wanted <= limit {
        return Ok(wanted);
    }
    // Rounding (or the default) overshot the limit: take whole MiB under it.
    let floor = limit / MIB * MIB;
    if floor >= required && floor > 0 {
        Ok(floor)
    } else {
        Err(CreateError::CapacityOutOfRange(format!(
            "no whole number of MiB lies between required_bytes {required} and limit_bytes {limit}"
        )))
    }
}

/// OCFS2 labels hold 63 bytes; longer names are cut at a character boundary.
fn label(name: &str) -> String {
    let mut end = name.len().min(MAX_LABEL_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Byte offsets of OCFS2's backup superblocks (1 GiB, then every 4x).
const BACKUP_SUPERBLOCKS: [u64; 6] = [1 << 30, 1 << 32, 1 << 34, 1 << 36, 1 << 38, 1 << 40];

/// Longest wait for a wipe (signatures, sync and discard). A discard of a
/// big volume on a thin LUN can take minutes; past this the RPC answers
/// DeadlineExceeded while the wipe goes on.
const WIPE_TIMEOUT: Duration = Duration::from_secs(600);

/// On a blocking thread: a discard may take minutes, and the async workers
/// must stay free (Probe). The thread holds the volume's in-flight claim
/// until the wipe really ends, even if the wait gives up: otherwise a retried
/// DeleteVolume could drop the entry, and a new volume made in that space
/// could be hit by this wipe's discard still running.
async fn wipe(lun: &Lun, e: &VolumeEntry, claim: Arc<Guard>) -> Result<(), LunError> {
    let (io, name, e) = (lun.io.clone(), lun.name(), e.clone());
    run_blocking(WIPE_TIMEOUT, move || {
        let _claim = claim;
        let zeros = vec![0u8; MIB as usize];
        let head = e.head().size.min(MIB) as usize;
        io.write_at(e.offset, &zeros[..head])?;
        // Backup superblocks sit at offsets of the filesystem, which may
        // lie in any extent.
        for backup in BACKUP_SUPERBLOCKS.iter().filter(|&&b| b + 4096 <= e.size) {
            if let Some(at) = e.lun_offset(*backup) {
                io.write_at(at, &zeros[..4096])?;
            }
        }
        io.sync()?;
        for extent in &e.extents {
            match io.discard(extent.offset, extent.size) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
                    tracing::debug!(lun = %name, "LUN does not support discard");
                    break;
                }
                // The signatures are gone already; a failed discard only
                // leaves old blocks that no filesystem points at.
                Err(err) => tracing::warn!(lun = %name, error = %err, "discard failed"),
            }
        }
        Ok(())
    })
    .await
    .map_err(|stalled| lun.stalled("wiping a volume", stalled))?
    .map_err(|err| lun.io_error(err))
}

mod block;
mod clone;
mod progress;
mod snapshot;
pub use snapshot::SnapshotInfo;
#[cfg(test)]
mod tests;
