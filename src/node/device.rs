//! From a volume ID to this node's block device for it: find the LUN whose
//! GPT has the ID's disk GUID, find the partition by its unique GUID, make
//! the kernel's partitions match the table (BLKPG, see `partition_sync`) and
//! check that the kernel's partition is exactly the table's.
//!
//! Blocking (O_DIRECT reads, ioctls): run on `spawn_blocking`.

use crate::disk::gpt::{self, Gpt};
use crate::disk::kernel_partitions::{block_device_name, kernel_partitions, partition_device_name};
use crate::disk::lun_io::LunFile;
use crate::disk::partition_sync::{self, SyncError};
use crate::volume::entry::{volume_entry, State, VolumeEntry};
use crate::volume::id::VolumeId;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Located {
    pub lun: PathBuf,
    pub entry: VolumeEntry,
    /// `/dev/<partition>`.
    pub device: PathBuf,
    /// The kernel partition's size in bytes (equal to the entry's).
    pub kernel_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no LUN of this node has disk GUID {disk} (LUNs: {luns}); unreadable: {unreadable}")]
    NoLun {
        disk: uuid::Uuid,
        luns: String,
        unreadable: String,
    },
    #[error("LUN {lun} has no partition {partition}: the volume does not exist (deleted?)")]
    NoPartition { lun: PathBuf, partition: uuid::Uuid },
    #[error("partition {number} of {lun} is not a volume of this driver")]
    NotAVolume { lun: PathBuf, number: u32 },
    #[error("volume {partition} on {lun} is still being created (pending); retry")]
    Pending { lun: PathBuf, partition: uuid::Uuid },
    #[error("volume {partition} on {lun} is being deleted; not staging it")]
    Deleting { lun: PathBuf, partition: uuid::Uuid },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("{lun}: kernel partition {number} is {kernel:?} (start, bytes), the table says {table:?} after syncing")]
    Mismatch {
        lun: PathBuf,
        number: u32,
        kernel: Option<(u64, u64)>,
        table: (u64, u64),
    },
    #[error("{lun}: {source}")]
    Io {
        lun: PathBuf,
        source: std::io::Error,
    },
}

/// Finding a volume's device and keeping the kernel's partitions in step
/// with the GPT. Blocking (O_DIRECT reads, ioctls): callers run it on a
/// blocking thread.
pub trait Locator: Send + Sync {
    /// See [`locate`].
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError>;
    /// See [`resync`].
    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String>;
    /// See [`kernel_partition_bytes`].
    fn partition_bytes(&self, lun: &Path, number: u32) -> std::io::Result<Option<u64>>;
}

/// The real locator: the LUNs' GPTs and the kernel's partitions.
#[derive(Clone, Copy, Debug, Default)]
pub struct GptLocator;

impl Locator for GptLocator {
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
        locate(luns, id)
    }

    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String> {
        resync(lun, number)
    }

    fn partition_bytes(&self, lun: &Path, number: u32) -> std::io::Result<Option<u64>> {
        kernel_partition_bytes(lun, number)
    }
}

/// Finds the volume's LUN among `luns`, syncs its kernel partitions and
/// returns the device.
pub fn locate(luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
    let mut unreadable = Vec::new();
    for lun in luns {
        let table = match LunFile::open(lun)
            .map_err(|e| e.to_string())
            .and_then(|io| gpt::read_valid(&io).map_err(|e| e.to_string()))
        {
            Ok(outcome) => outcome.gpt,
            Err(e) => {
                unreadable.push(format!("{}: {e}", lun.display()));
                continue;
            }
        };
        if let Some(entry) = volume_in(&table, lun, id)? {
            return sync_and_check(lun, entry);
        }
    }
    Err(LocateError::NoLun {
        disk: id.lun,
        luns: luns
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        unreadable: if unreadable.is_empty() {
            "none".into()
        } else {
            unreadable.join("; ")
        },
    })
}

/// The volume `id` in `table`, read from `lun`: None when the table is
/// another LUN's; an error when it is this LUN's but the volume is not there,
/// not a volume, still being created or being deleted.
pub fn volume_in(
    table: &Gpt,
    lun: &Path,
    id: &VolumeId,
) -> Result<Option<VolumeEntry>, LocateError> {
    if table.disk_guid != id.lun {
        return Ok(None);
    }
    let partition = table
        .find_by_guid(&id.partition)
        .ok_or(LocateError::NoPartition {
            lun: lun.to_path_buf(),
            partition: id.partition,
        })?;
    let entry = volume_entry(partition, table.sector_size).ok_or(LocateError::NotAVolume {
        lun: lun.to_path_buf(),
        number: partition.number,
    })?;
    match entry.state {
        State::Ready => {}
        State::Pending => {
            return Err(LocateError::Pending {
                lun: lun.to_path_buf(),
                partition: id.partition,
            })
        }
        State::Deleting => {
            return Err(LocateError::Deleting {
                lun: lun.to_path_buf(),
                partition: id.partition,
            })
        }
    }
    Ok(Some(entry))
}

/// Applies the table to the kernel; other partitions that cannot follow
/// (in use elsewhere on this node) do not matter as long as ours is right.
fn sync_and_check(lun: &Path, entry: VolumeEntry) -> Result<Located, LocateError> {
    match partition_sync::sync(lun) {
        Ok(report) if !report.is_empty() => {
            tracing::info!(lun = %lun.display(), ?report, "kernel partitions synced")
        }
        Ok(_) => {}
        Err(SyncError::Incomplete { failures, .. })
            if failures.iter().all(|f| f.number() != entry.number) =>
        {
            tracing::warn!(lun = %lun.display(), ?failures, "some other partitions could not follow the table");
        }
        Err(e) => return Err(e.into()),
    }
    let io = |source| LocateError::Io {
        lun: lun.to_path_buf(),
        source,
    };
    let kernel = kernel_partitions(lun)
        .map_err(io)?
        .into_iter()
        .find(|k| k.number == entry.number)
        .map(|k| (k.start_bytes, k.size_bytes));
    let table = (entry.offset, entry.size);
    if kernel != Some(table) {
        return Err(LocateError::Mismatch {
            lun: lun.to_path_buf(),
            number: entry.number,
            kernel,
            table,
        });
    }
    let disk = block_device_name(lun).map_err(io)?;
    Ok(Located {
        lun: lun.to_path_buf(),
        device: Path::new("/dev").join(partition_device_name(&disk, entry.number)),
        kernel_bytes: entry.size,
        entry,
    })
}

/// The kernel's current size of partition `number` of `lun`, if it has one.
pub fn kernel_partition_bytes(lun: &Path, number: u32) -> std::io::Result<Option<u64>> {
    Ok(kernel_partitions(lun)?
        .into_iter()
        .find(|k| k.number == number)
        .map(|k| k.size_bytes))
}

/// Re-applies the table to the kernel and returns the kernel's size of
/// partition `number` (for the growth reporter). Failures of other
/// partitions do not matter here.
pub fn resync(lun: &Path, number: u32) -> Result<u64, String> {
    match partition_sync::sync(lun) {
        Ok(_) => {}
        Err(SyncError::Incomplete { failures, .. })
            if failures.iter().all(|f| f.number() != number) => {}
        Err(e) => return Err(e.to_string()),
    }
    kernel_partition_bytes(lun, number)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no kernel partition {number}", lun.display()))
}
