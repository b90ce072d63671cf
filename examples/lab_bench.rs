//! `make bench`, lab part: node-side latencies on real OCFS2 kernels.
//!
//! - NodeStageVolume latency (p50/p95 of repeated stage+unstage on one
//!   guest), with global heartbeat and, in a second lab, local heartbeat;
//! - NodeExpandVolume duration by the number of guests that have the volume
//!   mounted (1, 2, 3): the first call grows, the others are no-ops.
//!
//! Printed, never enforced. Times are TCG guests on a shared machine: not
//! production figures; compare the two heartbeat modes and the growth curve.

#[path = "../tests/common/mod.rs"]
mod common;

use common::lab::*;
use common::*;
use ocfs2_csi::csi::*;
use std::time::{Duration, Instant};

const CLUSTER: &str = "testclu"; // the name the test harness gives the controller
const STAGES: usize = 10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Boots a lab, starts the controller and three node plugins in `mode`.
fn cluster(rt: &tokio::runtime::Runtime, name: &str, mode: &str) -> (Lab, Controller) {
    let lab = Lab::up(name, 3, "16G");
    let dir = tempfile::tempdir().unwrap().keep();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lab.lun()), &dir));
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        lab.must(
            node,
            &format!(
                "mkdir -p /var/lib/ocfs2-csi && ocfs2-csi node --endpoint tcp://0.0.0.0:10000 \
                   --node-id node{node} --cluster-name {CLUSTER} --heartbeat {mode} \
                   --members-file /etc/ocfs2-csi/members --lun /dev/vda \
                   --state-dir /var/lib/ocfs2-csi >>/tmp/node.log 2>&1 </dev/null &
                 echo $! > /tmp/node.pid"
            ),
        );
    }
    for node in 1..=3 {
        let took = rt.block_on(lab.wait_node_ready(node, Duration::from_secs(120)));
        println!(
            "  node{node} plugin ready ({mode} heartbeat) in {:.1} s",
            took.as_secs_f64()
        );
    }
    (lab, controller)
}

fn create(
    rt: &tokio::runtime::Runtime,
    c: &Controller,
    name: &str,
    bytes: u64,
    mode: &str,
) -> Volume {
    let mut req = create_request(name, bytes);
    req.parameters.insert("heartbeat".into(), mode.into());
    rt.block_on(async { c.client().await.create_volume(req).await })
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

/// Stage + unstage `STAGES` times on node1; sorted stage latencies (s).
fn stage_latencies(rt: &tokio::runtime::Runtime, lab: &Lab, v: &Volume) -> Vec<f64> {
    lab.must(1, &format!("mkdir -p {}", staging(v)));
    let mut times: Vec<f64> = rt.block_on(async {
        let mut n = lab.node_client(1).await;
        let mut times = Vec::new();
        for _ in 0..STAGES {
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

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\nocfs2-csi node benchmark (lab: 3 TCG guests, 1 vCPU each)");
    println!(
        "machine: {}, {cpus} CPUs; TCG guests on a shared machine: not production figures, compare ratios",
        host.trim()
    );

    println!("\n[global heartbeat]");
    let (lab, controller) = cluster(&rt, "bench-global", "global");
    let v = create(&rt, &controller, "bench-stage", GIB, "global");
    let global = stage_latencies(&rt, &lab, &v);

    // Growth by number of nodes mounted: mount on one more guest each round.
    let grow = create(&rt, &controller, "bench-grow", 2 * GIB, "global");
    let mut growth = Vec::new();
    for nodes in 1..=3usize {
        rt.block_on(stage_and_publish(&lab, nodes, &grow));
        let bytes = (2 + nodes as u64) * GIB;
        rt.block_on(async {
            controller
                .client()
                .await
                .controller_expand_volume(expand_request(&grow.volume_id, bytes))
                .await
        })
        .unwrap();
        let (first, rest) = rt.block_on(async {
            let t = Instant::now();
            lab.node_client(1)
                .await
                .node_expand_volume(expand_req(&grow))
                .await
                .unwrap();
            let first = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for node in 2..=nodes {
                lab.node_client(node)
                    .await
                    .node_expand_volume(expand_req(&grow))
                    .await
                    .unwrap();
            }
            (first, t.elapsed().as_secs_f64() / (nodes.max(2) - 1) as f64)
        });
        growth.push((nodes, first, if nodes > 1 { Some(rest) } else { None }));
    }
    drop(controller);
    drop(lab);

    println!("\n[local heartbeat]");
    let (lab, controller) = cluster(&rt, "bench-local", "local");
    let v = create(&rt, &controller, "bench-stage-local", GIB, "local");
    let local = stage_latencies(&rt, &lab, &v);
    drop(controller);
    drop(lab);

    println!("\nNodeStageVolume latency, {STAGES} stage+unstage rounds on one guest");
    println!("Goal: p50 < 1 s with global heartbeat");
    println!("| heartbeat | p50 (s) | p95 (s) | min (s) | max (s) |");
    println!("|---|---|---|---|---|");
    for (mode, t) in [("global", &global), ("local", &local)] {
        println!(
            "| {mode} | {:.2} | {:.2} | {:.2} | {:.2} |",
            percentile(t, 0.5),
            percentile(t, 0.95),
            t[0],
            t[t.len() - 1]
        );
    }
    println!(
        "local/global p50 ratio: {:.1}",
        percentile(&local, 0.5) / percentile(&global, 0.5)
    );
    println!("\nNodeExpandVolume (global heartbeat), 1 GiB more each round");
    println!("| nodes mounted | grow call (s) | no-op calls on the others, each (s) |");
    println!("|---|---|---|");
    for (nodes, first, rest) in &growth {
        println!(
            "| {nodes} | {first:.2} | {} |",
            rest.map_or("-".into(), |r| format!("{r:.2}"))
        );
    }
    for (mode, t) in [("global", &global), ("local", &local)] {
        println!(
            "BENCH node_stage heartbeat={mode} p50_s={:.3} p95_s={:.3}",
            percentile(t, 0.5),
            percentile(t, 0.95)
        );
    }
    for (nodes, first, _) in &growth {
        println!("BENCH node_expand nodes={nodes} seconds={first:.3}");
    }
}
