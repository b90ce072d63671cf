//! Fakes for the controller's side effects, so `Volumes` and the gRPC
//! services can be tested in-process, in milliseconds, without loop devices
//! or ocfs2-tools.
//!
//! [`FakeSan`] is one object that plays both the region devices (a loop
//! device over a byte range of a LUN) and the OCFS2 tools run on them. It
//! plays them on the LUN's bytes: `mkfs.ocfs2` writes a superblock-like
//! record into the region, `debugfs.ocfs2 -R stats` reads it back, so a
//! retried create finds what the first attempt made, and a wipe (zeroing the
//! region's head) really removes it. Which o2cb nodes have a filesystem
//! mounted is set by the test ([`FakeSan::set_mounted`]) and answered by
//! `debugfs.ocfs2 -R slotmap`.
//!
//! It lives here rather than beside `tools` or `ocfs2` because the fake
//! tools must see the bytes behind a region device (`disk`), and the layers
//! below the controller may not import each other.

use super::error::LunError;
use super::fs_image::FsImage;
use super::pool::{open_lun, ClusterIdentity, Lun};
use super::volumes::Volumes;
use super::writer::{SoleWriter, WriterConfig};
use crate::disk::lun_io::BlockIo;
use crate::disk::region::{Region, RegionDevices};
use crate::ocfs2::restamp::Identity;
use crate::ocfs2::tools::Ocfs2Tools;
use crate::tools::{Cmd, Runner, ToolError, ToolOutput};
use crate::volume::entry::VolumeEntry;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The o2cb cluster the fakes' volumes belong to.
pub const CLUSTER: &str = "fakelab";

/// The cluster the fake LUNs are stamped for.
pub fn test_cluster() -> ClusterIdentity {
    ClusterIdentity {
        id: "fake-cluster-id".into(),
        name: CLUSTER.into(),
    }
}

/// Where in a region the fake superblock sits (OCFS2's is in block 2).
const SUPER_OFFSET: u64 = 8192;
const SUPER_BYTES: usize = 4096;
const MAGIC: &[u8] = b"OCFSV2\0\0";

/// A byte range of a LUN behind a fake region device.
#[derive(Clone, Debug)]
struct RegionAt {
    lun: PathBuf,
    offset: u64,
    size: u64,
}

/// What the fake mkfs.ocfs2 wrote into a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeFs {
    pub label: String,
    pub uuid: Uuid,
    pub slots: u32,
    pub block_size: u64,
    pub cluster_size: u64,
    pub journal_size: u64,
    pub cluster_name: String,
    pub global_heartbeat: bool,
    /// Made with `-H` (a heartbeat device).
    pub heartbeat_device: bool,
    /// The filesystem's size: its device's when made, or when last grown
    /// (`tunefs.ocfs2 -S`); a partition grown since is larger.
    pub bytes: u64,
}

impl FakeFs {
    fn encode(&self) -> Vec<u8> {
        let text = format!(
            "label={}\nuuid={}\nslots={}\nblock={}\ncluster={}\njournal={}\nclustername={}\nglobal={}\nhbdev={}\nbytes={}\n",
            self.label.replace('\n', " "),
            self.uuid,
            self.slots,
            self.block_size,
            self.cluster_size,
            self.journal_size,
            self.cluster_name,
            self.global_heartbeat,
            self.heartbeat_device,
            self.bytes
        );
        let mut block = vec![0u8; SUPER_BYTES];
        block[..MAGIC.len()].copy_from_slice(MAGIC);
        block[MAGIC.len()..MAGIC.len() + text.len()].copy_from_slice(text.as_bytes());
        block
    }

    fn decode(block: &[u8]) -> Option<FakeFs> {
        let text = block.strip_prefix(MAGIC)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = std::str::from_utf8(&text[..end]).ok()?;
        let fields: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        Some(FakeFs {
            label: fields.get("label")?.to_string(),
            uuid: fields.get("uuid")?.parse().ok()?,
            slots: fields.get("slots")?.parse().ok()?,
            block_size: fields.get("block")?.parse().ok()?,
            cluster_size: fields.get("cluster")?.parse().ok()?,
            journal_size: fields.get("journal")?.parse().ok()?,
            cluster_name: fields.get("clustername")?.to_string(),
            global_heartbeat: fields.get("global")?.parse().ok()?,
            heartbeat_device: fields.get("hbdev")?.parse().ok()?,
            bytes: fields.get("bytes")?.parse().ok()?,
        })
    }

    /// What `debugfs.ocfs2 -R stats` prints (the lines we parse).
    fn stats(&self) -> String {
        format!(
            "\tRevision: 0.90\n\tMax Node Slots: {}\n\tBlock Size Bits: {}   Cluster Size Bits: {}\n\
             \tLabel: {}\n\tUUID: {}\n\tCluster stack: o2cb\n\tCluster name: {}\n\tCluster flags: {}\n",
            self.slots,
            self.block_size.trailing_zeros(),
            self.cluster_size.trailing_zeros(),
            self.label,
            self.uuid.simple().to_string().to_uppercase(),
            self.cluster_name,
            if self.global_heartbeat || self.heartbeat_device {
                "1 Globalheartbeat"
            } else {
                "0"
            }
        )
    }
}

#[derive(Default)]
struct State {
    luns: HashMap<PathBuf, Arc<dyn BlockIo>>,
    regions: HashMap<PathBuf, RegionAt>,
    /// Partition devices a node sees (see [`FakeSan::expose`]).
    partitions: HashMap<PathBuf, RegionAt>,
    /// o2cb nodes holding a slot, by filesystem UUID.
    mounted: HashMap<Uuid, Vec<u32>>,
    /// Every command run, as one line.
    commands: Vec<String>,
    /// Programs whose next run fails.
    fail_next: Vec<&'static str>,
    /// Things real tools or kernels would have made a disaster of.
    violations: Vec<String>,
    /// Run after the next slot map reads, one each (see `after_slotmap`).
    slotmap_hooks: std::collections::VecDeque<Box<dyn FnOnce() + Send>>,
}

/// Region devices and OCFS2 tools played on in-memory LUNs.
#[derive(Default)]
pub struct FakeSan {
    state: Mutex<State>,
    next_region: AtomicU64,
}

fn failed(code: i32, stderr: impl Into<String>) -> ToolOutput {
    ToolOutput {
        code: Some(code),
        stdout: String::new(),
        stderr: stderr.into(),
    }
}

fn ok(stdout: impl Into<String>) -> ToolOutput {
    ToolOutput {
        code: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

impl FakeSan {
    pub fn new() -> Arc<FakeSan> {
        Arc::new(FakeSan::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `io` reachable as `path` for region devices.
    pub fn add_lun(&self, path: &Path, io: Arc<dyn BlockIo>) {
        self.state().luns.insert(path.to_path_buf(), io);
    }

    /// The OCFS2 tools, run by this fake.
    pub fn tools(self: &Arc<Self>) -> Ocfs2Tools {
        Ocfs2Tools::new(self.clone())
    }

    /// Says which o2cb nodes have the filesystem `fs_uuid` mounted.
    pub fn set_mounted(&self, fs_uuid: Uuid, nodes: &[u32]) {
        self.state().mounted.insert(fs_uuid, nodes.to_vec());
    }

    /// The next run of `program` fails (exit 1).
    pub fn fail_next(&self, program: &'static str) {
        self.state().fail_next.push(program);
    }

    /// Every command run so far, one line each.
    pub fn commands(&self) -> Vec<String> {
        self.state().commands.clone()
    }

    /// How many commands started with `prefix` (e.g. "mkfs.ocfs2").
    pub fn count(&self, prefix: &str) -> usize {
        self.state()
            .commands
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// Region devices attached and not yet detached.
    pub fn attached(&self) -> usize {
        self.state().regions.len()
    }

    /// What real tools would have done harm with (mkfs over a mounted
    /// filesystem): tests assert it stays empty.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// The filesystem on `device` (a region or an exposed partition).
    pub fn filesystem_on(&self, device: &Path) -> Option<FakeFs> {
        let (io, at) = self.region(device)?;
        read_super(io.as_ref(), at.offset)
    }

    /// The filesystem the fake mkfs left at `offset` of `lun`, if any.
    pub fn filesystem_at(&self, lun: &Path, offset: u64) -> Option<FakeFs> {
        let io = self.state().luns.get(lun)?.clone();
        read_super(io.as_ref(), offset)
    }

    /// Opens (initialising if blank, and taking its writer lease) a LUN
    /// through these fakes, as the
    /// controller does at start-up.
    pub async fn open_lun(self: &Arc<Self>, path: &str, io: Arc<dyn BlockIo>) -> Arc<Lun> {
        let path = Path::new(path);
        self.add_lun(path, io.clone());
        let lun = open_lun(
            path,
            io,
            true,
            Arc::new(SoleWriter::default()),
            &test_cluster(),
            &self.tools(),
            self.as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("opening fake LUN {}: {e}", path.display()));
        Arc::new(lun)
    }

    /// Runs `hook` right after the next slot map read not yet hooked has
    /// been answered (a node mounting just after DeleteVolume looked).
    pub fn after_slotmap(&self, hook: impl FnOnce() + Send + 'static) {
        self.state().slotmap_hooks.push_back(Box::new(hook));
    }

    /// A controller's `Volumes` over these fakes, ready with `luns`. No
    /// node here takes seconds to mount: DeleteVolume waits 20 ms for one.
    pub fn volumes(self: &Arc<Self>, luns: Vec<Arc<Lun>>) -> Volumes {
        let volumes = Volumes::new(self.tools(), self.clone(), CLUSTER.to_string())
            .with_delete_grace(std::time::Duration::from_millis(20))
            .with_images(self.clone());
        volumes.set_luns(luns);
        volumes
    }

    /// Makes `device` a node's kernel partition over `size` bytes at
    /// `offset` of `lun` (replacing what it was), so the OCFS2 tools run
    /// on a node see the filesystem the controller made there: one SAN for
    /// both sides. Not a region device: [`FakeSan::attached`] ignores it.
    pub fn expose(&self, device: &Path, lun: &Path, offset: u64, size: u64) {
        self.state().partitions.insert(
            device.to_path_buf(),
            RegionAt {
                lun: lun.to_path_buf(),
                offset,
                size,
            },
        );
    }

    fn region(&self, device: &Path) -> Option<(Arc<dyn BlockIo>, RegionAt)> {
        let state = self.state();
        let at = state
            .regions
            .get(device)
            .or_else(|| state.partitions.get(device))?
            .clone();
        let io = state.luns.get(&at.lun)?.clone();
        Some((io, at))
    }

    fn play(&self, cmd: &Cmd) -> ToolOutput {
        let line = cmd.display();
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        {
            let mut state = self.state();
            state.commands.push(line.clone());
            if let Some(i) = state.fail_next.iter().position(|p| *p == cmd.program) {
                state.fail_next.remove(i);
                return failed(1, format!("{}: injected failure", cmd.program));
            }
        }
        match cmd.program {
            "mkfs.ocfs2" => self.mkfs(&args),
            "debugfs.ocfs2" => self.debugfs(&args),
            "tunefs.ocfs2" => self.tunefs(&args),
            _ => failed(127, format!("the fake SAN does not play `{line}`")),
        }
    }

    fn mkfs(&self, args: &[String]) -> ToolOutput {
        let Some((device, flags)) = args.split_last() else {
            return failed(1, "mkfs.ocfs2: no device");
        };
        let Some((io, at)) = self.region(Path::new(device)) else {
            return failed(1, format!("mkfs.ocfs2: {device}: no such device"));
        };
        let mut fs = FakeFs {
            label: String::new(),
            uuid: Uuid::new_v4(),
            slots: 8,
            block_size: 4096,
            cluster_size: 4096,
            journal_size: 64 << 20,
            cluster_name: String::new(),
            global_heartbeat: false,
            heartbeat_device: false,
            bytes: at.size,
        };
        let mut it = flags.iter();
        let mut forced = false;
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_default();
            match flag.as_str() {
                "-F" => forced = true,
                "-x" | "-q" | "--cluster-stack=o2cb" => {}
                "-H" => fs.heartbeat_device = true,
                "--global-heartbeat" => fs.global_heartbeat = true,
                "-N" => fs.slots = value().parse().unwrap_or(0),
                "-b" => fs.block_size = value().parse().unwrap_or(0),
                "-C" => fs.cluster_size = value().parse().unwrap_or(0),
                "-J" => {
                    let v = value();
                    let kib = v.strip_prefix("size=").and_then(|k| k.strip_suffix('K'));
                    fs.journal_size = kib.and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024;
                }
                "-L" => fs.label = value(),
                "-U" => fs.uuid = value().parse().unwrap_or(Uuid::nil()),
                f if f.starts_with("--cluster-name=") => {
                    fs.cluster_name = f["--cluster-name=".len()..].to_string()
                }
                f if f.starts_with("--fs-features=") => {}
                other => return failed(1, format!("mkfs.ocfs2: unknown option {other}")),
            }
        }
        // What the real mkfs.ocfs2 refuses.
        let pow2 = |v: u64, lo: u64, hi: u64| v.is_power_of_two() && (lo..=hi).contains(&v);
        let needed = u64::from(fs.slots) * fs.journal_size + (8 << 20);
        let bad = if !forced {
            Some("would ask whether to overwrite (no -F)".to_string())
        } else if fs.uuid.is_nil() || fs.label.len() > 63 || fs.cluster_name.is_empty() {
            Some("bad -U, -L or --cluster-name".into())
        } else if !fs.heartbeat_device
            && (fs.slots == 0
                || fs.slots > 255
                || !pow2(fs.block_size, 512, 4096)
                || !pow2(fs.cluster_size, 4096, 1 << 20)
                || fs.cluster_size < fs.block_size
                || fs.journal_size < 9 * fs.cluster_size)
        {
            Some(format!("invalid geometry {fs:?}"))
        } else if !fs.heartbeat_device && at.size < needed {
            Some(format!(
                "{} bytes are too few for {} journals of {} bytes",
                at.size, fs.slots, fs.journal_size
            ))
        } else {
            None
        };
        if let Some(why) = bad {
            return failed(1, format!("mkfs.ocfs2: {why}"));
        }
        if let Some(old) = read_super(io.as_ref(), at.offset) {
            let mut state = self.state();
            if state.mounted.get(&old.uuid).is_some_and(|n| !n.is_empty()) {
                let why = format!("mkfs over filesystem {} mounted by nodes", old.uuid);
                state.violations.push(why.clone());
                return failed(1, why);
            }
        }
        if let Err(e) = io.write_at(at.offset + SUPER_OFFSET, &fs.encode()) {
            return failed(1, format!("mkfs.ocfs2: write: {e}"));
        }
        ok("")
    }

    /// `tunefs.ocfs2 -S`: the filesystem grows to its device.
    fn tunefs(&self, args: &[String]) -> ToolOutput {
        let [flag, device] = args else {
            return failed(1, "tunefs.ocfs2: usage");
        };
        if flag != "-S" {
            return failed(
                1,
                format!("tunefs.ocfs2: the fake plays -S only, not {flag}"),
            );
        }
        let Some((io, at)) = self.region(Path::new(device)) else {
            return failed(1, format!("tunefs.ocfs2: {device}: no such device"));
        };
        let Some(mut fs) = read_super(io.as_ref(), at.offset) else {
            return failed(1, format!("tunefs.ocfs2: {device}: no OCFS2 filesystem"));
        };
        if at.size < fs.bytes {
            return failed(
                1,
                format!("tunefs.ocfs2: {device} is smaller than its filesystem"),
            );
        }
        fs.bytes = at.size;
        if let Err(e) = io.write_at(at.offset + SUPER_OFFSET, &fs.encode()) {
            return failed(1, format!("tunefs.ocfs2: write: {e}"));
        }
        ok("")
    }

    fn debugfs(&self, args: &[String]) -> ToolOutput {
        let [flag, request, device] = args else {
            return failed(1, "debugfs.ocfs2: usage");
        };
        if flag != "-R" {
            return failed(1, "debugfs.ocfs2: usage");
        }
        let Some((io, at)) = self.region(Path::new(device)) else {
            return failed(1, format!("debugfs.ocfs2: {device}: no such device"));
        };
        // Like the real one: exit 0, complaint on stderr.
        let Some(fs) = read_super(io.as_ref(), at.offset) else {
            return ToolOutput {
                code: Some(0),
                stdout: String::new(),
                stderr: format!(
                    "debugfs.ocfs2: Bad magic number in superblock while opening device {device}\n"
                ),
            };
        };
        match request.as_str() {
            "stats" => ok(fs.stats()),
            "slotmap" => {
                let nodes = self.state().mounted.get(&fs.uuid).cloned();
                let mut out = String::from("\tSlot#   Node#\n");
                for (slot, node) in nodes.unwrap_or_default().iter().enumerate() {
                    out.push_str(&format!("\t{slot:>6}  {node:>6}\n"));
                }
                let hook = self.state().slotmap_hooks.pop_front();
                if let Some(hook) = hook {
                    hook();
                }
                ok(out)
            }
            "stat //global_bitmap" => {
                let total = fs.bytes / fs.cluster_size;
                let used = (u64::from(fs.slots) * fs.journal_size + (8 << 20)) / fs.cluster_size;
                ok(format!(
                    "\tBitmap Total: {total}   Used: {used}   Free: {}\n",
                    total.saturating_sub(used)
                ))
            }
            other => failed(1, format!("debugfs.ocfs2: unknown request {other:?}")),
        }
    }
}

fn read_super(io: &dyn BlockIo, offset: u64) -> Option<FakeFs> {
    let mut block = vec![0u8; SUPER_BYTES];
    io.read_at(offset + SUPER_OFFSET, &mut block).ok()?;
    FakeFs::decode(&block)
}

/// Clones of fake filesystems: every byte of the filesystem counts as
/// used, and the identity is the fake superblock's.
impl FsImage for FakeSan {
    fn used_ranges<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
    ) -> BoxFuture<'a, Result<Vec<(u64, u64)>, LunError>> {
        Box::pin(async move {
            let fs = read_super(lun.io.as_ref(), e.offset)
                .ok_or_else(|| LunError::NotReady(format!("no fake filesystem on {}", e.name)))?;
            Ok(vec![(0, fs.bytes.min(e.size))])
        })
    }

    fn restamp<'a>(
        &'a self,
        lun: &'a Lun,
        e: &'a VolumeEntry,
        id: &'a Identity,
    ) -> BoxFuture<'a, Result<(), LunError>> {
        Box::pin(async move {
            let io = lun.io.as_ref();
            let mut fs = read_super(io, e.offset)
                .ok_or_else(|| LunError::NotReady(format!("no fake filesystem on {}", e.name)))?;
            fs.uuid = id.uuid;
            fs.label = id.label.clone();
            io.write_at(e.offset + SUPER_OFFSET, &fs.encode())
                .and_then(|()| io.sync())
                .map_err(|err| lun.io_error(err))
        })
    }

    fn grow<'a>(&'a self, lun: &'a Lun, e: &'a VolumeEntry) -> BoxFuture<'a, Result<(), LunError>> {
        Box::pin(async move {
            let io = lun.io.as_ref();
            let mut fs = read_super(io, e.offset)
                .ok_or_else(|| LunError::NotReady(format!("no fake filesystem on {}", e.name)))?;
            fs.bytes = e.size;
            self.state()
                .commands
                .push(format!("grow offline {}", e.name));
            io.write_at(e.offset + SUPER_OFFSET, &fs.encode())
                .and_then(|()| io.sync())
                .map_err(|err| lun.io_error(err))
        })
    }
}

impl Runner for FakeSan {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move { Ok(self.play(cmd)) })
    }
}

fn region_error(what: &str, why: String) -> ToolError {
    ToolError::Failed {
        command: format!("losetup {what}"),
        code: Some(1),
        stderr: why,
    }
}

impl RegionDevices for FakeSan {
    fn attach<'a>(
        &'a self,
        lun: &'a Path,
        offset: u64,
        size: u64,
    ) -> BoxFuture<'a, Result<Region, ToolError>> {
        Box::pin(async move {
            let mut state = self.state();
            let io = state
                .luns
                .get(lun)
                .ok_or_else(|| region_error("attach", format!("{}: no such LUN", lun.display())))?;
            let in_range = offset
                .checked_add(size)
                .is_some_and(|e| e <= io.size_bytes());
            if !in_range || size == 0 || !offset.is_multiple_of(512) || !size.is_multiple_of(512) {
                return Err(region_error(
                    "attach",
                    format!("bad range {offset}+{size} of {}", lun.display()),
                ));
            }
            let n = self.next_region.fetch_add(1, Ordering::SeqCst);
            let device = PathBuf::from(format!("/dev/fake-region{n}"));
            state.regions.insert(
                device.clone(),
                RegionAt {
                    lun: lun.to_path_buf(),
                    offset,
                    size,
                },
            );
            Ok(Region { device })
        })
    }

    fn detach(&self, region: Region) -> BoxFuture<'_, Result<(), ToolError>> {
        Box::pin(async move {
            match self.state().regions.remove(&region.device) {
                Some(_) => Ok(()),
                None => Err(region_error(
                    "detach",
                    format!("{}: not attached", region.device.display()),
                )),
            }
        })
    }

    fn release_stale<'a>(&'a self, lun: &'a Path) -> BoxFuture<'a, Result<usize, ToolError>> {
        Box::pin(async move {
            let mut state = self.state();
            let before = state.regions.len();
            state.regions.retain(|_, at| at.lun != lun);
            Ok(before - state.regions.len())
        })
    }
}

/// The writer lease settings of the in-process tests: one controller per
/// fake LUN, so a lease that outlasts any test.
pub fn test_writer() -> WriterConfig {
    WriterConfig {
        lease: std::time::Duration::from_secs(3600),
        owner_name: "in-process test".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lun_io::SparseIo;
    use crate::disk::region::with_region;
    use crate::ocfs2::layout::{HeartbeatMode, Layout};
    use crate::ocfs2::tools::MkfsSpec;

    #[tokio::test]
    async fn tools_see_what_mkfs_made_until_it_is_wiped() {
        let san = FakeSan::new();
        let io = Arc::new(SparseIo::new(512, 1 << 30));
        let lun = Path::new("/dev/fake-lun");
        san.add_lun(lun, io.clone());
        let tools = san.tools();
        let spec = MkfsSpec {
            cluster_name: CLUSTER.into(),
            label: "pvc-a".into(),
            uuid: Uuid::new_v4(),
            layout: Layout {
                slots: 2,
                block_size: 4096,
                cluster_size: 4096,
                journal_size: 8 << 20,
            },
            heartbeat: HeartbeatMode::Global,
            features: vec![],
        };
        let (offset, size) = (64 << 20, 256 << 20);
        let info = with_region(san.as_ref(), lun, offset, size, |dev| {
            let tools = tools.clone();
            let spec = spec.clone();
            async move {
                assert_eq!(tools.inspect(&dev).await?, None);
                tools.mkfs(&spec, &dev).await?;
                tools.inspect(&dev).await
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((info.label.as_str(), info.uuid), ("pvc-a", spec.uuid));
        assert_eq!((info.slots, info.cluster_size), (2, 4096));
        assert!(info.global_heartbeat);
        assert_eq!(san.attached(), 0);

        san.set_mounted(spec.uuid, &[3, 7]);
        let nodes = with_region(san.as_ref(), lun, offset, size, |dev| {
            let tools = tools.clone();
            async move { tools.mounted_nodes(&dev).await }
        })
        .await
        .unwrap();
        assert_eq!(nodes, vec![3, 7]);
        // mkfs over a mounted filesystem is refused and recorded.
        let again = with_region(san.as_ref(), lun, offset, size, |dev| {
            let tools = tools.clone();
            let spec = spec.clone();
            async move { tools.mkfs(&spec, &dev).await }
        })
        .await;
        assert!(again.is_err());
        assert_eq!(san.violations().len(), 1);

        io.write_at(offset, &vec![0u8; 1 << 20]).unwrap();
        assert_eq!(san.filesystem_at(lun, offset), None);
        // A region too small for its journals is refused, as mkfs would.
        let small = with_region(san.as_ref(), lun, offset, 16 << 20, |dev| {
            let tools = tools.clone();
            let spec = spec.clone();
            async move { tools.mkfs(&spec, &dev).await }
        })
        .await;
        assert!(small.is_err());
        assert_eq!(san.count("mkfs.ocfs2"), 3);
    }
}
