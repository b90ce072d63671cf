//! The Helm chart against a real kube-apiserver: `helm install` (every
//! object passes the server's own validation), `helm get hooks` shows the
//! test definitions, the node plugin's RBAC is exactly what it calls (its
//! membership calls made with the node ServiceAccount's own token succeed;
//! the server's authorizer refuses anything more), `helm uninstall` leaves
//! nothing of ours behind. (There are no kubelets here, so the pods are
//! never scheduled.)

use ocfs2_csi_testkit as common;

use common::kube::Kube;
use ocfs2_csi::cluster::SlotsInUse;
use ocfs2_csi::k8s::members::lease_name;
use ocfs2_csi::k8s::KubeMembers;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

const NAMESPACE: &str = "kube-system";
/// Upper case, '_' and a trailing '-': the chart must derive the Lease
/// names in its Role exactly as the plugin does (`lease_name`).
const CLUSTER: &str = "_Rbac_Clu-";
const NODE_SA: &str = "system:serviceaccount:kube-system:ocfs2-csi-node";

/// Names of our objects of one kind (cluster-wide or in kube-system).
fn ours(kube: &Kube, path: &str) -> Vec<String> {
    let list = kube.request_ok(
        "GET",
        &format!("{path}?labelSelector=app.kubernetes.io/instance%3Docfs2-csi"),
        None,
    );
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

const KINDS: &[&str] = &[
    "/apis/storage.k8s.io/v1/csidrivers",
    "/apis/storage.k8s.io/v1/storageclasses",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings",
    "/apis/apps/v1/namespaces/kube-system/deployments",
    "/apis/apps/v1/namespaces/kube-system/daemonsets",
    "/api/v1/namespaces/kube-system/serviceaccounts",
    "/api/v1/namespaces/kube-system/configmaps",
];

#[test]
fn helm_install_and_uninstall() {
    let kube = Kube::up();
    let out = kube.helm(&[
        "install",
        "ocfs2-csi",
        "deploy/helm/ocfs2-csi",
        "--namespace",
        "kube-system",
        "--set",
        "luns={/dev/disk/by-id/wwn-0x600a098038304437}",
        "--set",
        &format!("clusterName={CLUSTER}"),
    ]);
    println!("{}", out.lines().take(6).collect::<Vec<_>>().join("\n"));
    let mut installed = 0;
    for kind in KINDS {
        let names = ours(&kube, kind);
        installed += names.len();
        println!("helm: {kind}: {names:?}");
    }
    for required in [KINDS[0], KINDS[1], KINDS[6], KINDS[7]] {
        assert!(
            !ours(&kube, required).is_empty(),
            "nothing installed at {required}"
        );
    }
    let hooks = kube.helm(&["get", "hooks", "ocfs2-csi", "--namespace", "kube-system"]);
    assert!(hooks.contains("\"helm.sh/hook\": test"), "{hooks}");
    assert!(
        hooks.contains("PersistentVolumeClaim") && hooks.contains("kind: Pod"),
        "{hooks}"
    );
    // Both workloads only where the LUNs are.
    for path in [
        "/apis/apps/v1/namespaces/kube-system/daemonsets/ocfs2-csi-node",
        "/apis/apps/v1/namespaces/kube-system/deployments/ocfs2-csi-controller",
    ] {
        let w = kube.request_ok("GET", path, None);
        let selector = &w["spec"]["template"]["spec"]["nodeSelector"];
        assert_eq!(
            selector,
            &serde_json::json!({"ocfs2.csi.dev/san": "true"}),
            "{path}"
        );
    }
    node_rbac_is_what_the_plugin_calls(&kube);
    kube.helm(&["uninstall", "ocfs2-csi", "--namespace", "kube-system"]);
    for kind in KINDS {
        let left = ours(&kube, kind);
        assert!(left.is_empty(), "left behind at {kind}: {left:?}");
    }
    println!("helm: {installed} objects installed through the real API server; none left after uninstall");
}

/// Whether the API server's authorizer lets the node ServiceAccount do
/// VERB on RESOURCE (NAME) in NAMESPACE ("" for cluster-scoped).
fn node_may(kube: &Kube, verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> bool {
    let review = kube.request_ok(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(&serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": NODE_SA,
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated"
                ],
                "resourceAttributes": {
                    "namespace": ns,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "name": name
                }
            }
        })),
    );
    review["status"]["allowed"].as_bool().unwrap_or(false)
}

/// A client that is the node plugin: the node ServiceAccount's own token
/// (TokenRequest), so the chart's RBAC is all it has.
async fn node_client(kube: &Kube) -> kube::Client {
    let token = kube.service_account_token(NAMESPACE, "ocfs2-csi-node");
    let path = kube.path().join("node-kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    \
             server: {}\n    certificate-authority: {}\nusers:\n- name: node\n  user:\n    \
             token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    \
             user: node\ncurrent-context: local\n",
            kube.server,
            kube.ca.display()
        ),
    )
    .unwrap();
    let config = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("kubeconfig usable");
    kube::Client::try_from(config).expect("client")
}

/// A grow that waits for a node, as the node plugin tells it with its own
/// token: one Warning on the volume's claim, naming the node by its Node
/// name (from its membership Lease).
async fn grow_waiting_event(kube: &Kube, client: kube::Client, km: KubeMembers, me: u8) {
    use ocfs2_csi::k8s::events::{KubeVolumeEvents, Recorder, VolumeEvents, GROW_WAITING};
    use std::sync::Arc;
    kube.request_ok(
        "POST",
        "/api/v1/namespaces",
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})),
    );
    let claim = kube.request_ok(
        "POST",
        "/api/v1/namespaces/apps/persistentvolumeclaims",
        Some(&serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "resources": {"requests": {"storage": "1Gi"}}}
        })),
    );
    let claim_uid = claim["metadata"]["uid"].as_str().unwrap().to_string();
    kube.request_ok(
        "POST",
        "/api/v1/persistentvolumes",
        Some(&serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-grow"},
            "spec": {
                "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteMany"],
                "csi": {"driver": "ocfs2.csi.dev", "volumeHandle": "vol-grow"},
                "claimRef": {"namespace": "apps", "name": "data", "uid": claim_uid}
            }
        })),
    );
    let events = Arc::new(KubeVolumeEvents::new(
        Arc::new(Recorder::new(client, "ocfs2-csi-node", "san-1")),
        Arc::new(km),
        "ocfs2.csi.dev",
    ));
    events.grow_waiting(
        "vol-grow",
        2 << 30,
        vec![(
            u32::from(me),
            "sees 1073741824 bytes, needs 2147483648".into(),
        )],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let event = loop {
        let list = kube.request_ok("GET", "/api/v1/namespaces/apps/events", None);
        let found = list["items"].as_array().unwrap().iter().find(|e| {
            e["reason"] == GROW_WAITING && e["involvedObject"]["uid"] == claim_uid.as_str()
        });
        if let Some(e) = found {
            break e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {GROW_WAITING} event: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("san-1 (o2cb node {me}) sees 1073741824 bytes")),
        "{message}"
    );
    assert_eq!(event["involvedObject"]["kind"], "PersistentVolumeClaim");
    assert_eq!(event["source"]["host"], "san-1");
    println!("helm: node event on the claim, with the node's own token: {GROW_WAITING}: {message}");
    kube.request_ok("DELETE", "/api/v1/persistentvolumes/pv-grow", None);
}

/// Issue 12, point 9: the node Role limited to what the plugin calls. Every
/// call of `k8s::members` succeeds with the node's own token (claim, renew,
/// its Node's address, releasing a departed member); anything else, above
/// all the control plane's own Leases in the same namespace, is refused.
fn node_rbac_is_what_the_plugin_calls(kube: &Kube) {
    // A dual-stack Node with its IPv6 address first (an IPv6-first
    // cluster): the plugin takes the IPv4 one.
    kube.request_ok(
        "POST",
        "/api/v1/nodes",
        Some(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "san-1", "labels": {"ocfs2.csi.dev/san": "true"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "fd00:77::11"},
                {"type": "InternalIP", "address": "192.168.77.11"}
            ]}
        })),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = node_client(kube).await;
        let km = KubeMembers::new(client.clone(), NAMESPACE, CLUSTER, 7777);
        let address = km.node_address("san-1").await.expect("Nodes get");
        // The cluster ID when clusterId is unset: kube-system's UID.
        let id = ocfs2_csi::k8s::cluster_id::cluster_uid(client.clone())
            .await
            .expect("Namespaces get kube-system");
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(address, Ipv4Addr::new(192, 168, 77, 11));
        let me = km
            .claim("san-1", address, &SlotsInUse::default())
            .await
            .expect("Leases list, create");
        km.renew("san-1", me, Some(address))
            .await
            .expect("Leases get, update");
        // A member whose Node is gone: its number is released (Nodes get
        // answers 404, Leases delete).
        let gone = km
            .claim(
                "san-gone",
                Ipv4Addr::new(192, 168, 77, 99),
                &SlotsInUse::default(),
            )
            .await
            .expect("a second claim");
        let released = km
            .release_stale("san-1", &BTreeSet::new(), Duration::ZERO)
            .await
            .expect("Leases list, delete; Nodes get");
        assert_eq!(released, vec![gone]);
        // The control plane's Leases in the same namespace are out of reach
        // for the plugin's own client, existing or not.
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), NAMESPACE);
        match leases.get("kube-controller-manager").await {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => panic!("the node read kube-controller-manager's Lease: {other:?}"),
        }
        println!("helm: node RBAC: o2net address {address}, claimed {me}, released {gone}, all with the node's own token");
        grow_waiting_event(kube, client, km, me).await;
    });
    let ours = |n| lease_name(CLUSTER, n);
    for (verb, group, resource, ns, name) in [
        ("get", "", "nodes", "", "san-1"),
        ("get", "", "namespaces", "", "kube-system"),
        ("list", "coordination.k8s.io", "leases", NAMESPACE, ""),
        ("create", "coordination.k8s.io", "leases", NAMESPACE, ""),
        ("get", "coordination.k8s.io", "leases", NAMESPACE, &ours(0)),
        ("list", "", "persistentvolumes", "", ""),
        ("create", "", "events", "apps", ""),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            &ours(254),
        ),
        (
            "delete",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            &ours(254),
        ),
    ] {
        assert!(
            node_may(kube, verb, group, resource, ns, name),
            "node cannot {verb} {resource} {name:?}"
        );
    }
    for (verb, group, resource, ns, name) in [
        ("list", "", "nodes", "", ""),
        ("watch", "", "nodes", "", ""),
        ("update", "", "nodes", "", "san-1"),
        ("patch", "", "nodes", "", "san-1"),
        ("get", "", "namespaces", "", "default"),
        ("list", "", "namespaces", "", ""),
        ("watch", "coordination.k8s.io", "leases", NAMESPACE, ""),
        (
            "patch",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            &ours(0),
        ),
        (
            "deletecollection",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "",
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "kube-controller-manager",
        ),
        (
            "delete",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "kube-scheduler",
        ),
        (
            "get",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            "ocfs2-other-n0",
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            NAMESPACE,
            &format!("{}5", ours(25)),
        ),
        ("create", "coordination.k8s.io", "leases", "default", ""),
        ("get", "", "secrets", NAMESPACE, ""),
        ("update", "", "events", "apps", ""),
        ("delete", "", "events", "apps", ""),
        ("get", "", "persistentvolumeclaims", "apps", "data"),
        ("update", "", "persistentvolumes", "", ""),
    ] {
        assert!(
            !node_may(kube, verb, group, resource, ns, name),
            "node may {verb} {resource} {name:?} in {ns:?}"
        );
    }
    kube.request_ok("DELETE", "/api/v1/nodes/san-1", None);
}
