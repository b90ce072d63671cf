//! Raw block volumes on a node: the holder mark follows stage and
//! unstage, the device is bound on a file, filesystem and block never
//! mix, and a stage that meets a delete backs out.

use super::*;
use crate::csi::volume_capability::BlockVolume;
use crate::volume::entry::State;

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn block_context() -> HashMap<String, String> {
    HashMap::from([
        ("content".to_string(), "block".to_string()),
        (
            "clusterName".to_string(),
            super::super::testing::CLUSTER.to_string(),
        ),
    ])
}

async fn stage_as(
    node: &FakeNode,
    vol: &FakeVolume,
    staging: &Path,
    cap: &VolumeCapability,
    context: &HashMap<String, String>,
) -> Result<(), NodeError> {
    let id = vol.id.to_string();
    node.volumes
        .stage(StageRequest {
            volume_id: &id,
            staging_path: s(staging),
            capability: Some(cap),
            context,
        })
        .await
}

async fn publish_as(
    node: &FakeNode,
    vol: &FakeVolume,
    staging: &Path,
    target: &Path,
    cap: &VolumeCapability,
    read_only: bool,
) -> Result<(), NodeError> {
    let id = vol.id.to_string();
    node.volumes
        .publish(PublishRequest {
            volume_id: &id,
            staging_path: s(staging),
            target_path: s(target),
            capability: Some(cap),
            read_only,
        })
        .await
}

#[tokio::test]
async fn stage_marks_publish_binds_unstage_lets_go() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_block_volume("blk-1", GIB);
    let (staging, target) = (node.path("staging"), node.path("pods/p1/dev"));
    let cap = block_cap();
    stage_as(&node, &vol, &staging, &cap, &block_context())
        .await
        .unwrap();
    assert_eq!(node.holders(&vol), [1]);
    // A retry is fine and changes nothing.
    stage_as(&node, &vol, &staging, &cap, &block_context())
        .await
        .unwrap();
    assert_eq!(node.holders(&vol), [1]);
    // Another staging path is refused.
    let other = node.path("other");
    let r = stage_as(&node, &vol, &other, &cap, &block_context()).await;
    assert_eq!(code(r), Code::AlreadyExists);

    publish_as(&node, &vol, &staging, &target, &cap, false)
        .await
        .unwrap();
    assert!(target.is_file(), "the target is a file");
    publish_as(&node, &vol, &staging, &target, &cap, false)
        .await
        .unwrap();
    let r = publish_as(&node, &vol, &staging, &target, &cap, true).await;
    assert_eq!(code(r), Code::AlreadyExists);
    // As a filesystem: never.
    let r = publish_as(
        &node,
        &vol,
        &staging,
        &node.path("t2"),
        &capability(&[]),
        false,
    )
    .await;
    assert_eq!(code(r), Code::InvalidArgument);

    let stats = node
        .volumes
        .stats(&vol.id.to_string(), s(&target))
        .await
        .unwrap();
    assert!(stats.block);
    assert_eq!(stats.total_bytes, GIB);
    assert_eq!(stats.abnormal, None);

    // Unstage waits for the publish to go; the mark stays meanwhile.
    let id = vol.id.to_string();
    let r = node.volumes.unstage(&id, s(&staging)).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert_eq!(node.holders(&vol), [1]);
    node.volumes.unpublish(&id, s(&target)).await.unwrap();
    assert!(!target.exists(), "unpublish removes the file");
    // A map held open (a pod still has the device) keeps the mark too.
    node.locator
        .busy_maps
        .lock()
        .unwrap()
        .insert(vol.id.partition);
    let r = node.volumes.unstage(&id, s(&staging)).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert_eq!(node.holders(&vol), [1]);
    node.locator.busy_maps.lock().unwrap().clear();
    node.volumes.unstage(&id, s(&staging)).await.unwrap();
    assert!(node.holders(&vol).is_empty());
    assert_eq!(node.records.len(), 0);
    node.volumes.unstage(&id, s(&staging)).await.unwrap();
}

#[tokio::test]
async fn filesystem_and_block_never_mix() {
    let node = FakeNode::local_heartbeat();
    let blk = node.add_block_volume("blk-2", GIB);
    let fs = node.add_volume("fs-2", GIB);
    let staging = node.path("staging");
    // A block volume asked for as a filesystem, by capability or context.
    let r = stage_as(&node, &blk, &staging, &capability(&[]), &block_context()).await;
    assert_eq!(code(r), Code::InvalidArgument);
    // A filesystem volume whose context lies about it: the table decides.
    let r = stage_as(&node, &fs, &staging, &block_cap(), &block_context()).await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = stage_as(&node, &fs, &staging, &block_cap(), &fs.context()).await;
    assert_eq!(code(r), Code::InvalidArgument);
    assert_eq!(node.records.len(), 0);
    assert_eq!(node.kernel.ocfs2_mounts(), 0);
    // A staged filesystem is never published as a device.
    stage(&node, &fs, &staging, &[]).await.unwrap();
    let r = publish_as(&node, &fs, &staging, &node.path("t"), &block_cap(), false).await;
    assert_eq!(code(r), Code::InvalidArgument);
}

#[tokio::test]
async fn a_stage_that_meets_a_delete_backs_out() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_block_volume("blk-3", GIB);
    let staging = node.path("staging");
    // Deleting before the stage looks: refused, nothing written.
    node.locator.set_state(&vol.id.partition, State::Deleting);
    let r = stage_as(&node, &vol, &staging, &block_cap(), &block_context()).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert!(node.holders(&vol).is_empty());
    assert_eq!(node.records.len(), 0);
    // Deleting between the first look and the look after the mark: the
    // stage takes its mark back, forgets the volume and drops its map.
    node.locator.set_state(&vol.id.partition, State::Ready);
    *node.locator.deleting_after.lock().unwrap() = Some((vol.id.partition, 1));
    let r = stage_as(&node, &vol, &staging, &block_cap(), &block_context()).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert!(node.holders(&vol).is_empty(), "the mark stayed");
    assert_eq!(node.records.len(), 0);
    assert_eq!(
        node.locator.released.lock().unwrap().as_slice(),
        [vol.id.partition]
    );
}

#[tokio::test]
async fn expand_grows_the_map_and_a_restart_clears_stale_marks() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_block_volume("blk-4", GIB);
    let staging = node.path("staging");
    stage_as(&node, &vol, &staging, &block_cap(), &block_context())
        .await
        .unwrap();
    node.locator.set_kernel_bytes(&vol.id.partition, 2 * GIB);
    let id = vol.id.to_string();
    let range = CapacityRange {
        required_bytes: (2 * GIB) as i64,
        limit_bytes: 0,
    };
    let bytes = node
        .volumes
        .expand(&id, s(&staging), Some(&block_cap()), Some(&range))
        .await
        .unwrap();
    assert_eq!(bytes, 2 * GIB);
    let more = CapacityRange {
        required_bytes: (3 * GIB) as i64,
        limit_bytes: 0,
    };
    let r = node
        .volumes
        .expand(&id, s(&staging), Some(&block_cap()), Some(&more))
        .await;
    assert_eq!(code(r), Code::OutOfRange);

    // A mark with no record (a crash between them, or an earlier holder
    // of this number) is cleared at start; a staged one stays.
    let stale = node.add_block_volume("blk-5", GIB);
    crate::volume::block_header::set_mark(
        &node.disk,
        stale.located.entry.offset,
        &stale.id.partition,
        1,
        "fake-node",
    )
    .unwrap();
    assert_eq!(node.holders(&stale), [1]);
    assert_eq!(node.volumes.adopt().await.unwrap(), 1);
    assert!(node.holders(&stale).is_empty());
    assert_eq!(node.holders(&vol), [1]);
}
