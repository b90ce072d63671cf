//! A block device for a byte range of a LUN, so that the OCFS2 tools (which
//! take a device path, not an offset) can work on one partition.
//!
//! The controller reaches a partition through a loop device with an offset
//! and a size limit, in direct-I/O mode so nothing lingers in this host's
//! page cache. This works for block-device LUNs and for the regular files
//! tests use, and needs no kernel partition on the controller's host.

use crate::tools::{Cmd, Runner, ToolError};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A device node that exposes exactly one byte range of a LUN.
#[derive(Debug)]
pub struct Region {
    pub device: PathBuf,
}

/// Makes and removes region devices.
pub trait RegionDevices: Send + Sync {
    fn attach<'a>(
        &'a self,
        lun: &'a Path,
        offset: u64,
        size: u64,
    ) -> BoxFuture<'a, Result<Region, ToolError>>;
    fn detach(&self, region: Region) -> BoxFuture<'_, Result<(), ToolError>>;
    /// Detaches region devices over `lun` that a previous, killed run of the
    /// controller left behind; returns how many.
    fn release_stale<'a>(&'a self, lun: &'a Path) -> BoxFuture<'a, Result<usize, ToolError>>;
}

/// Region devices as loop devices, made with `losetup`.
pub struct LoopDevices {
    runner: Arc<dyn Runner>,
    // losetup --find can hand the same free device to two concurrent callers;
    // attaching one at a time avoids the retry dance.
    attach_lock: tokio::sync::Mutex<()>,
}

impl LoopDevices {
    pub fn new(runner: Arc<dyn Runner>) -> LoopDevices {
        LoopDevices {
            runner,
            attach_lock: tokio::sync::Mutex::new(()),
        }
    }
}

const LOSETUP_TIMEOUT: Duration = Duration::from_secs(30);

impl RegionDevices for LoopDevices {
    fn attach<'a>(
        &'a self,
        lun: &'a Path,
        offset: u64,
        size: u64,
    ) -> BoxFuture<'a, Result<Region, ToolError>> {
        Box::pin(async move {
            let sector_size = lun_sector_size(lun).await?;
            let cmd = Cmd::new("losetup", LOSETUP_TIMEOUT)
                .arg("--find")
                .arg("--show")
                .arg("--offset")
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(size.to_string())
                .arg("--sector-size")
                .arg(sector_size.to_string())
                .arg("--direct-io=on")
                .arg(lun.as_os_str());
            let _one_at_a_time = self.attach_lock.lock().await;
            let out = self.runner.run(&cmd).await?.ok(&cmd)?;
            let device = PathBuf::from(out.stdout.trim());
            if !device.starts_with("/dev/") {
                return Err(ToolError::Failed {
                    command: cmd.display(),
                    code: out.code,
                    stderr: format!("unexpected output {:?}", out.stdout),
                });
            }
            // losetup leaves a loop device buffered when the kernel will not
            // do direct I/O on it, and says nothing: check what it made.
            if let Err(why) = check_loop(Path::new("/sys/block"), &device, sector_size) {
                let region = Region {
                    device: device.clone(),
                };
                if let Err(e) = self.detach(region).await {
                    tracing::warn!(device = %device.display(), error = %e, "could not detach a refused loop device");
                }
                return Err(ToolError::Failed {
                    command: cmd.display(),
                    code: out.code,
                    stderr: why,
                });
            }
            Ok(Region { device })
        })
    }

    fn detach(&self, region: Region) -> BoxFuture<'_, Result<(), ToolError>> {
        Box::pin(async move {
            let cmd = Cmd::new("losetup", LOSETUP_TIMEOUT)
                .arg("--detach")
                .arg(region.device.as_os_str());
            self.runner.run(&cmd).await?.ok(&cmd)?;
            Ok(())
        })
    }

    fn release_stale<'a>(&'a self, lun: &'a Path) -> BoxFuture<'a, Result<usize, ToolError>> {
        // Only the controller makes loop devices over a LUN (nodes use kernel
        // partitions), so any found at start-up were left by a killed run.
        Box::pin(async move {
            let stale = self.associated(lun).await?;
            for device in &stale {
                tracing::warn!(lun = %lun.display(), device = %device.display(), "detaching a loop device left by an earlier run");
                self.detach(Region {
                    device: device.clone(),
                })
                .await?;
            }
            Ok(stale.len())
        })
    }
}

/// The LUN's logical sector size (512 for an image file, as `LunFile`).
async fn lun_sector_size(lun: &Path) -> Result<u64, ToolError> {
    let path = lun.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        use crate::disk::lun_io::{BlockIo, LunFile};
        LunFile::open_read_only(&path).map(|f| f.sector_size())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()));
    opened.and_then(|r| r).map_err(|e| ToolError::Failed {
        command: format!("reading the sector size of {}", lun.display()),
        code: None,
        stderr: e.to_string(),
    })
}

/// A loop device the controller formats or wipes through must really do
/// direct I/O (a buffered one keeps the LUN's blocks in this host's page
/// cache, where another host's writes never reach them, and writes them
/// back whenever the kernel likes) and must have the LUN's logical sector
/// size (mkfs and debugfs size their I/O by it). `sysfs` is `/sys/block`.
pub fn check_loop(sysfs: &Path, device: &Path, sector_size: u64) -> Result<(), String> {
    let name = device
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} is not a device name", device.display()))?;
    let read = |rel: &str| {
        let p = sysfs.join(name).join(rel);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("reading {}: {e}", p.display()))
    };
    let dio = read("loop/dio")?;
    if dio != "1" {
        return Err(format!(
            "loop device {} runs without direct I/O (loop/dio is {dio:?}): the kernel \
             refused it for this LUN; refusing to use it",
            device.display()
        ));
    }
    let lbs = read("queue/logical_block_size")?;
    if lbs != sector_size.to_string() {
        return Err(format!(
            "loop device {} has {lbs}-byte logical blocks, the LUN {sector_size}; \
             refusing to use it",
            device.display()
        ));
    }
    Ok(())
}

impl LoopDevices {
    async fn associated(&self, lun: &Path) -> Result<Vec<PathBuf>, ToolError> {
        let cmd = Cmd::new("losetup", LOSETUP_TIMEOUT)
            .arg("--list")
            .arg("--noheadings")
            .arg("--output")
            .arg("NAME")
            .arg("--associated")
            .arg(lun.as_os_str());
        let out = self.runner.run(&cmd).await?.ok(&cmd)?;
        Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("/dev/"))
            .map(PathBuf::from)
            .collect())
    }
}

/// Runs `work` on a region device and always detaches it afterwards.
pub async fn with_region<T, E, F, Fut>(
    devices: &dyn RegionDevices,
    lun: &Path,
    offset: u64,
    size: u64,
    work: F,
) -> Result<T, E>
where
    E: From<ToolError>,
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let region = devices.attach(lun, offset, size).await?;
    let result = work(region.device.clone()).await;
    let device = region.device.clone();
    if let Err(e) = devices.detach(region).await {
        // The work's outcome stands; a leaked loop device is only a nuisance.
        tracing::warn!(device = %device.display(), error = %e, "could not detach loop device");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_loop(root: &Path, name: &str, dio: &str, lbs: &str) {
        std::fs::create_dir_all(root.join(name).join("loop")).unwrap();
        std::fs::create_dir_all(root.join(name).join("queue")).unwrap();
        std::fs::write(root.join(name).join("loop/dio"), dio).unwrap();
        std::fs::write(root.join(name).join("queue/logical_block_size"), lbs).unwrap();
    }

    #[test]
    fn loop_devices_must_do_direct_io_with_the_luns_sector_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_loop(root, "loop3", "1\n", "4096\n");
        fake_loop(root, "loop4", "0\n", "512\n");
        fake_loop(root, "loop5", "1\n", "512\n");
        assert_eq!(check_loop(root, Path::new("/dev/loop3"), 4096), Ok(()));
        let buffered = check_loop(root, Path::new("/dev/loop4"), 512).unwrap_err();
        assert!(buffered.contains("without direct I/O"), "{buffered}");
        let size = check_loop(root, Path::new("/dev/loop5"), 4096).unwrap_err();
        assert!(
            size.contains("512-byte logical blocks, the LUN 4096"),
            "{size}"
        );
        assert!(check_loop(root, Path::new("/dev/loop9"), 512).is_err());
    }
}
