//! Lab guests as real Kubernetes nodes: the control plane of `kube.rs`
//! with a scheduler and every default controller, and QEMU guests running
//! containerd, runc, the kubelet and kube-proxy (`e2e/kube-node.sh`), with
//! the container images built here (`scripts/lab-images.sh`) on a
//! read-only data disk, as nothing can be pulled. Tests then drive it as a
//! user does: the real `kubectl` and `helm`.

use super::kube::{bin_dir, user_cache, Kube};
use super::lab::{cluster_address, wait_until, Lab};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the guests reach the API server: the lab namespace's port that
/// QEMU forwards 10.0.2.100:6443 to (`Lab::relay_into`).
const RELAY_PORT: u16 = 16443;
/// The API server as every node and pod sees it.
const GUEST_API: &str = "10.0.2.100";
/// The kubelets' port, and the first of the ports QEMU forwards to it in
/// the lab's namespace (guest I's at this + I: e2e/lab.sh).
const KUBELET_PORT: u16 = 10250;
const KUBELET_FORWARDS: u16 = 11250;
/// The first of the ports QEMU forwards to the guests' SSH servers
/// (e2e/kube-node.sh) in the lab's namespace (guest I's at this + I).
const SSH_FORWARDS: u16 = 12220;
/// Where the chart is installed.
pub const DRIVER_NS: &str = "kube-system";

/// `helm --set` values that turn the chart's snapshotter sidecar on, from
/// the image the nodes imported (image group `snapshot`); the cluster needs
/// [`Cluster::install_snapshot_stack`] first.
pub const SNAPSHOTTER: &str = "sidecars.snapshotter.enabled=true,\
     sidecars.snapshotter.image.registry=localhost,\
     sidecars.snapshotter.image.repository=csi-snapshotter,\
     sidecars.snapshotter.image.tag=lab,sidecars.snapshotter.image.pullPolicy=Never";

pub struct Cluster {
    pub lab: Lab,
    pub kube: Kube,
    pub ssh: Ssh,
}

/// SSH to the nodes as root, as the storage e2e suite's [Disruptive] specs
/// do: every node (its Node address, port 22) through node1's SSH server,
/// which this machine reaches at `bastion`.
pub struct Ssh {
    /// The private key (ed25519) whose public half every node trusts.
    pub key: std::path::PathBuf,
    /// 127.0.0.1:PORT, relayed to node1's port 22.
    pub bastion: String,
}

impl Ssh {
    /// A fresh key pair in `dir`.
    fn keygen(dir: &Path) -> std::path::PathBuf {
        let key = dir.join("id_ed25519");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        output_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "ocfs2-csi-lab", "-f"])
                .arg(&key),
            "ssh-keygen (openssh-client)",
        );
        key
    }

    /// Runs `cmd` on guest `node` as the e2e suite does: OpenSSH's client
    /// to its cluster address through the bastion. Panics unless it
    /// succeeds; returns its output.
    pub fn must(&self, node: usize, cmd: &str) -> String {
        let (host, port) = self.bastion.rsplit_once(':').unwrap();
        let opts = |args: &mut Vec<String>| {
            for o in [
                "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null",
                "LogLevel=ERROR",
                "BatchMode=yes",
            ] {
                args.extend(["-o".into(), o.into()]);
            }
            args.extend(["-i".into(), self.key.display().to_string()]);
        };
        let mut jump = vec!["ssh".to_string()];
        opts(&mut jump);
        jump.extend(["-p".into(), port.into(), "-W".into(), "%h:%p".into()]);
        jump.push(format!("root@{host}"));
        let mut args = Vec::new();
        opts(&mut args);
        args.extend(["-o".into(), format!("ProxyCommand={}", jump.join(" "))]);
        args.push(format!("root@{}", cluster_address(node)));
        args.push(cmd.into());
        output_ok(
            Command::new("ssh").args(&args),
            &format!("ssh node{node} {cmd:?}"),
        )
    }

    /// The environment of the e2e suite's SSH client (test/e2e/framework/ssh).
    pub fn e2e_env(&self) -> [(&'static str, String); 3] {
        [
            ("KUBE_SSH_BASTION", self.bastion.clone()),
            ("KUBE_SSH_KEY_PATH", self.key.display().to_string()),
            ("KUBE_SSH_USER", "root".into()),
        ]
    }
}

/// Runs a repository script with its output shown; panics unless it succeeds.
fn run_script(args: &[&str]) {
    print!("{}", script_output(args));
}

/// What a repository script printed; panics unless it succeeds.
fn script_output(args: &[&str]) -> String {
    output_ok(
        Command::new(super::repo_root().join(args[0])).args(&args[1..]),
        &format!("{args:?}"),
    )
}

/// What `cmd` printed, run with no input; panics naming it (`what`) with
/// its output unless it succeeds.
fn output_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 image holding every file of `dir` (no mount needed: mke2fs -d).
fn data_disk(dir: &Path, file: &Path) {
    let bytes: u64 = std::fs::read_dir(dir)
        .expect("images dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mib = bytes / (1 << 20) * 11 / 10 + 64;
    let _ = std::fs::remove_file(file);
    output_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "lab-data", "-d"])
            .arg(dir)
            .arg(file)
            .arg(format!("{mib}M")),
        "mke2fs",
    );
}

impl Cluster {
    /// Boots `nodes` guests on one virtio LUN of `lun_size` and makes each a
    /// Ready Kubernetes node named nodeI, labelled as one that sees the SAN.
    pub fn up(name: &str, nodes: usize, lun_size: &str) -> Cluster {
        Self::up_with_images(name, nodes, lun_size, &["default"])
    }

    /// [`Cluster::up`] with the images of `groups` (scripts/lab-images.sh:
    /// default, snapshot, e2e, or an image's name) on the nodes. Each set of
    /// groups has a folder of its own: the guests import every archive of it
    /// at boot.
    pub fn up_with_images(name: &str, nodes: usize, lun_size: &str, groups: &[&str]) -> Cluster {
        let started = Instant::now();
        run_script(&["scripts/kube-tools.sh", "--node"]);
        let images = match groups {
            ["default"] => user_cache().join("lab/kube-images"),
            _ => user_cache().join(format!("lab/kube-images-{}", groups.join("-"))),
        };
        let mut args = vec!["scripts/lab-images.sh", images.to_str().unwrap()];
        args.extend_from_slice(groups);
        run_script(&args);
        // Beside the lab's state folder, which is the lab's own to clear.
        let labs = super::repo_root().join(".cache/lab");
        std::fs::create_dir_all(&labs).unwrap();
        let disk = labs.join(format!("{name}.images.ext4"));
        data_disk(&images, &disk);
        println!(
            "kube-nodes: tools and images ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // The API server reaches the kubelets (logs, exec) through the lab's
        // proxy; the socket is made once the lab is up.
        let proxy = labs.join(format!("{name}.kubelets.sock"));
        let kube = Kube::up_with(&[
            ("KUBE_SCHEDULER", "1"),
            ("KUBE_CONTROLLERS", "*"),
            ("KUBE_EGRESS_UDS", proxy.to_str().unwrap()),
        ]);
        let image_dir = user_cache().join("lab/kube-node-image");
        let env = vec![
            ("LAB_IMAGE_DIR".into(), image_dir.display().to_string()),
            ("LAB_KUBE_NODE_BIN".into(), bin_dir().display().to_string()),
            // The driver runs from its container image only.
            ("OCFS2_CSI_BIN".into(), String::new()),
            ("CSI_SANITY_BIN".into(), String::new()),
            ("LAB_MEM".into(), "2048".into()),
            ("LAB_DATA_DISK".into(), disk.display().to_string()),
        ];
        let lab = Lab::boot_with(name, nodes, lun_size, Some(RELAY_PORT), false, env);
        let port: u16 = kube.server.rsplit(':').next().unwrap().parse().unwrap();
        lab.relay_into(RELAY_PORT, port);
        lab.connect_proxy(&proxy, KUBELET_PORT, KUBELET_FORWARDS);
        let ssh_dir = labs.join(format!("{name}.ssh"));
        std::fs::create_dir_all(&ssh_dir).unwrap();
        let ssh = Ssh {
            key: Ssh::keygen(&ssh_dir),
            bastion: format!("127.0.0.1:{}", lab.relay_out(SSH_FORWARDS + 1)),
        };
        let cluster = Cluster { lab, kube, ssh };
        cluster.api_service_endpoint();
        cluster.join_nodes();
        println!(
            "kube-nodes: {nodes} nodes Ready {:.1} s after the start",
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    /// The `kubernetes` Service (10.0.0.1:443) leads to the API server as
    /// the guests reach it. kube-up.sh runs the API server with
    /// `--endpoint-reconciler-type none`, since the address it listens on
    /// (this machine's loopback) is not one the nodes can reach.
    fn api_service_endpoint(&self) {
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [GUEST_API], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
        });
        self.kube.request_ok(
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some(&slice),
        );
    }

    /// The admin kubeconfig as the nodes use it.
    fn guest_kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    \
             server: https://{GUEST_API}:6443\n    certificate-authority: /root/kube-ca.crt\n    \
             tls-server-name: kubernetes\nusers:\n- name: admin\n  user:\n    token: {}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\n\
             current-context: lab\n",
            self.kube.token
        )
    }

    /// Runs e2e/kube-node.sh on every guest at once, then waits until every
    /// Node is Ready and labels it as one that sees the SAN.
    fn join_nodes(&self) {
        let nodes = self.lab.nodes;
        std::thread::scope(|s| {
            for node in 1..=nodes {
                s.spawn(move || self.run_node_script(node, ""));
            }
        });
        let t = Instant::now();
        wait_until("every Node Ready", Duration::from_secs(600), || {
            self.ready_nodes().len() == nodes
        });
        println!(
            "kube-nodes: {nodes} Nodes Ready {:.1} s after their kubelets started",
            t.elapsed().as_secs_f64()
        );
        for node in 1..=nodes {
            self.kubectl(&[
                "label",
                "node",
                &format!("node{node}"),
                "ocfs2.csi.dev/san=true",
                "--overwrite",
            ]);
        }
    }

    /// Boots guest `node` again after [`Lab::crash`] and makes it the same
    /// Kubernetes node as before (its Node object, labels and all, is
    /// still there), with only the images of `images` (archive names of
    /// scripts/lab-images.sh, such as `ocfs2-csi pause`); returns once the
    /// Node is Ready.
    pub fn rejoin(&self, node: usize, images: &str) {
        self.lab.start_again(node);
        self.run_node_script(node, images);
        wait_until(
            &format!("node{node} Ready again"),
            Duration::from_secs(600),
            || self.ready_nodes().contains(&format!("node{node}")),
        );
    }

    /// The names of the Nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> Vec<String> {
        self.kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .lines()
        .filter_map(|l| l.strip_suffix(" True").map(String::from))
        .collect()
    }

    /// e2e/kube-node.sh on guest `node`: containerd, the images (those
    /// named in `images`, or all), the kubelet.
    fn run_node_script(&self, node: usize, images: &str) {
        let ca = std::fs::read_to_string(&self.kube.ca).unwrap();
        let client_ca =
            std::fs::read_to_string(self.kube.path().join("certs/kubelet-client-ca.crt")).unwrap();
        let kubeconfig = self.guest_kubeconfig();
        let ssh_pub = std::fs::read_to_string(self.ssh.key.with_extension("pub")).unwrap();
        let script = std::fs::read_to_string(super::repo_root().join("e2e/kube-node.sh")).unwrap();
        let nodes = self.lab.nodes;
        // Bounded against a hang, not timed: importing the images is most
        // of it, and its pace is the machine's.
        let out = self.lab.must_within(
            node,
            &format!(
                "cat >/root/kube-ca.crt <<'CA'\n{ca}CA\n\
                 cat >/root/kubelet-client-ca.crt <<'CA'\n{client_ca}CA\n\
                 cat >/root/kubeconfig <<'KC'\n{kubeconfig}KC\n\
                 cat >/root/ssh.pub <<'KEY'\n{ssh_pub}KEY\n\
                 export NODE_INDEX={node} NODE_COUNT={nodes} NODE_IMAGES='{images}'\n{script}"
            ),
            Some(Duration::from_secs(1800)),
        );
        println!("node{node}: {}", out.trim());
    }

    /// Stops node's kubelet (SIGTERM, as a service manager does), waits for
    /// its end and starts it again with a fresh log, the way the e2e suite's
    /// [Disruptive] specs do: e2e/kube-node.sh's systemctl, over SSH through
    /// node1, so that CI exercises that path.
    pub fn restart_kubelet(&self, node: usize) {
        self.ssh.must(node, "sudo systemctl restart kubelet");
        let state = self.ssh.must(
            node,
            "systemctl show kubelet --property ActiveState --value",
        );
        assert_eq!(
            state.trim(),
            "active",
            "node{node}'s kubelet after the restart"
        );
    }

    /// `helm install` with values that only point the images at the ones the
    /// nodes imported, and name the lab's LUN.
    pub fn helm_install(&self) {
        self.helm_install_with(&[]);
    }

    /// [`Cluster::helm_install`] with more `helm` arguments (`--set ...`).
    pub fn helm_install_with(&self, extra: &[&str]) {
        let c = self;
        let mut args = vec![
            "install",
            "ocfs2-csi",
            "deploy/helm/ocfs2-csi",
            "--namespace",
            DRIVER_NS,
            "--set",
            "image.registry=localhost,image.repository=ocfs2-csi,image.tag=lab,image.pullPolicy=Never",
            "--set",
            "sidecars.provisioner.image.registry=localhost,sidecars.provisioner.image.repository=csi-provisioner,sidecars.provisioner.image.tag=lab,sidecars.provisioner.image.pullPolicy=Never",
            "--set",
            "sidecars.resizer.image.registry=localhost,sidecars.resizer.image.repository=csi-resizer,sidecars.resizer.image.tag=lab,sidecars.resizer.image.pullPolicy=Never",
            // Neither sidecar can be built here (e2e/kube/README.md): the node
            // plugin registers itself with the kubelet instead.
            "--set",
            "sidecars.nodeDriverRegistrar.enabled=false,sidecars.livenessProbe.enabled=false",
            "--set",
            "test.image.registry=localhost,test.image.repository=busybox,test.image.tag=lab,test.image.pullPolicy=Never",
            "--set",
            "luns={/dev/vda},initLuns={/dev/vda}",
        ];
        args.extend_from_slice(extra);
        let out = c.kube.helm(&args);
        println!("{}", out.lines().take(6).collect::<Vec<_>>().join("\n"));
        let t = Instant::now();
        c.kubectl(&[
            "rollout",
            "status",
            "-n",
            DRIVER_NS,
            "daemonset/ocfs2-csi-node",
            "--timeout=600s",
        ]);
        println!(
            "install: node plugins ready on {} nodes in {:.1} s",
            self.lab.nodes,
            t.elapsed().as_secs_f64()
        );
        c.kubectl(&[
            "rollout",
            "status",
            "-n",
            DRIVER_NS,
            "deployment/ocfs2-csi-controller",
            "--timeout=600s",
        ]);
        println!(
            "install: controller available {:.1} s after the install",
            t.elapsed().as_secs_f64()
        );
        // The kubelets know the driver: the node plugins registered, which
        // they do once they serve, after the controller has initialised
        // the blank LUN and they have claimed their o2cb numbers.
        wait_until(
            "CSINode of every node lists the driver",
            Duration::from_secs(600),
            || {
                let out = c.kubectl_try(&[
                    "get",
                    "csinode",
                    "-o",
                    "jsonpath={range .items[*]}{.spec.drivers[*].name}{\"\\n\"}{end}",
                ]);
                out.1
                    .lines()
                    .filter(|l| l.contains("ocfs2.csi.dev"))
                    .count()
                    == self.lab.nodes
            },
        );
    }

    /// The snapshot stack a cluster provides and a driver's chart does not:
    /// the VolumeSnapshot CRDs of the pinned external-snapshotter
    /// (e2e/kube/snapshotter/crds.sh) and its snapshot-controller
    /// (e2e/k8s-storage/snapshot-controller.yaml, image group `snapshot`).
    pub fn install_snapshot_stack(&self) {
        let t = Instant::now();
        self.apply(&script_output(&["e2e/kube/snapshotter/crds.sh"]));
        for crd in [
            "volumesnapshotclasses",
            "volumesnapshotcontents",
            "volumesnapshots",
        ] {
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}.snapshot.storage.k8s.io"),
                "--timeout=120s",
            ]);
        }
        let manifest = super::repo_root().join("e2e/k8s-storage/snapshot-controller.yaml");
        self.apply(&std::fs::read_to_string(manifest).unwrap());
        self.kubectl(&[
            "rollout",
            "status",
            "-n",
            DRIVER_NS,
            "deployment/snapshot-controller",
            "--timeout=600s",
        ]);
        println!(
            "snapshot stack: CRDs and snapshot-controller ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    /// `kubectl patch pvc` to `size` (like "2Gi"), then waits until the
    /// claim's status capacity is that size: the controller grew the volume
    /// and the kubelets finished (no FileSystemResizePending left).
    pub fn grow_claim(&self, namespace: &str, pvc: &str, size: &str) {
        self.kubectl(&[
            "patch",
            "pvc",
            "-n",
            namespace,
            pvc,
            "-p",
            &format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#),
        ]);
        wait_until(
            "the claim's capacity reaches the new size",
            Duration::from_secs(600),
            || {
                let out = self.kubectl_try(&[
                    "get",
                    "pvc",
                    "-n",
                    namespace,
                    pvc,
                    "-o",
                    "jsonpath={.status.capacity.storage} {.status.conditions[*].type}",
                ]);
                // Other conditions (such as 1.37's Unused) may be there.
                let mut words = out.1.split_whitespace();
                words.next() == Some(size) && !words.any(|c| c.contains("Resiz"))
            },
        );
    }

    /// The real kubectl against this cluster: (success, stdout + stderr).
    pub fn kubectl_try(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin_dir().join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kube.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The project's kubectl plugin (deploy/kubectl-ocfs2_csi) as an
    /// operator runs it: kubectl on PATH, this cluster's kubeconfig.
    /// Panics with the output unless it succeeds.
    pub fn kubectl_plugin(&self, args: &[&str]) -> String {
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(super::repo_root().join("deploy/kubectl-ocfs2_csi"))
            .args(args)
            .env("KUBECONFIG", &self.kube.kubeconfig)
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .expect("run deploy/kubectl-ocfs2_csi");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl-ocfs2_csi {args:?}:\n{text}");
        text
    }

    /// Like `kubectl_try`; panics with the output unless it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl_try(args);
        assert!(ok, "kubectl {args:?}:\n{text}");
        text
    }

    /// The output whether or not kubectl succeeded (for polls, which look
    /// for what they wait for in it).
    fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_try(args).1
    }

    /// `kubectl apply` of a manifest given as text (kept in the control
    /// plane's folder for a look after a failure).
    pub fn apply(&self, manifest: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = self.kube.path().join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("{n:03}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()])
    }

    /// The node a pod runs on (nodeI), once scheduled.
    pub fn node_of(&self, namespace: &str, pod: &str) -> usize {
        let name = self.kubectl(&[
            "get",
            "pod",
            "-n",
            namespace,
            pod,
            "-o",
            "jsonpath={.spec.nodeName}",
        ]);
        name.trim()
            .strip_prefix("node")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("pod {namespace}/{pod} is on no lab node: {name:?}"))
    }

    /// A container's log as the kubelet wrote it on its node, read there:
    /// it holds what `kubectl logs` would show, also once the container or
    /// the API server's way to the kubelet is gone.
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let node = self.node_of(namespace, pod);
        self.lab
            .exec(
                node,
                &format!("cat /var/log/pods/{namespace}_{pod}_*/{container}/*.log 2>/dev/null"),
            )
            .1
    }

    /// The guests' memory: `free -m` and the resident sizes of the node's
    /// daemons, one line per node.
    pub fn memory_report(&self) -> Vec<String> {
        (1..=self.lab.nodes)
            .map(|node| {
                let out = self.lab.must(
                    node,
                    "set -- $(free -m | sed -n 2p); u=$3; \
                     for p in containerd kubelet kube-proxy; do \
                       r=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$(pidof $p | cut -d' ' -f1)/status); \
                       printf '%s %s MiB, ' $p $r; done; \
                     echo \"used $u MiB of $2 MiB, tmpfs $(df -m /var/lib/containerd | awk 'NR==2 {print $3}') MiB in containerd\"",
                );
                format!("node{node}: {}", out.trim())
            })
            .collect()
    }
}

/// The writers: one pod per node, each appending and fsyncing a numbered
/// line to its own file every 0.2 s, and every 10 rounds printing the
/// volume's size and how many files (pods) it sees. A failed write prints
/// WRITE-ERROR.
pub fn writers_manifest(pvc: &str, size: &str, namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {pvc}, namespace: {namespace}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ocfs2
  resources: {{requests: {{storage: {size}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: writers, namespace: {namespace}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: writers}}}}
  template:
    metadata: {{labels: {{app: writers}}}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: writers}}}}
            topologyKey: kubernetes.io/hostname
      terminationGracePeriodSeconds: 5
      containers:
      - name: writer
        image: localhost/busybox:lab
        imagePullPolicy: Never
        command:
        - sh
        - -c
        - |
          f=/data/$HOSTNAME.log; i=0
          while true; do
            i=$((i + 1))
            echo "$HOSTNAME $i" | dd of=$f oflag=append conv=notrunc,fsync 2>/dev/null || echo "WRITE-ERROR $i"
            if [ $((i % 10)) = 0 ]; then
              echo "round $i size $(df -Pk /data | awk 'NR==2 {{print $2}}') files $(ls /data/*.log | wc -l)"
            fi
            sleep 0.2
          done
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: {pvc}}}
"#
    )
}

/// The writer pods' names.
pub fn writer_pods(c: &Cluster, namespace: &str) -> Vec<String> {
    c.kubectl(&[
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        "app=writers",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// A writer's last report: (round, volume size in KiB, files it sees).
pub fn last_report(log: &str) -> Option<(u64, u64, usize)> {
    log.lines().rev().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let i = w.iter().position(|x| *x == "round")?;
        Some((
            w.get(i + 1)?.parse().ok()?,
            w.get(i + 3)?.parse().ok()?,
            w.get(i + 5)?.parse().ok()?,
        ))
    })
}

/// A pod that runs `cmd` once (busybox `sh -c`) with `claim` at /data;
/// `spec` is more of its spec, one `key: value` per line (nodeSelector,
/// securityContext, ...).
pub fn one_shot_pod(name: &str, namespace: &str, claim: &str, cmd: &str, spec: &[&str]) -> String {
    let extra: String = spec.iter().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  restartPolicy: Never
{extra}  containers:
  - name: c
    image: localhost/busybox:lab
    imagePullPolicy: Never
    command: [sh, -c, '{cmd}']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}
