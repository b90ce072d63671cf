//! Clones: CreateVolume with a volume as its content source.
//!
//! A clone is a copy of its source's bytes, so the source must not change
//! while it is read, and OCFS2 cannot be frozen. The clone therefore takes
//! the source out of use the way DeleteVolume does (`Volumes::delete`), and
//! refuses (FailedPrecondition) when a node has it:
//!
//! 1. a node mounts the source (slot map) or holds it (block marks):
//!    refuse, nothing changed. An empty slot map also means clean
//!    journals: a node that crashed with it mounted keeps its slot until
//!    another node recovers it, so what the bitmap says used is all there
//!    is;
//! 2. reserve the clone's partition (pending), then write the source
//!    Cloning: nodes refuse to stage it from then on, and a stage that read
//!    it Ready before backs out when it looks again after mounting;
//! 3. wait the delete grace, look again: a node there refuses the clone,
//!    the source goes back to Ready and the pending partition is wiped;
//! 4. copy: a filesystem's used clusters only (its global bitmap), or a
//!    block volume's whole device and zeros after it; give a filesystem the
//!    clone's UUID and label, and grow it to the clone's size (offline: the
//!    clone is pending, no node can mount it);
//! 5. one table write marks the clone Ready and the source Ready again,
//!    only if no other writer generation wrote the table since step 2 (a
//!    controller that took over may have put the source back to Ready, and
//!    nodes may have written it since: such a copy is void).
//!
//! A crash leaves the clone pending (a retry copies again from step 1, a
//! DeleteVolume wipes it) and the source Cloning until `end_stale_clones`
//! of the LUN's writer puts it back.

use super::progress::Progress;
use super::{entry_mut, label, set_state, ContentSource, Users, Volumes};
use crate::controller::error::{CreateError, LunError};
use crate::controller::params::VolumeParams;
use crate::controller::pool::Lun;
use crate::controller::writer::Stamp;
use crate::disk::gpt::Gpt;
use crate::disk::lun_io::{AlignedBuf, BlockIo};
use crate::ocfs2::layout::MIB;
use crate::ocfs2::restamp::Identity;
use crate::server::inflight::Guard;
use crate::volume::block_header;
use crate::volume::entry::{
    volume_in, Content, State, VolumeEntry, BLOCK_HEADER_BYTES, HEARTBEAT_NUMBER,
};
use crate::volume::id::{filesystem_uuid, partition_guid, VolumeId};
use crate::volume::snapshot::{self, SnapshotEntry};
use std::sync::Arc;
use std::time::SystemTime;

/// Copies go in steps this big: large direct I/O, and progress to log.
const STEP: u64 = 8 << 20;

/// What a clone request asks for, checked.
pub(super) struct CloneRequest<'a> {
    pub name: &'a str,
    pub source_id: &'a str,
    pub content: Content,
    pub required_bytes: i64,
    pub limit_bytes: i64,
    pub params: &'a VolumeParams,
}

/// Where an offline copy goes.
pub(super) struct Target<'a> {
    /// The pending entry to copy into (a snapshot's image).
    pub entry: &'a VolumeEntry,
    /// Its name, for logs.
    pub name: &'a str,
    /// Its entry's type once ready.
    pub ready: uuid::Uuid,
    /// A filesystem copy's new identity; None keeps the source's.
    pub identity: Option<Identity>,
    /// The snapshot whose header to write after the copy.
    pub snapshot: Option<&'a SnapshotEntry>,
    /// What is done to the source, for refusals: [`CLONED`] or
    /// "snapshotted".
    pub action: &'static str,
    /// What the copy's log lines call it ("the clone's source").
    pub copying: &'static str,
}

pub(super) const CLONED: &str = "cloned";

impl<'a> Target<'a> {
    /// A new volume called `name`: ready as a volume, with its own
    /// filesystem identity.
    pub fn volume(
        entry: &'a VolumeEntry,
        name: &'a str,
        action: &'static str,
        copying: &'static str,
    ) -> Self {
        Target {
            entry,
            name,
            ready: entry.type_in(State::Ready),
            identity: Some(Identity {
                uuid: filesystem_uuid(name),
                label: label(name),
            }),
            snapshot: None,
            action,
            copying,
        }
    }
}

/// What an earlier try of a copy left (`Volumes::prior_copy`).
pub(super) enum Prior {
    Fresh,
    Resume(VolumeEntry),
    Done(VolumeEntry),
}

fn volume_source(id: &str) -> ContentSource {
    ContentSource::Volume(id.to_string())
}

/// The source as found, on its LUN.
pub(super) struct Source {
    pub lun: Arc<Lun>,
    pub entry: VolumeEntry,
}

impl Volumes {
    /// CreateVolume from a volume: see the module's comment.
    pub(super) async fn create_clone(
        &self,
        req: CloneRequest<'_>,
        guard: &Arc<Guard>,
    ) -> Result<super::VolumeInfo, CreateError> {
        let name = req.name;
        let source = self.find_source(req.source_id).await?;
        let src = &source.entry;
        if src.content != req.content {
            return Err(CreateError::InvalidArgument(format!(
                "source volume {} is a {} volume; this request asks for {}",
                req.source_id, src.content, req.content
            )));
        }
        if let Some(want) = &req.params.lun {
            if !source.lun.matches(want) {
                return Err(CreateError::InvalidArgument(format!(
                    "a clone lives on its source's LUN {}; parameter lun is {want:?}",
                    source.lun.name()
                )));
            }
        }
        let partition_bytes = clone_bytes(src, req.required_bytes, req.limit_bytes)?;
        let lun = &source.lun;
        let target = match self
            .prior_copy(lun, name, src, partition_bytes, req.source_id)
            .await?
        {
            Prior::Done(e) => {
                return Ok(self.copy_info(lun, &e, name, volume_source(req.source_id)))
            }
            Prior::Resume(e) => Some(e),
            Prior::Fresh => None,
        };
        let _source_claim = self.begin(
            src.guid,
            &format!("{} (the source of clone {name})", req.source_id),
        )?;
        if let Some(users) = self.users(lun, src).await?.filter(|u| !u.is_empty()) {
            return Err(in_use(req.source_id, users, CLONED));
        }
        let target = match target {
            Some(e) => e,
            None => {
                let (_, e) = self
                    .allocate_volume(
                        &[lun],
                        name,
                        &src.sizing(),
                        partition_bytes,
                        src.sizing().usable_bytes(partition_bytes),
                        src.heartbeat,
                    )
                    .await?;
                e
            }
        };
        tracing::info!(
            volume = name,
            source = req.source_id,
            partition = target.number,
            partition_bytes,
            "partition allocated for a clone; taking the source out of use"
        );
        let into = Target::volume(&target, name, CLONED, "the clone's source");
        self.copy_offline(lun, src, req.source_id, into, guard)
            .await?;
        tracing::info!(
            volume = name,
            source = req.source_id,
            partition = target.number,
            "clone ready; source usable again"
        );
        Ok(self.copy_info(lun, &target, name, volume_source(req.source_id)))
    }

    /// Steps 2-5 of the module's comment for a source whose users were
    /// checked and a pending `into` that was reserved: takes the source out
    /// of use, copies it, and makes both ready in one table write. On any
    /// failure the source is put back and `into` wiped. Returns when the
    /// copy began (after the source was found unused the second time).
    pub(super) async fn copy_offline(
        &self,
        lun: &Arc<Lun>,
        src: &VolumeEntry,
        source_id: &str,
        into: Target<'_>,
        guard: &Arc<Guard>,
    ) -> Result<SystemTime, CreateError> {
        let target = into.entry;
        let name = into.name;
        let undo = |err: CreateError| async {
            if let Err(e) = set_state(lun, src, State::Ready).await {
                tracing::error!(volume = %src.name, error = %e, "could not put the source back to ready; the LUN's writer does");
            }
            if let Err(e) = self.wipe_and_remove(lun, target, guard).await {
                tracing::error!(target = name, error = %e, "could not remove the copy's pending partition; a retry or a delete will");
            }
            err
        };
        if let Err(e) = set_state(lun, src, State::Cloning).await {
            return Err(undo(e.into()).await);
        }
        let marked = match writer_of(&lun.read_table().await?) {
            Some(s) => s,
            None => {
                return Err(undo(
                    LunError::NotReady("the table carries no writer stamp".into()).into(),
                )
                .await)
            }
        };
        let grace = self
            .delete_grace
            .unwrap_or(super::delete_grace(src.heartbeat));
        tokio::time::sleep(grace).await;
        match self.users(lun, src).await {
            Ok(Some(users)) if !users.is_empty() => {
                return Err(undo(in_use(source_id, users, into.action)).await)
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(undo(CreateError::InvalidArgument(format!(
                "source volume {source_id} holds nothing to copy (no filesystem or block header)"
            )))
                .await)
            }
            Err(e) => return Err(undo(e.into()).await),
        }
        let began = SystemTime::now();
        if let Err(e) = self.copy(lun, src, &into, guard).await {
            tracing::error!(target = name, source = source_id, error = %e, "copy failed; removing its partition");
            return Err(undo(e.into()).await);
        }
        if let Some(snapshot) = into.snapshot {
            if let Err(e) = write_snapshot_header(lun, snapshot, src, began).await {
                return Err(undo(e.into()).await);
            }
        }
        let ready = [(src, src.type_in(State::Ready)), (target, into.ready)];
        if let Err(e) = finish(lun, marked, &ready).await {
            tracing::error!(target = name, source = source_id, error = %e, "copy not finished; removing its partition");
            return Err(undo(e).await);
        }
        Ok(began)
    }

    pub(super) fn copy_info(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
        name: &str,
        source: ContentSource,
    ) -> super::VolumeInfo {
        let mut info = self.info(lun, e, Some(name));
        info.source = Some(source);
        info
    }

    /// What an earlier try of a copy named `name` of `src` (a volume, or a
    /// snapshot's image) into `partition_bytes` on `lun` left: nothing, a
    /// pending copy to do again, or the copy. Anything else of that name is
    /// another volume: AlreadyExists.
    pub(super) async fn prior_copy(
        &self,
        lun: &Arc<Lun>,
        name: &str,
        src: &VolumeEntry,
        partition_bytes: u64,
        source_id: &str,
    ) -> Result<Prior, CreateError> {
        let guid = partition_guid(name);
        // A volume of this name elsewhere is another volume: one GUID, one
        // partition, across the pool.
        for other in self.all_luns("a copy")? {
            if !Arc::ptr_eq(&other, lun) && other.read_table().await?.find_by_guid(&guid).is_some()
            {
                return Err(CreateError::Incompatible {
                    name: name.to_string(),
                    why: format!(
                        "it lives on {}, and a copy of {source_id} would live on its source's \
                         LUN {}",
                        other.name(),
                        lun.name()
                    ),
                });
            }
        }
        let table = lun.read_table().await?;
        let Some(p) = table.find_by_guid(&guid) else {
            return Ok(Prior::Fresh);
        };
        let Some(e) = volume_in(&table, p) else {
            return Err(CreateError::Incompatible {
                name: name.to_string(),
                why: format!("partition {} with its GUID is not a volume", p.number),
            });
        };
        if e.state == State::Deleting {
            return Err(CreateError::BeingDeleted(name.to_string()));
        }
        let same = e.content == src.content
            && (e.content == Content::Block || e.layout == src.layout)
            && e.heartbeat == src.heartbeat
            && e.size == partition_bytes;
        if !same {
            return Err(CreateError::Incompatible {
                name: name.to_string(),
                why: format!(
                    "it is a {} volume of {} partition bytes; a copy of {source_id} would be a \
                     {} volume of {partition_bytes}",
                    e.content, e.size, src.content
                ),
            });
        }
        if e.state.is_live() {
            return Ok(Prior::Done(e));
        }
        tracing::info!(
            volume = name,
            source = source_id,
            "resuming an interrupted copy"
        );
        Ok(Prior::Resume(e))
    }

    pub(super) async fn find_source(&self, source_id: &str) -> Result<Source, CreateError> {
        let not_found = || CreateError::SourceNotFound(super::super::params::clip(source_id));
        let id = VolumeId::parse(source_id).ok_or_else(not_found)?;
        let lun = self.lun_by_guid(&id.lun)?.ok_or_else(not_found)?;
        let table = lun.read_table().await?;
        let p = table.find_by_guid(&id.partition).ok_or_else(not_found)?;
        let entry = volume_in(&table, p)
            .filter(|e| e.state.is_live())
            .ok_or_else(not_found)?;
        Ok(Source { lun, entry })
    }

    /// Copies `src` into the pending `into.entry` and gives it its
    /// identity, on a task holding the copy's claim (a caller that gives up
    /// leaves it running; retries are told it is in progress).
    pub(super) async fn copy(
        &self,
        lun: &Arc<Lun>,
        src: &VolumeEntry,
        into: &Target<'_>,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
        let (target, name, copying) = (into.entry, into.name, into.copying);
        let ranges = match src.content {
            Content::Ocfs2 => self.images.used_ranges(lun, src).await?,
            Content::Block => vec![(0, src.device_bytes())],
        };
        let (task_lun, s, t, claim) = (lun.clone(), src.clone(), target.clone(), guard.clone());
        let volume = name.to_string();
        let copied = tokio::task::spawn_blocking(move || {
            let _claim = claim;
            let io = task_lun.io.as_ref();
            match s.content {
                Content::Ocfs2 => {
                    let (from, to) = (extents(&s), extents(&t));
                    copy_ranges(io, &from, &to, &ranges, &volume, copying)
                }
                Content::Block => {
                    // The header first: no marks of an earlier volume.
                    io.zero_out(t.offset, BLOCK_HEADER_BYTES)?;
                    let (from, to) = (s.device_extents(), t.device_extents());
                    copy_ranges(io, &from, &to, &ranges, &volume, copying)?;
                    let tail: Vec<(u64, u64)> = t
                        .device_extents()
                        .into_iter()
                        .scan(0u64, |at, (off, len)| {
                            let start = *at;
                            *at += len;
                            let skip = s.device_bytes().saturating_sub(start).min(len);
                            Some((off + skip, len - skip))
                        })
                        .filter(|r| r.1 > 0)
                        .collect();
                    super::block::zero_ranges(io, &tail, &volume, "clone's space past its source")?;
                    block_header::write_identity(io, t.offset, &t.guid)
                }
            }
        });
        // Awaited to its end, however long: a failure here wipes the clone's
        // partition and frees its space, which a copy still writing into it
        // would then overwrite under the next volume. The create runs
        // detached from its caller, and retries meanwhile are Aborted.
        let copied = copied
            .await
            .map_err(|j| LunError::NotReady(format!("copying into {name} ended early: {j}")))?;
        copied.map_err(|e| lun.io_error(e))?;
        if target.content == Content::Ocfs2 {
            if let Some(id) = &into.identity {
                self.images.restamp(lun, target, id).await?;
            }
            if target.size > src.size {
                self.images.grow(lun, target).await?;
            }
        }
        Ok(())
    }

    /// Puts back to Ready every source this LUN shows Cloning that no
    /// clone of this process copies: a controller (this one before a
    /// restart, or another) stopped in the middle of a clone. Only the
    /// LUN's writer does it; the clone it interrupted finds it void
    /// (`finish`).
    pub async fn end_stale_clones(&self, lun: &Lun) {
        let table = match lun.read_table().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(lun = %lun.name(), error = %e, "could not look for interrupted clones");
                return;
            }
        };
        for p in &table.partitions {
            let Some(e) = volume_in(&table, p).filter(|e| e.state == State::Cloning) else {
                continue;
            };
            let Some(_claim) = self.inflight.try_begin(e.guid) else {
                continue;
            };
            match set_state(lun, &e, State::Ready).await {
                Ok(()) => {
                    tracing::warn!(volume = %e.name, lun = %lun.name(), "a clone of this volume was interrupted; it is usable again")
                }
                Err(err) => {
                    tracing::warn!(volume = %e.name, lun = %lun.name(), error = %err, "could not put an interrupted clone's source back to ready; will retry")
                }
            }
        }
    }
}

/// The clone's partition bytes: the source's, or more when asked bigger
/// (a filesystem is then grown after the copy, `FsImage::grow`).
pub(super) fn clone_bytes(
    src: &VolumeEntry,
    required: i64,
    limit: i64,
) -> Result<u64, CreateError> {
    if required < 0 || limit < 0 {
        return Err(CreateError::InvalidArgument(
            "capacity_range bytes must not be negative".into(),
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    let have = src.usable_bytes();
    if limit > 0 && (limit < have || required > limit) {
        return Err(CreateError::CapacityOutOfRange(format!(
            "the source holds {have} bytes; a clone cannot be smaller than its source \
             (limit_bytes {limit}, required_bytes {required})"
        )));
    }
    if required <= have {
        return Ok(src.size);
    }
    Ok(src
        .sizing()
        .partition_bytes(required.div_ceil(MIB) * MIB)
        .max(src.size))
}

pub(super) fn in_use(source: &str, users: Users, action: &'static str) -> CreateError {
    CreateError::SourceInUse {
        volume: source.to_string(),
        action,
        users: match users {
            Users::Mounted(nodes) => format!("mounted by o2cb node(s) {nodes:?}"),
            Users::Held(h) => format!(
                "staged on {}",
                h.iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Who wrote the table last, less the write count: the same for every
/// write of one writer's holding of the lease.
pub(super) fn writer_of(table: &Gpt) -> Option<(u32, u32)> {
    let stamp = Stamp::parse(&table.partition(HEARTBEAT_NUMBER)?.name)?;
    Some((stamp.writer, stamp.generation))
}

/// Step 5: each entry of `ready` gets its type (the copy Ready, the source
/// Ready again) in one table write, if the table's writer is still the one
/// that was `marked` before the copy.
pub(super) async fn finish(
    lun: &Lun,
    marked: (u32, u32),
    ready: &[(&VolumeEntry, uuid::Uuid)],
) -> Result<(), CreateError> {
    let _locked = lun.lock().await;
    let mut table = lun.read_table().await?;
    if writer_of(&table) != Some(marked) {
        return Err(CreateError::CopyVoided(format!(
            "another controller wrote the partition table of {} during the copy and may have \
             put the source back in use; the copy is void, a retry copies again",
            lun.name()
        )));
    }
    for (e, ty) in ready {
        entry_mut(&mut table, e)?.type_guid = *ty;
    }
    lun.write_table(&table).await?;
    Ok(())
}

/// A volume's extents as (LUN offset, bytes), in volume order.
fn extents(e: &VolumeEntry) -> Vec<(u64, u64)> {
    e.extents.iter().map(|x| (x.offset, x.size)).collect()
}

/// Where byte `at` of a volume laid over `extents` lies on the LUN, and
/// how many bytes follow it in the same extent.
fn lun_at(extents: &[(u64, u64)], at: u64) -> Option<(u64, u64)> {
    let mut start = 0;
    for &(offset, len) in extents {
        if at < start + len {
            return Some((offset + (at - start), start + len - at));
        }
        start += len;
    }
    None
}

/// Copies `ranges` (volume offset, bytes) from the volume over `from` to
/// the same offsets of the volume over `to`, durably, logging progress on
/// long work and the rate at the end. Returns the bytes copied.
fn copy_ranges(
    io: &dyn BlockIo,
    from: &[(u64, u64)],
    to: &[(u64, u64)],
    ranges: &[(u64, u64)],
    volume: &str,
    what: &str,
) -> std::io::Result<()> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let copying = format!("copying {what}");
    let mut progress = Progress::new(volume, &copying, total);
    // Aligned: each step goes to the LUN in one call, no bounce copy.
    let mut aligned = AlignedBuf::new(STEP as usize);
    let buf = aligned.as_mut_slice(STEP as usize);
    let outside = |at: u64| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("volume byte {at} lies outside the volume"),
        )
    };
    for &(first, len) in ranges {
        let mut at = first;
        while at < first + len {
            let (src, src_left) = lun_at(from, at).ok_or_else(|| outside(at))?;
            let (dst, dst_left) = lun_at(to, at).ok_or_else(|| outside(at))?;
            let n = (first + len - at).min(src_left).min(dst_left).min(STEP) as usize;
            io.read_at(src, &mut buf[..n])?;
            // Zeros (a block volume's unwritten space) become a zeroing of
            // the target: an offloaded WRITE ZEROES or a punched hole
            // where the LUN has one, the same bytes either way.
            if crate::disk::signatures::is_zero(&buf[..n]) {
                io.zero_out(dst, n as u64)?;
            } else {
                io.write_at(dst, &buf[..n])?;
            }
            at += n as u64;
            progress.add(n as u64);
        }
    }
    io.sync()?;
    progress.finish(&format!("copied {what}"));
    Ok(())
}

/// Records in the snapshot's header what it is a copy of and when the copy
/// began, durably, before the table marks it ready.
async fn write_snapshot_header(
    lun: &Lun,
    e: &SnapshotEntry,
    src: &VolumeEntry,
    began: SystemTime,
) -> Result<(), LunError> {
    let header = snapshot::Header::new(src.guid, began);
    let (io, e) = (lun.io.clone(), e.clone());
    crate::disk::blocking::run_blocking(std::time::Duration::from_secs(60), move || {
        snapshot::write_header(io.as_ref(), &e, &header)
    })
    .await
    .map_err(|s| lun.stalled("writing a snapshot's header", s))?
    .map_err(|err| lun.io_error(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_offsets_cross_extents() {
        let ex = [(10 * MIB, 2 * MIB), (100 * MIB, 3 * MIB)];
        assert_eq!(lun_at(&ex, 0), Some((10 * MIB, 2 * MIB)));
        assert_eq!(lun_at(&ex, 2 * MIB + 5), Some((100 * MIB + 5, 3 * MIB - 5)));
        assert_eq!(lun_at(&ex, 5 * MIB), None);
    }

    #[test]
    fn copies_map_through_both_volumes_extents() {
        let io = crate::disk::lun_io::MemIo::new(512, 64 * MIB);
        let data: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
        // Source: 1 MiB at 4 MiB, 2 MiB at 20 MiB; target: one 3 MiB extent.
        io.write_at(4 * MIB, &data[..MIB as usize]).unwrap();
        io.write_at(20 * MIB, &data[MIB as usize..]).unwrap();
        let from = [(4 * MIB, MIB), (20 * MIB, 2 * MIB)];
        let to = [(40 * MIB, 3 * MIB)];
        copy_ranges(&io, &from, &to, &[(0, 3 * MIB)], "t", "x").unwrap();
        let mut back = vec![0u8; 3 * MIB as usize];
        io.read_at(40 * MIB, &mut back).unwrap();
        assert!(back == data);
        // A range past the source's end is an error, not a short copy.
        assert!(copy_ranges(&io, &from, &to, &[(2 * MIB, 2 * MIB)], "t", "x").is_err());
    }
}
