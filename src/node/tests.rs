//! [`NodeVolumes`] in-process, against the fakes of `super::testing`: the
//! paths the lab reached alone before (retries, paths in use, cleanup after
//! a failed mount, busy unstage, stats, expand's refusals). Every error is
//! checked through the gRPC code the service sends for it.
//!
//! Local heartbeat only: what global heartbeat adds (the DLM volume lock,
//! size reporters, growth confirmed by every node) needs dlmfs and stays
//! with the lab.

use super::error::NodeError;
use super::testing::{FakeNode, FakeVolume};
use super::volumes::{PublishRequest, StageRequest};
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use crate::csi::{CapacityRange, VolumeCapability};
use crate::server::status::RpcError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::Code;

const GIB: u64 = 1 << 30;

fn capability(flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

/// The code the service would send.
fn code<T: std::fmt::Debug>(result: Result<T, NodeError>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.code(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

async fn stage_with(
    node: &FakeNode,
    vol: &FakeVolume,
    staging: &Path,
    flags: &[&str],
    context: &HashMap<String, String>,
) -> Result<(), NodeError> {
    let id = vol.id.to_string();
    let cap = capability(flags);
    node.volumes
        .stage(StageRequest {
            volume_id: &id,
            staging_path: s(staging),
            capability: Some(&cap),
            context,
        })
        .await
}

async fn stage(
    node: &FakeNode,
    vol: &FakeVolume,
    staging: &Path,
    flags: &[&str],
) -> Result<(), NodeError> {
    stage_with(node, vol, staging, flags, &vol.context()).await
}

async fn publish(
    node: &FakeNode,
    vol: &FakeVolume,
    staging: &Path,
    target: &Path,
    read_only: bool,
) -> Result<(), NodeError> {
    let id = vol.id.to_string();
    let cap = capability(&[]);
    node.volumes
        .publish(PublishRequest {
            volume_id: &id,
            staging_path: s(staging),
            target_path: s(target),
            capability: Some(&cap),
            read_only,
        })
        .await
}

async fn unstage(node: &FakeNode, vol: &FakeVolume, staging: &Path) -> Result<(), NodeError> {
    node.volumes.unstage(&vol.id.to_string(), s(staging)).await
}

async fn unpublish(node: &FakeNode, vol: &FakeVolume, target: &Path) -> Result<(), NodeError> {
    node.volumes.unpublish(&vol.id.to_string(), s(target)).await
}

/// Mount points of the node, in order.
fn mount_points(node: &FakeNode) -> Vec<PathBuf> {
    node.kernel
        .table()
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

/// A node with one volume staged at `<dir>/stage`.
async fn staged(flags: &[&str]) -> (FakeNode, FakeVolume, PathBuf) {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    stage(&node, &vol, &staging, flags).await.unwrap();
    (node, vol, staging)
}

#[tokio::test]
async fn stage_mounts_the_located_device_and_records_it() {
    let (node, vol, staging) = staged(&["noatime"]).await;
    let m = node.kernel.table().pop().unwrap();
    assert_eq!(m.mount_point, staging);
    assert_eq!(Path::new(&m.source), vol.located.device);
    assert_eq!(m.fs_type, "ocfs2");
    assert!(m.options.contains(&"noatime".to_string()));
    assert!(staging.is_dir(), "stage creates the staging directory");
    assert_eq!(node.records.len(), 1);
}

#[tokio::test]
async fn stage_retried_with_the_same_arguments_does_not_mount_twice() {
    let (node, vol, staging) = staged(&["noatime"]).await;
    stage(&node, &vol, &staging, &["noatime"]).await.unwrap();
    assert_eq!(node.kernel.ocfs2_mounts(), 1);
    assert_eq!(mount_points(&node), [staging]);
    assert_eq!(node.records.len(), 1);
}

#[tokio::test]
async fn stage_retried_with_other_options_or_elsewhere_is_refused() {
    let (node, vol, staging) = staged(&["noatime"]).await;
    let before = node.kernel.table();
    assert_eq!(
        code(stage(&node, &vol, &staging, &[]).await),
        Code::AlreadyExists
    );
    let elsewhere = node.path("stage2");
    assert_eq!(
        code(stage(&node, &vol, &elsewhere, &["noatime"]).await),
        Code::AlreadyExists
    );
    assert_eq!(node.kernel.table(), before, "nothing mounted or unmounted");
    assert!(!elsewhere.exists(), "no directory made for a refused stage");
    assert_eq!(node.kernel.ocfs2_mounts(), 1);
}

#[tokio::test]
async fn staging_path_in_use_by_something_else_is_left_alone() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    std::fs::create_dir(&staging).unwrap();
    node.kernel.mount_other("tmpfs", "tmpfs", &staging);
    let before = node.kernel.table();
    assert_eq!(
        code(stage(&node, &vol, &staging, &[]).await),
        Code::AlreadyExists
    );
    assert_eq!(node.kernel.table(), before);
    assert_eq!(node.kernel.ocfs2_mounts(), 0);
    assert_eq!(node.records.len(), 0);
    assert!(staging.is_dir(), "a directory it did not make is kept");
}

#[tokio::test]
async fn a_failed_mount_leaves_no_record_and_no_directory_it_made() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    node.kernel
        .fail_next_mount("mount.ocfs2: Transport endpoint is not connected");
    let err = stage(&node, &vol, &staging, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.to_string().contains("Transport endpoint"), "{err}");
    assert_eq!(node.records.len(), 0);
    assert!(!staging.exists(), "the directory stage made is removed");
    assert!(node.kernel.table().is_empty());
    // A directory that was there before stays; the retry then succeeds.
    std::fs::create_dir(&staging).unwrap();
    node.kernel.fail_next_mount("mount.ocfs2: busy");
    stage(&node, &vol, &staging, &[]).await.unwrap_err();
    assert!(staging.is_dir());
    assert_eq!(node.records.len(), 0);
    stage(&node, &vol, &staging, &[]).await.unwrap();
    assert_eq!(mount_points(&node), [staging]);
    assert_eq!(node.records.len(), 1);
}

#[tokio::test]
async fn stage_refuses_what_it_must_not_mount() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    // Another cluster's volume.
    let mut ctx = vol.context();
    ctx.insert("clusterName".into(), "other".into());
    assert_eq!(
        code(stage_with(&node, &vol, &staging, &[], &ctx).await),
        Code::FailedPrecondition
    );
    // The context names a filesystem that is not the one on the device.
    let mut ctx = vol.context();
    ctx.insert("fsUuid".into(), uuid::Uuid::new_v4().to_string());
    assert_eq!(
        code(stage_with(&node, &vol, &staging, &[], &ctx).await),
        Code::FailedPrecondition
    );
    // No filesystem at all: never formatted here.
    node.inspector.put(&vol.located.device, None);
    assert_eq!(
        code(stage(&node, &vol, &staging, &[]).await),
        Code::FailedPrecondition
    );
    // A volume the LUN does not have (deleted).
    let gone = node.add_volume("pvc-gone", GIB);
    node.locator.vanish(&gone.id.partition);
    assert_eq!(
        code(stage(&node, &gone, &staging, &[]).await),
        Code::NotFound
    );
    // A mount flag that would break the cluster.
    assert_eq!(
        code(stage(&node, &vol, &staging, &["nocluster"]).await),
        Code::InvalidArgument
    );
    assert_eq!(node.kernel.ocfs2_mounts(), 0);
    assert_eq!(node.records.len(), 0);
    assert!(!staging.exists());
}

#[tokio::test]
async fn stage_waits_for_the_node_to_join_its_cluster() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    node.volumes
        .set_ready(Some("joining the o2cb cluster".into()));
    assert_eq!(
        code(stage(&node, &vol, &node.path("stage"), &[]).await),
        Code::Unavailable
    );
    assert_eq!(node.kernel.ocfs2_mounts(), 0);
}

#[tokio::test]
async fn unstage_while_published_is_refused_as_busy() {
    let (node, vol, staging) = staged(&[]).await;
    let target = node.path("target");
    publish(&node, &vol, &staging, &target, false)
        .await
        .unwrap();
    let before = node.kernel.table();
    assert_eq!(
        code(unstage(&node, &vol, &staging).await),
        Code::FailedPrecondition
    );
    assert_eq!(node.kernel.table(), before, "still staged and published");
    assert_eq!(node.records.len(), 1);
    unpublish(&node, &vol, &target).await.unwrap();
    unstage(&node, &vol, &staging).await.unwrap();
    assert!(node.kernel.table().is_empty());
    assert_eq!(node.records.len(), 0);
}

#[tokio::test]
async fn unstage_that_cannot_unmount_keeps_the_record() {
    let (node, vol, staging) = staged(&[]).await;
    node.kernel.hold_open(&staging);
    assert_eq!(
        code(unstage(&node, &vol, &staging).await),
        Code::FailedPrecondition
    );
    assert_eq!(node.records.len(), 1, "Unstage must be able to try again");
    assert_eq!(mount_points(&node), [staging]);
    assert!(
        node.locator.released.lock().unwrap().is_empty(),
        "the map of a mounted volume stays"
    );
}

/// The volume's map goes with its last mount here, after the unmount.
#[tokio::test]
async fn unstage_releases_the_map_after_unmounting() {
    let (node, vol, staging) = staged(&[]).await;
    assert!(node.locator.released.lock().unwrap().is_empty());
    unstage(&node, &vol, &staging).await.unwrap();
    assert!(node.kernel.table().is_empty());
    assert_eq!(*node.locator.released.lock().unwrap(), [vol.id.partition]);
}

#[tokio::test]
async fn unstage_is_idempotent() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    // Never staged, path absent.
    unstage(&node, &vol, &staging).await.unwrap();
    // Staged, unstaged twice.
    stage(&node, &vol, &staging, &[]).await.unwrap();
    unstage(&node, &vol, &staging).await.unwrap();
    unstage(&node, &vol, &staging).await.unwrap();
    assert!(node.kernel.table().is_empty());
    assert_eq!(node.records.len(), 0);
}

#[tokio::test]
async fn unstage_leaves_a_mount_that_is_not_the_volume() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    std::fs::create_dir(&staging).unwrap();
    node.kernel.mount_other("tmpfs", "tmpfs", &staging);
    assert_eq!(
        code(unstage(&node, &vol, &staging).await),
        Code::AlreadyExists
    );
    assert_eq!(mount_points(&node), [staging]);
}

#[tokio::test]
async fn publish_and_unpublish_are_idempotent() {
    let (node, vol, staging) = staged(&[]).await;
    let target = node.path("target");
    publish(&node, &vol, &staging, &target, false)
        .await
        .unwrap();
    publish(&node, &vol, &staging, &target, false)
        .await
        .unwrap();
    assert_eq!(mount_points(&node), [staging.clone(), target.clone()]);
    let bind = node.kernel.table().pop().unwrap();
    assert_eq!(Path::new(&bind.source), vol.located.device);
    assert!(!bind.read_only());
    // The same target asked read-only now: something else is there.
    assert_eq!(
        code(publish(&node, &vol, &staging, &target, true).await),
        Code::AlreadyExists
    );
    unpublish(&node, &vol, &target).await.unwrap();
    assert!(!target.exists(), "unpublish removes the target");
    unpublish(&node, &vol, &target).await.unwrap();
    assert_eq!(mount_points(&node), [staging]);
}

#[tokio::test]
async fn publish_read_only_binds_read_only() {
    let (node, vol, staging) = staged(&[]).await;
    let ro = node.path("ro");
    let rw = node.path("rw");
    publish(&node, &vol, &staging, &ro, true).await.unwrap();
    publish(&node, &vol, &staging, &rw, false).await.unwrap();
    let table = node.kernel.table();
    let at = |p: &Path| table.iter().find(|m| m.mount_point == p).unwrap();
    assert!(at(&ro).read_only());
    assert!(!at(&rw).read_only());
    assert!(
        !at(&staging).read_only(),
        "the staging mount stays writable"
    );
}

#[tokio::test]
async fn publish_needs_the_volume_staged_where_it_says() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let staging = node.path("stage");
    let target = node.path("target");
    assert_eq!(
        code(publish(&node, &vol, &staging, &target, false).await),
        Code::FailedPrecondition
    );
    stage(&node, &vol, &staging, &[]).await.unwrap();
    assert_eq!(
        code(publish(&node, &vol, &node.path("other"), &target, false).await),
        Code::FailedPrecondition
    );
    assert!(!target.exists());
    // Staged, but the mount is gone (someone unmounted it by hand).
    use super::mounts::Mounter;
    node.kernel.unmount(&staging).unwrap();
    assert_eq!(
        code(publish(&node, &vol, &staging, &target, false).await),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn stats_of_a_staged_volume_and_its_condition() {
    let (node, vol, staging) = staged(&[]).await;
    let id = vol.id.to_string();
    let stats = node.volumes.stats(&id, s(&staging)).await.unwrap();
    assert!(stats.total_bytes > 0);
    // used = total - free, and what a user may still write is at most free.
    assert!(stats.used_bytes + stats.available_bytes <= stats.total_bytes);
    assert!(stats.total_inodes >= stats.free_inodes);
    assert_eq!(stats.abnormal, None);
    // Through a published target too.
    let target = node.path("target");
    publish(&node, &vol, &staging, &target, false)
        .await
        .unwrap();
    assert_eq!(
        node.volumes.stats(&id, s(&target)).await.unwrap().abnormal,
        None
    );
    // The filesystem went read-only after an error.
    node.kernel.fs_goes_read_only(&vol.located.device);
    let why = node.volumes.stats(&id, s(&staging)).await.unwrap().abnormal;
    assert!(
        why.as_deref().unwrap_or("").contains("read-only"),
        "{why:?}"
    );
    // Its partition vanished.
    node.locator.vanish(&vol.id.partition);
    let why = node.volumes.stats(&id, s(&staging)).await.unwrap().abnormal;
    assert!(why.as_deref().unwrap_or("").contains("vanished"), "{why:?}");
}

#[tokio::test]
async fn stats_of_what_is_not_here() {
    let (node, vol, staging) = staged(&[]).await;
    let other = node.add_volume("pvc-b", GIB);
    let id = vol.id.to_string();
    assert_eq!(
        code(node.volumes.stats(&id, s(&node.path("nowhere"))).await),
        Code::NotFound
    );
    assert_eq!(
        code(node.volumes.stats(&other.id.to_string(), s(&staging)).await),
        Code::NotFound
    );
    assert_eq!(
        code(node.volumes.stats("not-ours", s(&staging)).await),
        Code::NotFound
    );
    assert_eq!(
        code(node.volumes.stats(&id, "").await),
        Code::InvalidArgument
    );
}

fn range(required_bytes: i64, limit_bytes: i64) -> CapacityRange {
    CapacityRange {
        required_bytes,
        limit_bytes,
    }
}

#[tokio::test]
async fn expand_of_a_volume_not_staged_here() {
    let node = FakeNode::local_heartbeat();
    let vol = node.add_volume("pvc-a", GIB);
    let id = vol.id.to_string();
    let nowhere = node.path("stage");
    assert_eq!(
        code(node.volumes.expand(&id, s(&nowhere), None, None).await),
        Code::NotFound
    );
    // Mounted there, but not as this volume.
    std::fs::create_dir(&nowhere).unwrap();
    node.kernel.mount_other("tmpfs", "tmpfs", &nowhere);
    assert_eq!(
        code(node.volumes.expand(&id, s(&nowhere), None, None).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            node.volumes
                .expand("not-ours", s(&nowhere), None, None)
                .await
        ),
        Code::NotFound
    );
}

/// A volume an earlier version staged on the kernel's partition is not
/// grown: that device no longer follows the table.
#[tokio::test]
async fn a_volume_staged_on_a_kernel_partition_is_not_grown() {
    use super::records::StageRecords;
    let (node, vol, staging) = staged(&[]).await;
    let mut record = node.records.get(&vol.id.partition).unwrap().unwrap();
    record.device = PathBuf::from("/dev/sdb7");
    node.records.put(&record).unwrap();
    let err = node
        .volumes
        .expand(&vol.id.to_string(), s(&staging), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("stage it again"), "{err}");
}

#[tokio::test]
async fn expand_beyond_the_partition_is_out_of_range() {
    let (node, vol, staging) = staged(&[]).await;
    let id = vol.id.to_string();
    let too_big = range(2 * GIB as i64, 0);
    let err = node
        .volumes
        .expand(&id, s(&staging), None, Some(&too_big))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.to_string().contains(&GIB.to_string()), "{err}");
    for bad in [range(-1, 0), range(GIB as i64, 1)] {
        assert_eq!(
            code(
                node.volumes
                    .expand(&id, s(&staging), None, Some(&bad))
                    .await
            ),
            Code::InvalidArgument
        );
    }
    // Within range, a filesystem short of its partition goes on to the
    // OCFS2 tools, which this fake node does not have (growth itself is
    // proven in the lab): the error is the tool's, not a range check's.
    node.kernel.set_fs_bytes(GIB / 2);
    let fits = range(GIB as i64, 0);
    let err = node
        .volumes
        .expand(&id, s(&staging), None, Some(&fits))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.to_string().contains("debugfs.ocfs2"), "{err}");
}

/// A filesystem another node grew already: the answer comes from statfs,
/// with no OCFS2 tool run (this fake node has none, so any would fail).
#[tokio::test]
async fn expand_of_a_filesystem_already_grown_reads_no_disk() {
    let (node, vol, staging) = staged(&[]).await;
    let id = vol.id.to_string();
    let size = vol.located.entry.size;
    for live in [size, size - (1 << 20) + 4096] {
        node.kernel.set_fs_bytes(live);
        let bytes = node
            .volumes
            .expand(&id, s(&staging), None, None)
            .await
            .unwrap();
        assert_eq!(bytes, live);
    }
    // A whole MiB short: the tools are asked (and fail here).
    node.kernel.set_fs_bytes(size - (1 << 20));
    let err = node
        .volumes
        .expand(&id, s(&staging), None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("debugfs.ocfs2"), "{err}");
}

#[tokio::test]
async fn adopt_counts_volumes_still_mounted_and_keeps_the_others() {
    let (node, vol, staging) = staged(&[]).await;
    let other = node.add_volume("pvc-b", GIB);
    let staging_b = node.path("stage-b");
    stage(&node, &other, &staging_b, &[]).await.unwrap();
    assert_eq!(node.volumes.adopt().await.unwrap(), 2);
    // One mount went away while the plugin was down.
    use super::mounts::Mounter;
    node.kernel.unmount(&staging_b).unwrap();
    assert_eq!(node.volumes.adopt().await.unwrap(), 1);
    assert_eq!(node.records.len(), 2, "kept for Unstage to clean up");
    unstage(&node, &other, &staging_b).await.unwrap();
    assert_eq!(node.records.len(), 1);
    let _ = (vol, staging);
}

/// A node with volume `name` whose stage is inside mount.ocfs2: the
/// stage's task, and the sender that lets the mount finish.
async fn stage_held_in_mount(
    name: &str,
) -> (
    std::sync::Arc<FakeNode>,
    FakeVolume,
    std::path::PathBuf,
    tokio::task::JoinHandle<Result<(), NodeError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let node = std::sync::Arc::new(FakeNode::local_heartbeat());
    let vol = node.add_volume(name, GIB);
    let staging = node.path("stage");
    let (started, go) = node.kernel.hold_next_mount();
    let task = tokio::spawn({
        let (node, vol, staging) = (node.clone(), vol.clone(), staging.clone());
        async move { stage(&node, &vol, &staging, &[]).await }
    });
    started.await.unwrap();
    (node, vol, staging, task, go)
}

#[tokio::test]
async fn a_second_call_while_a_stage_runs_is_aborted() {
    let (node, vol, staging, first, go) = stage_held_in_mount("pvc-a").await;
    // The first stage is inside mount.ocfs2: the same volume is busy, as
    // the CSI spec asks (Aborted, "retry later").
    assert_eq!(code(stage(&node, &vol, &staging, &[]).await), Code::Aborted);
    assert_eq!(code(unstage(&node, &vol, &staging).await), Code::Aborted);
    // Another volume is not held up.
    let other = node.add_volume("pvc-b", GIB);
    stage(&node, &other, &node.path("stage-b"), &[])
        .await
        .unwrap();
    go.send(()).unwrap();
    first.await.unwrap().unwrap();
    stage(&node, &vol, &staging, &[]).await.unwrap();
    assert_eq!(node.kernel.ocfs2_mounts(), 2);
}

/// Issue 12: a delete marks the entry Deleting while a stage is inside
/// mount.ocfs2 (the stage read Ready before). The stage must not end with
/// the volume mounted: it looks at the entry again after mounting and
/// unmounts.
#[tokio::test]
async fn a_volume_marked_deleting_during_the_mount_is_unmounted_again() {
    let (node, vol, staging, staging_task, go) = stage_held_in_mount("pvc-race").await;
    node.locator
        .set_state(&vol.id.partition, crate::volume::entry::State::Deleting);
    go.send(()).unwrap();
    let result = staging_task.await.unwrap();
    assert_eq!(
        mounted(&node),
        0,
        "a volume being deleted stays mounted; the stage answered {result:?}"
    );
    assert_eq!(code(result), Code::FailedPrecondition);
    assert_eq!(node.records.len(), 0, "a stage record left behind");
    // And a stage that starts now is refused before it mounts anything.
    assert_eq!(
        code(stage(&node, &vol, &staging, &[]).await),
        Code::FailedPrecondition
    );
    assert_eq!(mounted(&node), 0);
}

/// A clone starts copying the volume while a stage is inside mount.ocfs2:
/// the stage backs out as it does for a delete, but with Unavailable (the
/// copy ends, the volume is usable again).
#[tokio::test]
async fn a_volume_a_clone_copies_is_not_staged() {
    let (node, vol, staging, staging_task, go) = stage_held_in_mount("pvc-src").await;
    node.locator
        .set_state(&vol.id.partition, crate::volume::entry::State::Cloning);
    go.send(()).unwrap();
    let result = staging_task.await.unwrap();
    assert_eq!(mounted(&node), 0, "the stage answered {result:?}");
    assert_eq!(code(result), Code::Unavailable);
    assert_eq!(node.records.len(), 0, "a stage record left behind");
    assert_eq!(
        code(stage(&node, &vol, &staging, &[]).await),
        Code::Unavailable
    );
    assert_eq!(mounted(&node), 0);
    // The copy ends: the volume stages.
    node.locator
        .set_state(&vol.id.partition, crate::volume::entry::State::Ready);
    stage(&node, &vol, &staging, &[]).await.unwrap();
    assert_eq!(mounted(&node), 1);
}

/// OCFS2 mounts in the fake mount table now.
fn mounted(node: &FakeNode) -> usize {
    node.kernel
        .table()
        .iter()
        .filter(|m| m.fs_type == "ocfs2")
        .count()
}

/// The same with the entry gone altogether (the delete finished).
#[tokio::test]
async fn a_volume_deleted_during_the_mount_is_unmounted_again() {
    let (node, vol, _, staging_task, go) = stage_held_in_mount("pvc-race").await;
    node.locator.vanish(&vol.id.partition);
    go.send(()).unwrap();
    let result = staging_task.await.unwrap();
    assert_eq!(
        mounted(&node),
        0,
        "a deleted volume stays mounted; the stage answered {result:?}"
    );
    assert_eq!(code(result), Code::NotFound);
}

/// The OCFS2 tools of one staged volume for a grow: the slot map holds
/// only this node, the filesystem is `fs_bytes`; the bitmap read (the last
/// look before tunefs) can let a partition sync grow the kernel partition
/// (the table grew again); tunefs records the kernel size it grew to.
struct GrowTools {
    node: std::sync::OnceLock<(std::sync::Arc<super::testing::FakeLocator>, FakeVolume)>,
    fs_bytes: u64,
    sync_grows_to: std::sync::Mutex<Option<u64>>,
    tunefs_saw: std::sync::Mutex<Vec<Option<u64>>>,
}

impl crate::tools::Runner for GrowTools {
    fn run<'a>(
        &'a self,
        cmd: &'a crate::tools::Cmd,
    ) -> futures::future::BoxFuture<'a, Result<crate::tools::ToolOutput, crate::tools::ToolError>>
    {
        use super::device::Locator;
        let (locator, vol) = self.node.get().expect("set after the node is made");
        let args: Vec<String> = cmd
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let stdout = match (cmd.program, args.get(1).map(String::as_str)) {
            ("debugfs.ocfs2", Some("slotmap")) => "\tSlot#   Node#\n\t     0       1\n".into(),
            ("debugfs.ocfs2", Some("stats")) => format!(
                "\tMax Node Slots: 4\n\tBlock Size Bits: 12   Cluster Size Bits: 12\n\
                 \tLabel: pvc-a\n\tUUID: {}\n\tCluster stack: o2cb\n\tCluster name: {}\n\
                 \tCluster flags: 0\n",
                vol.fs.uuid.simple(),
                vol.fs.cluster_name.clone().unwrap_or_default()
            ),
            ("debugfs.ocfs2", Some("stat //global_bitmap")) => {
                if let Some(bytes) = self.sync_grows_to.lock().unwrap().take() {
                    locator.set_kernel_bytes(&vol.id.partition, bytes);
                }
                format!(
                    "\tBitmap Total: {}   Used: 10   Free: 0\n",
                    self.fs_bytes / 4096
                )
            }
            ("tunefs.ocfs2", _) => {
                let kernel = locator
                    .partition_bytes(&vol.located.lun, vol.located.entry.number)
                    .unwrap();
                self.tunefs_saw.lock().unwrap().push(kernel);
                String::new()
            }
            other => panic!("unexpected tool {other:?}: {args:?}"),
        };
        Box::pin(std::future::ready(Ok(crate::tools::ToolOutput {
            code: Some(0),
            stdout,
            stderr: String::new(),
        })))
    }
}

/// Issue 12, point 6: the filesystem grows to exactly the size confirmed.
/// Here the kernel partition grows again (a sync after a second
/// ControllerExpand) between the confirmation and tunefs: tunefs would grow
/// the filesystem past what the other nodes confirmed. The grow must not
/// run; a retry confirms the new size.
#[tokio::test]
async fn a_partition_resized_after_the_confirmation_is_not_grown_into() {
    let tools = std::sync::Arc::new(GrowTools {
        node: std::sync::OnceLock::new(),
        fs_bytes: GIB / 2,
        sync_grows_to: std::sync::Mutex::new(None),
        tunefs_saw: std::sync::Mutex::new(Vec::new()),
    });
    let node = FakeNode::local_heartbeat_with(uuid::Uuid::new_v4(), tools.clone());
    let vol = node.add_volume("pvc-a", GIB);
    let _ = tools.node.set((node.locator.clone(), vol.clone()));
    let staging = node.path("stage");
    stage(&node, &vol, &staging, &[]).await.unwrap();
    node.kernel.set_fs_bytes(GIB / 2);
    let confirmed = vol.located.entry.size;
    *tools.sync_grows_to.lock().unwrap() = Some(confirmed + 64 * (1 << 20));
    let result = node
        .volumes
        .expand(&vol.id.to_string(), s(&staging), None, None)
        .await;
    let saw = tools.tunefs_saw.lock().unwrap().clone();
    assert!(
        saw.iter().all(|k| *k == Some(confirmed)),
        "tunefs grew the filesystem to a {saw:?}-byte partition; every node confirmed \
         {confirmed} (expand answered {result:?})"
    );
    assert_eq!(code(result), Code::Unavailable);
    // With nothing moving, the grow runs, to the confirmed size.
    node.locator.set_kernel_bytes(&vol.id.partition, confirmed);
    node.volumes
        .expand(&vol.id.to_string(), s(&staging), None, None)
        .await
        .unwrap();
    assert_eq!(*tools.tunefs_saw.lock().unwrap(), [Some(confirmed)]);
}

mod block;
