//! `make soak`: a loaded soak of each o2cb profile the chart offers
//! (`o2cb.profile`: default, fast) on the SAN lab (three TCG guests, the LUN
//! over iSCSI on two paths each through dm-multipath), asserting that no
//! node is fenced or evicted while nothing is wrong. Outside CI: an hour
//! per profile by default.
//!
//! The load, on every guest for the whole soak: writers flat out on a
//! volume all three mount (1 MiB direct writes and buffered 256 KiB
//! writes with fsync, so the iSCSI paths stay saturated), an appender
//! fsyncing a line every 50 ms (its longest wait between two acks is the
//! write stall), a CPU hog at nice 10, and every `SOAK_GROW_MINUTES` an
//! online grow of the volume under it all. A monitor in each guest samples
//! o2hb's time since each region's last heartbeat write every second and
//! keeps the largest.
//!
//! A false fence is any of: a guest gone (o2cb fences by panicking, and the
//! lab's QEMU then exits), a member missing from a node's live set, a rise
//! of the plugins' `ocfs2_csi_o2cb_members_lost_total`, a write error.
//!
//!   SOAK_MINUTES=60          length of each profile's soak
//!   SOAK_PROFILES=default,fast
//!   SOAK_GROW_MINUTES=10     between online grows
//!
//! Figures go to stdout as a table and as `SOAK ...` lines; the process
//! fails on a false fence.

use ocfs2_csi_testkit as common;

use common::appender::{longest_stall, start_appender, stop_appender};
use common::lab::*;
use common::*;
use ocfs2_csi::cluster::Timeouts;
use ocfs2_csi::csi::*;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const CLUSTER: &str = "testclu"; // the name the test harness gives the controller
const GIB: u64 = 1 << 30;
const NODES: [usize; 3] = [1, 2, 3];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

fn profile(name: &str) -> Timeouts {
    match name {
        "default" => Timeouts::default(),
        "fast" => Timeouts::FAST,
        other => panic!("SOAK_PROFILES: {other} is none of default, fast"),
    }
}

/// What one profile's soak saw.
struct Soak {
    profile: String,
    timeouts: Timeouts,
    minutes: f64,
    /// Guests gone, members missing from live sets, losses counted.
    false_fences: Vec<String>,
    /// The largest time since a heartbeat write any guest saw (s).
    heartbeat_age: f64,
    /// The longest wait between two acked appends on any guest (s).
    stall: f64,
    appended: u64,
    grows: usize,
    write_errors: String,
}

/// Writers flat out, a CPU hog and the heartbeat monitor on `node`.
fn start_load(lab: &Lab, node: usize, dir: &str) {
    lab.must(
        node,
        &format!(
            "S=/tmp/soak; rm -rf $S; mkdir -p $S; H=$(hostname)
             ( i=0; while [ ! -e $S/stop ]; do
                 dd if=/dev/zero of={dir}/direct-$H bs=1M count=1 seek=$((i % 64)) \
                   oflag=direct conv=notrunc >/dev/null 2>$S/d.err \
                   || echo \"direct $i: $(cat $S/d.err)\" >> $S/errors
                 i=$((i+1)); done ) </dev/null >/dev/null 2>&1 &
             ( i=0; while [ ! -e $S/stop ]; do
                 dd if=/dev/urandom of={dir}/buffered-$H bs=64k count=4 seek=$(( (i % 64) * 4 )) \
                   conv=notrunc,fsync >/dev/null 2>$S/b.err \
                   || echo \"buffered $i: $(cat $S/b.err)\" >> $S/errors
                 i=$((i+1)); done ) </dev/null >/dev/null 2>&1 &
             ( while [ ! -e $S/stop ]; do :; done ) </dev/null >/dev/null 2>&1 &
             renice -n 10 $! >/dev/null
             ( max=0; while [ ! -e $S/stop ]; do
                 for f in /sys/kernel/debug/o2hb/*/elapsed_time_in_ms; do
                   v=$(cat $f 2>/dev/null) || continue; [ -n \"$v\" ] || continue
                   [ $v -gt $max ] && max=$v && echo $max > $S/hbmax
                 done; sleep 1; done ) </dev/null >/dev/null 2>&1 &
             true"
        ),
    );
}

/// Stops the load on `node`; returns (largest heartbeat age in s, errors).
fn stop_load(lab: &Lab, node: usize) -> (f64, String) {
    let out = lab.must(
        node,
        "S=/tmp/soak; touch $S/stop; sleep 3; cat $S/hbmax 2>/dev/null || echo 0; cat $S/errors 2>/dev/null; true",
    );
    let mut lines = out.lines();
    let ms: f64 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0.0);
    (ms / 1000.0, lines.collect::<Vec<_>>().join("\n"))
}

/// What is wrong with the cluster now, as a false fence: a guest gone, a
/// member missing from a live set, a member lost by the plugins' count.
fn check(lab: &Lab) -> Vec<String> {
    let mut wrong = Vec::new();
    for node in NODES {
        if !lab.alive(node) {
            wrong.push(format!("node{node} is gone (fenced)"));
            continue;
        }
        let (_, live) = lab.exec(node, "cat /sys/kernel/debug/o2hb/livenodes");
        if live.split_whitespace().count() != NODES.len() {
            wrong.push(format!("node{node} sees live only {:?}", live.trim()));
        }
        let (code, m) = lab.exec(
            node,
            &format!("wget -q -O - http://127.0.0.1:{METRICS_PORT}/metrics"),
        );
        let lost = metric(&m, "ocfs2_csi_o2cb_members_lost_total").unwrap_or(0.0);
        if code == 0 && lost > 0.0 {
            wrong.push(format!("node{node} counted {lost} members lost"));
        }
    }
    wrong
}

fn soak(rt: &Runtime, name: &str, minutes: u64, grow_every: Duration) -> Soak {
    let timeouts = profile(name);
    println!(
        "soak: profile {name}: {minutes} min on the SAN lab (dead time {} s)",
        timeouts.dead_time().as_secs()
    );
    let mut lab = Lab::up_san(&format!("soak-{name}"), 3, "32G");
    lab.timeouts = timeouts;
    let dir = tempfile::tempdir().unwrap();
    let controller = rt.block_on(Controller::start(
        std::slice::from_ref(&lab.lun()),
        dir.path(),
    ));
    let mut c = rt.block_on(controller.client());
    lab.write_members(&NODES);
    for node in NODES {
        lab.start_node_plugin(node, CLUSTER);
    }
    for node in NODES {
        rt.block_on(lab.wait_node_ready(node, Duration::from_secs(300)));
    }
    let mut bytes = 2 * GIB;
    let v = rt
        .block_on(c.create_volume(create_request("soak", bytes)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for node in NODES {
        rt.block_on(stage_and_publish(&lab, node, &v));
    }
    let mount = target(&v);
    for node in NODES {
        start_appender(&lab, node, &mount, "soak");
        start_load(&lab, node, &mount);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut next_grow = started + grow_every;
    let mut grows = 0;
    let mut false_fences = Vec::new();
    let mut last_print = started;
    while Instant::now() < end && false_fences.is_empty() {
        std::thread::sleep(Duration::from_secs(10));
        false_fences = check(&lab);
        if Instant::now() >= next_grow && false_fences.is_empty() {
            bytes += GIB / 4;
            let t = Instant::now();
            rt.block_on(c.controller_expand_volume(expand_request(&v.volume_id, bytes)))
                .unwrap();
            for node in NODES {
                rt.block_on(async {
                    let mut n = lab.node_client(node).await;
                    n.node_expand_volume(NodeExpandVolumeRequest {
                        volume_id: v.volume_id.clone(),
                        volume_path: target(&v),
                        ..Default::default()
                    })
                    .await
                })
                .unwrap_or_else(|e| panic!("node{node}: grow under load: {e:?}"));
            }
            grows += 1;
            println!(
                "soak: {name}: grow {grows} to {bytes} bytes under load in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            next_grow = Instant::now() + grow_every;
        }
        if last_print.elapsed() >= Duration::from_secs(300) {
            let stalls: Vec<String> = NODES
                .iter()
                .map(|&n| format!("{:.1}", longest_stall(&lab, n)))
                .collect();
            println!(
                "soak: {name}: {:.0} min, no false fence; longest write stall per node {stalls:?} s",
                started.elapsed().as_secs_f64() / 60.0
            );
            last_print = Instant::now();
        }
    }
    let ran = started.elapsed().as_secs_f64() / 60.0;
    let mut heartbeat_age: f64 = 0.0;
    let mut stall: f64 = 0.0;
    let mut appended = 0;
    let mut write_errors = String::new();
    for node in NODES.into_iter().filter(|&n| lab.alive(n)) {
        stall = stall.max(longest_stall(&lab, node));
        let (acked, errors) = stop_appender(&lab, node);
        appended += acked;
        let (age, load_errors) = stop_load(&lab, node);
        heartbeat_age = heartbeat_age.max(age);
        for e in [errors, load_errors]
            .iter()
            .filter(|e| !e.trim().is_empty())
        {
            write_errors += &format!("node{node}: {e}\n");
        }
    }
    drop(c);
    drop(controller);
    drop(lab);
    Soak {
        profile: name.to_string(),
        timeouts,
        minutes: ran,
        false_fences,
        heartbeat_age,
        stall,
        appended,
        grows,
        write_errors,
    }
}

fn main() {
    // A lab image of its own, as lab_bench: the release binary must not
    // replace the image other labs on this machine boot from.
    if std::env::var_os("LAB_IMAGE_DIR").is_none() {
        std::env::set_var(
            "LAB_IMAGE_DIR",
            common::kube::user_cache().join("lab/bench-image"),
        );
    }
    let minutes = env_u64("SOAK_MINUTES", 60);
    let grow_every = Duration::from_secs(60 * env_u64("SOAK_GROW_MINUTES", 10).max(1));
    let profiles = std::env::var("SOAK_PROFILES").unwrap_or_else(|_| "default,fast".into());
    let rt = Runtime::new().unwrap();
    let soaks: Vec<Soak> = profiles
        .split(',')
        .map(|p| soak(&rt, p.trim(), minutes, grow_every))
        .collect();
    println!(
        "\n| profile (dead time) | minutes | false fences | longest time since a heartbeat write (s) | ratio to the dead time | longest write stall (s) | appends acked | grows under load | write errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for s in &soaks {
        let dead = s.timeouts.dead_time().as_secs_f64();
        println!(
            "| {} ({dead:.0} s) | {:.0} | {} | {:.1} | {:.2} | {:.1} | {} | {} | {} |",
            s.profile,
            s.minutes,
            s.false_fences.len(),
            s.heartbeat_age,
            s.heartbeat_age / dead,
            s.stall,
            s.appended,
            s.grows,
            if s.write_errors.is_empty() {
                "0"
            } else {
                "some"
            }
        );
        println!(
            "SOAK profile={} minutes={:.1} false_fences={} heartbeat_age_s={:.1} dead_s={dead:.0} stall_s={:.1} appended={} grows={}",
            s.profile,
            s.minutes,
            s.false_fences.len(),
            s.heartbeat_age,
            s.stall,
            s.appended,
            s.grows
        );
        for f in &s.false_fences {
            println!("soak: {}: FALSE FENCE: {f}", s.profile);
        }
        if !s.write_errors.is_empty() {
            println!("soak: {}: write errors:\n{}", s.profile, s.write_errors);
        }
        failed |= !s.false_fences.is_empty() || !s.write_errors.is_empty();
    }
    assert!(!failed, "soak: a false fence or a write error (above)");
}
