//! Benchmark of the real controller on a sparse file LUN: CreateVolume
//! latency and the usable capacity of fresh volumes. Prints figures (a table
//! and `BENCH ...` lines for scripts); it never fails on timing.
//!
//! Run as root: `cargo build --release --bins --examples` then
//! `cargo run --release --example bench`.

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::identity_client::IdentityClient;
use ocfs2_csi::csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use ocfs2_csi::csi::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, ProbeRequest, VolumeCapability,
};
use ocfs2_csi::disk::{gpt, lun_io::LunFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use uuid::Uuid;

const GIB: u64 = 1 << 30;
const SLOTS: u32 = 16;
const SIZES_GIB: &[u64] = &[1, 10, 100];
const RUNS: usize = 5;
/// Room for the three capacity volumes side by side (about 112 GiB of
/// partitions); sparse, so only what mkfs writes takes disk space.
const LUN_BYTES: u64 = 160 * GIB;

/// The controller process, stopped by its PID when dropped.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so it can shut down cleanly; SIGKILL if it lingers.
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loop device over part of the LUN, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(lun: &Path, offset: u64, size: u64) -> Result<Loop> {
        let offset = offset.to_string();
        let size = size.to_string();
        let lun = lun.to_str().context("LUN path is not UTF-8")?;
        let dev = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                "--offset",
                &offset,
                "--sizelimit",
                &size,
                lun,
            ],
        )?;
        Ok(Loop(dev.trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run("losetup", &["--detach", &self.0]);
    }
}

/// Runs a tool and returns its stdout; a failure carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The controller binary next to this example's directory
/// (target/release/examples/bench -> target/release/ocfs2-csi).
fn controller_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ocfs2-csi"))
        .context("no parent directory of the example")?;
    if !bin.is_file() {
        bail!(
            "controller binary {} is missing; build it first with \
             `cargo build --release --bins --examples`",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_controller(bin: &Path, lun: &Path, dir: &Path) -> Result<(Controller, String)> {
    let port = free_port()?;
    let log = dir.join("controller.log");
    let child = Command::new(bin)
        .arg("controller")
        .arg("--endpoint")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--cluster-name")
        .arg("bench")
        .arg("--log")
        .arg("info")
        .arg("--lun")
        .arg(lun)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut ctl = Controller { child, log };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = ctl.child.try_wait() {
            bail!("controller exited ({status}):\n{}", ctl.log_tail());
        }
        if let Ok(mut id) = IdentityClient::connect(url.clone()).await {
            if let Ok(r) = id.probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    return Ok((ctl, url));
                }
            }
        }
        if Instant::now() > deadline {
            ctl.stop();
            bail!("controller not ready within 60 s:\n{}", ctl.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request(name: &str, bytes: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        parameters: HashMap::from([("nodeSlots".to_string(), SLOTS.to_string())]),
        ..Default::default()
    }
}

struct Created {
    id: String,
    partition_guid: Uuid,
    capacity: u64,
}

async fn create(c: &mut ControllerClient<Channel>, name: &str, bytes: u64) -> Result<Created> {
    let v = c
        .create_volume(request(name, bytes))
        .await
        .with_context(|| format!("CreateVolume {name}"))?
        .into_inner()
        .volume
        .context("CreateVolume returned no volume")?;
    let guid = v
        .volume_context
        .get("partitionGuid")
        .and_then(|g| Uuid::try_parse(g).ok())
        .context("no partitionGuid in the volume context")?;
    Ok(Created {
        id: v.volume_id,
        partition_guid: guid,
        capacity: v.capacity_bytes as u64,
    })
}

async fn delete(c: &mut ControllerClient<Channel>, id: &str) -> Result<()> {
    c.delete_volume(DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("DeleteVolume {id}"))?;
    Ok(())
}

/// (offset, bytes) of the partition with `guid`, from the LUN's GPT.
fn partition_extent(lun: &Path, guid: Uuid) -> Result<(u64, u64)> {
    let io = LunFile::open(lun)?;
    let table = gpt::read(&io)?.gpt;
    let p = table
        .find_by_guid(&guid)
        .with_context(|| format!("partition {guid} not in the GPT"))?;
    Ok((
        p.first_lba * table.sector_size,
        p.size_sectors() * table.sector_size,
    ))
}

fn number_after(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.split_once(key)?.1.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key:?} in debugfs output"))
}

/// Free bytes of the fresh filesystem: the global bitmap's free clusters
/// (what statfs offers before any node mounts).
fn free_bytes(lun: &Path, offset: u64, size: u64) -> Result<u64> {
    let dev = Loop::attach(lun, offset, size)?;
    let stats = run("debugfs.ocfs2", &["-R", "stats", &dev.0])?;
    let bits = number_after(&stats, "Cluster Size Bits:")?;
    let bitmap = run("debugfs.ocfs2", &["-R", "stat //global_bitmap", &dev.0])?;
    let total = number_after(&bitmap, "Bitmap Total:")?;
    let used = number_after(&bitmap, "Used:")?;
    Ok(total.saturating_sub(used) << bits)
}

fn machine() -> (String, String, String) {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let host = read("/proc/sys/kernel/hostname")
        .or_else(|_| run("hostname", &[]).map(|s| s.trim().to_string()))
        .unwrap_or_else(|_| "?".into());
    let cpus = run("nproc", &[])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = run("uname", &["-r"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    (host, cpus, kernel)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Capacity {
    gib: u64,
    partition: u64,
    free: u64,
    reported: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let bin = controller_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("ocfs2-csi-bench")
        .tempdir()?;
    let lun = dir.path().join("lun.raw");
    std::fs::File::create(&lun)?.set_len(LUN_BYTES)?;
    let (mut ctl, url) = start_controller(&bin, &lun, dir.path()).await?;
    let mut c = ControllerClient::connect(url).await?;

    // (a) CreateVolume latency: mkfs dominates, so each size is created and
    // deleted RUNS times on the same LUN.
    let mut latency = Vec::new();
    for &gib in SIZES_GIB {
        let mut times = Vec::new();
        for run in 0..RUNS {
            let started = Instant::now();
            let v = create(&mut c, &format!("bench-{gib}g-{run}"), gib * GIB).await?;
            times.push(ms(started.elapsed()));
            delete(&mut c, &v.id).await?;
        }
        times.sort_by(f64::total_cmp);
        latency.push((gib, times));
    }

    // (b) Usable capacity: the volumes exist side by side, as in real use.
    let mut capacity = Vec::new();
    for &gib in SIZES_GIB {
        let v = create(&mut c, &format!("cap-{gib}g"), gib * GIB).await?;
        let (offset, partition) = partition_extent(&lun, v.partition_guid)?;
        let free = free_bytes(&lun, offset, partition)?;
        capacity.push(Capacity {
            gib,
            partition,
            free,
            reported: v.capacity,
        });
        delete(&mut c, &v.id).await?;
    }
    drop(c);
    ctl.stop();

    let (host, cpus, kernel) = machine();
    println!();
    println!("ocfs2-csi controller benchmark");
    println!("machine: {host}, {cpus} CPUs, kernel {kernel}");
    println!(
        "LUN: {} GiB sparse file; node slots: {SLOTS}",
        LUN_BYTES / GIB
    );
    println!();
    println!("CreateVolume latency ({RUNS} runs each, delete in between)");
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "size", "min ms", "median ms", "max ms"
    );
    for (gib, t) in &latency {
        println!(
            "{:>8} {:>10.1} {:>10.1} {:>10.1}",
            format!("{gib}GiB"),
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
    println!();
    println!("Usable capacity of a fresh volume");
    println!("Goal: ratio >= 1.0; partition overhead < 3% at >= 10 GiB");
    println!(
        "{:>8} {:>16} {:>16} {:>16} {:>8} {:>10}  goal",
        "size", "requested", "partition", "free", "ratio", "overhead"
    );
    for r in &capacity {
        let requested = r.gib * GIB;
        let ratio = r.free as f64 / requested as f64;
        let overhead = (r.partition - requested) as f64 * 100.0 / requested as f64;
        let ratio_ok = ratio >= 1.0;
        // The overhead goal only applies from 10 GiB up.
        let overhead_ok = r.gib < 10 || overhead < 3.0;
        let marker = match (ratio_ok, overhead_ok) {
            (true, true) => "PASS".to_string(),
            (false, true) => "MISS (ratio)".to_string(),
            (true, false) => "MISS (overhead)".to_string(),
            (false, false) => "MISS (ratio, overhead)".to_string(),
        };
        println!(
            "{:>8} {:>16} {:>16} {:>16} {:>8.4} {:>9.3}%  {marker}",
            format!("{}GiB", r.gib),
            requested,
            r.partition,
            r.free,
            ratio,
            overhead
        );
    }
    println!();
    for (gib, t) in &latency {
        println!(
            "BENCH create_ms size={gib}GiB slots={SLOTS} runs={} min={:.1} median={:.1} max={:.1}",
            t.len(),
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
    for r in &capacity {
        let requested = r.gib * GIB;
        println!(
            "BENCH capacity size={}GiB slots={SLOTS} requested={requested} partition={} free={} \
             reported={} ratio={:.4} overhead_pct={:.3}",
            r.gib,
            r.partition,
            r.free,
            r.reported,
            r.free as f64 / requested as f64,
            (r.partition - requested) as f64 * 100.0 / requested as f64
        );
    }
    println!("BENCH machine host={host} nproc={cpus} kernel={kernel}");
    Ok(())
}
