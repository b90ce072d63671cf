//! `make bench`, lab part: node-side figures on real OCFS2 kernels (three
//! QEMU TCG guests, 1 vCPU each, sharing one LUN file).
//!
//! Global-heartbeat lab:
//! - NodeStageVolume latency (repeated stage+unstage on one guest), beside
//!   its anchor: the same device mounted by hand in the same guest;
//! - NodeExpandVolume duration by the number of guests that have the volume
//!   mounted (1, 2, 3): the first call grows, the others are no-ops;
//! - throughput on an OCFS2 volume against the raw partition of a second,
//!   never-mounted volume: same guest, same tool (busybox dd, O_DIRECT);
//! - a raw block volume published on the guests against the raw partition
//!   of another volume: same guests, same dd;
//! - heartbeat I/O of one node as its mounted volumes grow in number;
//! - a clone of a 20 GiB volume holding 2 GiB: its time, and its copy
//!   rate beside a raw `dd` of the same bytes on the same LUN file.
//!
//! Local-heartbeat lab: the stage latency and heartbeat I/O again.
//!
//! Node-loss labs, one per o2cb profile of the chart (`o2cb.profile`:
//! default, fast; the lab tests run node loss with shorter ones still):
//! node3 loses power, later its cluster network; how long until the
//! survivors write again (beside the profile's dead time) and their
//! plugins report it dead, and how long node3 takes to boot and rejoin.
//!
//! Transport: NodeStageVolume latency and one guest's OCFS2/raw throughput
//! on the virtio LUN file and on the SAN lab's multipath LUN (iSCSI, two
//! paths per guest), side by side.
//!
//! `LAB_BENCH_ONLY=node-loss` runs the node-loss lab alone,
//! `LAB_BENCH_ONLY=stage` the NodeStageVolume figures alone,
//! `LAB_BENCH_ONLY=transport` the transport comparison alone,
//! `LAB_BENCH_ONLY=block` the raw block volume figures alone,
//! `LAB_BENCH_ONLY=clone` the clone figures alone.
//!
//! Each figure is a table and an SVG chart in target/bench/. Printed, never
//! enforced: absolute times in TCG guests are not production figures.

use ocfs2_csi_testkit as common;
mod figure;

use common::lab::*;
use common::*;
use figure::{num, percentile, Chart, Report, Table};
use futures::StreamExt;
use ocfs2_csi::cluster::Timeouts;
use ocfs2_csi::csi::*;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const CLUSTER: &str = "testclu"; // the name the test harness gives the controller
/// Room for the clone bench's 20 GiB source and its 20 GiB clone.
const LAB_LUN: &str = "48G";
const GLOBAL_STAGES: usize = 10;
/// Each local-heartbeat stage waits ~10 s for its region: fewer rounds.
const LOCAL_STAGES: usize = 5;

/// Sequential I/O per guest: SEQ_BLOCKS blocks of 4 MiB (256 MiB).
const BLOCK: u64 = 4 * MIB;
const SEQ_BLOCKS: u64 = 64;
/// Random 4 KiB writes per guest, one `dd` process each.
const RAND_WRITES: usize = 200;

/// Mounted volumes on node1 for the heartbeat figure.
const HB_COUNTS: &[usize] = &[1, 10, 40];
/// If mounting up to the next count would take longer than this (local
/// heartbeat: ~10 s a mount in TCG), stop at HB_FALLBACK instead.
const HB_BUDGET_SECS: f64 = 150.0;
const HB_FALLBACK: usize = 20;
const HB_IDLE_SECS: u64 = 20;
const HB_STAGE_PARALLEL: usize = 4;

type Rt = Runtime;

// --- the lab -----------------------------------------------------------------

/// Boots a lab, starts the controller and three node plugins in `mode`.
fn cluster(rt: &Rt, name: &str, mode: &str) -> (Lab, Controller) {
    let lab = Lab::up(name, 3, LAB_LUN);
    let controller = plugins_ready(rt, &lab, &format!("{mode} heartbeat"), |node| {
        lab.must(
            node,
            &format!(
                "mkdir -p /var/lib/ocfs2-csi && ocfs2-csi node --endpoint tcp://0.0.0.0:10000 \
                   --node-id node{node} --cluster-name {CLUSTER} --cluster-id {CLUSTER}-id --heartbeat {mode} \
                   --members-file /etc/ocfs2-csi/members --lun /dev/vda \
                   --state-dir /var/lib/ocfs2-csi >>/tmp/node.log 2>&1 </dev/null &
                 echo $! > /tmp/node.pid"
            ),
        );
    });
    (lab, controller)
}

/// A controller on `lab`'s LUN, the members file on every guest, each
/// guest's plugin started by `start` and waited for (`what` names the
/// set-up in the printout).
fn plugins_ready(rt: &Rt, lab: &Lab, what: &str, start: impl Fn(usize)) -> Controller {
    let dir = tempfile::tempdir().unwrap().keep();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lab.lun()), &dir));
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        start(node);
    }
    for node in 1..=3 {
        let took = rt.block_on(lab.wait_node_ready(node, Duration::from_secs(180)));
        println!(
            "  node{node} plugin ready ({what}) in {:.1} s",
            took.as_secs_f64()
        );
    }
    controller
}

fn create(rt: &Rt, c: &Controller, name: &str, bytes: u64, params: &[(&str, &str)]) -> Volume {
    let mut req = create_request(name, bytes);
    for (k, v) in params {
        req.parameters.insert(k.to_string(), v.to_string());
    }
    rt.block_on(async { c.client().await.create_volume(req).await })
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
        .into_inner()
        .volume
        .unwrap()
}

// --- NodeStageVolume latency ---------------------------------------------------

/// Stage + unstage `rounds` times on node1; sorted stage latencies (s).
fn stage_latencies(rt: &Rt, lab: &Lab, v: &Volume, rounds: usize) -> Vec<f64> {
    lab.must(1, &format!("mkdir -p {}", staging(v)));
    let mut times: Vec<f64> = rt.block_on(async {
        let mut n = lab.node_client(1).await;
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            n.node_stage_volume(stage_request(v, &staging(v)))
                .await
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            n.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: staging(v),
            })
            .await
            .unwrap();
        }
        times
    });
    times.sort_by(f64::total_cmp);
    times
}

/// The anchor for NodeStageVolume, measured in the same run: the same
/// volume, mapped once by hand with dmsetup, mounted by hand with
/// mount.ocfs2 (which picks the heartbeat mode from the superblock, as the
/// plugin's mount does) in the same guest, timed inside the guest; `rounds`
/// mount+umount rounds, sorted (s). The plugin's figure includes making
/// its map; this one does not.
fn bare_mounts(lab: &Lab, v: &Volume, rounds: usize) -> Vec<f64> {
    let dev = lab.map_by_hand(1, &v.volume_context["partitionGuid"], "bench-bare");
    lab.must(1, "mkdir -p /mnt/bare");
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = timed(lab, false, &format!("mount -t ocfs2 {dev} /mnt/bare"))[0];
            lab.must(1, "umount /mnt/bare");
            t
        })
        .collect();
    lab.unmap_by_hand(1, "bench-bare");
    times.sort_by(f64::total_cmp);
    times
}

/// The last `rounds` NodeStageVolume durations node1's plugin logged
/// itself (the observe layer's `call finished duration_ms=`), sorted (s):
/// the driver's own time, without the lab's transport from the host.
fn plugin_stage_times(lab: &Lab, rounds: usize) -> Vec<f64> {
    let log = lab.must(
        1,
        "grep 'method=NodeStageVolume' /tmp/node.log | grep 'call finished'",
    );
    let all: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("duration_ms=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .collect();
    assert!(
        all.len() >= rounds,
        "{} stage lines in the plugin log",
        all.len()
    );
    let mut times = all[all.len() - rounds..].to_vec();
    times.sort_by(f64::total_cmp);
    times
}

/// Stage latencies and their anchor, for one heartbeat mode.
struct Stage {
    /// As the caller on the host sees it (gRPC through the lab's relay).
    stage: Vec<f64>,
    /// As the plugin in the guest logged it.
    plugin: Vec<f64>,
    bare: Vec<f64>,
}

impl Stage {
    /// A new 1 GiB volume in `mode` (the plugins' mode), measured.
    fn of_new_volume(rt: &Rt, lab: &Lab, controller: &Controller, mode: &str) -> Stage {
        let (name, params, rounds): (_, &[(&str, &str)], _) = match mode {
            "local" => ("bench-stage-local", &[("heartbeat", "local")], LOCAL_STAGES),
            _ => ("bench-stage", &[], GLOBAL_STAGES),
        };
        let v = create(rt, controller, name, GIB, params);
        Stage::measure(rt, lab, &v, rounds)
    }

    fn measure(rt: &Rt, lab: &Lab, v: &Volume, rounds: usize) -> Stage {
        let stage = stage_latencies(rt, lab, v, rounds);
        Stage {
            plugin: plugin_stage_times(lab, rounds),
            stage,
            bare: bare_mounts(lab, v, rounds),
        }
    }

    /// NodeStageVolume p50 (from the host) over the bare mount's p50.
    fn ratio(&self) -> f64 {
        percentile(&self.stage, 0.5) / percentile(&self.bare, 0.5)
    }

    /// The plugin's own p50 over the bare mount's p50.
    fn plugin_ratio(&self) -> f64 {
        percentile(&self.plugin, 0.5) / percentile(&self.bare, 0.5)
    }
}

fn report_stage(r: &mut Report, global_stage: &Stage, local_stage: &Stage) {
    let (global, local) = (&global_stage.stage[..], &local_stage.stage[..]);
    let mut t = Table::new(
        "NodeStageVolume latency, global vs local heartbeat",
        &[
            "heartbeat",
            "rounds",
            "p50 (s)",
            "p95 (s)",
            "min (s)",
            "max (s)",
            "in plugin p50 (s)",
            "bare mount p50 (s)",
            "stage/bare p50",
            "in plugin/bare p50",
        ],
    )
    .note("stage+unstage rounds on one guest; the node plugin in the same mode as the volume")
    .note(
        "bare mount (the anchor, same run, same guest and device): mount -t ocfs2 by hand, \
         timed inside the guest",
    )
    .note(
        "p50..max: NodeStageVolume as the host's gRPC client sees it (through the lab's relay \
         into the guest); in plugin: the same calls as the plugin logged them",
    )
    .note("Goals: p50 < 1 s with global heartbeat; stage p50 <= 1.5 x the bare mount's");
    for (mode, st) in [("global", global_stage), ("local", local_stage)] {
        let s = &st.stage;
        t.row(vec![
            mode.into(),
            s.len().to_string(),
            num(percentile(s, 0.5)),
            num(percentile(s, 0.95)),
            num(s[0]),
            num(s[s.len() - 1]),
            num(percentile(&st.plugin, 0.5)),
            num(percentile(&st.bare, 0.5)),
            format!("{:.2}", st.ratio()),
            format!("{:.2}", st.plugin_ratio()),
        ]);
    }
    r.table(&t);
    let ratio = percentile(local, 0.5) / percentile(global, 0.5);
    let p50 = percentile(global, 0.5);
    println!(
        "local/global p50 ratio: {}; global p50 goal (< 1 s): {}; \
         global stage/bare-mount p50 {:.2} from the host, {:.2} in the plugin (goal <= 1.5: {})",
        num(ratio),
        if p50 < 1.0 { "met" } else { "not met" },
        global_stage.ratio(),
        global_stage.plugin_ratio(),
        if global_stage.ratio() <= 1.5 {
            "met"
        } else {
            "not met"
        }
    );
    r.chart(
        &Chart::bars(
            "stage-latency",
            "NodeStageVolume latency by heartbeat mode",
            "seconds",
            &["global heartbeat", "local heartbeat"],
        )
        .bar_series("p50", &[percentile(global, 0.5), percentile(local, 0.5)])
        .bar_series("p95", &[percentile(global, 0.95), percentile(local, 0.95)])
        .bar_series(
            "bare mount p50",
            &[
                percentile(&global_stage.bare, 0.5),
                percentile(&local_stage.bare, 0.5),
            ],
        )
        .goal(1.0, "goal: global p50 < 1 s"),
    );
    for (mode, st) in [("global", global_stage), ("local", local_stage)] {
        println!(
            "BENCH node_stage heartbeat={mode} p50_s={:.3} p95_s={:.3} plugin_p50_s={:.3} \
             bare_mount_p50_s={:.3} ratio={:.2} plugin_ratio={:.2}",
            percentile(&st.stage, 0.5),
            percentile(&st.stage, 0.95),
            percentile(&st.plugin, 0.5),
            percentile(&st.bare, 0.5),
            st.ratio(),
            st.plugin_ratio()
        );
    }
}

// --- online growth by nodes mounted --------------------------------------------

struct Growth {
    nodes: usize,
    /// The NodeExpandVolume call that grows (s).
    grow: f64,
    /// Each no-op call on the other nodes (s).
    noop: Option<f64>,
}

/// Mounts the volume on one more guest each round, grows it 1 GiB and times
/// NodeExpandVolume on node1 (the grow) and on the others (no-ops).
fn growth_by_nodes(rt: &Rt, lab: &Lab, controller: &Controller) -> Vec<Growth> {
    let v = create(rt, controller, "bench-grow", 2 * GIB, &[]);
    let mut out = Vec::new();
    for nodes in 1..=3usize {
        rt.block_on(stage_and_publish(lab, nodes, &v));
        let bytes = (2 + nodes as u64) * GIB;
        rt.block_on(async {
            controller
                .client()
                .await
                .controller_expand_volume(expand_request(&v.volume_id, bytes))
                .await
        })
        .unwrap();
        let (grow, rest) = rt.block_on(async {
            let t = Instant::now();
            lab.node_client(1)
                .await
                .node_expand_volume(expand_req(&v))
                .await
                .unwrap();
            let grow = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for node in 2..=nodes {
                lab.node_client(node)
                    .await
                    .node_expand_volume(expand_req(&v))
                    .await
                    .unwrap();
            }
            (grow, t.elapsed().as_secs_f64() / (nodes.max(2) - 1) as f64)
        });
        out.push(Growth {
            nodes,
            grow,
            noop: (nodes > 1).then_some(rest),
        });
    }
    // Off node1 again, so the heartbeat figure counts only its own mounts.
    rt.block_on(unpublish_and_unstage(lab, 1, &v));
    out
}

fn report_growth(r: &mut Report, growth: &[Growth]) {
    let mut t = Table::new(
        "Online growth (NodeExpandVolume, global heartbeat) by nodes mounted",
        &[
            "nodes mounted",
            "grow call (s)",
            "no-op call on each other node (s)",
        ],
    )
    .note("1 GiB more each round; node1 grows once every node with the volume sees the bigger partition");
    for g in growth {
        t.row(vec![
            g.nodes.to_string(),
            num(g.grow),
            g.noop.map_or("-".into(), num),
        ]);
    }
    r.table(&t);
    r.chart(
        &Chart::lines(
            "growth-by-nodes",
            "Online growth duration by nodes mounted (global heartbeat)",
            "nodes with the volume mounted",
            "seconds",
            false,
        )
        .series(
            "grow call (node1)",
            growth.iter().map(|g| (g.nodes as f64, g.grow)).collect(),
        )
        .series(
            "no-op call, each other node",
            growth
                .iter()
                .filter_map(|g| Some((g.nodes as f64, g.noop?)))
                .collect(),
        ),
    );
    for g in growth {
        println!("BENCH node_expand nodes={} seconds={:.3}", g.nodes, g.grow);
    }
}

// --- throughput: OCFS2 against the raw partition --------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Op {
    SeqWrite,
    SeqOverwrite,
    SeqRead,
    RandWrite,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SeqWrite => "sequential write, new file",
            Op::SeqOverwrite => "sequential overwrite",
            Op::SeqRead => "sequential read",
            Op::RandWrite => "random 4 KiB write",
        }
    }
}

struct Io {
    op: Op,
    guests: usize,
    /// MiB/s for sequential, writes/s for random (aggregate over guests).
    ocfs2: f64,
    raw: f64,
}

impl Io {
    fn ratio(&self) -> f64 {
        self.ocfs2 / self.raw
    }
    fn unit(&self) -> &'static str {
        if self.op == Op::RandWrite {
            "writes/s"
        } else {
            "MiB/s"
        }
    }
}

/// Offsets (in 4 KiB blocks) inside one 256 MiB region, the same for OCFS2
/// and raw: a fixed linear congruential sequence.
fn random_blocks() -> Vec<u64> {
    let blocks = SEQ_BLOCKS * BLOCK / 4096;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..RAND_WRITES)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % blocks
        })
        .collect()
}

/// Where a guest writes: a file of its own on the mounted OCFS2 volume, or
/// region `$i` (256 MiB) of the raw partition. `$i` is 0 for the one-guest
/// runs and the guest's number for the three-guest runs.
enum Target {
    Fs(String),
    Raw(String),
}

/// The shell command for `op` on `target` (busybox dd; `$i` set before),
/// `n` blocks of 4 MiB for the sequential tests.
fn io_command(op: Op, target: &Target, n: u64) -> String {
    let offsets: Vec<String> = random_blocks().iter().map(|o| o.to_string()).collect();
    let per_region = n * BLOCK / 4096;
    match (op, target) {
        (Op::SeqWrite, Target::Fs(d)) => format!(
            "dd if=/dev/zero of={d}/io-$i bs=4M count={n} oflag=direct conv=fsync || exit 1"
        ),
        (Op::SeqOverwrite, Target::Fs(d)) => format!(
            "dd if=/dev/zero of={d}/io-$i bs=4M count={n} oflag=direct conv=fsync,notrunc \
             || exit 1"
        ),
        (Op::SeqWrite | Op::SeqOverwrite, Target::Raw(dev)) => format!(
            "dd if=/dev/zero of={dev} bs=4M count={n} seek=$((i*{n})) oflag=direct \
             conv=fsync,notrunc || exit 1"
        ),
        (Op::SeqRead, Target::Fs(d)) => {
            format!("dd if={d}/io-$i of=/dev/null bs=4M count={n} iflag=direct || exit 1")
        }
        (Op::SeqRead, Target::Raw(dev)) => format!(
            "dd if={dev} of=/dev/null bs=4M count={n} skip=$((i*{n})) iflag=direct || exit 1"
        ),
        (Op::RandWrite, Target::Fs(d)) => format!(
            "for o in {}; do dd if=/dev/zero of={d}/io-$i bs=4k count=1 seek=$o \
             oflag=direct conv=notrunc 2>/dev/null || exit 1; done",
            offsets.join(" ")
        ),
        (Op::RandWrite, Target::Raw(dev)) => format!(
            "for o in {}; do dd if=/dev/zero of={dev} bs=4k count=1 \
             seek=$((i*{per_region}+o)) oflag=direct conv=notrunc 2>/dev/null || exit 1; done",
            offsets.join(" ")
        ),
    }
}

/// Runs `command` timed by the guest's own clock, on node1 alone (`$i`=0)
/// or on all three guests at once; the elapsed seconds of each guest.
fn timed(lab: &Lab, all: bool, command: &str) -> Vec<f64> {
    let script = format!(
        "i={}\nt0=$(cut -d' ' -f1 /proc/uptime)\n{command}\n\
         t1=$(cut -d' ' -f1 /proc/uptime)\necho \"ELAPSED $t0 $t1\"\n",
        if all { "$(hostname | tr -dc 0-9)" } else { "0" }
    );
    let outs = if all {
        lab.on_all(&script)
    } else {
        vec![lab.must(1, &script)]
    };
    outs.iter()
        .map(|out| {
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix("ELAPSED "))
                .unwrap_or_else(|| panic!("no ELAPSED line in:\n{out}"));
            let t: Vec<f64> = line
                .split_whitespace()
                .map(|w| w.parse().unwrap())
                .collect();
            t[1] - t[0]
        })
        .collect()
}

/// Aggregate rate of one run (`n` blocks per guest for the sequential
/// tests): all guests' work over the slowest guest.
fn rate(op: Op, elapsed: &[f64], n: u64) -> f64 {
    let slowest = elapsed.iter().cloned().fold(0.0, f64::max).max(0.01);
    let per_guest = match op {
        Op::RandWrite => RAND_WRITES as f64,
        _ => (n * BLOCK) as f64 / MIB as f64,
    };
    per_guest * elapsed.len() as f64 / slowest
}

/// The throughput figure. The raw target is the partition of a second
/// volume made for the benchmark and never staged: checked unmounted, not
/// the heartbeat partition, and at the start and size the GPT gives it.
/// Returns the rows and the cost of one `dd` process start (ms).
fn throughput(rt: &Rt, lab: &Lab, controller: &Controller) -> (Vec<Io>, f64) {
    let ops = [Op::SeqWrite, Op::SeqOverwrite, Op::SeqRead, Op::RandWrite];
    throughput_of(rt, lab, controller, SEQ_BLOCKS, &[false, true], &ops)
}

/// `throughput` with `n` blocks per sequential test, for one guest and/or
/// three (`guests`: all three?), the operations `ops`.
fn throughput_of(
    rt: &Rt,
    lab: &Lab,
    controller: &Controller,
    n: u64,
    guests: &[bool],
    ops: &[Op],
) -> (Vec<Io>, f64) {
    let fs = create(rt, controller, "bench-io", 2 * GIB, &[]);
    let raw = create(rt, controller, "bench-raw", 2 * GIB, &[]);
    for node in 1..=3 {
        rt.block_on(stage_and_publish(lab, node, &fs));
    }
    let part = partition_by_guid(&lab.lun(), &raw.volume_context["partitionGuid"]);
    let fs_part = partition_by_guid(&lab.lun(), &fs.volume_context["partitionGuid"]);
    assert!(part.number != 1 && part.number != fs_part.number);
    assert!(
        4 * SEQ_BLOCKS * BLOCK <= part.bytes(),
        "raw regions do not fit"
    );
    // The raw target is reached the way volumes are: a linear map over the
    // LUN, made by hand on every guest.
    let mut dev = String::new();
    for node in 1..=3 {
        dev = lab.map_by_hand(node, &raw.volume_context["partitionGuid"], "bench-raw");
    }
    lab.on_all(&format!(
        "test \"$(blockdev --getsize64 {dev})\" = {bytes} && ! grep -q '^{dev} ' /proc/mounts || \
         {{ echo '{dev} is not the unmounted benchmark map'; exit 1; }}",
        bytes = part.bytes(),
    ));
    let fs_target = Target::Fs(staging(&fs));
    let raw_target = Target::Raw(dev);

    let mut rows = Vec::new();
    for &all in guests {
        for &op in ops {
            // OCFS2 first: the random writes overwrite the file just written.
            let ocfs2 = rate(op, &timed(lab, all, &io_command(op, &fs_target, n)), n);
            let raw = rate(op, &timed(lab, all, &io_command(op, &raw_target, n)), n);
            let guests = if all { 3 } else { 1 };
            println!(
                "  {} x{guests}: ocfs2 {} raw {}",
                op.name(),
                num(ocfs2),
                num(raw)
            );
            rows.push(Io {
                op,
                guests,
                ocfs2,
                raw,
            });
        }
    }
    // What a dd process costs by itself, to read the random figure by.
    let spawn = timed(
        lab,
        false,
        &format!(
            "for o in $(seq {RAND_WRITES}); do dd if=/dev/zero of=/dev/null bs=4k count=1 \
             2>/dev/null; done"
        ),
    )[0] * 1000.0
        / RAND_WRITES as f64;
    for node in 1..=3 {
        lab.unmap_by_hand(node, "bench-raw");
    }
    // Off node1 again, so the heartbeat figure counts only its own mounts.
    rt.block_on(unpublish_and_unstage(lab, 1, &fs));
    (rows, spawn)
}

/// `t` with a row per measurement: test, guests, unit, the two rates and
/// their ratio.
fn io_rows(mut t: Table, rows: &[Io]) -> Table {
    for io in rows {
        t.row(vec![
            io.op.name().into(),
            io.guests.to_string(),
            io.unit().into(),
            num(io.ocfs2),
            num(io.raw),
            format!("{:.2}", io.ratio()),
        ]);
    }
    t
}

fn report_io(r: &mut Report, rows: &[Io], spawn_ms: f64) {
    let t = Table::new(
        "Throughput: OCFS2 volume vs the raw map of a second volume",
        &["test", "guests", "unit", "OCFS2", "raw", "OCFS2/raw"],
    )
    .note(format!(
        "Same guests, same tool: busybox dd with O_DIRECT (the image has no coreutils dd, no fio). \
         Sequential: {} MiB per guest in 4 MiB blocks (writes with conv=fsync); a new file \
         allocates its extents as it goes, the overwrite rewrites it in place (raw: the same \
         region written again); \
         random: {RAND_WRITES} single-block 4 KiB O_DIRECT writes per guest at fixed pseudo-random \
         offsets in its 256 MiB region, one dd process each (seek=), overwriting the file \
         (OCFS2) or region (raw) written before",
        SEQ_BLOCKS * BLOCK / MIB
    ))
    .note(format!(
        "A dd process alone costs {} ms in a guest, so the random figure is mostly process \
         start-up; 3 guests: each writes its own file / its own raw region at once, rate = \
         all bytes / the slowest guest's time",
        num(spawn_ms)
    ))
    .note("Goal: OCFS2/raw >= 0.9 for one-guest sequential I/O");
    r.table(&io_rows(t, rows));
    for io in rows
        .iter()
        .filter(|io| io.guests == 1 && io.op != Op::RandWrite)
    {
        println!(
            "goal OCFS2/raw >= 0.9, one guest, {}: {:.2} -> {}",
            io.op.name(),
            io.ratio(),
            if io.ratio() >= 0.9 { "met" } else { "NOT met" }
        );
    }
    let label = |io: &Io| match io.op {
        Op::SeqWrite => format!("write x{}", io.guests),
        Op::SeqOverwrite => format!("overwrite x{}", io.guests),
        Op::SeqRead => format!("read x{}", io.guests),
        Op::RandWrite => format!("4K rand x{}", io.guests),
    };
    let seq: Vec<&Io> = rows.iter().filter(|io| io.op != Op::RandWrite).collect();
    let seq_labels: Vec<String> = seq.iter().map(|io| label(io)).collect();
    let seq_refs: Vec<&str> = seq_labels.iter().map(String::as_str).collect();
    r.chart(
        &Chart::bars(
            "io-sequential",
            "Sequential O_DIRECT throughput, 1 and 3 guests (x1, x3)",
            "MiB/s (aggregate)",
            &seq_refs,
        )
        .bar_series("OCFS2", &seq.iter().map(|io| io.ocfs2).collect::<Vec<_>>())
        .bar_series(
            "raw partition",
            &seq.iter().map(|io| io.raw).collect::<Vec<_>>(),
        ),
    );
    let all_labels: Vec<String> = rows.iter().map(label).collect();
    let all_refs: Vec<&str> = all_labels.iter().map(String::as_str).collect();
    r.chart(
        &Chart::bars(
            "io-ratio",
            "OCFS2 / raw partition, same guest, same dd",
            "OCFS2 / raw",
            &all_refs,
        )
        .bar_series("OCFS2/raw", &rows.iter().map(Io::ratio).collect::<Vec<_>>())
        .goal(0.9, "goal: >= 0.9 (1 guest, sequential)"),
    );
    for io in rows {
        println!(
            "BENCH io test={:?} guests={} unit={} ocfs2={:.2} raw={:.2} ratio={:.3}",
            io.op.name(),
            io.guests,
            io.unit(),
            io.ocfs2,
            io.raw,
            io.ratio()
        );
    }
}

// --- raw block volumes against the raw partition -----------------------------

/// A raw block volume published on every guest against the raw map of a
/// second, never-staged volume: the same guests, the same `dd` (O_DIRECT)
/// on the published device and on the map made by hand. Rows: the volume
/// in `ocfs2`, the map in `raw`.
fn block_throughput(rt: &Rt, lab: &Lab, controller: &Controller) -> Vec<Io> {
    let mut req = create_request("bench-block", 2 * GIB);
    req.volume_capabilities = vec![block_cap()];
    let t = Instant::now();
    let block = rt
        .block_on(async { controller.client().await.create_volume(req).await })
        .expect("create a block volume")
        .into_inner()
        .volume
        .unwrap();
    println!(
        "  2 GiB raw block volume created (zeroed by the host controller: a hole punched in the \
         LUN file) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let raw = create(rt, controller, "bench-raw-b", 2 * GIB, &[]);
    for node in 1..=3 {
        rt.block_on(stage_and_publish_block(lab, node, &block));
    }
    let mut dev = String::new();
    for node in 1..=3 {
        dev = lab.map_by_hand(node, &raw.volume_context["partitionGuid"], "bench-raw-b");
    }
    let target = block_target(&block);
    let (block_t, raw_t) = (Target::Raw(target), Target::Raw(dev));
    let mut rows = Vec::new();
    for all in [false, true] {
        for op in [Op::SeqOverwrite, Op::SeqRead, Op::RandWrite] {
            // Written once first, so reads and overwrites find data.
            if op == Op::SeqOverwrite {
                timed(lab, all, &io_command(op, &block_t, SEQ_BLOCKS));
                timed(lab, all, &io_command(op, &raw_t, SEQ_BLOCKS));
            }
            let volume = rate(
                op,
                &timed(lab, all, &io_command(op, &block_t, SEQ_BLOCKS)),
                SEQ_BLOCKS,
            );
            let bare = rate(
                op,
                &timed(lab, all, &io_command(op, &raw_t, SEQ_BLOCKS)),
                SEQ_BLOCKS,
            );
            let guests = if all { 3 } else { 1 };
            println!(
                "  {} x{guests}: block volume {} raw {}",
                op.name(),
                num(volume),
                num(bare)
            );
            rows.push(Io {
                op,
                guests,
                ocfs2: volume,
                raw: bare,
            });
        }
    }
    for node in 1..=3 {
        lab.unmap_by_hand(node, "bench-raw-b");
        rt.block_on(unpublish_and_unstage_block(lab, node, &block));
    }
    rt.block_on(async {
        let mut c = controller.client().await;
        for v in [&block, &raw] {
            c.delete_volume(delete_request(&v.volume_id)).await.unwrap();
        }
    });
    rows
}

fn report_block(r: &mut Report, rows: &[Io]) {
    let t = Table::new(
        "Throughput: raw block volume (published device) vs the raw map of a second volume",
        &["test", "guests", "unit", "block volume", "raw", "block/raw"],
    )
    .note(format!(
        "Same guests, same busybox dd with O_DIRECT; the block volume is written through the \
         device NodePublishVolume bound at the pod's target, the raw map is made by hand over \
         another volume's partition. Sequential: {} MiB per guest in 4 MiB blocks; random: \
         {RAND_WRITES} 4 KiB writes per guest, one dd each; 3 guests: each its own region at once",
        SEQ_BLOCKS * BLOCK / MIB
    ))
    .note("Goal: block/raw >= 0.95");
    r.table(&io_rows(t, rows));
    for io in rows.iter().filter(|io| io.op != Op::RandWrite) {
        println!(
            "goal block/raw >= 0.95, {} x{}: {:.2} -> {}",
            io.op.name(),
            io.guests,
            io.ratio(),
            if io.ratio() >= 0.95 { "met" } else { "NOT met" }
        );
    }
    for io in rows {
        println!(
            "BENCH block test={:?} guests={} unit={} block={:.2} raw={:.2} ratio={:.3}",
            io.op.name(),
            io.guests,
            io.unit(),
            io.ocfs2,
            io.raw,
            io.ratio()
        );
    }
}

// --- clones ---------------------------------------------------------------------

const CLONE_SOURCE: u64 = 20 * GIB;
const CLONE_FILLED_MIB: u64 = 2048;

struct CloneRun {
    /// CreateVolume from the source, end to end (looks, grace, copy, names).
    create_s: f64,
    /// What the controller copied (the used clusters) and how long it took.
    copied_mib: u64,
    copy_s: f64,
    /// `dd` of as many bytes from the source to the clone's place, O_DIRECT,
    /// on the same LUN file, on the same host.
    dd_s: f64,
    /// CreateSnapshot of the source (the same looks, grace and copy), and
    /// CreateVolume from that snapshot (a copy, no grace).
    snapshot_s: f64,
    restore_s: f64,
}

/// A 20 GiB volume holding 2 GiB of files (written by node1), unstaged,
/// cloned; then the anchor: the same number of bytes copied by `dd`.
fn clone_rate(rt: &Rt, lab: &Lab, controller: &Controller) -> CloneRun {
    let src = create(rt, controller, "bench-clone-src", CLONE_SOURCE, &[]);
    rt.block_on(stage_and_publish(lab, 1, &src));
    let t = target(&src);
    // Random bytes, not zeros: the copy turns zeros into a zeroing of the
    // target (a punched hole on the LUN file), which dd does not.
    lab.must(
        1,
        &format!(
            "dd if=/dev/urandom of=/tmp/r bs=4M count=64 2>/dev/null && \
             for i in $(seq 1 {n}); do dd if=/tmp/r of={t}/f$i bs=4M oflag=direct \
             2>/dev/null || exit 1; done; rm /tmp/r; sync",
            n = CLONE_FILLED_MIB / 256
        ),
    );
    rt.block_on(unpublish_and_unstage(lab, 1, &src));
    let mut req = create_request("bench-clone", CLONE_SOURCE);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: src.volume_id.clone(),
            },
        )),
    });
    let started = Instant::now();
    let copy = rt
        .block_on(async { controller.client().await.create_volume(req).await })
        .expect("clone")
        .into_inner()
        .volume
        .unwrap();
    let create_s = started.elapsed().as_secs_f64();
    let log = controller.log_text();
    let line = log
        .lines()
        .rfind(|l| l.contains("copied the clone's source"))
        .expect("the controller logs its copy")
        .to_string();
    let field = |key: &str| -> f64 {
        line.split(&format!("{key}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let (copied_mib, copy_s) = (field("mib") as u64, field("seconds"));
    let lun = lab.lun();
    let (from, to) = (
        volume_on(&lun, &src.volume_context["partitionGuid"]).offset,
        volume_on(&lun, &copy.volume_context["partitionGuid"]).offset,
    );
    let dd = Instant::now();
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", lun.display()))
        .arg(format!("of={}", lun.display()))
        .args([
            "bs=8M",
            "iflag=direct,skip_bytes",
            "oflag=direct,seek_bytes",
        ])
        .args(["conv=notrunc,fsync", "status=none"])
        .arg(format!("skip={from}"))
        .arg(format!("seek={to}"))
        .arg(format!("count={}", copied_mib / 8))
        .output()
        .unwrap();
    let dd_s = dd.elapsed().as_secs_f64();
    assert!(out.status.success(), "dd: {out:?}");
    println!(
        "  20 GiB volume holding {CLONE_FILLED_MIB} MiB cloned in {create_s:.1} s; {copied_mib} MiB \
         copied in {copy_s:.2} s; dd of as many bytes {dd_s:.2} s"
    );
    // The dd overwrote the clone: it goes first. Then a snapshot of the
    // source, and a volume restored from it.
    let (snapshot_s, restore_s) = rt.block_on(async {
        let mut c = controller.client().await;
        c.delete_volume(delete_request(&copy.volume_id))
            .await
            .unwrap();
        let started = Instant::now();
        let snap = c
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: src.volume_id.clone(),
                name: "bench-snap".into(),
                ..Default::default()
            })
            .await
            .expect("snapshot")
            .into_inner()
            .snapshot
            .unwrap();
        let snapshot_s = started.elapsed().as_secs_f64();
        // Room for the restore (the LUN holds two 20 GiB volumes): the
        // snapshot outlives its source.
        c.delete_volume(delete_request(&src.volume_id))
            .await
            .unwrap();
        let mut req = create_request("bench-restored", CLONE_SOURCE);
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let started = Instant::now();
        let back = c
            .create_volume(req)
            .await
            .expect("restore")
            .into_inner()
            .volume
            .unwrap();
        let restore_s = started.elapsed().as_secs_f64();
        c.delete_volume(delete_request(&back.volume_id))
            .await
            .unwrap();
        c.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
        (snapshot_s, restore_s)
    });
    println!(
        "  snapshot of it {snapshot_s:.1} s; a volume restored from the snapshot {restore_s:.1} s"
    );
    CloneRun {
        create_s,
        copied_mib,
        copy_s,
        dd_s,
        snapshot_s,
        restore_s,
    }
}

fn report_clone(r: &mut Report, run: &CloneRun) {
    let rate = |s: f64| run.copied_mib as f64 / s.max(1e-6);
    let mut t = Table::new(
        "Clone: a 20 GiB filesystem volume holding 2 GiB of files",
        &["figure", "value"],
    )
    .note(
        "The controller (on the host, as in the lab tests) copies only the clusters the \
         filesystem's global bitmap marks used, 8 MiB O_DIRECT reads and writes on the LUN \
         file; the anchor is GNU dd copying as many bytes the same way on the same file, \
         right after",
    )
    .note("CreateVolume includes the 3 s wait for stages that began before the source was marked");
    t.row(vec![
        "CreateVolume from the volume (s)".into(),
        format!("{:.1}", run.create_s),
    ]);
    t.row(vec![
        "bytes copied (MiB)".into(),
        run.copied_mib.to_string(),
    ]);
    t.row(vec!["copy (s)".into(), format!("{:.2}", run.copy_s)]);
    t.row(vec!["copy rate (MiB/s)".into(), num(rate(run.copy_s))]);
    t.row(vec![
        "dd of the same bytes (MiB/s)".into(),
        num(rate(run.dd_s)),
    ]);
    t.row(vec![
        "copy / dd".into(),
        format!("{:.2}", rate(run.copy_s) / rate(run.dd_s)),
    ]);
    t.row(vec![
        "CreateSnapshot of the source (s)".into(),
        format!("{:.1}", run.snapshot_s),
    ]);
    t.row(vec![
        "CreateVolume from the snapshot (s)".into(),
        format!("{:.1}", run.restore_s),
    ]);
    r.table(&t);
    println!(
        "BENCH clone source_gib=20 filled_mib={CLONE_FILLED_MIB} create_s={:.2} copied_mib={} \
         copy_s={:.2} copy_mib_s={:.1} dd_mib_s={:.1} ratio={:.3} snapshot_s={:.2} restore_s={:.2}",
        run.create_s,
        run.copied_mib,
        run.copy_s,
        rate(run.copy_s),
        rate(run.dd_s),
        rate(run.copy_s) / rate(run.dd_s),
        run.snapshot_s,
        run.restore_s
    );
}

// --- node loss under each o2cb profile -----------------------------------------

/// The chart's `o2cb.profile` choices, with the timeouts each sets.
fn profiles() -> [(&'static str, Timeouts); 2] {
    [("default", Timeouts::default()), ("fast", Timeouts::FAST)]
}

struct Loss {
    profile: &'static str,
    timeouts: Timeouts,
    what: &'static str,
    /// From the loss until each survivor had created and fsynced a new file.
    resumed: Vec<f64>,
    /// From the loss until both survivors' plugins logged node3 dead.
    reported: f64,
    /// Boot, plugin ready and the volume staged again on node3.
    rejoined: f64,
}

const STOPPED: &str = "o2cb member stopped heartbeating";

fn stopped_reports(lab: &Lab, node: usize) -> usize {
    let (_, out) = lab.exec(node, &format!("grep -cF '{STOPPED}' /tmp/node.log"));
    out.trim().parse().unwrap_or(0)
}

/// node3 is lost twice, by power loss and by a network cut, while all three
/// have a volume mounted; plugins with the timeouts of o2cb profile
/// `profile` (the chart's `o2cb.profile`).
fn node_loss(rt: &Rt, profile: &'static str, timeouts: Timeouts) -> Vec<Loss> {
    let mut lab = Lab::up(&format!("bench-loss-{profile}"), 3, LAB_LUN);
    lab.timeouts = timeouts;
    let controller = plugins_ready(rt, &lab, &format!("o2cb profile {profile}"), |node| {
        lab.start_node_plugin(node, CLUSTER)
    });
    let v = create(rt, &controller, "bench-loss", GIB, &[]);
    for node in 1..=3 {
        rt.block_on(stage_and_publish(&lab, node, &v));
    }
    let dir = target(&v);
    let mut out = Vec::new();
    for what in ["power loss", "network cut"] {
        let seen: Vec<usize> = [1, 2].map(|n| stopped_reports(&lab, n)).to_vec();
        let lost = Instant::now();
        if what == "power loss" {
            lab.crash(3);
        } else {
            lab.must(3, "ip link set eth0 down");
        }
        // A new file on each survivor waits for node3's eviction.
        let tag = what.replace(' ', "-");
        let resumed: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = [1, 2]
                .map(|n| {
                    let (lab, dir, tag) = (&lab, &dir, &tag);
                    s.spawn(move || {
                        lab.must(
                            n,
                            &format!(
                                "echo x | dd of={dir}/{tag}-$(hostname) conv=fsync 2>/dev/null"
                            ),
                        );
                        lost.elapsed().as_secs_f64()
                    })
                })
                .into_iter()
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        while [1, 2]
            .iter()
            .zip(&seen)
            .any(|(&n, &k)| stopped_reports(&lab, n) <= k)
        {
            assert!(
                Instant::now() < deadline,
                "{what}: no plugin reported node3 dead"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let reported = lost.elapsed().as_secs_f64();
        // A cut-off node3 fences itself (no quorum); its QEMU then exits.
        let deadline = Instant::now() + Duration::from_secs(300);
        while lab.alive(3) {
            assert!(
                Instant::now() < deadline,
                "{what}: node3 never fenced itself"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = Instant::now();
        lab.start_again(3);
        lab.write_members_on(3, &[1, 2, 3]);
        lab.start_node_plugin(3, CLUSTER);
        rt.block_on(lab.wait_node_ready(3, Duration::from_secs(300)));
        rt.block_on(stage_and_publish(&lab, 3, &v));
        let rejoined = t.elapsed().as_secs_f64();
        println!(
            "  {profile}: {what}: survivors wrote again after {:.1} s / {:.1} s, plugins reported \
             node3 dead after {reported:.1} s; node3 rejoined in {rejoined:.1} s",
            resumed[0], resumed[1]
        );
        out.push(Loss {
            profile,
            timeouts,
            what,
            resumed,
            reported,
            rejoined,
        });
    }
    drop(controller);
    drop(lab);
    out
}

/// Node loss under every profile, one lab after the other.
fn node_losses(rt: &Rt, step: &dyn Fn(&str)) -> Vec<Loss> {
    let mut all = Vec::new();
    for (profile, timeouts) in profiles() {
        step(&format!("node-loss lab, o2cb profile {profile}"));
        all.extend(node_loss(rt, profile, timeouts));
    }
    all
}

fn report_node_loss(r: &mut Report, losses: &[Loss]) {
    let mut t = Table::new(
        "Node loss under each o2cb profile (the chart's o2cb.profile)",
        &[
            "profile (dead time)",
            "node3 lost by",
            "survivors write again (s)",
            "ratio to the dead time",
            "plugins report it dead (s)",
            "node3 boots and rejoins (s)",
        ],
    )
    .note("times from the loss; the survivors' first fsynced write waits for o2cb to evict node3")
    .note("a cut-off node fences itself (no quorum) and is evicted after that");
    for l in losses {
        let worst = l.resumed.iter().copied().fold(0.0, f64::max);
        let dead = l.timeouts.dead_time().as_secs_f64();
        t.row(vec![
            format!("{} ({dead:.0} s)", l.profile),
            l.what.into(),
            num(worst),
            format!("{:.2}", worst / dead),
            num(l.reported),
            num(l.rejoined),
        ]);
        println!(
            "BENCH node_loss profile={} what={} dead_s={dead:.0} resumed_s={worst:.1} reported_s={:.1} rejoined_s={:.1}",
            l.profile,
            l.what.replace(' ', "_"),
            l.reported,
            l.rejoined
        );
    }
    r.table(&t);
}

// --- heartbeat I/O by mounted volumes --------------------------------------------

struct Heartbeat {
    /// ocfs2 filesystems mounted on node1 during the interval.
    mounted: usize,
    writes_s: f64,
    write_kib_s: f64,
    reads_s: f64,
    read_kib_s: f64,
}

/// Stages `vols` on `node`, HB_STAGE_PARALLEL at a time.
fn stage_many(rt: &Rt, lab: &Lab, node: usize, vols: &[Volume]) {
    let dirs: Vec<String> = vols.iter().map(staging).collect();
    lab.must(node, &format!("mkdir -p {}", dirs.join(" ")));
    rt.block_on(async {
        let client = lab.node_client(node).await;
        let results: Vec<_> = futures::stream::iter(vols)
            .map(|v| {
                let mut n = client.clone();
                async move {
                    n.node_stage_volume(stage_request(v, &staging(v)))
                        .await
                        .map_err(|e| format!("{}: {e:?}", v.volume_id))
                }
            })
            .buffer_unordered(HB_STAGE_PARALLEL)
            .collect()
            .await;
        for r in results {
            r.unwrap_or_else(|e| panic!("node{node}: stage: {e}"));
        }
    });
}

/// /sys/block/vda/stat on node1 over HB_IDLE_SECS with nothing else writing.
fn idle_io(lab: &Lab) -> Heartbeat {
    let out = lab.must(
        1,
        &format!(
            "echo M $(awk '$3==\"ocfs2\"{{print $1}}' /proc/mounts | sort -u | wc -l)\n\
             echo A $(cat /sys/block/vda/stat) $(cut -d' ' -f1 /proc/uptime)\n\
             sleep {HB_IDLE_SECS}\n\
             echo B $(cat /sys/block/vda/stat) $(cut -d' ' -f1 /proc/uptime)"
        ),
    );
    let fields = |tag: &str| -> Vec<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} line in:\n{out}"))
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect()
    };
    let (m, a, b) = (fields("M "), fields("A "), fields("B "));
    // stat: 0 read I/Os, 2 read sectors, 4 write I/Os, 6 write sectors;
    // the uptime was appended last.
    let secs = b[b.len() - 1] - a[a.len() - 1];
    let d = |i: usize| (b[i] - a[i]) / secs;
    Heartbeat {
        mounted: m[0] as usize,
        writes_s: d(4),
        write_kib_s: d(6) / 2.0,
        reads_s: d(0),
        read_kib_s: d(2) / 2.0,
    }
}

/// Mounts small volumes of heartbeat `mode` on node1 up to each count in
/// HB_COUNTS and measures node1's LUN I/O at rest. Returns the points and
/// a note when a count was lowered to keep within the time budget.
fn heartbeat_io(
    rt: &Rt,
    lab: &Lab,
    controller: &Controller,
    mode: &str,
) -> (Vec<Heartbeat>, Option<String>) {
    let mut vols: Vec<Volume> = Vec::new();
    let mut points = Vec::new();
    let mut note = None;
    let mut per_mount = 0.0;
    for &wanted in HB_COUNTS {
        let mut target = wanted;
        let projected = per_mount * (wanted - vols.len()) as f64;
        if projected > HB_BUDGET_SECS && (vols.len()..wanted).contains(&HB_FALLBACK) {
            note = Some(format!(
                "{mode} heartbeat: {wanted} mounts would take ~{projected:.0} s more in TCG \
                 ({per_mount:.1} s each); measured {HB_FALLBACK} instead"
            ));
            target = HB_FALLBACK;
        }
        let new: Vec<Volume> = (vols.len()..target)
            .map(|i| {
                create(
                    rt,
                    controller,
                    &format!("hb-{mode}-{i}"),
                    64 * MIB,
                    &[("heartbeat", mode), ("nodeSlots", "4")],
                )
            })
            .collect();
        let t = Instant::now();
        stage_many(rt, lab, 1, &new);
        per_mount = t.elapsed().as_secs_f64() / new.len().max(1) as f64;
        println!(
            "  {mode}: {target} volumes mounted on node1 ({:.1} s per mount)",
            per_mount
        );
        vols.extend(new);
        // Let journals and the new regions settle before counting.
        std::thread::sleep(Duration::from_secs(5));
        points.push(idle_io(lab));
    }
    (points, note)
}

fn report_heartbeat(r: &mut Report, global: &[Heartbeat], local: &[Heartbeat], notes: &[String]) {
    let mut t = Table::new(
        "Heartbeat I/O of one node by mounted volumes",
        &[
            "heartbeat",
            "ocfs2 mounts on node1",
            "writes/s",
            "write KiB/s",
            "reads/s",
            "read KiB/s",
        ],
    )
    .note(format!(
        "node1's /sys/block/vda/stat (the shared LUN) over {HB_IDLE_SECS} s idle, nothing else \
         writing; volumes of 64 MiB, 4 slots, mounted on node1 only. Global: one region per LUN \
         whatever the mounts; local: one region per mounted volume"
    ));
    for n in notes {
        t = t.note(n.clone());
    }
    for (mode, pts) in [("global", global), ("local", local)] {
        for p in pts {
            t.row(vec![
                mode.into(),
                p.mounted.to_string(),
                num(p.writes_s),
                num(p.write_kib_s),
                num(p.reads_s),
                num(p.read_kib_s),
            ]);
        }
    }
    r.table(&t);
    let line = |pts: &[Heartbeat], f: fn(&Heartbeat) -> f64| -> Vec<(f64, f64)> {
        pts.iter().map(|p| (p.mounted as f64, f(p))).collect()
    };
    r.chart(
        &Chart::lines(
            "heartbeat-writes",
            "Heartbeat writes of one node by mounted volumes",
            "ocfs2 volumes mounted on the node",
            "writes/s to the LUN",
            false,
        )
        .series("global heartbeat", line(global, |p| p.writes_s))
        .series("local heartbeat", line(local, |p| p.writes_s)),
    );
    r.chart(
        &Chart::lines(
            "heartbeat-kib",
            "Heartbeat traffic of one node by mounted volumes",
            "ocfs2 volumes mounted on the node",
            "KiB/s to and from the LUN",
            false,
        )
        .series("global, written", line(global, |p| p.write_kib_s))
        .series("local, written", line(local, |p| p.write_kib_s))
        .series("global, read", line(global, |p| p.read_kib_s))
        .series("local, read", line(local, |p| p.read_kib_s)),
    );
    for (mode, pts) in [("global", global), ("local", local)] {
        for p in pts {
            println!(
                "BENCH heartbeat_io heartbeat={mode} mounted={} writes_s={:.2} write_kib_s={:.2} \
                 reads_s={:.2} read_kib_s={:.2}",
                p.mounted, p.writes_s, p.write_kib_s, p.reads_s, p.read_kib_s
            );
        }
    }
}

// --- transport: the shared virtio LUN file against iSCSI with dm-multipath ----

/// Sequential blocks (4 MiB) per test in the transport comparison: iSCSI
/// through the lab's relays carries a few MB/s under TCG.
const TRANSPORT_BLOCKS: u64 = 16;

/// One transport's figures, all from the same kind of measurement.
struct Transport {
    name: &'static str,
    stage: Stage,
    io: Vec<Io>,
}

fn transport_of(rt: &Rt, lab: &Lab, controller: &Controller, name: &'static str) -> Transport {
    let stage = Stage::of_new_volume(rt, lab, controller, "global");
    let ops = [Op::SeqWrite, Op::SeqOverwrite, Op::SeqRead];
    let (io, _) = throughput_of(rt, lab, controller, TRANSPORT_BLOCKS, &[false], &ops);
    Transport { name, stage, io }
}

/// The SAN lab: iSCSI on two paths per guest through dm-multipath, the
/// driver given the map's by-id path; controller and plugins as `cluster`.
fn cluster_san(rt: &Rt, name: &str) -> (Lab, Controller) {
    let lab = Lab::up_san(name, 3, LAB_LUN);
    let controller = plugins_ready(rt, &lab, "multipath LUN", |node| {
        lab.start_node_plugin(node, CLUSTER)
    });
    (lab, controller)
}

fn report_transport(r: &mut Report, runs: &[Transport]) {
    let mut t = Table::new(
        "Transport: the shared virtio LUN file against iSCSI over two paths with dm-multipath",
        &[
            "LUN",
            "NodeStage p50 (s)",
            "bare mount p50 (s)",
            "stage/bare",
            "test",
            "OCFS2 (MiB/s)",
            "raw (MiB/s)",
            "OCFS2/raw",
        ],
    )
    .note(format!(
        "Same run, same guests' image, one guest; sequential busybox dd with O_DIRECT, \
         {} MiB per test in 4 MiB blocks; raw: the map of a second, never-mounted volume",
        TRANSPORT_BLOCKS * BLOCK / MIB
    ))
    .note(
        "iSCSI: tgtd in the lab's namespace serving the same kind of sparse file, each path a \
         QEMU user-mode NIC whose portal is relayed to tgtd; absolute figures are the lab's, the \
         ratios are the point",
    );
    for run in runs {
        let st = &run.stage.stage;
        for io in &run.io {
            t.row(vec![
                run.name.into(),
                num(percentile(st, 0.5)),
                num(percentile(&run.stage.bare, 0.5)),
                format!("{:.2}", run.stage.ratio()),
                io.op.name().into(),
                num(io.ocfs2),
                num(io.raw),
                format!("{:.2}", io.ratio()),
            ]);
        }
    }
    r.table(&t);
    for run in runs {
        println!(
            "BENCH transport lun={:?} stage_p50_s={:.3} bare_p50_s={:.3} ratio={:.2}",
            run.name,
            percentile(&run.stage.stage, 0.5),
            percentile(&run.stage.bare, 0.5),
            run.stage.ratio()
        );
        for io in &run.io {
            println!(
                "BENCH transport lun={:?} test={:?} ocfs2={:.2} raw={:.2} ratio={:.3}",
                run.name,
                io.op.name(),
                io.ocfs2,
                io.raw,
                io.ratio()
            );
        }
    }
}

fn main() {
    // A lab image of our own: the release binary must not replace the
    // image other labs on this machine boot from.
    if std::env::var_os("LAB_IMAGE_DIR").is_none() {
        std::env::set_var(
            "LAB_IMAGE_DIR",
            common::kube::user_cache().join("lab/bench-image"),
        );
    }
    let rt = Runtime::new().unwrap();
    let mut report = Report::new();
    let started = Instant::now();
    println!("\nocfs2-csi node benchmark (lab: 3 TCG guests, 1 vCPU each)");
    println!("{}", report.machine.line());
    println!("{}", figure::CAVEAT);
    let step = |what: &str| println!("[{:>4.0} s] {what}", started.elapsed().as_secs_f64());

    if std::env::var("LAB_BENCH_ONLY").as_deref() == Ok("node-loss") {
        let losses = node_losses(&rt, &step);
        report_node_loss(&mut report, &losses);
        report.finish();
        step("done");
        return;
    }

    if std::env::var("LAB_BENCH_ONLY").as_deref() == Ok("transport") {
        step("virtio LUN lab, transport figures");
        let (lab, controller) = cluster(&rt, "bench-global", "global");
        let virtio = transport_of(&rt, &lab, &controller, "virtio (shared file)");
        drop(controller);
        drop(lab);
        step("SAN lab, transport figures");
        let (lab, controller) = cluster_san(&rt, "bench-san");
        let san = transport_of(&rt, &lab, &controller, "iSCSI + multipath");
        drop(controller);
        drop(lab);
        report_transport(&mut report, &[virtio, san]);
        report.finish();
        step("done");
        return;
    }

    if std::env::var("LAB_BENCH_ONLY").as_deref() == Ok("clone") {
        step("global heartbeat lab, clones");
        let (lab, controller) = cluster(&rt, "bench-global", "global");
        let clone = clone_rate(&rt, &lab, &controller);
        report_clone(&mut report, &clone);
        report.finish();
        step("done");
        return;
    }

    if std::env::var("LAB_BENCH_ONLY").as_deref() == Ok("block") {
        step("global heartbeat lab, raw block volumes");
        let (lab, controller) = cluster(&rt, "bench-global", "global");
        let block = block_throughput(&rt, &lab, &controller);
        report_block(&mut report, &block);
        report.finish();
        step("done");
        return;
    }

    let only_stage = std::env::var("LAB_BENCH_ONLY").as_deref() == Ok("stage");
    if only_stage {
        step("global heartbeat lab, stage latency");
        let (lab, controller) = cluster(&rt, "bench-global", "global");
        let global_stage = Stage::of_new_volume(&rt, &lab, &controller, "global");
        drop(controller);
        drop(lab);
        step("local heartbeat lab, stage latency");
        let (lab, controller) = cluster(&rt, "bench-local", "local");
        let local_stage = Stage::of_new_volume(&rt, &lab, &controller, "local");
        drop(controller);
        drop(lab);
        report_stage(&mut report, &global_stage, &local_stage);
        report.finish();
        step("done");
        return;
    }

    step("global heartbeat lab");
    let (lab, controller) = cluster(&rt, "bench-global", "global");
    let global_stage = Stage::of_new_volume(&rt, &lab, &controller, "global");
    step("growth by nodes mounted");
    let growth = growth_by_nodes(&rt, &lab, &controller);
    step("throughput, OCFS2 vs raw");
    let (io, spawn_ms) = throughput(&rt, &lab, &controller);
    step("throughput, raw block volume vs raw");
    let block = block_throughput(&rt, &lab, &controller);
    step("clone of a 20 GiB volume holding 2 GiB");
    let clone = clone_rate(&rt, &lab, &controller);
    step("transport figures, virtio LUN");
    let virtio = transport_of(&rt, &lab, &controller, "virtio (shared file)");
    step("heartbeat I/O, global");
    let (global_hb, global_note) = heartbeat_io(&rt, &lab, &controller, "global");
    drop(controller);
    drop(lab);
    step("SAN lab, transport figures");
    let (lab, controller) = cluster_san(&rt, "bench-san");
    let san = transport_of(&rt, &lab, &controller, "iSCSI + multipath");
    drop(controller);
    drop(lab);
    report_transport(&mut report, &[virtio, san]);
    report_growth(&mut report, &growth);
    report_io(&mut report, &io, spawn_ms);
    report_block(&mut report, &block);
    report_clone(&mut report, &clone);

    step("local heartbeat lab");
    let (lab, controller) = cluster(&rt, "bench-local", "local");
    let local_stage = Stage::of_new_volume(&rt, &lab, &controller, "local");
    step("heartbeat I/O, local");
    let (local_hb, local_note) = heartbeat_io(&rt, &lab, &controller, "local");
    drop(controller);
    drop(lab);

    let losses = node_losses(&rt, &step);

    report_stage(&mut report, &global_stage, &local_stage);
    let notes: Vec<String> = global_note.into_iter().chain(local_note).collect();
    report_heartbeat(&mut report, &global_hb, &local_hb, &notes);
    report_node_loss(&mut report, &losses);
    let m = &report.machine;
    println!(
        "BENCH machine host={} cores={} kernel={} cpu={:?}",
        m.host, m.cores, m.kernel, m.cpu
    );
    report.finish();
    step("done");
}
