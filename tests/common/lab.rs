//! The lab from Rust: `e2e/lab.sh` boots QEMU guests sharing one LUN file;
//! this runs commands in them and forms their o2cb cluster. The lab is
//! torn down when the handle is dropped, also when a test panics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Lab {
    pub nodes: usize,
    repo: PathBuf,
    state: PathBuf,
}

/// The repository root (where e2e/ lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Lab {
    /// Boots `nodes` guests with a fresh sparse LUN of `lun_size` (like
    /// "16G"); `name` keeps labs of different tests apart.
    pub fn up(name: &str, nodes: usize, lun_size: &str) -> Lab {
        let repo = repo();
        let state = repo.join(".cache/lab").join(name);
        let lab = Lab { nodes, repo, state };
        let started = Instant::now();
        let out = lab
            .script()
            .args(["up", "-n", &nodes.to_string(), "--lun-size", lun_size])
            .output()
            .expect("run e2e/lab.sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "lab up failed (console logs in {}):\n{text}",
            lab.state.display()
        );
        println!(
            "lab: {nodes} guests up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        lab
    }

    fn script(&self) -> Command {
        let mut cmd = Command::new(self.repo.join("e2e/lab.sh"));
        cmd.env("LAB_STATE_DIR", &self.state)
            .env("OCFS2_CSI_BIN", super::binary())
            .stdin(Stdio::null());
        cmd
    }

    pub fn lun(&self) -> PathBuf {
        self.state.join("lun.raw")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Runs a shell script on node `node` (1-based): exit code and output.
    pub fn exec(&self, node: usize, script: &str) -> (i32, String) {
        let mut child = self
            .script()
            .args(["exec", &node.to_string(), "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run e2e/lab.sh exec");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    /// Runs a script that must succeed; the panic names node, script, output
    /// and where the console logs are.
    pub fn must(&self, node: usize, script: &str) -> String {
        let (rc, out) = self.exec(node, script);
        assert!(
            rc == 0,
            "node{node}: `{}` exited {rc}:\n{out}\n(console logs in {})",
            script.trim(),
            self.state.display()
        );
        out
    }

    /// `must` on every node at once; outputs in node order.
    pub fn on_all(&self, script: &str) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=self.nodes)
                .map(|n| s.spawn(move || self.must(n, script)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Joins every guest to the o2cb cluster `cluster` with global heartbeat
    /// on the LUN's heartbeat region: cluster.conf, register, start.
    pub fn form_cluster(&self, cluster: &str, heartbeat_region: &str) {
        let mut conf = format!(
            "cluster:\n\tname = {cluster}\n\theartbeat_mode = global\n\tnode_count = {}\n\n",
            self.nodes
        );
        for i in 1..=self.nodes {
            conf += &format!(
                "node:\n\tnumber = {}\n\tcluster = {cluster}\n\tip_port = 7777\n\t\
                 ip_address = 192.168.77.{}\n\tname = node{i}\n\n",
                i - 1,
                10 + i
            );
        }
        conf += &format!("heartbeat:\n\tcluster = {cluster}\n\tregion = {heartbeat_region}\n");
        self.on_all(&format!(
            "mkdir -p /etc/ocfs2 && cat >/etc/ocfs2/cluster.conf <<'CONF'\n{conf}CONF\n\
             o2cb register-cluster {cluster}"
        ));
        self.on_all(&format!("o2cb start-heartbeat {cluster}"));
    }

    /// Makes every guest's kernel partitions match the GPT, with the
    /// driver's own BLKPG sync (never BLKRRPART: volumes stay mounted).
    pub fn sync_partitions(&self) {
        self.on_all("ocfs2-csi sync-partitions --lun /dev/vda");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.script().arg("down").output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!(
                    "lab down: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        println!("lab: console logs kept in {}", self.state.display());
    }
}
