//! The kube harness against a real control plane: etcd, kube-apiserver and
//! kube-controller-manager built from their Go modules (scripts/kube-tools.sh)
//! and started on loopback (scripts/kube-up.sh). A namespace and a ConfigMap
//! go through the real API server and come back; the controller manager must
//! report healthy and actually reconcile (a deleted namespace is finalized by
//! its namespace controller). Timings are printed (--nocapture shows them).

use ocfs2_csi_testkit::kube;

use kube::Kube;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn real_api_server_round_trip() {
    let start = Instant::now();
    let k = Kube::up();
    println!(
        "kube-tools.sh {:.1} s, kube-up.sh {:.1} s",
        k.tools_time.as_secs_f64(),
        k.up_time.as_secs_f64()
    );

    // Ready, and authenticated as an admin by the bearer token.
    let (status, body) = k.get_text("/readyz?verbose");
    assert_eq!(status, 200, "readyz: {body}");
    let version = k.request_ok("GET", "/version", None);
    println!("kube-apiserver {}", version["gitVersion"]);
    let review = k.request_ok(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    );
    let groups = &review["status"]["userInfo"]["groups"];
    assert!(
        groups
            .as_array()
            .is_some_and(|g| g.iter().any(|x| x == "system:masters")),
        "admin token should be in system:masters: {review}"
    );

    // Namespace and ConfigMap through the real server, read back.
    let ns = "smoke";
    k.request_ok(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    );
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hello", "labels": {"app": "ocfs2-csi"}},
        "data": {"greeting": "hello from etcd"}
    });
    let created = k.request_ok(
        "POST",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(&cm),
    );
    assert!(created["metadata"]["uid"].is_string(), "{created}");
    let got = k.request_ok(
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/hello"),
        None,
    );
    assert_eq!(got["data"]["greeting"], "hello from etcd");
    assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
    let listed = k.request_ok(
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps?labelSelector=app%3Docfs2-csi"),
        None,
    );
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // A conflicting create is refused by the server itself.
    let (status, body) = k.kubectl_like(
        "POST",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(&cm),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "AlreadyExists");

    // Merge patch, then read back.
    k.request_ok(
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/configmaps/hello"),
        Some(&json!({"data": {"greeting": "patched"}})),
    );
    let got = k.request_ok(
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/hello"),
        None,
    );
    assert_eq!(got["data"]["greeting"], "patched");

    // The controller manager: healthy, and doing its job.
    if k.kcm_healthz.is_some() {
        let (status, body) = k.kcm_health().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "{}", k.logs_tail(30));
        // The serviceaccount controller gives every namespace "default".
        k.wait_for(
            "the serviceaccount controller to create smoke/default",
            Duration::from_secs(60),
            || {
                let (s, _) = k.kubectl_like(
                    "GET",
                    &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"),
                    None,
                );
                (s == 200).then_some(())
            },
        );
        // Deleting a namespace only marks it; the namespace controller
        // empties and finalizes it.
        let t = Instant::now();
        k.request_ok("DELETE", &format!("/api/v1/namespaces/{ns}"), None);
        k.wait_for(
            "the namespace controller to finalize the namespace",
            Duration::from_secs(90),
            || {
                let (s, _) = k.kubectl_like("GET", &format!("/api/v1/namespaces/{ns}"), None);
                (s == 404).then_some(())
            },
        );
        println!(
            "namespace finalized by kube-controller-manager in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    drop(k);
    println!("kube smoke total {:.1} s", start.elapsed().as_secs_f64());
}
