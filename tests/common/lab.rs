//! The lab from Rust: `e2e/lab.sh` boots QEMU guests sharing one LUN file;
//! this runs commands in them and forms their o2cb cluster. The lab is
//! torn down when the handle is dropped, also when a test panics.

use super::mount_cap;
use ocfs2_csi::csi::volume_capability::access_mode::Mode;
use ocfs2_csi::csi::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    /// A gRPC channel to port 10000 of guest `node` (its node plugin). The
    /// guests are reachable only inside the lab's network namespace, so
    /// each connection is made from a thread that entered it; the socket
    /// stays there and is then used from anywhere.
    pub async fn channel(&self, node: usize) -> tonic::transport::Channel {
        let ns = std::fs::read_to_string(self.state.join("netns"))
            .expect("lab netns name")
            .trim()
            .to_string();
        let port = 10100 + node as u16;
        let connector = tower::service_fn(move |_: http::Uri| {
            let ns = ns.clone();
            async move {
                let stream = std::thread::spawn(move || connect_in_netns(&ns, port))
                    .join()
                    .expect("netns connect thread")?;
                stream.set_nonblocking(true)?;
                let stream = tokio::net::TcpStream::from_std(stream)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // Lazy: connects on the first call, so a plugin not listening yet is
        // an error of that call, not a panic here.
        tonic::transport::Endpoint::from_static("http://lab-guest")
            .connect_with_connector_lazy(connector)
    }

    /// The static membership file listing guests `members` (1-based), in
    /// the format `NAME NUMBER ADDRESS`, written on every guest.
    pub fn write_members(&self, members: &[usize]) {
        let text: String = members
            .iter()
            .map(|i| format!("node{i} {} 192.168.77.{}\n", i - 1, 10 + i))
            .collect();
        self.on_all(&format!(
            "mkdir -p /etc/ocfs2-csi && printf '{text}' > /etc/ocfs2-csi/members.tmp && \
             mv /etc/ocfs2-csi/members.tmp /etc/ocfs2-csi/members"
        ));
    }

    /// Starts `ocfs2-csi node` on guest `node` (port 10000, log in
    /// /tmp/node.log), a member of o2cb cluster `cluster`.
    pub fn start_node_plugin(&self, node: usize, cluster: &str) {
        self.must(
            node,
            &format!(
                "mkdir -p /var/lib/ocfs2-csi && \
                 ocfs2-csi node --endpoint tcp://0.0.0.0:10000 --node-id node{node} \
                   --cluster-name {cluster} --members-file /etc/ocfs2-csi/members \
                   --lun /dev/vda --state-dir /var/lib/ocfs2-csi --log ocfs2_csi=debug,info \
                   >>/tmp/node.log 2>&1 </dev/null &
                 echo $! > /tmp/node.pid"
            ),
        );
    }

    /// Waits until guest `node`'s plugin says ready; returns how long.
    pub async fn wait_node_ready(&self, node: usize, limit: Duration) -> Duration {
        use ocfs2_csi::csi::identity_client::IdentityClient;
        let started = Instant::now();
        loop {
            let channel = self.channel(node).await;
            if let Ok(r) = IdentityClient::new(channel)
                .probe(ocfs2_csi::csi::ProbeRequest {})
                .await
            {
                if r.into_inner().ready == Some(true) {
                    return started.elapsed();
                }
            }
            if started.elapsed() > limit {
                let (_, log) = self.exec(node, "tail -n 40 /tmp/node.log");
                panic!("node{node}: plugin not ready within {limit:?}; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn node_client(
        &self,
        node: usize,
    ) -> ocfs2_csi::csi::node_client::NodeClient<tonic::transport::Channel> {
        ocfs2_csi::csi::node_client::NodeClient::new(self.channel(node).await)
    }

    /// Makes every guest's kernel partitions match the GPT, with the
    /// driver's own BLKPG sync (never BLKRRPART: volumes stay mounted).
    pub fn sync_partitions(&self) {
        self.on_all("ocfs2-csi sync-partitions --lun /dev/vda");
    }
}

fn connect_in_netns(ns: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    let netns = std::fs::File::open(Path::new("/var/run/netns").join(ns))?;
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    std::net::TcpStream::connect(("127.0.0.1", port))
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

// --- Node RPCs as kubelet makes them -----------------------------------------

pub fn staging(v: &Volume) -> String {
    format!(
        "/var/lib/kubelet/plugins/ocfs2/{}/globalmount",
        v.volume_id.replace(':', "_")
    )
}

pub fn target(v: &Volume) -> String {
    format!(
        "/var/lib/kubelet/pods/{}/mount",
        v.volume_id.replace(':', "_")
    )
}

pub fn stage_request(v: &Volume, staging: &str) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.into(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    }
}

pub fn publish_request(v: &Volume, read_only: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging(v),
        target_path: target(v),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        readonly: read_only,
        volume_context: v.volume_context.clone(),
        ..Default::default()
    }
}

/// NodeStage + NodePublish of `v` on `node`, as kubelet would (it makes the
/// parent folders).
pub async fn stage_and_publish(lab: &Lab, node: usize, v: &Volume) -> Duration {
    lab.must(
        node,
        &format!("mkdir -p {} $(dirname {})", staging(v), target(v)),
    );
    let mut n = lab.node_client(node).await;
    let t = Instant::now();
    n.node_stage_volume(stage_request(v, &staging(v)))
        .await
        .unwrap_or_else(|e| panic!("node{node}: stage: {e:?}"));
    let took = t.elapsed();
    n.node_publish_volume(publish_request(v, false))
        .await
        .unwrap_or_else(|e| panic!("node{node}: publish: {e:?}"));
    took
}

pub async fn unpublish_and_unstage(lab: &Lab, node: usize, v: &Volume) {
    let mut n = lab.node_client(node).await;
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target(v),
    })
    .await
    .unwrap_or_else(|e| panic!("node{node}: unpublish: {e:?}"));
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging(v),
    })
    .await
    .unwrap_or_else(|e| panic!("node{node}: unstage: {e:?}"));
}

pub fn expand_req(v: &Volume) -> NodeExpandVolumeRequest {
    NodeExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        volume_path: target(v),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        ..Default::default()
    }
}
