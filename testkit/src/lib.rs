//! The harness ocfs2-csi's integration tests, demos and benchmarks share
//! (`lab`: the QEMU lab; `kube`: a real kube-apiserver). Here: a real
//! `ocfs2-csi controller` process on file-backed LUNs, started on a free TCP
//! port, waited on until Probe says ready, killed when dropped. Plus checks
//! that read the LUN with the real tools (sgdisk, fsck.ocfs2 and debugfs.ocfs2
//! through a loop device).

pub mod appender;
pub mod junit;
pub mod kube;
pub mod kube_nodes;
pub mod lab;
pub mod report;
pub mod storage_e2e;

use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::identity_client::IdentityClient;
use ocfs2_csi::csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use ocfs2_csi::csi::{
    CapacityRange, ControllerExpandVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    ProbeRequest, VolumeCapability,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The repository root (where scripts/ and e2e/ live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives in the repository")
        .to_path_buf()
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
/// The cluster ID of the test controller (o2cb cluster "testclu").
pub const CLUSTER_ID: &str = "testclu-id";

pub struct Controller {
    pub child: Child,
    pub endpoint: String,
    pub log: PathBuf,
    pub luns: Vec<PathBuf>,
    /// Where its metrics are served (`--metrics-address`).
    pub metrics_address: String,
}

/// The body of `GET path` from an HTTP server at `address` (HOST:PORT).
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response from {address}: {response:?}"));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare
/// name) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The driver binary: Cargo names it for integration tests; examples find it
/// beside their own folder (target/PROFILE/examples/x -> target/PROFILE).
pub fn binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_ocfs2-csi") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ocfs2-csi"))
        .expect("examples live two folders below the binary");
    assert!(
        bin.is_file(),
        "{} is missing; build it first (cargo build --bins --examples)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sparse file LUN of `bytes`.
pub fn sparse_lun(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    path
}

impl Controller {
    /// Starts the controller on `luns` (each named in --init-lun: the
    /// tests' LUNs are new files) and waits until it is ready.
    pub async fn start(luns: &[PathBuf], log_dir: &Path) -> Controller {
        Controller::start_with(luns, log_dir, &[]).await
    }

    /// `start` with `extra` arguments.
    pub async fn start_with(luns: &[PathBuf], log_dir: &Path, extra: &[&str]) -> Controller {
        let mut args: Vec<&str> = extra.to_vec();
        for l in luns {
            args.push("--init-lun");
            args.push(l.to_str().expect("UTF-8 LUN path"));
        }
        let c = Controller::spawn_with(luns, log_dir, &args);
        c.wait_ready().await;
        c
    }

    /// Starts the controller on `luns` with `extra` arguments and does not
    /// wait for it to be ready: for a controller expected to refuse.
    pub fn spawn_with(luns: &[PathBuf], log_dir: &Path, extra: &[&str]) -> Controller {
        let port = free_port();
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let log = log_dir.join(format!("controller-{port}.log"));
        let metrics_address = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(binary());
        cmd.args(["controller", "--endpoint", &endpoint])
            .args(["--cluster-name", "testclu", "--log", "debug"])
            .args(["--metrics-address", &metrics_address])
            .args(extra);
        // The lab's cluster ID (testkit::lab's nodes run `{cluster}-id`),
        // unless the test plays another installation.
        if !extra.contains(&"--cluster-id") {
            cmd.args(["--cluster-id", CLUSTER_ID]);
        }
        for l in luns {
            cmd.arg("--lun").arg(l);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ocfs2-csi");
        Controller {
            child,
            endpoint,
            log,
            luns: luns.to_vec(),
            metrics_address,
        }
    }

    /// Waits until the log holds `text` (the process may have exited);
    /// panics with the log after `limit`.
    pub fn wait_log(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log_text();
            if log.contains(text) {
                return log;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "controller log lacks {text:?} (exit: {exited:?}); log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its metrics now (the Prometheus text).
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_address, "/metrics")
    }

    pub fn url(&self) -> String {
        self.endpoint.replace("tcp://", "http://")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut id) = IdentityClient::connect(self.url()).await {
                if let Ok(r) = id.probe(ProbeRequest {}).await {
                    if r.into_inner().ready == Some(true) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "controller not ready within 60 s; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn client(&self) -> ControllerClient<Channel> {
        ControllerClient::connect(self.url()).await.unwrap()
    }

    /// Waits until this controller holds the writer lease of every LUN
    /// (after a crash of the previous one, the lease time must pass first).
    pub async fn wait_writer(&self) {
        use ocfs2_csi::disk::{lease, lun_io::LunFile};
        let me = format!(" pid {}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(120);
        for lun in &self.luns {
            loop {
                let io = LunFile::open_read_only(lun).unwrap();
                match lease::read(&io) {
                    // Renewed once: past the claim's settle pause, when it
                    // is not the writer yet.
                    Ok(Some(l)) if l.owner_name.ends_with(&me) && !l.released && l.counter > 0 => {
                        break
                    }
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never became the writer of {}; log:\n{}",
                    self.endpoint,
                    lun.display(),
                    self.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills it at once (SIGKILL): a crash, nothing released.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it as Kubernetes stops a pod: SIGTERM (it releases its
    /// writer leases, so the next controller on these LUNs serves at once),
    /// then SIGKILL if it has not exited within 30 s.
    pub fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn create_request(name: &str, bytes: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        parameters: HashMap::new(),
        ..Default::default()
    }
}

pub fn expand_request(volume_id: &str, bytes: u64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: volume_id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

pub fn delete_request(volume_id: &str) -> DeleteVolumeRequest {
    DeleteVolumeRequest {
        volume_id: volume_id.into(),
        ..Default::default()
    }
}

/// Runs a command and returns (success, stdout + stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `sgdisk -v` must find no problems.
pub fn assert_gpt_valid(lun: &Path) {
    let (ok, text) = run("sgdisk", &["-v", lun.to_str().unwrap()]);
    assert!(
        ok && text.contains("No problems found"),
        "sgdisk -v {}: {text}",
        lun.display()
    );
}

/// A partition as read back by our own GPT reader.
#[derive(Clone, Debug)]
pub struct Part {
    pub number: u32,
    pub guid: String,
    pub first: u64,
    pub last: u64,
    pub type_guid: String,
}

pub fn partitions(lun: &Path) -> Vec<Part> {
    use ocfs2_csi::disk::{gpt, lun_io::LunFile};
    let io = LunFile::open(lun).unwrap();
    let table = gpt::read(&io).unwrap().gpt;
    table
        .partitions
        .iter()
        .map(|p| Part {
            number: p.number,
            guid: p.unique_guid.to_string(),
            first: p.first_lba,
            last: p.last_lba,
            type_guid: p.type_guid.to_string(),
        })
        .collect()
}

impl Part {
    pub fn bytes(&self) -> u64 {
        (self.last - self.first + 1) * 512
    }
}

pub fn assert_no_overlap(parts: &[Part]) {
    let mut sorted = parts.to_vec();
    sorted.sort_by_key(|p| p.first);
    for w in sorted.windows(2) {
        assert!(
            w[0].last < w[1].first,
            "partitions {} and {} overlap: {:?}",
            w[0].number,
            w[1].number,
            w
        );
    }
}

/// Runs `f` on a loop device over a byte range of the LUN.
pub fn with_loop<T>(lun: &Path, offset: u64, size: u64, f: impl FnOnce(&str) -> T) -> T {
    let (ok, dev) = run(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &offset.to_string(),
            "--sizelimit",
            &size.to_string(),
            "--direct-io=on",
            lun.to_str().unwrap(),
        ],
    );
    assert!(ok, "losetup: {dev}");
    let dev = dev.trim().to_string();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&dev)));
    run("losetup", &["--detach", &dev]);
    match result {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// `fsck.ocfs2 -fn` on partition `part` must pass.
///
/// Run without CAP_IPC_LOCK: fsck.ocfs2 sizes its I/O cache to the whole
/// filesystem and mlocks it, 4-5 s per volume on a machine with plenty of
/// RAM; refused the lock it falls back to a small cache and runs the same
/// passes in under a second.
pub fn assert_fsck_clean(lun: &Path, part: &Part) {
    let (offset, size) = (part.first * 512, (part.last - part.first + 1) * 512);
    with_loop(lun, offset, size, |dev| {
        let (ok, text) = run(
            "setpriv",
            &[
                "--inh-caps=-ipc_lock",
                "--bounding-set=-ipc_lock",
                "fsck.ocfs2",
                "-fn",
                dev,
            ],
        );
        assert!(
            ok && text.contains("All passes succeeded"),
            "fsck.ocfs2 -fn partition {} of {}: {text}",
            part.number,
            lun.display()
        );
    });
}

/// Free bytes a fresh filesystem offers (global bitmap), via debugfs.
pub fn fs_free_bytes(lun: &Path, part: &Part) -> u64 {
    let (offset, size) = (part.first * 512, (part.last - part.first + 1) * 512);
    with_loop(lun, offset, size, |dev| {
        let (_, stats) = run("debugfs.ocfs2", &["-R", "stats", dev]);
        let bits: u32 = stats
            .lines()
            .find_map(|l| l.split("Cluster Size Bits:").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .expect("cluster size bits");
        let (_, bitmap) = run("debugfs.ocfs2", &["-R", "stat //global_bitmap", dev]);
        let line = bitmap
            .lines()
            .find(|l| l.contains("Bitmap Total:"))
            .expect("bitmap line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let total: u64 = words[2].parse().unwrap();
        let used: u64 = words[4].parse().unwrap();
        (total - used) << bits
    })
}

/// The volume whose head entry has unique GUID `guid` on `lun`, with its
/// extents, as the driver reads it.
pub fn volume_on(lun: &Path, guid: &str) -> ocfs2_csi::volume::entry::VolumeEntry {
    let io = ocfs2_csi::disk::lun_io::LunFile::open_read_only(lun).unwrap();
    let table = ocfs2_csi::volume::extents::read_valid(&io)
        .unwrap_or_else(|e| panic!("the table of {}: {e}", lun.display()))
        .gpt;
    let p = table
        .partitions
        .iter()
        .find(|p| p.unique_guid.to_string() == guid)
        .unwrap_or_else(|| panic!("volume {guid} not in the GPT of {}", lun.display()));
    ocfs2_csi::volume::entry::volume_in(&table, p).expect("a volume")
}

/// The partition with unique GUID `guid` (as the volume context names it).
pub fn partition_by_guid(lun: &Path, guid: &str) -> Part {
    partitions(lun)
        .into_iter()
        .find(|p| p.guid == guid)
        .unwrap_or_else(|| panic!("partition {guid} not in the GPT of {}", lun.display()))
}

pub fn volume_partitions(lun: &Path) -> Vec<Part> {
    partitions(lun)
        .into_iter()
        .filter(|p| p.number != 1)
        .collect()
}

/// The partition table as parsed: what a refused call must leave as it
/// was on a LUN whose first MiBs also hold a heartbeat partition, which
/// the nodes write every two seconds.
pub fn parsed_table(lun: &Path) -> ocfs2_csi::disk::gpt::Gpt {
    let io = ocfs2_csi::disk::lun_io::LunFile::open(lun).unwrap();
    ocfs2_csi::disk::gpt::read(&io).unwrap().gpt
}

/// Bytes of the GPT areas (both copies) — to prove a rejected call changed
/// nothing on disk. The writer lease sector is left out (zeroed): its
/// holder renews it every few seconds, whatever the calls do.
pub fn table_bytes(lun: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(lun).unwrap();
    let len = f.metadata().unwrap().len();
    let mut head = vec![0u8; 4 * MIB as usize];
    f.read_exact(&mut head).unwrap();
    let lease = ocfs2_csi::disk::lease::LEASE_OFFSET as usize;
    head[lease..lease + 4096].fill(0);
    let mut tail = vec![0u8; MIB as usize];
    f.seek(SeekFrom::Start(len - MIB)).unwrap();
    f.read_exact(&mut tail).unwrap();
    head.extend(tail);
    head
}

/// xorshift64*: enough randomness for kill timing and op mixes, no crate.
pub struct Rng(pub u64);

/// The crash tests' generator: seeded with `default` so a failure replays,
/// or with CRASH_SEED to explore; the seed is printed.
pub fn crash_rng(default: u64) -> Rng {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed}");
    Rng(seed | 1)
}

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Pids of every process below `root`, from the parent field of /proc/*/stat.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat_fields(&stat).and_then(|mut f| f.nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.split_off(1)
}

/// SIGKILLs the controller together with the tools it is running, as the
/// death of its container would. A lone SIGKILL leaves mkfs.ocfs2 running on
/// as an orphan, writing a partition the restarted controller works on too.
/// Returns how many tools died with it.
pub fn crash(ctl: &mut Controller) -> usize {
    let pid = ctl.child.id();
    // Stopped, it takes no further step and starts no further tool while its
    // children are collected: the crash happens here.
    let (ok, out) = run("kill", &["-STOP", &pid.to_string()]);
    assert!(ok, "kill -STOP: {out}");
    let tools = descendants(pid);
    if !tools.is_empty() {
        let pids: Vec<String> = tools.iter().map(u32::to_string).collect();
        let args: Vec<&str> = ["-KILL"]
            .into_iter()
            .chain(pids.iter().map(String::as_str))
            .collect();
        run("kill", &args);
    }
    ctl.kill();
    // A container is restarted only once all of it is dead. A tool still
    // exiting holds its loop device open, and a restarted controller's
    // detach of it would only be deferred to that last close.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(alive) = tools.iter().find(|p| is_alive(**p)) {
        assert!(
            Instant::now() < deadline,
            "tool {alive} of the killed controller still runs 60 s after its SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    tools.len()
}

/// Whether process `pid` exists and has not exited (a zombie has: its
/// files are closed).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat_fields(&stat)
            .and_then(|mut f| f.next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The fields of a /proc/PID/stat line after the command name: state,
/// then parent pid, and so on. The name may hold spaces and parentheses,
/// so they start after the last ')'.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
}

/// A partition as `sgdisk -p` prints it: number, first and last sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub number: u32,
    pub first: u64,
    pub last: u64,
}

/// The table as `sgdisk -p` reads it, independently of the driver's GPT
/// code; also checks it has the 256 entries the driver writes.
pub fn sgdisk_partitions(lun: &Path) -> Vec<Listed> {
    let (ok, text) = run("sgdisk", &["-p", lun.to_str().unwrap()]);
    assert!(ok, "sgdisk -p {}: {text}", lun.display());
    assert!(
        text.contains("Partition table holds up to 256 entries"),
        "sgdisk -p: {text}"
    );
    // The rows end where sgdisk's warnings (about a damaged copy) begin.
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()));
    let mut parts = Vec::new();
    for line in rows {
        let w: Vec<&str> = line.split_whitespace().collect();
        let parsed = (w.len() >= 3)
            .then(|| Some((w[0].parse().ok()?, w[1].parse().ok()?, w[2].parse().ok()?)))
            .flatten();
        let (number, first, last) =
            parsed.unwrap_or_else(|| panic!("sgdisk -p row {line:?} in:\n{text}"));
        parts.push(Listed {
            number,
            first,
            last,
        });
    }
    parts
}
