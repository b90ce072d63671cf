//! Losing a node while all three write to a shared volume, on real OCFS2
//! kernels in the lab: by power loss (its QEMU killed), by cutting its
//! cluster network (it must fence itself) and by its LUN not answering for
//! longer than the heartbeat timeout (it must fence itself). Each time the
//! survivors resume I/O after o2cb's timeouts, nothing the lost node wrote
//! and synced is lost, the plugins on the survivors report the dead member,
//! and the lost guest rejoins after a restart. A hang (vCPU paused) or a
//! LUN stall shorter than the timeouts costs nobody anything. The
//! filesystem is fsck-clean at the end.
//!
//! The lab runs with short o2cb timeouts (tests/lab.rs): these scenarios
//! need a node declared dead, not o2cb's default 60 s; the hang and the
//! stall that must cost nothing are scaled to the same fraction of the
//! timeouts as they were of the defaults. `make bench` measures node loss
//! with the default timeouts.

use crate::common::appender::*;
use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::cluster::Timeouts;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::Volume;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const NODES: usize = 3;
const LOST: usize = 3;
const SURVIVORS: [usize; 2] = [1, 2];
const ALL: [usize; NODES] = [1, 2, 3];

/// Every sequence number 1..=`upto` of `host`'s log is there, in order
/// (read on `reader`).
fn assert_log_holds(lab: &Lab, reader: usize, dir: &str, tag: &str, host: &str, upto: u64) {
    let text = lab.must(reader, &format!("cat {dir}/log-{tag}-{host}"));
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(host)?.trim().parse().ok())
        .collect();
    assert!(
        seqs.len() as u64 >= upto && seqs.iter().take(upto as usize).copied().eq(1..=upto),
        "{host}: {upto} lines were synced before the loss, the log holds {} (first {:?}, last {:?})",
        seqs.len(),
        seqs.first(),
        seqs.last()
    );
}

/// Waits until every survivor can create and fsync a new file on the
/// volume; returns, per survivor, the time from `lost_at` until it could.
fn first_writes_after(lab: &Lab, dir: &str, lost_at: Instant, tag: &str) -> Vec<f64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = SURVIVORS
            .iter()
            .map(|&n| {
                s.spawn(move || {
                    lab.must(
                        n,
                        &format!(
                            "echo first-after-{tag} | dd of={dir}/{tag}-$(hostname) conv=fsync 2>/dev/null"
                        ),
                    );
                    lost_at.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn log_count(lab: &Lab, node: usize, needle: &str) -> usize {
    let (_, out) = lab.exec(node, &format!("grep -cF '{needle}' /tmp/node.log"));
    out.trim().parse().unwrap_or(0)
}

/// Waits until `node`'s plugin log holds more than `seen` lines with
/// `needle`; returns the last of them.
fn wait_log(lab: &Lab, node: usize, needle: &str, seen: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while log_count(lab, node, needle) <= seen {
        assert!(
            Instant::now() < deadline,
            "node{node}: plugin never logged '{needle}' (again)"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    lab.must(
        node,
        &format!("grep -F '{needle}' /tmp/node.log | tail -n 1"),
    )
}

const STOPPED: &str = "o2cb member stopped heartbeating";
const STARTED: &str = "o2cb member heartbeating";

/// One loss and recovery: appenders on all three, `lose` takes node LOST
/// away, the survivors must resume and keep everything; `settle` waits for
/// whatever LOST does afterwards (its QEMU must be gone then); then LOST
/// boots again, rejoins and sees what was written meanwhile.
fn lose_and_recover(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    start_plugin: &dyn Fn(usize),
    v: &Volume,
    what: &str,
    lose: impl FnOnce(),
    settle: impl FnOnce(),
) {
    let dir = target(v);
    for node in 1..=NODES {
        start_appender(lab, node, &dir, what);
    }
    wait_appenders_past(lab, &ALL, &[0; NODES], what);
    let before: Vec<u64> = (1..=NODES).map(|n| acked(lab, n)).collect();
    let stopped: Vec<usize> = SURVIVORS
        .iter()
        .map(|&n| log_count(lab, n, STOPPED))
        .collect();
    let started: Vec<usize> = SURVIVORS
        .iter()
        .map(|&n| log_count(lab, n, STARTED))
        .collect();
    let lost_at = Instant::now();
    lose();
    let resumed = first_writes_after(lab, &dir, lost_at, what);
    println!(
        "{what}: survivors' first new file written and synced {:.1} s / {:.1} s after the loss \
         (o2cb timeouts {}; TCG guests)",
        resumed[0],
        resumed[1],
        timeouts_text(&lab.timeouts)
    );
    // The plugins on the survivors name the member o2cb declared dead.
    for (i, &n) in SURVIVORS.iter().enumerate() {
        let log = wait_log(lab, n, STOPPED, stopped[i], Duration::from_secs(240));
        assert!(log.contains("node3"), "node{n}: {log}");
    }
    println!(
        "{what}: both survivors' plugins reported node3 dead {:.1} s after the loss",
        lost_at.elapsed().as_secs_f64()
    );
    // The appenders on the survivors carry on past their pre-loss count.
    wait_appenders_past(lab, &SURVIVORS, &before[..2], what);
    for &n in &SURVIVORS {
        let (after, errors) = stop_appender(lab, n);
        assert!(
            errors.trim().is_empty(),
            "{what}: node{n} append errors:\n{errors}"
        );
        assert!(
            after > before[n - 1],
            "{what}: node{n} did not resume ({} -> {after})",
            before[n - 1]
        );
        assert_log_holds(lab, n, &dir, what, &format!("node{n}"), after);
    }
    // Nothing node3 synced before it was lost is gone.
    assert_log_holds(lab, 1, &dir, what, "node3", before[LOST - 1]);
    println!(
        "{what}: node3 had synced {} lines before the loss: all there; survivors appended with 0 errors",
        before[LOST - 1]
    );

    // node3 comes back: boots, rejoins, mounts, sees the survivors' files.
    settle();
    assert!(!lab.alive(LOST), "{what}: node3 still running");
    let t = Instant::now();
    lab.start_again(LOST);
    start_plugin(LOST);
    rt.block_on(lab.wait_node_ready(LOST, Duration::from_secs(180)));
    rt.block_on(stage_and_publish(lab, LOST, v));
    let seen = lab.must(LOST, &format!("cat {dir}/{what}-node1 {dir}/{what}-node2"));
    assert_eq!(
        seen.matches(&format!("first-after-{what}")).count(),
        2,
        "{seen}"
    );
    lab.must(LOST, &format!("echo back > {dir}/back-{what} && sync"));
    assert!(lab
        .must(1, &format!("cat {dir}/back-{what}"))
        .contains("back"));
    for (i, &n) in SURVIVORS.iter().enumerate() {
        let log = wait_log(lab, n, STARTED, started[i], Duration::from_secs(30));
        assert!(log.contains("node3"), "node{n}: {log}");
    }
    println!(
        "{what}: node3 booted, rejoined and mounted the volume again in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Waits until node3's QEMU is gone (the guest fenced itself).
fn wait_fenced(lab: &Lab, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while lab.alive(LOST) {
        assert!(
            Instant::now() < deadline,
            "{what}: node3 not fenced within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = std::fs::read_to_string(lab.state_dir().join(format!("node-{LOST}.console.log")))
        .unwrap_or_default();
    println!(
        "{what}: node3 fenced itself; its console's last o2cb line: {}",
        console
            .lines()
            .rev()
            .find(|l| l.contains("o2hb") || l.contains("o2quo") || l.contains("o2net"))
            .unwrap_or("(none)")
    );
}

/// `trouble` hits node3 for a while (`pause`, for the printout) while all
/// three append; nobody may be evicted, fenced or see an error, and all go
/// on afterwards. The check lasts until o2hb would have declared node3
/// dead had its heartbeat not come back (the dead threshold's worth of
/// heartbeats after the trouble began, and two more), and until every
/// appender got on after the trouble.
fn short_trouble(lab: &Lab, v: &Volume, what: &str, pause: Duration, trouble: impl FnOnce()) {
    let dir = target(v);
    for node in 1..=NODES {
        start_appender(lab, node, &dir, what);
    }
    wait_appenders_past(lab, &ALL, &[0; NODES], what);
    let stopped: Vec<usize> = SURVIVORS
        .iter()
        .map(|&n| log_count(lab, n, STOPPED))
        .collect();
    let before: Vec<u64> = (1..=NODES).map(|n| acked(lab, n)).collect();
    let began = Instant::now();
    trouble();
    let during: Vec<u64> = SURVIVORS.iter().map(|&n| acked(lab, n)).collect();
    let after_trouble: Vec<u64> = (1..=NODES).map(|n| acked(lab, n)).collect();
    wait_appenders_past(lab, &ALL, &after_trouble, what);
    let verdict = began + dead_after(&lab.timeouts) + 2 * HEARTBEAT;
    if let Some(left) = verdict.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    for node in 1..=NODES {
        let (after, errors) = stop_appender(lab, node);
        assert!(
            errors.trim().is_empty(),
            "{what}: node{node} append errors:\n{errors}"
        );
        assert!(
            after > before[node - 1],
            "{what}: node{node} did not go on ({} -> {after})",
            before[node - 1]
        );
        assert_log_holds(lab, 1, &dir, what, &format!("node{node}"), after);
    }
    for node in ALL {
        assert!(lab.alive(node), "{what}: node{node} was fenced");
    }
    for (i, &n) in SURVIVORS.iter().enumerate() {
        assert_eq!(
            log_count(lab, n, STOPPED),
            stopped[i],
            "{what}: node{n} saw a member stop heartbeating"
        );
    }
    let stalls: Vec<String> = ALL
        .iter()
        .map(|&n| format!("{:.1}", longest_stall(lab, n)))
        .collect();
    println!(
        "{what}: trouble for {:.1} s: survivors appended {:?} lines meanwhile; \
         nobody evicted or fenced (watched for {:.1} s), 0 errors on any node; \
         longest write stall per node {stalls:?} s",
        pause.as_secs_f64(),
        during
            .iter()
            .zip(&before)
            .map(|(d, b)| d - b)
            .collect::<Vec<_>>(),
        began.elapsed().as_secs_f64(),
    );
}

/// The trouble `short_trouble` proves harmless: 20 s under o2cb's default
/// timeouts (network idle 30 s, disk heartbeat dead after 31 x 2 s), and
/// the same fraction (or less) of every timeout of `t`.
fn short_pause(t: &Timeouts) -> Duration {
    let d = Timeouts::default();
    let idle = f64::from(t.idle_timeout_ms) / f64::from(d.idle_timeout_ms);
    let dead = f64::from(t.dead_threshold) / f64::from(d.dead_threshold);
    Duration::from_secs_f64(20.0 * idle.min(dead).min(1.0))
}

fn timeouts_text(t: &Timeouts) -> String {
    format!(
        "dead threshold {}, idle {} ms, keepalive {} ms, reconnect {} ms",
        t.dead_threshold, t.idle_timeout_ms, t.keepalive_delay_ms, t.reconnect_delay_ms
    )
}

/// A controller on the host, every plugin ready, and a 2 GiB volume named
/// `name` staged and published on all three.
fn shared_volume(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    name: &str,
) -> (Controller, ControllerClient<Channel>, Volume) {
    let logs = lab.state_dir().join("host-controller");
    std::fs::create_dir_all(&logs).unwrap();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lab.lun()), &logs));
    let c = rt.block_on(controller.client());
    for node in ALL {
        rt.block_on(lab.wait_node_ready(node, Duration::from_secs(60)));
    }
    let mut creator = c.clone();
    let v = rt
        .block_on(creator.create_volume(create_request(name, 2 * GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for node in ALL {
        rt.block_on(stage_and_publish(lab, node, &v));
    }
    (controller, c, v)
}

/// The node-loss scenarios on `lab`, whose three node plugins already run;
/// `start_plugin` starts a guest's plugin again after it was booted again.
/// Leaves no volume; node3 is back and a member at the end.
pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime, start_plugin: &dyn Fn(usize)) {
    let total = Instant::now();
    let pause = short_pause(&lab.timeouts);
    println!(
        "node loss: o2cb timeouts {}; short troubles last {:.1} s",
        timeouts_text(&lab.timeouts),
        pause.as_secs_f64()
    );
    let (_controller, mut c, v) = shared_volume(lab, rt, "pvc-node-loss");

    // 1. Power loss: node3's QEMU is killed.
    scenario("node-loss-power", || {
        lose_and_recover(
            lab,
            rt,
            start_plugin,
            &v,
            "power-loss",
            || lab.crash(LOST),
            || {},
        )
    });

    // 2. Network cut: node3 loses the cluster network but keeps its disk;
    // without quorum it must fence itself (the guest resets; QEMU runs with
    // -no-reboot, so it exits).
    scenario("node-loss-network-cut", || {
        lose_and_recover(
            lab,
            rt,
            start_plugin,
            &v,
            "network-cut",
            || {
                lab.must(LOST, "ip link set eth0 down");
            },
            || wait_fenced(lab, "network-cut", Duration::from_secs(240)),
        )
    });

    // 3. Short troubles, well under o2cb's timeouts (short_pause): node3
    // hangs (vCPU paused), then its LUN stops answering for a while.
    // Nobody is evicted or fenced. The pause is the trouble under test.
    scenario("node-loss-short-hang", || {
        short_trouble(lab, &v, "short-hang", pause, || {
            lab.freeze(LOST);
            std::thread::sleep(pause);
            lab.thaw(LOST);
        })
    });
    scenario("node-loss-short-stall", || {
        short_trouble(lab, &v, "short-stall", pause, || {
            lab.stall(LOST);
            std::thread::sleep(pause);
            lab.unstall(LOST);
        })
    });

    // 4. node3's LUN stops answering for longer than the dead threshold:
    // its heartbeat writes time out, so it must fence itself; the others
    // evict it and carry on.
    scenario("node-loss-long-stall", || {
        lose_and_recover(
            lab,
            rt,
            start_plugin,
            &v,
            "long-stall",
            || lab.stall(LOST),
            || wait_fenced(lab, "long-stall", Duration::from_secs(120)),
        )
    });

    // The volume was never corrupted: unstage everywhere, fsck.
    for node in 1..=NODES {
        rt.block_on(unpublish_and_unstage(lab, node, &v));
    }
    lab.fsck_volume(1, &v.volume_context["partitionGuid"]);
    rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
        .unwrap();
    println!(
        "node loss: fsck clean; whole scenario {:.1} s",
        total.elapsed().as_secs_f64()
    );
}

/// The array grows the full LUN by 8 GiB while every node appends to the
/// mounted volume `v`; `v` then grows into the new space: the controller
/// finds no room, looks, extends the table over the new space; each node
/// finds a table larger than its LUN and rescans before it maps the new
/// extent: every path and then `multipathd resize map` on a multipath map,
/// the disk itself on a single path. No append fails.
fn lun_growth(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    c: &mut ControllerClient<Channel>,
    v: &Volume,
) {
    use ocfs2_csi::csi::GetCapacityRequest;
    let what = "lun-growth";
    let capacity = |c: &mut ControllerClient<Channel>| {
        rt.block_on(c.get_capacity(GetCapacityRequest::default()))
            .unwrap()
            .into_inner()
    };
    let guid = v.volume_context["partitionGuid"].clone();
    // Fill the LUN: the growth can only land in space the array adds.
    let room = capacity(c).maximum_volume_size.unwrap_or_default() as u64;
    let filler = rt
        .block_on(c.create_volume(create_request("pvc-lun-filler", room / MIB * MIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let refused = rt
        .block_on(c.create_volume(create_request("pvc-no-room", GIB)))
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let dir = target(v);
    for node in ALL {
        start_appender(lab, node, &dir, what);
    }
    wait_appenders_past(lab, &ALL, &[0; NODES], what);
    let before: Vec<u64> = ALL.iter().map(|&n| acked(lab, n)).collect();
    let old_lun = std::fs::metadata(lab.lun()).unwrap().len();
    let t = Instant::now();
    lab.grow_lun(old_lun + 8 * GIB);
    let grown_on_array = t.elapsed();
    let t = Instant::now();
    let want = 4 * GIB;
    rt.block_on(c.controller_expand_volume(expand_request(&v.volume_id, want)))
        .unwrap();
    let table_took = t.elapsed();
    let on_lun = volume_on(&lab.lun(), &guid);
    let last = on_lun.extents.last().unwrap();
    assert!(
        on_lun.extents.len() >= 2 && last.offset >= old_lun - 2 * MIB,
        "the growth lies in the space the array added: {on_lun:?}"
    );
    let t = Instant::now();
    let sizes: Vec<i64> = rt.block_on(futures::future::join_all(ALL.map(|node| async move {
        let mut n = lab.node_client(node).await;
        n.node_expand_volume(expand_req(v))
            .await
            .unwrap_or_else(|e| panic!("node{node}: expand: {e:?}"))
            .into_inner()
            .capacity_bytes
    })));
    let nodes_took = t.elapsed();
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
    for node in ALL {
        let lun = lab.guest_lun_of(node);
        let size = lab.must(node, &format!("blockdev --getsize64 {lun}"));
        assert_eq!(
            size.trim().parse::<u64>().unwrap(),
            old_lun + 8 * GIB,
            "node{node}'s {lun} has the LUN's new size"
        );
    }
    for node in ALL {
        let df = lab.must(node, &format!("df -P -B1 {dir} | tail -n 1"));
        let total: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(total + 64 * MIB >= want, "node{node} sees {total} bytes");
    }
    let after: Vec<u64> = ALL.iter().map(|&n| acked(lab, n)).collect();
    wait_appenders_past(lab, &ALL, &after, what);
    let mut stalls = Vec::new();
    for node in ALL {
        let (acked_now, errors) = stop_appender(lab, node);
        assert!(
            errors.trim().is_empty(),
            "{what}: node{node} append errors:\n{errors}"
        );
        assert!(
            acked_now > before[node - 1],
            "{what}: node{node} did not go on"
        );
        assert_log_holds(lab, 1, &dir, what, &format!("node{node}"), acked_now);
        stalls.push(format!("{:.1}", longest_stall(lab, node)));
    }
    let left = capacity(c).available_capacity as u64;
    assert!(
        left > 3 * GIB && left < 8 * GIB,
        "GetCapacity offers what the growth left of the new space: {left}"
    );
    println!(
        "{what}: LUN {} -> {} GiB on the array in {:.1} s (paths held for tgt's reopen); \
         ControllerExpandVolume past the full LUN took {:.1} s, NodeExpandVolume on 3 nodes \
         (rescan, multipath resize, map, filesystem) {:.1} s; capacities {sizes:?}; \
         GetCapacity then {:.1} GiB; 0 append errors; longest write stall per node {stalls:?} s",
        old_lun / GIB,
        (old_lun + 8 * GIB) / GIB,
        grown_on_array.as_secs_f64(),
        table_took.as_secs_f64(),
        nodes_took.as_secs_f64(),
        left as f64 / GIB as f64,
    );
    rt.block_on(c.delete_volume(delete_request(&filler.volume_id)))
        .unwrap();
}

/// Path faults on a SAN lab (`Lab::up_san`: iSCSI on two paths per guest,
/// dm-multipath with `deploy/multipath.conf`, the iSCSI timeouts of
/// `e2e/san-guest.sh`), while all three append to a shared volume: one
/// path of one node down for 60 s, one path of every node at once, every
/// path of one node for less than o2cb's dead time, and every path of one
/// node for good (it fences itself, the survivors carry on, it boots, logs
/// in again and rejoins). node3 comes back as a host without multipath
/// (`Lab::san_setup_single`: one iSCSI path, its `/dev/disk/by-id/scsi-`
/// name), so what follows proves both kinds of host, two over multipath
/// and one over a single SCSI disk: the target restarted (its ports dark
/// for about 10 s, `e2e/lab.sh target-stop`), then the LUN grown.
/// `start_plugin` starts a guest's plugin again after it was booted again
/// and set up. Leaves no volume.
pub fn run_san(lab: &Lab, rt: &tokio::runtime::Runtime, start_plugin: &dyn Fn(usize)) {
    let total = Instant::now();
    let (_controller, mut c, v) = shared_volume(lab, rt, "pvc-path-faults");
    let paths_back = |what: &str| {
        let t = Instant::now();
        for node in ALL {
            wait_until(
                &format!("{what}: node{node}'s paths in use again"),
                Duration::from_secs(120),
                || lab.all_paths_up(node),
            );
        }
        println!(
            "{what}: every node's paths in use again {:.1} s after the fault ended",
            t.elapsed().as_secs_f64()
        );
    };
    let long = Duration::from_secs(60);
    scenario("san-one-path-down", || {
        short_trouble(lab, &v, "one-path-down", long, || {
            lab.path_down(LOST, 1);
            wait_until("node3 sees path 1 fail", long, || {
                lab.active_paths(LOST) < 2
            });
            std::thread::sleep(long);
            lab.path_up(LOST, 1);
        });
        paths_back("one-path-down");
    });
    scenario("san-one-path-every-node", || {
        short_trouble(lab, &v, "one-path-every-node", long, || {
            for node in ALL {
                lab.path_down(node, 2);
            }
            std::thread::sleep(long);
            for node in ALL {
                lab.path_up(node, 2);
            }
        });
        paths_back("one-path-every-node");
    });
    let pause = short_pause(&lab.timeouts);
    scenario("san-all-paths-short", || {
        short_trouble(lab, &v, "all-paths-short", pause, || {
            lab.path_down(LOST, 1);
            lab.path_down(LOST, 2);
            std::thread::sleep(pause);
            lab.path_up(LOST, 1);
            lab.path_up(LOST, 2);
        });
        paths_back("all-paths-short");
    });
    scenario("san-all-paths-long", || {
        lose_and_recover(
            lab,
            rt,
            &|node| {
                let lun = lab.san_setup_single(node);
                println!("all-paths-long: node{node} comes back on one path, {lun}");
                start_plugin(node);
            },
            &v,
            "all-paths-long",
            || {
                lab.path_down(LOST, 1);
                lab.path_down(LOST, 2);
            },
            || wait_fenced(lab, "all-paths-long", Duration::from_secs(240)),
        )
    });
    scenario("san-target-restart", || {
        let away = Duration::from_secs(10);
        short_trouble(lab, &v, "target-restart", away, || {
            lab.target_stop();
            std::thread::sleep(away);
            lab.target_start();
        });
        paths_back("target-restart");
    });
    scenario("san-lun-growth", || lun_growth(lab, rt, &mut c, &v));
    for node in ALL {
        rt.block_on(unpublish_and_unstage(lab, node, &v));
    }
    lab.fsck_volume(1, &v.volume_context["partitionGuid"]);
    rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
        .unwrap();
    println!(
        "path faults: fsck clean; whole scenario {:.1} s",
        total.elapsed().as_secs_f64()
    );
}
