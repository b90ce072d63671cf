//! Offline snapshots: a copy cut only while nobody uses the source, kept
//! where no node can stage it, listed, restored into new volumes and
//! deleted; never left half-made.

use super::block::create_block;
use super::*;
use crate::controller::volumes::{ContentSource, SnapshotInfo};
use crate::volume::id::SnapshotId;
use crate::volume::snapshot::{self, SnapshotEntry};

fn none() -> HashMap<String, String> {
    HashMap::new()
}

fn snapshots(disk: &dyn BlockIo) -> Vec<SnapshotEntry> {
    snapshot::snapshots(&table(disk))
}

async fn restore(
    v: &Volumes,
    name: &str,
    snap: &SnapshotInfo,
    bytes: u64,
    caps: Vec<VolumeCapability>,
) -> Result<VolumeInfo, CreateError> {
    restore_id(v, name, &snap.id.to_string(), bytes, caps).await
}

async fn restore_id(
    v: &Volumes,
    name: &str,
    snapshot_id: &str,
    bytes: u64,
    caps: Vec<VolumeCapability>,
) -> Result<VolumeInfo, CreateError> {
    v.create(CreateRequest {
        name,
        required_bytes: bytes as i64,
        limit_bytes: 0,
        capabilities: &caps,
        parameters: &params(&[]),
        source: Some(ContentSource::Snapshot(snapshot_id.to_string())),
    })
    .await
}

#[tokio::test]
async fn a_snapshot_keeps_the_bytes_of_its_moment_and_restores_into_new_volumes() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let s = volume(&p.disk, &src.id.partition);
    p.disk.write_at(s.offset + 5 * MIB, &pattern(7)).unwrap();
    let snap = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .unwrap();
    assert_eq!(snap.source, Some(src.id));
    assert_eq!(snap.size, src.capacity);
    assert!(snap.created.is_some_and(|(secs, _)| secs > 1_700_000_000));
    // A partition of its own, ready; the source usable again; no new
    // volume for the CO or for nodes.
    let e = &snapshots(&p.disk)[0];
    assert_eq!((e.state, e.guid), (State::Ready, snap.id.0.partition));
    assert_eq!(volume(&p.disk, &src.id.partition).state, State::Ready);
    assert_eq!(volume_entries(&p.disk).len(), 1);
    assert_eq!(p.volumes.list(0, "").await.unwrap().0.len(), 1);
    assert_eq!(read(&p.disk, e.image().offset + 5 * MIB), pattern(7));
    // The source changes afterwards; the snapshot does not.
    p.disk.write_at(s.offset + 5 * MIB, &pattern(8)).unwrap();
    // A retry is the same snapshot, cut once.
    let again = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .unwrap();
    assert_eq!(again, snap);
    assert_eq!(read(&p.disk, e.image().offset + 5 * MIB), pattern(7));

    let info = restore(&p.volumes, "pvc-back", &snap, 0, mount_caps())
        .await
        .unwrap();
    assert_eq!(
        info.source,
        Some(ContentSource::Snapshot(snap.id.to_string()))
    );
    assert_eq!(info.capacity, src.capacity);
    let t = volume(&p.disk, &info.id.partition);
    assert_eq!((t.state, t.size), (State::Ready, s.size));
    assert_eq!(read(&p.disk, t.offset + 5 * MIB), pattern(7));
    let fs = p.san.filesystem_at(Path::new(LUN), t.offset).unwrap();
    assert_eq!(fs.uuid, filesystem_uuid("pvc-back"));
    assert_eq!(fs.label, "pvc-back");
    // Bigger: grown before it is ready, the snapshot unchanged.
    let big = restore(&p.volumes, "pvc-big", &snap, 128 * MIB, mount_caps())
        .await
        .unwrap();
    assert!(big.capacity >= 128 * MIB);
    let b = volume(&p.disk, &big.id.partition);
    assert_eq!(read(&p.disk, b.offset + 5 * MIB), pattern(7));
    assert_eq!(
        p.san.filesystem_at(Path::new(LUN), b.offset).unwrap().bytes,
        b.size
    );
    assert_eq!(snapshots(&p.disk), vec![e.clone()]);
    // A retry of a restore is the same volume.
    assert_eq!(
        restore(&p.volumes, "pvc-back", &snap, 0, mount_caps())
            .await
            .unwrap(),
        info
    );
}

#[tokio::test]
async fn a_snapshot_of_a_volume_in_use_is_refused_and_changes_nothing() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    p.san.set_mounted(filesystem_uuid("pvc-src"), &[1, 3]);
    let before = table(&p.disk);
    let err = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.to_string();
    assert!(msg.contains("o2cb node(s) [1, 3]"), "{msg}");
    assert!(msg.contains("cannot be frozen"), "{msg}");
    assert_eq!(table(&p.disk), before);
}

#[tokio::test]
async fn a_mount_during_the_grace_undoes_the_snapshot() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let fs = filesystem_uuid("pvc-src");
    let san = p.san.clone();
    p.san.after_slotmap(move || san.set_mounted(fs, &[4]));
    let r = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert!(
        snapshots(&p.disk).is_empty(),
        "the pending snapshot is gone"
    );
    assert_eq!(volume(&p.disk, &src.id.partition).state, State::Ready);
}

#[tokio::test]
async fn a_block_snapshot_restores_bigger_with_a_zero_tail() {
    let p = pool().await;
    let src = create_block(&p.volumes, "blk-src", 8 * MIB).await.unwrap();
    let s = volume(&p.disk, &src.id.partition);
    p.disk.write_at(s.offset + 2 * MIB, &pattern(3)).unwrap();
    let snap = p
        .volumes
        .create_snapshot("blk-snap", &src.id.to_string(), &none())
        .await
        .unwrap();
    assert_eq!(snap.size, 8 * MIB);
    // Where the restore lands held old bytes.
    let junk = vec![0xa5u8; MIB as usize];
    let e = &snapshots(&p.disk)[0];
    for at in (e.offset + e.size..e.offset + e.size + 32 * MIB).step_by(MIB as usize) {
        p.disk.write_at(at, &junk).unwrap();
    }
    let info = restore(&p.volumes, "blk-back", &snap, 16 * MIB, block_caps())
        .await
        .unwrap();
    let t = volume(&p.disk, &info.id.partition);
    assert_eq!((t.content, t.state), (Content::Block, State::Ready));
    assert_eq!(read(&p.disk, t.offset + 2 * MIB), pattern(3));
    for at in (t.offset + 3 * MIB..t.offset + t.size).step_by(MIB as usize) {
        assert!(
            read(&p.disk, at).iter().all(|&b| b == 0),
            "old bytes at {at}"
        );
    }
    assert_eq!(
        crate::volume::block_header::read_holders(&p.disk, t.offset, &t.guid).unwrap(),
        Some(vec![])
    );
    // A block snapshot is no filesystem, and the other way round.
    assert_eq!(
        code(restore(&p.volumes, "as-fs", &snap, 0, mount_caps()).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn snapshots_are_listed_in_pages_and_by_id_or_source() {
    let p = pool().await;
    let a = create(&p.volumes, "pvc-a", 64 * MIB).await.unwrap();
    let b = create_block(&p.volumes, "blk-b", 8 * MIB).await.unwrap();
    let mut made = Vec::new();
    for (name, src) in [("s1", &a), ("s2", &b), ("s3", &a)] {
        let info = p
            .volumes
            .create_snapshot(name, &src.id.to_string(), &none())
            .await
            .unwrap();
        made.push(info);
    }
    let (all, token) = p.volumes.list_snapshots(0, "", "", "").await.unwrap();
    assert_eq!((all.clone(), token), (made.clone(), String::new()));
    let (first, token) = p.volumes.list_snapshots(2, "", "", "").await.unwrap();
    assert_eq!(first, made[..2]);
    let (rest, end) = p.volumes.list_snapshots(2, &token, "", "").await.unwrap();
    assert_eq!((rest, end), (made[2..].to_vec(), String::new()));
    let (of_a, _) = p
        .volumes
        .list_snapshots(0, "", "", &a.id.to_string())
        .await
        .unwrap();
    assert_eq!(of_a, vec![made[0].clone(), made[2].clone()]);
    let (one, _) = p
        .volumes
        .list_snapshots(0, "", &made[1].id.to_string(), "")
        .await
        .unwrap();
    assert_eq!(one, vec![made[1].clone()]);
    // IDs that name nothing of ours: nothing, not an error.
    let mut gone = made[1].id;
    gone.0.partition = uuid::Uuid::new_v4();
    for (snap, source) in [
        (gone.to_string(), String::new()),
        ("not-an-id".into(), String::new()),
        (String::new(), "not-an-id".into()),
        (String::new(), made[1].id.to_string()),
    ] {
        let (none, _) = p
            .volumes
            .list_snapshots(0, "", &snap, &source)
            .await
            .unwrap();
        assert!(none.is_empty(), "{snap} {source}");
    }
    assert_eq!(
        code(p.volumes.list_snapshots(0, "x", "", "").await),
        Code::Aborted
    );
    assert_eq!(
        code(p.volumes.list_snapshots(-1, "", "", "").await),
        Code::InvalidArgument
    );
    // Snapshots are no volumes.
    assert_eq!(p.volumes.list(0, "").await.unwrap().0.len(), 2);
}

#[tokio::test]
async fn a_snapshot_name_belongs_to_one_source() {
    let p = pool().await;
    let a = create(&p.volumes, "pvc-a", 64 * MIB).await.unwrap();
    let b = create(&p.volumes, "pvc-b", 64 * MIB).await.unwrap();
    p.volumes
        .create_snapshot("s", &a.id.to_string(), &none())
        .await
        .unwrap();
    let before = table(&p.disk);
    let other = p
        .volumes
        .create_snapshot("s", &b.id.to_string(), &none())
        .await;
    assert_eq!(code(other), Code::AlreadyExists);
    let mut gone = a.id;
    gone.partition = uuid::Uuid::new_v4();
    for (name, source, want) in [
        ("t", gone.to_string(), Code::NotFound),
        ("t", "junk".into(), Code::NotFound),
        ("t", String::new(), Code::InvalidArgument),
        ("", a.id.to_string(), Code::InvalidArgument),
    ] {
        let r = p.volumes.create_snapshot(name, &source, &none()).await;
        assert_eq!(code(r), want, "{name:?} {source:?}");
    }
    for (key, value) in [("nodeSlots", "4"), ("x", "")] {
        let pairs = HashMap::from([(key.to_string(), value.to_string())]);
        let r = p
            .volumes
            .create_snapshot("t", &a.id.to_string(), &pairs)
            .await;
        let err = r.expect_err("a parameter");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains(key), "{err}");
    }
    assert_eq!(table(&p.disk), before);
    // The names Kubernetes adds are no choice of the user's.
    let named = HashMap::from([(
        "csi.storage.k8s.io/volumesnapshot/name".to_string(),
        "s-of-a".to_string(),
    )]);
    p.volumes
        .create_snapshot("named", &a.id.to_string(), &named)
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_a_snapshot_wipes_it_and_waits_for_its_restores() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let snap = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .unwrap();
    let e = snapshots(&p.disk)[0].clone();
    let id = snap.id.to_string();
    // A restore from it holds it.
    let held = p.volumes.begin(e.guid, "restore").unwrap();
    assert_eq!(code(p.volumes.delete_snapshot(&id).await), Code::Aborted);
    assert_eq!(snapshots(&p.disk).len(), 1);
    drop(held);
    // A volume's ID is not a snapshot's, and the other way round.
    let as_snapshot = SnapshotId(src.id).to_string();
    assert_eq!(
        code(p.volumes.delete_snapshot(&as_snapshot).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(p.volumes.delete_snapshot("").await),
        Code::InvalidArgument
    );
    p.volumes.delete(&id).await.unwrap();
    assert_eq!(snapshots(&p.disk).len(), 1, "DeleteVolume leaves snapshots");
    p.volumes.delete_snapshot(&id).await.unwrap();
    assert!(snapshots(&p.disk).is_empty());
    assert_eq!(snapshot::read_header(&p.disk, &e).unwrap(), None);
    assert!(p
        .san
        .filesystem_at(Path::new(LUN), e.image().offset)
        .is_none());
    // Again, and IDs of nothing: done.
    p.volumes.delete_snapshot(&id).await.unwrap();
    p.volumes.delete_snapshot("junk").await.unwrap();
    assert_eq!(
        code(restore(&p.volumes, "late", &snap, 0, mount_caps()).await),
        Code::NotFound
    );
    // The source outlives it, and a source deleted first leaves its
    // snapshots restorable.
    let snap2 = p
        .volumes
        .create_snapshot("snap-2", &src.id.to_string(), &none())
        .await
        .unwrap();
    p.volumes.delete(&src.id.to_string()).await.unwrap();
    restore(&p.volumes, "orphan", &snap2, 0, mount_caps())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_interrupted_snapshot_is_never_listed_and_a_retry_finishes_it() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let s = volume(&p.disk, &src.id.partition);
    p.disk.write_at(s.offset + 5 * MIB, &pattern(1)).unwrap();
    let snap = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .unwrap();
    // As a crash before the last table write leaves it: pending, and the
    // source Cloning.
    let e = snapshots(&p.disk)[0].clone();
    let mut t = p.lun.read_table().await.unwrap();
    for q in t.partitions.iter_mut() {
        if q.unique_guid == e.guid {
            q.type_guid = snapshot::pending_partition(
                crate::volume::entry::Placement {
                    number: q.number,
                    first_lba: q.first_lba,
                    last_lba: q.last_lba,
                },
                e.guid,
                "snap-1",
                &s,
            )
            .type_guid;
        } else if q.unique_guid == s.guid {
            q.type_guid = s.type_in(State::Cloning);
        }
    }
    p.lun.write_table(&t).await.unwrap();
    assert!(p
        .volumes
        .list_snapshots(0, "", "", "")
        .await
        .unwrap()
        .0
        .is_empty());
    assert_eq!(
        code(restore(&p.volumes, "early", &snap, 0, mount_caps()).await),
        Code::NotFound
    );
    // The LUN's writer puts the source back; the retry copies again.
    p.volumes.end_stale_clones(&p.lun).await;
    p.disk.write_at(s.offset + 5 * MIB, &pattern(2)).unwrap();
    let again = p
        .volumes
        .create_snapshot("snap-1", &src.id.to_string(), &none())
        .await
        .unwrap();
    assert_eq!(again.id, snap.id);
    let e = &snapshots(&p.disk)[0];
    assert_eq!(e.state, State::Ready);
    assert_eq!(read(&p.disk, e.image().offset + 5 * MIB), pattern(2));
    assert_eq!(volume(&p.disk, &s.guid).state, State::Ready);
}

/// A source with a pattern at 5 MiB, made whole on a fresh disk.
async fn crash_source(disk: &SparseIo) -> (String, VolumeEntry) {
    let p = pool_on(disk.clone()).await;
    // Small (two slots, 8 MiB): every crash point is tried, twice.
    let small = params(&[("nodeSlots", "2")]);
    let src = create_with(&p.volumes, "pvc-src", (8 * MIB) as i64, 0, &small)
        .await
        .unwrap();
    let s = volume(&p.disk, &src.id.partition);
    p.disk.write_at(s.offset + 5 * MIB, &pattern(5)).unwrap();
    (src.id.to_string(), s)
}

/// The controller stops for good at every write of a CreateSnapshot in
/// turn (the write fails, or silently never lands); one restarted on what
/// reached the disk never lists a snapshot that does not hold the source's
/// bytes, puts the source back in use, and its retry finishes the one
/// snapshot of that name, which restores the source's bytes.
#[tokio::test]
async fn a_snapshot_crashed_at_any_write_is_never_ready_half_made() {
    // How many writes opening the LUN makes, then the snapshot.
    let (opening, total) = {
        let disk = SparseIo::new(512, GIB);
        let (src, _) = crash_source(&disk).await;
        let san = FakeSan::new();
        let counting = Arc::new(FailingIo::counting(disk.clone()));
        let lun = san.open_lun(LUN, counting.clone()).await;
        let before = counting.writes_attempted();
        san.volumes(vec![lun])
            .create_snapshot("snap", &src, &none())
            .await
            .unwrap();
        (before, counting.writes_attempted() - before)
    };
    assert!(total >= 4, "two tables, a copy and a header: {total}");
    let mut left_pending = 0;
    for mode in [CrashMode::Fail, CrashMode::Drop] {
        for pass in 0..total {
            let disk = SparseIo::new(512, GIB);
            let (src, s) = crash_source(&disk).await;
            let san = FakeSan::new();
            let crashing = Arc::new(FailingIo::new(disk.clone(), opening + pass, mode));
            let lun = san.open_lun(LUN, crashing.clone()).await;
            assert_eq!(crashing.writes_attempted(), opening);
            let _ = san
                .volumes(vec![lun])
                .create_snapshot("snap", &src, &none())
                .await;
            let at = format!("{mode:?} at write {pass}");

            let san = FakeSan::new();
            let lun = san.open_lun(LUN, Arc::new(disk.clone())).await;
            let volumes = san.volumes(vec![lun.clone()]);
            volumes.end_stale_clones(&lun).await;
            assert_eq!(volume(&disk, &s.guid).state, State::Ready, "{at}");
            let listed = volumes.list_snapshots(0, "", "", "").await.unwrap().0;
            assert!(listed.len() <= 1, "{at}: {listed:?}");
            for info in &listed {
                // Listed means whole: its header names the source.
                assert_eq!(
                    info.source.map(|v| v.to_string()),
                    Some(src.clone()),
                    "{at}"
                );
            }
            let left = snapshots(&disk);
            assert!(left.len() <= 1, "{at}: {left:?}");
            for e in &left {
                match e.state {
                    State::Ready => {
                        assert_eq!(read(&disk, e.image().offset + 5 * MIB), pattern(5), "{at}")
                    }
                    _ => {
                        left_pending += 1;
                        assert!(listed.is_empty(), "{at}: a pending snapshot listed");
                    }
                }
            }
            let snap = volumes
                .create_snapshot("snap", &src, &none())
                .await
                .unwrap_or_else(|e| panic!("{at}: retry failed: {e}"));
            assert_eq!(
                snap.source.map(|v| v.to_string()),
                Some(src.clone()),
                "{at}"
            );
            let e = &snapshots(&disk)[..];
            assert_eq!(e.len(), 1, "{at}: {e:?}");
            assert_eq!(e[0].state, State::Ready, "{at}");
            let back = restore(&volumes, "back", &snap, 0, mount_caps())
                .await
                .unwrap_or_else(|e| panic!("{at}: restore failed: {e}"));
            let b = volume(&disk, &back.id.partition);
            assert_eq!(read(&disk, b.offset + 5 * MIB), pattern(5), "{at}");
            assert_eq!(volume_entries(&disk).len(), 2, "{at}");
        }
    }
    assert!(
        left_pending >= 2,
        "{left_pending} crash points left a pending snapshot"
    );
}
