//! Global heartbeat: one o2hb region per heartbeat device, started by this
//! process through configfs, and the kernel's view of who is alive.
//!
//! A region is started by writing its geometry and then the number of an
//! open fd of the device into `dev`; that write returns once the region is
//! stable (about 12 s), and the kernel keeps its own reference, so the
//! heartbeat outlives the fd and this process. A restarted plugin therefore
//! finds it running and must leave it alone: stopping it under mounted
//! volumes would get this node fenced.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::configfs::{read_trimmed, ConfigFs, Ops};
use super::error::ClusterError;
use super::geometry::HeartbeatGeometry;
use super::state::region_dir;

pub const DEBUGFS_ROOT: &str = "/sys/kernel/debug";

/// The region's configfs name: the device's filesystem UUID as 32
/// upper-case hex digits, as o2hb and mount.ocfs2 expect.
pub fn region_name(uuid: &Uuid) -> String {
    uuid.simple().to_string().to_uppercase()
}

/// Both end up in a configfs path: no '/', no "..".
fn check_names(cluster: &str, region: &str) -> Result<(), ClusterError> {
    crate::ocfs2::validate_cluster_name(cluster).map_err(ClusterError::Config)?;
    check_region(region)
}

fn check_region(region: &str) -> Result<(), ClusterError> {
    let hex = |c: char| c.is_ascii_digit() || ('A'..='F').contains(&c);
    if region.len() == 32 && region.chars().all(hex) {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "heartbeat region {region:?} is not 32 upper-case hex digits"
        )))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatState {
    /// `dev` names the device (e.g. `vda1`): the kernel is heartbeating.
    Running {
        dev: String,
    },
    /// The directory is there without a device: an earlier start stopped
    /// before `dev` was written, or the kernel gave up on it.
    HalfStarted,
    Absent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatStart {
    Started {
        elapsed: Duration,
        /// A half-started region was removed first.
        cleared: bool,
    },
    /// Already running (on `dev`); nothing was written.
    Adopted { dev: String },
}

fn state_at(dir: &Path) -> Result<HeartbeatState, ClusterError> {
    if !dir.is_dir() {
        return Ok(HeartbeatState::Absent);
    }
    let dev = read_trimmed(&dir.join("dev"))?;
    Ok(if dev.is_empty() {
        HeartbeatState::HalfStarted
    } else {
        HeartbeatState::Running { dev }
    })
}

impl ConfigFs {
    /// Whether the kernel heartbeats on `region` of `cluster` now.
    pub fn region_state(
        &self,
        cluster: &str,
        region: &str,
    ) -> Result<HeartbeatState, ClusterError> {
        check_names(cluster, region)?;
        state_at(&self.root().join(region_dir(cluster, region)))
    }

    /// Starts the global heartbeat region `region` of `cluster` on `dev`, or
    /// adopts it when it is already running. Returns after the kernel
    /// reports the region stable; the blocking writes run off the runtime.
    pub async fn start_or_adopt(
        &self,
        cluster: &str,
        region: &str,
        dev: &Path,
        geometry: HeartbeatGeometry,
    ) -> Result<HeartbeatStart, ClusterError> {
        check_names(cluster, region)?;
        let ops = self.ops.clone();
        let dir = self.root().join(region_dir(cluster, region));
        let dev = dev.to_path_buf();
        tokio::task::spawn_blocking(move || start_blocking(&*ops, &dir, &dev, geometry)).await?
    }
}

fn start_blocking(
    ops: &dyn Ops,
    dir: &Path,
    dev: &Path,
    g: HeartbeatGeometry,
) -> Result<HeartbeatStart, ClusterError> {
    let cleared = match state_at(dir)? {
        HeartbeatState::Running { dev } => return Ok(HeartbeatStart::Adopted { dev }),
        HeartbeatState::HalfStarted => true,
        HeartbeatState::Absent => false,
    };
    // Open before touching configfs, so a missing device leaves nothing
    // half-made. O_RDWR as ocfs2-tools opens it.
    let device = File::options()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|source| ClusterError::OpenDevice {
            path: dev.to_path_buf(),
            source,
        })?;
    if cleared {
        tracing::info!(region = %dir.display(), "removing a half-started heartbeat region");
        ops.rmdir(dir).map_err(|source| ClusterError::Rmdir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    ops.mkdir(dir).map_err(|source| ClusterError::Mkdir {
        path: dir.to_path_buf(),
        source,
    })?;
    let write = |name: &str, value: String| {
        let path = dir.join(name);
        ops.write(&path, &value)
            .map_err(|source| ClusterError::Write {
                path,
                value,
                source,
            })
    };
    write("block_bytes", g.block_bytes.to_string())?;
    write("start_block", g.start_block.to_string())?;
    write("blocks", g.blocks.to_string())?;
    let started = Instant::now();
    // The kernel resolves the fd number in this process, so the file must
    // stay open until the write returns.
    write("dev", device.as_raw_fd().to_string())?;
    drop(device);
    Ok(HeartbeatStart::Started {
        elapsed: started.elapsed(),
        cleared,
    })
}

/// Node numbers o2hb sees heartbeating, over all regions.
pub fn live_nodes(debugfs_root: &Path) -> Result<BTreeSet<u8>, ClusterError> {
    read_live(debugfs_root.join("o2hb/livenodes"))
}

/// Node numbers heartbeating in one region.
pub fn region_live_nodes(debugfs_root: &Path, region: &str) -> Result<BTreeSet<u8>, ClusterError> {
    check_region(region)?;
    read_live(debugfs_root.join("o2hb").join(region).join("livenodes"))
}

/// How long ago this node's last heartbeat write to `region` completed
/// (o2hb's `elapsed_time_in_ms`); None before its first.
pub fn region_write_age(
    debugfs_root: &Path,
    region: &str,
) -> Result<Option<Duration>, ClusterError> {
    check_region(region)?;
    let path = debugfs_root
        .join("o2hb")
        .join(region)
        .join("elapsed_time_in_ms");
    let text = read_trimmed(&path)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| ClusterError::Value {
            path,
            value: text,
            expected: "milliseconds",
        })
}

fn read_live(path: PathBuf) -> Result<BTreeSet<u8>, ClusterError> {
    let text = read_trimmed(&path)?;
    parse_live_nodes(&text).ok_or(ClusterError::Value {
        path,
        value: text,
        expected: "node numbers separated by spaces",
    })
}

/// `livenodes` reads like `0 1 \n`, or nothing when no node is alive.
pub fn parse_live_nodes(text: &str) -> Option<BTreeSet<u8>> {
    text.split_whitespace().map(|n| n.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{files, FakeConfigFs};

    #[test]
    fn region_is_the_uuid_in_upper_hex() {
        let uuid = Uuid::parse_str("0d7c8ab2-53f5-4c1e-9b71-0f1a2b3c4d5e").unwrap();
        assert_eq!(region_name(&uuid), "0D7C8AB253F54C1E9B710F1A2B3C4D5E");
        assert!(check_region(&region_name(&uuid)).is_ok());
        assert!(check_region("../x").is_err());
        assert!(check_region(&"0d".repeat(16)).is_err());
        assert!(check_names("..", &region_name(&uuid)).is_err());
    }

    const REGION: &str = "0D7C8AB253F54C1E9B710F1A2B3C4D5E";
    const GEOMETRY: HeartbeatGeometry = HeartbeatGeometry {
        block_bytes: 512,
        start_block: 296,
        blocks: 255,
    };

    /// A configfs fake holding cluster "lab", and a file standing in for
    /// the heartbeat device.
    fn setup(dir: &Path) -> (std::sync::Arc<FakeConfigFs>, ConfigFs, PathBuf) {
        let fake = FakeConfigFs::new(&dir.join("config"));
        let fs = fake.configfs();
        fake.mkdir(&dir.join("config/cluster/lab")).unwrap();
        fake.take_log();
        let device = dir.join("device");
        std::fs::write(&device, "").unwrap();
        (fake, fs, device)
    }

    fn region_path(dir: &Path) -> PathBuf {
        dir.join("config").join(region_dir("lab", REGION))
    }

    #[tokio::test]
    async fn absent_region_is_started_in_the_kernels_order() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, fs, device) = setup(dir.path());
        assert_eq!(
            fs.region_state("lab", REGION).unwrap(),
            HeartbeatState::Absent
        );
        let start = fs.start_or_adopt("lab", REGION, &device, GEOMETRY).await;
        assert!(
            matches!(start, Ok(HeartbeatStart::Started { cleared: false, .. })),
            "{start:?}"
        );
        let log = fake.take_log();
        let r = format!("cluster/lab/heartbeat/{REGION}");
        assert_eq!(
            log[..4],
            [
                format!("mkdir {r}"),
                format!("write {r}/block_bytes = 512"),
                format!("write {r}/start_block = 296"),
                format!("write {r}/blocks = 255"),
            ]
        );
        // The fd number of the device, opened by this process.
        let fd: i32 = log[4]
            .strip_prefix(&format!("write {r}/dev = "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(fd > 2);
        assert_eq!(log.len(), 5);
    }

    #[tokio::test]
    async fn running_region_is_adopted_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, fs, device) = setup(dir.path());
        let region = region_path(dir.path());
        fake.mkdir(&region).unwrap();
        files(&region, &[("dev", "vda1"), ("pid", "1234")]);
        fake.take_log();
        let state = fs.region_state("lab", REGION).unwrap();
        assert_eq!(state, HeartbeatState::Running { dev: "vda1".into() });
        let start = fs.start_or_adopt("lab", REGION, &device, GEOMETRY).await;
        assert_eq!(
            start.unwrap(),
            HeartbeatStart::Adopted { dev: "vda1".into() }
        );
        assert!(fake.take_log().is_empty());
    }

    #[tokio::test]
    async fn half_started_region_is_removed_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, fs, device) = setup(dir.path());
        let region = region_path(dir.path());
        fake.mkdir(&region).unwrap();
        fake.take_log();
        assert_eq!(
            fs.region_state("lab", REGION).unwrap(),
            HeartbeatState::HalfStarted
        );
        let start = fs.start_or_adopt("lab", REGION, &device, GEOMETRY).await;
        assert!(matches!(
            start,
            Ok(HeartbeatStart::Started { cleared: true, .. })
        ));
        let log = fake.take_log();
        let r = format!("cluster/lab/heartbeat/{REGION}");
        assert_eq!(log[..2], [format!("rmdir {r}"), format!("mkdir {r}")]);
        assert_eq!(log.len(), 6);
    }

    #[tokio::test]
    async fn missing_device_leaves_configfs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, fs, _) = setup(dir.path());
        let start = fs
            .start_or_adopt("lab", REGION, &dir.path().join("gone"), GEOMETRY)
            .await;
        assert!(matches!(start, Err(ClusterError::OpenDevice { .. })));
        assert!(fake.take_log().is_empty());
    }

    #[test]
    fn live_nodes_are_read_from_debugfs() {
        assert_eq!(parse_live_nodes("0 1 \n"), Some(BTreeSet::from([0, 1])));
        assert_eq!(parse_live_nodes(""), Some(BTreeSet::new()));
        assert_eq!(parse_live_nodes("0 x"), None);
        let dir = tempfile::tempdir().unwrap();
        let o2hb = dir.path().join("o2hb");
        std::fs::create_dir_all(o2hb.join(REGION)).unwrap();
        std::fs::write(o2hb.join("livenodes"), "3 7 \n").unwrap();
        std::fs::write(o2hb.join(REGION).join("livenodes"), "\n").unwrap();
        assert_eq!(live_nodes(dir.path()).unwrap(), BTreeSet::from([3, 7]));
        assert!(region_live_nodes(dir.path(), REGION).unwrap().is_empty());
        std::fs::write(o2hb.join("livenodes"), "256\n").unwrap();
        assert!(matches!(
            live_nodes(dir.path()),
            Err(ClusterError::Value { .. })
        ));
    }
}
