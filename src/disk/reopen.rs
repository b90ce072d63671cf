//! A LUN's block I/O that outlives its device node.
//!
//! An iSCSI session that logs in again (a target restart, a path flap
//! longer than the replacement timeout) or an FC rescan gives the LUN a new
//! device (`/dev/sdX` becomes `/dev/sdY`); the stable path the controller
//! was given (`/dev/disk/by-id/...`) follows it, but a descriptor opened
//! before answers ENODEV or EIO forever. [`Reopening`] opens the path again
//! when an operation fails that way, checks that what it opened is the same
//! LUN (same sector size, same disk GUID in its partition table), and
//! retries the operation once on it. Failures in a row are counted, so the
//! controller's Probe can say not ready when a LUN stays unreachable.

use super::gpt;
use super::lun_io::BlockIo;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use uuid::Uuid;

/// Failed operations in a row after which the LUN counts as failing.
pub const FAILING_AFTER: u32 = 3;

/// Opens the device behind a path.
pub type Opener = Box<dyn Fn(&Path) -> io::Result<Arc<dyn BlockIo>> + Send + Sync>;

pub struct Reopening {
    path: PathBuf,
    open: Opener,
    current: RwLock<Arc<dyn BlockIo>>,
    /// The LUN's disk GUID once known: a device reopened must carry it.
    disk_guid: OnceLock<Uuid>,
    failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

/// Errors that mean the device node itself is gone or broken, not that
/// the request was wrong.
fn device_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENXIO | libc::EIO | libc::ESHUTDOWN | libc::ENOLINK)
    )
}

impl Reopening {
    /// Opens `path` with `open`.
    pub fn open(path: &Path, open: Opener) -> io::Result<Reopening> {
        let first = open(path)?;
        Ok(Reopening {
            path: path.to_path_buf(),
            open,
            current: RwLock::new(first),
            disk_guid: OnceLock::new(),
            failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// From now on a reopened device must carry `guid` in its table.
    pub fn expect_disk_guid(&self, guid: Uuid) {
        let _ = self.disk_guid.set(guid);
    }

    fn current(&self) -> Arc<dyn BlockIo> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Opens the path again and takes the new device if it is this LUN.
    fn reopen(&self, old: &Arc<dyn BlockIo>) -> io::Result<Arc<dyn BlockIo>> {
        let new = (self.open)(&self.path)?;
        if new.sector_size() != old.sector_size() {
            return Err(io::Error::other(format!(
                "{} now has {}-byte sectors, not {}: not the same LUN",
                self.path.display(),
                new.sector_size(),
                old.sector_size()
            )));
        }
        if let Some(want) = self.disk_guid.get() {
            let found = gpt::read(new.as_ref())
                .map(|r| r.gpt.disk_guid)
                .map_err(|e| io::Error::other(format!("reading its partition table: {e}")))?;
            if found != *want {
                return Err(io::Error::other(format!(
                    "{} now leads to disk GUID {found}, not {want}: not the same LUN",
                    self.path.display()
                )));
            }
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have reopened meanwhile: keep the newest.
        if Arc::ptr_eq(&current, old) {
            *current = new;
        }
        Ok(current.clone())
    }

    /// Runs `op` on the device; on a gone device, once more on the device
    /// the path leads to now.
    fn with_retry<T>(&self, op: impl Fn(&dyn BlockIo) -> io::Result<T>) -> io::Result<T> {
        let io = self.current();
        let result = match op(io.as_ref()) {
            Err(e) if device_gone(&e) => match self.reopen(&io) {
                Ok(again) => {
                    let retried = op(again.as_ref());
                    if retried.is_ok() {
                        tracing::warn!(
                            lun = %self.path.display(),
                            error = %e,
                            "the LUN's device failed; reopened its path and went on"
                        );
                    }
                    retried
                }
                Err(reopen) => {
                    tracing::warn!(lun = %self.path.display(), error = %e, reopen = %reopen, "the LUN's device failed and reopening its path did not help");
                    Err(e)
                }
            },
            other => other,
        };
        match &result {
            Ok(_) => {
                if self.failures.swap(0, Ordering::Relaxed) >= FAILING_AFTER {
                    tracing::info!(lun = %self.path.display(), "the LUN answers again");
                }
            }
            Err(e) if device_gone(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            Err(_) => {}
        }
        result
    }
}

impl BlockIo for Reopening {
    fn sector_size(&self) -> u64 {
        self.current().sector_size()
    }
    fn size_bytes(&self) -> u64 {
        self.current().size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // The retry needs the buffer again: read into it on each try.
        let cell = Mutex::new(buf);
        self.with_retry(|io| {
            io.read_at(offset, &mut cell.lock().unwrap_or_else(|p| p.into_inner()))
        })
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        // Writing the same bytes again is harmless whether or not the
        // failed try reached the disk.
        self.with_retry(|io| io.write_at(offset, buf))
    }
    fn sync(&self) -> io::Result<()> {
        self.with_retry(|io| io.sync())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with_retry(|io| io.discard(offset, len))
    }
    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with_retry(|io| io.zero_out(offset, len))
    }
    fn refresh_size(&self) -> io::Result<u64> {
        self.with_retry(|io| io.refresh_size())
    }
    fn failing(&self) -> Option<String> {
        (self.failures.load(Ordering::Relaxed) >= FAILING_AFTER).then(|| {
            let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            format!(
                "{} failed {} operations in a row: {}",
                self.path.display(),
                self.failures.load(Ordering::Relaxed),
                last.as_deref().unwrap_or("unknown error")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::SparseIo;
    use std::sync::atomic::AtomicBool;

    /// A device node over shared storage that can vanish (ENODEV).
    struct Node {
        disk: SparseIo,
        gone: Arc<AtomicBool>,
    }

    impl Node {
        fn check(&self) -> io::Result<()> {
            if self.gone.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(libc::ENODEV))
            } else {
                Ok(())
            }
        }
    }

    impl BlockIo for Node {
        fn sector_size(&self) -> u64 {
            self.disk.sector_size()
        }
        fn size_bytes(&self) -> u64 {
            self.disk.size_bytes()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.check()?;
            self.disk.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            self.check()?;
            self.disk.write_at(offset, buf)
        }
        fn sync(&self) -> io::Result<()> {
            self.check()
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            self.check()
        }
    }

    /// What the path leads to: a fresh device node over `disk` at each
    /// open (a re-login), each with its own "gone" switch.
    struct Target {
        disk: Mutex<SparseIo>,
        nodes: Mutex<Vec<Arc<AtomicBool>>>,
    }

    fn opener(path: Arc<Target>) -> Opener {
        Box::new(move |_| {
            let gone = Arc::new(AtomicBool::new(false));
            path.nodes.lock().unwrap().push(gone.clone());
            Ok(Arc::new(Node {
                disk: path.disk.lock().unwrap().clone(),
                gone,
            }))
        })
    }

    fn table_on(disk: &SparseIo) -> Uuid {
        let g = gpt::Gpt::new(512, disk.size_bytes() / 512, Uuid::new_v4());
        gpt::write(disk, &g).unwrap();
        g.disk_guid
    }

    /// A LUN with a table, its path, and a `Reopening` over it.
    fn reopening() -> (SparseIo, Arc<Target>, Reopening) {
        let disk = SparseIo::new(512, 64 << 20);
        let guid = table_on(&disk);
        let path = Arc::new(Target {
            disk: Mutex::new(disk.clone()),
            nodes: Mutex::new(Vec::new()),
        });
        let io = Reopening::open(Path::new("/dev/disk/by-id/lun"), opener(path.clone())).unwrap();
        io.expect_disk_guid(guid);
        (disk, path, io)
    }

    #[test]
    fn a_vanished_device_is_reopened_through_its_path() {
        let (_, path, io) = reopening();
        io.write_at(1 << 20, &[7u8; 512]).unwrap();
        // The session logs in again: the old node answers ENODEV.
        path.nodes.lock().unwrap()[0].store(true, Ordering::SeqCst);
        let mut buf = [0u8; 512];
        io.read_at(1 << 20, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
        assert_eq!(path.nodes.lock().unwrap().len(), 2);
        assert_eq!(io.failing(), None);
    }

    #[test]
    fn another_lun_behind_the_path_is_not_taken() {
        let (disk, path, io) = reopening();
        // The path now leads to another LUN (a mapping changed on the array).
        let other = SparseIo::new(512, 64 << 20);
        table_on(&other);
        *path.disk.lock().unwrap() = other.clone();
        path.nodes.lock().unwrap()[0].store(true, Ordering::SeqCst);
        for _ in 0..FAILING_AFTER {
            let e = io.write_at(1 << 20, &[9u8; 512]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        }
        let mut buf = [0u8; 512];
        other.read_at(1 << 20, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 512], "wrote to the other LUN");
        let why = io.failing().expect("failing after repeated errors");
        assert!(why.contains("3 operations in a row"), "{why}");
        // Back: the first success clears it.
        *path.disk.lock().unwrap() = disk.clone();
        io.read_at(0, &mut buf).unwrap();
        assert_eq!(io.failing(), None);
    }
}
