//! The nodes tier: the driver as users meet it. Three lab guests are real
//! Kubernetes nodes (kubelet, containerd, runc, kube-proxy; testkit
//! `kube_nodes`), the chart is installed with `helm install`, and every flow
//! goes through the real kubelet: its staging and publish paths, its
//! NodeExpandVolume calls for a ReadWriteMany volume, fsGroup, unstaging
//! when pods go.
//!
//! One cluster, scenarios in order (each leaves what the next needs):
//! install, a RWX Deployment on all three nodes, `kubectl patch pvc` under
//! its writers, a pod as uid 107 with an fsGroup, the node DaemonSet rolled
//! and a kubelet restarted under the writers' I/O, a pod moved between
//! nodes, a raw block claim used on two nodes at once, cleanup, CI's subset
//! of the Kubernetes storage e2e suite (testkit `storage_e2e::CI_SUBSET`),
//! `helm test`, `helm uninstall`. Each prints
//! `scenario-time: NAME SECONDS`.

#[path = "kube_nodes/node_loss.rs"]
mod node_loss;

use ocfs2_csi_testkit as common;

use common::junit::Outcome;
use common::kube_nodes::{
    last_report, one_shot_pod, writer_pods, writers_manifest, Cluster, DRIVER_NS as NS, SNAPSHOTTER,
};
use common::lab::{scenario, wait_until};
use common::metric;
use common::storage_e2e::{self, Selection, CI_SUBSET};
use std::time::{Duration, Instant};

const APP_NS: &str = "default";
/// The writers' claim, and the size it is grown to.
const PVC: &str = "shared";
const SIZE: &str = "1Gi";
const GROWN: &str = "2Gi";
const GIB: u64 = 1 << 30;

/// The shared claim's PV.
fn shared_pv(c: &Cluster) -> String {
    c.kubectl(&[
        "get",
        "pvc",
        "-n",
        APP_NS,
        PVC,
        "-o",
        "jsonpath={.spec.volumeName}",
    ])
    .trim()
    .to_string()
}

fn write_errors(c: &Cluster, pods: &[String]) -> usize {
    pods.iter()
        .map(|p| {
            c.pod_log(APP_NS, p, "writer")
                .matches("WRITE-ERROR")
                .count()
        })
        .sum()
}

/// A RWX claim and 3 writers spread over the 3 nodes: each sees the
/// others' files.
fn rwx_deployment(c: &Cluster) -> Vec<String> {
    let t = Instant::now();
    c.apply(&writers_manifest(PVC, SIZE, APP_NS));
    c.kubectl(&[
        "rollout",
        "status",
        "-n",
        APP_NS,
        "deployment/writers",
        "--timeout=600s",
    ]);
    println!(
        "rwx: 3 writers running {:.1} s after the apply",
        t.elapsed().as_secs_f64()
    );
    let pods = writer_pods(c, APP_NS);
    let mut nodes: Vec<usize> = pods.iter().map(|p| c.node_of(APP_NS, p)).collect();
    nodes.sort();
    assert_eq!(nodes, vec![1, 2, 3], "writers not spread: {pods:?}");
    wait_until(
        "every writer sees 3 files",
        Duration::from_secs(300),
        || {
            pods.iter().all(|p| {
                last_report(&c.pod_log(APP_NS, p, "writer")).is_some_and(|(_, _, files)| files == 3)
            })
        },
    );
    // Each pod's lines are read back on another node's pod: the file each
    // writer appends to holds its numbered lines in order, seen through
    // the mount of the next node.
    for (k, pod) in pods.iter().enumerate() {
        let other = c.node_of(APP_NS, &pods[(k + 1) % pods.len()]);
        let lines = c.lab.must(
            other,
            &format!(
                "cat /var/lib/kubelet/pods/*/volumes/kubernetes.io~csi/*/mount/{pod}.log | head -n 50"
            ),
        );
        for (n, line) in lines.lines().enumerate() {
            assert_eq!(
                line,
                format!("{pod} {}", n + 1),
                "{pod}'s file on node{other}"
            );
        }
        assert!(
            lines.lines().count() >= 10,
            "{pod} wrote too little: {lines}"
        );
    }
    assert_eq!(write_errors(c, &pods), 0);
    println!("rwx: every writer sees the 3 files; lines read back across nodes");
    pods
}

/// `kubectl patch pvc` to a larger size with the writers running.
fn patch_pvc(c: &Cluster, pods: &[String]) {
    let before: Vec<u64> = pods
        .iter()
        .map(|p| last_report(&c.pod_log(APP_NS, p, "writer")).unwrap().1)
        .collect();
    let t = Instant::now();
    c.grow_claim(APP_NS, PVC, GROWN);
    let status = t.elapsed();
    // Every pod sees the new size (its next report after the grow).
    wait_until(
        "every writer sees the grown volume",
        Duration::from_secs(300),
        || {
            pods.iter().zip(&before).all(|(p, b)| {
                last_report(&c.pod_log(APP_NS, p, "writer"))
                    .is_some_and(|(_, size, _)| size > b + GIB / 1024 / 2)
            })
        },
    );
    let seen = t.elapsed();
    let errors = write_errors(c, pods);
    println!(
        "patch-pvc: {SIZE} -> {GROWN}: claim capacity {:.1} s, every pod sees it {:.1} s, \
         {errors} write errors",
        status.as_secs_f64(),
        seen.as_secs_f64()
    );
    assert_eq!(errors, 0, "writes failed during the grow");
    // The chart's metrics, as every node plugin serves them on its host
    // network: three live members, the volume staged, grown exactly once.
    let mut grown = 0.0;
    for node in 1..=3 {
        let m = c
            .lab
            .must(node, "wget -q -O - http://127.0.0.1:29778/metrics");
        let live = metric(&m, r#"ocfs2_csi_o2cb_members{state="live"}"#);
        assert_eq!(live, Some(3.0), "node{node}:\n{m}");
        let staged = metric(&m, r#"ocfs2_csi_volumes_staged{content="filesystem"}"#);
        assert!(staged.is_some_and(|n| n >= 1.0), "node{node}:\n{m}");
        grown += metric(&m, r#"ocfs2_csi_volume_grows_total{outcome="grown"}"#).unwrap_or(0.0);
    }
    assert_eq!(grown, 1.0, "the filesystem grew once, by one node's plugin");
    println!("patch-pvc: metrics: 3 live members and the volume staged on every node, grown once");
}

/// virt-launcher's user: a pod running as uid 107 with fsGroup 107 writes to
/// the shared volume (the kubelet applies the fsGroup: CSIDriver
/// fsGroupPolicy File) while the writers go on.
/// `kubectl ocfs2-csi status` (deploy/kubectl-ocfs2_csi) after the grow,
/// with the writers on: node2's kernel sees three live members, the claim's
/// volume is mounted on all three by its slot map and grown through, the
/// claim's pods run on all three, three membership Leases, nobody tainted.
fn status_view(c: &Cluster) {
    let t = Instant::now();
    let out = c.kubectl_plugin(&["status", "--node", "node2"]);
    println!(
        "status: kubectl ocfs2-csi status --node node2 in {:.1} s:\n{out}",
        t.elapsed().as_secs_f64()
    );
    assert!(out.contains("== node node2 (pod kube-system/"), "{out}");
    // helm-install chose `o2cb.profile=fast`; status reads the kernel's.
    let threshold = format!(
        "dead threshold {} (",
        ocfs2_csi::cluster::Timeouts::FAST.dead_threshold
    );
    assert!(out.contains(&threshold), "not the fast profile:\n{out}");
    for n in 1..=3 {
        let member = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&format!("node{n}")))
            .unwrap_or_else(|| panic!("node{n} is not a member:\n{out}"));
        assert!(member.ends_with(" live"), "{member}");
    }
    let pv = shared_pv(c);
    // The GPT holds the first 36 characters of a name.
    let named = &pv[..pv.len().min(36)];
    let mounted = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{named}: mounted on ")))
        .unwrap_or_else(|| panic!("{pv} is not staged on node2:\n{out}"));
    for n in 1..=3 {
        assert!(mounted.contains(&format!("node{n} (")), "{mounted}");
    }
    assert!(!out.contains("grow not finished"), "{out}");
    assert!(
        out.contains(&format!(
            "{APP_NS}/{PVC} ({pv})\n  used by pods on: node1 node2 node3"
        )),
        "{out}"
    );
    let leases = out
        .lines()
        .filter(|l| l.contains("\"live\":[0,1,2]"))
        .count();
    assert_eq!(leases, 3, "three members each see three live:\n{out}");
    let tainted = out
        .split("== Nodes taken out of service")
        .nth(1)
        .and_then(|s| s.lines().nth(1));
    assert_eq!(tainted, Some("none"), "{out}");
}

fn fs_group(c: &Cluster) {
    let mounts: Vec<usize> = (1..=3).map(|n| ocfs2_mounts(c, n)).collect();
    c.apply(&one_shot_pod(
        "qemu-user",
        APP_NS,
        PVC,
        r#"id && echo vm-disk > /data/qemu-user.img && stat -c "%u:%g %a" /data/qemu-user.img /data"#,
        &["securityContext: {runAsUser: 107, runAsGroup: 107, fsGroup: 107}"],
    ));
    c.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/qemu-user",
        "-n",
        APP_NS,
        "--timeout=300s",
    ]);
    let log = c.pod_log(APP_NS, "qemu-user", "c");
    println!("fsgroup: {}", log.lines().collect::<Vec<_>>().join(" | "));
    assert!(log.contains("uid=107"), "{log}");
    assert!(log.contains("107:107"), "the file is not the pod's: {log}");
    c.kubectl(&["delete", "pod", "-n", APP_NS, "qemu-user", "--wait=true"]);
    // The kubelet unpublishes after the pod object is gone.
    wait_until(
        "the pod's publish mount is gone",
        Duration::from_secs(300),
        || (1..=3).map(|n| ocfs2_mounts(c, n)).collect::<Vec<_>>() == mounts,
    );
}

/// The rounds each writer has reported so far, by pod.
fn rounds(c: &Cluster, pods: &[String]) -> Vec<u64> {
    pods.iter()
        .map(|p| last_report(&c.pod_log(APP_NS, p, "writer")).map_or(0, |r| r.0))
        .collect()
}

/// Waits until every writer reported at least two more rounds than in
/// `since`: they are still writing.
fn writers_go_on(c: &Cluster, pods: &[String], since: &[u64]) {
    wait_until(
        "every writer goes on writing",
        Duration::from_secs(300),
        || {
            rounds(c, pods)
                .iter()
                .zip(since)
                .all(|(now, then)| *now >= then + 20)
        },
    );
}

/// OCFS2 mounts on a node.
fn ocfs2_mounts(c: &Cluster, node: usize) -> usize {
    c.lab
        .must(node, "grep -c ' ocfs2 ' /proc/mounts || true")
        .trim()
        .parse()
        .unwrap()
}

/// The node plugin DaemonSet rolled to a new image tag under the writers'
/// I/O: every node keeps its mounts, no write fails.
fn daemonset_roll(c: &Cluster, pods: &[String]) {
    let mounts: Vec<usize> = (1..=3).map(|n| ocfs2_mounts(c, n)).collect();
    let since = rounds(c, pods);
    let t = Instant::now();
    c.kubectl(&[
        "set",
        "image",
        "-n",
        NS,
        "daemonset/ocfs2-csi-node",
        "ocfs2-csi=localhost/ocfs2-csi:lab-next",
    ]);
    c.kubectl(&[
        "rollout",
        "status",
        "-n",
        NS,
        "daemonset/ocfs2-csi-node",
        "--timeout=900s",
    ]);
    let images = c.kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/component=node",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(
        images
            .split_whitespace()
            .filter(|i| i.ends_with(":lab-next"))
            .count(),
        3,
        "not every node plugin runs the new tag: {images}"
    );
    writers_go_on(c, pods, &since);
    let after: Vec<usize> = (1..=3).map(|n| ocfs2_mounts(c, n)).collect();
    assert_eq!(mounts, after, "OCFS2 mounts per node changed over the roll");
    assert_eq!(write_errors(c, pods), 0);
    println!(
        "daemonset-roll: 3 node plugins on the new tag in {:.1} s; mounts per node {after:?} \
         kept; 0 write errors",
        t.elapsed().as_secs_f64()
    );
}

/// The kubelet on node2 restarted under I/O: its volumes are reconstructed
/// (set up again, still mounted, the pod writes on).
fn kubelet_restart(c: &Cluster, pods: &[String]) {
    let node = 2;
    let pv = shared_pv(c);
    let mounts = ocfs2_mounts(c, node);
    let since = rounds(c, pods);
    let t = Instant::now();
    c.restart_kubelet(node);
    // The new kubelet (its log starts afresh) finds the pod's volume
    // mounted and takes it into its state again; cleanup later proves it
    // by unstaging it on node2 like everywhere else. (Node.status
    // .volumesInUse lists attachable volumes only, not this driver's.)
    wait_until(
        "node2's new kubelet has set the volume up again",
        Duration::from_secs(300),
        || {
            let (_, log) = c.lab.exec(
                node,
                &format!(
                    "grep -F 'MountVolume.SetUp succeeded' /var/log/kubelet.log | grep -cF '{pv}'"
                ),
            );
            log.trim().parse::<u32>().unwrap_or(0) > 0
        },
    );
    writers_go_on(c, pods, &since);
    assert_eq!(ocfs2_mounts(c, node), mounts, "node2's mounts changed");
    let restarts = c.kubectl(&[
        "get",
        "pods",
        "-n",
        APP_NS,
        "-l",
        "app=writers",
        "-o",
        "jsonpath={.items[*].status.containerStatuses[0].restartCount}",
    ]);
    assert!(
        restarts.split_whitespace().all(|r| r == "0"),
        "a writer restarted: {restarts}"
    );
    assert_eq!(write_errors(c, pods), 0);
    println!(
        "kubelet-restart: node2's kubelet back and the volume set up again, writers on, \
         in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A pod with its own ReadWriteOnce claim moved from node1 to node3 keeps
/// its data: unstaged on node1, staged on node3, the same bytes.
fn pod_move(c: &Cluster) {
    let pod = |name: &str, node: usize, cmd: &str| {
        let on = format!("nodeSelector: {{kubernetes.io/hostname: node{node}}}");
        one_shot_pod(name, APP_NS, "mover", cmd, &[&on])
    };
    c.apply(&format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: mover, namespace: {APP_NS}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ocfs2
  resources: {{requests: {{storage: 1Gi}}}}
"#
    ));
    let before = ocfs2_mounts(c, 1);
    c.apply(&pod(
        "mover-a",
        1,
        "dd if=/dev/urandom of=/data/blob bs=1M count=16 conv=fsync 2>/dev/null && sha256sum /data/blob",
    ));
    let wait_done = |name: &str| {
        c.kubectl(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{name}"),
            "-n",
            APP_NS,
            "--timeout=300s",
        ])
    };
    wait_done("mover-a");
    let written = c.pod_log(APP_NS, "mover-a", "c");
    c.kubectl(&["delete", "pod", "-n", APP_NS, "mover-a", "--wait=true"]);
    wait_until(
        "the claim unstaged on node1",
        Duration::from_secs(300),
        || ocfs2_mounts(c, 1) == before,
    );
    c.apply(&pod("mover-b", 3, "sha256sum /data/blob"));
    wait_done("mover-b");
    let read = c.pod_log(APP_NS, "mover-b", "c");
    let sum = |log: &str| {
        log.split_whitespace()
            .find(|w| w.len() == 64)
            .map(String::from)
            .unwrap_or_else(|| panic!("no checksum in {log:?}"))
    };
    assert_eq!(sum(&written), sum(&read), "the data changed on the move");
    println!(
        "pod-move: node1 -> node3, 16 MiB, sha256 {} on both",
        &sum(&read)[..16]
    );
    c.kubectl(&["delete", "pod", "-n", APP_NS, "mover-b", "--wait=true"]);
    c.kubectl(&["delete", "pvc", "-n", APP_NS, "mover", "--wait=true"]);
}

/// A pod on `node` with the raw block claim `claim` as /dev/xvda.
fn block_pod(name: &str, node: usize, claim: &str, cmd: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {APP_NS}}}
spec:
  restartPolicy: Never
  nodeSelector: {{kubernetes.io/hostname: node{node}}}
  containers:
  - name: c
    image: localhost/busybox:lab
    imagePullPolicy: Never
    command: [sh, -c, '{cmd}']
    volumeDevices: [{{name: data, devicePath: /dev/xvda}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}

/// A ReadWriteMany claim with volumeMode Block, used by pods on two nodes
/// at once (a VM disk during live migration): bytes written with O_DIRECT
/// on node1 read back on node2 while the first pod still runs; both pods
/// gone, the volume is unstaged on both and deleted with its claim.
fn block_rwx(c: &Cluster) {
    let t = Instant::now();
    c.apply(&format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: raw, namespace: {APP_NS}}}
spec:
  accessModes: [ReadWriteMany]
  volumeMode: Block
  storageClassName: ocfs2
  resources: {{requests: {{storage: 256Mi}}}}
"#
    ));
    c.apply(&block_pod(
        "raw-a",
        1,
        "raw",
        "dd if=/dev/urandom of=/tmp/p bs=1M count=8 2>/dev/null && \
         dd if=/tmp/p of=/dev/xvda bs=1M seek=1 oflag=direct 2>/dev/null && \
         echo size $(blockdev --getsize64 /dev/xvda) && sha256sum /tmp/p && sleep 3600",
    ));
    let sum = |log: &str| {
        log.split_whitespace()
            .find(|w| w.len() == 64)
            .map(String::from)
    };
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/raw-a",
        "-n",
        APP_NS,
        "--timeout=600s",
    ]);
    wait_until("raw-a wrote its bytes", Duration::from_secs(300), || {
        sum(&c.pod_log(APP_NS, "raw-a", "c")).is_some()
    });
    let written = c.pod_log(APP_NS, "raw-a", "c");
    assert!(
        written.contains(&format!("size {}", 256u64 << 20)),
        "raw-a: {written}"
    );
    c.apply(&block_pod(
        "raw-b",
        2,
        "raw",
        "dd if=/dev/xvda bs=1M skip=1 count=8 iflag=direct 2>/dev/null | sha256sum",
    ));
    c.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/raw-b",
        "-n",
        APP_NS,
        "--timeout=600s",
    ]);
    let phase = c.kubectl(&[
        "get",
        "pod",
        "-n",
        APP_NS,
        "raw-a",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase.trim(), "Running", "raw-a must still hold the volume");
    let read = c.pod_log(APP_NS, "raw-b", "c");
    assert_eq!(sum(&written), sum(&read), "node2 read other bytes: {read}");
    println!(
        "block-rwx: 8 MiB written with O_DIRECT by a pod on node1, the same sha256 {} read \
         by a pod on node2 while the first ran, {:.1} s",
        &sum(&read).unwrap_or_default()[..16],
        t.elapsed().as_secs_f64()
    );
    let pv = c
        .kubectl(&[
            "get",
            "pvc",
            "-n",
            APP_NS,
            "raw",
            "-o",
            "jsonpath={.spec.volumeName}",
        ])
        .trim()
        .to_string();
    let handle = c.kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.csi.volumeHandle}"]);
    let guid = handle
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(guid.len(), 36, "volume handle {handle:?}");
    c.kubectl(&[
        "delete",
        "pod",
        "-n",
        APP_NS,
        "raw-a",
        "raw-b",
        "--wait=true",
    ]);
    // Its map goes at unstage.
    let unstaged = |n: usize| {
        c.lab
            .exec(n, &format!("[ ! -e /dev/mapper/ocfs2csi-{guid} ]"))
            .0
            == 0
    };
    wait_until(
        "raw unstaged on node1 and node2",
        Duration::from_secs(300),
        || unstaged(1) && unstaged(2),
    );
    clone_claim(c, &sum(&written).unwrap_or_default());
    c.kubectl(&["delete", "pvc", "-n", APP_NS, "raw", "--wait=true"]);
    wait_until("the block PV is deleted", Duration::from_secs(300), || {
        !c.kubectl_try(&["get", "pv", &pv]).0
    });
    println!("block-rwx: unstaged on both nodes, {pv} deleted");
}

/// A claim cloned from the unused claim `raw` through `dataSource` (CDI's
/// csi-clone does this): a pod on node3 reads the bytes raw-a wrote.
fn clone_claim(c: &Cluster, written: &str) {
    let t = Instant::now();
    c.apply(&format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: raw-copy, namespace: {APP_NS}}}
spec:
  accessModes: [ReadWriteMany]
  volumeMode: Block
  storageClassName: ocfs2
  dataSource: {{kind: PersistentVolumeClaim, name: raw}}
  resources: {{requests: {{storage: 256Mi}}}}
"#
    ));
    c.apply(&block_pod(
        "raw-c",
        3,
        "raw-copy",
        "dd if=/dev/xvda bs=1M skip=1 count=8 iflag=direct 2>/dev/null | sha256sum",
    ));
    c.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/raw-c",
        "-n",
        APP_NS,
        "--timeout=600s",
    ]);
    let read = c.pod_log(APP_NS, "raw-c", "c");
    assert!(
        !written.is_empty() && read.contains(written),
        "the clone holds other bytes: {read} (written {written})"
    );
    println!(
        "block-rwx: claim raw-copy cloned from raw through dataSource; a pod on node3 read the same sha256 {}, {:.1} s from the claim",
        &written[..16],
        t.elapsed().as_secs_f64()
    );
    c.kubectl(&["delete", "pod", "-n", APP_NS, "raw-c", "--wait=true"]);
    c.kubectl(&["delete", "pvc", "-n", APP_NS, "raw-copy", "--wait=true"]);
}

/// Deleting the pods unstages the volume everywhere; deleting the claim
/// deletes the volume.
fn cleanup(c: &Cluster) {
    let pv = shared_pv(c);
    c.kubectl(&[
        "delete",
        "deployment",
        "-n",
        APP_NS,
        "writers",
        "--wait=true",
    ]);
    c.kubectl(&[
        "wait",
        "--for=delete",
        "pod",
        "-n",
        APP_NS,
        "-l",
        "app=writers",
        "--timeout=300s",
    ]);
    wait_until(
        "no OCFS2 mount left on any node",
        Duration::from_secs(300),
        || (1..=3).all(|n| c.lab.exec(n, "grep -c ' ocfs2 ' /proc/mounts").1.trim() == "0"),
    );
    c.kubectl(&["delete", "pvc", "-n", APP_NS, PVC, "--wait=true"]);
    wait_until("the PV is deleted", Duration::from_secs(300), || {
        !c.kubectl_try(&["get", "pv", &pv]).0
    });
    println!("cleanup: unstaged on every node, {pv} deleted");
}

/// CI's fixed subset of the Kubernetes storage e2e suite (every capability
/// e2e/k8s-storage/ocfs2.yaml claims; `make e2e-k8s` runs all of it), on
/// this cluster: each spec of it must run and pass, none may skip.
fn storage_e2e_subset(c: &Cluster) {
    let focus = storage_e2e::focus_on(CI_SUBSET.iter().map(|(_, spec)| *spec));
    let sel = Selection {
        focus: &focus,
        skip: "",
        labels: "",
        procs: 3,
        timeout: Duration::from_secs(3600),
    };
    let out = common::repo_root().join(".cache/e2e-k8s/nodes-tier");
    let _ = std::fs::remove_dir_all(&out);
    let summary = storage_e2e::run(c, &sel, &out);
    summary.print("the nodes tier's CI subset");
    let mut wrong = Vec::new();
    for (caps, spec) in CI_SUBSET {
        match summary.outcome_of(spec) {
            Some(Outcome::Passed) => println!("storage-e2e: passed ({}) {spec}", caps.join(", ")),
            other => wrong.push(format!("{spec} ({}): {other:?}", caps.join(", "))),
        }
    }
    assert!(
        wrong.is_empty() && summary.exit_ok,
        "storage e2e subset: not passed:\n{}\nlog and junit report: {}",
        wrong.join("\n"),
        out.display()
    );
}

#[test]
fn kube_nodes() {
    // The snapshot and e2e images: the storage e2e subset runs here too.
    let c = scenario("nodes-up", || {
        Cluster::up_with_images("kube-nodes", 3, "12G", &["default", "snapshot", "e2e"])
    });
    for line in c.memory_report() {
        println!("memory: {line}");
    }
    scenario("helm-install", || {
        c.install_snapshot_stack();
        let oos = if node_loss::baseline() {
            "false"
        } else {
            "true"
        };
        // The chart's `fast` failover profile: the node-power-off scenario
        // waits for o2cb's eviction, 32 s instead of 62 s, and the status
        // scenario checks that the profile reached each node's kernel.
        c.helm_install_with(&[
            "--set",
            SNAPSHOTTER,
            "--set",
            &format!("outOfService.enabled={oos}"),
            "--set",
            "o2cb.profile=fast",
        ]);
    });
    let pods = scenario("rwx-deployment", || rwx_deployment(&c));
    scenario("patch-pvc", || patch_pvc(&c, &pods));
    scenario("status", || status_view(&c));
    scenario("fsgroup-107", || fs_group(&c));
    scenario("daemonset-roll", || daemonset_roll(&c, &pods));
    scenario("kubelet-restart", || kubelet_restart(&c, &pods));
    scenario("pod-move", || pod_move(&c));
    scenario("block-rwx", || block_rwx(&c));
    scenario("cleanup", || cleanup(&c));
    scenario("storage-e2e-subset", || storage_e2e_subset(&c));
    scenario("helm-test", || {
        let out = c
            .kube
            .helm(&["test", "ocfs2-csi", "--namespace", NS, "--timeout", "10m"]);
        assert!(out.contains("Succeeded"), "helm test:\n{out}");
    });
    for line in c.memory_report() {
        println!("memory: {line}");
    }
    // Last before the uninstall: it loses a node and brings it back.
    scenario("node-power-off", || node_loss::run(&c));
    scenario("helm-uninstall", || {
        c.kube
            .helm(&["uninstall", "ocfs2-csi", "--namespace", NS, "--wait"]);
        // The pods go after the uninstall returns (garbage collection).
        let ours = || {
            c.kubectl(&[
                "get",
                "all,csidriver,storageclass,clusterrole,clusterrolebinding,role,rolebinding,\
                 configmap,serviceaccount",
                "-A",
                "-l",
                "app.kubernetes.io/instance=ocfs2-csi",
                "-o",
                "name",
            ])
        };
        wait_until(
            "nothing of the chart's left",
            Duration::from_secs(300),
            || ours().trim().is_empty(),
        );
        // What the plugins made themselves: their o2cb number Leases.
        let leases = c.kubectl(&["get", "leases", "-n", NS, "-o", "name"]);
        println!(
            "helm-uninstall: no chart object left; Leases in {NS}: {}",
            leases.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    });
}

/// The node-loss scenario alone on a cluster of its own, for working on it,
/// for the baseline without the feature (`OOS_BASELINE=1`) and for the
/// network cut (`OOS_LOSS=network-cut`):
/// `cargo test --test kube_nodes node_loss_alone -- --ignored --nocapture`.
/// CI runs it in `kube_nodes`.
#[test]
#[ignore]
fn node_loss_alone() {
    let c = scenario("nodes-up", || Cluster::up("kube-power-off", 3, "8G"));
    scenario("helm-install", || {
        let oos = if node_loss::baseline() {
            "false"
        } else {
            "true"
        };
        c.helm_install_with(&["--set", &format!("outOfService.enabled={oos}")]);
    });
    scenario("node-loss", || node_loss::run(&c));
}
