//! `make e2e-k8s`: the Kubernetes storage e2e suite (k8s.io/kubernetes
//! v1.37.1's test/e2e/storage/external, the conformance bar the ecosystem's
//! CSI drivers run) against the driver on the lab's Kubernetes nodes: three
//! QEMU guests, the chart installed with helm and its snapshotter on, the
//! cluster's snapshot CRDs and snapshot-controller, the suite's test images.
//! The driver is described by e2e/k8s-storage/ocfs2.yaml. The suite's SSH
//! (the [Disruptive] specs stop and start kubelets) reaches every node as
//! root through node1's SSH server (`kube_nodes::Ssh`, `-provider=local`).
//!
//!   E2E_FOCUS   ginkgo --focus (default: every spec for this driver)
//!   E2E_SKIP    ginkgo --skip (default: none; what the suite cannot run
//!               here it skips itself and says why)
//!   E2E_PROCS   parallel ginkgo processes (default 3); the [Disruptive]
//!               specs run after the rest, in one process
//!   E2E_OUT     where the logs and junit reports go, in parallel/ and
//!               disruptive/ (default
//!               .cache/e2e-k8s/<start time>)
//!
//! Prints ran / passed / failed / skipped with the reasons, and exits 1 on
//! any failure.

use ocfs2_csi_testkit as common;

use common::kube_nodes::{self, Cluster};
use common::report::Report;
use common::storage_e2e::{self, Selection};
use std::time::{Duration, Instant};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let total = Instant::now();
    let mut report = Report::default();
    let focus = env_or(
        "E2E_FOCUS",
        &storage_e2e::regex_quote(storage_e2e::DRIVER_SPECS),
    );
    let skip = env_or("E2E_SKIP", "");
    let procs: usize = env_or("E2E_PROCS", "3")
        .parse()
        .expect("E2E_PROCS: a number");
    let out = std::env::var_os("E2E_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            common::repo_root().join(format!(".cache/e2e-k8s/{secs}"))
        });
    let c = report.step(
        "3 QEMU guests become Kubernetes nodes, with the snapshot and e2e images",
        || {
            Cluster::up_with_images(
                "e2e-k8s",
                3,
                "32G",
                &["default", "snapshot", "e2e", "e2e-hello-populator"],
            )
        },
    );
    report.step(
        "the cluster's snapshot CRDs and snapshot-controller",
        || c.install_snapshot_stack(),
    );
    report.step("helm install the chart, snapshotter on", || {
        c.helm_install_with(&["--set", kube_nodes::SNAPSHOTTER])
    });
    // The [Disruptive] specs stop and start kubelets: they run after the
    // others, one at a time, so that no other spec shares a node with them.
    let pass = |labels: &'static str, procs: usize| Selection {
        focus: &focus,
        skip: &skip,
        labels,
        procs,
        timeout: Duration::from_secs(6 * 3600),
    };
    let summary = report.step("the storage e2e suite but [Disruptive]", || {
        storage_e2e::run(&c, &pass("!Disruptive", procs), &out.join("parallel"))
    });
    let summary = summary.and(report.step("the [Disruptive] specs, one at a time", || {
        storage_e2e::run(&c, &pass("Disruptive", 1), &out.join("disruptive"))
    }));
    println!("\nreport:");
    for (what, s) in &report.0 {
        println!("  {s:7.1} s  {what}");
    }
    println!("  {:7.1} s  in all", total.elapsed().as_secs_f64());
    println!(
        "the suite's logs and junit reports: {}/{{parallel,disruptive}}",
        out.display()
    );
    summary.print("make e2e-k8s");
    let failed = !summary.failed().is_empty() || !summary.exit_ok;
    // Down before exiting: exit skips the lab's and API server's Drop.
    drop(c);
    if failed {
        std::process::exit(1);
    }
}
