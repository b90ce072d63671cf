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
use super::{entry_mut, label, set_state, Users, Volumes};
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
use std::sync::Arc;

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

/// The source as found, on its LUN.
struct Source {
    lun: Arc<Lun>,
    entry: VolumeEntry,
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
        let guid = partition_guid(name);
        // A volume of this name elsewhere is another volume: one GUID, one
        // partition, across the pool.
        for other in self.all_luns("a clone")? {
            if !Arc::ptr_eq(&other, lun) && other.read_table().await?.find_by_guid(&guid).is_some()
            {
                return Err(CreateError::Incompatible {
                    name: name.to_string(),
                    why: format!(
                        "it lives on {}, and a clone of {} would live on its source's LUN {}",
                        other.name(),
                        req.source_id,
                        lun.name()
                    ),
                });
            }
        }
        let table = lun.read_table().await?;
        let existing = table.find_by_guid(&guid).and_then(|p| volume_in(&table, p));
        let target = match existing {
            Some(e) if e.state == State::Deleting => {
                return Err(CreateError::BeingDeleted(name.to_string()))
            }
            Some(e) => {
                let same = e.content == src.content
                    && (e.content == Content::Block || e.layout == src.layout)
                    && e.heartbeat == src.heartbeat
                    && e.size == partition_bytes;
                if !same {
                    return Err(CreateError::Incompatible {
                        name: name.to_string(),
                        why: format!(
                            "it is a {} volume of {} partition bytes; a clone of {} would be a {} \
                             volume of {partition_bytes}",
                            e.content, e.size, req.source_id, src.content
                        ),
                    });
                }
                if e.state.is_live() {
                    return Ok(self.clone_info(lun, &e, name, req.source_id));
                }
                tracing::info!(
                    volume = name,
                    source = req.source_id,
                    "resuming an interrupted clone"
                );
                Some(e)
            }
            None => None,
        };
        let _source_claim = self.begin(
            src.guid,
            &format!("{} (the source of clone {name})", req.source_id),
        )?;
        if let Some(users) = self.users(lun, src).await?.filter(|u| !u.is_empty()) {
            return Err(in_use(req.source_id, users));
        }
        let target = match target {
            Some(e) => e,
            None => {
                let (_, e) = self
                    .allocate(
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
        let undo = |err: CreateError| async {
            if let Err(e) = set_state(lun, src, State::Ready).await {
                tracing::error!(volume = %src.name, error = %e, "could not put the source back to ready; the LUN's writer does");
            }
            if let Err(e) = self.wipe_and_remove(lun, &target, guard).await {
                tracing::error!(volume = name, error = %e, "could not remove the clone's pending partition; a retry or DeleteVolume will");
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
                return Err(undo(in_use(req.source_id, users)).await)
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(undo(CreateError::InvalidArgument(format!(
                    "source volume {} holds nothing to copy (no filesystem or block header)",
                    req.source_id
                )))
                .await)
            }
            Err(e) => return Err(undo(e.into()).await),
        }
        if let Err(e) = self.copy(lun, src, &target, name, guard).await {
            tracing::error!(volume = name, source = req.source_id, error = %e, "clone failed; removing its partition");
            return Err(undo(e.into()).await);
        }
        if let Err(e) = finish(lun, src, &target, marked).await {
            tracing::error!(volume = name, source = req.source_id, error = %e, "clone not finished; removing its partition");
            return Err(undo(e).await);
        }
        tracing::info!(
            volume = name,
            source = req.source_id,
            partition = target.number,
            "clone ready; source usable again"
        );
        Ok(self.clone_info(lun, &target, name, req.source_id))
    }

    fn clone_info(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
        name: &str,
        source: &str,
    ) -> super::VolumeInfo {
        let mut info = self.info(lun, e, Some(name));
        info.source = Some(source.to_string());
        info
    }

    async fn find_source(&self, source_id: &str) -> Result<Source, CreateError> {
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

    /// Copies `src` into the pending `target` and makes it a volume of its
    /// own, on a task holding the clone's claim (a caller that gives up
    /// leaves it running; retries are told it is in progress).
    async fn copy(
        &self,
        lun: &Arc<Lun>,
        src: &VolumeEntry,
        target: &VolumeEntry,
        name: &str,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
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
                    copy_ranges(io, &from, &to, &ranges, &volume)
                }
                Content::Block => {
                    // The header first: no marks of an earlier volume.
                    io.zero_out(t.offset, BLOCK_HEADER_BYTES)?;
                    let (from, to) = (s.device_extents(), t.device_extents());
                    copy_ranges(io, &from, &to, &ranges, &volume)?;
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
            let id = Identity {
                uuid: filesystem_uuid(name),
                label: label(name),
            };
            self.images.restamp(lun, target, &id).await?;
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
fn clone_bytes(src: &VolumeEntry, required: i64, limit: i64) -> Result<u64, CreateError> {
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

fn in_use(source: &str, users: Users) -> CreateError {
    CreateError::SourceInUse {
        volume: source.to_string(),
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
fn writer_of(table: &Gpt) -> Option<(u32, u32)> {
    let stamp = Stamp::parse(&table.partition(HEARTBEAT_NUMBER)?.name)?;
    Some((stamp.writer, stamp.generation))
}

/// Step 5: the clone Ready and the source Ready again, in one table write,
/// if the table's writer is still who wrote the source Cloning.
async fn finish(
    lun: &Lun,
    src: &VolumeEntry,
    target: &VolumeEntry,
    marked: (u32, u32),
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
    for e in [src, target] {
        entry_mut(&mut table, e)?.type_guid = e.type_in(State::Ready);
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
) -> std::io::Result<()> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let mut progress = Progress::new(volume, "copying the clone's source", total);
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
            io.write_at(dst, &buf[..n])?;
            at += n as u64;
            progress.add(n as u64);
        }
    }
    io.sync()?;
    progress.finish("copied the clone's source");
    Ok(())
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
        copy_ranges(&io, &from, &to, &[(0, 3 * MIB)], "t").unwrap();
        let mut back = vec![0u8; 3 * MIB as usize];
        io.read_at(40 * MIB, &mut back).unwrap();
        assert!(back == data);
        // A range past the source's end is an error, not a short copy.
        assert!(copy_ranges(&io, &from, &to, &[(2 * MIB, 2 * MIB)], "t").is_err());
    }
}
