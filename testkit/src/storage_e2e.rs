//! The Kubernetes storage e2e suite against the driver on a [`Cluster`]:
//! `e2e-storage.test` (test/e2e/storage/external of the k8s.io/kubernetes
//! release the lab runs, built by `scripts/kube-tools.sh --e2e`) through
//! the ginkgo CLI, with the driver as `e2e/k8s-storage/ocfs2.yaml` describes
//! it and the test images `e2e/k8s-storage/repo-list.yaml` names (image
//! group `e2e` of scripts/lab-images.sh).

use super::junit::{self, Case, Outcome};
use super::kube::bin_dir;
use super::kube_nodes::Cluster;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the names of the specs for this driver hold.
pub const DRIVER_SPECS: &str = "External Storage [Driver: ocfs2.csi.dev]";

/// The specs CI runs (the nodes tier, tests/kube_nodes.rs), each with the
/// capabilities of e2e/k8s-storage/ocfs2.yaml it exercises: together every
/// capability claimed there (a unit test below holds the two together), by
/// the quickest spec that shows each on the lab's TCG nodes. `make e2e-k8s`
/// runs every spec.
pub const CI_SUBSET: &[(&[&str], &str)] = &[
    (
        &["persistence", "block"],
        "[Testpattern: Dynamic PV (block volmode)] volumes should store data",
    ),
    (
        &["exec"],
        "[Testpattern: Dynamic PV (default fs)] volumes should allow exec of files on the volume",
    ),
    (
        &["RWX", "multipods"],
        "[Testpattern: Dynamic PV (filesystem volmode)] multiVolume should concurrently access \
         the single volume from pods on different node",
    ),
    (
        &["fsGroup"],
        "[Testpattern: Dynamic PV (default fs)] fsgroupchangepolicy (OnRootMismatch)[LinuxOnly], \
         pod created with an initial fsgroup, new pod fsgroup applied to volume contents",
    ),
    (
        &["controllerExpansion", "nodeExpansion", "onlineExpansion"],
        "[Testpattern: Dynamic PV (block volmode)(allowExpansion)] volume-expand should resize \
         volume when PVC is edited while pod is using it",
    ),
    (
        &["offlineExpansion"],
        "[Testpattern: Dynamic PV (default fs)(allowExpansion)] volume-expand Verify if offline \
         PVC expansion works",
    ),
    (
        &["pvcDataSource", "capReadOnlyMany"],
        "[Testpattern: Dynamic PV (default fs)] provisioning should provision storage with pvc \
         data source (ROX mode)",
    ),
    (
        &["snapshotDataSource"],
        "[Testpattern: Dynamic Snapshot (delete policy)] snapshottable \
         [Feature:VolumeSnapshotDataSource] volume snapshot controller should check snapshot \
         fields, check restore correctly works after modifying source data, check deletion \
         (persistent)",
    ),
    (
        &["readWriteOncePod"],
        "[Testpattern: Dynamic PV (default fs)] read-write-once-pod should block a second pod \
         from using an in-use ReadWriteOncePod volume on the same node",
    ),
    (
        &["multiplePVsSameID"],
        "[Testpattern: Dynamic PV (default fs)] provisioning should mount multiple PV pointing \
         to the same storage on the same node",
    ),
];

/// `s` as a regular expression that matches it literally.
pub fn regex_quote(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A ginkgo focus that selects exactly the specs whose names hold one of
/// `specs`.
pub fn focus_on<'a>(specs: impl IntoIterator<Item = &'a str>) -> String {
    specs
        .into_iter()
        .map(regex_quote)
        .collect::<Vec<_>>()
        .join("|")
}

/// The capabilities a driver file claims: `name: true` under
/// `Capabilities:` (the file's own layout, not YAML in general).
pub fn claimed_capabilities(driver_file: &str) -> Vec<String> {
    driver_file
        .lines()
        .skip_while(|l| l.trim() != "Capabilities:")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .filter_map(|l| l.trim().strip_suffix(": true"))
        .map(str::to_string)
        .collect()
}

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
    /// ginkgo's --label-filter; empty for none (`Disruptive`, `!Disruptive`).
    pub labels: &'a str,
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
    /// This run's specs and another's, as one run.
    pub fn and(mut self, other: Summary) -> Summary {
        self.cases.extend(other.cases);
        self.took += other.took;
        self.exit_ok &= other.exit_ok;
        self
    }

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

    /// The outcome of the one spec whose name holds `spec`; None if no
    /// spec or several did.
    pub fn outcome_of(&self, spec: &str) -> Option<&Outcome> {
        let mut found = self.cases.iter().filter(|c| c.name.contains(spec));
        match (found.next(), found.next()) {
            (Some(c), None) => Some(&c.outcome),
            _ => None,
        }
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
    if !sel.labels.is_empty() {
        ginkgo.extend(["--label-filter", sel.labels]);
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
        // No cloud: the suite's cloud-bound tests skip, saying so. "local"
        // is a provider with SSH to the nodes (the [Disruptive] specs).
        "-provider=local".into(),
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
        .envs(c.ssh.e2e_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run ginkgo (scripts/kube-tools.sh --e2e builds it)");
    // Copied as it comes, not by lines: ginkgo's progress is one line of
    // a character per spec.
    let mut log = std::fs::File::create(out.join("e2e.log")).unwrap();
    let mut from = child.stdout.take().unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
                let _ = log.write_all(&buf[..n]);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// CI's subset shows every capability the driver file claims, and names
    /// none it does not.
    #[test]
    fn ci_subset_covers_every_claimed_capability() {
        let file = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/k8s-storage/ocfs2.yaml"),
        )
        .unwrap();
        let claimed: BTreeSet<String> = claimed_capabilities(&file).into_iter().collect();
        assert!(claimed.contains("RWX") && claimed.len() > 10, "{claimed:?}");
        let shown: BTreeSet<String> = CI_SUBSET
            .iter()
            .flat_map(|(caps, _)| caps.iter().map(|c| c.to_string()))
            .collect();
        assert_eq!(claimed, shown);
    }

    #[test]
    fn the_focus_matches_names_literally() {
        let f = focus_on(["a (b) [c]", "x|y"]);
        assert_eq!(f, "a \\(b\\) \\[c\\]|x\\|y");
    }

    #[test]
    fn capabilities_are_read_from_their_block_only() {
        let file = "DriverInfo:\n  Capabilities:\n    # why\n    exec: true\n\n    \
                    topology: false\n    RWX: true\nTimeouts:\n  PodStart: 10m\n";
        assert_eq!(claimed_capabilities(file), ["exec", "RWX"]);
    }
}
