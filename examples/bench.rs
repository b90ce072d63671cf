//! `make bench`, host part: the real controller on a sparse file LUN.
//!
//! - CreateVolume latency by volume size (mkfs dominates), beside its
//!   anchor: the bare tools doing the same (sgdisk, a loop device over the
//!   partition, mkfs.ocfs2 with the same options), measured in the same run;
//! - usable capacity of a fresh volume (free bytes / requested bytes) and
//!   partition overhead, by size and by node slots.
//!
//! Each figure is a table, an SVG chart in target/bench/ and `BENCH ...`
//! lines for scripts. Printed, never enforced.

use ocfs2_csi_testkit as common;
mod figure;

use common::*;
use figure::{num, Chart, Report, Table};
use ocfs2_csi::csi::controller_client::ControllerClient;
use std::time::Instant;
use tonic::transport::Channel;

const SIZES_GIB: &[u64] = &[1, 4, 16, 64, 256];
const SLOTS: &[u32] = &[4, 8, 16, 32];
/// Node slots for the latency figure (the driver's default).
const LATENCY_SLOTS: u32 = 16;
const RUNS: usize = 3;
/// Room for the largest volume with its overhead; sparse, so only what mkfs
/// writes takes disk space (and DeleteVolume discards it again).
const LUN_BYTES: u64 = 300 * GIB;

type Client = ControllerClient<Channel>;

struct Latency {
    gib: u64,
    /// Sorted milliseconds.
    create: Vec<f64>,
    delete: Vec<f64>,
    /// The anchor: sgdisk + losetup + mkfs.ocfs2 + detach by hand, sorted ms.
    bare: Vec<f64>,
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

impl Latency {
    /// CreateVolume median over the bare tools' median.
    fn ratio(&self) -> f64 {
        median(&self.create) / median(&self.bare)
    }
}

/// What an admin runs by hand for one volume, timed: a GPT entry at the
/// same sectors with sgdisk, a loop device over it (as the controller
/// uses), mkfs.ocfs2 with the options the controller would give for this
/// size (`mkfs_args`, the same function), detach. On a LUN of its own, so
/// the controller's table is never touched behind its back.
fn bare_create(lun: &std::path::Path, part: &Part, gib: u64, run_no: usize) -> f64 {
    use ocfs2_csi::ocfs2::layout::{HeartbeatMode, Layout};
    use ocfs2_csi::ocfs2::tools::{mkfs_args, MkfsSpec};
    let spec = MkfsSpec {
        cluster_name: "testclu".into(),
        label: format!("anchor-{gib}g-{run_no}"),
        uuid: uuid::Uuid::new_v4(),
        layout: Layout::for_size(gib * GIB, LATENCY_SLOTS, None, None, None),
        heartbeat: HeartbeatMode::Global,
        features: Vec::new(),
    };
    let t = Instant::now();
    let (ok, out) = run(
        "sgdisk",
        &[
            &format!("--new={}:{}:{}", part.number, part.first, part.last),
            lun.to_str().unwrap(),
        ],
    );
    assert!(ok, "sgdisk: {out}");
    with_loop(
        lun,
        part.first * 512,
        (part.last - part.first + 1) * 512,
        |dev| {
            let cmd = mkfs_args(&spec, std::path::Path::new(dev));
            let out = std::process::Command::new(cmd.program)
                .args(&cmd.args)
                .env("LC_ALL", "C")
                .output()
                .expect("mkfs.ocfs2");
            assert!(
                out.status.success(),
                "{}: {}",
                cmd.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        },
    );
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let (ok, out) = run(
        "sgdisk",
        &[&format!("--delete={}", part.number), lun.to_str().unwrap()],
    );
    assert!(ok, "sgdisk: {out}");
    ms
}

struct Capacity {
    gib: u64,
    slots: u32,
    partition: u64,
    free: u64,
    reported: u64,
}

impl Capacity {
    fn requested(&self) -> u64 {
        self.gib * GIB
    }
    fn ratio(&self) -> f64 {
        self.free as f64 / self.requested() as f64
    }
    fn overhead_pct(&self) -> f64 {
        (self.partition - self.requested()) as f64 * 100.0 / self.requested() as f64
    }
}

fn request(name: &str, bytes: u64, slots: u32) -> ocfs2_csi::csi::CreateVolumeRequest {
    let mut r = create_request(name, bytes);
    r.parameters.insert("nodeSlots".into(), slots.to_string());
    r
}

/// CreateVolume and DeleteVolume latency: each size created and deleted
/// `RUNS` times on the same LUN, each create followed by its anchor on
/// `anchor_lun` at the same sectors.
async fn latency(
    c: &mut Client,
    lun: &std::path::Path,
    anchor_lun: &std::path::Path,
) -> Vec<Latency> {
    let mut out = Vec::new();
    for &gib in SIZES_GIB {
        let (mut create, mut delete, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            let t = Instant::now();
            let v = c
                .create_volume(request(
                    &format!("bench-{gib}g-{run}"),
                    gib * GIB,
                    LATENCY_SLOTS,
                ))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            create.push(t.elapsed().as_secs_f64() * 1000.0);
            let part = partition_by_guid(lun, &v.volume_context["partitionGuid"]);
            bare.push(bare_create(anchor_lun, &part, gib, run));
            let t = Instant::now();
            c.delete_volume(delete_request(&v.volume_id)).await.unwrap();
            delete.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        create.sort_by(f64::total_cmp);
        delete.sort_by(f64::total_cmp);
        bare.sort_by(f64::total_cmp);
        out.push(Latency {
            gib,
            create,
            delete,
            bare,
        });
    }
    out
}

/// Usable capacity: what a fresh filesystem offers (debugfs' global bitmap)
/// for each size and slot count.
async fn capacity(c: &mut Client, lun: &std::path::Path) -> Vec<Capacity> {
    let mut out = Vec::new();
    for &slots in SLOTS {
        for &gib in SIZES_GIB {
            let v = c
                .create_volume(request(&format!("cap-{gib}g-{slots}"), gib * GIB, slots))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            let part = partition_by_guid(lun, &v.volume_context["partitionGuid"]);
            out.push(Capacity {
                gib,
                slots,
                partition: part.bytes(),
                free: fs_free_bytes(lun, &part),
                reported: v.capacity_bytes as u64,
            });
            c.delete_volume(delete_request(&v.volume_id)).await.unwrap();
        }
    }
    out
}

fn report_latency(r: &mut Report, lat: &[Latency]) {
    let mut t = Table::new(
        "CreateVolume latency by size (host, real controller)",
        &[
            "size",
            "create min ms",
            "create median ms",
            "create max ms",
            "bare tools median ms",
            "create/bare",
            "delete median ms",
        ],
    )
    .note(format!(
        "{RUNS} runs per size, nodeSlots={LATENCY_SLOTS}, each volume deleted before the next; \
         LUN: {} GiB sparse file",
        LUN_BYTES / GIB
    ))
    .note(
        "bare tools (the anchor, same run): sgdisk --new at the same sectors, losetup over \
         them, mkfs.ocfs2 with the controller's options for that size, losetup --detach",
    );
    for l in lat {
        let c = &l.create;
        t.row(vec![
            format!("{} GiB", l.gib),
            num(c[0]),
            num(c[c.len() / 2]),
            num(c[c.len() - 1]),
            num(median(&l.bare)),
            format!("{:.2}", l.ratio()),
            num(l.delete[l.delete.len() / 2]),
        ]);
    }
    r.table(&t);
    let points = |f: &dyn Fn(&Latency) -> f64| -> Vec<(f64, f64)> {
        lat.iter().map(|l| (l.gib as f64, f(l))).collect()
    };
    r.chart(
        &Chart::lines(
            "create-latency",
            "CreateVolume latency by size",
            "requested size (GiB)",
            "milliseconds",
            true,
        )
        .series("create, median", points(&|l| l.create[l.create.len() / 2]))
        .series("create, max", points(&|l| l.create[l.create.len() - 1]))
        .series("bare tools, median", points(&|l| median(&l.bare)))
        .series("delete, median", points(&|l| l.delete[l.delete.len() / 2])),
    );
}

fn report_capacity(r: &mut Report, cap: &[Capacity]) {
    let mut t = Table::new(
        "Usable capacity of a fresh volume, by size and node slots",
        &[
            "size",
            "slots",
            "requested",
            "partition",
            "free (debugfs)",
            "reported",
            "usable/requested",
            "overhead %",
            "goal",
        ],
    )
    .note("usable = free bytes of the fresh filesystem's global bitmap; overhead = partition bytes beyond the request")
    .note("Goal: usable/requested >= 1.0; overhead < 3% from 10 GiB up");
    for c in cap {
        let marker = match (c.ratio() >= 1.0, c.gib < 10 || c.overhead_pct() < 3.0) {
            (true, true) => "PASS",
            (false, true) => "MISS (ratio)",
            (true, false) => "MISS (overhead)",
            (false, false) => "MISS (ratio, overhead)",
        };
        t.row(vec![
            format!("{} GiB", c.gib),
            c.slots.to_string(),
            c.requested().to_string(),
            c.partition.to_string(),
            c.free.to_string(),
            c.reported.to_string(),
            format!("{:.4}", c.ratio()),
            format!("{:.3}", c.overhead_pct()),
            marker.into(),
        ]);
    }
    r.table(&t);
    let by_slots = |f: fn(&Capacity) -> f64, chart: Chart| -> Chart {
        SLOTS.iter().fold(chart, |chart, &slots| {
            let points = cap
                .iter()
                .filter(|c| c.slots == slots)
                .map(|c| (c.gib as f64, f(c)))
                .collect();
            chart.series(&format!("{slots} node slots"), points)
        })
    };
    r.chart(&by_slots(
        Capacity::overhead_pct,
        Chart::lines(
            "capacity-overhead",
            "Partition overhead by size and node slots",
            "requested size (GiB)",
            "overhead (% of requested)",
            true,
        )
        .goal(3.0, "goal: < 3% from 10 GiB"),
    ));
    r.chart(&by_slots(
        Capacity::ratio,
        Chart::lines(
            "capacity-ratio",
            "Usable bytes / requested bytes by size and node slots",
            "requested size (GiB)",
            "usable / requested",
            true,
        )
        .goal(1.0, "goal: >= 1.0"),
    ));
}

fn machine_lines(r: &Report, lat: &[Latency], cap: &[Capacity]) {
    println!();
    for l in lat {
        let t = &l.create;
        println!(
            "BENCH create_ms size={}GiB slots={LATENCY_SLOTS} runs={} min={:.1} median={:.1} max={:.1} \
             bare_median={:.1} ratio={:.2}",
            l.gib,
            t.len(),
            t[0],
            t[t.len() / 2],
            t[t.len() - 1],
            median(&l.bare),
            l.ratio()
        );
    }
    for c in cap {
        println!(
            "BENCH capacity size={}GiB slots={} requested={} partition={} free={} \
             reported={} ratio={:.4} overhead_pct={:.3}",
            c.gib,
            c.slots,
            c.requested(),
            c.partition,
            c.free,
            c.reported,
            c.ratio(),
            c.overhead_pct()
        );
    }
    let m = &r.machine;
    println!(
        "BENCH machine host={} cores={} kernel={} cpu={:?}",
        m.host, m.cores, m.kernel, m.cpu
    );
}

#[tokio::main]
async fn main() {
    let mut report = Report::new();
    println!("\nocfs2-csi controller benchmark (host)");
    println!("{}", report.machine.line());
    let dir = tempfile::Builder::new()
        .prefix("ocfs2-csi-bench")
        .tempdir()
        .unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", LUN_BYTES);
    let anchor_lun = sparse_lun(dir.path(), "anchor.raw", LUN_BYTES);
    let (ok, out) = run("sgdisk", &["--clear", anchor_lun.to_str().unwrap()]);
    assert!(ok, "sgdisk --clear: {out}");
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let mut c = ctl.client().await;

    let t = Instant::now();
    let lat = latency(&mut c, &lun, &anchor_lun).await;
    println!("latency measured in {:.0} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let cap = capacity(&mut c, &lun).await;
    println!("capacity measured in {:.0} s", t.elapsed().as_secs_f64());

    report_latency(&mut report, &lat);
    report_capacity(&mut report, &cap);
    machine_lines(&report, &lat, &cap);
    report.finish();
}
