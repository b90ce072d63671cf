//! Clones (CreateVolume from a volume) on real kernels, the controller on
//! the host as in the other scenarios:
//!
//! 1. a 1.5 GiB filesystem volume (so it has a backup superblock) written
//!    by all three guests at once, each its own files;
//! 2. a clone while it is mounted: FailedPrecondition naming the nodes,
//!    the table unchanged;
//! 3. unstaged everywhere, cloned 2 GiB big: the copy's time and the
//!    bytes it read (the used clusters only) against the volume's size,
//!    then the filesystem grown offline to the clone's partition;
//! 4. the clone mounted on node2 while the source is mounted on node3 in
//!    the same o2cb cluster (two UUIDs, or the mount fails): every file's
//!    sha256 equal; a write to the clone leaves the source as it was;
//!    fsck of the clone clean;
//! 5. a raw block volume written with O_DIRECT on node1, cloned bigger:
//!    the same bytes on node2, zeros past them.
//!
//! Snapshots, on the same volumes:
//!
//! 6. CreateSnapshot of the mounted source (step 2): FailedPrecondition
//!    saying why, the table unchanged; of the unused source (after step 3):
//!    a snapshot partition in which blkid finds no filesystem at its start
//!    (nothing can mount it) and the image 1 MiB in; ListSnapshots names
//!    its source;
//! 7. the source is written again in step 4; a volume restored from the
//!    snapshot mounted on node1 holds the files of the snapshot's moment,
//!    with its own UUID and label; fsck clean;
//! 8. the block volume of step 5 snapshotted and restored: the same bytes
//!    on node3; then every snapshot deleted, nothing left.

use crate::common::lab::*;
use crate::common::*;
use ocfs2_csi::csi::*;
use std::time::Instant;
use tonic::Code;

const MIB: u64 = 1 << 20;
const NODES: usize = 3;
const SOURCE: u64 = 1536 * MIB;
/// The clone asks for more: copied at the source's size, grown offline.
const CLONE: u64 = 2048 * MIB;

fn clone_request(name: &str, source: &Volume, bytes: u64) -> CreateVolumeRequest {
    let mut req = create_request(name, bytes);
    req.volume_capabilities = source_caps(source);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: source.volume_id.clone(),
            },
        )),
    });
    req
}

fn source_caps(v: &Volume) -> Vec<VolumeCapability> {
    match v.volume_context["content"].as_str() {
        "block" => vec![block_cap()],
        _ => create_request("x", 1).volume_capabilities,
    }
}

fn snapshot_request(name: &str, source: &Volume) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        source_volume_id: source.volume_id.clone(),
        name: name.into(),
        ..Default::default()
    }
}

fn restore_request(name: &str, snap: &Snapshot, like: &Volume, bytes: u64) -> CreateVolumeRequest {
    let mut req = create_request(name, bytes);
    req.volume_capabilities = source_caps(like);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    req
}

/// What blkid finds at byte `offset` of the LUN file: a type, or nothing.
fn blkid_at(lun: &std::path::Path, offset: u64) -> String {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", "-O", &offset.to_string()])
        .arg(lun)
        .output()
        .expect("run blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file under `dir` on `node` with its sha256, sorted by name.
fn sums(lab: &Lab, node: usize, dir: &str) -> String {
    lab.must(
        node,
        &format!("cd {dir} && find . -type f | sort | xargs sha256sum"),
    )
}

pub fn run(lab: &Lab, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let lun = lab.lun();
    let controller = lab.scenario_controller(rt, dir.path());
    let mut c = rt.block_on(controller.client());

    // --- 1. a source written by three nodes at once ------------------------
    let src = rt
        .block_on(c.create_volume(create_request("pvc-golden", SOURCE)))
        .expect("create the source")
        .into_inner()
        .volume
        .unwrap();
    for node in 1..=NODES {
        rt.block_on(stage_and_publish(lab, node, &src));
    }
    let t = target(&src);
    let writers: Vec<_> = (1..=NODES)
        .map(|node| {
            let script = format!(
                "mkdir -p {t}/n{node} && for i in 1 2 3 4; do \
                 dd if=/dev/urandom of={t}/n{node}/f$i bs=1M count=8 conv=fsync 2>/dev/null || exit 1; \
                 done && echo hello-from-{node} > {t}/n{node}/small && sync"
            );
            (node, script)
        })
        .collect();
    std::thread::scope(|s| {
        for (node, script) in &writers {
            s.spawn(move || lab.must(*node, script));
        }
    });
    let before = sums(lab, 1, &t);
    assert_eq!(before.lines().count(), 3 * 5, "{before}");

    // --- 2. refused while mounted ------------------------------------------
    let table = parsed_table(&lun);
    let err = rt
        .block_on(c.create_volume(clone_request("pvc-copy", &src, SOURCE)))
        .expect_err("a mounted source is not cloned");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("o2cb node(s)"), "{err:?}");
    assert_eq!(
        parsed_table(&lun),
        table,
        "a refused clone changed the table"
    );
    let err = rt
        .block_on(c.create_snapshot(snapshot_request("snap-golden", &src)))
        .expect_err("a mounted volume is not snapshotted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cannot be frozen"), "{err:?}");
    assert_eq!(
        parsed_table(&lun),
        table,
        "a refused snapshot changed the table"
    );

    // --- 3. cloned once unused ----------------------------------------------
    for node in 1..=NODES {
        rt.block_on(unpublish_and_unstage(lab, node, &src));
    }
    let started = Instant::now();
    let copy = rt
        .block_on(c.create_volume(clone_request("pvc-copy", &src, CLONE)))
        .expect("clone the unused source")
        .into_inner()
        .volume
        .unwrap();
    let took = started.elapsed();
    assert!(
        copy.capacity_bytes as u64 >= CLONE,
        "{}",
        copy.capacity_bytes
    );
    let from = match copy.content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
        Some(volume_content_source::Type::Volume(v)) => v.volume_id.clone(),
        other => panic!("no content source in the answer: {other:?}"),
    };
    assert_eq!(from, src.volume_id);
    let log = controller.log_text();
    let copied = log
        .lines()
        .rfind(|l| l.contains("copied the clone's source"))
        .unwrap_or_else(|| panic!("the controller logged no copy:\n{log}"))
        .to_string();
    // Only the used clusters move: journals, system files and 120 MiB of
    // files, not the 1.5 GiB.
    let mib: u64 = copied
        .split("mib=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no mib= in {copied}"));
    assert!(
        (120..SOURCE / MIB / 2).contains(&mib),
        "copied {mib} MiB of a {} MiB volume holding 120 MiB of files",
        SOURCE / MIB
    );
    println!(
        "clone 3: {} MiB filesystem cloned in {:.1} s, {mib} MiB copied; controller: {}",
        SOURCE / MIB,
        took.as_secs_f64(),
        copied.split("source ").nth(1).unwrap_or_default().trim()
    );

    // --- 6. a snapshot of the unused source ---------------------------------
    let started = Instant::now();
    let snap = rt
        .block_on(c.create_snapshot(snapshot_request("snap-golden", &src)))
        .expect("snapshot the unused source")
        .into_inner()
        .snapshot
        .unwrap();
    let took = started.elapsed();
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, src.volume_id);
    assert_eq!(snap.size_bytes, src.capacity_bytes);
    let listed = rt
        .block_on(c.list_snapshots(ListSnapshotsRequest {
            source_volume_id: src.volume_id.clone(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].snapshot.as_ref(), Some(&snap));
    let entry = ocfs2_csi::volume::snapshot::snapshots(&parsed_table(&lun))
        .into_iter()
        .next()
        .expect("a snapshot partition");
    assert_eq!(
        blkid_at(&lun, entry.offset),
        "",
        "a filesystem at the snapshot partition's start could be mounted"
    );
    assert_eq!(blkid_at(&lun, entry.image().offset), "ocfs2");
    println!(
        "snapshot 6: {} MiB filesystem snapshotted in {:.1} s (refused while mounted); no \
         filesystem at the partition's start, its image 1 MiB in",
        SOURCE / MIB,
        took.as_secs_f64()
    );

    // --- 4. both mounted in one cluster; the same files ---------------------
    rt.block_on(stage_and_publish(lab, 2, &copy));
    rt.block_on(stage_and_publish(lab, 3, &src));
    let ct = target(&copy);
    assert_eq!(sums(lab, 2, &ct), before, "the clone's files differ");
    let size: u64 = lab
        .must(
            2,
            &format!("echo $(( $(stat -f -c %b {ct}) * $(stat -f -c %S {ct}) ))"),
        )
        .trim()
        .parse()
        .unwrap();
    // The filesystem fills the clone's partition (the request plus OCFS2's
    // overhead), not the source's.
    let partition = volume_on(&lun, &copy.volume_context["partitionGuid"]).size;
    assert!(
        size > SOURCE + 256 * MIB && size <= partition,
        "the clone's filesystem holds {size} bytes, its partition {partition}"
    );
    let ids: Vec<String> = [(2, &copy), (3, &src)]
        .iter()
        .map(|(node, v)| {
            let dev = lab.must(*node, &format!("findmnt -no SOURCE {}", staging(v)));
            lab.must(
                *node,
                &format!("blkid -s UUID -s LABEL -o value {}", dev.trim()),
            )
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
        })
        .collect();
    assert_ne!(ids[0], ids[1], "clone and source share their identity");
    assert!(ids[0].contains("pvc-copy"), "the clone's label: {}", ids[0]);
    println!("clone 4: the same 15 files on the clone (node2) as on the source (node3), mounted at once; the clone's filesystem {} MiB; UUID and label {ids:?}", size / MIB);
    lab.must(2, &format!("echo changed > {ct}/n1/small && sync"));
    assert_eq!(
        sums(lab, 3, &t),
        before,
        "writing the clone changed the source"
    );
    // After the snapshot: the source changes.
    lab.must(
        3,
        &format!("echo later > {t}/n2/small && rm {t}/n3/f1 && sync"),
    );
    rt.block_on(unpublish_and_unstage(lab, 2, &copy));
    rt.block_on(unpublish_and_unstage(lab, 3, &src));
    lab.fsck_volume(1, &copy.volume_context["partitionGuid"]);

    // --- 7. restored from the snapshot: the files of its moment --------------
    let started = Instant::now();
    let back = rt
        .block_on(c.create_volume(restore_request("pvc-restored", &snap, &src, SOURCE)))
        .expect("restore the snapshot")
        .into_inner()
        .volume
        .unwrap();
    let took = started.elapsed();
    rt.block_on(stage_and_publish(lab, 1, &back));
    let bt = target(&back);
    assert_eq!(
        sums(lab, 1, &bt),
        before,
        "the restored files differ from the snapshot's"
    );
    let dev = lab.must(1, &format!("findmnt -no SOURCE {}", staging(&back)));
    let id = lab.must(1, &format!("blkid -s LABEL -o value {}", dev.trim()));
    assert_eq!(id.trim(), "pvc-restored");
    rt.block_on(unpublish_and_unstage(lab, 1, &back));
    lab.fsck_volume(1, &back.volume_context["partitionGuid"]);
    println!(
        "snapshot 7: restored in {:.1} s; the 15 files of the snapshot's moment (the source \
         changed since), label pvc-restored, fsck clean",
        took.as_secs_f64()
    );

    // --- 5. raw block, cloned bigger ----------------------------------------
    let mut req = create_request("pvc-blk-src", 64 * MIB);
    req.volume_capabilities = vec![block_cap()];
    let bsrc = rt
        .block_on(c.create_volume(req))
        .expect("create a block source")
        .into_inner()
        .volume
        .unwrap();
    rt.block_on(stage_and_publish_block(lab, 1, &bsrc));
    let dev = block_target(&bsrc);
    let written = lab.must(
        1,
        &format!(
            "dd if=/dev/urandom of=/tmp/blk bs=1M count=16 2>/dev/null && \
             dd if=/tmp/blk of={dev} bs=1M oflag=direct conv=fsync 2>/dev/null && \
             sha256sum < /tmp/blk"
        ),
    );
    let err = rt
        .block_on(c.create_volume(clone_request("pvc-blk-copy", &bsrc, 128 * MIB)))
        .expect_err("a published block source is not cloned");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    rt.block_on(unpublish_and_unstage_block(lab, 1, &bsrc));
    let bcopy = rt
        .block_on(c.create_volume(clone_request("pvc-blk-copy", &bsrc, 128 * MIB)))
        .expect("clone the block volume")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(bcopy.capacity_bytes as u64, 128 * MIB);
    rt.block_on(stage_and_publish_block(lab, 2, &bcopy));
    let cdev = block_target(&bcopy);
    let read = lab.must(
        2,
        &format!(
            "dd if={cdev} bs=1M count=16 iflag=direct 2>/dev/null | sha256sum; \
             dd if={cdev} bs=1M skip=64 count=64 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c; \
             blockdev --getsize64 {cdev}"
        ),
    );
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines[0], written.trim(), "the clone's bytes differ");
    assert_eq!(lines[1].trim(), "0", "non-zero bytes past the source's end");
    assert_eq!(lines[2].trim(), (128 * MIB).to_string());
    println!("clone 5: 64 MiB block volume cloned to 128 MiB; 16 MiB written on node1 read back on node2, zeros after");
    rt.block_on(unpublish_and_unstage_block(lab, 2, &bcopy));

    // --- 8. raw block, snapshotted and restored ---------------------------
    let bsnap = rt
        .block_on(c.create_snapshot(snapshot_request("snap-blk", &bsrc)))
        .expect("snapshot the block volume")
        .into_inner()
        .snapshot
        .unwrap();
    let bback = rt
        .block_on(c.create_volume(restore_request("pvc-blk-restored", &bsnap, &bsrc, 64 * MIB)))
        .expect("restore the block snapshot")
        .into_inner()
        .volume
        .unwrap();
    rt.block_on(stage_and_publish_block(lab, 3, &bback));
    let rdev = block_target(&bback);
    let read = lab.must(
        3,
        &format!("dd if={rdev} bs=1M count=16 iflag=direct 2>/dev/null | sha256sum"),
    );
    assert_eq!(
        read.trim(),
        written.trim(),
        "the restored block bytes differ"
    );
    rt.block_on(unpublish_and_unstage_block(lab, 3, &bback));
    println!("snapshot 8: 64 MiB block volume snapshotted and restored; the 16 MiB written on node1 read back on node3");

    for v in [&copy, &src, &bcopy, &bsrc, &back, &bback] {
        rt.block_on(c.delete_volume(delete_request(&v.volume_id)))
            .expect("delete");
    }
    // Snapshots outlive their sources, until deleted.
    assert_eq!(volume_partitions(&lun).len(), 2);
    for s in [&snap, &bsnap] {
        rt.block_on(c.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        }))
        .expect("delete a snapshot");
    }
    assert!(volume_partitions(&lun).is_empty());
}
