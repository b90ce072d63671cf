//! The Helm chart against a real kube-apiserver: `helm install` (every
//! object passes the server's own validation), `helm get hooks` shows the
//! test definitions, `helm uninstall` leaves nothing of ours behind.
//! (There are no kubelets here, so the pods are never scheduled.)

mod common;

use common::kube::Kube;
use std::process::Command;

fn helm(kube: &Kube, args: &[&str]) -> String {
    let bin = common::lab::repo().join(".cache/bin/helm");
    assert!(
        bin.is_file(),
        "{} missing: run scripts/chart-deps.sh",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(args)
        .arg("--kubeconfig")
        .arg(&kube.kubeconfig)
        .env("HELM_CACHE_HOME", kube.path().join("helm-cache"))
        .env("HELM_CONFIG_HOME", kube.path().join("helm-config"))
        .env("HELM_DATA_HOME", kube.path().join("helm-data"))
        .current_dir(common::lab::repo())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm {args:?}:\n{text}");
    text
}

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
    let out = helm(
        &kube,
        &[
            "install",
            "ocfs2-csi",
            "deploy/helm/ocfs2-csi",
            "--namespace",
            "kube-system",
            "--set",
            "luns={/dev/disk/by-id/wwn-0x600a098038304437}",
        ],
    );
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
    let hooks = helm(
        &kube,
        &["get", "hooks", "ocfs2-csi", "--namespace", "kube-system"],
    );
    assert!(hooks.contains("\"helm.sh/hook\": test"), "{hooks}");
    assert!(
        hooks.contains("PersistentVolumeClaim") && hooks.contains("kind: Pod"),
        "{hooks}"
    );
    helm(
        &kube,
        &["uninstall", "ocfs2-csi", "--namespace", "kube-system"],
    );
    for kind in KINDS {
        let left = ours(&kube, kind);
        assert!(left.is_empty(), "left behind at {kind}: {left:?}");
    }
    println!("helm: {installed} objects installed through the real API server; none left after uninstall");
}
