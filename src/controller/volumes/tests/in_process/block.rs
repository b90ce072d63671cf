//! Raw block volumes: zeroed before anyone sees them, never deleted while
//! a node's mark says it holds one, grown into zeroed space.

use super::*;
use crate::volume::block_header;

pub(super) async fn create_block(
    v: &Volumes,
    name: &str,
    bytes: u64,
) -> Result<VolumeInfo, CreateError> {
    v.create(CreateRequest {
        name,
        required_bytes: bytes as i64,
        limit_bytes: 0,
        capabilities: &block_caps(),
        parameters: &params(&[]),
        source: None,
    })
    .await
}

/// LUN of the tests here: small, so all of it can hold old data.
const SMALL: u64 = 512 * MIB;

/// A blank LUN of [`SMALL`] bytes whose space holds a pattern, as an
/// earlier volume's data would (the table's own sectors are left alone).
async fn dirty_pool() -> Pool {
    let disk = SparseIo::new(512, SMALL);
    dirty(&disk, MIB, SMALL - 2 * MIB);
    pool_on(disk).await
}

/// Fills a range with a pattern.
fn dirty(disk: &SparseIo, from: u64, bytes: u64) {
    let junk = vec![0xa5u8; MIB as usize];
    for at in (from..from + bytes).step_by(MIB as usize) {
        disk.write_at(at, &junk).unwrap();
    }
}

fn all_zero(disk: &SparseIo, offset: u64, bytes: u64) -> bool {
    let mut buf = vec![1u8; MIB as usize];
    (offset..offset + bytes).step_by(MIB as usize).all(|at| {
        disk.read_at(at, &mut buf).unwrap();
        buf.iter().all(|&b| b == 0)
    })
}

#[tokio::test]
async fn a_new_block_volume_is_zeroed_and_named_last() {
    let p = dirty_pool().await;
    let mkfs = p.san.count("mkfs.ocfs2");
    let info = create_block(&p.volumes, "blk-a", 64 * MIB).await.unwrap();
    assert_eq!(info.capacity, 64 * MIB);
    assert_eq!(
        info.context.get("content").map(String::as_str),
        Some("block")
    );
    assert!(!info.context.contains_key("fsUuid"));
    let e = volume(&p.disk, &info.id.partition);
    assert_eq!((e.content, e.state), (Content::Block, State::Ready));
    assert_eq!(e.size, 65 * MIB);
    // No mkfs ran; the device's bytes are zeros; the header names it.
    assert_eq!(p.san.count("mkfs.ocfs2"), mkfs);
    assert!(all_zero(&p.disk, e.offset + MIB, 64 * MIB));
    assert_eq!(
        block_header::read_holders(&p.disk, e.offset, &e.guid).unwrap(),
        Some(vec![])
    );
    // A retry returns it; asking for a filesystem by the same name is
    // another volume.
    assert_eq!(
        create_block(&p.volumes, "blk-a", 64 * MIB).await.unwrap(),
        info
    );
    assert_eq!(
        code(create(&p.volumes, "blk-a", 64 * MIB).await),
        Code::AlreadyExists
    );
    let fs = create(&p.volumes, "fs-a", 64 * MIB).await.unwrap();
    assert_eq!(
        code(create_block(&p.volumes, "fs-a", 64 * MIB).await),
        Code::AlreadyExists
    );
    // Validation tells block from mount.
    let none = params(&[]);
    let id = info.id.to_string();
    assert!(p
        .volumes
        .validate(&id, &block_caps(), &none)
        .await
        .unwrap()
        .is_ok());
    assert!(p
        .volumes
        .validate(&id, &mount_caps(), &none)
        .await
        .unwrap()
        .is_err());
    let fs_id = fs.id.to_string();
    assert!(p
        .volumes
        .validate(&fs_id, &block_caps(), &none)
        .await
        .unwrap()
        .is_err());
}

#[tokio::test]
async fn an_interrupted_block_create_is_zeroed_again_or_never_ready() {
    for pass in 1..6 {
        let p = dirty_pool().await;
        let crashing = Arc::new(FailingIo::new(p.disk.clone(), pass, CrashMode::Drop));
        p.san.add_lun(Path::new(LUN), crashing.clone());
        let lun = p.san.open_lun(LUN, crashing.clone()).await;
        let volumes = p.san.volumes(vec![lun]);
        // Writes after `pass` are dropped: the create may say it worked,
        // but what reached the disk must never be a ready, unzeroed volume.
        let _ = create_block(&volumes, "blk-c", 32 * MIB).await;
        let t = table(&p.disk);
        if let Some(e) = t
            .find_by_guid(&partition_guid("blk-c"))
            .and_then(|q| volume_in(&t, q))
        {
            if e.state == State::Ready {
                assert!(all_zero(&p.disk, e.offset + MIB, 32 * MIB), "pass {pass}");
            }
        }
        // A controller started afresh finishes it.
        let lun = p.san.open_lun(LUN, Arc::new(p.disk.clone())).await;
        let again = p.san.volumes(vec![lun]);
        let info = create_block(&again, "blk-c", 32 * MIB).await.unwrap();
        let e = volume(&p.disk, &info.id.partition);
        assert_eq!(e.state, State::Ready, "pass {pass}");
        assert!(all_zero(&p.disk, e.offset + MIB, 32 * MIB), "pass {pass}");
        assert!(block_header::read_holders(&p.disk, e.offset, &e.guid)
            .unwrap()
            .is_some());
    }
}

#[tokio::test]
async fn a_held_block_volume_is_not_deleted() {
    let p = pool().await;
    let info = create_block(&p.volumes, "blk-d", 16 * MIB).await.unwrap();
    let e = volume(&p.disk, &info.id.partition);
    let id = info.id.to_string();
    block_header::set_mark(&p.disk, e.offset, &e.guid, 7, "node-7").unwrap();
    let before = table(&p.disk);
    let err = p.volumes.delete(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.to_string().contains("node-7 (o2cb node 7)"), "{err}");
    assert_eq!(table(&p.disk), before, "a refused delete changes nothing");
    // Let go: deleted, header wiped, idempotent.
    block_header::clear_mark(&p.disk, e.offset, 7).unwrap();
    p.volumes.delete(&id).await.unwrap();
    assert!(volume_entries(&p.disk).is_empty());
    assert_eq!(
        block_header::read_holders(&p.disk, e.offset, &e.guid).unwrap(),
        None
    );
    p.volumes.delete(&id).await.unwrap();
}

#[tokio::test]
async fn a_mark_that_lands_during_the_delete_keeps_the_volume() {
    let p = pool().await;
    let info = create_block(&p.volumes, "blk-r", 16 * MIB).await.unwrap();
    let e = volume(&p.disk, &info.id.partition);
    // A stage's mark lands after the delete's first look (while it waits
    // its grace): the delete finds it on its second look and refuses.
    let (disk, head, guid) = (p.disk.clone(), e.offset, e.guid);
    let volumes = Arc::new(p.volumes.with_delete_grace(Duration::from_millis(300)));
    let deleting = {
        let v = volumes.clone();
        let id = info.id.to_string();
        tokio::spawn(async move { v.delete(&id).await })
    };
    // Wait until the entry shows Deleting, then mark.
    loop {
        let t = table(&disk);
        let st = t
            .find_by_guid(&guid)
            .and_then(|q| volume_in(&t, q))
            .map(|e| e.state);
        if st == Some(State::Deleting) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    block_header::set_mark(&disk, head, &guid, 3, "late").unwrap();
    let r = deleting.await.unwrap();
    assert_eq!(code(r), Code::FailedPrecondition);
    assert_eq!(volume(&disk, &guid).state, State::Ready);
    assert!(block_header::read_holders(&disk, head, &guid)
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn growth_is_zeroed_before_the_table_names_it() {
    let p = dirty_pool().await;
    let a = create_block(&p.volumes, "blk-g", 16 * MIB).await.unwrap();
    // A neighbour right behind it: the growth must go elsewhere too.
    let _b = create_block(&p.volumes, "blk-n", 16 * MIB).await.unwrap();
    let id = a.id.to_string();
    let caps = block_caps();
    let grown = p
        .volumes
        .expand(&id, (256 * MIB) as i64, 0, Some(&caps[0]))
        .await
        .unwrap();
    assert_eq!(grown, 256 * MIB);
    let e = volume(&p.disk, &a.id.partition);
    assert_eq!(e.usable_bytes(), 256 * MIB);
    for (offset, bytes) in e.device_extents() {
        assert!(all_zero(&p.disk, offset, bytes), "extent at {offset}");
    }
    // The capability must match what the volume holds.
    let r = p
        .volumes
        .expand(&id, (512 * MIB) as i64, 0, Some(&mount_caps()[0]))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
}
