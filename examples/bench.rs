//! `make bench`: the real controller on a sparse file LUN. Prints CreateVolume
//! latency and the usable capacity of fresh volumes as a table and as
//! `BENCH ...` lines for scripts; it never fails on timing.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::Instant;

const SLOTS: u32 = 16;
const SIZES_GIB: &[u64] = &[1, 10, 100];
const RUNS: usize = 5;
/// Room for the largest volume with its overhead; sparse, so only what mkfs
/// writes takes disk space.
const LUN_BYTES: u64 = 160 * GIB;

struct Capacity {
    gib: u64,
    partition: u64,
    free: u64,
    reported: u64,
}

fn one_line(program: &str, args: &[&str]) -> String {
    let (_, out) = run(program, args);
    out.trim().to_string()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::Builder::new()
        .prefix("ocfs2-csi-bench")
        .tempdir()
        .unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", LUN_BYTES);
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let mut c = ctl.client().await;
    let request = |name: &str, bytes: u64| {
        let mut r = create_request(name, bytes);
        r.parameters.insert("nodeSlots".into(), SLOTS.to_string());
        r
    };

    // CreateVolume latency: mkfs dominates, so each size is created and
    // deleted RUNS times on the same LUN.
    let mut latency = Vec::new();
    for &gib in SIZES_GIB {
        let mut times = Vec::new();
        for run in 0..RUNS {
            let started = Instant::now();
            let v = c
                .create_volume(request(&format!("bench-{gib}g-{run}"), gib * GIB))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            c.delete_volume(delete_request(&v.volume_id)).await.unwrap();
        }
        times.sort_by(f64::total_cmp);
        latency.push((gib, times));
    }

    // Usable capacity: bytes a fresh filesystem offers per byte requested.
    let mut capacity = Vec::new();
    for &gib in SIZES_GIB {
        let v = c
            .create_volume(request(&format!("cap-{gib}g"), gib * GIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let part = partition_by_guid(&lun, &v.volume_context["partitionGuid"]);
        capacity.push(Capacity {
            gib,
            partition: part.bytes(),
            free: fs_free_bytes(&lun, &part),
            reported: v.capacity_bytes as u64,
        });
        c.delete_volume(delete_request(&v.volume_id)).await.unwrap();
    }

    let host = one_line("hostname", &[]);
    let cpus = one_line("nproc", &[]);
    let kernel = one_line("uname", &["-r"]);
    println!("\nocfs2-csi controller benchmark");
    println!("machine: {host}, {cpus} CPUs, kernel {kernel}; shared and noisy, so compare ratios, not absolute times");
    println!(
        "LUN: {} GiB sparse file; node slots: {SLOTS}\n",
        LUN_BYTES / GIB
    );
    println!("CreateVolume latency ({RUNS} runs each, delete in between)");
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "size", "min ms", "median ms", "max ms"
    );
    for (gib, t) in &latency {
        let (min, median, max) = (t[0], t[t.len() / 2], t[t.len() - 1]);
        println!(
            "{:>8} {min:>10.1} {median:>10.1} {max:>10.1}",
            format!("{gib}GiB")
        );
    }
    println!("\nUsable capacity of a fresh volume");
    println!("Goal: ratio >= 1.0; partition overhead < 3% at >= 10 GiB");
    println!(
        "{:>8} {:>16} {:>16} {:>16} {:>8} {:>10}  goal",
        "size", "requested", "partition", "free", "ratio", "overhead"
    );
    for r in &capacity {
        let requested = r.gib * GIB;
        let ratio = r.free as f64 / requested as f64;
        let overhead = (r.partition - requested) as f64 * 100.0 / requested as f64;
        // The overhead goal only applies from 10 GiB up.
        let marker = match (ratio >= 1.0, r.gib < 10 || overhead < 3.0) {
            (true, true) => "PASS",
            (false, true) => "MISS (ratio)",
            (true, false) => "MISS (overhead)",
            (false, false) => "MISS (ratio, overhead)",
        };
        println!(
            "{:>8} {requested:>16} {:>16} {:>16} {ratio:>8.4} {overhead:>9.3}%  {marker}",
            format!("{}GiB", r.gib),
            r.partition,
            r.free,
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
}
