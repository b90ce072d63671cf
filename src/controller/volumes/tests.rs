use super::*;

#[test]
fn requested_bytes_rules() {
    assert_eq!(requested_bytes(0, 0).unwrap(), DEFAULT_VOLUME_BYTES);
    assert_eq!(requested_bytes(1, 0).unwrap(), MIB);
    assert_eq!(requested_bytes(5 * MIB as i64, 0).unwrap(), 5 * MIB);
    assert_eq!(requested_bytes(0, 10 * MIB as i64).unwrap(), 10 * MIB);
    assert_eq!(
        requested_bytes(MIB as i64 + 1, 2 * MIB as i64 + 5).unwrap(),
        2 * MIB
    );
    assert!(matches!(
        requested_bytes(-1, 0),
        Err(CreateError::InvalidArgument(_))
    ));
    assert!(matches!(
        requested_bytes(10, 5),
        Err(CreateError::CapacityOutOfRange(_))
    ));
    assert!(matches!(
        requested_bytes(MIB as i64 + 1, MIB as i64 + 100),
        Err(CreateError::CapacityOutOfRange(_))
    ));
}

#[test]
fn list_tokens() {
    assert_eq!(parse_token("0.2"), Some((0, 2)));
    assert_eq!(parse_token("3.255"), Some((3, 255)));
    for bad in [
        "",
        "1",
        "a.b",
        "1.",
        ".1",
        "-1.2",
        "1.2.3",
        "99999999999.1",
        "1 .2",
    ] {
        assert_eq!(parse_token(bad), None, "{bad}");
    }
}

#[test]
fn names_and_labels() {
    assert!(validate_name("pvc-1").is_ok());
    assert!(validate_name("").is_err());
    assert!(validate_name(&"a".repeat(129)).is_err());
    assert!(validate_name("a\nb").is_err());
    assert_eq!(label(&"é".repeat(40)).len(), 62);
    assert_eq!(label("pvc-1"), "pvc-1");
}

// ---------------------------------------------------------------------------
// In-process tests of each RPC's work, on in-memory LUNs with the fake
// region devices and OCFS2 tools of `controller::testing`. Every error is
// checked through the code the gRPC service would send.

mod in_process {
    use super::super::*;
    use crate::controller::testing::FakeSan;
    use crate::csi::volume_capability::{access_mode::Mode, AccessMode, AccessType};
    use crate::csi::volume_capability::{BlockVolume, MountVolume};
    use crate::disk::gpt;
    use crate::disk::gpt::Gpt;
    use crate::disk::lun_io::{BlockIo, CrashMode, FailingIo, SparseIo};
    use crate::server::status::RpcError;
    use std::path::Path;
    use tonic::Code;

    const LUN: &str = "/dev/disk/by-id/fake-lun-0";
    const LUN_BYTES: u64 = 64 * GIB;

    /// A blank LUN opened (initialised) through the fakes, and the
    /// controller's `Volumes` over it.
    struct Pool {
        san: Arc<FakeSan>,
        disk: SparseIo,
        lun: Arc<Lun>,
        volumes: Volumes,
    }

    async fn pool() -> Pool {
        pool_on(SparseIo::new(512, LUN_BYTES)).await
    }

    /// The pool on a blank LUN of the caller's.
    async fn pool_on(disk: SparseIo) -> Pool {
        let san = FakeSan::new();
        let lun = san.open_lun(LUN, Arc::new(disk.clone())).await;
        let volumes = san.volumes(vec![lun.clone()]);
        Pool {
            san,
            disk,
            lun,
            volumes,
        }
    }

    fn mount_caps() -> Vec<VolumeCapability> {
        vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }]
    }

    fn block_caps() -> Vec<VolumeCapability> {
        vec![VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }]
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn create(v: &Volumes, name: &str, bytes: u64) -> Result<VolumeInfo, CreateError> {
        create_with(v, name, bytes as i64, 0, &params(&[])).await
    }

    async fn create_with(
        v: &Volumes,
        name: &str,
        required: i64,
        limit: i64,
        parameters: &HashMap<String, String>,
    ) -> Result<VolumeInfo, CreateError> {
        v.create(CreateRequest {
            name,
            required_bytes: required,
            limit_bytes: limit,
            capabilities: &mount_caps(),
            parameters,
            source: None,
        })
        .await
    }

    fn table(disk: &dyn BlockIo) -> Gpt {
        gpt::read(disk).expect("a valid table").gpt
    }

    fn volume_entries(disk: &dyn BlockIo) -> Vec<VolumeEntry> {
        table(disk)
            .partitions
            .iter()
            .filter_map(|p| volume_entry(p, 512))
            .collect()
    }

    /// The volume with `guid` as the table has it, extents and all.
    fn volume(disk: &dyn BlockIo, guid: &uuid::Uuid) -> VolumeEntry {
        let t = table(disk);
        crate::volume::extents::check(&t, entry::is_volume).expect("whole extent chains");
        volume_in(&t, t.find_by_guid(guid).expect("the volume")).expect("a volume")
    }

    fn code<E: RpcError>(r: Result<impl std::fmt::Debug, E>) -> Code {
        r.expect_err("an error").code()
    }

    /// Crashes a create at every write it makes (the table writes, and the
    /// fake mkfs's, which reach the same disk), in both ways a host can
    /// stop: further writes fail, or silently never land. A controller
    /// restarted on what reached the disk then retries the create: it must
    /// finish the same volume (resuming a pending entry where one was left),
    /// with a valid table and no second partition.
    #[tokio::test]
    async fn create_resumes_after_a_crash_at_any_write() {
        const NAME: &str = "pvc-crash";
        // How many writes a whole create makes.
        let total = {
            let p = pool().await;
            let counting = Arc::new(FailingIo::counting(p.disk.clone()));
            p.san.add_lun(Path::new(LUN), counting.clone());
            let lun = p.san.open_lun(LUN, counting.clone()).await;
            let before = counting.writes_attempted();
            create(&p.san.volumes(vec![lun]), NAME, 100 * MIB)
                .await
                .unwrap();
            counting.writes_attempted() - before
        };
        assert!(total >= 6, "a create writes two tables and a filesystem");
        let mut resumed = 0;
        for mode in [CrashMode::Fail, CrashMode::Drop] {
            for pass in 0..total {
                let disk = SparseIo::new(512, LUN_BYTES);
                let san = FakeSan::new();
                let lun = san.open_lun(LUN, Arc::new(disk.clone())).await;
                let disk_guid = lun.disk_guid;
                drop(lun);
                // The controller that crashes: from its `pass`th write on,
                // nothing reaches the disk.
                let crashing = Arc::new(FailingIo::new(disk.clone(), pass, mode));
                let lun = san.open_lun(LUN, crashing.clone()).await;
                let first = create(&san.volumes(vec![lun]), NAME, 100 * MIB).await;
                // Failed writes are I/O errors to the caller; after a
                // Drop the host is gone and nobody sees its answer.
                if let (CrashMode::Fail, Err(e)) = (mode, &first) {
                    assert_eq!(e.code(), Code::Internal, "at {pass}: {e}");
                }
                let left = volume_entries(&disk);
                assert!(left.len() <= 1, "{mode:?} at {pass}: {left:?}");
                if left.first().is_some_and(|e| e.state == State::Pending) {
                    resumed += 1;
                }

                // The restarted controller, on what reached the disk.
                let san = FakeSan::new();
                let lun = san.open_lun(LUN, Arc::new(disk.clone())).await;
                let volumes = san.volumes(vec![lun]);
                if left.first().is_some_and(|e| e.state == State::Pending) {
                    // A pending volume is nobody's yet.
                    let id = VolumeId {
                        lun: disk_guid,
                        partition: partition_guid(NAME),
                    };
                    let got = volumes.get(&id.to_string()).await;
                    assert_eq!(code(got), Code::NotFound);
                    assert!(volumes.list(0, "").await.unwrap().0.is_empty());
                }
                let info = create(&volumes, NAME, 100 * MIB)
                    .await
                    .unwrap_or_else(|e| panic!("{mode:?} at {pass}: retry failed: {e}"));
                assert_eq!(info.id.lun, disk_guid);
                assert_eq!(info.id.partition, partition_guid(NAME));
                assert!(info.capacity >= 100 * MIB);
                let entries = volume_entries(&disk);
                assert_eq!(entries.len(), 1, "{mode:?} at {pass}: {entries:?}");
                assert_eq!(entries[0].state, State::Ready);
                let fs = san
                    .filesystem_at(Path::new(LUN), entries[0].offset)
                    .expect("a filesystem");
                assert_eq!(fs.uuid, filesystem_uuid(NAME));
                assert_eq!(fs.label, NAME);
                let listed = volumes.list(0, "").await.unwrap().0;
                assert_eq!(listed.len(), 1);
                assert_eq!(listed[0].id, info.id);
                assert_eq!(san.attached(), 0);
            }
        }
        // Some crash points leave the pending entry the retry resumes.
        assert!(resumed >= 2, "{resumed} crash points left a pending entry");
    }

    #[tokio::test]
    async fn failed_mkfs_leaves_no_partition() {
        let p = pool().await;
        p.san.fail_next("mkfs.ocfs2");
        let r = create(&p.volumes, "pvc-a", 100 * MIB).await;
        assert_eq!(code(r), Code::Internal);
        assert!(volume_entries(&p.disk).is_empty());
        assert_eq!(p.san.attached(), 0);
        // The retry makes it.
        create(&p.volumes, "pvc-a", 100 * MIB).await.unwrap();
        assert_eq!(volume_entries(&p.disk).len(), 1);
    }

    #[tokio::test]
    async fn create_is_idempotent() {
        let p = pool().await;
        let first = create(&p.volumes, "pvc-a", 100 * MIB).await.unwrap();
        assert_eq!(first.id.lun, p.lun.disk_guid);
        assert_eq!(first.id.partition, partition_guid("pvc-a"));
        assert!(first.capacity >= 100 * MIB);
        assert_eq!(
            first.context[context_keys::FS_UUID],
            filesystem_uuid("pvc-a").to_string()
        );
        assert_eq!(
            first.context[context_keys::CLUSTER_NAME],
            crate::controller::testing::CLUSTER
        );
        assert_eq!(
            first.context[context_keys::HEARTBEAT_UUID],
            p.lun.heartbeat_uuid.to_string()
        );
        let before = table(&p.disk);

        // The same request: the same volume, nothing made again.
        let again = create(&p.volumes, "pvc-a", 100 * MIB).await.unwrap();
        assert_eq!(again, first);
        // A smaller request is served by the existing volume.
        let smaller = create(&p.volumes, "pvc-a", 50 * MIB).await.unwrap();
        assert_eq!(smaller, first);
        assert_eq!(p.san.count("mkfs.ocfs2 -F"), 1);

        // Other sizes or other parameters: AlreadyExists, nothing written.
        let bigger = create(&p.volumes, "pvc-a", 10 * GIB).await;
        assert_eq!(code(bigger), Code::AlreadyExists);
        let limited = create_with(
            &p.volumes,
            "pvc-a",
            MIB as i64,
            10 * MIB as i64,
            &params(&[]),
        )
        .await;
        assert_eq!(code(limited), Code::AlreadyExists);
        let slots = params(&[("nodeSlots", "4")]);
        let other = create_with(&p.volumes, "pvc-a", 100 * MIB as i64, 0, &slots).await;
        assert_eq!(code(other), Code::AlreadyExists);
        let local = params(&[("heartbeat", "local")]);
        let other = create_with(&p.volumes, "pvc-a", 100 * MIB as i64, 0, &local).await;
        assert_eq!(code(other), Code::AlreadyExists);
        assert_eq!(table(&p.disk), before);
        assert_eq!(p.san.count("mkfs.ocfs2 -F"), 1);

        // Another name is another volume, after the first.
        let b = create(&p.volumes, "pvc-b", 100 * MIB).await.unwrap();
        assert_ne!(b.id, first.id);
        let entries = volume_entries(&p.disk);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].offset + entries[0].size <= entries[1].offset);
    }

    #[tokio::test]
    async fn expand_out_of_range_leaves_the_table_alone() {
        let p = pool().await;
        create(&p.volumes, "pvc-a", 100 * MIB).await.unwrap();
        let b = create(&p.volumes, "pvc-b", 100 * MIB).await.unwrap();
        let b = b.id.to_string();
        let before = table(&p.disk);

        // More than the LUN holds.
        let r = p.volumes.expand(&b, 2 * LUN_BYTES as i64, 0, None).await;
        assert_eq!(code(r), Code::OutOfRange);
        // required above limit.
        let r = p
            .volumes
            .expand(&b, 300 * MIB as i64, 200 * MIB as i64, None)
            .await;
        assert_eq!(code(r), Code::OutOfRange);
        assert_eq!(table(&p.disk), before);

        // Not ours, or bad input.
        let r = p
            .volumes
            .expand("ocfs2-v1:nonsense", GIB as i64, 0, None)
            .await;
        assert_eq!(code(r), Code::NotFound);
        let r = p.volumes.expand("", GIB as i64, 0, None).await;
        assert_eq!(code(r), Code::InvalidArgument);
        let r = p.volumes.expand(&b, -1, 0, None).await;
        assert_eq!(code(r), Code::InvalidArgument);
        assert_eq!(table(&p.disk), before);

        // What fits is done: the last volume grows in place into the free
        // space, and asking for less than it has changes nothing.
        let grown = p
            .volumes
            .expand(&b, 10 * GIB as i64, 0, None)
            .await
            .unwrap();
        assert!(grown >= 10 * GIB);
        assert_eq!(p.volumes.get(&b).await.unwrap().capacity, grown);
        let after = table(&p.disk);
        assert_ne!(after, before);
        assert_eq!(after.partitions.len(), before.partitions.len(), "in place");
        assert_eq!(
            p.volumes.expand(&b, MIB as i64, 0, None).await.unwrap(),
            grown
        );
        assert_eq!(table(&p.disk), after);
        // No tool ran: growing is the nodes' work.
        assert_eq!(p.san.count("tunefs"), 0);
    }

    /// The everyday expand: pvc-a, then pvc-b right after it, then pvc-a
    /// grown to 4 GiB. It gains an extent elsewhere on the LUN; its head
    /// keeps its place, pvc-b is untouched, and the table says in which
    /// order the extents make the volume.
    #[tokio::test]
    async fn a_volume_grows_past_its_neighbour_in_a_new_extent() {
        let p = pool().await;
        let a = create(&p.volumes, "pvc-a", GIB).await.unwrap();
        let b = create(&p.volumes, "pvc-b", GIB).await.unwrap();
        let (a_guid, b_guid) = (a.id.partition, b.id.partition);
        let (a0, b0) = (volume(&p.disk, &a_guid), volume(&p.disk, &b_guid));
        assert_eq!(b0.offset, a0.offset + a0.size, "first fit: b right after a");

        let grown = p
            .volumes
            .expand(&a.id.to_string(), 4 * GIB as i64, 0, None)
            .await
            .unwrap();
        assert!(grown >= 4 * GIB);
        let a1 = volume(&p.disk, &a_guid);
        assert_eq!(a1.extents.len(), 2, "{a1:?}");
        assert_eq!(a1.head(), a0.head(), "the head stays where it is");
        assert!(a1.extents[1].offset > b0.offset + b0.size, "{a1:?}");
        // Growing again extends the new last extent in place.
        let again = p
            .volumes
            .expand(&a.id.to_string(), 5 * GIB as i64, 0, None)
            .await
            .unwrap();
        let a2 = volume(&p.disk, &a_guid);
        assert_eq!(a2.extents.len(), 2, "{a2:?}");
        assert_eq!(a2.extents[1].offset, a1.extents[1].offset);
        assert_eq!(a2.layout.usable_bytes(a2.size, ALIGN), again);
        // Capacity counts the volume once, extents and all.
        let listed = p.volumes.list(0, "").await.unwrap().0;
        assert_eq!(listed.len(), 2);

        // Delete drops the head and its extents together, and wipes the
        // backup superblocks wherever they lie.
        p.volumes.delete(&a.id.to_string()).await.unwrap();
        let t = table(&p.disk);
        assert_eq!(
            t.partitions.len(),
            2,
            "heartbeat and pvc-b: {:?}",
            t.partitions
        );
        assert_eq!(volume(&p.disk, &b_guid), b0);
    }

    /// Extents per volume are limited; the refusal says so and by how much
    /// the volume could still grow, and changes nothing.
    #[tokio::test]
    async fn extents_per_volume_are_limited() {
        let p = pool().await;
        let a = create(&p.volumes, "pvc-a", 64 * MIB).await.unwrap();
        let id = a.id.to_string();
        // Each round: a blocker right after a's last extent, then a grown by
        // a little, which needs a new extent.
        let mut want = 64 * MIB;
        for i in 1..crate::volume::extents::MAX_EXTENTS {
            let last = *volume(&p.disk, &a.id.partition).extents.last().unwrap();
            block_after(&p, last.offset + last.size, &format!("blocker-{i}")).await;
            want += 64 * MIB;
            p.volumes.expand(&id, want as i64, 0, None).await.unwrap();
            assert_eq!(volume(&p.disk, &a.id.partition).extents.len(), i + 1);
        }
        let last = *volume(&p.disk, &a.id.partition).extents.last().unwrap();
        block_after(&p, last.offset + last.size, "blocker-last").await;
        let before = table(&p.disk);
        let err = p
            .volumes
            .expand(&id, (want + 64 * MIB) as i64, 0, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        assert!(err.to_string().contains("at most 16 extents"), "{err}");
        assert_eq!(table(&p.disk), before);
    }

    /// Puts a small pending entry at `offset` (a volume being created there).
    async fn block_after(p: &Pool, offset: u64, name: &str) {
        let _locked = p.lun.lock().await;
        let mut t = p.lun.read_table().await.unwrap();
        if t.partitions.iter().any(|q| q.first_lba == offset / 512) {
            return;
        }
        let number = t.lowest_free_number().unwrap();
        let at = Placement {
            number,
            first_lba: offset / 512,
            last_lba: (offset + MIB) / 512 - 1,
        };
        let layout = Layout::for_size(MIB, 1, None, None, None);
        t.partitions.push(volume_partition(
            at,
            uuid::Uuid::new_v4(),
            name,
            State::Pending,
            HeartbeatMode::Global,
            &layout,
        ));
        p.lun.write_table(&t).await.unwrap();
    }

    #[tokio::test]
    async fn expand_of_a_pending_volume_waits_for_create() {
        let p = pool().await;
        // A crash right after the pending entry was written: the table
        // writes of the allocation pass, everything after fails.
        let crashing = Arc::new(FailingIo::new(p.disk.clone(), 5, CrashMode::Fail));
        let lun = p.san.open_lun(LUN, crashing).await;
        let r = create(&p.san.volumes(vec![lun]), "pvc-a", 100 * MIB).await;
        assert_eq!(code(r), Code::Internal);
        let left = volume_entries(&p.disk);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].state, State::Pending);
        let id = VolumeId {
            lun: p.lun.disk_guid,
            partition: partition_guid("pvc-a"),
        };
        p.san.add_lun(Path::new(LUN), Arc::new(p.disk.clone()));
        let r = p.volumes.expand(&id.to_string(), GIB as i64, 0, None).await;
        assert_eq!(code(r), Code::FailedPrecondition);
        assert_eq!(volume_entries(&p.disk), left);
    }

    #[tokio::test]
    async fn delete_refuses_a_volume_a_node_has_mounted() {
        let p = pool().await;
        let info = create(&p.volumes, "pvc-a", 100 * MIB).await.unwrap();
        let id = info.id.to_string();
        let entry = volume_entries(&p.disk)[0].clone();
        let before = table(&p.disk);

        p.san.set_mounted(filesystem_uuid("pvc-a"), &[2, 5]);
        let r = p.volumes.delete(&id).await;
        let err = r.expect_err("refused");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.to_string()
                .contains("mounted on o2cb node 2, o2cb node 5 "),
            "{err}"
        );
        assert_eq!(table(&p.disk), before);
        assert!(p.san.filesystem_at(Path::new(LUN), entry.offset).is_some());
        assert_eq!(p.volumes.get(&id).await.unwrap().id, info.id);

        // Once the nodes let go, the delete wipes and drops it.
        p.san.set_mounted(filesystem_uuid("pvc-a"), &[]);
        p.volumes.delete(&id).await.unwrap();
        assert!(volume_entries(&p.disk).is_empty());
        assert!(p.san.filesystem_at(Path::new(LUN), entry.offset).is_none());
        let mut head = vec![1u8; MIB as usize];
        p.disk.read_at(entry.offset, &mut head).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        assert_eq!(code(p.volumes.get(&id).await), Code::NotFound);
        assert_eq!(p.san.attached(), 0);
        assert!(p.san.violations().is_empty());
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let p = pool().await;
        let id = create(&p.volumes, "pvc-a", 100 * MIB)
            .await
            .unwrap()
            .id
            .to_string();
        let keep = create(&p.volumes, "pvc-b", 100 * MIB).await.unwrap();
        p.volumes.delete(&id).await.unwrap();
        let after = table(&p.disk);
        // Again, and IDs that are not ours or name no LUN of this pool.
        p.volumes.delete(&id).await.unwrap();
        p.volumes.delete("some-other-driver's-id").await.unwrap();
        let elsewhere = VolumeId {
            lun: uuid::Uuid::new_v4(),
            partition: partition_guid("pvc-b"),
        };
        p.volumes.delete(&elsewhere.to_string()).await.unwrap();
        assert_eq!(table(&p.disk), after);
        assert_eq!(p.volumes.get(&keep.id.to_string()).await.unwrap(), {
            let mut k = keep.clone();
            k.context.remove(context_keys::FS_UUID);
            k
        });
        assert_eq!(code(p.volumes.delete("").await), Code::InvalidArgument);

        // A delete interrupted after the wipe (filesystem gone, entry still
        // there) finishes without asking for a slot map it cannot read.
        let keep_id = keep.id.to_string();
        let entry = volume_entries(&p.disk)[0].clone();
        p.disk
            .write_at(entry.offset, &vec![0u8; MIB as usize])
            .unwrap();
        let slotmaps = p.san.count("debugfs.ocfs2 -R slotmap");
        p.volumes.delete(&keep_id).await.unwrap();
        assert_eq!(p.san.count("debugfs.ocfs2 -R slotmap"), slotmaps);
        assert!(volume_entries(&p.disk).is_empty());
        // The heartbeat partition stays.
        assert!(table(&p.disk)
            .partition(crate::volume::entry::HEARTBEAT_NUMBER)
            .is_some());
    }

    #[tokio::test]
    async fn capacity_is_what_create_can_deliver() {
        let p = pool().await;
        let none = params(&[]);
        let empty = p.volumes.capacity(&none, &mount_caps()).await.unwrap();
        assert!(empty.maximum_volume > 60 * GIB && empty.maximum_volume < LUN_BYTES);
        assert!(empty.available >= empty.maximum_volume);

        // The largest volume promised can be made, and then nothing more.
        let max = empty.maximum_volume;
        let big = create(&p.volumes, "pvc-max", max).await.unwrap();
        assert!(big.capacity >= max);
        let after = p.volumes.capacity(&none, &mount_caps()).await.unwrap();
        assert!(after.available < MIB * 64, "{}", after.available);
        let r = create(&p.volumes, "pvc-more", 100 * MIB).await;
        assert_eq!(code(r), Code::ResourceExhausted);

        // Raw block volumes lose only their header; capabilities we
        // cannot serve have no capacity; bad parameters are refused; a pin
        // to another LUN sees none of this one.
        p.volumes.delete(&big.id.to_string()).await.unwrap();
        let block = p.volumes.capacity(&none, &block_caps()).await.unwrap();
        assert!(block.maximum_volume > empty.maximum_volume);
        assert!(block.maximum_volume < LUN_BYTES);
        let mut mixed = block_caps();
        mixed.extend(mount_caps());
        assert_eq!(
            p.volumes.capacity(&none, &mixed).await.unwrap().available,
            0
        );
        let bad = params(&[("nodeSlots", "0")]);
        assert_eq!(
            code(p.volumes.capacity(&bad, &[]).await),
            Code::InvalidArgument
        );
        let elsewhere = params(&[("lun", "/dev/other")]);
        assert_eq!(
            p.volumes.capacity(&elsewhere, &[]).await.unwrap().available,
            0
        );
        let here = params(&[("lun", LUN)]);
        assert_eq!(
            p.volumes.capacity(&here, &[]).await.unwrap().available,
            empty.available
        );
        // Fewer slots, less overhead, more room.
        let few = params(&[("nodeSlots", "2")]);
        assert!(p.volumes.capacity(&few, &[]).await.unwrap().maximum_volume > empty.maximum_volume);
    }

    #[tokio::test]
    async fn a_full_lun_that_the_array_grew_is_used_by_expand_and_create() {
        let p = pool().await;
        let none = params(&[]);
        let full = p.volumes.capacity(&none, &mount_caps()).await.unwrap();
        let a = create(&p.volumes, "pvc-a", full.maximum_volume)
            .await
            .unwrap();
        assert_eq!(
            code(create(&p.volumes, "pvc-b", GIB).await),
            Code::ResourceExhausted
        );
        let before = table(&p.disk);

        // The array adds 32 GiB. Nothing is seen until someone looks.
        p.disk.grow(LUN_BYTES + 32 * GIB);
        let a_id = a.id.to_string();
        let grown = p
            .volumes
            .expand(&a_id, (a.capacity + 8 * GIB) as i64, 0, None)
            .await
            .unwrap();
        assert!(grown >= a.capacity + 8 * GIB);

        // The table spans the new space, both copies whole, the backup at
        // the new end and the old one cleared; every partition kept.
        let r = gpt::read(&p.disk).unwrap();
        assert!(r.primary_valid && r.backup_valid);
        let after = r.gpt;
        assert_eq!(after.total_sectors, (LUN_BYTES + 32 * GIB) / 512);
        assert!(after.last_usable_lba > before.last_usable_lba);
        let mut old_backup = vec![0u8; 512];
        p.disk.read_at(LUN_BYTES - 512, &mut old_backup).unwrap();
        assert!(
            old_backup.iter().all(|b| *b == 0),
            "the old backup header is cleared"
        );
        for q in &before.partitions {
            let now = after.partition(q.number).unwrap();
            assert_eq!(
                (now.first_lba, now.unique_guid),
                (q.first_lba, q.unique_guid)
            );
        }

        // The rest of the new space is what GetCapacity offers, and create
        // can have it.
        let cap = p.volumes.capacity(&none, &mount_caps()).await.unwrap();
        assert!(
            cap.maximum_volume > 20 * GIB && cap.maximum_volume < 24 * GIB,
            "{cap:?}"
        );
        create(&p.volumes, "pvc-b", cap.maximum_volume)
            .await
            .unwrap();
        assert_eq!(
            code(create(&p.volumes, "pvc-c", GIB).await),
            Code::ResourceExhausted
        );

        // Grown again: a create that finds no room looks too.
        p.disk.grow(LUN_BYTES + 40 * GIB);
        create(&p.volumes, "pvc-c", 4 * GIB).await.unwrap();
        assert!(gpt::read(&p.disk).unwrap().backup_valid);
    }

    #[tokio::test]
    async fn list_pages_with_tokens() {
        let p = pool().await;
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(
                create(&p.volumes, &format!("pvc-{i}"), 50 * MIB)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let (all, token) = p.volumes.list(0, "").await.unwrap();
        assert_eq!(all.iter().map(|v| v.id).collect::<Vec<_>>(), made);
        assert!(token.is_empty());

        let (page, token) = p.volumes.list(2, "").await.unwrap();
        assert_eq!(page.iter().map(|v| v.id).collect::<Vec<_>>(), made[..2]);
        assert!(!token.is_empty());
        // Between pages, a volume of the next page goes and a new one comes
        // (into the freed space, so earlier in the table): the rest of the
        // list neither repeats nor skips what stayed.
        p.volumes.delete(&made[2].to_string()).await.unwrap();
        let late = create(&p.volumes, "pvc-late", 50 * MIB).await.unwrap().id;
        let mut rest = Vec::new();
        let mut token = token;
        while !token.is_empty() {
            let (page, next) = p.volumes.list(2, &token).await.unwrap();
            assert!(page.len() <= 2);
            rest.extend(page.iter().map(|v| v.id));
            token = next;
        }
        assert!(rest.contains(&made[3]) && rest.contains(&made[4]));
        assert!(!rest.contains(&made[0]) && !rest.contains(&made[1]));
        assert!(!rest.contains(&made[2]));
        let mut unique = rest.clone();
        unique.dedup();
        assert_eq!(unique, rest);
        let _ = late;

        assert_eq!(code(p.volumes.list(1, "nonsense").await), Code::Aborted);
        assert_eq!(
            code(p.volumes.list(1, "0.999999999999").await),
            Code::Aborted
        );
        assert_eq!(code(p.volumes.list(-1, "").await), Code::InvalidArgument);
    }

    /// Every bad request is refused with a clear code before anything is
    /// written to the LUN or any tool runs.
    #[tokio::test]
    async fn bad_parameters_write_nothing() {
        let p = pool().await;
        let counting = Arc::new(FailingIo::counting(p.disk.clone()));
        p.san.add_lun(Path::new(LUN), counting.clone());
        let lun = p.san.open_lun(LUN, counting.clone()).await;
        let volumes = p.san.volumes(vec![lun]);
        let writes = counting.writes_attempted();
        let commands = p.san.commands().len();
        let before = table(&p.disk);

        let mb = MIB as i64;
        let long = "x".repeat(200);
        type Case<'a> = (&'a str, &'a str, i64, i64, Vec<(&'a str, &'a str)>, Code);
        let cases: Vec<Case> = vec![
            ("empty name", "", mb, 0, vec![], Code::InvalidArgument),
            ("long name", &long, mb, 0, vec![], Code::InvalidArgument),
            ("negative", "pvc-a", -1, 0, vec![], Code::InvalidArgument),
            (
                "required over limit",
                "pvc-a",
                10 * mb,
                mb,
                vec![],
                Code::OutOfRange,
            ),
            (
                "nodeSlots 0",
                "pvc-a",
                mb,
                0,
                vec![("nodeSlots", "0")],
                Code::InvalidArgument,
            ),
            (
                "nodeSlots word",
                "pvc-a",
                mb,
                0,
                vec![("nodeSlots", "many")],
                Code::InvalidArgument,
            ),
            (
                "clusterSize",
                "pvc-a",
                mb,
                0,
                vec![("clusterSize", "3K")],
                Code::InvalidArgument,
            ),
            (
                "journalSize",
                "pvc-a",
                mb,
                0,
                vec![("journalSize", "1Ti")],
                Code::InvalidArgument,
            ),
            (
                "heartbeat",
                "pvc-a",
                mb,
                0,
                vec![("heartbeat", "none")],
                Code::InvalidArgument,
            ),
            (
                "fsFeatures",
                "pvc-a",
                mb,
                0,
                vec![("fsFeatures", "-T mail")],
                Code::InvalidArgument,
            ),
            (
                "unknown",
                "pvc-a",
                mb,
                0,
                vec![("rm -rf", "/")],
                Code::InvalidArgument,
            ),
            (
                "lun nowhere",
                "pvc-a",
                mb,
                0,
                vec![("lun", "/dev/sdz")],
                Code::InvalidArgument,
            ),
            (
                "journal under 9 clusters",
                "pvc-a",
                mb,
                0,
                vec![("clusterSize", "1M"), ("journalSize", "4Mi")],
                Code::InvalidArgument,
            ),
            (
                "too big",
                "pvc-a",
                2 * LUN_BYTES as i64,
                0,
                vec![],
                Code::OutOfRange,
            ),
        ];
        for (what, name, required, limit, pairs, want) in cases {
            let r = create_with(&volumes, name, required, limit, &params(&pairs)).await;
            assert_eq!(code(r), want, "{what}");
        }
        // Capabilities we do not serve (block and mount at once, none), and
        // a snapshot that is not there.
        let mut mixed = block_caps();
        mixed.extend(mount_caps());
        let none = params(&[]);
        let snapshot = Some(super::ContentSource::Snapshot("snap-1".into()));
        for (caps, source, want) in [
            (mixed, None, Code::InvalidArgument),
            (vec![], None, Code::InvalidArgument),
            (mount_caps(), snapshot, Code::NotFound),
        ] {
            let r = volumes
                .create(CreateRequest {
                    name: "pvc-a",
                    required_bytes: MIB as i64,
                    limit_bytes: 0,
                    capabilities: &caps,
                    parameters: &none,
                    source,
                })
                .await;
            assert_eq!(code(r), want);
        }
        assert_eq!(counting.writes_attempted(), writes);
        let ran = &p.san.commands()[commands..];
        assert!(ran.is_empty(), "{ran:?}");
        assert_eq!(table(&p.disk), before);
    }

    #[tokio::test]
    async fn nothing_is_served_before_the_luns_are_open() {
        let san = FakeSan::new();
        let volumes = Volumes::new(san.tools(), san.clone(), "fakelab".into());
        volumes.expect_luns(&[std::path::PathBuf::from("/dev/sdq")]);
        volumes.lun_failed(std::path::Path::new("/dev/sdq"), "no such device".into());
        assert!(!volumes.is_ready());
        let r = create(&volumes, "pvc-a", MIB).await;
        let err = r.expect_err("not ready");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("/dev/sdq"), "{err}");
        assert_eq!(code(volumes.list(0, "").await), Code::Unavailable);
        let id = VolumeId {
            lun: uuid::Uuid::new_v4(),
            partition: partition_guid("pvc-a"),
        };
        assert_eq!(
            code(volumes.delete(&id.to_string()).await),
            Code::Unavailable
        );
    }

    /// Issue 12.7: one LUN that cannot be opened leaves the others
    /// serving. What needs every LUN (a create free to pick any, which must
    /// find an earlier try of itself; a lookup of a LUN not open) answers
    /// Unavailable naming the missing LUN, never a wrong "not found".
    #[tokio::test]
    async fn one_lun_not_open_leaves_the_others_serving() {
        let p = pool().await;
        let bad = std::path::PathBuf::from("/dev/disk/by-id/wwn-bad");
        let volumes = p.san.volumes(vec![]);
        volumes.expect_luns(&[std::path::PathBuf::from(LUN), bad.clone()]);
        volumes.lun_failed(&bad, "I/O error".into());
        assert!(!volumes.is_ready());
        volumes.lun_opened(p.lun.clone()).unwrap();
        assert!(volumes.is_ready());

        let err = create(&volumes, "pvc-any", 100 * MIB).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("wwn-bad: I/O error"), "{err}");

        let on = |lun: &str, name: &'static str| {
            let (volumes, lun) = (&volumes, lun.to_string());
            async move {
                let caps = mount_caps();
                let pinned = HashMap::from([("lun".to_string(), lun)]);
                volumes
                    .create(CreateRequest {
                        name,
                        required_bytes: 100 * MIB as i64,
                        limit_bytes: 0,
                        capabilities: &caps,
                        parameters: &pinned,
                        source: None,
                    })
                    .await
            }
        };
        let info = on(LUN, "pvc-pinned").await.unwrap();
        let err = on(&bad.display().to_string(), "pvc-on-bad")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");

        let elsewhere = VolumeId {
            lun: uuid::Uuid::new_v4(),
            partition: partition_guid("pvc-x"),
        };
        assert_eq!(
            code(volumes.delete(&elsewhere.to_string()).await),
            Code::Unavailable
        );
        volumes.delete(&info.id.to_string()).await.unwrap();
        assert!(volume_entries(&p.disk).is_empty());
    }

    /// A LUN whose device reports itself failing when told to.
    struct Sick {
        disk: SparseIo,
        sick: Arc<std::sync::atomic::AtomicBool>,
    }

    impl BlockIo for Sick {
        fn sector_size(&self) -> u64 {
            self.disk.sector_size()
        }
        fn size_bytes(&self) -> u64 {
            self.disk.size_bytes()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.disk.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.disk.write_at(offset, buf)
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.disk.discard(offset, len)
        }
        fn failing(&self) -> Option<String> {
            self.sick
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| "3 operations in a row: EIO".into())
        }
    }

    /// Issue 12.7: Probe says not ready while every open LUN fails its I/O,
    /// and ready again once one answers.
    #[tokio::test]
    async fn not_ready_while_every_lun_is_failing() {
        let san = FakeSan::new();
        let sick = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lun = san
            .open_lun(
                LUN,
                Arc::new(Sick {
                    disk: SparseIo::new(512, LUN_BYTES),
                    sick: sick.clone(),
                }),
            )
            .await;
        let volumes = san.volumes(vec![lun]);
        assert!(volumes.is_ready());
        sick.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(!volumes.is_ready());
        sick.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(volumes.is_ready());
    }

    // -----------------------------------------------------------------
    // Issue 12: a stage racing a delete. The fake node plays what a real
    // one does: it mounts (takes a slot) right after DeleteVolume read the
    // slot map, having read the entry Ready before.

    fn entry_state(p: &Pool) -> Option<State> {
        volume_entries(&p.disk).first().map(|e| e.state)
    }

    /// The node's post-mount look saw Ready (it looked before the mark):
    /// it stays mounted, so the delete must neither wipe nor drop.
    #[tokio::test]
    async fn a_stage_mounting_right_after_the_slot_map_read_is_not_wiped() {
        let p = pool().await;
        let info = create(&p.volumes, "pvc-race", 100 * MIB).await.unwrap();
        let offset = volume_entries(&p.disk)[0].offset;
        let fs = filesystem_uuid("pvc-race");
        let san = p.san.clone();
        p.san.after_slotmap(move || san.set_mounted(fs, &[3]));
        let result = p.volumes.delete(&info.id.to_string()).await;
        let wiped = p.san.filesystem_at(Path::new(LUN), offset).is_none();
        assert!(
            !wiped,
            "the filesystem node 3 mounted was wiped under it; delete answered {result:?}, \
             entry now {:?}",
            entry_state(&p)
        );
        assert_eq!(code(result), Code::FailedPrecondition);
        assert_eq!(entry_state(&p), Some(State::Ready), "the delete is undone");
        assert_eq!(
            p.volumes.get(&info.id.to_string()).await.unwrap().id,
            info.id
        );
        // Once node 3 unstages, the delete goes through.
        p.san.set_mounted(fs, &[]);
        p.volumes.delete(&info.id.to_string()).await.unwrap();
        assert!(volume_entries(&p.disk).is_empty());
        assert!(p.san.filesystem_at(Path::new(LUN), offset).is_none());
    }

    /// The node's post-mount look saw Deleting: it unmounts, and the delete
    /// (which waits for exactly such stages) wipes only after that.
    #[tokio::test]
    async fn a_stage_that_sees_deleting_after_mounting_lets_go_before_the_wipe() {
        let p = pool().await;
        let volumes = p
            .san
            .volumes(vec![p.lun.clone()])
            .with_delete_grace(Duration::from_millis(300));
        let info = create(&volumes, "pvc-race", 100 * MIB).await.unwrap();
        let offset = volumes_offset(&p);
        let fs = filesystem_uuid("pvc-race");
        let san = p.san.clone();
        let disk = p.disk.clone();
        let (unmounted_tx, unmounted_rx) = tokio::sync::oneshot::channel();
        p.san.after_slotmap(move || {
            san.set_mounted(fs, &[3]);
            std::thread::spawn(move || {
                // The node's post-mount look, as soon as the mark is there.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while volume_entries(&disk).first().map(|e| e.state) != Some(State::Deleting) {
                    assert!(std::time::Instant::now() < deadline, "never marked");
                    std::thread::sleep(Duration::from_millis(2));
                }
                assert!(san.filesystem_at(Path::new(LUN), offset).is_some());
                san.set_mounted(fs, &[]);
                let _ = unmounted_tx.send(());
            });
        });
        volumes.delete(&info.id.to_string()).await.unwrap();
        unmounted_rx.await.unwrap();
        assert!(volume_entries(&p.disk).is_empty());
        assert!(p.san.filesystem_at(Path::new(LUN), offset).is_none());
    }

    fn volumes_offset(p: &Pool) -> u64 {
        volume_entries(&p.disk)[0].offset
    }

    /// While the delete runs, the entry is Deleting: a CreateVolume of the
    /// name is told to retry, lookups find nothing; afterwards the name can
    /// be made anew.
    #[tokio::test]
    async fn a_volume_being_deleted_is_not_created_or_found() {
        let p = pool().await;
        let volumes = Arc::new(
            p.san
                .volumes(vec![p.lun.clone()])
                .with_delete_grace(Duration::from_millis(300)),
        );
        let id = create(&volumes, "pvc-d", 100 * MIB)
            .await
            .unwrap()
            .id
            .to_string();
        let deleting = tokio::spawn({
            let (volumes, id) = (volumes.clone(), id.clone());
            async move { volumes.delete(&id).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while entry_state(&p) != Some(State::Deleting) {
            assert!(
                std::time::Instant::now() < deadline,
                "never marked Deleting"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            code(create(&volumes, "pvc-d", 100 * MIB).await),
            Code::Aborted
        );
        assert_eq!(code(volumes.get(&id).await), Code::NotFound);
        assert!(volumes.list(0, "").await.unwrap().0.is_empty());
        deleting.await.unwrap().unwrap();
        create(&volumes, "pvc-d", 100 * MIB).await.unwrap();
    }

    /// A controller that stopped with the entry Deleting: the retry
    /// finishes it, or (a node has it mounted) undoes the mark.
    #[tokio::test]
    async fn an_interrupted_delete_resumes_from_deleting() {
        let p = pool().await;
        let mark = |state: State| {
            let mut t = table(&p.disk);
            let e = volume_entry(&t.partitions[1], 512).unwrap();
            t.partitions[1].type_guid = entry::type_guid(state, e.heartbeat);
            t
        };
        let id = create(&p.volumes, "pvc-i", 100 * MIB)
            .await
            .unwrap()
            .id
            .to_string();
        p.lun.write_table(&mark(State::Deleting)).await.unwrap();
        assert_eq!(entry_state(&p), Some(State::Deleting));
        p.san.set_mounted(filesystem_uuid("pvc-i"), &[1]);
        assert_eq!(code(p.volumes.delete(&id).await), Code::FailedPrecondition);
        assert_eq!(entry_state(&p), Some(State::Ready));
        p.lun.write_table(&mark(State::Deleting)).await.unwrap();
        p.san.set_mounted(filesystem_uuid("pvc-i"), &[]);
        p.volumes.delete(&id).await.unwrap();
        assert!(volume_entries(&p.disk).is_empty());
        p.volumes.delete(&id).await.unwrap();
    }

    /// A MiB of bytes that differ with `seed`: data a copy must carry.
    fn pattern(seed: u8) -> Vec<u8> {
        (0..MIB as usize)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The MiB of the LUN at `at`.
    fn read(disk: &SparseIo, at: u64) -> Vec<u8> {
        let mut buf = vec![0u8; MIB as usize];
        disk.read_at(at, &mut buf).unwrap();
        buf
    }

    mod block;
    mod clone;
    mod snapshot;
}

#[tokio::test]
async fn a_delete_refusal_names_the_nodes_the_members_know() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("members");
    std::fs::write(&file, "worker-a 0 10.0.0.1\nworker-b 3 10.0.0.4\n").unwrap();
    let members = crate::cluster::StaticMembers::new(&file, 7777);
    let refusal = Users::Mounted(vec![3, 5])
        .refusal("pvc-1", Some(&members))
        .await;
    let text = refusal.to_string();
    assert!(
        text.contains("still mounted on worker-b (o2cb node 3), o2cb node 5"),
        "{text}"
    );
    let unnamed = Users::Mounted(vec![3]).refusal("pvc-1", None).await;
    assert!(
        unnamed.to_string().contains("mounted on o2cb node 3 "),
        "{unnamed}"
    );
}
