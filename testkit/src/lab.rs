//! The lab from Rust: `e2e/lab.sh` boots QEMU guests sharing one LUN file;
//! this runs commands in them and forms their o2cb cluster. The lab is
//! torn down when the handle is dropped, also when a test panics.

use super::mount_cap;
use ocfs2_csi::cluster::Timeouts;
use ocfs2_csi::csi::volume_capability::access_mode::Mode;
use ocfs2_csi::csi::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Lab {
    pub nodes: usize,
    /// The o2cb timeouts every node plugin of this lab is started with
    /// (they must be identical on all nodes): the defaults unless a test
    /// sets them before it starts any plugin.
    pub timeouts: Timeouts,
    /// The LUN as the guests see it: the virtio disk, or in a SAN lab the
    /// stable path of its multipath map. A guest set up otherwise
    /// (`san_setup_single`) has its own (`guest_lun_of`).
    pub guest_lun: String,
    lun_of: std::sync::Mutex<std::collections::BTreeMap<usize, String>>,
    repo: PathBuf,
    state: PathBuf,
    /// Extra environment for every `e2e/lab.sh` call (`boot_with`).
    env: Vec<(String, String)>,
}

/// Where the lab's node plugins serve their metrics, inside each guest.
pub const METRICS_PORT: u16 = 10001;

/// o2hb's heartbeat interval.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Guest `node`'s address on the lab's cluster network (e2e/lab.sh: eth0),
/// which o2cb and, on the Kubernetes nodes, the Node's InternalIP use.
pub fn cluster_address(node: usize) -> String {
    format!("192.168.77.{}", 10 + node)
}

/// How long o2hb lets a member's heartbeat stand still before it declares
/// the member dead: the dead threshold's worth of heartbeats.
pub fn dead_after(t: &Timeouts) -> Duration {
    HEARTBEAT * t.dead_threshold
}

/// Runs one scenario and prints `scenario-time: NAME SECONDS` when it is
/// done (scripts/tier.sh records these for `make test`'s table).
pub fn scenario<T>(name: &str, f: impl FnOnce() -> T) -> T {
    assert!(!name.contains(char::is_whitespace), "{name}");
    println!("=== scenario {name}");
    let t = Instant::now();
    let r = f();
    println!(
        "scenario-time: {name} {}",
        t.elapsed().as_secs_f64().round() as u64
    );
    r
}

/// Polls `done` every 500 ms until it holds; panics naming `what` after
/// `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Lab {
    /// Boots `nodes` guests with a fresh sparse LUN of `lun_size` (like
    /// "16G"); `name` keeps labs of different tests apart.
    pub fn up(name: &str, nodes: usize, lun_size: &str) -> Lab {
        Lab::up_with_api(name, nodes, lun_size, None)
    }

    /// Like `up`; with `api_port`, the guests reach that port of the lab
    /// namespace's loopback as 10.0.2.100:6443 (see `relay_into`).
    pub fn up_with_api(name: &str, nodes: usize, lun_size: &str, api_port: Option<u16>) -> Lab {
        Lab::boot(name, nodes, lun_size, api_port, false)
    }

    /// A lab whose guests reach the LUN over iSCSI on two paths each
    /// (`e2e/lab.sh up --san`), through dm-multipath with the project's
    /// `deploy/multipath.conf`; `guest_lun` is the map's
    /// `/dev/disk/by-id/dm-uuid-mpath-<WWID>` path, the same on every guest.
    pub fn up_san(name: &str, nodes: usize, lun_size: &str) -> Lab {
        let mut lab = Lab::boot(name, nodes, lun_size, None, true);
        let started = Instant::now();
        let maps: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=nodes)
                .map(|n| {
                    let lab = &lab;
                    s.spawn(move || lab.san_setup(n))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wwid = maps[0].rsplit('/').next().unwrap().to_string();
        assert!(
            maps.iter().all(|m| *m == maps[0]) && !wwid.is_empty(),
            "the guests' multipath maps differ: {maps:?}"
        );
        lab.guest_lun = format!("/dev/disk/by-id/dm-uuid-mpath-{wwid}");
        lab.on_all(&format!("test -b {}", lab.guest_lun));
        println!(
            "lab: every guest logged in on 2 paths, multipath map {} in {:.1} s",
            lab.guest_lun,
            started.elapsed().as_secs_f64()
        );
        lab
    }

    /// On a SAN lab's guest `node` (again after a reboot): the project's
    /// multipath.conf, both iSCSI paths logged in, multipathd running;
    /// returns the map's /dev/mapper path.
    pub fn san_setup(&self, node: usize) -> String {
        let conf = std::fs::read_to_string(self.repo.join("deploy/multipath.conf")).unwrap();
        let setup = std::fs::read_to_string(self.repo.join("e2e/san-guest.sh")).unwrap();
        self.lun_of.lock().unwrap().remove(&node);
        self.must(
            node,
            &format!("cat > /etc/multipath.conf <<'MPCONF'\n{conf}MPCONF\n{setup}"),
        )
        .trim()
        .to_string()
    }

    /// Sets SAN guest `node` up as a host without multipath: logged in on
    /// path 1 alone, its LUN the SCSI disk's `/dev/disk/by-id/scsi-...`
    /// name, which `guest_lun_of(node)` and its plugins use from now on.
    pub fn san_setup_single(&self, node: usize) -> String {
        let setup = std::fs::read_to_string(self.repo.join("e2e/san-guest.sh")).unwrap();
        let out = self.must(node, &format!("set -- single\n{setup}"));
        let lun = out.lines().last().unwrap_or_default().trim().to_string();
        assert!(lun.starts_with("/dev/disk/by-id/scsi-"), "{lun}");
        self.lun_of.lock().unwrap().insert(node, lun.clone());
        lun
    }

    /// The LUN as guest `node` sees it.
    pub fn guest_lun_of(&self, node: usize) -> String {
        let lun_of = self.lun_of.lock().unwrap();
        lun_of.get(&node).unwrap_or(&self.guest_lun).clone()
    }

    /// Path `path` (1 or 2) of SAN guest `node` loses its link; `path_up`
    /// brings it back.
    pub fn path_down(&self, node: usize, path: usize) {
        self.control_args(&["path-down", &node.to_string(), &path.to_string()]);
    }

    pub fn path_up(&self, node: usize, path: usize) {
        self.control_args(&["path-up", &node.to_string(), &path.to_string()]);
    }

    /// The SAN lab's iSCSI target goes away, its ports dark (tgtd killed,
    /// every path link down) / comes back.
    pub fn target_stop(&self) {
        self.control_args(&["target-stop"]);
    }

    pub fn target_start(&self) {
        self.control_args(&["target-start"]);
    }

    /// The array grows the LUN to `bytes` (e2e/lab.sh grow-lun): virtio
    /// guests see it at once, SAN guests when they rescan.
    pub fn grow_lun(&self, bytes: u64) {
        self.control_args(&["grow-lun", &bytes.to_string()]);
    }

    /// A new LUN zoned to every guest (e2e/lab.sh add-lun): its file here
    /// and its device in the guests. Node plugins started from now on are
    /// given it too, as a chart's `luns` after the change.
    pub fn add_lun(&self, size: &str) -> (PathBuf, String) {
        let out = self
            .script()
            .args(["add-lun", size])
            .output()
            .expect("run e2e/lab.sh add-lun");
        assert!(
            out.status.success(),
            "lab add-lun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let guest = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        let k = self.added_luns().len();
        (self.state.join(format!("lun{k}.raw")), guest)
    }

    /// The guest devices of the LUNs `add_lun` added, in order.
    fn added_luns(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("added-luns"))
            .unwrap_or_default()
            .lines()
            .filter_map(|k| k.trim().parse::<u8>().ok())
            .map(|k| format!("/dev/vd{}", (b'a' + k) as char))
            .collect()
    }

    /// Whether every path of SAN guest `node` is in use: both active in
    /// its multipath map, or on a single-path guest (`san_setup_single`)
    /// its one iSCSI session logged in.
    pub fn all_paths_up(&self, node: usize) -> bool {
        if !self.lun_of.lock().unwrap().contains_key(&node) {
            return self.active_paths(node) == 2;
        }
        let (_, out) = self.exec(
            node,
            "iscsiadm -m session -P 1 2>/dev/null | grep -c 'Session State: LOGGED_IN'",
        );
        out.trim() == "1"
    }

    /// How many of guest `node`'s paths multipath has active and ready.
    pub fn active_paths(&self, node: usize) -> usize {
        let (_, out) = self.exec(
            node,
            "multipath -ll 2>/dev/null | grep -c 'active ready running'",
        );
        out.trim().parse().unwrap_or(0)
    }

    fn boot(name: &str, nodes: usize, lun_size: &str, api_port: Option<u16>, san: bool) -> Lab {
        Lab::boot_with(name, nodes, lun_size, api_port, san, Vec::new())
    }

    /// Like `up_with_api`, with `env` set for every `e2e/lab.sh` call:
    /// another image (`LAB_IMAGE_DIR`, `LAB_KUBE_NODE_BIN`), more memory
    /// (`LAB_MEM`), a data disk (`LAB_DATA_DISK`).
    pub fn boot_with(
        name: &str,
        nodes: usize,
        lun_size: &str,
        api_port: Option<u16>,
        san: bool,
        env: Vec<(String, String)>,
    ) -> Lab {
        let repo = super::repo_root();
        let state = repo.join(".cache/lab").join(name);
        let lab = Lab {
            nodes,
            timeouts: Timeouts::default(),
            guest_lun: "/dev/vda".into(),
            lun_of: Default::default(),
            repo,
            state,
            env,
        };
        let started = Instant::now();
        let mut up = lab.script();
        if let Some(port) = api_port {
            up.env("LAB_API_PORT", port.to_string());
        }
        up.args(["up", "-n", &nodes.to_string(), "--lun-size", lun_size]);
        if san {
            up.arg("--san");
        }
        let out = up.output().expect("run e2e/lab.sh");
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    pub fn lun(&self) -> PathBuf {
        self.state.join("lun.raw")
    }

    /// Whether the guests reach the LUN over iSCSI (`up_san`).
    pub fn is_san(&self) -> bool {
        self.guest_lun != "/dev/vda"
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Runs a shell script on node `node` (1-based): exit code and output.
    pub fn exec(&self, node: usize, script: &str) -> (i32, String) {
        self.exec_within(node, script, None)
    }

    /// `exec` with its own bound instead of lab.sh's LAB_EXEC_TIMEOUT (300 s
    /// by default): for whole suites, whose length is their size, not a
    /// hang.
    pub fn exec_within(&self, node: usize, script: &str, limit: Option<Duration>) -> (i32, String) {
        let mut cmd = self.script();
        if let Some(limit) = limit {
            cmd.env("LAB_EXEC_TIMEOUT", limit.as_secs().max(1).to_string());
        }
        let mut child = cmd
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
        self.must_within(node, script, None)
    }

    /// `must` with `exec_within`'s bound.
    pub fn must_within(&self, node: usize, script: &str, limit: Option<Duration>) -> String {
        let (rc, out) = self.exec_within(node, script, limit);
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
                 ip_address = {}\n\tname = node{i}\n\n",
                i - 1,
                cluster_address(i)
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
        let ns = self.netns();
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
        self.on_all(&members_script(members));
    }

    /// `write_members` on one guest only (one booted again, say).
    pub fn write_members_on(&self, node: usize, members: &[usize]) {
        self.must(node, &members_script(members));
    }

    /// Starts `ocfs2-csi node` on guest `node` (port 10000, metrics on
    /// [`METRICS_PORT`], log in /tmp/node.log), a member of o2cb cluster `cluster` listed in the
    /// static members file.
    pub fn start_node_plugin(&self, node: usize, cluster: &str) {
        self.start_node_plugin_with(node, cluster, "--members-file /etc/ocfs2-csi/members");
    }

    /// `start_node_plugin` with other membership flags (`membership`, words
    /// of a shell command line, e.g. `--membership kubernetes`); the plugin
    /// sees KUBECONFIG=/root/kubeconfig when that file exists. The o2cb
    /// timeouts are the lab's (`timeouts`).
    pub fn start_node_plugin_with(&self, node: usize, cluster: &str, membership: &str) {
        let t = &self.timeouts;
        self.must(
            node,
            &format!(
                "mkdir -p /var/lib/ocfs2-csi && \
                 if [ -f /root/kubeconfig ]; then export KUBECONFIG=/root/kubeconfig; fi && \
                 ocfs2-csi node --endpoint tcp://0.0.0.0:10000 --node-id node{node} \
                   --metrics-address 127.0.0.1:{METRICS_PORT} \
                   --cluster-name {cluster} --cluster-id {cluster}-id {membership} \
                   --dead-threshold {} --idle-timeout-ms {} \
                   --keepalive-delay-ms {} --reconnect-delay-ms {} \
                   {luns} --state-dir /var/lib/ocfs2-csi --log ocfs2_csi=debug,info \
                   >>/tmp/node.log 2>&1 </dev/null &
                 echo $! > /tmp/node.pid",
                t.dead_threshold,
                t.idle_timeout_ms,
                t.keepalive_delay_ms,
                t.reconnect_delay_ms,
                luns = self.lun_flags(node),
            ),
        );
    }

    /// The node plugin's metrics on guest `node` now (Prometheus text).
    pub fn metrics(&self, node: usize) -> String {
        self.must(
            node,
            &format!("wget -q -O - http://127.0.0.1:{METRICS_PORT}/metrics"),
        )
    }

    /// `ocfs2-csi status` on guest `node`, given what its node plugin is
    /// given (`start_node_plugin`); `extra` adds flags (`--json`).
    pub fn status(&self, node: usize, cluster: &str, extra: &str) -> String {
        self.must(
            node,
            &format!(
                "ocfs2-csi status --node-id node{node} --cluster-name {cluster} \
                   {luns} --state-dir /var/lib/ocfs2-csi {extra}",
                luns = self.lun_flags(node),
            ),
        )
    }

    /// `--lun` flags for every LUN guest `node` has (the lab's and any
    /// added since).
    fn lun_flags(&self, node: usize) -> String {
        std::iter::once(self.guest_lun_of(node))
            .chain(self.added_luns())
            .map(|l| format!("--lun {l}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Serves 127.0.0.1:`in_ns` inside the lab's namespace by relaying each
    /// connection to this machine's 127.0.0.1:`to` (say, a Kubernetes API
    /// server the test started). With `up_with_api(.., Some(in_ns))` the
    /// guests reach it as 10.0.2.100:6443. The relay lives as long as the
    /// test process.
    pub fn relay_into(&self, in_ns: u16, to: u16) {
        let ns = self.netns();
        // The listening socket is made in the namespace, by a thread that
        // entered it; accepting and connecting onwards happen out here.
        let listener = std::thread::spawn(move || {
            enter_netns(&ns)?;
            std::net::TcpListener::bind(("127.0.0.1", in_ns))
        })
        .join()
        .expect("relay thread")
        .expect("relay listener in the lab's namespace");
        std::thread::spawn(move || {
            for inner in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    if let Ok(outer) = std::net::TcpStream::connect(("127.0.0.1", to)) {
                        splice(inner, outer);
                    }
                });
            }
        });
    }

    /// Serves `in_ns` of the lab namespace's loopback (say, a port QEMU
    /// forwards to a guest) on this machine's loopback, at the port it
    /// returns. The relay lives as long as the test process.
    pub fn relay_out(&self, in_ns: u16) -> u16 {
        let ns = self.netns();
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a relay port");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for outer in listener.incoming().flatten() {
                let ns = ns.clone();
                std::thread::spawn(move || {
                    // (this thread enters the namespace for good)
                    if let Ok(inner) = connect_in_netns(&ns, in_ns) {
                        splice(outer, inner);
                    }
                });
            }
        });
        port
    }

    /// An HTTP CONNECT proxy on the unix socket `uds` for the Kubernetes API
    /// server's traffic to the nodes (its egress selector `cluster`: logs,
    /// exec, port-forward): a CONNECT to guest I (nodeI or its lab address)
    /// and `port` goes to `first + I` on the namespace's loopback, which
    /// QEMU forwards to that port of guest I (lab.sh: the kubelet's, 10250,
    /// from 11250+I).
    /// Anything else is refused (502).
    pub fn connect_proxy(&self, uds: &Path, port: u16, first: u16) {
        use std::io::Write;
        let ns = self.netns();
        let _ = std::fs::remove_file(uds);
        let listener = std::os::unix::net::UnixListener::bind(uds).expect("bind the proxy socket");
        let nodes = self.nodes;
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                let ns = ns.clone();
                std::thread::spawn(move || {
                    let Some(target) = connect_request(&mut client) else {
                        return;
                    };
                    // The API server dials a Node by its hostname (nodeI)
                    // or its InternalIP, whichever it prefers.
                    let guest = (1..=nodes).find(|i| {
                        target == format!("node{i}:{port}")
                            || target == format!("{}:{port}", cluster_address(*i))
                    });
                    let inner = guest.and_then(|i| connect_in_netns(&ns, first + i as u16).ok());
                    let Some(inner) = inner else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .is_ok()
                    {
                        splice(client, inner);
                    }
                });
            }
        });
    }

    fn netns(&self) -> String {
        std::fs::read_to_string(self.state.join("netns"))
            .expect("lab netns name")
            .trim()
            .to_string()
    }

    /// Boots guest `node` again after a crash (`e2e/lab.sh start`).
    pub fn start_again(&self, node: usize) {
        let out = self
            .script()
            .args(["start", &node.to_string()])
            .output()
            .expect("run e2e/lab.sh start");
        assert!(
            out.status.success(),
            "lab start node{node} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills guest `node`'s QEMU at once (`e2e/lab.sh crash`): power loss.
    pub fn crash(&self, node: usize) {
        self.control("crash", node);
    }

    /// Pauses guest `node`'s vCPU (`e2e/lab.sh freeze`): a hung node, as
    /// its peers see it; `thaw` resumes it.
    pub fn freeze(&self, node: usize) {
        self.control("freeze", node);
    }

    pub fn thaw(&self, node: usize) {
        self.control("thaw", node);
    }

    /// Guest `node`'s LUN stops answering while the guest runs on
    /// (`e2e/lab.sh stall`, a QEMU I/O throttle); `unstall` ends it.
    pub fn stall(&self, node: usize) {
        self.control("stall", node);
    }

    pub fn unstall(&self, node: usize) {
        self.control("unstall", node);
    }

    fn control(&self, verb: &str, node: usize) {
        self.control_args(&[verb, &node.to_string()]);
    }

    fn control_args(&self, args: &[&str]) {
        let out = self
            .script()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run e2e/lab.sh {args:?}: {e}"));
        assert!(
            out.status.success(),
            "lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether guest `node`'s QEMU still runs (a fenced guest resets, and
    /// with -no-reboot its QEMU exits).
    pub fn alive(&self, node: usize) -> bool {
        let pid = std::fs::read_to_string(self.state.join(format!("node-{node}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }

    /// Writes the members file listing `nodes` on every guest, starts their
    /// node plugins (cluster `cluster`) and waits until each is ready;
    /// returns how long each took.
    pub async fn start_cluster(
        &self,
        nodes: &[usize],
        cluster: &str,
        limit: Duration,
    ) -> Vec<Duration> {
        self.write_members(nodes);
        for &node in nodes {
            self.start_node_plugin(node, cluster);
        }
        let mut took = Vec::new();
        for &node in nodes {
            took.push(self.wait_node_ready(node, limit).await);
        }
        took
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

    /// The node plugin's map of the volume whose head has `guid` on
    /// `node`, as `/dev/dm-N`, if it has one.
    pub fn map_device(&self, node: usize, guid: &str) -> Option<String> {
        let out = self.must(
            node,
            &format!(
                "for d in /sys/block/dm-*; do [ -e \"$d/dm/name\" ] && \
                 [ \"$(cat $d/dm/name)\" = ocfs2csi-{guid} ] && echo /dev/${{d##*/}}; done; true"
            ),
        );
        out.lines().next().map(|l| l.trim().to_string())
    }

    /// Maps volume `guid` of the lab's LUN on `node` by hand with dmsetup
    /// (as an operator would to fsck it unstaged), from the GPT the host
    /// reads; returns `/dev/mapper/NAME`. `name` must be unique on the node.
    pub fn map_by_hand(&self, node: usize, guid: &str, name: &str) -> String {
        let v = super::volume_on(&self.lun(), guid);
        let mut table = String::new();
        let mut start = 0;
        for e in &v.extents {
            table.push_str(&format!(
                "{start} {} linear {} {}\n",
                e.size / 512,
                self.guest_lun_of(node),
                e.offset / 512
            ));
            start += e.size / 512;
        }
        let minor = self.must(
            node,
            &format!(
                "printf \"{table}\" | \
                 dmsetup create {name} --noudevsync && \
                 dmsetup info -c --noheadings -o minor {name}"
            ),
        );
        // No udev in the guests: the node may be missing.
        let dev = format!("/dev/mapper/{name}");
        self.must(
            node,
            &format!("[ -b {dev} ] || ln -sf /dev/dm-{} {dev}", minor.trim()),
        );
        dev
    }

    pub fn unmap_by_hand(&self, node: usize, name: &str) {
        self.must(
            node,
            &format!("dmsetup remove --noudevsync {name} && rm -f /dev/mapper/{name}"),
        );
    }

    /// `fsck.ocfs2 -fn` of volume `guid` on `node` (unstaged everywhere),
    /// through a map made by hand; panics with its output unless clean.
    pub fn fsck_volume(&self, node: usize, guid: &str) -> String {
        let dev = self.map_by_hand(node, guid, "fsck-by-hand");
        let out = self.exec(node, &format!("fsck.ocfs2 -fn {dev} 2>&1"));
        self.unmap_by_hand(node, "fsck-by-hand");
        match out {
            (0, text) => text,
            (rc, text) => panic!("fsck.ocfs2 -fn of {guid} on node{node}: exit {rc}: {text}"),
        }
    }
}

fn members_script(members: &[usize]) -> String {
    let text: String = members
        .iter()
        .map(|&i| format!("node{i} {} {}\n", i - 1, cluster_address(i)))
        .collect();
    format!(
        "mkdir -p /etc/ocfs2-csi && printf '{text}' > /etc/ocfs2-csi/members.tmp && \
         mv /etc/ocfs2-csi/members.tmp /etc/ocfs2-csi/members"
    )
}

/// Moves the calling thread (only it) into the lab's network namespace.
fn enter_netns(ns: &str) -> std::io::Result<()> {
    let netns = std::fs::File::open(Path::new("/var/run/netns").join(ns))?;
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn connect_in_netns(ns: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    enter_netns(ns)?;
    std::net::TcpStream::connect(("127.0.0.1", port))
}

/// A stream [`splice`] can copy both ways: TCP or unix.
trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn dup(&self) -> std::io::Result<Self>;
    fn close_write(&self);
}

impl Duplex for std::net::TcpStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Copies both ways until both sides are done.
fn splice<A: Duplex, B: Duplex>(a: A, b: B) {
    let (Ok(mut a2), Ok(mut b2)) = (a.dup(), b.dup()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        b2.close_write();
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut b, &mut a);
    a.close_write();
    let _ = up.join();
}

/// Reads an HTTP CONNECT request's head from `s` and answers it: the
/// target "host:port" it names, or None (answered 400) for anything else.
fn connect_request(s: &mut std::os::unix::net::UnixStream) -> Option<String> {
    use std::io::{Read, Write};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be read here, it is the
    // tunnel's. Heads are a few hundred bytes.
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|l| l.split(' ').next())
        .map(str::to_string);
    if target.is_none() {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    }
    target
}

impl Lab {
    /// What a scenario on this lab starts with: a controller on the LUN
    /// (its state in `dir`), every guest's node plugin ready, and no
    /// volume left by an earlier scenario.
    pub fn scenario_controller(
        &self,
        rt: &tokio::runtime::Runtime,
        dir: &Path,
    ) -> super::Controller {
        let lun = self.lun();
        let controller = rt.block_on(super::Controller::start(std::slice::from_ref(&lun), dir));
        for node in 1..=self.nodes {
            rt.block_on(self.wait_node_ready(node, Duration::from_secs(60)));
        }
        assert!(
            super::volume_partitions(&lun).is_empty(),
            "volumes left by an earlier scenario"
        );
        controller
    }
}

impl Lab {
    /// What a failed test needs from the guests before they go: whether each
    /// node plugin still runs, its log's tail and the kernel's; also kept in
    /// the state folder as node-N.failure.log.
    fn report_guests(&self) {
        for node in 1..=self.nodes {
            let (_, out) = self.exec(
                node,
                "if [ -f /tmp/node.pid ]; then \
                   if kill -0 \"$(cat /tmp/node.pid)\" 2>/dev/null; then echo 'node plugin: running'; \
                   else echo 'node plugin: NOT running'; fi; fi; \
                 echo '--- /tmp/node.log (tail)'; tail -n 40 /tmp/node.log 2>/dev/null; \
                 echo '--- dmesg (tail)'; dmesg | tail -n 25; free -m",
            );
            let file = self.state.join(format!("node-{node}.failure.log"));
            let _ = std::fs::write(&file, &out);
            println!("lab: --- node{node} at the failure ---\n{out}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_guests();
        }
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

// --- Raw block volumes, as kubelet asks for them ------------------------------

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

pub fn block_staging(v: &Volume) -> String {
    format!(
        "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/{}",
        v.volume_context["partitionGuid"]
    )
}

/// The target file kubelet would name for a pod.
pub fn block_target(v: &Volume) -> String {
    format!(
        "/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/{}/pod-1",
        v.volume_context["partitionGuid"]
    )
}

/// NodeStage + NodePublish of the raw block volume `v` on `node` (kubelet
/// makes the parent folders).
pub async fn stage_and_publish_block(lab: &Lab, node: usize, v: &Volume) {
    lab.must(
        node,
        &format!(
            "mkdir -p {} $(dirname {})",
            block_staging(v),
            block_target(v)
        ),
    );
    let mut n = lab.node_client(node).await;
    n.node_stage_volume(NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: block_staging(v),
        volume_capability: Some(block_cap()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("node{node}: stage: {e:?}"));
    n.node_publish_volume(NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: block_staging(v),
        target_path: block_target(v),
        volume_capability: Some(block_cap()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("node{node}: publish: {e:?}"));
}

pub async fn unpublish_and_unstage_block(lab: &Lab, node: usize, v: &Volume) {
    let mut n = lab.node_client(node).await;
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: block_target(v),
    })
    .await
    .unwrap_or_else(|e| panic!("node{node}: unpublish: {e:?}"));
    n.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: block_staging(v),
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
