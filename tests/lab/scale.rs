//! Many volumes mounted on every guest at once, on real OCFS2 kernels: 40
//! volumes carved from one LUN, each staged and published on all three
//! guests (120 OCFS2 mounts), each readable everywhere; then all unmounted
//! and deleted, with the GPT valid throughout. (tests/scale.rs fills a LUN
//! to its 254-volume limit on the host, without mounting.)

use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::csi::Volume;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const VOLUMES: usize = 40;

/// OCFS2 mounts under the kubelet staging folders on `node`.
fn ocfs2_mounts(lab: &Lab, node: usize) -> usize {
    lab.must(node, "grep -c ' ocfs2 ' /proc/mounts || true")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Runs `each` for every volume on every guest, one thread per guest (the
/// guests work at once, each through its volumes in order); returns the
/// slowest guest's time.
fn on_every_guest(
    volumes: &[Volume],
    each: impl Fn(&tokio::runtime::Runtime, usize, &Volume) + Sync,
) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for node in 1..=NODES {
            let each = &each;
            s.spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                for v in volumes {
                    each(&rt, node, v);
                }
            });
        }
    });
    t.elapsed()
}

/// 40 volumes on the three guests of `lab`, whose node plugins already run;
/// it starts with no volume and no OCFS2 mount anywhere and leaves it so.
pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()));
    let mut c = rt.block_on(controller.client());
    for node in 1..=NODES {
        rt.block_on(lab.wait_node_ready(node, Duration::from_secs(60)));
        assert_eq!(
            ocfs2_mounts(lab, node),
            0,
            "node{node}: left by an earlier scenario"
        );
    }
    assert!(
        volume_partitions(&lun).is_empty(),
        "volumes left by an earlier scenario"
    );

    let t = Instant::now();
    let volumes: Vec<Volume> = (0..VOLUMES)
        .map(|i| {
            let mut r = create_request(&format!("pvc-scale-{i:02}"), 256 * MIB);
            r.parameters.insert("nodeSlots".into(), "4".into());
            rt.block_on(c.create_volume(r))
                .unwrap_or_else(|e| panic!("create {i}: {e:?}"))
                .into_inner()
                .volume
                .unwrap()
        })
        .collect();
    assert_gpt_valid(&lun);
    assert_no_overlap(&partitions(&lun));
    println!(
        "lab-scale: {VOLUMES} volumes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let took = on_every_guest(&volumes, |rt, node, v| {
        rt.block_on(stage_and_publish(lab, node, v));
    });
    for node in 1..=NODES {
        // Each volume twice: the staging mount and the bind mount.
        assert_eq!(ocfs2_mounts(lab, node), 2 * VOLUMES, "node{node}");
    }
    println!(
        "lab-scale: {VOLUMES} volumes staged and published on each of {NODES} guests \
         ({} OCFS2 mounts) in {:.1} s",
        NODES * VOLUMES,
        took.as_secs_f64()
    );

    // Every volume is shared: written on one guest, read on the others.
    for (i, v) in volumes.iter().enumerate() {
        let writer = 1 + i % NODES;
        lab.must(
            writer,
            &format!(
                "echo vol{i}-from-node{writer} > {}/hello && sync",
                target(v)
            ),
        );
    }
    for node in 1..=NODES {
        let script: String = volumes
            .iter()
            .map(|v| format!("cat {}/hello; ", target(v)))
            .collect();
        let out = lab.must(node, &script);
        for (i, _) in volumes.iter().enumerate() {
            let line = format!("vol{i}-from-node{}", 1 + i % NODES);
            assert!(out.contains(&line), "node{node} misses {line}:\n{out}");
        }
    }

    let took = on_every_guest(&volumes, |rt, node, v| {
        rt.block_on(unpublish_and_unstage(lab, node, v));
    });
    for node in 1..=NODES {
        assert_eq!(ocfs2_mounts(lab, node), 0, "node{node}");
    }
    println!(
        "lab-scale: all unmounted everywhere in {:.1} s",
        took.as_secs_f64()
    );
    // All at once, as the provisioner's workers do when a namespace goes:
    // each delete waits out a stage's window (3 s) on its own.
    let t = Instant::now();
    rt.block_on(futures::future::join_all(volumes.iter().map(|v| {
        let mut c = c.clone();
        async move {
            c.delete_volume(delete_request(&v.volume_id))
                .await
                .unwrap_or_else(|e| panic!("delete {}: {e:?}", v.volume_id))
        }
    })));
    assert_gpt_valid(&lun);
    assert!(
        volume_partitions(&lun).is_empty(),
        "left: {:?}",
        volume_partitions(&lun)
    );
    println!(
        "lab-scale: all deleted in {:.1} s; whole scenario {:.1} s",
        t.elapsed().as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
}
