//! The controller against file-backed LUNs, checked with the real tools:
//! create / list / expand / delete, idempotency, fsck-clean filesystems and
//! usable capacity, bad input that changes nothing on disk.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::volume_capability::access_mode::Mode;
use ocfs2_csi::csi::volume_capability::{AccessType, BlockVolume};
use ocfs2_csi::csi::*;
use ocfs2_csi::volume::entry::TYPE_LOCAL;
use std::collections::HashMap;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_expand_delete() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 40 * GIB);
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let mut c = ctl.client().await;

    let v = c
        .create_volume(create_request("pvc-one", 2 * GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes as u64, 2 * GIB);
    for key in [
        "lunGuid",
        "partitionGuid",
        "fsUuid",
        "clusterName",
        "heartbeat",
        "heartbeatUuid",
    ] {
        assert!(
            v.volume_context.contains_key(key),
            "context lacks {key}: {:?}",
            v.volume_context
        );
    }
    assert_eq!(v.volume_context["heartbeat"], "global");

    // Same name, same request: the same volume, nothing new on disk.
    let again = c
        .create_volume(create_request("pvc-one", 2 * GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(volume_partitions(&lun).len(), 1);
    // Same name, bigger size: AlreadyExists.
    let err = c
        .create_volume(create_request("pvc-one", 3 * GIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Same name, other parameters: AlreadyExists.
    let mut other = create_request("pvc-one", 2 * GIB);
    other.parameters.insert("nodeSlots".into(), "4".into());
    assert_eq!(
        c.create_volume(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    let part = volume_partitions(&lun).remove(0);
    assert_fsck_clean(&lun, &part);
    let free = fs_free_bytes(&lun, &part);
    assert!(free >= 2 * GIB, "filesystem offers {free} < requested");

    let local = c
        .create_volume({
            let mut r = create_request("pvc-local", GIB);
            r.parameters = HashMap::from([
                ("heartbeat".to_string(), "local".to_string()),
                ("nodeSlots".to_string(), "4".to_string()),
                ("clusterSize".to_string(), "64K".to_string()),
                ("journalSize".to_string(), "16Mi".to_string()),
                ("fsFeatures".to_string(), "norefcount".to_string()),
            ]);
            r
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(local.volume_context["heartbeat"], "local");
    assert!(!local.volume_context.contains_key("heartbeatUuid"));

    let listed = c
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert!(!listed.next_token.is_empty());
    let rest = c
        .list_volumes(ListVolumesRequest {
            max_entries: 0,
            starting_token: listed.next_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert!(rest.next_token.is_empty());
    let bad_token = c
        .list_volumes(ListVolumesRequest {
            max_entries: 0,
            starting_token: "zzz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::Aborted);

    // Expand the first volume past its neighbour: it grows into the room
    // left after it, then into a new extent past the neighbour (issue 13).
    let before_v = volume_on(&lun, &v.volume_context["partitionGuid"]);
    let grown_v = c
        .controller_expand_volume(expand_request(&v.volume_id, 5 * GIB))
        .await
        .unwrap()
        .into_inner();
    assert!(grown_v.capacity_bytes as u64 >= 5 * GIB);
    let after_v = volume_on(&lun, &v.volume_context["partitionGuid"]);
    assert_eq!(after_v.extents.len(), 2, "{after_v:?}");
    assert_eq!(after_v.offset, before_v.offset, "the head stays");
    let neighbour = volume_on(&lun, &local.volume_context["partitionGuid"]);
    assert!(
        after_v.extents[1].offset > neighbour.offset,
        "{after_v:?} {neighbour:?}"
    );
    // More than the LUN holds: refused, saying how far it could grow.
    let err = c
        .controller_expand_volume(expand_request(&v.volume_id, 400 * GIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("at most"), "{}", err.message());

    // The local volume is last on the LUN and can grow.
    let grown = c
        .controller_expand_volume(expand_request(&local.volume_id, 3 * GIB))
        .await
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required);
    assert_eq!(grown.capacity_bytes as u64, 3 * GIB);
    let got = c
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: local.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes as u64, 3 * GIB);
    // The filesystem was not touched: fsck still clean, partition bigger.
    let local_part = volume_partitions(&lun)
        .into_iter()
        .find(|p| p.type_guid == TYPE_LOCAL.to_string())
        .unwrap();
    assert!((local_part.last - local_part.first + 1) * 512 > 3 * GIB);
    assert_fsck_clean(&lun, &local_part);

    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 26 * GIB as i64, "{cap:?}");
    assert!(cap.maximum_volume_size.unwrap() <= cap.available_capacity);

    // The metrics agree with the table as sgdisk reads it and with the
    // calls made above.
    let m = ctl.metrics();
    let series = |name: &str| {
        let lun_label = format!("{{lun=\"{}\"}}", lun.display());
        metric(&m, &format!("ocfs2_csi_{name}{lun_label}"))
            .unwrap_or_else(|| panic!("no {name} for the LUN in:\n{m}"))
    };
    let parts = partitions(&lun);
    let used: u64 = parts.iter().map(Part::bytes).sum();
    assert_eq!(series("lun_used_bytes") as u64, used, "{m}");
    let (size, free) = (
        series("lun_size_bytes") as u64,
        series("lun_free_bytes") as u64,
    );
    // Free space counts whole aligned MiB only: at most a MiB less per gap.
    assert!(
        free <= size - used && free + (parts.len() as u64 + 1) * MIB >= size - used,
        "{m}"
    );
    assert!(series("lun_largest_free_extent_bytes") as u64 <= free);
    assert_eq!((series("lun_open"), series("lun_writer")), (1.0, 1.0));
    let ready = format!(
        "ocfs2_csi_lun_volumes{{lun=\"{}\",state=\"ready\"}}",
        lun.display()
    );
    assert_eq!(metric(&m, &ready), Some(2.0), "{m}");
    let calls = |method: &str, code: &str| {
        let s = format!(
            "ocfs2_csi_grpc_server_handled_total{{grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
        );
        metric(&m, &s).unwrap_or(0.0)
    };
    assert_eq!(calls("CreateVolume", "OK"), 3.0, "{m}");
    assert_eq!(calls("CreateVolume", "AlreadyExists"), 2.0);
    assert_eq!(calls("ListVolumes", "Aborted"), 1.0);
    assert_eq!(calls("ControllerExpandVolume", "OutOfRange"), 1.0);
    assert_eq!(calls("ControllerExpandVolume", "OK"), 2.0);

    for id in [&v.volume_id, &local.volume_id] {
        c.delete_volume(delete_request(id)).await.unwrap();
        // Idempotent.
        c.delete_volume(delete_request(id)).await.unwrap();
    }
    let m = ctl.metrics();
    assert_eq!(metric(&m, &ready), Some(0.0), "{m}");
    let handled =
        r#"ocfs2_csi_grpc_server_handled_total{grpc_method="DeleteVolume",grpc_code="OK"}"#;
    assert_eq!(metric(&m, handled), Some(4.0), "{m}");
    assert!(volume_partitions(&lun).is_empty());
    assert_gpt_valid(&lun);
    // The wiped space holds no filesystem signature any more.
    with_loop(
        &lun,
        part.first * 512,
        (part.last - part.first + 1) * 512,
        |dev| {
            let (found, _) = run("blkid", &["-p", dev]);
            assert!(!found, "old filesystem still visible after delete");
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_luns_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "ext4.raw", 256 * MIB);
    let (ok, out) = run(
        "sgdisk",
        &["-o", "-n", "1:2048:+10M", lun.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let before = table_bytes(&lun);
    let lun_arg = lun.to_str().unwrap();
    // Named in --init-lun even: a LUN holding a table of others is refused.
    let mut ctl = Controller::spawn_with(
        std::slice::from_ref(&lun),
        dir.path(),
        &["--init-lun", lun_arg],
    );
    ctl.wait_log(
        "GPT that ocfs2-csi did not make",
        std::time::Duration::from_secs(60),
    );
    ctl.kill();
    assert_eq!(table_bytes(&lun), before, "a refused LUN was modified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 8 * GIB);
    let ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let mut c = ctl.client().await;
    let keep = c
        .create_volume(create_request("keep", GIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let before = table_bytes(&lun);
    let other_lun_id = format!(
        "ocfs2-v1:{}:{}",
        uuid::Uuid::new_v4(),
        keep.volume_context["partitionGuid"]
    );

    let with = |f: &dyn Fn(&mut CreateVolumeRequest)| {
        let mut r = create_request("bad", GIB);
        f(&mut r);
        r
    };
    let param = |pairs: &[(&str, &str)]| {
        with(&|r| {
            for (k, v) in pairs {
                r.parameters.insert(k.to_string(), v.to_string());
            }
        })
    };
    let creates: Vec<(&str, CreateVolumeRequest, Code)> = vec![
        (
            "empty name",
            with(&|r| r.name.clear()),
            Code::InvalidArgument,
        ),
        (
            "huge name",
            with(&|r| r.name = "x".repeat(10_000)),
            Code::InvalidArgument,
        ),
        (
            "control chars",
            with(&|r| r.name = "a\u{0}b".into()),
            Code::InvalidArgument,
        ),
        (
            "no capabilities",
            with(&|r| r.volume_capabilities.clear()),
            Code::InvalidArgument,
        ),
        (
            "block and mount at once",
            with(&|r| {
                let mut block = r.volume_capabilities[0].clone();
                block.access_type = Some(AccessType::Block(BlockVolume {}));
                r.volume_capabilities.push(block);
            }),
            Code::InvalidArgument,
        ),
        (
            "unknown mode",
            with(&|r| r.volume_capabilities[0] = mount_cap(Mode::Unknown)),
            Code::InvalidArgument,
        ),
        (
            "negative",
            with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = -5),
            Code::InvalidArgument,
        ),
        (
            "limit below required",
            with(&|r| r.capacity_range.as_mut().unwrap().limit_bytes = (MIB) as i64),
            Code::OutOfRange,
        ),
        (
            "bigger than the LUN",
            with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = (100 * GIB) as i64),
            Code::OutOfRange,
        ),
        (
            "unknown parameter",
            param(&[("color", "blue")]),
            Code::InvalidArgument,
        ),
        (
            "shell in a parameter",
            param(&[("nodeSlots", "4; reboot")]),
            Code::InvalidArgument,
        ),
        (
            "feature not allowed",
            param(&[("fsFeatures", "sparse,`id`")]),
            Code::InvalidArgument,
        ),
        (
            "journal under nine clusters",
            param(&[("clusterSize", "1M"), ("journalSize", "8Mi")]),
            Code::InvalidArgument,
        ),
        (
            "unknown lun",
            param(&[("lun", "/dev/../etc/passwd")]),
            Code::InvalidArgument,
        ),
        (
            "content source",
            with(&|r| r.volume_content_source = Some(VolumeContentSource::default())),
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in creates {
        let err = c.create_volume(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}: empty message");
    }

    let expand = |id: &str, bytes: i64| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    for (what, req, code) in [
        ("empty id", expand("", GIB as i64), Code::InvalidArgument),
        (
            "malformed id",
            expand("../../etc", GIB as i64),
            Code::NotFound,
        ),
        (
            "other LUN",
            expand(&other_lun_id, GIB as i64),
            Code::NotFound,
        ),
        (
            "negative",
            expand(&keep.volume_id, -1),
            Code::InvalidArgument,
        ),
        (
            "bigger than the LUN",
            expand(&keep.volume_id, (100 * GIB) as i64),
            Code::OutOfRange,
        ),
    ] {
        let err = c.controller_expand_volume(req).await.unwrap_err();
        assert_eq!(err.code(), code, "expand {what}: {err:?}");
    }

    let err = c
        .delete_volume(DeleteVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // IDs that are not ours, or of a LUN we do not have: nothing to delete.
    for id in ["not-an-id", other_lun_id.as_str()] {
        c.delete_volume(delete_request(id)).await.unwrap();
    }

    for (id, code) in [
        ("", Code::InvalidArgument),
        ("nope", Code::NotFound),
        (other_lun_id.as_str(), Code::NotFound),
    ] {
        let err = c
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "validate {id:?}");
        let err = c
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "get {id:?}");
    }
    let block = ValidateVolumeCapabilitiesRequest {
        volume_id: keep.volume_id.clone(),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Block(BlockVolume {})),
            ..mount_cap(Mode::MultiNodeMultiWriter)
        }],
        ..Default::default()
    };
    let answer = c
        .validate_volume_capabilities(block)
        .await
        .unwrap()
        .into_inner();
    assert!(answer.confirmed.is_none());
    assert!(
        answer.message.contains("filesystem volume"),
        "{}",
        answer.message
    );

    let err = c
        .list_volumes(ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_capacity(GetCapacityRequest {
            parameters: HashMap::from([("nodeSlots".to_string(), "0".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert_eq!(table_bytes(&lun), before, "a refused call changed the LUN");
    let parts = volume_partitions(&lun);
    assert_eq!(parts.len(), 1);
    assert_fsck_clean(&lun, &parts[0]);
}
