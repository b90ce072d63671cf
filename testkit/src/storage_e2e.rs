//! The Kubernetes storage e2e suite against the driver on a [`Cluster`]:
//! `e2e-storage.test` (test/e2e/storage/external of the k8s.io/kubernetes
//! release the lab runs, built by `scripts/kube-tools.sh --e2e`) through
//! the ginkgo CLI, with the driver as `e2e/k8s-storage/ocfs2.yaml` describes
//! it and the test images `e2e/k8s-storage/repo-list.yaml` names (image
//! group `e2e` of scripts/lab-images.sh).

use super::junit::{self, Case, Outcome};
use super::kube::bin_dir;
use super::kube_nodes::Cluster;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the names of the specs for this driver hold.
pub const DRIVER_SPECS: &str = "External Storage [Driver: ocfs2.csi.dev]";

/// The reason ginkgo's report gives a spec the focus or skip left out.
const NOT_SELECTED: &str = "skipped";

/// Which specs run, and how.
pub struct Selection<'a> {
    /// ginkgo's --focus: a regular expression over the specs' full names.
    pub focus: &'a str,
    /// ginkgo's --skip; empty for none. What the suite skips itself (a
    /// capability not claimed, no SSH to the nodes) it reports with its
    /// reason, so only what it would run and cannot here belongs here.
    pub skip: &'a str,
    /// Parallel ginkgo processes; the [Serial] specs run alone at the end.
    pub procs: usize,
    /// The whole run's bound (ginkgo --timeout): a hang ends.
    pub timeout: Duration,
}

/// What a run reported.
pub struct Summary {
    pub cases: Vec<Case>,
    pub took: Duration,
    /// ginkgo's exit status was success.
    pub exit_ok: bool,
}

impl Summary {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    pub fn failed(&self) -> Vec<&Case> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
            .collect()
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_) | Outcome::Pending))
    }

    /// Ran / passed / failed / skipped, the skipped by reason and each
    /// failure with the first line of its message.
    pub fn print(&self, what: &str) {
        let failed = self.failed();
        println!(
            "storage e2e ({what}): {} specs: {} passed, {} failed, {} skipped in {:.0} s",
            self.cases.len(),
            self.passed(),
            failed.len(),
            self.skipped(),
            self.took.as_secs_f64()
        );
        for (why, n) in junit::skipped_by_reason(&self.cases) {
            println!("  skipped {n:>3}: {why}");
        }
        for c in failed {
            let Outcome::Failed(why) = &c.outcome else {
                continue;
            };
            println!("  FAILED {}", c.name);
            println!("         {}", why.lines().next().unwrap_or(""));
        }
    }
}

/// Runs the suite's `sel` against `c`, its output shown and kept in
/// `out/e2e.log`, its junit report in `out/junit_01.xml`.
pub fn run(c: &Cluster, sel: &Selection, out: &Path) -> Summary {
    let root = super::repo_root();
    let bin = bin_dir();
    std::fs::create_dir_all(out).unwrap();
    let timeout = format!("{}s", sel.timeout.as_secs());
    let procs = sel.procs.to_string();
    let mut ginkgo = vec![
        "--procs",
        &procs,
        "--timeout",
        &timeout,
        "--no-color",
        "--focus",
        sel.focus,
    ];
    if !sel.skip.is_empty() {
        ginkgo.extend(["--skip", sel.skip]);
    }
    let suite = [
        format!("-kubeconfig={}", c.kube.kubeconfig.display()),
        format!("-kubectl-path={}", bin.join("kubectl").display()),
        format!(
            "-storage.testdriver={}",
            root.join("e2e/k8s-storage/ocfs2.yaml").display()
        ),
        format!(
            "-kube-test-repo-list={}",
            root.join("e2e/k8s-storage/repo-list.yaml").display()
        ),
        // No cloud: the suite's provider-bound tests skip, saying so.
        "-provider=skeleton".into(),
        format!("-report-dir={}", out.display()),
    ];
    println!(
        "storage e2e: ginkgo {} e2e-storage.test -- {}",
        ginkgo.join(" "),
        suite.join(" ")
    );
    let started = Instant::now();
    let mut child = Command::new(bin.join("ginkgo"))
        .args(&ginkgo)
        .arg(bin.join("e2e-storage.test"))
        .arg("--")
        .args(&suite)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run ginkgo (scripts/kube-tools.sh --e2e builds it)");
    let mut log = std::fs::File::create(out.join("e2e.log")).unwrap();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        let _ = writeln!(log, "{line}");
    }
    let status = child.wait().expect("wait for ginkgo");
    let report = out.join("junit_01.xml");
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no junit report at {} ({e}); ginkgo ended {status}",
            report.display()
        )
    });
    // The binary also defines the common node and network specs (see
    // e2e/kube/README.md). A failure anywhere (a suite setup node, too)
    // stays.
    // Specs the focus left out are reported skipped with no reason.
    let cases = junit::cases(&xml)
        .into_iter()
        .filter(|c| match &c.outcome {
            Outcome::Failed(_) => true,
            Outcome::Skipped(why) if why == NOT_SELECTED => false,
            _ => c.name.contains(DRIVER_SPECS),
        })
        .collect();
    Summary {
        cases,
        took: started.elapsed(),
        exit_ok: status.success(),
    }
}
