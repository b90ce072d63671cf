//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager on loopback (scripts/kube-up.sh), built from the
//! Go module proxy at pinned versions (scripts/kube-tools.sh, cached in
//! the per-user cache), plus the real CSI sidecars (csi-provisioner,
//! csi-resizer) talking to it. No fakes: requests go over HTTPS to the real
//! API server, authenticated as an admin by bearer token.
//!
//! Uses only std, tempfile and serde_json; HTTP is done by `curl`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The per-user cache of pinned external builds, outside the clone: the
/// same rule as scripts/cache.sh.
pub fn user_cache() -> PathBuf {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    env("OCFS2_CSI_CACHE")
        .map(PathBuf::from)
        .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ocfs2-csi")))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/ocfs2-csi")))
        .expect("OCFS2_CSI_CACHE, XDG_CACHE_HOME or HOME must be set")
}

/// Where scripts/kube-tools.sh puts the binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("KUBE_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_cache().join("kube/bin"))
}

/// Builds (or finds cached) etcd, kube-apiserver, kube-controller-manager,
/// csi-provisioner and csi-resizer. Returns how long that took. The first run
/// on a fresh machine compiles for minutes; later runs take a fraction of a
/// second. Panics with the script's output if it fails.
pub fn ensure_tools() -> Duration {
    let start = Instant::now();
    let out = Command::new(super::repo_root().join("scripts/kube-tools.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kube-tools.sh");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "scripts/kube-tools.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

pub struct Kube {
    /// State and logs: etcd data, certs, kube-apiserver.log, ... (removed on
    /// drop unless KUBE_KEEP=1, for a look after a failure).
    pub dir: TempDir,
    pub kubeconfig: PathBuf,
    /// https://127.0.0.1:PORT
    pub server: String,
    /// Admin bearer token (group system:masters).
    pub token: String,
    /// The API server's self-signed certificate (its own CA).
    pub ca: PathBuf,
    /// The controller manager's /healthz URL; None when KUBE_CONTROLLERS=none.
    pub kcm_healthz: Option<String>,
    /// Time spent in scripts/kube-tools.sh and scripts/kube-up.sh.
    pub tools_time: Duration,
    pub up_time: Duration,
    sidecars: Mutex<Vec<(u32, PathBuf)>>,
}

impl Kube {
    /// Builds the tools if needed, then starts a fresh control plane in a new
    /// temporary directory and waits until it is ready.
    pub fn up() -> Kube {
        Kube::up_with(&[])
    }

    /// Like `up`, with extra environment for scripts/kube-up.sh (e.g.
    /// `KUBE_SCHEDULER=1`, `KUBE_CONTROLLERS=*`).
    pub fn up_with(env: &[(&str, &str)]) -> Kube {
        let tools_time = ensure_tools();
        let dir = tempfile::Builder::new()
            .prefix("ocfs2-csi-kube.")
            .tempdir()
            .expect("tempdir");
        let start = Instant::now();
        let out = Command::new(super::repo_root().join("scripts/kube-up.sh"))
            .arg(dir.path())
            // The watchdog tears the control plane down if this test process
            // dies without running Drop.
            .env("KUBE_UP_OWNER_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/kube-up.sh");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "scripts/kube-up.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let up_time = start.elapsed();
        let env = std::fs::read_to_string(dir.path().join("env")).expect("kube-up.sh wrote env");
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .unwrap_or("")
                .to_string()
        };
        let kcm = var("KCM_HEALTHZ");
        Kube {
            kubeconfig: dir.path().join("kubeconfig"),
            server: var("SERVER"),
            token: var("TOKEN"),
            ca: PathBuf::from(var("CA")),
            kcm_healthz: (!kcm.is_empty()).then_some(kcm),
            tools_time,
            up_time,
            sidecars: Mutex::new(Vec::new()),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the real `helm` (Helm v4, from scripts/chart-deps.sh) against
    /// this API server, from the repository root; its own state stays in
    /// this control plane's folder. Panics with the output unless it
    /// succeeds.
    pub fn helm(&self, args: &[&str]) -> String {
        let bin = user_cache().join("bin/helm");
        assert!(
            bin.is_file(),
            "{} missing: run scripts/chart-deps.sh",
            bin.display()
        );
        let out = Command::new(&bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", self.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", self.path().join("helm-config"))
            .env("HELM_DATA_HOME", self.path().join("helm-data"))
            .current_dir(super::repo_root())
            .output()
            .expect("run helm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "helm {args:?}:\n{text}");
        text
    }

    /// One request to the API server, like `kubectl get --raw` and friends:
    /// METHOD ("GET", "POST", "PUT", "PATCH" as a JSON merge patch, "DELETE")
    /// on PATH ("/api/v1/namespaces"), with an optional JSON body. Returns
    /// the HTTP status and the parsed body (Null when empty or not JSON).
    pub fn kubectl_like(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{}", self.server, path);
        let (status, text) = self.curl(method, &url, body);
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Like `kubectl_like`, but panics unless the status is 2xx.
    pub fn request_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let (status, value) = self.kubectl_like(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {value}"
        );
        value
    }

    /// A token of ServiceAccount `name` in `namespace` (the TokenRequest
    /// API, valid for an hour): a client with that account's RBAC only.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let reply = self.request_ok(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
            Some(&serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600}
            })),
        );
        reply["status"]["token"]
            .as_str()
            .expect("token in the TokenRequest reply")
            .to_string()
    }

    /// Plain-text GET of an API server path such as /readyz?verbose.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        self.curl("GET", &format!("{}{}", self.server, path), None)
    }

    /// Polls `check` every 100 ms until it returns Some, or panics after
    /// `timeout` with `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The controller manager's /healthz: (status, body). Its serving
    /// certificate is self-signed in memory, so this one is not verified.
    pub fn kcm_health(&self) -> Option<(u16, String)> {
        let url = self.kcm_healthz.as_ref()?;
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        Some(split_status(&String::from_utf8_lossy(&out.stdout)))
    }

    fn curl(&self, method: &str, url: &str, body: Option<&serde_json::Value>) -> (u16, String) {
        // The token goes in through stdin (-H @-), not the command line.
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let body_file = body.map(|b| {
            let mut f = tempfile::NamedTempFile::new_in(self.dir.path()).expect("body file");
            f.write_all(b.to_string().as_bytes()).expect("write body");
            f
        });
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-H", "@-", "-H", "Accept: application/json"])
            .args(["-w", "\n%{http_code}"]);
        if let Some(f) = &body_file {
            cmd.args(["-H", &format!("Content-Type: {content_type}")])
                .arg("--data-binary")
                .arg(format!("@{}", f.path().display()));
        }
        let mut child = cmd
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn curl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("Authorization: Bearer {}\n", self.token).as_bytes())
            .expect("token to curl");
        let out = child.wait_with_output().expect("curl");
        assert!(
            out.status.success(),
            "curl {method} {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        split_status(&String::from_utf8_lossy(&out.stdout))
    }

    /// Starts `bin_dir()/NAME --kubeconfig K --csi-address SOCKET ARGS...`
    /// (NAME: "csi-provisioner" or "csi-resizer"), logging to DIR/NAME.log.
    /// The caller owns the child; any still running when the Kube is dropped
    /// is stopped first.
    pub fn start_sidecar(&self, name: &str, csi_socket: &Path, args: &[&str]) -> Child {
        let bin = bin_dir().join(name);
        assert!(
            bin.is_file(),
            "{} is missing (scripts/kube-tools.sh)",
            bin.display()
        );
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("sidecar log");
        let child = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--csi-address")
            .arg(csi_socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.sidecars.lock().unwrap().push((child.id(), bin));
        child
    }

    /// A sidecar's log so far (empty if it has none yet).
    pub fn sidecar_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The tail of every log in the directory, for assertion messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let from = all.len().saturating_sub(lines);
                out += &format!("--- {} ---\n{}\n", p.display(), all[from..].join("\n"));
            }
        }
        out
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Sidecars the caller did not stop: only if the pid is still that binary.
        for (pid, bin) in self.sidecars.lock().unwrap().drain(..) {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if exe.as_deref() == Some(bin.as_path()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        let _ = Command::new(super::repo_root().join("scripts/kube-down.sh"))
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if std::env::var_os("KUBE_KEEP").is_some_and(|v| v == "1") {
            let kept = self.dir.path().to_path_buf();
            let _ = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("placeholder tempdir"),
            )
            .keep();
            eprintln!(
                "KUBE_KEEP=1: control plane state kept in {}",
                kept.display()
            );
        }
    }
}

/// Splits curl's "BODY\nSTATUS" (from -w "\n%{http_code}").
fn split_status(out: &str) -> (u16, String) {
    match out.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
        None => (out.trim().parse().unwrap_or(0), String::new()),
    }
}
