//! `make demo`: the driver's main job, end to end, on an embedded default.
//! Boots the three-node lab (QEMU guests with Debian's OCFS2 kernel sharing
//! one LUN file), creates a ReadWriteMany volume through `ocfs2-csi
//! controller`, mounts it on all three guests, writes on one and reads on the
//! other two, grows it while it stays mounted everywhere, prints a report with
//! timings and tears everything down.

#[path = "../tests/common/mod.rs"]
mod common;

use common::lab::Lab;
use common::*;
use std::time::Instant;

const CLUSTER: &str = "testclu";

struct Report(Vec<(String, f64)>);

impl Report {
    fn step<T>(&mut self, what: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        println!("-- {what}");
        let out = f();
        let s = t.elapsed().as_secs_f64();
        println!("   done in {s:.1} s");
        self.0.push((what.to_string(), s));
        out
    }
}

fn main() {
    let total = Instant::now();
    let mut report = Report(Vec::new());
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
    let n = partition_by_guid(&lun, &volume.volume_context["partitionGuid"]).number;
    let region = volume.volume_context["heartbeatUuid"]
        .replace('-', "")
        .to_uppercase();
    report.step(
        "join the o2cb cluster on every guest (global heartbeat)",
        || {
            lab.sync_partitions();
            lab.form_cluster(CLUSTER, &region);
        },
    );
    report.step("mount the volume on all three guests", || {
        lab.on_all(&format!(
            "mkdir -p /mnt/demo && mount -t ocfs2 /dev/vda{n} /mnt/demo"
        ));
    });
    let written = report.step("write 64 MiB on node1", || {
        lab.must(
            1,
            "dd if=/dev/urandom of=/mnt/demo/data.bin bs=1M count=64 2>/dev/null && sync && \
             md5sum /mnt/demo/data.bin | cut -d' ' -f1",
        )
    });
    report.step("read it back on node2 and node3", || {
        for node in [2, 3] {
            let read = lab.must(node, "md5sum /mnt/demo/data.bin | cut -d' ' -f1");
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
        // Every node must see the bigger partition before the filesystem grows.
        lab.sync_partitions();
        lab.must(1, &format!("tunefs.ocfs2 -S /dev/vda{n}"));
        for (i, df) in lab.on_all("df -h /mnt/demo | tail -n 1").iter().enumerate() {
            println!("   node{}: {}", i + 1, df.trim());
        }
        let total: u64 = lab
            .must(3, "df -B1 /mnt/demo | tail -n 1")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(total >= 4 * GIB, "node3 sees only {total} bytes");
    });
    report.step("unmount, fsck and DeleteVolume", || {
        lab.on_all("umount /mnt/demo");
        lab.must(1, &format!("fsck.ocfs2 -fn /dev/vda{n} >/dev/null"));
        rt.block_on(c.delete_volume(delete_request(&volume.volume_id)))
            .unwrap();
    });
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
