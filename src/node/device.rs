//! From a volume ID to this node's block device for it: find the LUN whose
//! GPT has the ID's disk GUID, find the volume by its head's unique GUID,
//! and make the volume's device-mapper map lay its extents end to end
//! (`disk::dm`): created at the first stage, grown when the table says the
//! volume grew, removed at unstage. Kernel partitions play no part: a
//! device-mapper LUN (multipath) has none, and those the kernel or udev made
//! on its own (a partition scan of a plain disk, kpartx on a multipath map)
//! are never opened, resized or removed here.
//!
//! Blocking (O_DIRECT reads, ioctls): run on `spawn_blocking`.

use crate::disk::dm::{self, Control, DmError, Ensured};
use crate::disk::gpt::{Gpt, GptError};
use crate::disk::lun_io::LunFile;
use crate::volume::entry::{volume_in, State, VolumeEntry};
use crate::volume::id::VolumeId;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

#[derive(Clone, Debug)]
pub struct Located {
    pub lun: PathBuf,
    pub entry: VolumeEntry,
    /// The volume's map, `/dev/mapper/ocfs2csi-<GUID>`.
    pub device: PathBuf,
    /// The map's size in bytes (the entry's, less a raw block volume's
    /// header).
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
    #[error("volume {partition} on {lun} is being copied by a clone; retry when the copy ends")]
    Cloning { lun: PathBuf, partition: uuid::Uuid },
    #[error("{lun}: {source}")]
    Map { lun: PathBuf, source: DmError },
    #[error("{lun} is not a block device; volumes are reached through device-mapper maps over a block device")]
    NotBlock { lun: PathBuf },
    #[error("{lun}: the map of volume {partition} holds {map} bytes after setting it up, the table says {table}")]
    Mismatch {
        lun: PathBuf,
        partition: uuid::Uuid,
        map: u64,
        table: u64,
    },
    #[error("{lun}: {source}")]
    Io {
        lun: PathBuf,
        source: std::io::Error,
    },
}

/// Finding a volume's device and keeping its map in step with the GPT.
/// Blocking (O_DIRECT reads, ioctls): callers run it on a blocking thread.
pub trait Locator: Send + Sync {
    /// See [`locate`].
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError>;
    /// See [`resync`].
    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String>;
    /// See [`map_bytes`].
    fn partition_bytes(&self, lun: &Path, number: u32) -> std::io::Result<Option<u64>>;
    /// See [`release`].
    fn release(&self, id: &VolumeId) -> Result<(), String>;
    /// See [`release_unused`].
    fn release_unused(&self, id: &VolumeId) -> Result<(), String>;
    /// See [`block_volumes`].
    fn block_volumes(&self, lun: &Path) -> Result<Vec<VolumeEntry>, String>;
}

/// The real locator: the LUNs' GPTs and device-mapper maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmLocator;

impl Locator for DmLocator {
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
        locate(luns, id)
    }

    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String> {
        resync(lun, number)
    }

    fn partition_bytes(&self, lun: &Path, number: u32) -> std::io::Result<Option<u64>> {
        map_bytes(lun, number)
    }

    fn release(&self, id: &VolumeId) -> Result<(), String> {
        release(id)
    }

    fn release_unused(&self, id: &VolumeId) -> Result<(), String> {
        release_unused(id)
    }

    fn block_volumes(&self, lun: &Path) -> Result<Vec<VolumeEntry>, String> {
        block_volumes(lun)
    }
}

/// The raw block volumes in `lun`'s table now.
pub fn block_volumes(lun: &Path) -> Result<Vec<VolumeEntry>, String> {
    Ok(crate::volume::entry::block_volumes(&read_table(lun)?))
}

/// Finds the volume's LUN among `luns`, sets up its map and returns the
/// map's device.
pub fn locate(luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
    let mut unreadable = Vec::new();
    for lun in luns {
        let table = match read_table(lun) {
            Ok(table) => table,
            Err(e) => {
                unreadable.push(format!("{}: {e}", lun.display()));
                continue;
            }
        };
        if let Some(entry) = volume_of(&table, lun, id)? {
            return map_and_check(lun, entry);
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
/// not a volume, still being created, being copied or being deleted.
pub fn volume_of(
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
    let entry = volume_in(table, partition).ok_or(LocateError::NotAVolume {
        lun: lun.to_path_buf(),
        number: partition.number,
    })?;
    stageable(entry.state, lun, id.partition)?;
    Ok(Some(entry))
}

/// Whether a volume in `state` may be staged: only a ready one; the
/// others are errors that say why.
pub fn stageable(state: State, lun: &Path, partition: uuid::Uuid) -> Result<(), LocateError> {
    let lun = lun.to_path_buf();
    match state {
        State::Ready => Ok(()),
        State::Pending => Err(LocateError::Pending { lun, partition }),
        State::Deleting => Err(LocateError::Deleting { lun, partition }),
        State::Cloning => Err(LocateError::Cloning { lun, partition }),
    }
}

/// The map of the volume whose head entry has `guid`. Map names hold 127
/// bytes; the GUID is the volume's identity on every node.
pub fn map_name(guid: &uuid::Uuid) -> String {
    format!("ocfs2csi-{guid}")
}

/// Where the volume's map is mounted from: `/dev/mapper/ocfs2csi-<GUID>`.
pub fn map_path(guid: &uuid::Uuid) -> PathBuf {
    dm::mapper_path(&map_name(guid))
}

/// The map of `lun`'s heartbeat partition.
pub fn heartbeat_map_name(disk: &uuid::Uuid) -> String {
    format!("ocfs2csi-hb-{disk}")
}

/// The DM UUID of a map: tells this driver's maps from others' (LVM,
/// multipath, kpartx) in `dmsetup ls` and udev rules.
fn map_uuid(name: &str) -> String {
    format!("OCFS2CSI-{}", name.trim_start_matches("ocfs2csi-"))
}

/// The device number of `lun`, a block device.
fn lun_device(lun: &Path) -> Result<libc::dev_t, LocateError> {
    let meta = std::fs::metadata(lun).map_err(|source| LocateError::Io {
        lun: lun.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(LocateError::NotBlock {
            lun: lun.to_path_buf(),
        });
    }
    Ok(meta.rdev() as libc::dev_t)
}

/// Makes map `name` lay `extents` (bytes on `lun`) end to end, under the
/// map lock; returns its device and size.
pub fn ensure_map(
    lun: &Path,
    name: &str,
    extents: &[(u64, u64)],
) -> Result<(PathBuf, u64), LocateError> {
    let table = dm::linear_table(lun_device(lun)?, extents);
    let map_err = |source| LocateError::Map {
        lun: lun.to_path_buf(),
        source,
    };
    let _held = hold();
    let (info, done) = Control::open()
        .and_then(|c| c.ensure(name, &map_uuid(name), &table))
        .map_err(map_err)?;
    let device = dm::ensure_node(name, info.dev).map_err(|source| LocateError::Io {
        lun: lun.to_path_buf(),
        source,
    })?;
    let what = match done {
        Ensured::Unchanged => None,
        Ensured::Created => Some("map created"),
        Ensured::Grown => Some("map grown"),
    };
    if let Some(what) = what {
        tracing::info!(
            map = name,
            device = %device.display(),
            dm = %info.device.display(),
            bytes = info.bytes(),
            targets = table.len(),
            "{what}"
        );
    }
    Ok((device, info.bytes()))
}

/// `lun`'s table, read with O_DIRECT and checked (entries and extent
/// chains) before anything is computed from it.
///
/// A table written for a larger device than this host sees means the
/// array grew the LUN and the controller extended the table over the new
/// space: the LUN is rescanned here (`disk::rescan`) and read again, so a
/// volume's new extent there can be mapped.
pub fn read_table(lun: &Path) -> Result<Gpt, String> {
    let read = || {
        LunFile::open(lun)
            .map_err(GptError::Io)
            .and_then(|io| crate::volume::extents::read_valid(&io))
            .map(|outcome| outcome.gpt)
    };
    match read() {
        Err(GptError::DeviceSmaller { .. }) => {
            crate::disk::rescan::refresh_lun(lun).map_err(|e| {
                format!("the LUN grew on the array but this host does not see it yet: {e}")
            })?;
            read().map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// The volume's map over its extents, made or grown; its device and size.
/// A raw block volume's header is not part of its map.
fn ensure_volume_map(lun: &Path, entry: &VolumeEntry) -> Result<(PathBuf, u64), LocateError> {
    ensure_map(lun, &map_name(&entry.guid), &entry.device_extents())
}

fn map_and_check(lun: &Path, entry: VolumeEntry) -> Result<Located, LocateError> {
    let (device, bytes) = ensure_volume_map(lun, &entry)?;
    if bytes != entry.device_bytes() {
        return Err(LocateError::Mismatch {
            lun: lun.to_path_buf(),
            partition: entry.guid,
            map: bytes,
            table: entry.device_bytes(),
        });
    }
    Ok(Located {
        lun: lun.to_path_buf(),
        device,
        kernel_bytes: bytes,
        entry,
    })
}

/// The volume whose head entry is `number` on `lun`, from its table now.
fn volume_by_number(lun: &Path, number: u32) -> Result<VolumeEntry, String> {
    let table = read_table(lun)
        .map_err(|e| format!("{}: reading the partition table: {e}", lun.display()))?;
    table
        .partition(number)
        .and_then(|p| volume_in(&table, p))
        .ok_or_else(|| format!("{} has no volume in entry {number}", lun.display()))
}

/// The size of the map of the volume in entry `number` of `lun`, if this
/// node has one.
pub fn map_bytes(lun: &Path, number: u32) -> std::io::Result<Option<u64>> {
    let entry = volume_by_number(lun, number).map_err(std::io::Error::other)?;
    let info = Control::open()
        .and_then(|c| c.info(&map_name(&entry.guid)))
        .map_err(std::io::Error::other)?;
    Ok(info.map(|i| i.bytes()))
}

/// Re-reads the table and grows the map of the volume in entry `number`
/// to it; returns the map's size (for the growth reporter).
pub fn resync(lun: &Path, number: u32) -> Result<u64, String> {
    let entry = volume_by_number(lun, number)?;
    ensure_volume_map(lun, &entry)
        .map(|(_, bytes)| bytes)
        .map_err(|e| e.to_string())
}

/// Removes the volume's map once nothing holds it open (at unstage).
pub fn release(id: &VolumeId) -> Result<(), String> {
    let _held = hold();
    Control::open()
        .and_then(|c| c.remove(&map_name(&id.partition)))
        .map_err(|e| e.to_string())
}

/// Removes the volume's map only if nothing holds it open; an error says
/// who may. A raw block volume's holder mark is cleared after this, and
/// must not be while a pod (or kubelet's loop device over the published
/// device) can still write through the map: `release`'s removal, which
/// the kernel defers to the last close, would not do.
pub fn release_unused(id: &VolumeId) -> Result<(), String> {
    let name = map_name(&id.partition);
    let _held = hold();
    let c = Control::open().map_err(|e| e.to_string())?;
    match c.info(&name).map_err(|e| e.to_string())? {
        None => return dm::remove_node(&name).map_err(|e| e.to_string()),
        Some(info) if info.open_count > 0 => {
            return Err(format!(
                "{} is held open {} time(s) (a pod, or the kubelet's loop device)",
                info.device.display(),
                info.open_count
            ))
        }
        Some(_) => c.remove(&name).map_err(|e| e.to_string())?,
    }
    if c.exists(&name).map_err(|e| e.to_string())? {
        return Err(format!("{name} was opened while it was being removed"));
    }
    Ok(())
}

static MAP_LOCK: MapLock = MapLock {
    held: Mutex::new(false),
    free: Condvar::new(),
};

struct MapLock {
    held: Mutex<bool>,
    free: Condvar,
}

/// The map lock, held until dropped; it may cross threads (and `.await`s),
/// unlike a `MutexGuard`. Every map change of this plugin takes it, so a
/// holder knows no map grows meanwhile.
#[must_use = "the lock is released when this is dropped"]
pub struct MapHold(());

impl Drop for MapHold {
    fn drop(&mut self) {
        *MAP_LOCK.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        MAP_LOCK.free.notify_one();
    }
}

/// Takes the map lock, waiting while another holder has it. Blocking: call
/// it from a blocking thread.
pub fn hold() -> MapHold {
    let mut held = MAP_LOCK.held.lock().unwrap_or_else(|p| p.into_inner());
    while *held {
        held = MAP_LOCK.free.wait(held).unwrap_or_else(|p| p.into_inner());
    }
    *held = true;
    MapHold(())
}

/// Every `every`, has this host see each LUN's current size (rescan of its
/// paths, a multipath resize when they grew: `disk::rescan`). The map the
/// controller writes through may be on this host, and a controller in a
/// pod cannot always reach multipathd; and each node's volume maps need
/// the LUN's new size before they can reach the new space. Errors are
/// logged when they change, not every round.
pub async fn watch_luns(luns: Vec<PathBuf>, every: std::time::Duration) {
    let mut last: Vec<Option<String>> = vec![None; luns.len()];
    loop {
        tokio::time::sleep(every).await;
        for (lun, last) in luns.iter().zip(last.iter_mut()) {
            let path = lun.clone();
            let done = tokio::task::spawn_blocking(move || crate::disk::rescan::refresh_lun(&path))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let error = done.err();
            if error != *last {
                match &error {
                    Some(e) => {
                        tracing::warn!(lun = %lun.display(), error = %e, "could not check the LUN's size")
                    }
                    None => {
                        tracing::info!(lun = %lun.display(), "the LUN's size can be checked again")
                    }
                }
                *last = error;
            }
        }
    }
}
