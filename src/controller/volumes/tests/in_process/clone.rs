//! Clones: a copy of an unused source with its own identity, refused
//! while a node has the source, never left half-made.

use super::block::create_block;
use super::*;
use crate::volume::block_header;

async fn clone_of(
    v: &Volumes,
    name: &str,
    source: &VolumeInfo,
    bytes: u64,
    caps: Vec<VolumeCapability>,
) -> Result<VolumeInfo, CreateError> {
    v.create(CreateRequest {
        name,
        required_bytes: bytes as i64,
        limit_bytes: 0,
        capabilities: &caps,
        parameters: &params(&[]),
        source: Some(super::super::ContentSource::Volume(source.id.to_string())),
    })
    .await
}

#[tokio::test]
async fn a_filesystem_clone_copies_the_source_and_takes_a_new_identity() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let s = volume(&p.disk, &src.id.partition);
    // Data past the superblock, as files would be.
    p.disk.write_at(s.offset + 5 * MIB, &pattern(7)).unwrap();
    let info = clone_of(&p.volumes, "pvc-copy", &src, 64 * MIB, mount_caps())
        .await
        .unwrap();
    assert_eq!(
        info.source,
        Some(crate::controller::volumes::ContentSource::Volume(
            src.id.to_string()
        ))
    );
    assert_eq!(info.capacity, src.capacity);
    let t = volume(&p.disk, &info.id.partition);
    assert_eq!(
        (t.state, t.size, t.layout.clone()),
        (State::Ready, s.size, s.layout.clone())
    );
    assert_eq!(volume(&p.disk, &src.id.partition).state, State::Ready);
    assert_eq!(read(&p.disk, t.offset + 5 * MIB), pattern(7));
    let fs = p
        .san
        .filesystem_at(Path::new(LUN), t.offset)
        .expect("a filesystem");
    assert_eq!(fs.uuid, filesystem_uuid("pvc-copy"));
    assert_eq!(fs.label, "pvc-copy");
    let original = p.san.filesystem_at(Path::new(LUN), s.offset).unwrap();
    assert_eq!(original.uuid, filesystem_uuid("pvc-src"));
    // A retry returns the same volume and copies nothing again.
    p.disk.write_at(s.offset + 5 * MIB, &pattern(9)).unwrap();
    let again = clone_of(&p.volumes, "pvc-copy", &src, 64 * MIB, mount_caps())
        .await
        .unwrap();
    assert_eq!(again, info);
    assert_eq!(read(&p.disk, t.offset + 5 * MIB), pattern(7));
}

#[tokio::test]
async fn a_bigger_filesystem_clone_is_grown_before_it_is_ready() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let info = clone_of(&p.volumes, "pvc-big", &src, 128 * MIB, mount_caps())
        .await
        .unwrap();
    assert!(info.capacity >= 128 * MIB, "{}", info.capacity);
    let t = volume(&p.disk, &info.id.partition);
    let fs = p.san.filesystem_at(Path::new(LUN), t.offset).unwrap();
    assert_eq!(
        fs.bytes, t.size,
        "the filesystem spans the clone's partition"
    );
    assert_eq!(p.san.count("grow offline"), 1);
    // The same size again is the same clone; another size is not.
    assert_eq!(
        clone_of(&p.volumes, "pvc-big", &src, 128 * MIB, mount_caps())
            .await
            .unwrap(),
        info
    );
    assert_eq!(
        code(clone_of(&p.volumes, "pvc-big", &src, 256 * MIB, mount_caps()).await),
        Code::AlreadyExists
    );
}

#[tokio::test]
async fn a_clone_of_a_source_in_use_is_refused_and_changes_nothing() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    p.san.set_mounted(filesystem_uuid("pvc-src"), &[2]);
    let before = table(&p.disk);
    let r = clone_of(&p.volumes, "pvc-copy", &src, 64 * MIB, mount_caps()).await;
    let err = r.expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.to_string().contains("o2cb node(s) [2]"), "{err}");
    assert_eq!(table(&p.disk), before);
}

#[tokio::test]
async fn a_mount_during_the_grace_undoes_the_clone() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let fs = filesystem_uuid("pvc-src");
    let san = p.san.clone();
    // The first slot map read is the clone's first look; the node mounts
    // right after it, before the source is marked.
    p.san.after_slotmap(move || san.set_mounted(fs, &[4]));
    let r = clone_of(&p.volumes, "pvc-copy", &src, 64 * MIB, mount_caps()).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    let left = volume_entries(&p.disk);
    assert_eq!(left.len(), 1, "the pending clone is gone: {left:?}");
    assert_eq!(left[0].state, State::Ready, "the source is usable again");
}

#[tokio::test]
async fn a_block_clone_may_be_bigger_and_its_tail_is_zero() {
    let p = pool().await;
    let src = create_block(&p.volumes, "blk-src", 8 * MIB).await.unwrap();
    let s = volume(&p.disk, &src.id.partition);
    p.disk.write_at(s.offset + MIB, &pattern(3)).unwrap();
    p.disk.write_at(s.offset + 8 * MIB, &pattern(4)).unwrap();
    // Old bytes where the clone will land.
    let junk = vec![0xa5u8; MIB as usize];
    for at in (s.offset + s.size..s.offset + s.size + 32 * MIB).step_by(MIB as usize) {
        p.disk.write_at(at, &junk).unwrap();
    }
    let info = clone_of(&p.volumes, "blk-copy", &src, 16 * MIB, block_caps())
        .await
        .unwrap();
    assert_eq!(info.capacity, 16 * MIB);
    let t = volume(&p.disk, &info.id.partition);
    assert_eq!((t.content, t.state), (Content::Block, State::Ready));
    assert_eq!(read(&p.disk, t.offset + MIB), pattern(3));
    assert_eq!(read(&p.disk, t.offset + 8 * MIB), pattern(4));
    for at in (t.offset + 9 * MIB..t.offset + t.size).step_by(MIB as usize) {
        assert!(
            read(&p.disk, at).iter().all(|&b| b == 0),
            "old bytes at {at}"
        );
    }
    assert_eq!(
        block_header::read_holders(&p.disk, t.offset, &t.guid).unwrap(),
        Some(vec![])
    );
}

#[tokio::test]
async fn clones_that_cannot_be_made_are_refused_with_their_codes() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let blk = create_block(&p.volumes, "blk-src", 8 * MIB).await.unwrap();
    let before = table(&p.disk);
    let as_block = clone_of(&p.volumes, "c2", &src, 64 * MIB, block_caps()).await;
    assert_eq!(code(as_block), Code::InvalidArgument);
    let as_fs = clone_of(&p.volumes, "c3", &blk, 8 * MIB, mount_caps()).await;
    assert_eq!(code(as_fs), Code::InvalidArgument);
    let mut gone = src.clone();
    gone.id.partition = uuid::Uuid::new_v4();
    let missing = clone_of(&p.volumes, "c4", &gone, 64 * MIB, mount_caps()).await;
    assert_eq!(code(missing), Code::NotFound);
    let smaller = p
        .volumes
        .create(CreateRequest {
            name: "c5",
            required_bytes: 0,
            limit_bytes: (32 * MIB) as i64,
            capabilities: &mount_caps(),
            parameters: &params(&[]),
            source: Some(super::super::ContentSource::Volume(src.id.to_string())),
        })
        .await;
    assert_eq!(code(smaller), Code::OutOfRange);
    assert_eq!(table(&p.disk), before);
}

#[tokio::test]
async fn a_source_left_cloning_by_a_crash_is_put_back() {
    let p = pool().await;
    let src = create(&p.volumes, "pvc-src", 64 * MIB).await.unwrap();
    let e = volume(&p.disk, &src.id.partition);
    super::super::set_state(&p.lun, &e, State::Cloning)
        .await
        .unwrap();
    // Still a volume for the CO while it is copied.
    assert!(p.volumes.get(&src.id.to_string()).await.is_ok());
    // A clone of this process still copying it keeps it.
    let held = p.volumes.begin(e.guid, "test").unwrap();
    p.volumes.end_stale_clones(&p.lun).await;
    assert_eq!(volume(&p.disk, &e.guid).state, State::Cloning);
    drop(held);
    p.volumes.end_stale_clones(&p.lun).await;
    assert_eq!(volume(&p.disk, &e.guid).state, State::Ready);
}
