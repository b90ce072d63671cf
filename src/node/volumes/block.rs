//! Raw block volumes on a node (volumeMode: Block). Nothing is mounted:
//! stage sets up the volume's device-mapper map (its extents less the
//! header) and writes this node's holder mark in the header; publish binds
//! the map's device node onto the target file; unstage removes the map
//! (refused while anything holds it open: `device::release_unused`) and
//! then the mark.
//!
//! The mark is what DeleteVolume reads (`controller::volumes::delete`).
//! Stage writes it, durably, and only then looks at the entry again: if
//! that look still finds the entry Ready, a delete's Deleting write comes
//! after the mark, so the delete's look at the marks that follows it sees
//! this node and refuses; if it finds Deleting (or nothing), the stage
//! backs out. No timing is assumed.

use super::{asked_content, blocking, bounded, io, taken, NodeVolumes, VolumeStats, READ_WAIT};
use crate::csi::{volume_capability, VolumeCapability};
use crate::node::device::Located;
use crate::node::error::NodeError;
use crate::node::mounts::is_device_bind;
use crate::node::records::StageRecord;
use crate::node::request::{self, BadRequest};
use crate::node::volumes::{PublishRequest, StageRequest};
use crate::volume::entry::{Content, State};
use crate::volume::id::VolumeId;
use std::path::{Path, PathBuf};

/// A block capability with a known access mode.
fn block_capability(cap: Option<&VolumeCapability>) -> Result<(), NodeError> {
    let cap = cap.ok_or(BadRequest::NoCapability)?;
    if let Some(mode) = &cap.access_mode {
        if volume_capability::access_mode::Mode::try_from(mode.mode).is_err() {
            return Err(BadRequest::AccessMode(mode.mode).into());
        }
    }
    match asked_content(Some(cap)) {
        Some(Content::Block) => Ok(()),
        Some(asked) => Err(NodeError::WrongContent {
            volume: Content::Block,
            asked,
        }),
        None => Err(BadRequest::NoCapability.into()),
    }
}

impl NodeVolumes {
    pub(super) async fn stage_block(
        &self,
        id: VolumeId,
        staging: PathBuf,
        r: StageRequest<'_>,
    ) -> Result<(), NodeError> {
        let content = request::context_content(r.context)?;
        let asked = asked_content(r.capability).ok_or(BadRequest::NoCapability)?;
        if asked != Content::Block {
            // A block volume asked for as a filesystem.
            return Err(NodeError::WrongContent {
                volume: content,
                asked,
            });
        }
        block_capability(r.capability)?;
        if content != Content::Block {
            return Err(NodeError::WrongContent {
                volume: content,
                asked: Content::Block,
            });
        }
        let cluster = request::block_context(r.context)?;
        if cluster != self.cfg.cluster_name {
            return Err(NodeError::WrongCluster {
                volume: cluster,
                node: self.cfg.cluster_name.clone(),
            });
        }
        self.ensure_ready()?;
        let _busy = self.begin(&id)?;
        if let Some(record) = self.record(id.partition).await? {
            if !record.block {
                return Err(NodeError::WrongContent {
                    volume: Content::Ocfs2,
                    asked: Content::Block,
                });
            }
            if record.staging_path != staging {
                return Err(NodeError::StagedElsewhere(record.staging_path));
            }
            // A retry, or a restarted plugin: the map and the mark again
            // (both are idempotent).
            let located = self.locate(id).await?;
            return self.set_mark(&located).await;
        }
        let located = self.locate(id).await?;
        if located.entry.content != Content::Block {
            self.release_map(id).await;
            return Err(NodeError::WrongContent {
                volume: located.entry.content,
                asked: Content::Block,
            });
        }
        match std::fs::create_dir(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                self.release_map(id).await;
                return Err(NodeError::io(format!("creating {}", staging.display()), e));
            }
            _ => {}
        }
        let record = StageRecord {
            volume_id: id.to_string(),
            partition_guid: id.partition,
            lun: located.lun.clone(),
            partition_number: located.entry.number,
            device: located.device.clone(),
            staging_path: staging.clone(),
            fs_uuid: uuid::Uuid::nil(),
            heartbeat: String::new(),
            mount_options: Vec::new(),
            block: true,
            head_offset: located.entry.offset,
        };
        // Recorded before the mark: a crash right after it still leaves
        // what Unstage (or the next start's sweep) needs to clear it.
        self.put_record(record).await?;
        let marked = self.set_mark(&located).await;
        let checked = match marked {
            Ok(()) => self.still_ours(id, &located).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            tracing::warn!(volume = %id, error = %e, "not staging the raw block volume; backing out");
            let cleared = self.clear_mark(&located.lun, located.entry.offset).await;
            self.release_map(id).await;
            // Without its mark cleared the record must stay, for Unstage.
            if cleared.is_ok() {
                let _ = self.remove_record(id.partition).await;
            }
            return Err(e);
        }
        tracing::info!(
            volume = %id,
            device = %located.device.display(),
            bytes = located.kernel_bytes,
            staging = %staging.display(),
            "raw block volume staged"
        );
        Ok(())
    }

    pub(super) async fn publish_block(
        &self,
        id: VolumeId,
        staging: PathBuf,
        target: PathBuf,
        r: PublishRequest<'_>,
    ) -> Result<(), NodeError> {
        block_capability(r.capability)?;
        let _busy = self.begin(&id)?;
        let record = self.staged(id, &staging, Content::Block).await?;
        if let Some(m) = self.mount_at(&target).await? {
            if is_device_bind(&m, &record.device) && m.read_only() == r.read_only {
                return Ok(());
            }
            return Err(taken(target, &m));
        }
        if target.is_dir() {
            return Err(NodeError::PathInUse {
                path: target,
                what: "a directory; a raw block volume is published on a file".into(),
            });
        }
        let t = target.clone();
        blocking("creating the target file", move || {
            if let Some(parent) = t.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&t)
                .map(drop)
        })
        .await?
        .map_err(io(format!("creating {}", target.display())))?;
        let (mounter, d, t, ro) = (
            self.mounter.clone(),
            record.device.clone(),
            target.clone(),
            r.read_only,
        );
        blocking("binding the device", move || {
            mounter.bind_device(&d, &t, ro)
        })
        .await?
        .map_err(io(format!(
            "binding {} on {}",
            record.device.display(),
            target.display()
        )))?;
        tracing::info!(device = %record.device.display(), target = %target.display(), read_only = r.read_only, "raw block volume published");
        Ok(())
    }

    pub(super) async fn unstage_block(
        &self,
        id: VolumeId,
        staging: &Path,
        record: &StageRecord,
    ) -> Result<(), NodeError> {
        if record.staging_path != staging {
            return Err(NodeError::NotStaged(format!(
                " at {} (it is staged at {})",
                staging.display(),
                record.staging_path.display()
            )));
        }
        let published: Vec<PathBuf> = self
            .mounts()
            .await?
            .into_iter()
            .filter(|m| is_device_bind(m, &record.device))
            .map(|m| m.mount_point)
            .collect();
        if !published.is_empty() {
            return Err(NodeError::Busy {
                path: record.device.clone(),
                why: format!("still published at {published:?}"),
            });
        }
        // Only a map nothing holds open (a pod, kubelet's loop device) is
        // removed; otherwise the mark stays, and so does the volume.
        let locator = self.locator.clone();
        blocking("removing the volume's map", move || {
            locator.release_unused(&id)
        })
        .await?
        .map_err(|why| NodeError::Busy {
            path: record.device.clone(),
            why: format!("its map cannot be removed: {why}"),
        })?;
        self.clear_mark(&record.lun, record.head_offset).await?;
        self.remove_record(id.partition).await?;
        tracing::info!(volume = %id, staging = %staging.display(), "raw block volume unstaged");
        Ok(())
    }

    /// Size and health of a staged raw block volume at `path` (its staging
    /// path or where it is published).
    pub(super) async fn block_stats(
        &self,
        path: &Path,
        record: &StageRecord,
    ) -> Result<VolumeStats, NodeError> {
        if !path.exists() {
            return Err(NodeError::NotMounted(path.to_path_buf()));
        }
        if path != record.staging_path {
            let here = self.mount_at(path).await?;
            if !here.is_some_and(|m| is_device_bind(&m, &record.device)) {
                return Err(NodeError::NotHere(path.to_path_buf()));
            }
        }
        let (locator, lun, number) = (
            self.locator.clone(),
            record.lun.clone(),
            record.partition_number,
        );
        let (bytes, abnormal) = match bounded("reading the map", READ_WAIT, move || {
            locator.partition_bytes(&lun, number)
        })
        .await?
        {
            Ok(Some(bytes)) => (bytes, None),
            Ok(None) => (
                0,
                Some(format!("the device {} vanished", record.device.display())),
            ),
            Err(e) => (
                0,
                Some(format!(
                    "the LUN {} cannot be read: {e}",
                    record.lun.display()
                )),
            ),
        };
        Ok(VolumeStats {
            total_bytes: bytes,
            available_bytes: 0,
            used_bytes: 0,
            total_inodes: 0,
            free_inodes: 0,
            used_inodes: 0,
            abnormal,
            block: true,
        })
    }

    /// Grows this node's map to the (already grown) table; the device a
    /// writer has open only grows. Every node does this for itself, in any
    /// order.
    pub(super) async fn expand_block(
        &self,
        id: VolumeId,
        record: StageRecord,
        capability: Option<&VolumeCapability>,
        required: u64,
    ) -> Result<u64, NodeError> {
        if capability.is_some() {
            block_capability(capability)?;
        }
        self.ensure_ready()?;
        let _busy = self.begin(&id)?;
        let (locator, lun, number) = (
            self.locator.clone(),
            record.lun.clone(),
            record.partition_number,
        );
        let bytes = blocking("growing the volume's map", move || {
            locator.resync(&lun, number)
        })
        .await?
        .map_err(|why| NodeError::io("growing the volume's map", std::io::Error::other(why)))?;
        if required > bytes {
            return Err(NodeError::OutOfRange {
                required,
                partition: bytes,
            });
        }
        tracing::info!(volume = %id, device = %record.device.display(), bytes, "raw block volume's device grown");
        Ok(bytes)
    }

    /// After a restart: the map and the mark of a block volume staged here.
    pub(super) async fn adopt_block(&self, record: &StageRecord) -> bool {
        let Some(id) = VolumeId::parse(&record.volume_id) else {
            return false;
        };
        let adopted = match self.locate(id).await {
            Ok(located) => self.set_mark(&located).await,
            Err(e) => Err(e),
        };
        match adopted {
            Ok(()) => {
                tracing::info!(volume = %record.volume_id, "staged raw block volume adopted");
                true
            }
            Err(e) => {
                tracing::warn!(volume = %record.volume_id, error = %e, "staged raw block volume not found again; waiting for Unstage");
                false
            }
        }
    }

    /// Clears this node number's marks in block volumes it has no stage
    /// record for: left by a crash between mark and record removal, or by
    /// an earlier holder of this number (no longer alive: numbers are
    /// unique among live nodes). Failures are logged; the next start tries
    /// again.
    pub(super) async fn clear_stale_marks(&self, staged: &[uuid::Uuid]) {
        for lun in self.cfg.luns.clone() {
            let (locator, l) = (self.locator.clone(), lun.clone());
            let volumes = match blocking("reading the table", move || locator.block_volumes(&l))
                .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(why)) => {
                    tracing::warn!(lun = %lun.display(), why, "could not look for stale holder marks");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(lun = %lun.display(), error = %e, "could not look for stale holder marks");
                    continue;
                }
            };
            for e in volumes
                .iter()
                .filter(|e| e.state != State::Pending && !staged.contains(&e.guid))
            {
                let (marks, l, head, guid) = (self.marks.clone(), lun.clone(), e.offset, e.guid);
                let held =
                    blocking("reading holder marks", move || marks.read(&l, head, &guid)).await;
                let mine = matches!(&held, Ok(Ok(Some(h))) if h.iter().any(|h| h.number == self.cfg.node_number));
                if !mine {
                    continue;
                }
                match self.clear_mark(&lun, e.offset).await {
                    Ok(()) => {
                        tracing::info!(volume = %e.guid, name = %e.name, "cleared a stale holder mark of this node number")
                    }
                    Err(err) => {
                        tracing::warn!(volume = %e.guid, error = %err, "could not clear a stale holder mark")
                    }
                }
            }
        }
    }

    async fn set_mark(&self, located: &Located) -> Result<(), NodeError> {
        let (marks, lun, head, guid) = (
            self.marks.clone(),
            located.lun.clone(),
            located.entry.offset,
            located.entry.guid,
        );
        let (number, node) = (self.cfg.node_number, self.cfg.node_id.clone());
        blocking("writing the holder mark", move || {
            marks.set(&lun, head, &guid, number, &node)
        })
        .await?
        .map_err(io("writing this node's holder mark"))
    }

    async fn clear_mark(&self, lun: &Path, head: u64) -> Result<(), NodeError> {
        let (marks, lun, number) = (self.marks.clone(), lun.to_path_buf(), self.cfg.node_number);
        blocking("clearing the holder mark", move || {
            marks.clear(&lun, head, number)
        })
        .await?
        .map_err(io("clearing this node's holder mark"))
    }

    /// Removes the map set up for a stage that does not go on; a failure
    /// only leaves a map that holds nothing (logged).
    async fn release_map(&self, id: VolumeId) {
        let locator = self.locator.clone();
        match blocking("removing the volume's map", move || locator.release(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::warn!(volume = %id, why, "could not remove the volume's map"),
            Err(e) => tracing::warn!(volume = %id, error = %e, "could not remove the volume's map"),
        }
    }
}
