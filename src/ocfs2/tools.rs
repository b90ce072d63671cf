//! The OCFS2 tools, as argument vectors, and parsers for what they print.

use super::layout::{HeartbeatMode, Layout, MKFS_TIMEOUT};
use crate::tools::{Cmd, Runner, ToolError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

// mkfs writes every journal; a large volume with many slots takes a while
// on slow storage. Its limit, MKFS_TIMEOUT, lives with the layout, which
// refuses geometries that could not be formatted within it.
const DEBUGFS_TIMEOUT: Duration = Duration::from_secs(60);

/// Filesystem features a StorageClass may turn on or off (`name` or
/// `noname`). Everything else (cluster stack, slot map format) is ours to set.
pub const ALLOWED_FEATURES: &[&str] = &[
    "sparse",
    "unwritten",
    "inline-data",
    "xattr",
    "indexed-dirs",
    "refcount",
    "discontig-bg",
    "append-dio",
    "metaecc",
    "usrquota",
    "grpquota",
];

/// Everything mkfs needs to format one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MkfsSpec {
    pub cluster_name: String,
    pub label: String,
    pub uuid: Uuid,
    pub layout: Layout,
    pub heartbeat: HeartbeatMode,
    /// Validated entries of [`ALLOWED_FEATURES`], possibly `no`-prefixed.
    pub features: Vec<String>,
}

/// What `debugfs.ocfs2 -R stats` tells about a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    pub label: String,
    pub uuid: Uuid,
    pub slots: u32,
    pub block_size: u64,
    pub cluster_size: u64,
    pub cluster_name: Option<String>,
    pub global_heartbeat: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Ocfs2Error {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("could not understand {tool} output: {what}")]
    Parse { tool: &'static str, what: String },
}

pub fn mkfs_args(spec: &MkfsSpec, device: &Path) -> Cmd {
    let l = &spec.layout;
    let mut cmd = Cmd::new("mkfs.ocfs2", MKFS_TIMEOUT)
        // -F: the controller host runs no o2cb stack, so mkfs cannot ask the
        // cluster whether the device is in use; the partition is new and
        // nobody can have mounted it (mkfs only ever runs in CreateVolume).
        .arg("-F")
        // -x: never prompt. A create resumed after a crash finds the
        // half-written filesystem of the first attempt, and mkfs would ask
        // whether to overwrite it; the partition is still pending, so yes.
        .arg("-x")
        .arg("-q")
        .arg("--cluster-stack=o2cb")
        .arg(format!("--cluster-name={}", spec.cluster_name))
        .arg("-N")
        .arg(l.slots.to_string())
        .arg("-b")
        .arg(l.block_size.to_string())
        .arg("-C")
        .arg(l.cluster_size.to_string())
        .arg("-J")
        .arg(format!("size={}K", l.journal_size / 1024))
        .arg("-L")
        .arg(&spec.label)
        .arg("-U")
        .arg(spec.uuid.to_string());
    if spec.heartbeat == HeartbeatMode::Global {
        cmd = cmd.arg("--global-heartbeat");
    }
    if !spec.features.is_empty() {
        cmd = cmd.arg(format!("--fs-features={}", spec.features.join(",")));
    }
    cmd.arg(device.as_os_str())
}

pub fn heartbeat_mkfs_args(cluster_name: &str, uuid: Uuid, device: &Path) -> Cmd {
    Cmd::new("mkfs.ocfs2", MKFS_TIMEOUT)
        .arg("-H")
        .arg("-F")
        .arg("-x")
        .arg("-q")
        .arg("--cluster-stack=o2cb")
        .arg(format!("--cluster-name={cluster_name}"))
        .arg("-L")
        .arg("ocfs2-csi-heartbeat")
        .arg("-U")
        .arg(uuid.to_string())
        .arg(device.as_os_str())
}

fn debugfs(request: &str, device: &Path) -> Cmd {
    Cmd::new("debugfs.ocfs2", DEBUGFS_TIMEOUT)
        .arg("-R")
        .arg(request)
        .arg(device.as_os_str())
}

/// Growing writes new group descriptors across the added space.
const GROW_TIMEOUT: Duration = Duration::from_secs(600);
/// A local-heartbeat mount waits for its region to settle (~10 s measured).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn grow_args(device: &Path) -> Cmd {
    Cmd::new("tunefs.ocfs2", GROW_TIMEOUT)
        .arg("-S")
        .arg(device.as_os_str())
}

/// Mount options every volume gets, whatever the request says: a volume is
/// shared by pods on many nodes, and a device node or a set-user-ID program
/// that one pod leaves on it must not become a way out of another pod's
/// container. They come last on mount.ocfs2's command line, where they win
/// over anything before them (its options apply left to right);
/// `volume::mount_options` refuses `dev` and `suid` besides.
pub const FORCED_MOUNT_OPTIONS: &[&str] = &["nodev", "nosuid"];

pub fn mount_args(device: &Path, target: &Path, options: &[String]) -> Cmd {
    let options: Vec<&str> = options
        .iter()
        .map(String::as_str)
        .filter(|o| !FORCED_MOUNT_OPTIONS.contains(o))
        .chain(FORCED_MOUNT_OPTIONS.iter().copied())
        .collect();
    Cmd::new("mount.ocfs2", MOUNT_TIMEOUT)
        .arg("-n")
        .arg("-o")
        .arg(options.join(","))
        .arg(device.as_os_str())
        .arg(target.as_os_str())
}

/// The OCFS2 tools over a [`Runner`].
#[derive(Clone)]
pub struct Ocfs2Tools {
    runner: Arc<dyn Runner>,
}

impl Ocfs2Tools {
    pub fn new(runner: Arc<dyn Runner>) -> Ocfs2Tools {
        Ocfs2Tools { runner }
    }

    async fn run_ok(&self, cmd: Cmd) -> Result<String, Ocfs2Error> {
        let out = self.runner.run(&cmd).await?.ok(&cmd)?;
        Ok(out.stdout)
    }

    pub async fn mkfs(&self, spec: &MkfsSpec, device: &Path) -> Result<(), Ocfs2Error> {
        self.run_ok(mkfs_args(spec, device)).await.map(drop)
    }

    pub async fn mkfs_heartbeat(
        &self,
        cluster_name: &str,
        uuid: Uuid,
        device: &Path,
    ) -> Result<(), Ocfs2Error> {
        self.run_ok(heartbeat_mkfs_args(cluster_name, uuid, device))
            .await
            .map(drop)
    }

    /// The filesystem on `device`, or None when there is no OCFS2 signature.
    pub async fn inspect(&self, device: &Path) -> Result<Option<FsInfo>, Ocfs2Error> {
        let cmd = debugfs("stats", device);
        // debugfs.ocfs2 exits 0 even when it cannot open the filesystem.
        let out = self.runner.run(&cmd).await?.ok(&cmd)?;
        if out.stderr.contains("Bad magic number") {
            return Ok(None);
        }
        parse_stats(&out.stdout).map(Some)
    }

    /// Node numbers holding a slot: nodes that have the volume mounted, or
    /// crashed while they had it and were not yet recovered.
    pub async fn mounted_nodes(&self, device: &Path) -> Result<Vec<u32>, Ocfs2Error> {
        let cmd = debugfs("slotmap", device);
        let out = self.runner.run(&cmd).await?.ok(&cmd)?;
        if !out.stderr.trim().is_empty() && !out.stdout.contains("Slot#") {
            return Err(Ocfs2Error::Parse {
                tool: "debugfs.ocfs2 slotmap",
                what: out.stderr.trim().to_string(),
            });
        }
        parse_slot_map(&out.stdout)
    }

    /// Free bytes of the global bitmap: what statfs reports as available
    /// before any node mounts (a mount's local-alloc window is taken from it).
    pub async fn free_bytes(&self, device: &Path) -> Result<u64, Ocfs2Error> {
        let info = self.inspect(device).await?.ok_or(Ocfs2Error::Parse {
            tool: "debugfs.ocfs2 stats",
            what: "no OCFS2 filesystem".into(),
        })?;
        let out = self.run_ok(debugfs("stat //global_bitmap", device)).await?;
        let (total, used) = parse_bitmap(&out)?;
        Ok((total - used) * info.cluster_size)
    }

    /// The filesystem's size in bytes (clusters in the global bitmap), and
    /// its cluster size: growth compares it with the partition.
    pub async fn fs_bytes(&self, device: &Path) -> Result<(u64, u64), Ocfs2Error> {
        let info = self.inspect(device).await?.ok_or(Ocfs2Error::Parse {
            tool: "debugfs.ocfs2 stats",
            what: "no OCFS2 filesystem".into(),
        })?;
        let out = self.run_ok(debugfs("stat //global_bitmap", device)).await?;
        let (total, _) = parse_bitmap(&out)?;
        Ok((total * info.cluster_size, info.cluster_size))
    }

    /// What debugfs.ocfs2 says of the global bitmap: its chains, where a
    /// clone starts reading which clusters are used (`ocfs2::bitmap`).
    pub async fn global_bitmap(&self, device: &Path) -> Result<String, Ocfs2Error> {
        self.run_ok(debugfs("stat //global_bitmap", device)).await
    }

    /// Grows the filesystem on `device` to the device's size. Online: the
    /// volume stays mounted on every node.
    pub async fn grow(&self, device: &Path) -> Result<(), Ocfs2Error> {
        self.run_ok(grow_args(device)).await.map(drop)
    }

    /// Mounts with the OCFS2 mount helper, which knows how to join the
    /// cluster for the volume's heartbeat mode (and starts a local
    /// heartbeat region when the volume uses one). `-n`: no /etc/mtab.
    pub async fn mount(
        &self,
        device: &Path,
        target: &Path,
        options: &[String],
    ) -> Result<(), Ocfs2Error> {
        self.run_ok(mount_args(device, target, options))
            .await
            .map(drop)
    }
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let line = line.trim();
        line.strip_prefix(key).map(str::trim)
    })
}

fn parse_err(what: impl Into<String>) -> Ocfs2Error {
    Ocfs2Error::Parse {
        tool: "debugfs.ocfs2 stats",
        what: what.into(),
    }
}

fn number_after(text: &str, key: &str) -> Result<u64, Ocfs2Error> {
    text.lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(key)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| parse_err(format!("no {key:?}")))
}

pub fn parse_stats(text: &str) -> Result<FsInfo, Ocfs2Error> {
    let label = field(text, "Label:").unwrap_or("").to_string();
    let uuid = field(text, "UUID:")
        .and_then(|u| Uuid::try_parse(u).ok())
        .ok_or_else(|| parse_err("no UUID"))?;
    let block_bits = number_after(text, "Block Size Bits:")?;
    let cluster_bits = number_after(text, "Cluster Size Bits:")?;
    let slots = number_after(text, "Max Node Slots:")? as u32;
    let cluster_name = field(text, "Cluster name:").map(str::to_string);
    let global_heartbeat = field(text, "Cluster flags:")
        .map(|f| f.contains("Globalheartbeat"))
        .unwrap_or(false);
    Ok(FsInfo {
        label,
        uuid,
        slots,
        block_size: 1 << block_bits,
        cluster_size: 1 << cluster_bits,
        cluster_name,
        global_heartbeat,
    })
}

/// Lines after the `Slot#   Node#` header are `slot node` pairs.
pub fn parse_slot_map(text: &str) -> Result<Vec<u32>, Ocfs2Error> {
    let mut nodes = Vec::new();
    let mut seen_header = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"Slot#") {
            seen_header = true;
            continue;
        }
        if let [slot, node] = words[..] {
            if let (Ok(_), Ok(node)) = (slot.parse::<u32>(), node.parse::<u32>()) {
                nodes.push(node);
                continue;
            }
        }
        if !words.is_empty() {
            return Err(Ocfs2Error::Parse {
                tool: "debugfs.ocfs2 slotmap",
                what: line.trim().to_string(),
            });
        }
    }
    if !seen_header {
        return Err(Ocfs2Error::Parse {
            tool: "debugfs.ocfs2 slotmap",
            what: "no Slot# header".into(),
        });
    }
    Ok(nodes)
}

fn parse_bitmap(text: &str) -> Result<(u64, u64), Ocfs2Error> {
    let total = number_after(text, "Bitmap Total:")?;
    let used = number_after(text, "Used:")?;
    if used > total {
        return Err(parse_err(format!("bitmap used {used} > total {total}")));
    }
    Ok((total, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "\tRevision: 0.90\n\tMax Node Slots: 16\n\tBlock Size Bits: 12   Cluster Size Bits: 16\n\tLabel: pvc-1 a\n\tUUID: 0D7C8AB253F54C1E9B710F1A2B3C4D5E\n\tCluster stack: o2cb\n\tCluster name: lab\n\tCluster flags: 1 Globalheartbeat\n";

    #[test]
    fn parses_stats() {
        let info = parse_stats(STATS).unwrap();
        assert_eq!(info.label, "pvc-1 a");
        assert_eq!(
            info.uuid.to_string(),
            "0d7c8ab2-53f5-4c1e-9b71-0f1a2b3c4d5e"
        );
        assert_eq!(info.slots, 16);
        assert_eq!(info.block_size, 4096);
        assert_eq!(info.cluster_size, 65536);
        assert_eq!(info.cluster_name.as_deref(), Some("lab"));
        assert!(info.global_heartbeat);
        assert!(parse_stats("\tLabel: x\n").is_err());
    }

    #[test]
    fn parses_slot_map() {
        assert_eq!(
            parse_slot_map("\tSlot#   Node#\n").unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(
            parse_slot_map("\tSlot#   Node#\n\t     0       3\n\t     1       7\n").unwrap(),
            vec![3, 7]
        );
        assert!(parse_slot_map("garbage\n").is_err());
        assert!(parse_slot_map("\tSlot#   Node#\n\tweird line here\n").is_err());
    }

    #[test]
    fn parses_bitmap() {
        let text = "\tBitmap Total: 524288   Used: 50725   Free: 473563\n";
        assert_eq!(parse_bitmap(text).unwrap(), (524288, 50725));
    }

    #[test]
    fn mkfs_arguments_are_a_vector() {
        let spec = MkfsSpec {
            cluster_name: "lab".into(),
            label: "pvc-x; rm -rf /".into(),
            uuid: Uuid::nil(),
            layout: Layout {
                slots: 8,
                block_size: 4096,
                cluster_size: 4096,
                journal_size: 8 << 20,
            },
            heartbeat: HeartbeatMode::Global,
            features: vec!["norefcount".into()],
        };
        let cmd = mkfs_args(&spec, Path::new("/dev/loop3"));
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // The label stays one argument, whatever it holds.
        let at = args.iter().position(|a| a == "-L").unwrap();
        assert_eq!(args[at + 1], "pvc-x; rm -rf /");
        assert!(args.contains(&"--global-heartbeat".to_string()));
        assert!(args.contains(&"size=8192K".to_string()));
        assert!(args.contains(&"--fs-features=norefcount".to_string()));
        assert_eq!(args.last().unwrap(), "/dev/loop3");
    }

    fn mount_line(options: &[&str]) -> Vec<String> {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        mount_args(Path::new("/dev/sdb2"), Path::new("/stage"), &options)
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_mount_is_nodev_nosuid() {
        assert_eq!(
            mount_line(&[]),
            ["-n", "-o", "nodev,nosuid", "/dev/sdb2", "/stage"]
        );
        // The caller's options first, ours last (they win), none twice.
        assert_eq!(
            mount_line(&["noatime", "nosuid", "data=writeback", "nodev"]),
            [
                "-n",
                "-o",
                "noatime,data=writeback,nodev,nosuid",
                "/dev/sdb2",
                "/stage"
            ]
        );
        // Even options that slipped past validation cannot undo them.
        let args = mount_line(&["suid", "dev"]);
        assert!(args[2].ends_with(",nodev,nosuid"), "{args:?}");
    }
}
