//! `make demo-grpc`: the driver's main job at the CSI level, on an embedded default.
//! Boots the three-node lab (QEMU guests with Debian's OCFS2 kernel sharing
//! one LUN file), creates a ReadWriteMany volume through `ocfs2-csi
//! controller`, lets `ocfs2-csi node` on every guest join the o2cb cluster
//! and stage/publish it (as kubelet would ask), writes on one guest and reads
//! on the other two, grows it while it stays mounted everywhere
//! (ControllerExpandVolume, then NodeExpandVolume on each guest), prints a
//! report with timings and tears everything down.

use ocfs2_csi_testkit as common;

use common::lab::*;
use common::report::Report;
use common::*;
use std::time::Instant;

const CLUSTER: &str = "testclu";

fn main() {
    let total = Instant::now();
    let mut report = Report::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = report.step("boot 3 QEMU guests (TCG) sharing a 16 GiB LUN", || {
        Lab::up("demo", 3, "16G")
    });
    let lun = lab.lun();
    let dir = tempfile::tempdir().unwrap();
    let controller = report.step("start ocfs2-csi controller on the LUN", || {
        rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()))
    });
    let mut c = rt.block_on(controller.client());
    let volume = report.step("CreateVolume pvc-demo, 2 GiB, ReadWriteMany", || {
        rt.block_on(c.create_volume(create_request("pvc-demo", 2 * GIB)))
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    });
    println!("   volume_id {}", volume.volume_id);
    report.step(
        "start ocfs2-csi node on every guest: o2cb cluster + global heartbeat",
        || {
            rt.block_on(lab.start_cluster(
                &[1, 2, 3],
                CLUSTER,
                std::time::Duration::from_secs(120),
            ));
        },
    );
    report.step(
        "NodeStageVolume + NodePublishVolume on all three guests",
        || {
            for node in 1..=3 {
                rt.block_on(stage_and_publish(&lab, node, &volume));
            }
        },
    );
    let dir_of = target(&volume);
    let written = report.step("write 64 MiB on node1", || {
        lab.must(
            1,
            &format!(
                "dd if=/dev/urandom of={dir_of}/data.bin bs=1M count=64 2>/dev/null && sync && \
                 md5sum {dir_of}/data.bin | cut -d' ' -f1"
            ),
        )
    });
    report.step("read it back on node2 and node3", || {
        for node in [2, 3] {
            let read = lab.must(node, &format!("md5sum {dir_of}/data.bin | cut -d' ' -f1"));
            assert_eq!(
                read.trim(),
                written.trim(),
                "node{node} read different bytes"
            );
            println!("   node{node}: md5 {} matches node1", read.trim());
        }
    });
    report.step("grow 2 GiB -> 4 GiB while mounted on all three", || {
        let grown = rt
            .block_on(c.controller_expand_volume(expand_request(&volume.volume_id, 4 * GIB)))
            .unwrap()
            .into_inner();
        println!(
            "   ControllerExpandVolume: GPT entry grown to {} bytes usable",
            grown.capacity_bytes
        );
        // Kubernetes asks every node; the filesystem grows once, after every
        // node that has it mounted sees the bigger partition.
        for node in 1..=3 {
            let t = Instant::now();
            let r = rt
                .block_on(async {
                    lab.node_client(node)
                        .await
                        .node_expand_volume(expand_req(&volume))
                        .await
                })
                .unwrap()
                .into_inner();
            println!(
                "   node{node}: NodeExpandVolume -> {} bytes in {:.2} s",
                r.capacity_bytes,
                t.elapsed().as_secs_f64()
            );
        }
        for (i, df) in lab
            .on_all(&format!("df -h {dir_of} | tail -n 1"))
            .iter()
            .enumerate()
        {
            println!("   node{}: {}", i + 1, df.trim());
        }
        let total: u64 = lab
            .must(3, &format!("df -P -B1 {dir_of} | tail -n 1"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(total >= 4 * GIB, "node3 sees only {total} bytes");
    });
    report.step(
        "NodeUnpublish + NodeUnstage everywhere, fsck, DeleteVolume",
        || {
            for node in 1..=3 {
                rt.block_on(unpublish_and_unstage(&lab, node, &volume));
            }
            lab.fsck_volume(1, &volume.volume_context["partitionGuid"]);
            rt.block_on(c.delete_volume(delete_request(&volume.volume_id)))
                .unwrap();
        },
    );
    drop(c);
    drop(controller);
    report.step("shut the lab down", || drop(lab));

    println!("\n== ocfs2-csi lab demo report");
    for (what, s) in &report.0 {
        println!("  {s:>6.1} s  {what}");
    }
    println!("  {:>6.1} s  total", total.elapsed().as_secs_f64());
    println!("(TCG guests on a shared 2-core machine: absolute times are not production figures)");
}
