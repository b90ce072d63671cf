//! Issue 6: a battery of malformed and hostile requests against every RPC of
//! the Identity and Controller services (and the services the controller
//! does not serve), on the real `ocfs2-csi controller` binary over a
//! file-backed LUN that already holds real volumes (one of them named with
//! shell metacharacters, so the hostile name really reaches mkfs).
//!
//! Every case states the gRPC code the CSI spec asks for and a word its
//! message must contain; no message may echo a hostile megabyte back (the
//! driver's own convention: what it repeats of a caller's input is capped).
//! After the whole battery: the GPT areas (head and tail) are byte-for-byte
//! the same, the LUN file has the same allocated blocks, every volume is
//! still listed with its capacity and is fsck-clean, no file was created by
//! a shell payload, and the controller is still running.

use ocfs2_csi_testkit as common;

use common::*;
use ocfs2_csi::csi::controller_client::ControllerClient;
use ocfs2_csi::csi::controller_service_capability::rpc::Type as RpcType;
use ocfs2_csi::csi::controller_service_capability::Type as CapType;
use ocfs2_csi::csi::group_controller_client::GroupControllerClient;
use ocfs2_csi::csi::identity_client::IdentityClient;
use ocfs2_csi::csi::node_client::NodeClient;
use ocfs2_csi::csi::plugin_capability::Type as PluginCapType;
use ocfs2_csi::csi::snapshot_metadata_client::SnapshotMetadataClient;
use ocfs2_csi::csi::volume_capability::access_mode::Mode;
use ocfs2_csi::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use ocfs2_csi::csi::*;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// What a case's call gives back: the RPC's status, or on success the text
/// to look for the keyword in (a response message) and, when the response
/// itself is wrong, why.
type Reply = Result<Result<String, String>, Status>;
type Call = Pin<Box<dyn Future<Output = Reply> + Send>>;
/// A ValidateVolumeCapabilities case that must not be confirmed: what,
/// capabilities, parameters, the word the message must use.
type Unconfirmed = (
    String,
    Vec<VolumeCapability>,
    HashMap<String, String>,
    String,
);

struct Case {
    rpc: &'static str,
    what: String,
    expect: Code,
    /// Must appear in the status message (or the response text), ignoring
    /// case; empty when there is nothing to name.
    keyword: &'static str,
    call: Call,
}

/// The most of a message a hostile request may make the driver send back.
/// `record_volume` and the node's request checks cap echoes at 100-200
/// characters; a megabyte in a status would go into Kubernetes events.
const MAX_MESSAGE: usize = 4096;
const HUGE: usize = 1 << 20;

fn ok_empty<T>(r: Result<tonic::Response<T>, Status>) -> Reply {
    r.map(|_| Ok(String::new()))
}

fn mode_cap(access: Option<AccessType>, mode: Option<i32>) -> VolumeCapability {
    VolumeCapability {
        access_type: access,
        access_mode: mode.map(|mode| AccessMode { mode }),
    }
}

fn mount() -> Option<AccessType> {
    Some(AccessType::Mount(MountVolume::default()))
}

fn mount_fs(fs: &str) -> Option<AccessType> {
    Some(AccessType::Mount(MountVolume {
        fs_type: fs.into(),
        ..Default::default()
    }))
}

fn mount_flags(flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn block() -> Option<AccessType> {
    Some(AccessType::Block(BlockVolume {}))
}

const MNMW: i32 = Mode::MultiNodeMultiWriter as i32;

/// Capability sets no controller RPC may accept, with the word the refusal
/// must use.
fn bad_capabilities() -> Vec<(&'static str, Vec<VolumeCapability>, &'static str)> {
    vec![
        ("no capabilities", vec![], "volume_capabilities"),
        (
            "mount + block",
            vec![mode_cap(mount(), Some(MNMW)), mode_cap(block(), Some(MNMW))],
            "both block and mount",
        ),
        (
            "no access type",
            vec![mode_cap(None, Some(MNMW))],
            "mount or block",
        ),
        (
            "no access mode",
            vec![mode_cap(mount(), None)],
            "access mode",
        ),
        (
            "access mode UNKNOWN",
            vec![mode_cap(mount(), Some(Mode::Unknown as i32))],
            "access mode",
        ),
        (
            "access mode 99",
            vec![mode_cap(mount(), Some(99))],
            "access mode",
        ),
        (
            "access mode -1",
            vec![mode_cap(mount(), Some(-1))],
            "access mode",
        ),
        (
            "fs_type ext4",
            vec![mode_cap(mount_fs("ext4"), Some(MNMW))],
            "fs_type",
        ),
        (
            "fs_type with shell",
            vec![mode_cap(mount_fs("ocfs2;reboot"), Some(MNMW))],
            "fs_type",
        ),
        (
            "fs_type of 1 MB",
            vec![mode_cap(mount_fs(&"o".repeat(HUGE)), Some(MNMW))],
            "fs_type",
        ),
        // Volumes are always mounted nodev,nosuid; asking otherwise is an
        // error at create, not a surprise at mount.
        (
            "mount flag suid",
            vec![mount_flags(&["noatime", "suid"])],
            "nodev,nosuid",
        ),
        (
            "mount flag dev",
            vec![mount_flags(&["dev"])],
            "nodev,nosuid",
        ),
    ]
}

/// Shell payloads, each creating its own file should anything ever run it
/// through a shell.
fn shell_payloads(tag: &str) -> Vec<String> {
    vec![
        format!("$(touch /tmp/pwned-{tag}-dollar)"),
        format!("`touch /tmp/pwned-{tag}-tick`"),
        format!("4;touch /tmp/pwned-{tag}-semi;reboot"),
        format!("4\ntouch /tmp/pwned-{tag}-newline\n"),
        format!("4|touch /tmp/pwned-{tag}-pipe"),
        format!("4&&touch /tmp/pwned-{tag}-and"),
        format!("4 >/tmp/pwned-{tag}-redirect"),
    ]
}

const KNOWN_PARAMETERS: [&str; 7] = [
    "nodeSlots",
    "heartbeat",
    "clusterSize",
    "blockSize",
    "journalSize",
    "fsFeatures",
    "lun",
];

/// Bad StorageClass parameter sets, each with the word the refusal must use
/// (the parameter's name).
fn bad_parameters(tag: &str, foreign_lun: &Path) -> Vec<(String, HashMap<String, String>, String)> {
    let one = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    let mut out = Vec::new();
    for key in KNOWN_PARAMETERS {
        for (i, payload) in shell_payloads(tag).into_iter().enumerate() {
            out.push((
                format!("{key} = shell #{i}"),
                one(key, &payload),
                key.into(),
            ));
        }
        out.push((
            format!("{key} of 1 MB"),
            one(key, &"7".repeat(HUGE)),
            key.into(),
        ));
        out.push((format!("{key} with NUL"), one(key, "4\0"), key.into()));
        // An empty fsFeatures list means mkfs's defaults, as no key does.
        if key != "fsFeatures" {
            out.push((format!("{key} empty"), one(key, ""), key.into()));
        }
    }
    for (what, k, v) in [
        ("nodeSlots 0", "nodeSlots", "0"),
        ("nodeSlots 256", "nodeSlots", "256"),
        ("nodeSlots -1", "nodeSlots", "-1"),
        ("nodeSlots overflow", "nodeSlots", "18446744073709551617"),
        ("nodeSlots fullwidth", "nodeSlots", "\u{ff14}"),
        ("clusterSize 3K", "clusterSize", "3K"),
        ("clusterSize 2M", "clusterSize", "2M"),
        (
            "clusterSize overflow",
            "clusterSize",
            "99999999999999999999G",
        ),
        ("blockSize 8K", "blockSize", "8K"),
        ("journalSize 1M", "journalSize", "1M"),
        ("journalSize 4.5Mi", "journalSize", "4.5Mi"),
        (
            "journalSize overflow",
            "journalSize",
            "18446744073709551615G",
        ),
        ("heartbeat GLOBAL", "heartbeat", "GLOBAL"),
        ("fsFeatures clusterinfo", "fsFeatures", "clusterinfo"),
        ("fsFeatures escape", "fsFeatures", "sparse,\\xff\\xfe"),
        ("lun /etc/passwd", "lun", "/etc/passwd"),
        ("lun traversal", "lun", "/dev/../../etc/passwd"),
        ("lun /dev/sda", "lun", "/dev/sda"),
        (
            "lun random GUID",
            "lun",
            "0b8c1f5e-2a33-4c0e-9d7a-5e9c1a2b3c4d",
        ),
    ] {
        out.push((what.into(), one(k, v), k.into()));
    }
    out.push((
        "lun of a LUN not in the pool".into(),
        one("lun", foreign_lun.to_str().unwrap()),
        "lun".into(),
    ));
    // Journals mkfs could not write within its time limit: refused before
    // any partition is made, instead of mkfs killed and retried forever.
    out.push((
        "nodeSlots 255 x journalSize 1Gi".into(),
        HashMap::from([
            ("nodeSlots".to_string(), "255".to_string()),
            ("journalSize".to_string(), "1Gi".to_string()),
        ]),
        "nodeSlots".into(),
    ));
    out.push((
        "three good values and nodeSlots x".into(),
        HashMap::from([
            ("clusterSize".to_string(), "4K".to_string()),
            ("blockSize".to_string(), "4K".to_string()),
            ("journalSize".to_string(), "1Gi".to_string()),
            ("nodeSlots".to_string(), "x".to_string()),
        ]),
        "nodeSlots".into(),
    ));
    for (i, payload) in shell_payloads(tag).into_iter().enumerate() {
        out.push((
            format!("unknown name = shell #{i}"),
            one(&payload, "1"),
            "unknown parameter".into(),
        ));
    }
    for (what, key) in [
        ("unknown name of 1 MB", "k".repeat(HUGE)),
        ("unknown name color", "color".to_string()),
        ("known name, other case", "NODESLOTS".to_string()),
        ("known name with NUL", "nodeSlots\0".to_string()),
        ("known name + space", "nodeSlots ".to_string()),
        ("path traversal name", "../../etc/passwd".to_string()),
    ] {
        out.push((what.into(), one(&key, "4"), "unknown parameter".into()));
    }
    out
}

/// Volume IDs that name no volume of this controller: malformed, traversal,
/// /dev paths, NUL, a real ID misspelt, other LUNs, the heartbeat partition.
fn foreign_ids(lun_guid: &str, real: &str, hb_guid: &str) -> Vec<(String, String)> {
    let random = "6f1d3b52-8e0a-4f7c-b1d2-3a4b5c6d7e8f";
    let partition = real.rsplit(':').next().unwrap();
    vec![
        ("path traversal".into(), "../../etc/passwd".into()),
        (
            "traversal with our prefix".into(),
            "ocfs2-v1:../../etc:passwd".into(),
        ),
        ("/dev path".into(), "/dev/sda".into()),
        ("/dev/loop path".into(), "/dev/loop0".into()),
        (
            "our prefix with /dev paths".into(),
            "ocfs2-v1:/dev/sda:/dev/sdb1".into(),
        ),
        ("1 MB ID".into(), "i".repeat(HUGE)),
        (
            "1 MB ID with our prefix".into(),
            format!("{real}{}", "0".repeat(HUGE)),
        ),
        ("NUL after a real ID".into(), format!("{real}\0")),
        ("NUL inside".into(), real.replacen(':', "\0", 1)),
        ("escapes".into(), "\\xff\\xfe\\x00%00%2e%2e".into()),
        ("replacement chars".into(), "\u{fffd}\u{fffd}".into()),
        ("real ID in upper case".into(), real.to_uppercase()),
        ("real ID + ':x'".into(), format!("{real}:x")),
        ("real ID + space".into(), format!("{real} ")),
        (
            "other LUN, real partition".into(),
            format!("ocfs2-v1:{random}:{partition}"),
        ),
        (
            "our LUN, wrong partition GUID".into(),
            format!("ocfs2-v1:{lun_guid}:{random}"),
        ),
        (
            "other prefix".into(),
            format!("ocfs2-v2:{lun_guid}:{partition}"),
        ),
        (
            "LUN and partition swapped".into(),
            format!("ocfs2-v1:{partition}:{lun_guid}"),
        ),
        (
            "our LUN, nil partition".into(),
            format!("ocfs2-v1:{lun_guid}:00000000-0000-0000-0000-000000000000"),
        ),
        (
            "heartbeat partition".into(),
            format!("ocfs2-v1:{lun_guid}:{hb_guid}"),
        ),
    ]
}

/// Junk secrets (the driver needs none; they must change nothing).
fn junk_secrets(tag: &str) -> HashMap<String, String> {
    let mut s = HashMap::new();
    for (i, p) in shell_payloads(tag).into_iter().enumerate() {
        s.insert(format!("k{i}"), p.clone());
        s.insert(p, "v".into());
    }
    s.insert("big".into(), "s".repeat(HUGE / 2));
    s.insert("nul\0key".into(), "nul\0value".into());
    s
}

// Raw wire messages with `bytes` where CSI has `string`, to send what a Rust
// String cannot hold: invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawEntry {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Field 1 as bytes and field 4 as a string map: CreateVolumeRequest's name
/// and parameters, or DeleteVolume/ControllerGetVolume's volume_id.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    #[prost(bytes = "vec", tag = "1")]
    first: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    map4: Vec<RawEntry>,
}

/// The token (field 2) of ListVolumesRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct RawToken {
    #[prost(bytes = "vec", tag = "2")]
    token: Vec<u8>,
}

async fn raw_call<M: prost::Message + Send + Sync + 'static>(
    url: String,
    path: &'static str,
    msg: M,
) -> Reply {
    let channel = Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<M, RawRequest> = tonic_prost::ProstCodec::default();
    grpc.unary(
        Request::new(msg),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|_| Ok(String::new()))
}

struct Battery {
    cases: Vec<Case>,
}

impl Battery {
    fn add(
        &mut self,
        rpc: &'static str,
        what: impl Into<String>,
        expect: Code,
        keyword: &'static str,
        call: impl Future<Output = Reply> + Send + 'static,
    ) {
        self.cases.push(Case {
            rpc,
            what: what.into(),
            expect,
            keyword,
            call: Box::pin(call),
        });
    }
}

/// Files a payload would have created.
fn pwned_files(tag: &str) -> Vec<String> {
    let prefix = format!("pwned-{tag}");
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(160).collect();
    if out.len() < s.len() {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

async fn all_volumes(c: &mut ControllerClient<Channel>) -> BTreeMap<String, i64> {
    c.list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| {
            let v = e.volume.unwrap();
            (v.volume_id, v.capacity_bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_input_and_changes_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 8 * GIB);
    let foreign = sparse_lun(dir.path(), "foreign.raw", 64 * MIB);
    let mut ctl = Controller::start(std::slice::from_ref(&lun), dir.path()).await;
    let url = ctl.url();
    let mut c = ctl.client().await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("{}-{nanos}", std::process::id());

    // Real volumes first; one of them named with shell metacharacters, so
    // the hostile name goes all the way to mkfs.ocfs2 (as its label).
    let hostile_name =
        format!("pvc-$(touch /tmp/pwned-{tag}-n1)`touch /tmp/pwned-{tag}-n2`;x|y&z>w");
    assert!(hostile_name.len() <= 128, "{}", hostile_name.len());
    let mut made = Vec::new();
    for (name, bytes, params) in [
        ("keep-global", GIB, vec![]),
        (
            "keep-local",
            256 * MIB,
            vec![("heartbeat", "local"), ("nodeSlots", "2")],
        ),
        (hostile_name.as_str(), 256 * MIB, vec![("nodeSlots", "2")]),
    ] {
        let mut r = create_request(name, bytes);
        r.parameters = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let v = c
            .create_volume(r)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        made.push((name.to_string(), bytes, v));
    }
    let (_, keep_bytes, keep) = made[0].clone();
    let keep_params: HashMap<String, String> = HashMap::new();
    let real = keep.volume_id.clone();
    let lun_guid = keep.volume_context["lunGuid"].clone();
    let hb_guid = partitions(&lun)
        .into_iter()
        .find(|p| p.number == 1)
        .expect("heartbeat partition")
        .guid;
    assert!(pwned_files(&tag).is_empty(), "{:?}", pwned_files(&tag));

    let volumes_before = all_volumes(&mut c).await;
    assert_eq!(volumes_before.len(), 3, "{volumes_before:?}");
    let table_before = table_bytes(&lun);
    let meta_before = std::fs::metadata(&lun).unwrap();
    let parts_before = format!("{:?}", partitions(&lun));

    // Every case on its own connection: one that breaks its connection
    // must not fail the next.
    let fresh = || ControllerClient::new(Channel::from_shared(url.clone()).unwrap().connect_lazy());
    let mut b = Battery { cases: Vec::new() };
    let bad_caps = bad_capabilities();
    let bad_params = bad_parameters(&tag, &foreign);
    let ids = foreign_ids(&lun_guid, &real, &hb_guid);

    // ---- Identity: nothing to misuse; they must answer.
    let id = IdentityClient::connect(url.clone()).await.unwrap();
    {
        let mut id = id.clone();
        b.add("GetPluginInfo", "answers", Code::Ok, "", async move {
            let r = id.get_plugin_info(GetPluginInfoRequest {}).await?;
            let r = r.into_inner();
            Ok(if r.name.is_empty() || r.vendor_version.is_empty() {
                Err(format!("empty name or version: {r:?}"))
            } else {
                Ok(r.name)
            })
        });
    }
    {
        let mut id = id.clone();
        b.add(
            "GetPluginCapabilities",
            "answers",
            Code::Ok,
            "",
            async move {
                let caps = id
                    .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
                    .await?
                    .into_inner()
                    .capabilities;
                let controller = caps
                    .iter()
                    .any(|c| matches!(&c.r#type, Some(PluginCapType::Service(s)) if s.r#type == 1));
                Ok(if controller {
                    Ok(String::new())
                } else {
                    Err(format!("no CONTROLLER_SERVICE in {caps:?}"))
                })
            },
        );
    }
    {
        let mut id = id.clone();
        b.add("Probe", "answers ready", Code::Ok, "", async move {
            let r = id.probe(ProbeRequest {}).await?.into_inner();
            Ok(if r.ready == Some(true) {
                Ok(String::new())
            } else {
                Err(format!("not ready: {r:?}"))
            })
        });
    }

    // ---- CreateVolume.
    let create_with = |f: &dyn Fn(&mut CreateVolumeRequest)| {
        let mut r = create_request("bad-input", GIB);
        f(&mut r);
        r
    };
    let mut creates: Vec<(String, CreateVolumeRequest, Code, &'static str)> = vec![
        (
            "empty name".into(),
            create_with(&|r| r.name.clear()),
            Code::InvalidArgument,
            "name",
        ),
        (
            "name of 1 MB".into(),
            create_with(&|r| r.name = "n".repeat(HUGE)),
            Code::InvalidArgument,
            "name",
        ),
        (
            "name of 129 bytes".into(),
            create_with(&|r| r.name = "n".repeat(129)),
            Code::InvalidArgument,
            "name",
        ),
        (
            "name with NUL".into(),
            create_with(&|r| r.name = "pvc-\0-x".into()),
            Code::InvalidArgument,
            "control",
        ),
        (
            "name with newline + shell".into(),
            create_with(&|r| r.name = format!("pvc\n$(touch /tmp/pwned-{tag}-cn)")),
            Code::InvalidArgument,
            "control",
        ),
        (
            "name with DEL".into(),
            create_with(&|r| r.name = "pvc\u{7f}".into()),
            Code::InvalidArgument,
            "control",
        ),
        (
            "required -1".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = -1),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "required i64::MIN".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = i64::MIN),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "limit -1".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().limit_bytes = -1),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "required > limit".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().limit_bytes = MIB as i64),
            Code::OutOfRange,
            "limit_bytes",
        ),
        (
            "no whole MiB between required and limit".into(),
            create_with(&|r| {
                r.capacity_range = Some(CapacityRange {
                    required_bytes: MIB as i64 + 1,
                    limit_bytes: MIB as i64 + 100,
                })
            }),
            Code::OutOfRange,
            "MiB",
        ),
        (
            "required i64::MAX".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = i64::MAX),
            Code::OutOfRange,
            "bytes",
        ),
        (
            "required i64::MAX, limit i64::MAX".into(),
            create_with(&|r| {
                r.capacity_range = Some(CapacityRange {
                    required_bytes: i64::MAX,
                    limit_bytes: i64::MAX,
                })
            }),
            Code::OutOfRange,
            "bytes",
        ),
        (
            "bigger than the LUN".into(),
            create_with(&|r| r.capacity_range.as_mut().unwrap().required_bytes = (64 * GIB) as i64),
            Code::OutOfRange,
            "bytes",
        ),
        (
            "snapshot content source".into(),
            create_with(&|r| {
                r.volume_content_source = Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Snapshot(
                        volume_content_source::SnapshotSource {
                            snapshot_id: "../../etc/passwd".into(),
                        },
                    )),
                })
            }),
            Code::NotFound,
            "does not exist",
        ),
        (
            "clone of a volume that does not exist".into(),
            create_with(&|r| {
                r.volume_content_source = Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Volume(
                        volume_content_source::VolumeSource {
                            volume_id: format!("{lun_guid}:{}", uuid::Uuid::nil()),
                        },
                    )),
                })
            }),
            Code::NotFound,
            "source",
        ),
        (
            "clone of a filesystem volume as block".into(),
            create_with(&|r| {
                r.volume_capabilities = vec![VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: Some(AccessMode {
                        mode: Mode::MultiNodeMultiWriter as i32,
                    }),
                }];
                r.volume_content_source = Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Volume(
                        volume_content_source::VolumeSource {
                            volume_id: real.clone(),
                        },
                    )),
                })
            }),
            Code::InvalidArgument,
            "filesystem",
        ),
        (
            "journal under nine clusters".into(),
            create_with(&|r| {
                r.parameters = HashMap::from([
                    ("clusterSize".to_string(), "1M".to_string()),
                    ("journalSize".to_string(), "8Mi".to_string()),
                ])
            }),
            Code::InvalidArgument,
            "journalSize",
        ),
        (
            "existing name, bigger".into(),
            {
                let mut r = create_request("keep-global", 2 * keep_bytes);
                r.parameters = keep_params.clone();
                r
            },
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "existing name, limit below its size".into(),
            {
                let mut r = create_request("keep-global", 0);
                r.capacity_range.as_mut().unwrap().limit_bytes = (keep_bytes / 2) as i64;
                r
            },
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "existing name, other slots".into(),
            {
                let mut r = create_request("keep-global", keep_bytes);
                r.parameters.insert("nodeSlots".into(), "3".into());
                r
            },
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "existing name, other heartbeat".into(),
            {
                let mut r = create_request("keep-global", keep_bytes);
                r.parameters.insert("heartbeat".into(), "local".into());
                r
            },
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "existing name, block".into(),
            {
                let mut r = create_request("keep-global", keep_bytes);
                r.volume_capabilities = vec![mode_cap(block(), Some(MNMW))];
                r
            },
            Code::AlreadyExists,
            "it is a filesystem volume",
        ),
    ];
    for (what, caps, kw) in bad_caps.clone() {
        creates.push((
            format!("capabilities: {what}"),
            create_with(&|r| r.volume_capabilities = caps.clone()),
            Code::InvalidArgument,
            kw,
        ));
    }
    for (what, params, kw) in &bad_params {
        let kw: &'static str = Box::leak(kw.clone().into_boxed_str());
        // Hostile names too: valid names, refused for their parameters, so
        // they never reach a tool.
        let name = format!("{}-{}", short(what).replace(' ', "-"), tag);
        let name = if name.len() > 100 {
            format!("p-{tag}")
        } else {
            name
        };
        creates.push((
            format!("parameters: {what}"),
            create_with(&|r| {
                r.name = format!("../../etc/{name}");
                r.parameters = params.clone();
                r.secrets = HashMap::from([("x".to_string(), "$(reboot)".to_string())]);
            }),
            Code::InvalidArgument,
            kw,
        ));
    }
    for (what, req, code, kw) in creates {
        let mut c = fresh();
        b.add("CreateVolume", what, code, kw, async move {
            ok_empty(c.create_volume(req).await)
        });
    }
    // An exact retry with junk secrets: the same volume, nothing new.
    {
        let mut c = fresh();
        let mut r = create_request("keep-global", keep_bytes);
        r.secrets = junk_secrets(&tag);
        let want = real.clone();
        b.add(
            "CreateVolume",
            "retry of a real volume with junk secrets",
            Code::Ok,
            "",
            async move {
                let v = c.create_volume(r).await?.into_inner().volume.unwrap();
                Ok(if v.volume_id == want {
                    Ok(String::new())
                } else {
                    Err(format!("another volume: {}", v.volume_id))
                })
            },
        );
    }
    // Invalid UTF-8 where CSI has strings: the message cannot be decoded.
    for (what, msg) in [
        (
            "name not UTF-8",
            RawRequest {
                first: vec![b'p', 0xff, 0xfe, b'x'],
                map4: vec![],
            },
        ),
        (
            "parameter name not UTF-8",
            RawRequest {
                first: b"bad-utf8".to_vec(),
                map4: vec![RawEntry {
                    key: vec![0xc3, 0x28],
                    value: b"4".to_vec(),
                }],
            },
        ),
        (
            "parameter value not UTF-8",
            RawRequest {
                first: b"bad-utf8".to_vec(),
                map4: vec![RawEntry {
                    key: b"nodeSlots".to_vec(),
                    value: vec![0x34, 0x80],
                }],
            },
        ),
    ] {
        // Malformed protobuf: gRPC's answer is Internal ("error
        // unmarshalling request"), before the driver sees anything.
        b.add(
            "CreateVolume",
            what,
            Code::Internal,
            "utf-8",
            raw_call(url.clone(), "/csi.v1.Controller/CreateVolume", msg),
        );
    }

    // ---- DeleteVolume: an ID naming no volume is a no-op (OK), never a
    // deletion of something else; the heartbeat partition is refused.
    {
        let mut c = fresh();
        b.add(
            "DeleteVolume",
            "empty ID",
            Code::InvalidArgument,
            "volume_id",
            async move { ok_empty(c.delete_volume(delete_request("")).await) },
        );
    }
    for (what, vid) in &ids {
        let mut c = fresh();
        let (code, kw) = if what == "heartbeat partition" {
            (Code::InvalidArgument, "not a volume")
        } else {
            (Code::Ok, "")
        };
        let mut req = delete_request(vid);
        req.secrets = HashMap::from([("k".to_string(), format!("`touch /tmp/pwned-{tag}-ds`"))]);
        b.add("DeleteVolume", what.clone(), code, kw, async move {
            ok_empty(c.delete_volume(req).await)
        });
    }
    {
        let mut c = fresh();
        let mut req = delete_request(&format!("ocfs2-v1:{lun_guid}:{}", uuid::Uuid::new_v4()));
        req.secrets = junk_secrets(&tag);
        b.add(
            "DeleteVolume",
            "absent volume, junk secrets",
            Code::Ok,
            "",
            async move { ok_empty(c.delete_volume(req).await) },
        );
    }
    b.add(
        "DeleteVolume",
        "ID not UTF-8",
        Code::Internal,
        "utf-8",
        raw_call(
            url.clone(),
            "/csi.v1.Controller/DeleteVolume",
            RawRequest {
                first: [real.as_bytes(), &[0xff]].concat(),
                map4: vec![],
            },
        ),
    );

    // ---- ControllerPublish/Unpublish: not offered (no PUBLISH_UNPUBLISH).
    for (what, vid, node, readonly, cap) in [
        (
            "real volume, multi-node writer on a read-only request",
            real.clone(),
            "node1".to_string(),
            true,
            Some(mode_cap(mount(), Some(MNMW))),
        ),
        (
            "traversal IDs",
            "../../etc/passwd".into(),
            "../../etc/shadow".into(),
            false,
            None,
        ),
        (
            "1 MB IDs",
            "v".repeat(HUGE),
            "n".repeat(HUGE / 2),
            false,
            Some(mode_cap(block(), Some(99))),
        ),
        ("empty", String::new(), String::new(), false, None),
    ] {
        let mut c1 = fresh();
        let req = ControllerPublishVolumeRequest {
            volume_id: vid.clone(),
            node_id: node.clone(),
            volume_capability: cap,
            readonly,
            secrets: junk_secrets(&tag),
            volume_context: HashMap::from([("k".into(), "$(reboot)".into())]),
        };
        b.add(
            "ControllerPublishVolume",
            what,
            Code::Unimplemented,
            "not supported",
            async move { ok_empty(c1.controller_publish_volume(req).await) },
        );
        let mut c2 = fresh();
        let req = ControllerUnpublishVolumeRequest {
            volume_id: vid,
            node_id: node,
            secrets: HashMap::new(),
        };
        b.add(
            "ControllerUnpublishVolume",
            what,
            Code::Unimplemented,
            "not supported",
            async move { ok_empty(c2.controller_unpublish_volume(req).await) },
        );
    }

    // ---- ValidateVolumeCapabilities.
    let validate = |vid: &str, caps: Vec<VolumeCapability>, params: HashMap<String, String>| {
        ValidateVolumeCapabilitiesRequest {
            volume_id: vid.into(),
            volume_capabilities: caps,
            parameters: params,
            ..Default::default()
        }
    };
    let good_caps = vec![mode_cap(mount(), Some(MNMW))];
    let mut validates: Vec<(
        String,
        ValidateVolumeCapabilitiesRequest,
        Code,
        &'static str,
    )> = vec![
        (
            "empty ID".into(),
            validate("", good_caps.clone(), HashMap::new()),
            Code::InvalidArgument,
            "volume_id",
        ),
        (
            "real volume, no capabilities".into(),
            validate(&real, vec![], HashMap::new()),
            Code::InvalidArgument,
            "volume_capabilities",
        ),
    ];
    for (what, vid) in &ids {
        validates.push((
            format!("ID: {what}"),
            validate(vid, good_caps.clone(), HashMap::new()),
            Code::NotFound,
            "does not exist",
        ));
    }
    for (what, req, code, kw) in validates {
        let mut c = fresh();
        b.add("ValidateVolumeCapabilities", what, code, kw, async move {
            ok_empty(c.validate_volume_capabilities(req).await)
        });
    }
    // Answers (OK) that must not confirm: capabilities or parameters the
    // driver cannot serve, including mount flags the node plugin refuses.
    let mut unconfirmed: Vec<Unconfirmed> = Vec::new();
    for (what, caps, kw) in bad_caps.iter().skip(1) {
        unconfirmed.push((
            format!("capabilities: {what}"),
            caps.clone(),
            HashMap::new(),
            kw.to_string(),
        ));
    }
    // A filesystem volume is not a block volume.
    unconfirmed.push((
        "capabilities: block access to a filesystem volume".into(),
        vec![mode_cap(block(), Some(MNMW))],
        HashMap::new(),
        "filesystem volume".into(),
    ));
    for (what, params, kw) in bad_params.iter().filter(|(_, p, _)| !p.contains_key("lun")) {
        unconfirmed.push((
            format!("parameters: {what}"),
            good_caps.clone(),
            params.clone(),
            kw.clone(),
        ));
    }
    for flag in [
        "nocluster".to_string(),
        "heartbeat=none".to_string(),
        "localflocks".to_string(),
        format!("$(touch /tmp/pwned-{tag}-vf)"),
        "noatime;reboot".to_string(),
        "f".repeat(HUGE),
        // Volumes are always mounted nodev,nosuid.
        "suid".to_string(),
        "dev".to_string(),
    ] {
        unconfirmed.push((
            format!("mount flag {}", short(&flag)),
            vec![mount_flags(&[&flag])],
            HashMap::new(),
            "mount flag".into(),
        ));
    }
    for (what, caps, params, kw) in unconfirmed {
        let mut c = fresh();
        let req = validate(&real, caps, params);
        let kw: &'static str = Box::leak(kw.into_boxed_str());
        b.add(
            "ValidateVolumeCapabilities",
            format!("unconfirmed {what}"),
            Code::Ok,
            kw,
            async move {
                let r = c.validate_volume_capabilities(req).await?.into_inner();
                Ok(if r.confirmed.is_some() {
                    Err("confirmed what the driver cannot serve".into())
                } else {
                    Ok(r.message)
                })
            },
        );
    }
    {
        let mut c = fresh();
        let mut req = validate(&real, good_caps.clone(), HashMap::new());
        req.secrets = junk_secrets(&tag);
        req.volume_context = HashMap::from([
            ("fsUuid".to_string(), "$(reboot)".to_string()),
            ("big".to_string(), "c".repeat(HUGE / 2)),
        ]);
        b.add(
            "ValidateVolumeCapabilities",
            "good request with junk secrets and context",
            Code::Ok,
            "",
            async move {
                let r = c.validate_volume_capabilities(req).await?.into_inner();
                Ok(if r.confirmed.is_some() {
                    Ok(String::new())
                } else {
                    Err(format!("not confirmed: {}", r.message))
                })
            },
        );
    }

    // ---- ListVolumes.
    for (what, max, token, code, kw) in [
        (
            "max_entries -1",
            -1,
            String::new(),
            Code::InvalidArgument,
            "max_entries",
        ),
        (
            "max_entries i32::MIN",
            i32::MIN,
            String::new(),
            Code::InvalidArgument,
            "max_entries",
        ),
        (
            "token zzz",
            0,
            "zzz".to_string(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token traversal",
            0,
            "../../etc/passwd".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token -1.2",
            0,
            "-1.2".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token 1.2.3",
            0,
            "1.2.3".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token overflow",
            0,
            "99999999999.1".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token with NUL",
            0,
            "0.2\0".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token fullwidth digits",
            0,
            "\u{ff10}.\u{ff12}".into(),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token shell",
            0,
            format!("$(touch /tmp/pwned-{tag}-lt)"),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token of 1 MB",
            0,
            "9".repeat(HUGE),
            Code::Aborted,
            "starting_token",
        ),
        (
            "token of 1 MB, dotted",
            0,
            format!("0.{}", "1".repeat(HUGE)),
            Code::Aborted,
            "starting_token",
        ),
        (
            "negative max and bad token",
            -5,
            "zzz".into(),
            Code::InvalidArgument,
            "max_entries",
        ),
    ] {
        let mut c = fresh();
        b.add("ListVolumes", what, code, kw, async move {
            ok_empty(
                c.list_volumes(ListVolumesRequest {
                    max_entries: max,
                    starting_token: token,
                })
                .await,
            )
        });
    }
    {
        let mut c = fresh();
        b.add(
            "ListVolumes",
            "max_entries i32::MAX",
            Code::Ok,
            "",
            async move {
                let r = c
                    .list_volumes(ListVolumesRequest {
                        max_entries: i32::MAX,
                        starting_token: String::new(),
                    })
                    .await?
                    .into_inner();
                Ok(if r.entries.len() == 3 && r.next_token.is_empty() {
                    Ok(String::new())
                } else {
                    Err(format!(
                        "{} entries, token {:?}",
                        r.entries.len(),
                        r.next_token
                    ))
                })
            },
        );
    }
    b.add(
        "ListVolumes",
        "token not UTF-8",
        Code::Internal,
        "utf-8",
        raw_call(
            url.clone(),
            "/csi.v1.Controller/ListVolumes",
            RawToken {
                token: vec![b'0', b'.', 0xff],
            },
        ),
    );

    // ---- GetCapacity: bad parameters are refused; capabilities the driver
    // cannot serve have no capacity (the spec's answer: 0, not an error).
    for (what, params, kw) in bad_params.iter().filter(|(_, p, _)| !p.contains_key("lun")) {
        let mut c = fresh();
        let kw: &'static str = Box::leak(kw.clone().into_boxed_str());
        let req = GetCapacityRequest {
            parameters: params.clone(),
            ..Default::default()
        };
        b.add(
            "GetCapacity",
            format!("parameters: {what}"),
            Code::InvalidArgument,
            kw,
            async move { ok_empty(c.get_capacity(req).await) },
        );
    }
    for (what, params, _) in bad_params.iter().filter(|(_, p, _)| p.contains_key("lun")) {
        let mut c = fresh();
        let req = GetCapacityRequest {
            parameters: params.clone(),
            ..Default::default()
        };
        // An empty or NUL-holding lun is malformed; a well-formed one that
        // names no LUN of the pool has no capacity.
        let malformed =
            params["lun"].is_empty() || params["lun"].contains('\0') || params["lun"].len() > 4096;
        if malformed {
            b.add(
                "GetCapacity",
                format!("parameters: {what}"),
                Code::InvalidArgument,
                "lun",
                async move { ok_empty(c.get_capacity(req).await) },
            );
        } else {
            b.add(
                "GetCapacity",
                format!("parameters: {what}"),
                Code::Ok,
                "",
                async move {
                    let r = c.get_capacity(req).await?.into_inner();
                    Ok(if r.available_capacity == 0 {
                        Ok(String::new())
                    } else {
                        Err(format!(
                            "capacity {} on a LUN that is not there",
                            r.available_capacity
                        ))
                    })
                },
            );
        }
    }
    for (what, caps, _) in bad_caps.iter().skip(1) {
        let mut c = fresh();
        let req = GetCapacityRequest {
            volume_capabilities: caps.clone(),
            ..Default::default()
        };
        b.add(
            "GetCapacity",
            format!("capabilities: {what}"),
            Code::Ok,
            "",
            async move {
                let r = c.get_capacity(req).await?.into_inner();
                Ok(if r.available_capacity == 0 {
                    Ok(String::new())
                } else {
                    Err(format!(
                        "capacity {} for what cannot be served",
                        r.available_capacity
                    ))
                })
            },
        );
    }
    {
        let mut c = fresh();
        b.add("GetCapacity", "plain request", Code::Ok, "", async move {
            let r = c
                .get_capacity(GetCapacityRequest::default())
                .await?
                .into_inner();
            Ok(if r.available_capacity > GIB as i64 {
                Ok(String::new())
            } else {
                Err(format!("{r:?}"))
            })
        });
    }

    // ---- ControllerGetCapabilities: nothing to misuse.
    {
        let mut c = fresh();
        b.add(
            "ControllerGetCapabilities",
            "answers",
            Code::Ok,
            "",
            async move {
                let caps = c
                    .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
                    .await?
                    .into_inner()
                    .capabilities;
                let rpcs: Vec<i32> = caps
                    .iter()
                    .filter_map(|c| match &c.r#type {
                        Some(CapType::Rpc(r)) => Some(r.r#type),
                        _ => None,
                    })
                    .collect();
                // Volumes, clones and snapshots, and never what it answers
                // Unimplemented.
                let never = [RpcType::PublishUnpublishVolume, RpcType::ModifyVolume];
                let offered = [
                    RpcType::CreateDeleteVolume,
                    RpcType::CloneVolume,
                    RpcType::CreateDeleteSnapshot,
                    RpcType::ListSnapshots,
                ];
                let advertised = |t: RpcType| rpcs.contains(&(t as i32));
                Ok(
                    if offered.into_iter().all(advertised) && !never.into_iter().any(advertised) {
                        Ok(String::new())
                    } else {
                        Err(format!("capabilities {rpcs:?}"))
                    },
                )
            },
        );
    }

    // ---- Snapshots (GetSnapshot and ModifyVolume: not offered).
    let snapshot_ids = [
        ("traversal".to_string(), "../../etc/passwd".to_string()),
        ("1 MB".to_string(), "s".repeat(HUGE)),
        ("real volume".to_string(), real.clone()),
    ];
    for (what, sid) in &snapshot_ids {
        let (mut c1, mut c2, mut c3, mut c4, mut c5) =
            (fresh(), fresh(), fresh(), fresh(), fresh());
        let create = CreateSnapshotRequest {
            source_volume_id: sid.clone(),
            name: format!("$(touch /tmp/pwned-{tag}-snap)"),
            secrets: junk_secrets(&tag),
            parameters: HashMap::from([("nodeSlots".into(), "4;reboot".into())]),
        };
        b.add(
            "CreateSnapshot",
            format!("{what}, with a parameter"),
            Code::InvalidArgument,
            "no parameters",
            async move { ok_empty(c1.create_snapshot(create).await) },
        );
        if *what != "real volume" {
            let mut c = fresh();
            let create = CreateSnapshotRequest {
                source_volume_id: sid.clone(),
                name: format!("$(touch /tmp/pwned-{tag}-snap)"),
                secrets: junk_secrets(&tag),
                parameters: HashMap::new(),
            };
            b.add(
                "CreateSnapshot",
                what.clone(),
                Code::NotFound,
                "does not exist",
                async move { ok_empty(c.create_snapshot(create).await) },
            );
        }
        let mut c = fresh();
        let list = ListSnapshotsRequest {
            max_entries: 0,
            starting_token: sid.clone(),
            ..Default::default()
        };
        b.add(
            "ListSnapshots",
            format!("{what} as the token"),
            Code::Aborted,
            "starting_token",
            async move { ok_empty(c.list_snapshots(list).await) },
        );
        let delete = DeleteSnapshotRequest {
            snapshot_id: sid.clone(),
            secrets: HashMap::new(),
        };
        // Not a snapshot ID of ours: nothing to delete, done.
        b.add("DeleteSnapshot", what.clone(), Code::Ok, "", async move {
            ok_empty(c2.delete_snapshot(delete).await)
        });
        let list = ListSnapshotsRequest {
            max_entries: -1,
            starting_token: sid.clone(),
            source_volume_id: sid.clone(),
            snapshot_id: sid.clone(),
            secrets: HashMap::new(),
        };
        b.add(
            "ListSnapshots",
            what.clone(),
            Code::InvalidArgument,
            "max_entries",
            async move { ok_empty(c3.list_snapshots(list).await) },
        );
        let get = GetSnapshotRequest {
            snapshot_id: sid.clone(),
            secrets: HashMap::new(),
        };
        b.add(
            "GetSnapshot",
            what.clone(),
            Code::Unimplemented,
            "not supported",
            async move { ok_empty(c4.get_snapshot(get).await) },
        );
        let modify = ControllerModifyVolumeRequest {
            volume_id: sid.clone(),
            secrets: junk_secrets(&tag),
            mutable_parameters: HashMap::from([
                ("nodeSlots".into(), format!("$(touch /tmp/pwned-{tag}-mod)")),
                ("k".repeat(1000), "v".into()),
            ]),
        };
        b.add(
            "ControllerModifyVolume",
            what.clone(),
            Code::Unimplemented,
            "not supported",
            async move { ok_empty(c5.controller_modify_volume(modify).await) },
        );
    }

    // ---- ControllerExpandVolume.
    let expand = |vid: &str, required: i64, limit: i64| ControllerExpandVolumeRequest {
        volume_id: vid.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..Default::default()
    };
    let mut expands: Vec<(String, ControllerExpandVolumeRequest, Code, &'static str)> = vec![
        (
            "empty ID".into(),
            expand("", GIB as i64, 0),
            Code::InvalidArgument,
            "volume_id",
        ),
        (
            "required -1".into(),
            expand(&real, -1, 0),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "required i64::MIN".into(),
            expand(&real, i64::MIN, 0),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "limit -1".into(),
            expand(&real, 2 * GIB as i64, -1),
            Code::InvalidArgument,
            "negative",
        ),
        (
            "required > limit".into(),
            expand(&real, 2 * GIB as i64, GIB as i64),
            Code::OutOfRange,
            "limit_bytes",
        ),
        (
            "required i64::MAX".into(),
            expand(&real, i64::MAX, 0),
            Code::OutOfRange,
            "at most",
        ),
        (
            "required and limit i64::MAX".into(),
            expand(&real, i64::MAX, i64::MAX),
            Code::OutOfRange,
            "at most",
        ),
        (
            "bigger than the LUN".into(),
            expand(&real, (64 * GIB) as i64, 0),
            Code::OutOfRange,
            "at most",
        ),
        (
            // The spec: capacity_range is REQUIRED.
            "no capacity_range".into(),
            ControllerExpandVolumeRequest {
                volume_id: real.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "capacity_range",
        ),
    ];
    for (what, caps, kw) in bad_caps.iter().skip(1).filter(|(_, c, _)| c.len() == 1) {
        let mut r = expand(&real, 2 * GIB as i64, 0);
        r.volume_capability = Some(caps[0].clone());
        expands.push((format!("capability: {what}"), r, Code::InvalidArgument, kw));
    }
    let mut r = expand(&real, 2 * GIB as i64, 0);
    r.volume_capability = Some(mode_cap(block(), Some(MNMW)));
    expands.push((
        "capability: block access to a filesystem volume".into(),
        r,
        Code::InvalidArgument,
        "filesystem volume",
    ));
    for (what, vid) in &ids {
        expands.push((
            format!("ID: {what}"),
            expand(vid, 2 * GIB as i64, 0),
            Code::NotFound,
            "does not exist",
        ));
    }
    for (what, req, code, kw) in expands {
        let mut c = fresh();
        b.add("ControllerExpandVolume", what, code, kw, async move {
            ok_empty(c.controller_expand_volume(req).await)
        });
    }
    {
        // Smaller than it is, with junk secrets: OK, its size, no change.
        let mut c = fresh();
        let mut req = expand(&real, MIB as i64, 0);
        req.secrets = junk_secrets(&tag);
        let have = keep.capacity_bytes;
        b.add(
            "ControllerExpandVolume",
            "smaller than it is, junk secrets",
            Code::Ok,
            "",
            async move {
                let r = c.controller_expand_volume(req).await?.into_inner();
                Ok(if r.capacity_bytes == have {
                    Ok(String::new())
                } else {
                    Err(format!("capacity {} (was {have})", r.capacity_bytes))
                })
            },
        );
    }

    // ---- ControllerGetVolume.
    {
        let mut c = fresh();
        b.add(
            "ControllerGetVolume",
            "empty ID",
            Code::InvalidArgument,
            "volume_id",
            async move {
                ok_empty(
                    c.controller_get_volume(ControllerGetVolumeRequest {
                        volume_id: String::new(),
                    })
                    .await,
                )
            },
        );
    }
    for (what, vid) in &ids {
        let mut c = fresh();
        let req = ControllerGetVolumeRequest {
            volume_id: vid.clone(),
        };
        b.add(
            "ControllerGetVolume",
            what.clone(),
            Code::NotFound,
            "does not exist",
            async move { ok_empty(c.controller_get_volume(req).await) },
        );
    }
    b.add(
        "ControllerGetVolume",
        "ID not UTF-8",
        Code::Internal,
        "utf-8",
        raw_call(
            url.clone(),
            "/csi.v1.Controller/ControllerGetVolume",
            RawRequest {
                first: vec![0xed, 0xa0, 0x80],
                map4: vec![],
            },
        ),
    );

    // ---- Services the controller does not serve: Unimplemented.
    let group = GroupControllerClient::connect(url.clone()).await.unwrap();
    {
        let mut g = group.clone();
        b.add(
            "GroupControllerGetCapabilities",
            "answers",
            Code::Unimplemented,
            "",
            async move {
                ok_empty(
                    g.group_controller_get_capabilities(GroupControllerGetCapabilitiesRequest {})
                        .await,
                )
            },
        );
        let mut g = group.clone();
        let req = CreateVolumeGroupSnapshotRequest {
            name: format!("$(touch /tmp/pwned-{tag}-gs)"),
            source_volume_ids: vec![real.clone(), "../../etc/passwd".into()],
            secrets: junk_secrets(&tag),
            parameters: HashMap::new(),
        };
        b.add(
            "CreateVolumeGroupSnapshot",
            "hostile",
            Code::Unimplemented,
            "",
            async move { ok_empty(g.create_volume_group_snapshot(req).await) },
        );
        let mut g = group.clone();
        let req = DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "g".repeat(HUGE),
            snapshot_ids: vec![real.clone()],
            secrets: HashMap::new(),
        };
        b.add(
            "DeleteVolumeGroupSnapshot",
            "hostile",
            Code::Unimplemented,
            "",
            async move { ok_empty(g.delete_volume_group_snapshot(req).await) },
        );
        let mut g = group.clone();
        let req = GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "../../etc/passwd".into(),
            snapshot_ids: vec![],
            secrets: HashMap::new(),
        };
        b.add(
            "GetVolumeGroupSnapshot",
            "hostile",
            Code::Unimplemented,
            "",
            async move { ok_empty(g.get_volume_group_snapshot(req).await) },
        );
    }
    {
        let mut s = SnapshotMetadataClient::connect(url.clone()).await.unwrap();
        let req = GetMetadataAllocatedRequest {
            snapshot_id: real.clone(),
            starting_offset: -1,
            max_results: -1,
            secrets: HashMap::new(),
        };
        b.add(
            "GetMetadataAllocated",
            "hostile",
            Code::Unimplemented,
            "",
            async move { ok_empty(s.get_metadata_allocated(req).await) },
        );
        let mut n = NodeClient::connect(url.clone()).await.unwrap();
        let req = NodeStageVolumeRequest {
            volume_id: real.clone(),
            staging_target_path: "/etc".into(),
            volume_capability: Some(mount_flags(&["nocluster"])),
            ..Default::default()
        };
        b.add(
            "NodeStageVolume",
            "on the controller",
            Code::Unimplemented,
            "",
            async move { ok_empty(n.node_stage_volume(req).await) },
        );
    }

    // ---- Run the battery, one call at a time.
    let total = b.cases.len();
    let mut failures: Vec<String> = Vec::new();
    let mut seen: BTreeMap<&'static str, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for case in b.cases {
        let reply = case.call.await;
        let (code, text, problem) = match reply {
            Ok(Ok(text)) => (Code::Ok, text, None),
            Ok(Err(problem)) => (Code::Ok, String::new(), Some(problem)),
            Err(status) => (status.code(), status.message().to_string(), None),
        };
        let entry = seen.entry(case.rpc).or_default();
        entry.0 += 1;
        *entry.1.entry(format!("{code:?}")).or_default() += 1;
        let mut wrong = Vec::new();
        if code != case.expect {
            wrong.push(format!("got {code:?}, expected {:?}", case.expect));
        }
        if let Some(p) = problem {
            wrong.push(p);
        }
        if !text.to_lowercase().contains(&case.keyword.to_lowercase()) {
            wrong.push(format!("message lacks {:?}", case.keyword));
        }
        if text.len() > MAX_MESSAGE {
            wrong.push(format!(
                "message of {} bytes echoes the input (at most {MAX_MESSAGE})",
                text.len()
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} [{}]: {}; message: {:?}",
                case.rpc,
                short(&case.what),
                wrong.join("; "),
                short(&text)
            ));
        }
    }

    // ---- Nothing changed.
    let running = ctl.child.try_wait().unwrap().is_none();
    if !running {
        failures.push(format!("the controller died; log:\n{}", ctl.log_text()));
    }
    if ctl.log_text().contains("panicked") {
        failures.push("the controller log reports a panic".into());
    }
    if table_bytes(&lun) != table_before {
        failures.push(format!(
            "the GPT areas changed: {parts_before} -> {:?}",
            partitions(&lun)
        ));
    }
    let meta_after = std::fs::metadata(&lun).unwrap();
    if (meta_after.len(), meta_after.blocks()) != (meta_before.len(), meta_before.blocks()) {
        failures.push(format!(
            "the LUN file changed: {} bytes / {} blocks -> {} / {}",
            meta_before.len(),
            meta_before.blocks(),
            meta_after.len(),
            meta_after.blocks()
        ));
    }
    if running {
        let volumes_after = all_volumes(&mut c).await;
        if volumes_after != volumes_before {
            failures.push(format!(
                "volumes changed: {volumes_before:?} -> {volumes_after:?}"
            ));
        }
        for (name, _, v) in &made {
            let got = c
                .controller_get_volume(ControllerGetVolumeRequest {
                    volume_id: v.volume_id.clone(),
                })
                .await;
            match got {
                Ok(r)
                    if r.get_ref().volume.as_ref().map(|v| v.capacity_bytes)
                        == Some(v.capacity_bytes) => {}
                other => failures.push(format!("volume {name}: {other:?}")),
            }
        }
    }
    assert_gpt_valid(&lun);
    for (_, _, v) in &made {
        let part = partition_by_guid(&lun, &v.volume_context["partitionGuid"]);
        assert_fsck_clean(&lun, &part);
    }
    let pwned = pwned_files(&tag);
    if !pwned.is_empty() {
        failures.push(format!("a shell ran a payload: /tmp/{pwned:?}"));
    }
    assert!(
        !foreign.exists() || std::fs::metadata(&foreign).unwrap().blocks() == 0,
        "the LUN outside the pool was written"
    );

    println!("\n{:<32} {:>5}  codes seen", "RPC", "cases");
    for (rpc, (n, codes)) in &seen {
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        println!("{rpc:<32} {n:>5}  {}", codes.join(", "));
    }
    println!(
        "{total} cases in {:.1} s; GPT, allocated blocks, volumes, fsck: checked",
        started.elapsed().as_secs_f64()
    );
    ctl.kill();
    assert!(
        failures.is_empty(),
        "{} of {total} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
