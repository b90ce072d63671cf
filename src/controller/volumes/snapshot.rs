//! Offline snapshots: CreateSnapshot, DeleteSnapshot, ListSnapshots and
//! CreateVolume from a snapshot.
//!
//! OCFS2 cannot be frozen, so a snapshot of a volume in use would not be a
//! consistent one: CreateSnapshot refuses (FailedPrecondition) while a node
//! mounts or holds the source, exactly as a clone does, and copies it with
//! the clone's protocol (`clone::copy_offline`) into a partition of its own
//! (`volume::snapshot`) on the source's LUN. Nodes never stage a snapshot;
//! a volume made from one is a copy of its image with a new identity.
//!
//! A crash leaves a snapshot pending (invisible to ListSnapshots; a retry
//! copies again, DeleteSnapshot removes it). A restore runs like a clone
//! from a source nobody can use: no grace, no users; its copy counts only
//! if the table's writer did not change meanwhile (another controller may
//! have deleted the snapshot and reused its space).

use super::clone::{finish, in_use, writer_of, Prior, Target};
use super::{validate_name, ContentSource, Volumes};
use crate::controller::error::{CreateError, DeleteError, ListError, LunError};
use crate::controller::params::{clip, VolumeParams, KUBERNETES_PREFIX};
use crate::controller::pool::Lun;
use crate::disk::blocking::run_blocking;
use crate::server::inflight::Guard;
use crate::volume::entry::{Content, State};
use crate::volume::id::{snapshot_guid, SnapshotId, VolumeId};
use crate::volume::snapshot::{self, Header, SnapshotEntry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const SNAPSHOTTED: &str = "snapshotted";
/// Reading or writing a few header blocks; generous for a LUN that queues.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// A snapshot as the RPCs report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// The source volume's ID; None when the header was lost.
    pub source: Option<VolumeId>,
    /// When the copy began (seconds, nanoseconds since the epoch).
    pub created: Option<(i64, i32)>,
    /// The usable bytes a volume made from it starts with: the source's.
    pub size: u64,
}

/// What a CreateVolume from a snapshot asks for, checked.
pub(super) struct RestoreRequest<'a> {
    pub name: &'a str,
    pub snapshot_id: &'a str,
    pub content: Content,
    pub required_bytes: i64,
    pub limit_bytes: i64,
    pub params: &'a VolumeParams,
}

impl Volumes {
    /// CreateSnapshot: see the module's comment.
    pub async fn create_snapshot(
        &self,
        name: &str,
        source_id: &str,
        parameters: &HashMap<String, String>,
    ) -> Result<SnapshotInfo, CreateError> {
        validate_name(name).map_err(CreateError::InvalidArgument)?;
        // A snapshot is the source's bytes: nothing to choose. A parameter
        // of a VolumeSnapshotClass is a mistake to report, not to ignore;
        // those Kubernetes adds itself (names) are not.
        let ours = |k: &&String| !k.starts_with(KUBERNETES_PREFIX);
        if let Some(key) = parameters.keys().filter(ours).min() {
            return Err(CreateError::InvalidArgument(format!(
                "CreateSnapshot takes no parameters; got {:?}",
                clip(key)
            )));
        }
        if source_id.is_empty() {
            return Err(CreateError::InvalidArgument(
                "source_volume_id must not be empty".into(),
            ));
        }
        let guid = snapshot_guid(name);
        let guard = self.begin(guid, &format!("snapshot {name}"))?;
        let source = self.find_source(source_id).await?;
        let (lun, src) = (&source.lun, &source.entry);
        let bytes = snapshot::partition_bytes(src);
        let mut resume = None;
        for other in self.all_luns("a snapshot")? {
            let table = other.read_table().await?;
            let Some(p) = table.find_by_guid(&guid) else {
                continue;
            };
            let incompatible = |why: String| CreateError::Incompatible {
                name: name.to_string(),
                why,
            };
            let Some(e) = snapshot::snapshot_entry(p, table.sector_size) else {
                return Err(incompatible(format!(
                    "partition {} of {} with its GUID is not a snapshot",
                    p.number,
                    other.name()
                )));
            };
            if !Arc::ptr_eq(&other, lun) {
                return Err(incompatible(format!(
                    "it is a snapshot on {}, not on the LUN of {source_id}",
                    other.name()
                )));
            }
            if e.state == State::Ready {
                let info = self.snapshot_info(lun, &e, read_header(lun, &e).await?);
                if info.source.map(|s| s.partition) != Some(src.guid) {
                    return Err(incompatible(format!(
                        "it is a snapshot of {}, not of {source_id}",
                        info.source
                            .map_or("an unknown volume".into(), |s| s.to_string())
                    )));
                }
                return Ok(info);
            }
            let same = e.content == src.content
                && e.heartbeat == src.heartbeat
                && (e.content == Content::Block || e.layout == src.layout)
                && e.size == bytes;
            if !same {
                return Err(incompatible(format!(
                    "an interrupted snapshot of that name is of another volume's size or kind; \
                     delete it first ({})",
                    SnapshotId(VolumeId {
                        lun: lun.disk_guid,
                        partition: e.guid
                    })
                )));
            }
            tracing::info!(
                snapshot = name,
                source = source_id,
                "resuming an interrupted snapshot"
            );
            resume = Some(e);
        }
        let _source_claim = self.begin(
            src.guid,
            &format!("{source_id} (the source of snapshot {name})"),
        )?;
        if let Some(users) = self.users(lun, src).await?.filter(|u| !u.is_empty()) {
            return Err(in_use(source_id, users, SNAPSHOTTED));
        }
        let snap = match resume {
            Some(e) => e,
            None => {
                let build = |at| snapshot::pending_partition(at, guid, name, src);
                let (_, p) = self
                    .allocate(&[lun], &src.sizing(), bytes, src.usable_bytes(), &build)
                    .await?;
                snapshot::snapshot_entry(&p, lun.sector_size()).expect("a snapshot partition")
            }
        };
        tracing::info!(
            snapshot = name,
            source = source_id,
            partition = snap.number,
            partition_bytes = bytes,
            "partition allocated for a snapshot; taking the source out of use"
        );
        let image = snap.image();
        let into = Target {
            entry: &image,
            name,
            ready: snap.ready_type(),
            identity: None,
            snapshot: Some(&snap),
            action: SNAPSHOTTED,
            copying: "the snapshot's source",
        };
        let began = self.copy_offline(lun, src, source_id, into, &guard).await?;
        tracing::info!(
            snapshot = name,
            source = source_id,
            partition = snap.number,
            "snapshot ready; source usable again"
        );
        Ok(self.snapshot_info(lun, &snap, Some(Header::new(src.guid, began))))
    }

    fn snapshot_info(&self, lun: &Lun, e: &SnapshotEntry, header: Option<Header>) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId(VolumeId {
                lun: lun.disk_guid,
                partition: e.guid,
            }),
            source: header.as_ref().map(|h| VolumeId {
                lun: lun.disk_guid,
                partition: h.source,
            }),
            created: header.map(|h| (h.created_secs, h.created_nanos)),
            size: e.usable_bytes(),
        }
    }

    /// DeleteSnapshot: the header and the image's signatures are wiped,
    /// then the entry dropped. No node ever uses a snapshot; a restore from
    /// it in this process holds its claim (Aborted meanwhile), one in
    /// another controller finds its copy void (`clone::finish`).
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), DeleteError> {
        if snapshot_id.is_empty() {
            return Err(DeleteError::InvalidArgument(
                "snapshot_id must not be empty".into(),
            ));
        }
        let Some(id) = SnapshotId::parse(snapshot_id) else {
            tracing::info!(
                snapshot_id,
                "not a snapshot ID of this driver; nothing to delete"
            );
            return Ok(());
        };
        let Some(lun) = self.lun_by_guid(&id.0.lun)? else {
            tracing::warn!(
                snapshot_id,
                "its LUN is not in this controller's pool; nothing to delete here"
            );
            return Ok(());
        };
        let guard = self.begin(id.0.partition, snapshot_id)?;
        let table = lun.read_table().await?;
        let Some(p) = table.find_by_guid(&id.0.partition) else {
            return Ok(());
        };
        let Some(e) = snapshot::snapshot_entry(p, table.sector_size) else {
            return Err(DeleteError::InvalidArgument(format!(
                "{snapshot_id} names partition {}, which is not a snapshot",
                p.number
            )));
        };
        let (io, e2) = (lun.io.clone(), e.clone());
        run_blocking(HEADER_TIMEOUT, move || {
            snapshot::clear_header(io.as_ref(), &e2)
        })
        .await
        .map_err(|s| lun.stalled("clearing a snapshot's header", s))?
        .map_err(|err| lun.io_error(err))?;
        self.wipe_and_remove(&lun, &e.image(), &guard).await?;
        tracing::info!(
            snapshot_id,
            partition = e.number,
            bytes = e.size,
            "snapshot deleted"
        );
        Ok(())
    }

    /// One page of ready snapshots, in a stable order (LUN, partition
    /// number), with the same kind of token as ListVolumes; only those of
    /// `snapshot_id` or `source_id` when given (an ID that names nothing of
    /// ours: none).
    pub async fn list_snapshots(
        &self,
        max_entries: i64,
        starting_token: &str,
        snapshot_id: &str,
        source_id: &str,
    ) -> Result<(Vec<SnapshotInfo>, String), ListError> {
        if max_entries < 0 {
            return Err(ListError::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        let start = if starting_token.is_empty() {
            (0, 0)
        } else {
            super::parse_token(starting_token)
                .ok_or_else(|| ListError::BadToken(clip(starting_token)))?
        };
        let limit = match max_entries {
            0 => usize::MAX,
            n => n as usize,
        };
        let only_snapshot = match snapshot_id {
            "" => None,
            id => match SnapshotId::parse(id) {
                Some(id) => Some(id.0),
                None => return Ok((Vec::new(), String::new())),
            },
        };
        let only_source = match source_id {
            "" => None,
            id => match VolumeId::parse(id) {
                Some(id) => Some(id),
                None => return Ok((Vec::new(), String::new())),
            },
        };
        let mut page = Vec::new();
        self.all_luns("listing snapshots")?;
        for (index, lun) in self.open_luns()? {
            let wanted_lun = |id: Option<VolumeId>| id.is_none_or(|id| id.lun == lun.disk_guid);
            if !wanted_lun(only_snapshot) || !wanted_lun(only_source) {
                continue;
            }
            let table = lun.read_table().await?;
            for e in snapshot::snapshots(&table) {
                let key = (index as u32, e.number);
                if e.state != State::Ready
                    || key < start
                    || only_snapshot.is_some_and(|id| id.partition != e.guid)
                {
                    continue;
                }
                let header = read_header(&lun, &e).await?;
                if header.is_none() {
                    tracing::warn!(snapshot = %e.name, lun = %lun.name(), partition = e.number, "a ready snapshot has no readable header; listed without its source");
                }
                let info = self.snapshot_info(&lun, &e, header);
                if only_source.is_some_and(|want| info.source != Some(want)) {
                    continue;
                }
                if page.len() == limit {
                    return Ok((page, format!("{}.{}", key.0, key.1)));
                }
                page.push(info);
            }
        }
        Ok((page, String::new()))
    }

    /// CreateVolume from a snapshot: a copy of its image on its LUN, with
    /// the new volume's identity, grown to the size asked for.
    pub(super) async fn create_from_snapshot(
        &self,
        req: RestoreRequest<'_>,
        guard: &Arc<Guard>,
    ) -> Result<super::VolumeInfo, CreateError> {
        let name = req.name;
        let not_found = || CreateError::SnapshotNotFound(clip(req.snapshot_id));
        let id = SnapshotId::parse(req.snapshot_id).ok_or_else(not_found)?;
        let lun = self.lun_by_guid(&id.0.lun)?.ok_or_else(not_found)?;
        let snap = {
            let table = lun.read_table().await?;
            table
                .find_by_guid(&id.0.partition)
                .and_then(|p| snapshot::snapshot_entry(p, table.sector_size))
                .filter(|e| e.state == State::Ready)
                .ok_or_else(not_found)?
        };
        if snap.content != req.content {
            return Err(CreateError::InvalidArgument(format!(
                "snapshot {} is of a {} volume; this request asks for {}",
                req.snapshot_id, snap.content, req.content
            )));
        }
        if let Some(want) = &req.params.lun {
            if !lun.matches(want) {
                return Err(CreateError::InvalidArgument(format!(
                    "a volume made from a snapshot lives on the snapshot's LUN {}; parameter \
                     lun is {want:?}",
                    lun.name()
                )));
            }
        }
        // Held to the end: a DeleteSnapshot here is Aborted meanwhile.
        let _snapshot_claim = self.begin(
            snap.guid,
            &format!("{} (the source of volume {name})", req.snapshot_id),
        )?;
        let image = snap.image();
        let partition_bytes =
            super::clone::clone_bytes(&image, req.required_bytes, req.limit_bytes)?;
        let source = || ContentSource::Snapshot(req.snapshot_id.to_string());
        let prior = self
            .prior_copy(&lun, name, &image, partition_bytes, req.snapshot_id)
            .await?;
        let target = match prior {
            Prior::Done(e) => return Ok(self.copy_info(&lun, &e, name, source())),
            Prior::Resume(e) => e,
            Prior::Fresh => {
                let (_, e) = self
                    .allocate_volume(
                        &[&lun],
                        name,
                        &image.sizing(),
                        partition_bytes,
                        image.sizing().usable_bytes(partition_bytes),
                        image.heartbeat,
                    )
                    .await?;
                e
            }
        };
        let undo = |err: CreateError| async {
            if let Err(e) = self.wipe_and_remove(&lun, &target, guard).await {
                tracing::error!(volume = name, error = %e, "could not remove the pending partition; a retry or DeleteVolume will");
            }
            err
        };
        tracing::info!(
            volume = name,
            snapshot = req.snapshot_id,
            partition = target.number,
            partition_bytes,
            "partition allocated; copying the snapshot into it"
        );
        let marked = match writer_of(&lun.read_table().await?) {
            Some(m) => m,
            None => {
                let e = LunError::NotReady("the table carries no writer stamp".into());
                return Err(undo(e.into()).await);
            }
        };
        let into = Target::volume(
            &target,
            name,
            "restored",
            "the snapshot into its new volume",
        );
        if let Err(e) = self.copy(&lun, &image, &into, guard).await {
            tracing::error!(volume = name, error = %e, "restoring the snapshot failed; removing the partition");
            return Err(undo(e.into()).await);
        }
        if let Err(e) = finish(&lun, marked, &[(&target, into.ready)]).await {
            tracing::error!(volume = name, error = %e, "restore not finished; removing the partition");
            return Err(undo(e).await);
        }
        tracing::info!(
            volume = name,
            snapshot = req.snapshot_id,
            partition = target.number,
            "volume made from the snapshot is ready"
        );
        Ok(self.copy_info(&lun, &target, name, source()))
    }
}

async fn read_header(lun: &Lun, e: &SnapshotEntry) -> Result<Option<Header>, LunError> {
    let (io, e2) = (lun.io.clone(), e.clone());
    run_blocking(HEADER_TIMEOUT, move || {
        snapshot::read_header(io.as_ref(), &e2)
    })
    .await
    .map_err(|s| lun.stalled("reading a snapshot's header", s))?
    .map_err(|err| lun.io_error(err))
}
