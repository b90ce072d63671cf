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
            let cmd = Cmd::new("losetup", LOSETUP_TIMEOUT)
                .arg("--find")
                .arg("--show")
                .arg("--offset")
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(size.to_string())
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
