//! Raw block volumes (volumeMode: Block) on real kernels: one volume
//! published as a device on all three guests at once (multi-node
//! multi-writer), as KubeVirt uses it for a VM disk that live-migrates.
//!
//! 1. created zeroed over space earlier scenarios wrote (the host reads
//!    the LUN file: every byte of the device is zero);
//! 2. staged and published on three guests: a block device of the size
//!    asked for at each target, each node's holder mark in the header;
//!    DeleteVolume refused, naming the three nodes, nothing changed;
//! 3. 16 MiB written with O_DIRECT on node1, read back with O_DIRECT on
//!    node2 and node3: the same sha256;
//! 4. grown while published on all three under O_DIRECT writers (each
//!    node its own zone): ControllerExpandVolume, then NodeExpandVolume on
//!    all three at once; each device shows the new size, data written in
//!    the new space on one node reads back on the others, 0 write errors;
//! 5. NodeGetVolumeStats: the size, healthy;
//! 6. unpublished everywhere; on node1 a process still holds the device
//!    open, and its unstage is refused with its mark kept until the
//!    process lets go; unstaged everywhere (maps and marks gone), deleted;
//! 7. csi-sanity's whole suite with block access inside node1, against a
//!    controller there too: real maps published as devices, and each new
//!    volume zeroed with BLKZEROOUT on the guest's disk (its rate logged).

use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::csi::*;
use ocfs2_csi::disk::lun_io::LunFile;
use ocfs2_csi::volume::block_header;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use tonic::Code;

use super::{CLUSTER, SANITY_LIMIT};

const MIB: u64 = 1 << 20;
const NODES: usize = 3;
const FIRST: u64 = 256 * MIB;
const GROWN: u64 = 640 * MIB;

/// `node`'s map of the volume whose head has `guid`.
fn map_of_block(lab: &Lab, node: usize, guid: &str) -> String {
    lab.map_device(node, guid)
        .unwrap_or_else(|| panic!("node{node} has no map of {guid}"))
}

fn size_on(lab: &Lab, node: usize, v: &Volume) -> u64 {
    lab.must(node, &format!("blockdev --getsize64 {}", block_target(v)))
        .trim()
        .parse()
        .unwrap()
}

/// The holders' node numbers, as the header on the LUN says.
fn holders(lun: &std::path::Path, v: &Volume) -> Vec<u8> {
    let e = volume_on(lun, &v.volume_context["partitionGuid"]);
    let io = LunFile::open(lun).unwrap();
    block_header::read_holders(&io, e.offset, &e.guid)
        .unwrap()
        .expect("the header is the volume's")
        .iter()
        .map(|h| h.number)
        .collect()
}

pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    run_parts(lab, rt, true);
}

/// Parts 1-6, on a lab whose LUN is reached over iSCSI and dm-multipath:
/// each node's map then lies over the multipath map. Without csi-sanity,
/// which does not depend on the LUN's transport.
pub fn run_transport(lab: &Lab, rt: &tokio::runtime::Runtime) {
    run_parts(lab, rt, false);
}

fn run_parts(lab: &Lab, rt: &tokio::runtime::Runtime, all: bool) {
    let total = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = lab.scenario_controller(rt, dir.path());
    let mut c = rt.block_on(controller.client());

    // --- 1. created zeroed ------------------------------------------------
    // Old bytes where the volume will go: the first free space after the
    // heartbeat partition, which earlier scenarios' volumes used.
    let mut req = create_request("pvc-block", FIRST);
    req.volume_capabilities = vec![block_cap()];
    let t = Instant::now();
    let v = rt
        .block_on(c.create_volume(req))
        .expect("create a block volume")
        .into_inner()
        .volume
        .unwrap();
    let created = t.elapsed();
    assert_eq!(v.capacity_bytes as u64, FIRST);
    assert_eq!(v.volume_context["content"], "block");
    let e = volume_on(&lun, &v.volume_context["partitionGuid"]);
    assert_eq!(e.content, ocfs2_csi::volume::entry::Content::Block);
    let f = std::fs::File::open(&lun).unwrap();
    let mut buf = vec![1u8; MIB as usize];
    for (offset, bytes) in e.device_extents() {
        for at in (offset..offset + bytes).step_by(MIB as usize) {
            f.read_exact_at(&mut buf, at).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "old bytes at {at}");
        }
    }
    println!(
        "block 1: {} MiB block volume created in {:.1} s, every byte zero",
        FIRST / MIB,
        created.as_secs_f64()
    );

    // --- 2. published on three guests -------------------------------------
    let t = Instant::now();
    for node in 1..=NODES {
        rt.block_on(stage_and_publish_block(lab, node, &v));
        lab.must(node, &format!("[ -b {} ]", block_target(&v)));
        assert_eq!(size_on(lab, node, &v), FIRST, "node{node}");
    }
    let mut marks = holders(&lun, &v);
    marks.sort();
    assert_eq!(marks.len(), NODES, "holder marks: {marks:?}");
    let table = || parsed_table(&lun);
    let before = table();
    let refused = rt
        .block_on(c.delete_volume(delete_request(&v.volume_id)))
        .expect_err("a published block volume must not be deleted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for node in 1..=NODES {
        assert!(
            refused.message().contains(&format!("node{node}")),
            "{}",
            refused.message()
        );
    }
    assert_eq!(table(), before, "a refused delete changed the table");
    println!(
        "block 2: staged and published on {NODES} guests in {:.1} s; marks of o2cb nodes {marks:?}; delete refused: {}",
        t.elapsed().as_secs_f64(),
        refused.message()
    );

    // --- 3. O_DIRECT on one node, read on the others -------------------
    let target = block_target(&v);
    let sum = lab.must(
        1,
        &format!(
            "dd if=/dev/urandom of=/tmp/pattern bs=1M count=16 2>/dev/null
             dd if=/tmp/pattern of={target} bs=1M seek=8 oflag=direct 2>/dev/null
             sha256sum < /tmp/pattern | cut -d' ' -f1"
        ),
    );
    for node in 2..=NODES {
        let read = lab.must(
            node,
            &format!(
                "dd if={target} bs=1M skip=8 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1"
            ),
        );
        assert_eq!(read.trim(), sum.trim(), "node{node} read other bytes");
    }
    println!("block 3: 16 MiB written with O_DIRECT on node1, same sha256 read on node2 and node3");

    // --- 4. grown under writers on all three ----------------------------
    // Node i rewrites 1 MiB blocks of its own 32 MiB zone in a loop.
    lab.on_all(&format!(
        "W=/tmp/bwriters; rm -rf $W; mkdir -p $W; n=$(hostname | tr -dc 0-9)
         ( i=0; while [ ! -e $W/stop ]; do
             dd if=/dev/urandom of={target} bs=1M count=1 seek=$(( 64 + n * 32 + i % 32 )) \
               oflag=direct 2>$W/e >/dev/null || echo \"write $i: $(cat $W/e)\" >> $W/errors
             i=$((i+1)); echo $i > $W/count
           done; touch $W/done ) </dev/null >/dev/null 2>&1 &
         true"
    ));
    let counts = || -> Vec<u64> {
        lab.on_all("cat /tmp/bwriters/count 2>/dev/null || echo 0")
            .iter()
            .map(|c| c.trim().parse().unwrap_or(0))
            .collect()
    };
    let start = counts();
    wait_until("block writers running", Duration::from_secs(120), || {
        counts().iter().zip(&start).all(|(now, then)| now > then)
    });
    let t = Instant::now();
    let expanded = rt
        .block_on(c.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_capability: Some(block_cap()),
            ..expand_request(&v.volume_id, GROWN)
        }))
        .expect("controller expand")
        .into_inner();
    assert_eq!(expanded.capacity_bytes as u64, GROWN);
    assert!(expanded.node_expansion_required);
    let grown: Vec<u64> = rt.block_on(async {
        let calls = (1..=NODES).map(|node| {
            let v = &v;
            async move {
                let mut n = lab.node_client(node).await;
                n.node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    volume_path: block_target(v),
                    staging_target_path: block_staging(v),
                    volume_capability: Some(block_cap()),
                    capacity_range: Some(CapacityRange {
                        required_bytes: GROWN as i64,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("node{node}: expand: {e:?}"))
                .into_inner()
                .capacity_bytes as u64
            }
        });
        futures::future::join_all(calls).await
    });
    let grow_took = t.elapsed();
    assert_eq!(grown, vec![GROWN; NODES]);
    for node in 1..=NODES {
        assert_eq!(size_on(lab, node, &v), GROWN, "node{node}");
    }
    // The new space: written on node3, read on node1 and node2.
    let sum = lab.must(
        3,
        &format!(
            "dd if=/dev/urandom of=/tmp/pattern2 bs=1M count=8 2>/dev/null
             dd if=/tmp/pattern2 of={target} bs=1M seek={} oflag=direct 2>/dev/null
             sha256sum < /tmp/pattern2 | cut -d' ' -f1",
            GROWN / MIB - 8
        ),
    );
    for node in 1..=2 {
        let read = lab.must(
            node,
            &format!(
                "dd if={target} bs=1M skip={} count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1",
                GROWN / MIB - 8
            ),
        );
        assert_eq!(read.trim(), sum.trim(), "node{node}: the new space");
    }
    let past = counts();
    wait_until(
        "block writers after the grow",
        Duration::from_secs(120),
        || counts().iter().zip(&past).all(|(now, then)| now > then),
    );
    let out = lab.on_all(
        "W=/tmp/bwriters; touch $W/stop
         for k in $(seq 600); do [ -e $W/done ] && break; sleep 0.1; done
         echo $(cat $W/count); cat $W/errors 2>/dev/null; dmesg | grep -i 'I/O error' || true",
    );
    for (i, o) in out.iter().enumerate() {
        let mut lines = o.lines();
        let writes = lines.next().unwrap_or("0").trim().to_string();
        let errors: Vec<&str> = lines.collect();
        assert!(errors.is_empty(), "node{}: write errors: {errors:?}", i + 1);
        println!(
            "block 4: node{}: {writes} O_DIRECT 1 MiB writes across the grow, 0 errors",
            i + 1
        );
    }
    println!(
        "block 4: grown {} -> {} MiB on all three in {:.1} s (controller, then NodeExpandVolume on all at once)",
        FIRST / MIB,
        GROWN / MIB,
        grow_took.as_secs_f64()
    );

    // --- 5. stats ---------------------------------------------------------
    let stats = rt
        .block_on(async {
            let mut n = lab.node_client(2).await;
            n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: v.volume_id.clone(),
                volume_path: block_target(&v),
                ..Default::default()
            })
            .await
        })
        .expect("stats")
        .into_inner();
    assert_eq!(stats.usage.len(), 1, "{stats:?}");
    assert_eq!(stats.usage[0].total as u64, GROWN);
    let condition = stats.volume_condition.expect("a condition");
    assert!(!condition.abnormal, "{}", condition.message);

    // --- 6. let go everywhere, delete --------------------------------------
    // On node1 a process still holds the device open after the unpublish
    // (as a VM's QEMU or kubelet's loop device can): the unstage is
    // refused and node1's mark stays until it lets go.
    let guid = v.volume_context["partitionGuid"].clone();
    let map = map_of_block(lab, 1, &guid);
    lab.must(
        1,
        &format!("sleep 3600 < {map} >/dev/null 2>&1 & echo $! > /tmp/holder.pid"),
    );
    let refused = rt.block_on(async {
        let mut n = lab.node_client(1).await;
        n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            target_path: block_target(&v),
        })
        .await
        .expect("unpublish");
        n.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: block_staging(&v),
        })
        .await
        .expect_err("an unstage while the device is held open")
    });
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(holders(&lun, &v).contains(&0), "node1's mark went");
    println!(
        "block 6: unstage refused while a process holds the device: {}",
        refused.message()
    );
    lab.must(1, "kill $(cat /tmp/holder.pid)");
    wait_until(
        "node1's unstage once the device is let go",
        Duration::from_secs(60),
        || {
            rt.block_on(async {
                let mut n = lab.node_client(1).await;
                n.node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    staging_target_path: block_staging(&v),
                })
                .await
                .is_ok()
            })
        },
    );
    for node in 1..=NODES {
        rt.block_on(unpublish_and_unstage_block(lab, node, &v));
        assert_eq!(
            lab.map_device(node, &v.volume_context["partitionGuid"]),
            None,
            "node{node} kept its map"
        );
        lab.must(node, &format!("[ ! -e {} ]", block_target(&v)));
    }
    assert!(holders(&lun, &v).is_empty());
    rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
        .expect("delete once nobody holds it");
    assert!(volume_partitions(&lun).is_empty());
    assert_gpt_valid(&lun);
    drop(c);
    drop(controller);
    if !all {
        println!(
            "block transport scenarios finished in {:.1} s",
            total.elapsed().as_secs_f64()
        );
        return;
    }

    // --- 7. csi-sanity with block access inside a guest -----------------
    // 64 MiB volumes, and no snapshot specs: they copy a block volume whole
    // (raw bytes have no bitmap) at the 30 MiB/s a TCG guest manages, and
    // each waits the 3 s grace (one page of ListSnapshots alone is minutes
    // here). They run with block access in-process and on the host against
    // the real controller, inside a guest with mount access (basics), and
    // the lab's clone scenario snapshots and restores a block volume.
    let t = Instant::now();
    let out = lab.must_within(
        1,
        &format!(
            "mkdir -p /tmp/bsanity /run/csi
             ocfs2-csi controller --endpoint unix:///run/csi/bcontroller.sock --lun {lun} \
               --cluster-name {CLUSTER} --cluster-id {CLUSTER}-id >/tmp/bcontroller.log 2>&1 &
             echo $! > /tmp/bcontroller.pid
             for i in $(seq 300); do grep -q 'all LUNs open; ready' /tmp/bcontroller.log && break; sleep 0.2; done
             csi-sanity -csi.endpoint 127.0.0.1:10000 \
               -csi.controllerendpoint unix:///run/csi/bcontroller.sock \
               -csi.mountdir /tmp/bsanity/mnt -csi.stagingdir /tmp/bsanity/stage \
               -csi.testvolumesize 67108864 -csi.testvolumeexpandsize 134217728 \
               -csi.testvolumeaccesstype block -ginkgo.skip '[Ss]napshot' \
               -csi.junitfile /tmp/bsanity.xml -ginkgo.no-color > /tmp/bsanity.log 2>&1
             rc=$?; kill $(cat /tmp/bcontroller.pid)
             for i in $(seq 100); do kill -0 $(cat /tmp/bcontroller.pid) 2>/dev/null || break; sleep 0.1; done
             tail -n 3 /tmp/bsanity.log; [ $rc = 0 ] || tail -n 80 /tmp/bsanity.log; exit $rc",
            lun = lab.guest_lun
        ),
        // The whole suite: its length is its size, not a hang.
        Some(SANITY_LIMIT),
    );
    assert!(out.contains("SUCCESS!"), "{out}");
    println!(
        "block 7: csi-sanity with block access inside node1 in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        out.trim().lines().last().unwrap_or("")
    );
    let cases = junit::cases(&lab.must(1, "cat /tmp/bsanity.xml"));
    for (reason, count) in junit::skipped_by_reason(&cases) {
        println!("block 7: skipped {count:>2}: {reason}");
    }
    let zeroed = lab.must(
        1,
        "grep 'zeroed the new raw block volume' /tmp/bcontroller.log \
         | sed 's/.*zeroed the new raw block volume//' | head -8; true",
    );
    println!(
        "block 7: the guest controller zeroing new volumes on {}:\n{zeroed}",
        lab.guest_lun
    );
    assert!(
        volume_partitions(&lun).is_empty(),
        "csi-sanity left volumes: {:?}",
        volume_partitions(&lun)
    );
    println!(
        "block scenarios finished in {:.1} s",
        total.elapsed().as_secs_f64()
    );
}
