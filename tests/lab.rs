//! Scenarios on the lab: three QEMU guests with real OCFS2 kernels sharing
//! one LUN file, driven by `ocfs2-csi controller` on the host (against the
//! same file) and by the real OCFS2 tools in the guests.
//!
//! 1. cluster formation with global heartbeat on the controller's heartbeat
//!    partition; every guest sees every other;
//! 2. shared access: a volume the controller made is mounted on all guests,
//!    each writes its own file and appends to one file under flock, and all
//!    read identical, complete content; DeleteVolume refuses it while mounted;
//! 3. partition changes while a volume stays mounted everywhere: created,
//!    grown (online, then tunefs.ocfs2 -S on one node) and deleted volumes
//!    appear, change and disappear on every guest without a remount, applied
//!    by `ocfs2-csi sync-partitions` (BLKPG per partition);
//! 4. csi-sanity inside a guest against the driver on its unix sockets.

mod common;

use common::lab::Lab;
use common::*;
use ocfs2_csi::csi::*;
use std::time::Instant;
use tonic::Code;

const CLUSTER: &str = "testclu";

fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}

fn number_of(lun: &std::path::Path, volume: &Volume) -> u32 {
    partition_by_guid(lun, &volume.volume_context["partitionGuid"]).number
}

#[test]
fn lab_scenarios() {
    let total = Instant::now();
    let lab = Lab::up("test-run", 3, "16G");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = rt.block_on(Controller::start(std::slice::from_ref(&lun), dir.path()));
    let mut c = rt.block_on(controller.client());

    // --- 1. cluster formation -------------------------------------------
    let t = Instant::now();
    let shared = rt
        .block_on(c.create_volume(create_request("pvc-shared", 2 * GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    println!(
        "scenario 1: CreateVolume 2 GiB on the shared LUN in {}",
        secs(t)
    );
    // Every guest adds the new partitions with the driver's own BLKPG sync.
    lab.sync_partitions();
    // o2cb names a heartbeat region by the filesystem UUID in upper-case hex.
    let hb_dir = shared.volume_context["heartbeatUuid"]
        .replace('-', "")
        .to_uppercase();
    let t = Instant::now();
    lab.form_cluster(CLUSTER, &hb_dir);
    println!(
        "scenario 1: o2cb cluster formed (register + global heartbeat) in {}",
        secs(t)
    );
    for (i, out) in lab
        .on_all(&format!(
            "ls /sys/kernel/config/cluster/{CLUSTER}/node; \
             cat /sys/kernel/config/cluster/{CLUSTER}/heartbeat/{hb_dir}/dev"
        ))
        .iter()
        .enumerate()
    {
        for n in 1..=lab.nodes {
            assert!(
                out.contains(&format!("node{n}")),
                "node{} lacks node{n}:\n{out}",
                i + 1
            );
        }
        assert!(
            out.contains("vda1"),
            "node{}: heartbeat not on vda1:\n{out}",
            i + 1
        );
    }
    // Every node's heartbeat is seen by every node.
    let live = lab.must(1, &format!("cat /sys/kernel/debug/o2hb/{hb_dir}/livenodes"));
    assert_eq!(
        live.split_whitespace().count(),
        lab.nodes,
        "live nodes: {live}"
    );

    // --- 2. shared access ---------------------------------------------------
    let n = number_of(&lun, &shared);
    let t = Instant::now();
    lab.on_all(&format!(
        "mkdir -p /mnt/shared && mount -t ocfs2 /dev/vda{n} /mnt/shared"
    ));
    println!("scenario 2: mounted on 3 guests in {}", secs(t));
    // Two nodes creating one name at the same moment can get EEXIST from
    // OCFS2 even without O_EXCL (the other node's create lands between
    // lookup and create), so the shared files exist before the writers run.
    lab.must(
        1,
        "touch /mnt/shared/append.lock /mnt/shared/append.log && sync",
    );
    let t = Instant::now();
    lab.on_all(
        "dd if=/dev/urandom of=/mnt/shared/$(hostname).bin bs=1M count=8 2>/dev/null && \
         for k in $(seq 1 40); do \
           flock /mnt/shared/append.lock sh -c \"echo $(hostname) $k >> /mnt/shared/append.log\" \
             || { echo \"append $k on $(hostname) failed with $?\"; exit 1; }; \
         done && sync",
    );
    println!(
        "scenario 2: 3 x (8 MiB file + 40 appends under flock) in {}",
        secs(t)
    );
    let views = lab.on_all(
        "cd /mnt/shared && md5sum node1.bin node2.bin node3.bin append.log && \
         wc -l < append.log && for h in node1 node2 node3; do grep -c \"^$h \" append.log; done",
    );
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v, &views[0], "node{} sees different content", i + 1);
        let counts: Vec<&str> = v.lines().skip(4).map(str::trim).collect();
        assert_eq!(counts, ["120", "40", "40", "40"], "node{}: {v}", i + 1);
    }
    let slots = lab.must(1, &format!("mounted.ocfs2 -f /dev/vda{n}"));
    assert!(
        ["node1", "node2", "node3"]
            .iter()
            .all(|h| slots.contains(h)),
        "mounted.ocfs2 -f: {slots}"
    );
    let refused = rt
        .block_on(c.delete_volume(delete_request(&shared.volume_id)))
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("mounted"),
        "{}",
        refused.message()
    );
    println!(
        "scenario 2: DeleteVolume of the mounted volume refused: {}",
        refused.message()
    );

    // --- 3. partition changes while mounted -----------------------------------
    let t = Instant::now();
    let extra = rt
        .block_on(c.create_volume(create_request("pvc-extra", GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let gone = rt
        .block_on(c.create_volume(create_request("pvc-gone", GIB)))
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (xn, gn) = (number_of(&lun, &extra), number_of(&lun, &gone));
    lab.sync_partitions();
    for out in lab.on_all(&format!(
        "blkid -p -s TYPE -o value /dev/vda{xn} /dev/vda{gn}"
    )) {
        assert_eq!(
            out.lines().filter(|l| l.trim() == "ocfs2").count(),
            2,
            "{out}"
        );
    }
    rt.block_on(c.delete_volume(delete_request(&gone.volume_id)))
        .unwrap();
    lab.sync_partitions();
    lab.on_all(&format!("test ! -e /dev/vda{gn} && test -b /dev/vda{xn}"));
    println!(
        "scenario 3: volumes created and deleted, seen on every guest, in {}",
        secs(t)
    );

    // Online growth of the mounted volume: the GPT entry first, then every
    // node's kernel partition, and only then the filesystem, on one node.
    let t = Instant::now();
    let grown = rt.block_on(c.controller_expand_volume(expand_request(&shared.volume_id, 4 * GIB)));
    match grown {
        // The shared volume has a neighbour right after it: growing in place
        // must be refused, and the extra volume (last on the LUN) grows.
        Err(e) => assert_eq!(e.code(), Code::OutOfRange, "{e:?}"),
        Ok(_) => panic!("grew into the next partition's space"),
    }
    lab.must(
        2,
        &format!("mkdir -p /mnt/extra && mount -t ocfs2 /dev/vda{xn} /mnt/extra"),
    );
    lab.must(
        3,
        &format!("mkdir -p /mnt/extra && mount -t ocfs2 /dev/vda{xn} /mnt/extra"),
    );
    let grown = rt
        .block_on(c.controller_expand_volume(expand_request(&extra.volume_id, 3 * GIB)))
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required);
    let part = partition_by_guid(&lun, &extra.volume_context["partitionGuid"]);
    lab.sync_partitions();
    for out in lab.on_all(&format!("blockdev --getsize64 /dev/vda{xn}")) {
        assert_eq!(
            out.trim(),
            part.bytes().to_string(),
            "kernel partition not resized"
        );
    }
    lab.must(2, &format!("tunefs.ocfs2 -S /dev/vda{xn}"));
    for node in [2, 3] {
        let df = lab.must(node, "df -B1 /mnt/extra | tail -n 1");
        let total: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            total >= 3 * GIB,
            "node{node} sees {total} bytes after the grow: {df}"
        );
    }
    lab.must(
        3,
        "dd if=/dev/zero of=/mnt/extra/big bs=1M count=1300 2>&1 && sync",
    );
    println!(
        "scenario 3: 1 GiB -> 3 GiB grown online on 2 mounts and 1.3 GiB written, in {}",
        secs(t)
    );
    // The shared volume was mounted all along and still works.
    lab.on_all("echo still-here > /mnt/shared/$(hostname).after && sync");

    // Unmount everywhere; every filesystem must check clean.
    lab.on_all(
        "umount /mnt/shared; grep -q ' /mnt/extra ' /proc/mounts && umount /mnt/extra; true",
    );
    for v in [&shared, &extra] {
        let p = partition_by_guid(&lun, &v.volume_context["partitionGuid"]);
        lab.must(1, &format!("fsck.ocfs2 -fn /dev/vda{}", p.number));
    }
    for v in [&shared, &extra] {
        rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
            .unwrap();
    }
    drop(c);
    drop(controller);
    assert_gpt_valid(&lun);

    // --- 4. csi-sanity inside a guest ------------------------------------
    let t = Instant::now();
    let out = lab.must(
        1,
        &format!(
            "mkdir -p /tmp/sanity
             ocfs2-csi controller --endpoint unix:///run/csi/controller.sock --lun /dev/vda \
               --cluster-name {CLUSTER} >/tmp/controller.log 2>&1 &
             ocfs2-csi node --endpoint unix:///run/csi/node.sock --node-id node1 >/tmp/node.log 2>&1 &
             for i in $(seq 300); do grep -q 'all LUNs open; ready' /tmp/controller.log && \
               [ -S /run/csi/node.sock ] && break; sleep 0.2; done
             csi-sanity -csi.endpoint unix:///run/csi/node.sock \
               -csi.controllerendpoint unix:///run/csi/controller.sock \
               -csi.mountdir /tmp/sanity/mnt -csi.stagingdir /tmp/sanity/stage \
               -csi.testvolumesize 1073741824 -csi.testvolumeexpandsize 2147483648 \
               -ginkgo.skip 'Node Service' -ginkgo.no-color > /tmp/sanity.log 2>&1
             rc=$?; tail -n 3 /tmp/sanity.log; [ $rc = 0 ] || tail -n 60 /tmp/sanity.log; exit $rc"
        ),
    );
    assert!(out.contains("SUCCESS!"), "{out}");
    println!(
        "scenario 4: csi-sanity inside node1 in {}: {}",
        secs(t),
        out.trim().lines().last().unwrap_or("")
    );
    println!("lab scenarios finished in {}", secs(total));
}
