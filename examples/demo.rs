//! `make demo`: the driver's main job on an embedded default. A sparse file
//! stands in for a shared SAN LUN; the real `ocfs2-csi controller` carves
//! ReadWriteMany OCFS2 volumes out of it, lists, grows and deletes them, and
//! every step is checked with the real tools (sgdisk, fsck.ocfs2).
//!
//! Until the lab exists this shows the controller alone; mounting on several
//! nodes is the lab's and the node plugin's part.

use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::identity_client::IdentityClient;
use ocfs2_csi::csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use ocfs2_csi::csi::*;
use ocfs2_csi::disk::{gpt, lun_io::LunFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

/// A volume to create: name, bytes, StorageClass parameters.
type Planned = (&'static str, u64, &'static [(&'static str, &'static str)]);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// fsck.ocfs2 -fn and the free bytes of a partition, through a loop device.
fn check_partition(lun: &Path, first: u64, bytes: u64) -> Result<u64, String> {
    let (ok, dev) = tool(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &first.to_string(),
            "--sizelimit",
            &bytes.to_string(),
            "--direct-io=on",
            lun.to_str().unwrap(),
        ],
    );
    if !ok {
        return Err(format!("losetup: {dev}"));
    }
    let dev = dev.trim().to_string();
    let (clean, fsck) = tool("fsck.ocfs2", &["-fn", &dev]);
    let (_, stats) = tool("debugfs.ocfs2", &["-R", "stats", &dev]);
    let (_, bitmap) = tool("debugfs.ocfs2", &["-R", "stat //global_bitmap", &dev]);
    tool("losetup", &["--detach", &dev]);
    if !(clean && fsck.contains("All passes succeeded")) {
        return Err(format!("fsck.ocfs2 -fn failed:\n{fsck}"));
    }
    let bits: u32 = stats
        .lines()
        .find_map(|l| l.split("Cluster Size Bits:").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no cluster size in debugfs output")?;
    let words: Vec<u64> = bitmap
        .lines()
        .find(|l| l.contains("Bitmap Total:"))
        .ok_or("no bitmap line")?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Ok((words[0] - words[1]) << bits)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

fn request(name: &str, bytes: u64, params: &[(&str, &str)]) -> CreateVolumeRequest {
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
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = Instant::now();
    let exe = std::env::current_exe()?;
    let binary: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ocfs2-csi"))
        .filter(|p| p.exists())
        .ok_or("ocfs2-csi binary not found next to the example; run `make demo`")?;
    let dir = tempfile::tempdir()?;
    let lun = dir.path().join("shared-lun.raw");
    std::fs::File::create(&lun)?.set_len(64 * GIB)?;
    println!(
        "== ocfs2-csi demo: a 64 GiB shared LUN (sparse file {})",
        lun.display()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = dir.path().join("controller.log");
    let started = Instant::now();
    let _controller = Killed(
        Command::new(&binary)
            .args([
                "controller",
                "--endpoint",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args(["--cluster-name", "demo", "--lun"])
            .arg(&lun)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let url = format!("http://127.0.0.1:{port}");
    loop {
        if let Ok(mut id) = IdentityClient::connect(url.clone()).await {
            if let Ok(r) = id.probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "controller not ready after 60 s:\n{}",
                std::fs::read_to_string(&log)?
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "controller ready in {} ms: blank LUN got a 256-entry GPT and a global-heartbeat device",
        started.elapsed().as_millis()
    );
    let mut c = ControllerClient::connect(url).await?;

    println!("\n== CreateVolume (ReadWriteMany, filesystem)");
    let plan: [Planned; 3] = [
        ("pvc-vm-disk", 10 * GIB, &[]),
        ("pvc-shared-data", 2 * GIB, &[("nodeSlots", "8")]),
        (
            "pvc-local-hb",
            GIB,
            &[("heartbeat", "local"), ("nodeSlots", "4")],
        ),
    ];
    let mut volumes = Vec::new();
    for (name, bytes, params) in plan {
        let t = Instant::now();
        let v = c
            .create_volume(request(name, bytes, params))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume in the answer")?;
        println!(
            "  {name:<16} asked {:>9}, got {:>9} in {:>4} ms  id={}  heartbeat={}",
            gib(bytes),
            gib(v.capacity_bytes as u64),
            t.elapsed().as_millis(),
            v.volume_id,
            v.volume_context["heartbeat"]
        );
        volumes.push((name, bytes, v));
    }
    let again = c
        .create_volume(request("pvc-vm-disk", 10 * GIB, &[]))
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    println!(
        "  retry of pvc-vm-disk returns the same volume: {}",
        again.volume_id == volumes[0].2.volume_id
    );

    println!("\n== The LUN's partition table (sgdisk -p)");
    let (_, table) = tool("sgdisk", &["-p", lun.to_str().unwrap()]);
    for line in table.lines().skip_while(|l| !l.starts_with("Number")) {
        println!("  {line}");
    }

    println!("\n== Every filesystem checked with fsck.ocfs2 -fn; usable space vs request");
    let io = LunFile::open(&lun)?;
    let parts = gpt::read(&io)?.gpt.partitions;
    for (name, bytes, v) in &volumes {
        let guid = &v.volume_context["partitionGuid"];
        let p = parts
            .iter()
            .find(|p| p.unique_guid.to_string() == *guid)
            .ok_or("partition missing")?;
        let part_bytes = p.size_sectors() * 512;
        let free = check_partition(&lun, p.first_lba * 512, part_bytes)?;
        println!(
            "  {name:<16} fsck clean; partition {:>9} (+{:.1}% overhead), free {:>9} = {:.3} x request",
            gib(part_bytes),
            (part_bytes - bytes) as f64 * 100.0 / *bytes as f64,
            gib(free),
            free as f64 / *bytes as f64
        );
    }

    println!("\n== ListVolumes");
    let list = c
        .list_volumes(ListVolumesRequest::default())
        .await?
        .into_inner();
    for e in list.entries {
        let v = e.volume.unwrap_or_default();
        println!("  {}  {:>9}", v.volume_id, gib(v.capacity_bytes as u64));
    }

    println!(
        "\n== ControllerExpandVolume: pvc-local-hb 1 GiB -> 3 GiB (grows the GPT entry in place)"
    );
    let t = Instant::now();
    let grown = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: volumes[2].2.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: (3 * GIB) as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "  now {} in {} ms; node_expansion_required={} (each node resizes its partition, then one grows the filesystem)",
        gib(grown.capacity_bytes as u64),
        t.elapsed().as_millis(),
        grown.node_expansion_required
    );
    match c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: volumes[0].2.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: (20 * GIB) as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
    {
        Err(s) => println!(
            "  pvc-vm-disk to 20 GiB refused as expected: {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(_) => return Err("growing into a neighbour's space was allowed".into()),
    }

    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await?
        .into_inner();
    println!(
        "\n== GetCapacity: {} available, largest new volume {}",
        gib(cap.available_capacity as u64),
        gib(cap.maximum_volume_size.unwrap_or(0) as u64)
    );

    println!("\n== DeleteVolume (wipes signatures, discards, drops the GPT entry)");
    for (name, _, v) in &volumes {
        let t = Instant::now();
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: HashMap::new(),
        })
        .await?;
        println!("  {name:<16} deleted in {} ms", t.elapsed().as_millis());
    }
    let (valid, verify) = tool("sgdisk", &["-v", lun.to_str().unwrap()]);
    let left = gpt::read(&io)?.gpt.partitions.len();
    println!(
        "  partitions left: {left} (the heartbeat device); sgdisk -v: {}",
        if valid && verify.contains("No problems found") {
            "no problems found"
        } else {
            "PROBLEMS"
        }
    );
    println!(
        "\n== demo finished in {:.1} s",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}
