//! Fakes of the node's side effects, for in-process tests of
//! [`NodeVolumes`] (and a csi-sanity run against it): a kernel whose mount
//! table the fake mounter updates, stage records in memory, a locator and
//! an inspector that know the volumes they were given. No root, no loop
//! device, no o2cb.
//!
//! What stays real: the directories a stage or publish creates and removes
//! (in a temporary folder), statfs of a mounted path (which here is the
//! temporary folder's filesystem).

use super::device::{LocateError, Located, Locator};
use super::filesystem::Inspector;
use super::mounts::{MountTable, Mounter};
use super::records::{StageRecord, StageRecords};
use super::volumes::{NodeConfig, NodeEffects, NodeVolumes};
use crate::disk::lun_io::{BlockIo, SparseIo};
use crate::mountinfo::MountEntry;
use crate::ocfs2::layout::{HeartbeatMode, Layout};
use crate::ocfs2::tools::{FsInfo, Ocfs2Error, Ocfs2Tools};
use crate::tools::{Cmd, Runner, ToolError, ToolOutput};
use crate::volume::entry::{Content, State, VolumeEntry, BLOCK_HEADER_BYTES, FIRST_VOLUME_NUMBER};
use crate::volume::id::VolumeId;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use uuid::Uuid;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct KernelState {
    mounts: Vec<MountEntry>,
    /// `major:minor` of each device mounted so far.
    devices: HashMap<String, String>,
    ocfs2_mounts: usize,
    /// Errors the next OCFS2 mounts return, in order.
    mount_failures: Vec<String>,
    busy: HashSet<PathBuf>,
    /// The next OCFS2 mount says it has started, then waits to be let go.
    held: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
    /// What statfs says every OCFS2 filesystem holds (see `set_fs_bytes`).
    fs_bytes: Option<u64>,
}

/// This node's mounts: the fake mounter changes the table it answers with.
///
/// Like the kernel: a mount needs an existing directory; a bind mount of a
/// path takes the device of the mount that holds it; unmount takes the
/// topmost mount off a path and fails with EINVAL where nothing is mounted
/// (EBUSY where told to).
#[derive(Default)]
pub(crate) struct FakeKernel {
    state: Mutex<KernelState>,
}

impl FakeKernel {
    /// OCFS2 mounts made so far (binds not counted).
    pub(crate) fn ocfs2_mounts(&self) -> usize {
        lock(&self.state).ocfs2_mounts
    }

    /// The next OCFS2 mount fails as mount.ocfs2 would, with `stderr`.
    pub(crate) fn fail_next_mount(&self, stderr: &str) {
        lock(&self.state).mount_failures.push(stderr.into());
    }

    /// The next OCFS2 mount stops half-way (as a slow mount.ocfs2 does):
    /// the first receiver gets a message once it has started, and the
    /// mount goes on when the sender is sent to (or dropped).
    pub(crate) fn hold_next_mount(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (started_tx, started_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        lock(&self.state).held = Some((started_tx, go_rx));
        (started_rx, go_tx)
    }

    /// statfs of a mounted volume reports `bytes` (else the real statfs).
    pub(crate) fn set_fs_bytes(&self, bytes: u64) {
        lock(&self.state).fs_bytes = Some(bytes);
    }

    /// Unmounting `path` fails with EBUSY (something holds it open).
    pub(crate) fn hold_open(&self, path: &Path) {
        lock(&self.state).busy.insert(path.to_path_buf());
    }

    /// The filesystem mounted from `device` goes read-only (as after an
    /// I/O error with errors=remount-ro), on every mount of it.
    pub(crate) fn fs_goes_read_only(&self, device: &Path) {
        let mut s = lock(&self.state);
        for m in s.mounts.iter_mut() {
            if Path::new(&m.source) == device {
                m.super_options = vec!["ro".into()];
            }
        }
    }

    /// Mounts something that is not ours at `path` (a directory).
    pub(crate) fn mount_other(&self, fs_type: &str, source: &str, path: &Path) {
        let mut s = lock(&self.state);
        let device = device_number(&mut s, source);
        s.mounts.push(MountEntry {
            device,
            root: "/".into(),
            mount_point: path.to_path_buf(),
            options: vec!["rw".into()],
            fs_type: fs_type.into(),
            source: source.into(),
            super_options: vec!["rw".into()],
        });
    }

    /// Every mount, as the table lists them.
    pub(crate) fn table(&self) -> Vec<MountEntry> {
        lock(&self.state).mounts.clone()
    }
}

fn device_number(s: &mut KernelState, source: &str) -> String {
    let next = s.devices.len() + 1;
    s.devices
        .entry(source.to_string())
        .or_insert_with(|| format!("253:{next}"))
        .clone()
}

fn not_a_directory(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory", path.display()),
        ))
    }
}

impl FakeKernel {
    fn mount_now(
        &self,
        device: &Path,
        target: &Path,
        options: &[String],
    ) -> Result<(), Ocfs2Error> {
        let mut s = lock(&self.state);
        let failed = |stderr: String| {
            Ocfs2Error::Tool(ToolError::Failed {
                command: format!("mount.ocfs2 {} {}", device.display(), target.display()),
                code: Some(1),
                stderr,
            })
        };
        if !s.mount_failures.is_empty() {
            let stderr = s.mount_failures.remove(0);
            return Err(failed(stderr));
        }
        not_a_directory(target).map_err(|e| failed(e.to_string()))?;
        let source = device.display().to_string();
        let number = device_number(&mut s, &source);
        let ro = options.iter().any(|o| o == "ro");
        let mut per_mount = vec![if ro { "ro" } else { "rw" }.to_string()];
        per_mount.extend(options.iter().filter(|o| *o != "ro" && *o != "rw").cloned());
        s.mounts.push(MountEntry {
            device: number,
            root: "/".into(),
            mount_point: target.to_path_buf(),
            options: per_mount,
            fs_type: "ocfs2".into(),
            source,
            super_options: vec![
                if ro { "ro" } else { "rw" }.into(),
                "heartbeat=local".into(),
            ],
        });
        s.ocfs2_mounts += 1;
        Ok(())
    }
}

impl Mounter for FakeKernel {
    fn mount_ocfs2<'a>(
        &'a self,
        device: &'a Path,
        target: &'a Path,
        options: &'a [String],
    ) -> BoxFuture<'a, Result<(), Ocfs2Error>> {
        let held = lock(&self.state).held.take();
        Box::pin(async move {
            if let Some((started, go)) = held {
                let _ = started.send(());
                let _ = go.await;
            }
            self.mount_now(device, target, options)
        })
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        not_a_directory(target)?;
        let mut s = lock(&self.state);
        // The mount holding `source`: the last listed whose mount point is
        // its longest prefix.
        let holder = s
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| source.starts_with(&m.mount_point))
            .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
            .map(|(_, m)| m.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let inside = source
            .strip_prefix(&holder.mount_point)
            .unwrap_or(Path::new(""));
        s.mounts.push(MountEntry {
            root: holder.root.join(inside),
            mount_point: target.to_path_buf(),
            options: vec![if read_only { "ro" } else { "rw" }.into()],
            ..holder
        });
        Ok(())
    }

    /// As the kernel lists it: a bind of a node of /dev's filesystem.
    fn bind_device(&self, device: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        if !target.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a file", target.display()),
            ));
        }
        let mut s = lock(&self.state);
        s.mounts.push(MountEntry {
            device: "0:6".into(),
            root: Path::new("/mapper").join(device.file_name().unwrap_or_default()),
            mount_point: target.to_path_buf(),
            options: vec![if read_only { "ro" } else { "rw" }.into()],
            fs_type: "devtmpfs".into(),
            source: "udev".into(),
            super_options: vec!["rw".into()],
        });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        let Some(at) = s.mounts.iter().rposition(|m| m.mount_point == target) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if s.busy.contains(target) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        s.mounts.remove(at);
        Ok(())
    }
}

impl MountTable for FakeKernel {
    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        Ok(self.table())
    }

    /// As the real one: nothing is mounted on a path that does not exist.
    fn fs_bytes(&self, path: &Path) -> io::Result<u64> {
        match lock(&self.state).fs_bytes {
            Some(bytes) => Ok(bytes),
            None => {
                let s = nix::sys::statvfs::statvfs(path)
                    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
                Ok(s.blocks() as u64 * s.fragment_size() as u64)
            }
        }
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        if !path.exists() {
            return Ok(None);
        }
        Ok(lock(&self.state)
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
            .cloned())
    }
}

/// Stage records in memory.
#[derive(Default)]
pub(crate) struct MemRecords {
    records: Mutex<HashMap<Uuid, StageRecord>>,
}

impl MemRecords {
    pub(crate) fn len(&self) -> usize {
        lock(&self.records).len()
    }
}

impl StageRecords for MemRecords {
    fn get(&self, guid: &Uuid) -> io::Result<Option<StageRecord>> {
        Ok(lock(&self.records).get(guid).cloned())
    }

    fn put(&self, record: &StageRecord) -> io::Result<()> {
        lock(&self.records).insert(record.partition_guid, record.clone());
        Ok(())
    }

    fn remove(&self, guid: &Uuid) -> io::Result<()> {
        lock(&self.records).remove(guid);
        Ok(())
    }

    fn all(&self) -> io::Result<Vec<Result<StageRecord, (PathBuf, io::Error)>>> {
        Ok(lock(&self.records).values().cloned().map(Ok).collect())
    }
}

/// A volume the fake node can find: where it is, what it holds.
#[derive(Clone, Debug)]
pub(crate) struct FakeVolume {
    pub(crate) id: VolumeId,
    pub(crate) located: Located,
    pub(crate) fs: FsInfo,
    /// Its kernel partition is gone (another host deleted it, the LUN
    /// vanished).
    pub(crate) vanished: bool,
}

impl FakeVolume {
    /// The volume context CreateVolume would have returned.
    pub(crate) fn context(&self) -> HashMap<String, String> {
        HashMap::from([
            ("fsUuid".to_string(), self.fs.uuid.to_string()),
            (
                "clusterName".to_string(),
                self.fs.cluster_name.clone().unwrap_or_default(),
            ),
            (
                "heartbeat".to_string(),
                if self.fs.global_heartbeat {
                    "global"
                } else {
                    "local"
                }
                .to_string(),
            ),
        ])
    }
}

/// The LUNs' tables as a map: volumes by partition GUID.
#[derive(Default)]
pub(crate) struct FakeLocator {
    /// Disk GUID and path of each LUN.
    luns: Mutex<Vec<(Uuid, PathBuf)>>,
    volumes: Mutex<HashMap<Uuid, FakeVolume>>,
    /// Volumes whose map was released (unstage), in order.
    pub(crate) released: Mutex<Vec<Uuid>>,
    /// Maps held open (by a pod): `release_unused` refuses them.
    pub(crate) busy_maps: Mutex<HashSet<Uuid>>,
    /// A volume whose entry turns Deleting once it has been located this
    /// many times (a DeleteVolume landing between two looks of a stage).
    pub(crate) deleting_after: Mutex<Option<(Uuid, usize)>>,
}

impl FakeLocator {
    pub(crate) fn add_lun(&self, disk: Uuid, path: &Path) {
        lock(&self.luns).push((disk, path.to_path_buf()));
    }

    pub(crate) fn add(&self, volume: FakeVolume) {
        lock(&self.volumes).insert(volume.id.partition, volume);
    }

    pub(crate) fn vanish(&self, partition: &Uuid) {
        if let Some(v) = lock(&self.volumes).get_mut(partition) {
            v.vanished = true;
        }
    }

    /// A partition sync resized this node's kernel partition of the volume.
    pub(crate) fn set_kernel_bytes(&self, partition: &Uuid, bytes: u64) {
        if let Some(v) = lock(&self.volumes).get_mut(partition) {
            v.located.kernel_bytes = bytes;
        }
    }

    /// The controller rewrote the volume's entry to `state`.
    pub(crate) fn set_state(&self, partition: &Uuid, state: State) {
        if let Some(v) = lock(&self.volumes).get_mut(partition) {
            v.located.entry.state = state;
        }
    }

    fn by_number(&self, lun: &Path, number: u32) -> Option<FakeVolume> {
        lock(&self.volumes)
            .values()
            .find(|v| v.located.lun == lun && v.located.entry.number == number && !v.vanished)
            .cloned()
    }
}

impl Locator for FakeLocator {
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
        let lun = lock(&self.luns)
            .iter()
            .find(|(disk, path)| *disk == id.lun && luns.contains(path))
            .map(|(_, path)| path.clone())
            .ok_or_else(|| LocateError::NoLun {
                disk: id.lun,
                luns: format!("{luns:?}"),
                unreadable: "none".into(),
            })?;
        if let Some((guid, left)) = lock(&self.deleting_after).as_mut() {
            if *guid == id.partition {
                if *left == 0 {
                    self.set_state(guid, State::Deleting);
                } else {
                    *left -= 1;
                }
            }
        }
        match lock(&self.volumes).get(&id.partition) {
            Some(v) if v.located.lun == lun && !v.vanished => {
                crate::node::device::stageable(v.located.entry.state, &lun, id.partition)?;
                Ok(v.located.clone())
            }
            _ => Err(LocateError::NoPartition {
                lun,
                partition: id.partition,
            }),
        }
    }

    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String> {
        self.by_number(lun, number)
            .map(|v| v.located.kernel_bytes)
            .ok_or_else(|| format!("{} has no kernel partition {number}", lun.display()))
    }

    fn partition_bytes(&self, lun: &Path, number: u32) -> io::Result<Option<u64>> {
        Ok(self.by_number(lun, number).map(|v| v.located.kernel_bytes))
    }

    fn release(&self, id: &VolumeId) -> Result<(), String> {
        lock(&self.released).push(id.partition);
        Ok(())
    }

    fn release_unused(&self, id: &VolumeId) -> Result<(), String> {
        if lock(&self.busy_maps).contains(&id.partition) {
            return Err("held open 1 time(s)".into());
        }
        self.release(id)
    }

    fn block_volumes(&self, lun: &Path) -> Result<Vec<VolumeEntry>, String> {
        Ok(lock(&self.volumes)
            .values()
            .filter(|v| v.located.lun == lun && !v.vanished)
            .filter(|v| v.located.entry.content == Content::Block)
            .map(|v| v.located.entry.clone())
            .collect())
    }
}

/// Filesystems by device.
#[derive(Default)]
pub(crate) struct FakeInspector {
    filesystems: Mutex<HashMap<PathBuf, FsInfo>>,
}

impl FakeInspector {
    pub(crate) fn put(&self, device: &Path, fs: Option<FsInfo>) {
        let mut map = lock(&self.filesystems);
        match fs {
            Some(fs) => map.insert(device.to_path_buf(), fs),
            None => map.remove(device),
        };
    }
}

impl Inspector for FakeInspector {
    fn inspect<'a>(
        &'a self,
        device: &'a Path,
    ) -> BoxFuture<'a, Result<Option<FsInfo>, Ocfs2Error>> {
        let fs = lock(&self.filesystems).get(device).cloned();
        Box::pin(std::future::ready(Ok(fs)))
    }
}

/// A node without the OCFS2 tools: every tool run fails as if missing.
/// Growth past its checks needs them, and is proven in the lab.
pub(crate) struct NoTools;

impl Runner for NoTools {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(std::future::ready(Err(ToolError::NotFound {
            program: cmd.program,
            dirs: &[],
        })))
    }
}

pub(crate) const CLUSTER: &str = "fakeclu";

/// A node with local heartbeat, ready, with one LUN and the fakes it was
/// built from; paths for staging and publishing live in `dir`.
pub(crate) struct FakeNode {
    pub(crate) volumes: Arc<NodeVolumes>,
    pub(crate) kernel: Arc<FakeKernel>,
    pub(crate) records: Arc<MemRecords>,
    pub(crate) locator: Arc<FakeLocator>,
    pub(crate) inspector: Arc<FakeInspector>,
    /// The LUN's disk GUID and path.
    pub(crate) lun: (Uuid, PathBuf),
    /// The LUN's bytes, where holder marks go.
    pub(crate) disk: SparseIo,
    /// A temporary folder for staging and target paths (canonical, so it
    /// reads as the mount table lists it).
    pub(crate) dir: PathBuf,
    _dir: tempfile::TempDir,
    next_number: Mutex<u32>,
}

impl FakeNode {
    /// Node number 1 of cluster [`CLUSTER`], local heartbeat, one LUN.
    pub(crate) fn local_heartbeat() -> FakeNode {
        FakeNode::local_heartbeat_on(Uuid::new_v4())
    }

    /// The same, on the LUN whose disk GUID is `disk` (the one a fake
    /// controller puts in its volume IDs: then [`FakeNode::add_volume`]
    /// with the CreateVolume name yields the ID CreateVolume returned).
    pub(crate) fn local_heartbeat_on(disk: Uuid) -> FakeNode {
        FakeNode::local_heartbeat_with(disk, Arc::new(NoTools))
    }

    /// The same, running the OCFS2 tools through `tools`.
    pub(crate) fn local_heartbeat_with(disk: Uuid, tools: Arc<dyn Runner>) -> FakeNode {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().canonicalize().expect("a canonical path");
        let lun = (disk, PathBuf::from("/dev/disk/by-id/fake-lun0"));
        let kernel = Arc::new(FakeKernel::default());
        let records = Arc::new(MemRecords::default());
        let locator = Arc::new(FakeLocator::default());
        locator.add_lun(lun.0, &lun.1);
        let inspector = Arc::new(FakeInspector::default());
        let disk = SparseIo::new(512, 1 << 40);
        let marks = crate::node::holders::on_disks(HashMap::from([(
            lun.1.clone(),
            Arc::new(disk.clone()) as Arc<dyn BlockIo>,
        )]));
        let cfg = NodeConfig {
            node_id: "fake-node".into(),
            node_number: 1,
            cluster_name: CLUSTER.into(),
            heartbeat: HeartbeatMode::Local,
            luns: vec![lun.1.clone()],
            dlm_mount: dir.join("dlm"),
        };
        let effects = NodeEffects {
            mounter: kernel.clone(),
            mount_table: kernel.clone(),
            records: records.clone(),
            locator: locator.clone(),
            inspector: inspector.clone(),
            marks,
            tools: Ocfs2Tools::new(tools),
        };
        let volumes = Arc::new(NodeVolumes::with_effects(cfg, effects));
        volumes.set_ready(None);
        FakeNode {
            volumes,
            kernel,
            records,
            locator,
            inspector,
            lun,
            disk,
            dir,
            _dir: tmp,
            next_number: Mutex::new(FIRST_VOLUME_NUMBER),
        }
    }

    /// A formatted volume called `name` of `bytes` on the LUN, with local
    /// heartbeat (as CreateVolume leaves it: partition GUID and filesystem
    /// UUID derived from the name).
    pub(crate) fn add_volume(&self, name: &str, bytes: u64) -> FakeVolume {
        let number = {
            let mut n = lock(&self.next_number);
            *n += 1;
            *n - 1
        };
        let partition = crate::volume::id::partition_guid(name);
        let volume = FakeVolume {
            id: VolumeId {
                lun: self.lun.0,
                partition,
            },
            located: Located {
                lun: self.lun.1.clone(),
                entry: VolumeEntry {
                    number,
                    guid: partition,
                    name: name.into(),
                    state: State::Ready,
                    content: Content::Ocfs2,
                    heartbeat: HeartbeatMode::Local,
                    layout: Layout {
                        slots: 8,
                        block_size: 4096,
                        cluster_size: 4096,
                        journal_size: 8 << 20,
                    },
                    offset: u64::from(number) << 30,
                    size: bytes,
                    extents: vec![crate::volume::extents::Extent {
                        offset: u64::from(number) << 30,
                        size: bytes,
                    }],
                },
                device: crate::node::device::map_path(&partition),
                kernel_bytes: bytes,
            },
            fs: FsInfo {
                label: name.into(),
                uuid: crate::volume::id::filesystem_uuid(name),
                slots: 8,
                block_size: 4096,
                cluster_size: 4096,
                cluster_name: Some(CLUSTER.into()),
                global_heartbeat: false,
            },
            vanished: false,
        };
        self.locator.add(volume.clone());
        self.inspector
            .put(&volume.located.device, Some(volume.fs.clone()));
        volume
    }

    /// A raw block volume called `name` whose device holds `bytes`, with
    /// its header's identity written (as CreateVolume leaves it).
    pub(crate) fn add_block_volume(&self, name: &str, bytes: u64) -> FakeVolume {
        let mut v = self.add_volume(name, bytes + BLOCK_HEADER_BYTES);
        v.located.entry.content = Content::Block;
        v.located.entry.layout = Layout {
            slots: 0,
            block_size: 4096,
            cluster_size: 4096,
            journal_size: 1 << 20,
        };
        v.located.kernel_bytes = bytes;
        self.inspector.put(&v.located.device, None);
        self.locator.add(v.clone());
        crate::volume::block_header::write_identity(
            &self.disk,
            v.located.entry.offset,
            &v.id.partition,
        )
        .expect("the fake disk takes writes");
        v
    }

    /// The nodes whose marks `v`'s header holds.
    pub(crate) fn holders(&self, v: &FakeVolume) -> Vec<u8> {
        crate::volume::block_header::read_holders(
            &self.disk,
            v.located.entry.offset,
            &v.id.partition,
        )
        .expect("the fake disk reads")
        .expect("the header is the volume's")
        .iter()
        .map(|h| h.number)
        .collect()
    }

    /// A path under the node's temporary folder (not created).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
