//! The real csi-sanity, its whole suite (Node Service included), against
//! the plugin served in-process: Identity+Controller on one unix socket,
//! Identity+Node on another, both on ONE fake SAN, as in reality.
//!
//! The controller's `Volumes` writes the GPT and (through `FakeSan`'s
//! mkfs) a superblock record on an in-memory LUN. The node finds volumes
//! by reading that same LUN's GPT ([`SanLocator`]) and inspects them with
//! the OCFS2 tools played by the same `FakeSan`, on the partition's bytes;
//! mounts go to the fake kernel. So a volume csi-sanity creates is staged,
//! published, grown and deleted through the same state the real driver
//! would see, and any disagreement between the sides shows.
//!
//! The binary is built by `scripts/deps.sh`; without it the test fails
//! saying so (it is not skipped: the suite is the point).

use super::{serve_all, serve_controller, serve_node, unix_channel};
use crate::controller::testing::{FakeSan, CLUSTER};
use crate::disk::gpt;
use crate::disk::lun_io::{BlockIo, SparseIo};
use crate::mountinfo::MountEntry;
use crate::node::device::{volume_of, LocateError, Located, Locator};
use crate::node::mounts::{MountTable, Mounter};
use crate::node::testing::{FakeKernel, MemRecords};
use crate::node::{NodeConfig, NodeEffects, NodeVolumes};
use crate::ocfs2::layout::HeartbeatMode;
use crate::ocfs2::tools::Ocfs2Error;
use crate::volume::entry::{volume_in, VolumeEntry};
use crate::volume::id::VolumeId;
use futures::future::BoxFuture;
use ocfs2_csi_testkit::junit::{self, Outcome};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LUN: &str = "/dev/disk/by-id/fake-san-lun0";
/// Room for csi-sanity's volumes (10 GiB each by default, a few at once);
/// sparse, so only what is written takes memory.
const LUN_BYTES: u64 = 512 << 30;
/// The whole suite takes seconds; this bounds a hung run.
const SUITE_LIMIT: Duration = Duration::from_secs(600);

/// The node's view of the SAN: the LUNs' GPTs, read from the bytes the
/// controller wrote, and each volume's device made visible to the fake
/// OCFS2 tools (which is what its device-mapper map does for real).
struct SanLocator {
    san: Arc<FakeSan>,
    luns: Vec<(PathBuf, Arc<dyn BlockIo>)>,
}

impl SanLocator {
    /// The volume's map, as the real locator names it.
    fn device(guid: &uuid::Uuid) -> PathBuf {
        crate::node::device::map_path(guid)
    }

    fn entry(&self, lun: &Path, number: u32) -> io::Result<Option<VolumeEntry>> {
        let Some((_, io)) = self.luns.iter().find(|(p, _)| p == lun) else {
            return Ok(None);
        };
        let table = gpt::read(io.as_ref()).map_err(io::Error::other)?.gpt;
        Ok(table.partition(number).and_then(|p| volume_in(&table, p)))
    }
}

impl Locator for SanLocator {
    fn locate(&self, luns: &[PathBuf], id: &VolumeId) -> Result<Located, LocateError> {
        for (lun, io) in &self.luns {
            if !luns.contains(lun) {
                continue;
            }
            let table = gpt::read(io.as_ref())
                .map_err(|e| LocateError::Io {
                    lun: lun.clone(),
                    source: io::Error::other(e),
                })?
                .gpt;
            let Some(entry) = volume_of(&table, lun, id)? else {
                continue;
            };
            let device = Self::device(&entry.guid);
            let start = entry.device_extents().first().map_or(entry.offset, |e| e.0);
            self.san.expose(&device, lun, start, entry.device_bytes());
            return Ok(Located {
                lun: lun.clone(),
                device,
                kernel_bytes: entry.device_bytes(),
                entry,
            });
        }
        Err(LocateError::NoLun {
            disk: id.lun,
            luns: format!("{luns:?}"),
            unreadable: "none".into(),
        })
    }

    fn resync(&self, lun: &Path, number: u32) -> Result<u64, String> {
        let entry = self
            .entry(lun, number)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} has no partition {number}", lun.display()))?;
        let start = entry.device_extents().first().map_or(entry.offset, |e| e.0);
        self.san
            .expose(&Self::device(&entry.guid), lun, start, entry.device_bytes());
        Ok(entry.device_bytes())
    }

    fn partition_bytes(&self, lun: &Path, number: u32) -> io::Result<Option<u64>> {
        Ok(self.entry(lun, number)?.map(|e| e.device_bytes()))
    }

    fn release(&self, _: &VolumeId) -> Result<(), String> {
        Ok(())
    }

    fn release_unused(&self, _: &VolumeId) -> Result<(), String> {
        Ok(())
    }

    fn block_volumes(&self, lun: &Path) -> Result<Vec<VolumeEntry>, String> {
        let Some((_, io)) = self.luns.iter().find(|(p, _)| p == lun) else {
            return Ok(Vec::new());
        };
        let table = gpt::read(io.as_ref()).map_err(|e| e.to_string())?.gpt;
        Ok(crate::volume::entry::block_volumes(&table))
    }
}

/// The node's kernel: the fake one's mounts, with what only the SAN knows
/// filled in. A mount of a volume takes a slot in its filesystem (so the
/// slot map the controller and growth read says who has it mounted), and
/// statfs answers with the size the filesystem has on the SAN.
struct SanKernel {
    san: Arc<FakeSan>,
    kernel: FakeKernel,
    node_number: u32,
}

impl Mounter for SanKernel {
    fn mount_ocfs2<'a>(
        &'a self,
        device: &'a Path,
        target: &'a Path,
        options: &'a [String],
    ) -> BoxFuture<'a, Result<(), Ocfs2Error>> {
        Box::pin(async move {
            self.kernel.mount_ocfs2(device, target, options).await?;
            if let Some(fs) = self.san.filesystem_on(device) {
                self.san.set_mounted(fs.uuid, &[self.node_number]);
            }
            Ok(())
        })
    }

    fn bind(&self, source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        self.kernel.bind(source, target, read_only)
    }

    fn bind_device(&self, device: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        self.kernel.bind_device(device, target, read_only)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let source = self.kernel.mount_at(target)?.map(|m| m.source);
        self.kernel.unmount(target)?;
        let Some(source) = source else {
            return Ok(());
        };
        let still = self.kernel.mounts()?.iter().any(|m| m.source == source);
        if let (false, Some(fs)) = (still, self.san.filesystem_on(Path::new(&source))) {
            self.san.set_mounted(fs.uuid, &[]);
        }
        Ok(())
    }
}

impl MountTable for SanKernel {
    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        self.kernel.mounts()
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        self.kernel.mount_at(path)
    }

    fn fs_bytes(&self, path: &Path) -> io::Result<u64> {
        let m = self
            .kernel
            .mount_at(path)?
            .ok_or_else(|| io::Error::other(format!("nothing is mounted at {}", path.display())))?;
        self.san
            .filesystem_on(Path::new(&m.source))
            .map(|fs| fs.bytes)
            .ok_or_else(|| io::Error::other(format!("{} holds no filesystem", m.source)))
    }
}

/// A node of the controller's cluster, local heartbeat, on the SAN's LUN,
/// and its kernel.
fn node_on(san: &Arc<FakeSan>, disk: SparseIo, dir: &Path) -> (Arc<NodeVolumes>, Arc<SanKernel>) {
    let kernel = Arc::new(SanKernel {
        san: san.clone(),
        kernel: FakeKernel::default(),
        node_number: 1,
    });
    let cfg = NodeConfig {
        node_id: "sanity-node".into(),
        node_number: 1,
        cluster_name: CLUSTER.into(),
        heartbeat: HeartbeatMode::Local,
        luns: vec![PathBuf::from(LUN)],
        dlm_mount: dir.join("dlm"),
    };
    let effects = NodeEffects {
        mounter: kernel.clone(),
        mount_table: kernel.clone(),
        records: Arc::new(MemRecords::default()),
        locator: Arc::new(SanLocator {
            san: san.clone(),
            luns: vec![(PathBuf::from(LUN), Arc::new(disk.clone()))],
        }),
        inspector: Arc::new(san.tools()),
        marks: crate::node::holders::on_disks(std::collections::HashMap::from([(
            PathBuf::from(LUN),
            Arc::new(disk) as Arc<dyn BlockIo>,
        )])),
        tools: san.tools(),
    };
    let volumes = Arc::new(NodeVolumes::with_effects(cfg, effects));
    volumes.set_ready(None);
    (volumes, kernel)
}

fn sanity_binary() -> PathBuf {
    let cache = std::env::var_os("OCFS2_CSI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME or OCFS2_CSI_CACHE");
            Path::new(&home).join(".cache/ocfs2-csi")
        });
    cache.join("bin/csi-sanity")
}

/// What one csi-sanity run reported.
struct Report {
    passed: Vec<String>,
    failed: Vec<String>,
    /// Skipped cases by the reason given.
    skipped: BTreeMap<String, Vec<String>>,
    took: Duration,
}

impl Report {
    /// Whether every failure is csi-test failing to connect (see
    /// `csi_sanity`).
    fn only_connect_timeouts(&self) -> bool {
        !self.failed.is_empty()
            && self
                .failed
                .iter()
                .all(|f| f.contains("Connection timed out"))
    }

    fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }

    fn print(&self, what: &str) {
        println!(
            "csi-sanity ({what}): {} passed, {} failed, {} skipped in {:.2} s",
            self.passed.len(),
            self.failed.len(),
            self.skipped_count(),
            self.took.as_secs_f64()
        );
        for (why, names) in &self.skipped {
            let note = match why.as_str() {
                "pending" => " (marked pending in csi-sanity itself)",
                w if w.starts_with("Controller Service not provided") => {
                    " (the node plugin's Identity names no Controller Service, in the lab \
                     too; run below against one endpoint)"
                }
                _ => "",
            };
            println!("  {} skipped: {why}{note}", names.len());
            for name in names {
                println!("      - {name}");
            }
        }
        for f in &self.failed {
            println!("  FAILED {f}");
        }
    }
}

/// How long [`slow_handshake`] holds a new connection before the server
/// sees it: far longer than csi-test takes from its dial to its first
/// look at the connection's state, unless the machine stalls it.
const HANDSHAKE_DELAY: Duration = Duration::from_millis(250);

/// A socket at `front` that forwards each connection to `back`, starting
/// [`HANDSHAKE_DELAY`] after it was made. csi-test's `utils.Connect` reads
/// the connection's state once and then waits a minute for it to change,
/// so a connection already Ready at that first read (a unix socket on a
/// loaded machine) is never seen as ready: "Connection timed out". Held
/// back, the handshake ends after that read. Every byte passes unchanged.
fn slow_handshake(front: &Path, back: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(front).expect("bind the front socket");
    let back = back.to_path_buf();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let back = back.clone();
            tokio::spawn(async move {
                tokio::time::sleep(HANDSHAKE_DELAY).await;
                if let Ok(mut server) = tokio::net::UnixStream::connect(&back).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

/// Runs the real csi-sanity against `node` and `controller` (sockets),
/// with `extra` arguments; fails on any failed case.
///
/// One run again, said out loud, when every failure is csi-test's own
/// connect giving up ("Connection timed out" before any RPC: see
/// [`slow_handshake`], which makes it rare). It is not our server.
async fn csi_sanity(dir: &Path, node: &Path, controller: &Path, extra: &[&str]) -> Report {
    match csi_sanity_once(dir, node, controller, extra).await {
        Ok(report) => report,
        Err((report, _)) if report.only_connect_timeouts() => {
            println!(
                "csi-sanity: its own connect timed out ({}); running the suite again",
                report.failed.join("; ")
            );
            csi_sanity_once(dir, node, controller, extra)
                .await
                .unwrap_or_else(|(_, why)| panic!("{why}"))
        }
        Err((_, why)) => panic!("{why}"),
    }
}

async fn csi_sanity_once(
    dir: &Path,
    node: &Path,
    controller: &Path,
    extra: &[&str],
) -> Result<Report, (Report, String)> {
    let sanity = sanity_binary();
    assert!(
        sanity.is_file(),
        "{} is missing: run scripts/deps.sh to build csi-sanity (this test runs the real one)",
        sanity.display()
    );
    // StorageClass parameters: the node runs local heartbeat, so its
    // volumes must be made for it.
    let params = dir.join("parameters.yaml");
    std::fs::write(&params, "heartbeat: local\n").unwrap();
    let junit = dir.join("junit.xml");
    let _ = std::fs::remove_file(&junit);
    let started = Instant::now();
    let run = tokio::process::Command::new(&sanity)
        .arg("-csi.endpoint")
        .arg(format!("unix://{}", node.display()))
        .arg("-csi.controllerendpoint")
        .arg(format!("unix://{}", controller.display()))
        .arg("-csi.mountdir")
        .arg(dir.join("mnt"))
        .arg("-csi.stagingdir")
        .arg(dir.join("stage"))
        .arg("-csi.testvolumeparameters")
        .arg(&params)
        // Small volumes: the fake SAN copies every byte of a snapshot, in a
        // debug build (the sizes themselves are tested elsewhere).
        .args(["-csi.testvolumesize", "67108864"])
        .args(["-csi.testvolumeexpandsize", "134217728"])
        .arg("-csi.junitfile")
        .arg(&junit)
        .arg("-ginkgo.no-color")
        .args(extra)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SUITE_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("csi-sanity still running after {SUITE_LIMIT:?}"))
        .expect("running csi-sanity");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let xml = std::fs::read_to_string(&junit).unwrap_or_else(|e| {
        panic!(
            "no junit report ({e}); csi-sanity said:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut report = Report {
        passed: Vec::new(),
        failed: Vec::new(),
        skipped: BTreeMap::new(),
        took,
    };
    for case in junit::cases(&xml) {
        match case.outcome {
            Outcome::Passed => report.passed.push(case.name),
            Outcome::Failed(why) => report.failed.push(format!("{}: {why}", case.name)),
            Outcome::Skipped(why) => report.skipped.entry(why).or_default().push(case.name),
            Outcome::Pending => report
                .skipped
                .entry("pending".into())
                .or_default()
                .push(case.name),
        }
    }
    if !report.failed.is_empty() || !out.status.success() {
        report.print("failed run");
        let tail: Vec<&str> = stdout.lines().rev().take(120).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let why = format!(
            "csi-sanity: {} failed (exit {:?}); its output's end:\n{}",
            report.failed.len(),
            out.status.code(),
            tail.join("\n")
        );
        return Err((report, why));
    }
    Ok(report)
}

/// Node Service's two whole-lifecycle specs. csi-sanity runs them only
/// when the NODE endpoint's Identity names a Controller Service, which a
/// node plugin of a split deployment (ours, in the lab too) does not.
const LIFECYCLE: [&str; 2] = [
    "Node Service should work",
    "Node Service should be idempotent",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csi_sanity_whole_suite_against_the_fakes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (controller_sock, node_sock, all_sock) = (
        dir.join("controller.sock"),
        dir.join("node.sock"),
        dir.join("all.sock"),
    );

    let san = FakeSan::new();
    let disk = SparseIo::new(512, LUN_BYTES);
    let lun = san.open_lun(LUN, Arc::new(disk.clone())).await;
    let controller = Arc::new(san.volumes(vec![lun]));
    let (node, kernel) = node_on(&san, disk.clone(), &dir);
    let served = [
        serve_controller(&controller_sock, controller.clone()),
        serve_node(&node_sock, node.clone()),
        serve_all(&all_sock, controller, node),
    ];
    // All listen before csi-sanity starts (it does not wait).
    for socket in [&controller_sock, &node_sock, &all_sock] {
        unix_channel(socket).await;
    }
    // csi-sanity reaches each through a front that holds its handshake.
    let mut fronts = Vec::new();
    let [controller_sock, node_sock, all_sock] =
        [&controller_sock, &node_sock, &all_sock].map(|back| {
            let front = back.with_extension("front.sock");
            fronts.push(slow_handshake(&front, back));
            front
        });

    // 1. As deployed (and as the lab runs it): the whole suite, the node
    // plugin and the controller plugin on their own sockets.
    let split = csi_sanity(&dir, &node_sock, &controller_sock, &[]).await;
    split.print("whole suite, split plugins");
    // 2. The lifecycle specs the split run skips, against one endpoint
    // serving every service.
    let focus = format!("-ginkgo.focus=({})$", LIFECYCLE.join("|"));
    let whole = csi_sanity(&dir, &all_sock, &all_sock, &[&focus]).await;
    println!(
        "csi-sanity (one endpoint, lifecycle specs): {} passed in {:.2} s",
        whole.passed.len(),
        whole.took.as_secs_f64()
    );
    let block_args = ["-csi.testvolumeaccesstype", "block"];
    let whole_block = csi_sanity(
        &dir,
        &all_sock,
        &all_sock,
        &[&focus, block_args[0], block_args[1]],
    )
    .await;
    // 3. Raw block volumes: every spec again, asking for block access.
    let block = csi_sanity(&dir, &node_sock, &controller_sock, &block_args).await;
    block.print("whole suite, split plugins, block access");
    for front in fronts {
        front.abort();
    }
    for served in served {
        served.stop().await;
    }

    assert!(
        block.passed.len() >= 40,
        "too few passed with block access: {:?}",
        block.passed
    );
    assert!(
        split.passed.len() >= 40,
        "too few passed: {:?}",
        split.passed
    );
    // The snapshot specs run, in both modes: none is skipped any more.
    for run in [&split, &block] {
        let skipped: Vec<_> = run
            .skipped
            .iter()
            .filter(|(why, _)| why.to_lowercase().contains("snapshot"))
            .collect();
        assert!(skipped.is_empty(), "snapshot specs skipped: {skipped:?}");
        let passed = run.passed.iter().filter(|p| p.contains("Snapshot")).count();
        assert!(passed >= 10, "snapshot specs passed: {:?}", run.passed);
    }
    for name in LIFECYCLE {
        for run in [&whole, &whole_block] {
            assert!(
                run.passed.iter().any(|p| p == name),
                "{name} did not pass on one endpoint: {:?}",
                run.passed
            );
        }
    }
    // Nothing left behind: no volume on the LUN, a valid table, no mount.
    let table = gpt::read(&disk)
        .expect("a valid table after csi-sanity")
        .gpt;
    let left: Vec<_> = table
        .partitions
        .iter()
        .filter_map(|p| volume_in(&table, p))
        .collect();
    assert!(left.is_empty(), "csi-sanity left volumes: {left:?}");
    let snapshots = crate::volume::snapshot::snapshots(&table);
    assert!(
        snapshots.is_empty(),
        "csi-sanity left snapshots: {snapshots:?}"
    );
    assert_eq!(kernel.kernel.table(), vec![], "csi-sanity left mounts");
    assert_eq!(san.violations(), Vec::<String>::new());
    // NodeExpandVolume grew a filesystem (its partition grown first).
    assert!(san.count("tunefs.ocfs2 -S") >= 1, "{:?}", san.commands());
}

#[test]
fn only_a_failed_connect_is_run_again() {
    let report = |failed: &[&str]| Report {
        passed: Vec::new(),
        failed: failed.iter().map(|f| f.to_string()).collect(),
        skipped: BTreeMap::new(),
        took: Duration::ZERO,
    };
    assert!(report(&["a: Unexpected error: Connection timed out"]).only_connect_timeouts());
    assert!(!report(&[]).only_connect_timeouts());
    assert!(!report(&["a: Connection timed out", "b: Expected <x>"]).only_connect_timeouts());
}
