//! `make demo`: the driver as a user meets it. Three QEMU guests become
//! Kubernetes nodes (kubelet, containerd, kube-proxy) of a control plane on
//! this machine; the chart is installed with `helm install`; a
//! ReadWriteMany claim is shared by a writer pod on each node; it is grown
//! with `kubectl patch pvc` while they write. Ends with a line per step and
//! its time.
//!
//! DEMO_KEEP=1 leaves the cluster running at the end and prints how to use
//! kubectl against it, until Enter is pressed.

use ocfs2_csi_testkit as common;

use common::kube::bin_dir;
use common::kube_nodes::{last_report, writer_pods, writers_manifest, Cluster};
use common::lab::wait_until;
use common::report::Report;
use std::time::{Duration, Instant};

const NS: &str = "default";
const PVC: &str = "shared";

/// Each writer's last report: (pod, rounds, volume KiB, files seen).
fn reports(c: &Cluster, pods: &[String]) -> Vec<(String, u64, u64, usize)> {
    pods.iter()
        .filter_map(|p| {
            let (r, kib, files) = last_report(&c.pod_log(NS, p, "writer"))?;
            Some((p.clone(), r, kib, files))
        })
        .collect()
}

fn main() {
    let total = Instant::now();
    let mut report = Report::default();
    let c = report.step(
        "3 QEMU guests (TCG) become Kubernetes nodes (kubelet, containerd, kube-proxy)",
        || Cluster::up("kube-demo", 3, "16G"),
    );
    report.step(
        "helm install the chart (with outOfService.enabled); the node plugins form the o2cb cluster",
        || c.helm_install_with(&["--set", "outOfService.enabled=true"]),
    );
    let pods = report.step(
        "a 1Gi ReadWriteMany claim and a writer pod on each node",
        || {
            c.apply(&writers_manifest(PVC, "1Gi", NS));
            c.kubectl(&[
                "rollout",
                "status",
                "-n",
                NS,
                "deployment/writers",
                "--timeout=600s",
            ]);
            let pods = writer_pods(&c, NS);
            wait_until(
                "every writer sees the 3 files",
                Duration::from_secs(300),
                || {
                    let r = reports(&c, &pods);
                    r.len() == pods.len() && r.iter().all(|w| w.3 == 3)
                },
            );
            for (pod, rounds, kib, files) in reports(&c, &pods) {
                println!(
                    "   {pod} on node{}: {rounds} writes, sees {files} writers' files, \
                     volume {} MiB",
                    c.node_of(NS, &pod),
                    kib / 1024
                );
            }
            pods
        },
    );
    report.step("kubectl patch pvc shared to 2Gi while they write", || {
        let before: Vec<u64> = reports(&c, &pods).iter().map(|w| w.2).collect();
        c.grow_claim(NS, PVC, "2Gi");
        wait_until(
            "every writer sees the new size",
            Duration::from_secs(300),
            || {
                let r = reports(&c, &pods);
                r.len() == before.len() && r.iter().zip(&before).all(|(w, b)| w.2 > b + 512 * 1024)
            },
        );
        for (pod, rounds, kib, _) in reports(&c, &pods) {
            let errors = c.pod_log(NS, &pod, "writer").matches("WRITE-ERROR").count();
            println!(
                "   {pod}: volume {} MiB now, {rounds} writes, {errors} failed",
                kib / 1024
            );
        }
    });
    for line in c.memory_report() {
        println!("memory: {line}");
    }
    println!("\nreport:");
    for (what, s) in &report.0 {
        println!("  {s:7.1} s  {what}");
    }
    println!("  {:7.1} s  in all", total.elapsed().as_secs_f64());
    if std::env::var_os("DEMO_KEEP").is_some_and(|v| v == "1") {
        println!(
            "\nThe cluster stays up until you press Enter. In another shell:\n\
             \n  export KUBECONFIG={}\n  export PATH={}:$PATH\n  kubectl get nodes,pods -A -o wide\n  \
             kubectl get pvc,pv\n  kubectl logs -l app=writers --prefix\n\nA guest's own \
             shell: LAB_STATE_DIR={} e2e/lab.sh exec 1 'uptime'",
            c.kube.kubeconfig.display(),
            bin_dir().display(),
            c.lab.state_dir().display()
        );
        let _ = std::io::stdin().read_line(&mut String::new());
    }
}
