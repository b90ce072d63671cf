//! Raw block volumes on the controller: zeroed before anyone sees them
//! (a new volume never shows an earlier one's bytes, invariant 11), and
//! their holders read from the header (`volume::block_header`).
//!
//! Zeroing is BLKZEROOUT on the LUN: the kernel sends the storage WRITE
//! ZEROES where it has it (no data moves) and writes zero pages itself
//! where not; either way the range reads back as zeros. A discard alone
//! would not do: what a discarded range reads back as is the device's
//! choice, and the kernel no longer reports it.

use super::progress::Progress;
use super::{set_state, Volumes, WIPE_TIMEOUT};
use crate::controller::allocate::Growth;
use crate::controller::error::LunError;
use crate::controller::pool::Lun;
use crate::disk::blocking::run_blocking;
use crate::disk::lun_io::BlockIo;
use crate::server::inflight::Guard;
use crate::volume::block_header::{self, Holder};
use crate::volume::entry::{State, VolumeEntry};
use std::sync::Arc;

/// Zeroing goes in steps this big, so its progress can be logged.
const STEP: u64 = 256 << 20;

impl Volumes {
    /// Zeroes a pending raw block volume, writes its header's identity,
    /// then marks it ready. The work runs on its own task holding the
    /// volume's in-flight claim: a CreateVolume whose caller gave up (a
    /// big volume takes minutes) leaves it running, retries meanwhile are
    /// told it is in progress, and the first retry after it finds the
    /// volume ready. A crash leaves the entry pending; a retry zeroes it
    /// again from the start. If zeroing fails the partition is removed.
    pub(super) async fn zero_and_confirm(
        &self,
        lun: &Arc<Lun>,
        e: &VolumeEntry,
        name: &str,
        guard: &Arc<Guard>,
    ) -> Result<(), LunError> {
        let (task_lun, task_e, claim) = (lun.clone(), e.clone(), guard.clone());
        let volume = name.to_string();
        let task = tokio::spawn(async move {
            let _claim = claim;
            let lun = task_lun;
            let (io, e, v) = (lun.io.clone(), task_e.clone(), volume.clone());
            let ranges: Vec<(u64, u64)> = e.extents.iter().map(|x| (x.offset, x.size)).collect();
            tokio::task::spawn_blocking(move || {
                zero_ranges(io.as_ref(), &ranges, &v, "new raw block volume")?;
                block_header::write_identity(io.as_ref(), e.offset, &e.guid)
            })
            .await
            .map_err(|j| LunError::NotReady(format!("zeroing {volume} ended early: {j}")))?
            .map_err(|err| lun.io_error(err))?;
            set_state(&lun, &task_e, State::Ready).await
        });
        let done = match task.await {
            Ok(done) => done,
            Err(j) => Err(LunError::NotReady(format!(
                "making raw block volume {name} ended early: {j}"
            ))),
        };
        if let Err(err) = done {
            tracing::error!(volume = name, error = %err, "zeroing failed; removing the partition again");
            if let Err(undo) = self.wipe_and_remove(lun, e, guard).await {
                tracing::error!(volume = name, error = %undo, "could not remove the pending partition; a retry or DeleteVolume will");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Zeroes the space `growth` adds to `e`, before the table names it.
    pub(super) async fn zero_growth(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
        growth: &Growth,
    ) -> Result<(), LunError> {
        let ss = lun.sector_size();
        let last = *e.extents.last().expect("a volume has its head");
        let mut ranges = Vec::new();
        if growth.in_place_sectors > 0 {
            ranges.push((last.offset + last.size, growth.in_place_sectors * ss));
        }
        ranges.extend(
            growth
                .added
                .iter()
                .map(|&(first, last)| (first * ss, (last - first + 1) * ss)),
        );
        let (io, name) = (lun.io.clone(), e.name.clone());
        // Awaited to its end with the LUN's lock held, however long: a wait
        // that gave up would free the lock while the zeroing still runs,
        // and a create could place a new volume in that very space.
        tokio::task::spawn_blocking(move || {
            zero_ranges(
                io.as_ref(),
                &ranges,
                &name,
                "space a raw block volume grows into",
            )
        })
        .await
        .map_err(|j| {
            LunError::NotReady(format!("zeroing {}'s new space ended early: {j}", e.name))
        })?
        .map_err(|err| lun.io_error(err))
    }

    /// The nodes holding raw block volume `e`, or None when its header
    /// holds no identity (zeroing never finished, or a delete wiped it).
    pub(super) async fn block_holders(
        &self,
        lun: &Lun,
        e: &VolumeEntry,
    ) -> Result<Option<Vec<Holder>>, LunError> {
        let (io, head, guid) = (lun.io.clone(), e.offset, e.guid);
        run_blocking(WIPE_TIMEOUT, move || {
            block_header::read_holders(io.as_ref(), head, &guid)
        })
        .await
        .map_err(|stalled| lun.stalled("reading a volume's holders", stalled))?
        .map_err(|err| lun.io_error(err))
    }
}

/// Zeroes `ranges` (offset, bytes) durably, logging progress on long work
/// and the rate at the end.
pub(super) fn zero_ranges(
    io: &dyn BlockIo,
    ranges: &[(u64, u64)],
    volume: &str,
    what: &str,
) -> std::io::Result<()> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let doing = format!("zeroing the {what}");
    let mut progress = Progress::new(volume, &doing, total);
    for &(offset, len) in ranges {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(STEP);
            io.zero_out(offset + at, n)?;
            at += n;
            progress.add(n);
        }
    }
    io.sync()?;
    progress.finish(&format!("zeroed the {what}"));
    Ok(())
}
