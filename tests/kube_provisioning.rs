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

const CONTROLLER_POD: &str = "ocfs2-csi-controller-test";
const CONTROLLER_POD_UID: &str = "6f1c3a52-0d7e-4c59-9a7e-3b5f2d9c1e01";

/// The Events with `reason` on the object named `name` in `namespace`.
fn events(kube: &Kube, namespace: &str, name: &str, reason: &str) -> Vec<serde_json::Value> {
    let list = kube.request_ok(
        "GET",
        &format!("/api/v1/namespaces/{namespace}/events"),
        None,
    );
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        .cloned()
        .collect()
}

/// A blank LUN not named in --init-lun: a controller (as the downward API
/// names its pod) refuses it with one Warning on its pod saying what to
/// do, and no second one while it retries.
fn lun_refused_event(kube: &Kube, dir: &std::path::Path) {
    let refused = sparse_lun(dir, "refused.raw", GIB);
    let log = dir.join("refusing-controller.log");
    let _controller = Killed(
        Command::new(binary())
            .args([
                "controller",
                "--cluster-name",
                "testclu",
                "--events",
                "true",
            ])
            .env("KUBECONFIG", &kube.kubeconfig)
            .env("POD_NAME", CONTROLLER_POD)
            .env("POD_NAMESPACE", "kube-system")
            .env("POD_UID", CONTROLLER_POD_UID)
            .arg("--endpoint")
            .arg(format!("unix://{}", dir.join("refusing.sock").display()))
            .arg("--lun")
            .arg(&refused)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = log.as_path();
    let message = kube.wait_for("a LUNRefused event", Duration::from_secs(60), || {
        let found = events(kube, "kube-system", CONTROLLER_POD, "LUNRefused");
        let e = found.first()?;
        assert_eq!(e["involvedObject"]["uid"], CONTROLLER_POD_UID);
        assert_eq!(e["type"], "Warning");
        Some(e["message"].as_str().unwrap().to_string())
    });
    assert!(
        message.contains(&refused.display().to_string()) && message.contains("--init-lun"),
        "{message}"
    );
    let failed = format!("cannot open LUN {}", refused.display());
    kube.wait_for(
        "the controller to retry the refused LUN",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            (text.matches(&failed).count() >= 2).then_some(())
        },
    );
    let found = events(kube, "kube-system", CONTROLLER_POD, "LUNRefused");
    assert_eq!(found.len(), 1, "posted again on a retry: {found:?}");
    println!("kube: event on the controller pod: LUNRefused: {message}");
}

/// A claim larger than the LUN's free space: the provisioner posts the
/// driver's answer on the claim (ProvisioningFailed), which says what fits.
fn lun_full_event(kube: &Kube) {
    let claims = "/api/v1/namespaces/default/persistentvolumeclaims";
    kube.request_ok(
        "POST",
        claims,
        Some(&json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "too-big"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "ocfs2",
                // Within what the empty 32 GiB LUN could hold, more than is
                // left beside the first claim's volume.
                "resources": {"requests": {"storage": "31Gi"}}
            }
        })),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let message = loop {
        let found = events(kube, "default", "too-big", "ProvisioningFailed");
        let said = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").to_string();
        if let Some(m) = found
            .iter()
            .map(said)
            .find(|m| m.contains("not enough contiguous"))
        {
            break m;
        }
        let all = kube.request_ok("GET", "/api/v1/namespaces/default/events", None);
        assert!(
            Instant::now() < deadline,
            "no ProvisioningFailed event saying so: {all}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        message.contains("the largest volume that fits now is"),
        "{message}"
    );
    kube.request_ok("DELETE", &format!("{claims}/too-big"), None);
    println!("kube: event on a claim larger than the free space: ProvisioningFailed: {message}");
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
    lun_refused_event(&kube, dir.path());
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

    lun_full_event(&kube);

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
