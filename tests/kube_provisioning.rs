//! The controller as Kubernetes drives it: a real kube-apiserver and
//! kube-controller-manager, the real external-provisioner and
//! external-resizer, and `ocfs2-csi controller` on a file-backed LUN.
//!
//! A ReadWriteMany PVC is provisioned and bound; `kubectl patch pvc` to a
//! larger size ends with the PV's capacity updated by ControllerExpandVolume
//! (the filesystem part waits for a node); deleting the PVC with
//! reclaimPolicy Delete removes the partition. The controller is given no
//! cluster ID: it stamps the LUN with the kube-system namespace's UID.

use ocfs2_csi_testkit as common;

use common::kube::Kube;
use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DRIVER: &str = "ocfs2.csi.dev";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quantity_bytes(q: &str) -> u64 {
    let (num, mult) = match q {
        _ if q.ends_with("Gi") => (&q[..q.len() - 2], GIB),
        _ if q.ends_with("Mi") => (&q[..q.len() - 2], MIB),
        _ if q.ends_with("Ki") => (&q[..q.len() - 2], 1024),
        _ => (q, 1),
    };
    num.parse::<u64>().expect("quantity") * mult
}

#[test]
fn pvc_provisioned_grown_and_deleted_through_kubernetes() {
    let kube = Kube::up();
    println!(
        "kube: tools ready in {:.1} s, control plane up in {:.1} s",
        kube.tools_time.as_secs_f64(),
        kube.up_time.as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let lun = sparse_lun(dir.path(), "lun.raw", 32 * GIB);
    let sock = dir.path().join("csi.sock");
    let log = dir.path().join("controller.log");
    let _controller = Killed(
        Command::new(binary())
            .args(["controller", "--cluster-name", "testclu", "--log", "debug"])
            .env("KUBECONFIG", &kube.kubeconfig)
            .env_remove("OCFS2_CSI_CLUSTER_ID")
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--lun")
            .arg(&lun)
            .arg("--init-lun")
            .arg(&lun)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    kube.wait_for(
        "the controller to open its LUN",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("all LUNs open; ready")
                .then_some(())
        },
    );
    let (code, ns) = kube.get_text("/api/v1/namespaces/kube-system");
    assert_eq!(code, 200, "{ns}");
    let ns: serde_json::Value = serde_json::from_str(&ns).unwrap();
    let uid = ns["metadata"]["uid"]
        .as_str()
        .expect("kube-system has a UID");
    let io = ocfs2_csi::disk::lun_io::LunFile::open_read_only(&lun).unwrap();
    let stamp = ocfs2_csi::disk::ownership::read(&io)
        .unwrap()
        .expect("the LUN carries an ownership stamp");
    assert_eq!(stamp.cluster_id, uid, "the stamp is the cluster's own UID");
    let common = ["--timeout=120s", "--leader-election=false", "-v=4"];
    let _provisioner = Killed(kube.start_sidecar(
        "csi-provisioner",
        &sock,
        &[common.as_slice(), &["--extra-create-metadata"]].concat(),
    ));
    let _resizer = Killed(kube.start_sidecar(
        "csi-resizer",
        &sock,
        &[common.as_slice(), &["--handle-volume-inuse-error=false"]].concat(),
    ));

    kube.request_ok(
        "POST",
        "/apis/storage.k8s.io/v1/storageclasses",
        Some(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "ocfs2"},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": true,
            "volumeBindingMode": "Immediate",
            "parameters": {"nodeSlots": "8"}
        })),
    );
    let t = Instant::now();
    kube.request_ok(
        "POST",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        Some(&json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "ocfs2",
                "resources": {"requests": {"storage": "1Gi"}}
            }
        })),
    );
    let pvc_path = "/api/v1/namespaces/default/persistentvolumeclaims/shared";
    let pv_name = kube.wait_for("the PVC to be bound", Duration::from_secs(120), || {
        let pvc = kube.request_ok("GET", pvc_path, None);
        (pvc["status"]["phase"] == "Bound")
            .then(|| pvc["spec"]["volumeName"].as_str().unwrap().to_string())
    });
    println!(
        "kube: RWX PVC provisioned and bound in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pv_path = format!("/api/v1/persistentvolumes/{pv_name}");
    let pv = kube.request_ok("GET", &pv_path, None);
    assert_eq!(pv["spec"]["csi"]["driver"], DRIVER);
    assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteMany"]));
    let handle = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap()
        .to_string();
    let guid = pv["spec"]["csi"]["volumeAttributes"]["partitionGuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(handle.ends_with(&guid), "{handle}");
    let part = partition_by_guid(&lun, &guid);
    assert!(part.bytes() >= GIB);
    assert_fsck_clean(&lun, &part);
    println!(
        "kube: PV {pv_name} -> {handle}, partition {} on the LUN",
        part.number
    );

    // kubectl patch pvc shared -p '{"spec":{"resources":{"requests":{"storage":"3Gi"}}}}'
    let t = Instant::now();
    kube.request_ok(
        "PATCH",
        pvc_path,
        Some(&json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}})),
    );
    let capacity = kube.wait_for("the PV capacity to grow", Duration::from_secs(120), || {
        let pv = kube.request_ok("GET", &pv_path, None);
        let q = pv["spec"]["capacity"]["storage"].as_str()?.to_string();
        (quantity_bytes(&q) >= 3 * GIB).then_some(q)
    });
    let grown = partition_by_guid(&lun, &guid);
    assert!(grown.bytes() > part.bytes() && grown.first == part.first);
    let pvc = kube.request_ok("GET", pvc_path, None);
    println!(
        "kube: PVC patched to 3Gi: PV capacity {capacity} in {:.1} s (partition {} -> {} bytes); PVC conditions: {}",
        t.elapsed().as_secs_f64(),
        part.bytes(),
        grown.bytes(),
        pvc["status"]["conditions"]
    );

    let t = Instant::now();
    kube.request_ok("DELETE", pvc_path, None);
    kube.wait_for("the PV to go away", Duration::from_secs(120), || {
        (kube.kubectl_like("GET", &pv_path, None).0 == 404).then_some(())
    });
    assert!(
        partitions(&lun).iter().all(|p| p.guid != guid),
        "the partition is still in the GPT"
    );
    assert_gpt_valid(&lun);
    println!(
        "kube: PVC deleted: PV and partition gone in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
