//! The lab tier: scenarios on QEMU guests with Debian's OCFS2 kernel
//! sharing one LUN file (`e2e/lab.sh`, driven by testkit/src/lab.rs).
//!
//! Booting three guests and joining them costs about a minute under TCG,
//! so scenarios share booted labs instead of each booting its own. Three
//! labs, each a test of its own: the two below, and `lab_san_multipath`,
//! the LUN over iSCSI and dm-multipath. `scripts/tier.sh lab` runs all
//! three at once (`--test-threads=3`): the short-timeouts lab mostly
//! waits (o2cb's timeouts, the API server), so on two cores it costs the
//! others little, and run after one of them it made the tier half again
//! as long. `--test-threads=1` runs them one after the other.
//!
//! - `lab_default_timeouts`: o2cb's default timeouts, members from a file.
//!   The basic scenarios first (they form the cluster, two guests then a
//!   third joining, so they need guests nobody joined yet), then 40
//!   volumes on all three, then 50 stages racing deletes, then a raw block
//!   volume shared by all three (`block.rs`). Each scenario
//!   leaves the plugins running and no volume or mount behind, and the
//!   next one checks that it finds it so.
//!   Nothing here loses a node, so the production timeouts cost nothing
//!   and are what these scenarios run on.
//! - `lab_short_timeouts`: short o2cb timeouts (`SHORT`), membership from a
//!   real kube-apiserver, whose address the guests must be given at boot
//!   (`LAB_API_PORT`): that is why it is a lab of its own. The API
//!   scenario forms the cluster from the API (it needs guests nobody joined
//!   yet) and loses node3 once, bringing it back; KubeVirt on node1 and
//!   node2 (it needs any running cluster; here it evens out the two labs'
//!   run times); then the node-loss scenarios, destructive, last. Each
//!   brings node3 back before the next. They need a node
//!   declared dead, not o2cb's 60 s of waiting for it; `make bench`
//!   (examples/lab_bench.rs) measures node loss with the default timeouts.
//!
//! Each scenario prints `scenario-time: NAME SECONDS` (scripts/tier.sh).

#[path = "lab/basics.rs"]
mod basics;
#[path = "lab/block.rs"]
mod block;
#[path = "lab/clone.rs"]
mod clone;
#[path = "lab/failure.rs"]
mod failure;
#[path = "lab/kube.rs"]
mod kube;
#[path = "lab/kubevirt.rs"]
mod kubevirt;
#[path = "lab/races.rs"]
mod races;
#[path = "lab/scale.rs"]
mod scale;

use ocfs2_csi_testkit as common;

use common::kube::Kube;
use common::lab::*;
use ocfs2_csi::cluster::Timeouts;

/// The test controller's cluster (testkit: Controller::start).
const CLUSTER: &str = "testclu";
/// Longest a whole csi-sanity run inside a guest may take (lab.sh's
/// default bound is 300 s): it grew with the snapshot specs, and a loaded
/// machine stretches it; a hang still ends.
const SANITY_LIMIT: std::time::Duration = std::time::Duration::from_secs(1200);

/// o2cb timeouts of the node-loss lab. A silent member is declared dead
/// after 11 heartbeats (22 s instead of 62 s) and fences itself when its
/// own heartbeat write takes 20 s (instead of 60 s); o2net drops a silent
/// connection after 10 s (instead of 30 s). Still far above what a TCG
/// guest on a loaded 2-core machine stalls for, so only the losses under
/// test evict anyone; the troubles that must not evict are scaled to them
/// (failure.rs: short_pause).
const SHORT: Timeouts = Timeouts {
    dead_threshold: 11,
    idle_timeout_ms: 10_000,
    keepalive_delay_ms: 2_000,
    reconnect_delay_ms: 2_000,
};

#[test]
fn lab_default_timeouts() {
    let lab = scenario("lab-boot-default-timeouts", || {
        Lab::up("lab-default", 3, "32G")
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    scenario("basics", || basics::run(&lab, &rt));
    scenario("scale-40-volumes", || scale::run(&lab, &rt));
    scenario("stage-delete-races", || races::run(&lab, &rt));
    scenario("block-rwx", || block::run(&lab, &rt));
    scenario("clones", || clone::run(&lab, &rt));
}

/// The clone scenario alone on a lab of its own, for working on it:
/// `cargo test --test lab lab_clone_alone -- --ignored --nocapture`. CI
/// runs it in `lab_default_timeouts`.
#[test]
#[ignore]
fn lab_clone_alone() {
    let lab = scenario("lab-boot-clone", || Lab::up("lab-clone", 3, "8G"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        lab.start_node_plugin(node, CLUSTER);
    }
    scenario("clones", || clone::run(&lab, &rt));
}

/// The raw block scenario alone on a lab of its own, for working on it:
/// `cargo test --test lab lab_block_alone -- --ignored --nocapture`. CI
/// runs it in `lab_default_timeouts`.
#[test]
#[ignore]
fn lab_block_alone() {
    let lab = scenario("lab-boot-block", || Lab::up("lab-block", 3, "8G"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        lab.start_node_plugin(node, CLUSTER);
    }
    scenario("block-rwx", || block::run(&lab, &rt));
}

/// The basics again, with the LUN reached the way users reach theirs:
/// iSCSI on two paths per guest, through dm-multipath with the project's
/// `deploy/multipath.conf`, the driver given the map's
/// `/dev/disk/by-id/dm-uuid-mpath-<WWID>` path; then path faults and the
/// LUN grown on the array, under writers (o2cb's default timeouts: the
/// shipped multipath.conf and iSCSI timeouts are chosen against them).
#[test]
fn lab_san_multipath() {
    let lab = scenario("lab-boot-san", || Lab::up_san("lab-san", 3, "32G"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    scenario("san-basics", || basics::run_transport(&lab, &rt));
    scenario("san-block-rwx", || block::run_transport(&lab, &rt));
    failure::run_san(&lab, &rt, &|node| {
        lab.write_members_on(node, &[1, 2, 3]);
        lab.start_node_plugin(node, CLUSTER);
    });
}

/// The raw block scenario alone over iSCSI and dm-multipath, for working
/// on it (`--ignored`); CI runs it in `lab_san_multipath`.
#[test]
#[ignore]
fn lab_san_block_alone() {
    let lab = scenario("lab-boot-san", || Lab::up_san("lab-san-block", 3, "8G"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        lab.start_node_plugin(node, CLUSTER);
    }
    scenario("san-block-rwx", || block::run_transport(&lab, &rt));
}

/// 40 volumes mounted on every guest over the multipath LUN. Outside CI
/// (`cargo test --test lab lab_san_scale -- --ignored`): it is the SAN
/// lab's longest scenario and the same logic as the virtio lab's, and under
/// it Debian's 6.1 kernel once hit a BUG in o2dlm (dlmmaster.c:2296,
/// dlm_deref_lockres_handler) while three guests mounted and unmounted the
/// same volumes at once, which wedges that guest's DLM for good.
#[test]
#[ignore]
fn lab_san_scale() {
    let lab = scenario("lab-boot-san", || Lab::up_san("lab-san-scale", 3, "32G"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    lab.write_members(&[1, 2, 3]);
    for node in 1..=3 {
        lab.start_node_plugin(node, CLUSTER);
    }
    scenario("san-scale-40-volumes", || scale::run(&lab, &rt));
}

#[test]
fn lab_short_timeouts() {
    SHORT.validate().expect("SHORT timeouts");
    // The API server starts while the guests boot.
    let (kube, mut lab) = scenario("lab-boot-short-timeouts", || {
        std::thread::scope(|s| {
            let lab = s.spawn(|| Lab::up_with_api("lab-short", 3, "8G", Some(kube::RELAY_PORT)));
            let kube = Kube::up();
            (kube, lab.join().expect("lab boot"))
        })
    });
    lab.timeouts = SHORT;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = scenario("kube-membership", || kube::run(&lab, &kube, &rt));
    scenario("kubevirt", || kubevirt::run(&lab, &rt));
    failure::run(&lab, &rt, &|node| api.start_plugin(&lab, node));
}
