//! The basic scenarios, on a freshly booted lab (three guests, nothing
//! joined yet). `ocfs2-csi controller` runs on the host against the LUN
//! file; `ocfs2-csi node` runs in every guest and is driven over gRPC.
//!
//! 1. two node plugins form the o2cb cluster themselves (configfs, global
//!    heartbeat on the controller's heartbeat partition);
//! 2. a volume is staged and published on both; a third guest joins the
//!    running cluster and mounts it, without a remount on the first two;
//! 3. shared access: writers on all three (own files, appends to one file
//!    under flock), identical content everywhere;
//! 4. online growth with writers running (direct and buffered I/O), three
//!    rounds: NodeExpandVolume on all three in a random order, then at
//!    once; growing past a neighbour volume into a new extent, then that
//!    extent in place (each node's map gains a target);
//! 5. every node plugin SIGKILLed and restarted under I/O; growth still
//!    works afterwards (the restarted plugins adopted their volumes);
//! 6. bad input: nothing mounted, nothing changed;
//! 7. unstage everywhere (the maps go), fsck clean; volumes created, grown
//!    and deleted while another stays mounted on every guest;
//! 8. csi-sanity's whole suite inside a guest against the real driver.

use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::csi::volume_capability::access_mode::Mode;
use ocfs2_csi::csi::volume_capability::{AccessType, BlockVolume, MountVolume};
use ocfs2_csi::csi::*;
use std::time::{Duration, Instant};
use tonic::Code;

use super::{CLUSTER, SANITY_LIMIT};

fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}

fn guid_of(volume: &Volume) -> &str {
    &volume.volume_context["partitionGuid"]
}

/// The node plugin's map of `volume` on `node`.
fn map_of(lab: &Lab, node: usize, volume: &Volume) -> String {
    lab.map_device(node, guid_of(volume))
        .unwrap_or_else(|| panic!("node{node} has no map of {}", guid_of(volume)))
}

/// Mount IDs of the staging and target mounts: equal before and after
/// means nothing was remounted.
fn mount_ids(lab: &Lab, node: usize, v: &Volume) -> String {
    lab.must(
        node,
        &format!(
            "awk '$5==\"{}\" || $5==\"{}\" {{print $1}}' /proc/self/mountinfo",
            staging(v),
            target(v)
        ),
    )
}

fn fs_total(lab: &Lab, node: usize, path: &str) -> u64 {
    let df = lab.must(node, &format!("df -P -B1 {path} | tail -n 1"));
    df.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts a direct-I/O and a buffered writer in `dir` on every guest; each
/// error is appended to /tmp/writers/errors. On a SAN lab the writes are a
/// quarter the size and paced: its iSCSI paths carry a few MB/s under TCG,
/// and writers flat out queue every other I/O behind theirs (each of the
/// growth's tool runs took 10 s, and three grows one after the other
/// outwaited the 90 s volume lock).
fn start_writers(lab: &Lab, dir: &str) {
    let (direct_mib, buffered_blocks, pause) = if lab.is_san() {
        (1, 4, "sleep 0.3")
    } else {
        (4, 16, ":")
    };
    lab.on_all(&format!(
        "W=/tmp/writers; rm -rf $W; mkdir -p $W; H=$(hostname)
         ( i=0; while [ ! -e $W/stop ]; do
             dd if=/dev/zero of={dir}/direct-$H bs=1M count={direct_mib} \
               seek=$(( (i % 16) * {direct_mib} )) \
               oflag=direct conv=notrunc >/dev/null 2>$W/d.err \
               || echo \"direct $i: $(cat $W/d.err)\" >> $W/errors
             i=$((i+1)); echo $i > $W/direct.count; {pause}
           done; touch $W/direct.done ) </dev/null >/dev/null 2>&1 &
         ( i=0; while [ ! -e $W/stop ]; do
             dd if=/dev/urandom of={dir}/buffered-$H bs=64k count={buffered_blocks} \
               seek=$(( (i % 32) * {buffered_blocks} )) \
               conv=notrunc,fsync >/dev/null 2>$W/b.err \
               || echo \"buffered $i: $(cat $W/b.err)\" >> $W/errors
             i=$((i+1)); echo $i > $W/buffered.count; {pause}
           done; touch $W/buffered.done ) </dev/null >/dev/null 2>&1 &
         true"
    ));
}

/// Per node: (direct writes, buffered writes) done so far.
fn writer_counts(lab: &Lab) -> Vec<(u64, u64)> {
    lab.on_all("W=/tmp/writers; echo $(cat $W/direct.count 2>/dev/null || echo 0) $(cat $W/buffered.count 2>/dev/null || echo 0)")
        .iter()
        .map(|out| {
            let c: Vec<u64> = out.split_whitespace().map(|c| c.parse().unwrap_or(0)).collect();
            (c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0))
        })
        .collect()
}

/// Waits until every node's writers (both kinds) have done more than in
/// `past`: they run, and the I/O under test happens while they do.
fn wait_writers_past(lab: &Lab, past: &[(u64, u64)], what: &str) {
    wait_until(what, Duration::from_secs(120), || {
        writer_counts(lab)
            .iter()
            .zip(past)
            .all(|(now, then)| now.0 > then.0 && now.1 > then.1)
    });
}

/// Stops the writers; returns per node (direct writes, buffered writes,
/// errors text).
fn stop_writers(lab: &Lab) -> Vec<(u64, u64, String)> {
    lab.on_all(
        "W=/tmp/writers; touch $W/stop
         for k in $(seq 600); do [ -e $W/direct.done ] && [ -e $W/buffered.done ] && break; sleep 0.1; done
         echo $(cat $W/direct.count) $(cat $W/buffered.count)
         cat $W/errors 2>/dev/null; dmesg | grep -i 'I/O error' || true",
    )
    .into_iter()
    .map(|out| {
        let mut lines = out.lines();
        let counts: Vec<u64> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|c| c.parse().unwrap_or(0))
            .collect();
        (
            counts.first().copied().unwrap_or(0),
            counts.get(1).copied().unwrap_or(0),
            lines.collect::<Vec<_>>().join("\n"),
        )
    })
    .collect()
}

fn assert_writers_clean(lab: &Lab, what: &str) {
    for (i, (direct, buffered, errors)) in stop_writers(lab).into_iter().enumerate() {
        assert!(
            errors.trim().is_empty(),
            "{what}: node{} writer errors:\n{errors}",
            i + 1
        );
        assert!(
            direct > 0 && buffered > 0,
            "{what}: node{} writers did not run ({direct}/{buffered})",
            i + 1
        );
        let (d, b) = if lab.is_san() {
            ("1 MiB", "256 KiB")
        } else {
            ("4 MiB", "1 MiB")
        };
        println!(
            "{what}: node{}: {direct} direct {d} writes, {buffered} buffered {b} writes, 0 errors",
            i + 1
        );
    }
}

/// Every node plugin's metrics against what the scenario knows: three
/// members, all live, heartbeating within the dead time; the volume staged
/// and no disk-lock on it. Returns the grows counted over the nodes:
/// (grown, already full, NodeExpandVolume answered OK).
fn node_metrics(lab: &Lab, volume: &str) -> (f64, f64, f64) {
    let (mut grown, mut full, mut expands) = (0.0, 0.0, 0.0);
    for node in 1..=3 {
        let m = lab.metrics(node);
        let value = |series: &str| {
            metric(&m, series).unwrap_or_else(|| panic!("node{node}: no {series} in:\n{m}"))
        };
        assert_eq!(value("ocfs2_csi_o2cb_joined"), 1.0);
        assert_eq!(value(r#"ocfs2_csi_o2cb_members{state="live"}"#), 3.0, "{m}");
        assert_eq!(value(r#"ocfs2_csi_o2cb_members{state="down"}"#), 0.0, "{m}");
        let dead = value("ocfs2_csi_o2cb_heartbeat_dead_seconds");
        let ages: Vec<f64> = m
            .lines()
            .filter(|l| l.starts_with("ocfs2_csi_o2cb_heartbeat_write_age_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            !ages.is_empty() && ages.iter().all(|a| *a < dead),
            "node{node}: {m}"
        );
        assert!(value(r#"ocfs2_csi_volumes_staged{content="filesystem"}"#) >= 1.0);
        let held = format!("ocfs2_csi_disk_locks_held{{volume=\"{volume}\"}}");
        assert_eq!(value(&held), 0.0, "node{node}: nobody holds a disk-lock");
        let count = |series: &str| metric(&m, series).unwrap_or(0.0);
        grown += count(r#"ocfs2_csi_volume_grows_total{outcome="grown"}"#);
        full += count(r#"ocfs2_csi_volume_grows_total{outcome="already_full"}"#);
        expands += count(
            r#"ocfs2_csi_grpc_server_handled_total{grpc_method="NodeExpandVolume",grpc_code="OK"}"#,
        );
        if node == 1 {
            println!(
                "metrics: node1: {} series; heartbeat write ages {ages:?} s (dead after {dead} s)",
                m.lines().filter(|l| !l.starts_with('#')).count()
            );
        }
    }
    (grown, full, expands)
}

/// The first value of a metric family (the lab's controller has one LUN).
fn first_value(text: &str, family: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{family}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {family} in:\n{text}"))
}

/// `ocfs2-csi status` on a guest against what the scenario knows: three
/// members heartbeating in every region, the shared volume mounted on all
/// three by its slot map, and the LUN's space as the controller counts it.
fn status_view(lab: &Lab, controller: &Controller, shared: &Volume, neighbour: &Volume) {
    let node = 2;
    let t = Instant::now();
    let text = lab.status(node, CLUSTER, "");
    println!(
        "status: ocfs2-csi status on node{node} in {} (wall, through the lab's shell):\n{text}",
        secs(t)
    );
    for n in 1..=3 {
        let member = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&format!("node{n}")))
            .unwrap_or_else(|| panic!("node{n} not listed:\n{text}"));
        assert!(member.ends_with(" live"), "{member}");
    }
    // Global heartbeat: one region, the LUN's heartbeat partition.
    let regions: Vec<&str> = text.lines().filter(|l| l.contains(": live ")).collect();
    assert_eq!(regions.len(), 1, "{text}");
    assert!(
        regions[0].contains("heartbeat of ") && regions[0].contains("live 0 1 2;"),
        "{text}"
    );
    assert!(
        text.contains("pvc-shared: mounted on node1 (0), node2 (1), node3 (2) (its slot map)"),
        "{text}"
    );
    assert!(
        text.contains(&shared.volume_id) && text.contains(&neighbour.volume_id),
        "{text}"
    );
    assert!(!text.contains("grow not finished"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&lab.status(node, CLUSTER, "--json")).unwrap();
    let lun = &json["luns"][0];
    let m = controller.metrics();
    assert_eq!(
        lun["free_bytes"].as_f64(),
        Some(first_value(&m, "ocfs2_csi_lun_free_bytes")),
        "{lun}"
    );
    assert_eq!(
        lun["largest_free_bytes"].as_f64(),
        Some(first_value(&m, "ocfs2_csi_lun_largest_free_extent_bytes")),
        "{lun}"
    );
    let v = lun["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["handle"] == shared.volume_id.as_str())
        .unwrap();
    assert_eq!(v["partition_bytes"], v["filesystem_bytes"], "{v}");
}

/// How many times the filesystem was grown, by the plugins' own logs.
fn grow_counts(lab: &Lab) -> Vec<usize> {
    lab.on_all("grep -c 'filesystem grown online' /tmp/node.log || true")
        .iter()
        .map(|c| c.trim().parse::<usize>().unwrap_or(0))
        .collect()
}

fn grow_count(lab: &Lab) -> usize {
    grow_counts(lab).iter().sum()
}

/// Scenarios 1-8 on `lab` (three guests just booted, no plugin running):
/// afterwards every guest's plugin runs (static members, all three), no
/// volume is left and no controller runs.
pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    run_parts(lab, rt, true);
}

/// The scenarios about the LUN's transport (1-5 and 7: membership, RWX,
/// growth under writers, restarts, volumes changing beside mounted ones),
/// without bad input and csi-sanity, which do not depend on it.
pub fn run_transport(lab: &Lab, rt: &tokio::runtime::Runtime) {
    run_parts(lab, rt, false);
}

fn run_parts(lab: &Lab, rt: &tokio::runtime::Runtime, all: bool) {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let mut controller = rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()));
    let mut c = rt.block_on(controller.client());

    // --- 1. two node plugins form the cluster ---------------------------
    lab.write_members(&[1, 2]);
    for node in [1, 2] {
        lab.start_node_plugin(node, CLUSTER);
    }
    for node in [1, 2] {
        let took = rt.block_on(lab.wait_node_ready(node, Duration::from_secs(120)));
        println!(
            "scenario 1: node{node} plugin joined the cluster and heartbeats in {:.1} s",
            took.as_secs_f64()
        );
    }
    for out in [1, 2].map(|n| {
        lab.must(
            n,
            &format!(
                "ls /sys/kernel/config/cluster/{CLUSTER}/node; cat /sys/kernel/debug/o2hb/livenodes"
            ),
        )
    }) {
        assert!(out.contains("node1") && out.contains("node2"), "{out}");
        assert!(out.contains("0 1"), "both nodes heartbeat: {out}");
    }

    // --- 2. RWX on two, then a third member joins -----------------------
    let shared = rt
        .block_on(c.create_volume(create_request("pvc-shared", 2 * GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // A neighbour after it: scenario 4 grows the volume past the
    // neighbour into a new extent (after whatever room lies between), then
    // that extent in place, twice.
    let neighbour = rt
        .block_on(c.create_volume(create_request("pvc-neighbour", GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let grow_to = {
        let (a, b) = (
            volume_on(&lun, guid_of(&shared)),
            volume_on(&lun, guid_of(&neighbour)),
        );
        assert!(b.offset >= a.offset + a.size, "{a:?} {b:?}");
        let room = b.offset - (a.offset + a.size);
        let usable = |bytes| {
            a.layout
                .usable_bytes(bytes, ocfs2_csi::volume::entry::ALIGN)
        };
        let past = usable(a.size + room) + 512 * MIB;
        [past, past + 256 * MIB, past + 512 * MIB, past + 768 * MIB]
    };
    for node in [1, 2] {
        let took = rt.block_on(stage_and_publish(lab, node, &shared));
        println!(
            "scenario 2: node{node}: NodeStageVolume (global heartbeat) in {:.2} s",
            took.as_secs_f64()
        );
    }
    // Retries are no-ops.
    rt.block_on(stage_and_publish(lab, 1, &shared));
    let before = [1, 2].map(|node| mount_ids(lab, node, &shared));
    let t = Instant::now();
    lab.write_members(&[1, 2, 3]);
    // Issue 12, point 2: a node of another installation (same o2cb cluster
    // name, another cluster ID) refuses the LUN before it writes anything.
    let foreign = lab.must(
        3,
        &format!(
            "timeout 120 ocfs2-csi node --endpoint tcp://127.0.0.1:10009 --node-id node3 \
               --cluster-name {CLUSTER} --cluster-id another-installation \
               --members-file /etc/ocfs2-csi/members --lun {lun} \
               --state-dir /tmp/foreign-state 2>&1; echo rc=$?; \
             ls /sys/kernel/config/cluster 2>/dev/null | wc -w",
            lun = lab.guest_lun
        ),
    );
    assert!(
        foreign.contains("belongs to another cluster")
            && foreign.contains("another-installation")
            && foreign.contains(&format!("{CLUSTER}-id"))
            && foreign
                .lines()
                .any(|l| l.starts_with("rc=") && l != "rc=0" && l != "rc=124")
            && foreign.trim_end().ends_with('0'),
        "a node of another cluster was not refused, or wrote configfs:\n{foreign}"
    );
    lab.start_node_plugin(3, CLUSTER);
    rt.block_on(lab.wait_node_ready(3, Duration::from_secs(120)));
    for node in [1, 2] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lab
            .must(
                node,
                &format!("ls /sys/kernel/config/cluster/{CLUSTER}/node"),
            )
            .contains("node3")
        {
            assert!(Instant::now() < deadline, "node{node} never added node3");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    rt.block_on(stage_and_publish(lab, 3, &shared));
    println!(
        "scenario 2: node3 joined the running cluster and mounted the volume in {}",
        secs(t)
    );
    for (i, node) in [1, 2].into_iter().enumerate() {
        assert_eq!(
            mount_ids(lab, node, &shared),
            before[i],
            "node{node} remounted the volume"
        );
    }
    let slots = lab.must(1, &format!("mounted.ocfs2 -f {}", map_of(lab, 1, &shared)));
    assert!(
        ["node1", "node2", "node3"]
            .iter()
            .all(|h| slots.contains(h)),
        "mounted.ocfs2 -f: {slots}"
    );

    // --- 3. shared access ---------------------------------------------------
    let dir_of = target(&shared);
    // Two nodes creating one name at the same moment can get EEXIST from
    // OCFS2, so the shared files exist before the writers run.
    lab.must(
        1,
        &format!("touch {dir_of}/append.lock {dir_of}/append.log && sync"),
    );
    let t = Instant::now();
    lab.on_all(&format!(
        "cd {dir_of} && dd if=/dev/urandom of=$(hostname).bin bs=1M count=8 2>/dev/null && \
         for k in $(seq 1 40); do \
           flock append.lock sh -c \"echo $(hostname) $k >> append.log\" \
             || {{ echo \"append $k on $(hostname) failed with $?\"; exit 1; }}; \
         done && sync"
    ));
    println!(
        "scenario 3: 3 x (8 MiB file + 40 appends under flock) in {}",
        secs(t)
    );
    let views = lab.on_all(&format!(
        "cd {dir_of} && md5sum node1.bin node2.bin node3.bin append.log && \
         wc -l < append.log && for h in node1 node2 node3; do grep -c \"^$h \" append.log; done"
    ));
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v, &views[0], "node{} sees different content", i + 1);
        let counts: Vec<&str> = v.lines().skip(4).map(str::trim).collect();
        assert_eq!(counts, ["120", "40", "40", "40"], "node{}: {v}", i + 1);
    }
    let refused = rt
        .block_on(c.delete_volume(delete_request(&shared.volume_id)))
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // --- 4. online growth under I/O -------------------------------------------
    start_writers(lab, &dir_of);
    wait_writers_past(lab, &[(0, 0); 3], "scenario 4: writers running");
    let old_total = fs_total(lab, 1, &dir_of);
    let mut order: Vec<usize> = vec![1, 2, 3];
    let seed = Instant::now().elapsed().subsec_nanos() as usize ^ std::process::id() as usize;
    order.rotate_left(seed % 3);
    if seed % 2 == 1 {
        order.swap(0, 1);
    }
    // Round 3 asks the node that grew in round 2 first: its grow may still
    // be in its journal only, which tunefs must not mistake for the disk.
    let counted_before = node_metrics(lab, &shared.volume_id);
    let mut last_grower = 0;
    for (round, bytes) in [(1, grow_to[0]), (2, grow_to[1]), (3, grow_to[2])] {
        let before = grow_counts(lab);
        let grows_before: usize = before.iter().sum();
        if round == 3 {
            order = vec![last_grower, last_grower % 3 + 1, (last_grower + 1) % 3 + 1];
        }
        rt.block_on(c.controller_expand_volume(expand_request(&shared.volume_id, bytes)))
            .unwrap();
        let v = volume_on(&lun, guid_of(&shared));
        let next = volume_on(&lun, guid_of(&neighbour));
        assert_eq!(v.extents.len(), 2, "round {round}: {v:?}");
        assert!(
            v.extents
                .iter()
                .skip(1)
                .all(|e| e.offset >= next.offset + next.size),
            "the new extent lies past the neighbour: {v:?}"
        );
        println!(
            "scenario 4: round {round}: {} extents at {:?} MiB (offset, size); the neighbour at {} MiB",
            v.extents.len(),
            v.extents
                .iter()
                .map(|e| (e.offset / MIB, e.size / MIB))
                .collect::<Vec<_>>(),
            next.offset / MIB
        );
        let t = Instant::now();
        let sizes: Vec<i64> = if round != 2 {
            order
                .iter()
                .map(|&node| {
                    rt.block_on(async {
                        let mut n = lab.node_client(node).await;
                        n.node_expand_volume(expand_req(&shared))
                            .await
                            .unwrap_or_else(|e| panic!("node{node}: expand: {e:?}"))
                            .into_inner()
                            .capacity_bytes
                    })
                })
                .collect()
        } else {
            rt.block_on(futures::future::join_all([1, 2, 3].map(|node| {
                let shared = &shared;
                async move {
                    let mut n = lab.node_client(node).await;
                    n.node_expand_volume(expand_req(shared))
                        .await
                        .unwrap_or_else(|e| panic!("node{node}: expand: {e:?}"))
                        .into_inner()
                        .capacity_bytes
                }
            })))
        };
        let how = if round != 2 {
            format!("in the order {order:?}")
        } else {
            "concurrently".into()
        };
        println!(
            "scenario 4: round {round}: NodeExpandVolume on 3 nodes {how} took {} (capacities {sizes:?})",
            secs(t)
        );
        assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
        let after = grow_counts(lab);
        last_grower = (0..3).find(|&i| after[i] > before[i]).map_or(0, |i| i + 1);
        assert_eq!(
            grow_count(lab) - grows_before,
            1,
            "the filesystem must grow exactly once"
        );
        for node in 1..=3 {
            let total = fs_total(lab, node, &dir_of);
            assert!(
                total + 64 * MIB >= bytes,
                "node{node} sees {total} bytes after growing to {bytes}"
            );
        }
    }
    // Three rounds on three nodes: grown once each, found grown twice each.
    status_view(lab, &controller, &shared, &neighbour);
    let (grown, full, expands) = node_metrics(lab, &shared.volume_id);
    let counted = (
        grown - counted_before.0,
        full - counted_before.1,
        expands - counted_before.2,
    );
    assert_eq!(counted, (3.0, 6.0, 9.0), "grows counted in the metrics");
    // Fill the old space cheaply, then write real data: it lands in the new
    // space, and every node reads it back.
    let used = lab.must(
        1,
        &format!(
            "cd {dir_of} && fallocate -l $(( {old_total} / 1048576 ))M fill && \
             dd if=/dev/urandom of=newspace bs=1M count=64 oflag=direct 2>/dev/null && sync && \
             df -P -B1 . | tail -n 1"
        ),
    );
    let used: u64 = used.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        used > old_total,
        "used {used} is within the old size {old_total}"
    );
    let sums = lab.on_all(&format!("md5sum {dir_of}/newspace"));
    assert!(sums.iter().all(|s| s == &sums[0]), "{sums:?}");
    lab.must(1, &format!("rm {dir_of}/fill"));
    assert_writers_clean(lab, "scenario 4");

    // --- 5. plugin restart under I/O -----------------------------------------
    // On the virtio lab the restart is a rollout that adds a LUN to the
    // pool (the chart's `luns`): the controller first, then each plugin.
    let added = all.then(|| {
        let (host, guest) = lab.add_lun("2G");
        lab.on_all(&format!(
            "for i in $(seq 100); do [ -b {guest} ] && exit 0; sleep 0.1; done; exit 1"
        ));
        controller.stop();
        controller = rt.block_on(Controller::start(&[lun.clone(), host.clone()], dir.path()));
        c = rt.block_on(controller.client());
        (host, guest)
    });
    let mounted: Vec<String> = (1..=3).map(|n| mount_ids(lab, n, &shared)).collect();
    start_writers(lab, &dir_of);
    wait_writers_past(lab, &[(0, 0); 3], "scenario 5: writers running");
    let started_count = |node: usize| -> usize {
        lab.must(
            node,
            "grep -c 'global heartbeat started' /tmp/node.log || true",
        )
        .trim()
        .parse()
        .unwrap()
    };
    for node in 1..=3 {
        let started_before = started_count(node);
        lab.must(node, "kill -9 $(cat /tmp/node.pid)");
        lab.start_node_plugin(node, CLUSTER);
        let took = rt.block_on(lab.wait_node_ready(node, Duration::from_secs(60)));
        println!(
            "scenario 5: node{node}: plugin SIGKILLed and restarted under I/O; Probe ready after {:.1} s",
            took.as_secs_f64()
        );
        // The new process adopted the kernel's state instead of redoing it;
        // on an added LUN it started heartbeat, which waits for the region
        // to go live.
        let log = lab.must(node, "tail -n 60 /tmp/node.log");
        assert!(
            log.contains("global heartbeat already running; adopted"),
            "{log}"
        );
        // Heartbeat started anew only on the added LUN: a region already
        // beating is adopted, never stopped and started again.
        let started_new = started_count(node) - started_before;
        assert_eq!(started_new, usize::from(added.is_some()), "{log}");
        assert!(log.contains("staged volume adopted"), "{log}");
    }
    // The writers go on after the last restart.
    let counts = writer_counts(lab);
    wait_writers_past(lab, &counts, "scenario 5: writers after the restarts");
    assert_writers_clean(lab, "scenario 5");
    for node in 1..=3 {
        assert_eq!(
            mount_ids(lab, node, &shared),
            mounted[node - 1],
            "node{node} remounted the volume"
        );
    }
    if let Some((host, guest)) = &added {
        lun_added(lab, rt, &mut c, host, guest);
    }
    for node in 1..=3 {
        let stats = rt
            .block_on(async {
                lab.node_client(node)
                    .await
                    .node_get_volume_stats(NodeGetVolumeStatsRequest {
                        volume_id: shared.volume_id.clone(),
                        volume_path: target(&shared),
                        staging_target_path: String::new(),
                    })
                    .await
            })
            .unwrap()
            .into_inner();
        let cond = stats.volume_condition.unwrap();
        assert!(!cond.abnormal, "node{node}: {}", cond.message);
        assert_eq!(stats.usage.len(), 2);
    }
    // The restarted plugins answer growth requests again, and a node that
    // stages the volume while a grow is under way does not miss it: node3
    // leaves, then stages again at the same moment node2 grows.
    rt.block_on(unpublish_and_unstage(lab, 3, &shared));
    let bytes = grow_to[3];
    rt.block_on(c.controller_expand_volume(expand_request(&shared.volume_id, bytes)))
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let grow = async {
            lab.node_client(2)
                .await
                .node_expand_volume(expand_req(&shared))
                .await
        };
        let stage = stage_and_publish(lab, 3, &shared);
        let (grown, _) = futures::future::join(grow, stage).await;
        grown.unwrap();
    });
    println!(
        "scenario 5: growth on node2 while node3 staged the volume took {}",
        secs(t)
    );
    let mapped = volume_on(&lun, guid_of(&shared)).size;
    for node in 1..=3 {
        let map = map_of(lab, node, &shared);
        let size = lab.must(node, &format!("blockdev --getsize64 {map}"));
        assert_eq!(size.trim(), mapped.to_string(), "node{node}'s map");
        assert!(
            fs_total(lab, node, &dir_of) + 64 * MIB >= bytes,
            "node{node}"
        );
    }

    // --- 6. bad input ------------------------------------------------------
    if all {
        let spare = rt
            .block_on(c.create_volume(create_request("pvc-spare", GIB)))
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        bad_input(lab, rt, &lun, &shared, &spare);
        rt.block_on(c.delete_volume(delete_request(&spare.volume_id)))
            .unwrap();
    }

    // --- 7. unstage everywhere, fsck; partition changes ---------------------
    let t = Instant::now();
    rt.block_on(futures::future::join_all(
        [1, 2, 3].map(|node| unpublish_and_unstage(lab, node, &shared)),
    ));
    // Idempotent.
    rt.block_on(unpublish_and_unstage(lab, 1, &shared));
    println!(
        "scenario 7: unpublished and unstaged on 3 nodes in {}",
        secs(t)
    );
    for node in 1..=3 {
        assert_eq!(
            lab.map_device(node, guid_of(&shared)),
            None,
            "node{node} kept its map"
        );
    }
    lab.fsck_volume(1, guid_of(&shared));
    for v in [&shared, &neighbour] {
        rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
            .unwrap();
    }
    volume_changes(lab, rt, &mut c, &lun);
    drop(c);
    drop(controller);
    assert_gpt_valid(&lun);
    if !all {
        println!("transport scenarios finished in {}", secs(total));
        return;
    }

    // --- 8. csi-sanity inside a guest ------------------------------------
    // Small volumes with few slots: each snapshot and restore copies the
    // journals, at TCG's pace; the geometry is tested by the scenarios
    // above, the protocol here.
    let t = Instant::now();
    let out = lab.must_within(
        1,
        &format!(
            "mkdir -p /tmp/sanity /run/csi
             ocfs2-csi controller --endpoint unix:///run/csi/controller.sock --lun {lun} \
               --init-lun {lun} --cluster-name {CLUSTER} --cluster-id {CLUSTER}-id \
               >/tmp/controller.log 2>&1 &
             echo $! > /tmp/controller.pid
             for i in $(seq 300); do grep -q 'all LUNs open; ready' /tmp/controller.log && break; sleep 0.2; done
             echo 'nodeSlots: \"4\"' > /tmp/sanity-params.yaml
             csi-sanity -csi.endpoint 127.0.0.1:10000 \
               -csi.controllerendpoint unix:///run/csi/controller.sock \
               -csi.mountdir /tmp/sanity/mnt -csi.stagingdir /tmp/sanity/stage \
               -csi.testvolumeparameters /tmp/sanity-params.yaml \
               -csi.testvolumesize 268435456 -csi.testvolumeexpandsize 536870912 \
               -csi.junitfile /tmp/sanity.xml -ginkgo.no-color > /tmp/sanity.log 2>&1
             rc=$?; tail -n 3 /tmp/sanity.log; [ $rc = 0 ] || tail -n 80 /tmp/sanity.log; exit $rc",
            lun = lab.guest_lun
        ),
        // The whole suite: its length is its size, not a hang.
        Some(SANITY_LIMIT),
    );
    assert!(out.contains("SUCCESS!"), "{out}");
    println!(
        "scenario 8: csi-sanity (all services) inside node1 in {}: {}",
        secs(t),
        out.trim().lines().last().unwrap_or("")
    );
    let cases = junit::cases(&lab.must(1, "cat /tmp/sanity.xml"));
    for (reason, count) in junit::skipped_by_reason(&cases) {
        println!("scenario 8: skipped {count:>2}: {reason}");
    }
    // The snapshot specs run here, on real OCFS2 (the block run skips them).
    let snapshot_specs = cases
        .iter()
        .filter(|c| c.name.contains("napshot") && c.outcome == junit::Outcome::Passed)
        .count();
    println!("scenario 8: {snapshot_specs} snapshot specs passed");
    assert!(
        snapshot_specs >= 10,
        "snapshot specs passed: {snapshot_specs}"
    );
    // Cleanup for the scenarios after this one: the guest's controller
    // goes (the host's is the LUN's one writer again) and csi-sanity left
    // no volume behind.
    lab.must(
        1,
        "p=$(cat /tmp/controller.pid); kill $p; \
         for i in $(seq 100); do kill -0 $p 2>/dev/null || exit 0; sleep 0.1; done; exit 1",
    );
    assert!(
        volume_partitions(&lun).is_empty(),
        "csi-sanity left volumes: {:?}",
        volume_partitions(&lun)
    );
    println!("basic scenarios finished in {}", secs(total));
}

/// After the rollout that added the LUN `host` (`guest` in the guests):
/// every node heartbeats on it too, and a volume carved from it is shared
/// by all three.
fn lun_added(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    c: &mut ocfs2_csi::csi::controller_client::ControllerClient<tonic::transport::Channel>,
    host: &std::path::Path,
    guest: &str,
) {
    let t = Instant::now();
    let disk = {
        use ocfs2_csi::disk::{gpt, lun_io::LunFile};
        gpt::read(&LunFile::open(host).unwrap())
            .unwrap()
            .gpt
            .disk_guid
    };
    let region = lab.must(
        1,
        &format!("blkid -p -o value -s UUID /dev/mapper/ocfs2csi-hb-{disk}"),
    );
    let region = region.trim().replace('-', "").to_uppercase();
    assert!(!region.is_empty(), "no heartbeat map on {guest}");
    for node in 1..=3 {
        let live = lab.must(
            node,
            &format!(
                "ls /sys/kernel/config/cluster/{CLUSTER}/heartbeat/ | grep -c '^[0-9A-F]\\{{32\\}}$'; \
                 cat /sys/kernel/debug/o2hb/{region}/livenodes"
            ),
        );
        let mut lines = live.lines();
        assert_eq!(
            lines.next().map(str::trim),
            Some("2"),
            "node{node}: two heartbeat regions: {live}"
        );
        assert!(
            lines.next().unwrap_or("").trim() == "0 1 2",
            "node{node}: all three heartbeat on the new LUN: {live}"
        );
    }
    let mut req = create_request("pvc-on-new-lun", GIB);
    req.parameters
        .insert("lun".into(), host.display().to_string());
    let v = rt
        .block_on(c.create_volume(req))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(volume_on(host, guid_of(&v)).extents.len(), 1);
    for node in 1..=3 {
        rt.block_on(stage_and_publish(lab, node, &v));
    }
    let dir = target(&v);
    lab.must(
        1,
        &format!("dd if=/dev/urandom of={dir}/data bs=1M count=8 2>/dev/null && sync"),
    );
    let sums = lab.on_all(&format!("md5sum < {dir}/data"));
    assert!(sums.iter().all(|s| s == &sums[0]), "{sums:?}");
    for node in 1..=3 {
        rt.block_on(unpublish_and_unstage(lab, node, &v));
    }
    rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
        .unwrap();
    println!(
        "scenario 5: a LUN added by a rollout (controller, then each plugin under I/O, \
         no remount): all three heartbeat on it, and a volume carved from it was shared \
         by all three, in {}",
        secs(t)
    );
}

/// Hostile and malformed Node requests on node1: each gets the expected
/// code, and afterwards node1's mount table and the GPT are unchanged.
fn bad_input(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    lun: &std::path::Path,
    shared: &Volume,
    spare: &Volume,
) {
    lab.must(1, "ln -sfn /etc /tmp/evil && mkdir -p /tmp/bad");
    let mounts_before = lab.must(1, "awk '{print $5}' /proc/self/mountinfo | sort");
    // The table itself (the first MiBs also hold the busy heartbeat area).
    let table_before = format!("{:?}", partitions(lun));
    let hb_guid = partitions(lun)
        .into_iter()
        .find(|p| p.number == 1)
        .unwrap()
        .guid;
    let disk = shared.volume_id.split(':').nth(1).unwrap().to_string();
    // `spare` is staged nowhere, so each request gets as far as its flaw.
    let good = || stage_request(spare, "/tmp/bad/stage");
    let with = |f: &dyn Fn(&mut NodeStageVolumeRequest)| {
        let mut r = good();
        f(&mut r);
        r
    };
    let flags = |flag: &str| {
        let flag = flag.to_string();
        with(&move |r: &mut NodeStageVolumeRequest| {
            r.volume_capability = Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    mount_flags: vec![flag.clone()],
                    ..Default::default()
                })),
                access_mode: Some(volume_capability::AccessMode {
                    mode: Mode::MultiNodeMultiWriter as i32,
                }),
            })
        })
    };
    let other_fs = uuid_like(9);
    let stage_cases: Vec<(&str, NodeStageVolumeRequest, Code)> = vec![
        (
            "empty volume ID",
            with(&|r| r.volume_id.clear()),
            Code::InvalidArgument,
        ),
        (
            "malformed volume ID",
            with(&|r| r.volume_id = "ocfs2-v1:../../etc".into()),
            Code::InvalidArgument,
        ),
        (
            "huge volume ID",
            with(&|r| r.volume_id = "x".repeat(100_000)),
            Code::InvalidArgument,
        ),
        (
            "partition that is not there",
            with(&|r| r.volume_id = format!("ocfs2-v1:{disk}:{}", uuid_like(7))),
            Code::NotFound,
        ),
        (
            "LUN that is not there",
            with(&|r| r.volume_id = format!("ocfs2-v1:{}:{}", uuid_like(3), uuid_like(4))),
            Code::NotFound,
        ),
        (
            "the heartbeat partition",
            with(&|r| r.volume_id = format!("ocfs2-v1:{disk}:{hb_guid}")),
            Code::FailedPrecondition,
        ),
        (
            "context naming another filesystem",
            with(&|r| {
                r.volume_context.insert("fsUuid".into(), other_fs.clone());
            }),
            Code::FailedPrecondition,
        ),
        (
            "another cluster",
            with(&|r| {
                r.volume_context
                    .insert("clusterName".into(), "elsewhere".into());
            }),
            Code::FailedPrecondition,
        ),
        (
            "relative staging path",
            with(&|r| r.staging_target_path = "tmp/bad".into()),
            Code::InvalidArgument,
        ),
        (
            "staging path with ..",
            with(&|r| r.staging_target_path = "/tmp/bad/../../etc".into()),
            Code::InvalidArgument,
        ),
        (
            "staging path is a symlink",
            with(&|r| r.staging_target_path = "/tmp/evil".into()),
            Code::InvalidArgument,
        ),
        (
            "mount flag nocluster",
            flags("nocluster"),
            Code::InvalidArgument,
        ),
        (
            "mount flag localflocks",
            flags("localflocks"),
            Code::InvalidArgument,
        ),
        (
            "mount flag heartbeat=none",
            flags("heartbeat=none"),
            Code::InvalidArgument,
        ),
        (
            "mount flag with shell",
            flags("noatime;reboot"),
            Code::InvalidArgument,
        ),
        (
            "mount flag $(...)",
            flags("$(touch /tmp/pwned)"),
            Code::InvalidArgument,
        ),
        (
            "raw block",
            with(&|r| {
                r.volume_capability = Some(VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: None,
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "no capability",
            with(&|r| r.volume_capability = None),
            Code::InvalidArgument,
        ),
        (
            "a volume already staged elsewhere",
            stage_request(shared, "/tmp/bad/stage"),
            Code::AlreadyExists,
        ),
    ];
    rt.block_on(async {
        let mut n = lab.node_client(1).await;
        for (what, req, code) in stage_cases {
            let e = n.node_stage_volume(req).await.expect_err(what);
            assert_eq!(e.code(), code, "{what}: {}", e.message());
            println!(
                "scenario 6: stage with {what}: {:?}: {}",
                e.code(),
                e.message().chars().take(160).collect::<String>()
            );
        }
        let mut publish = publish_request(shared, false);
        publish.target_path = "/tmp/evil".into();
        let e = n.node_publish_volume(publish).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut publish = publish_request(shared, false);
        publish.staging_target_path = "/tmp/bad/stage".into();
        let e = n.node_publish_volume(publish).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let mut expand = expand_req(shared);
        expand.volume_path = "/tmp/bad".into();
        let e = n.node_expand_volume(expand).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = n
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: shared.volume_id.clone(),
                volume_path: "/tmp/nowhere".into(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    });
    assert_eq!(
        lab.must(1, "awk '{print $5}' /proc/self/mountinfo | sort"),
        mounts_before
    );
    lab.must(1, "test ! -e /tmp/pwned && test -z \"$(ls /tmp/bad)\"");
    assert!(
        format!("{:?}", partitions(lun)) == table_before,
        "the GPT changed"
    );
    println!("scenario 6: bad input refused; nothing mounted, nothing changed");
}

/// A UUID-shaped string that names nothing.
fn uuid_like(seed: u8) -> String {
    let h = format!("{seed:x}").repeat(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Volumes created, grown and deleted while another stays mounted on every
/// guest: each guest stages what is made, sees what grew (its map gains a
/// target) and loses nothing of the mounted one.
fn volume_changes(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    c: &mut controller_client::ControllerClient<tonic::transport::Channel>,
    lun: &std::path::Path,
) {
    let t = Instant::now();
    let mut create = |name: &str| {
        rt.block_on(c.create_volume(create_request(name, GIB)))
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    };
    let keep = create("pvc-keep");
    let extra = create("pvc-extra");
    let gone = create("pvc-gone");
    // Each node's steps in order, the three nodes at once (a guest's
    // stage is mostly its own I/O: over iSCSI, seconds each).
    rt.block_on(futures::future::join_all(
        [1, 2, 3].map(|node| stage_and_publish(lab, node, &keep)),
    ));
    let keep_ids: Vec<String> = (1..=3).map(|n| mount_ids(lab, n, &keep)).collect();
    rt.block_on(futures::future::join_all([1, 2, 3].map(|node| {
        let (extra, gone) = (&extra, &gone);
        async move {
            stage_and_publish(lab, node, extra).await;
            stage_and_publish(lab, node, gone).await;
            unpublish_and_unstage(lab, node, gone).await;
        }
    })));
    rt.block_on(c.delete_volume(delete_request(&gone.volume_id)))
        .unwrap();
    // pvc-extra has pvc-gone's space after it again: it grows in place.
    rt.block_on(c.controller_expand_volume(expand_request(&extra.volume_id, 2 * GIB)))
        .unwrap();
    let size = volume_on(lun, guid_of(&extra)).size;
    let sizes = rt.block_on(futures::future::join_all([1, 2, 3].map(|node| {
        let extra = &extra;
        async move {
            lab.node_client(node)
                .await
                .node_expand_volume(expand_req(extra))
                .await
                .unwrap_or_else(|e| panic!("node{node}: expand: {e:?}"))
                .into_inner()
                .capacity_bytes
        }
    })));
    assert!(sizes.iter().all(|s| *s as u64 >= 2 * GIB), "{sizes:?}");
    for node in 1..=3 {
        let map = map_of(lab, node, &extra);
        let got = lab.must(node, &format!("blockdev --getsize64 {map}"));
        assert_eq!(got.trim(), size.to_string(), "node{node}");
        assert_eq!(lab.map_device(node, guid_of(&gone)), None, "node{node}");
        assert_eq!(
            mount_ids(lab, node, &keep),
            keep_ids[node - 1],
            "node{node} remounted"
        );
    }
    rt.block_on(futures::future::join_all([1, 2, 3].map(|node| {
        let (keep, extra) = (&keep, &extra);
        async move {
            unpublish_and_unstage(lab, node, keep).await;
            unpublish_and_unstage(lab, node, extra).await;
        }
    })));
    for v in [&keep, &extra] {
        lab.fsck_volume(1, guid_of(v));
        rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
            .unwrap();
    }
    println!(
        "scenario 7: volumes created, grown and deleted beside a mounted one, seen on every guest, in {}",
        secs(t)
    );
}
