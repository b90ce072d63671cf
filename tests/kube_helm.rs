//! The Helm chart against a real kube-apiserver: `helm install` (every
//! object passes the server's own validation), `helm get hooks` shows the
//! test definitions, `helm uninstall` leaves nothing of ours behind.
//! (There are no kubelets here, so the pods are never scheduled.)

use ocfs2_csi_testkit as common;

use common::kube::Kube;

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
    kube.helm(&["uninstall", "ocfs2-csi", "--namespace", "kube-system"]);
    for kind in KINDS {
        let left = ours(&kube, kind);
        assert!(left.is_empty(), "left behind at {kind}: {left:?}");
    }
    println!("helm: {installed} objects installed through the real API server; none left after uninstall");
}
