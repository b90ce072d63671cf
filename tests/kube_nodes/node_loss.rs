//! A node lost under a StatefulSet pod that holds a `disk-lock` on its
//! volume: o2cb evicts it, the node plugins taint its Node out-of-service
//! (chart value outOfService.enabled), Kubernetes force-deletes the pod,
//! and its replacement runs on another node with the volume's data and
//! takes the lock that the DLM's recovery released. The node then boots
//! again, rejoins, and the taint goes.
//!
//! The loss is a power-off (CI) or, with `OOS_LOSS=network-cut`, its
//! cluster network cut: it still heartbeats on disk and its kubelet still
//! reaches the API until o2cb fences it, and no taint may come before.
//! Without the taint a StatefulSet's pod on a lost node is never replaced
//! until a person acts; `OOS_BASELINE=1` runs the scenario with the feature
//! off and reports how long the pod stays stuck (outside CI: it waits
//! `BASELINE_WAIT`).

use super::common::kube_nodes::{Cluster, DRIVER_NS};
use super::common::lab::wait_until;
use std::time::{Duration, Instant};

const NS: &str = "default";
const POD: &str = "survivor-0";
const TAINT: &str = "node.kubernetes.io/out-of-service";
/// How long the baseline run waits for a replacement that cannot come:
/// past the 300 s after which Kubernetes evicts pods from an unreachable
/// node by itself (which leaves a StatefulSet's pod Terminating for good).
const BASELINE_WAIT: Duration = Duration::from_secs(420);

/// Whether this run is the no-feature baseline (OOS_BASELINE=1).
pub fn baseline() -> bool {
    std::env::var("OOS_BASELINE").is_ok_and(|v| v == "1")
}

/// How the node is lost (OOS_LOSS): `power-off` (the default) or
/// `network-cut`.
fn network_cut() -> bool {
    match std::env::var("OOS_LOSS").as_deref() {
        Ok("network-cut") => true,
        Ok("power-off") | Err(_) => false,
        Ok(other) => panic!("OOS_LOSS={other}: expected power-off or network-cut"),
    }
}

fn manifest() -> String {
    // The driver's own image: it has the `disk-lock` tool and a shell.
    // Each holder of the lock appends where it runs to /data/history.
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: survivor, namespace: {NS}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ocfs2
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: survivor, namespace: {NS}}}
spec:
  replicas: 1
  serviceName: survivor
  selector: {{matchLabels: {{app: survivor}}}}
  template:
    metadata: {{labels: {{app: survivor}}}}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [node3]}}]
      containers:
      - name: vm
        image: localhost/ocfs2-csi:lab
        imagePullPolicy: Never
        env: [{{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}]
        command:
        - sh
        - -c
        - |
          touch /data/disk.img
          exec ocfs2-csi disk-lock --wait 900 /data/disk.img -- sh -c 'echo "locked on $NODE" >>/data/history; sync; cat /data/history; exec sleep infinity'
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: survivor}}
"#
    )
}

fn node_field(c: &Cluster, node: &str, path: &str) -> String {
    c.kubectl_try(&["get", "node", node, "-o", &format!("jsonpath={path}")])
        .1
        .trim()
        .to_string()
}

fn tainted(c: &Cluster, node: &str) -> bool {
    node_field(c, node, "{.spec.taints[*].key}")
        .split_whitespace()
        .any(|k| k == TAINT)
}

/// The pod's node and log once it runs and has taken the lock.
fn running(c: &Cluster) -> Option<(String, String)> {
    let (ok, out) = c.kubectl_try(&[
        "get",
        "pod",
        "-n",
        NS,
        POD,
        "-o",
        "jsonpath={.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}",
    ]);
    let w: Vec<&str> = out.split_whitespace().collect();
    if !ok || w.len() != 2 || w[0] != "Running" {
        return None;
    }
    let (_, log) = c.kubectl_try(&["logs", "-n", NS, POD]);
    log.contains(&format!("locked on {}", w[1]))
        .then(|| (w[1].to_string(), log))
}

/// The "applied" lines of the node plugins on the nodes still up: exactly
/// one may taint.
fn taint_lines(c: &Cluster, lost: &str) -> Vec<String> {
    let pods = c.kubectl(&[
        "get",
        "pods",
        "-n",
        DRIVER_NS,
        "-l",
        "app.kubernetes.io/component=node",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    pods.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, node)| *node != lost)
        .flat_map(|(pod, node)| {
            c.pod_log(DRIVER_NS, pod, "ocfs2-csi")
                .lines()
                .filter(|l| l.contains(&format!("applied {TAINT}")))
                .map(|l| format!("{node}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn run(c: &Cluster) {
    c.apply(&manifest());
    let first = {
        let mut first = None;
        wait_until(
            "survivor-0 running with the lock",
            Duration::from_secs(300),
            || {
                first = running(c);
                first.is_some()
            },
        );
        first.unwrap().0
    };
    assert_ne!(
        first, "node1",
        "the survivor pod must not run on node1 (the SSH bastion): it prefers node3"
    );
    let lost: usize = first.trim_start_matches("node").parse().unwrap();
    let cut = network_cut();
    let what = if cut { "network-cut" } else { "power-off" };
    println!("{what}: survivor-0 holds the disk lock on {first}; losing {first}");

    let t0 = Instant::now();
    if cut {
        // The cluster network only: the API and the LUN stay in reach.
        c.lab.must(lost, "ip link set eth0 down");
    } else {
        c.lab.crash(lost);
    }
    let mut fenced = (!cut).then_some(Duration::ZERO);
    let mut not_ready = None;
    let mut taint_at = None;
    let mut moved = None;
    let limit = if baseline() {
        BASELINE_WAIT
    } else {
        Duration::from_secs(900)
    };
    let deadline = t0 + limit;
    while Instant::now() < deadline && moved.is_none() {
        if not_ready.is_none() && !c.ready_nodes().contains(&first) {
            not_ready = Some(t0.elapsed());
        }
        if fenced.is_none() && !c.lab.alive(lost) {
            fenced = Some(t0.elapsed());
        }
        if taint_at.is_none() && tainted(c, &first) {
            taint_at = Some(t0.elapsed());
            // A node that still runs (and heartbeats) is never tainted.
            assert!(
                fenced.is_some() && !c.lab.alive(lost),
                "{first} tainted while it still runs"
            );
        }
        if let Some((node, log)) = running(c).filter(|(n, _)| *n != first) {
            moved = Some((t0.elapsed(), node, log));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let secs = |d: Option<Duration>| {
        d.map_or("never".to_string(), |d| format!("{:.0} s", d.as_secs_f64()))
    };
    println!(
        "{what} ({}): {first} fenced after {}, NotReady after {}, tainted {TAINT} after {}, \
         survivor-0 running elsewhere after {}",
        if baseline() {
            "baseline, feature off"
        } else {
            "outOfService.enabled"
        },
        secs(fenced),
        secs(not_ready),
        secs(taint_at),
        secs(moved.as_ref().map(|m| m.0)),
    );
    if baseline() {
        assert!(taint_at.is_none(), "the baseline run tainted {first}");
        // Put the cluster back as the feature would have: the taint by hand.
        c.kubectl(&[
            "taint",
            "node",
            &first,
            &format!("{TAINT}=nodeshutdown:NoExecute"),
        ]);
        wait_until(
            "survivor-0 running elsewhere",
            Duration::from_secs(600),
            || running(c).is_some_and(|(n, _)| n != first),
        );
        println!(
            "{what} (baseline): survivor-0 running elsewhere {:.0} s after the loss, once tainted by hand",
            t0.elapsed().as_secs_f64()
        );
        c.kubectl(&["taint", "node", &first, &format!("{TAINT}-")]);
        c.kubectl(&["delete", "statefulset", "-n", NS, "survivor", "--wait=true"]);
        c.kubectl(&["delete", "pvc", "-n", NS, "survivor", "--wait=true"]);
        return;
    }
    let (_, node, log) = moved.unwrap_or_else(|| {
        panic!("survivor-0 did not run elsewhere within {limit:?} of {first}'s loss")
    });
    assert!(
        log.contains(&format!("locked on {first}")) && log.contains(&format!("locked on {node}")),
        "the replacement on {node} does not see the lost pod's data:\n{log}"
    );
    let why = node_field(
        c,
        &first,
        "{.metadata.annotations.ocfs2\\.csi\\.dev/out-of-service}",
    );
    println!("{what}: {first}'s annotation: {why}");
    assert!(
        why.contains("o2cb evicted member") && why.contains("seen by members"),
        "the taint's annotation does not say why: {why:?}"
    );
    let lines = taint_lines(c, &first);
    assert_eq!(
        lines.len(),
        1,
        "not exactly one plugin tainted {first}: {lines:#?}"
    );
    println!("{what}: tainted by one plugin: {}", lines[0]);
    println!("{what}: survivor-0 on {node} took the lock and sees the history:\n{log}");

    let t1 = Instant::now();
    // The node plugin's image and the pod sandbox's are all it runs now.
    c.rejoin(lost, "ocfs2-csi pause");
    let ready = t1.elapsed();
    wait_until(
        &format!("{first} untainted"),
        Duration::from_secs(300),
        || !tainted(c, &first),
    );
    assert!(
        node_field(
            c,
            &first,
            "{.metadata.labels.ocfs2\\.csi\\.dev/out-of-service}"
        )
        .is_empty(),
        "our label stayed on {first}"
    );
    println!(
        "{what}: {first} booted and Ready again in {:.0} s; untainted {:.0} s after that",
        ready.as_secs_f64(),
        (t1.elapsed() - ready).as_secs_f64()
    );
    c.kubectl(&["delete", "statefulset", "-n", NS, "survivor", "--wait=true"]);
    c.kubectl(&["delete", "pvc", "-n", NS, "survivor", "--wait=true"]);
}
