#!/bin/sh
# Run inside a lab guest booted from an image built with LAB_KUBE_NODE_BIN
# (e2e/image.sh): makes it a Kubernetes node of the lab's control plane.
#   - containerd (CRI) with runc, and a bridge CNI: pods of node I get
#     10.244.I.0/24, and every other node's pod range is routed over the
#     cluster L2 (192.168.77.0/24);
#   - the container images on the lab's data disk (serial lab-data: an ext4
#     image of OCI archives, LAB_DATA_DISK) imported into containerd's k8s.io
#     namespace, as nothing can be pulled;
#   - the kubelet and kube-proxy (iptables mode: Services, among them the
#     API server's own at 10.0.0.1:443);
#   - what the storage e2e suite does on a node: SSH (dropbear), systemctl
#     and sudo stand-ins that stop and start the kubelet, crictl's config.
# Expects /root/kubeconfig (the API server as 10.0.2.100:6443, which QEMU
# forwards to the test's API server) and NODE_INDEX and NODE_COUNT set;
# /root/ssh.pub for SSH. NODE_IMAGES, when set, names the archives to
# import (without .tar; a node rejoining after a crash needs fewer).
# Idempotent: a second run starts only what is not running.
set -eu
export PATH="/usr/local/bin:/usr/local/sbin:$PATH"
mounted() { grep -q " $1 " /proc/mounts; }
i=${NODE_INDEX:?} count=${NODE_COUNT:?}
name=$(hostname)
ip=$(ip -4 -o addr show | awk '$4 ~ /^192\.168\.77\./ { sub("/.*", "", $4); print $4; exit }')
modprobe -a overlay br_netfilter bridge veth nf_conntrack iptable_nat iptable_filter iptable_mangle \
	xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_addrtype xt_nat xt_multiport xt_statistic \
	xt_tcpudp ipt_REJECT ext4
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

# cgroup v2 with every controller delegated to the root's children.
mounted /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
read -r controllers </sys/fs/cgroup/cgroup.controllers
for c in $controllers; do
	echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
done

mkdir -p /var/lib/containerd /var/lib/kubelet /etc/containerd /etc/cni/net.d /run/containerd \
	/var/log/pods /mnt/lab-data
mounted /var/lib/containerd || mount -t tmpfs -o size=1500m tmpfs /var/lib/containerd
# cAdvisor finds no filesystem under the initramfs root ("rootfs"): the
# kubelet's root needs a real mount. Shared, as the CSI node plugin's
# mounts under it must propagate from its container (Bidirectional).
mounted /var/lib/kubelet || mount -t tmpfs -o size=200m tmpfs /var/lib/kubelet
# The host paths the node plugin mounts on (Bidirectional, see the chart's
# node.yaml) must be shared mounts. Only those: the root stays private, as
# runc's rootfs set-up without pivot_root must not propagate to the host.
mounted /sys/kernel/config || mount -t configfs none /sys/kernel/config
mkdir -p /dlm
mounted /dlm || mount --bind /dlm /dlm
for m in /var/lib/kubelet /sys/kernel/config /dlm; do mount --make-shared "$m"; done

cat >/etc/containerd/config.toml <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/pause:lab"
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/opt/cni/bin"]
  conf_dir = "/etc/cni/net.d"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
# The guest's root is the initramfs, which pivot_root cannot leave.
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  NoPivotRoot = true
EOF
printf '%s\n' 'runtime-endpoint: unix:///run/containerd/containerd.sock' \
	'image-endpoint: unix:///run/containerd/containerd.sock' >/etc/crictl.yaml
cat >/etc/cni/net.d/10-lab.conflist <<EOF
{"cniVersion": "1.0.0", "name": "lab", "plugins": [
 {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.$i.0/24"}]],
           "routes": [{"dst": "0.0.0.0/0"}]}},
 {"type": "portmap", "capabilities": {"portMappings": true}},
 {"type": "loopback"}]}
EOF
# Services' cluster IPs (10.0.0.0/24) need a route for the node's own
# connections to them (host-network pods: the node plugin), as kube-proxy
# rewrites them only after routing; QEMU's user network, where the API
# server is, has no default route with restrict=on.
slirp=$(ip -4 -o addr show | awk '$4 ~ /^10\.0\.2\./ { print $2; exit }')
ip route replace 10.0.0.0/24 dev "$slirp"
for j in $(seq "$count"); do
	[ "$j" = "$i" ] || ip route replace "10.244.$j.0/24" via "192.168.77.$((10 + j))"
done

if ! pidof containerd >/dev/null; then
	containerd >/var/log/containerd.log 2>&1 &
fi
n=0
until ctr version >/dev/null 2>&1; do
	n=$((n + 1))
	[ $n -lt 300 ] || { echo "kube-node: containerd did not answer" >&2; tail -20 /var/log/containerd.log >&2; exit 1; }
	sleep 0.2
done

# The images: the disk whose virtio serial is lab-data.
if ! mounted /mnt/lab-data; then
	disk=
	for b in /sys/block/vd*; do
		[ "$(cat "$b/serial" 2>/dev/null)" = lab-data ] && disk=/dev/${b##*/}
	done
	[ -n "$disk" ] || { echo "kube-node: no lab-data disk (LAB_DATA_DISK)" >&2; exit 1; }
	mount -t ext4 -o ro "$disk" /mnt/lab-data
fi
wanted() { [ -z "${NODE_IMAGES:-}" ] || case " $NODE_IMAGES " in *" $1 "*) true ;; *) false ;; esac; }
for t in /mnt/lab-data/*.tar; do
	wanted "$(basename "$t" .tar)" || continue
	ctr -n k8s.io images import --all-platforms --local --discard-unpacked-layers "$t" >/dev/null
done
# A second tag of the driver's image, for rolling the DaemonSet to "a new
# version" (tests/kube_nodes.rs).
ctr -n k8s.io images tag --force localhost/ocfs2-csi:lab localhost/ocfs2-csi:lab-next >/dev/null

# Where the API server reaches the kubelet (logs, exec: Lab::connect_proxy),
# it shows a client certificate from this CA.
x509='{}'
[ ! -s /root/kubelet-client-ca.crt ] || x509='{clientCAFile: /root/kubelet-client-ca.crt}'
cat >/var/lib/kubelet/config.yaml <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: $x509
authorization: {mode: Webhook}
clusterDNS: []
resolvConf: ""
serializeImagePulls: false
# Nothing can be pulled again: never collect the imported images.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
# The kubelet as a service: kubelet-start, and stand-ins for systemctl
# (the kubelet its only unit) and sudo (everything runs as root), for the
# storage e2e suite's [Disruptive] specs, which stop and start the kubelet
# over SSH. In /usr/bin: an SSH session's PATH has no /usr/local.
mkdir -p /usr/local/sbin
cat >/usr/local/sbin/kubelet-start <<EOF
#!/bin/sh
# Starts the kubelet unless it runs, detached from the caller's session;
# its log starts afresh (the last one is kubelet.log.1).
pidof kubelet >/dev/null && exit 0
[ ! -f /var/log/kubelet.log ] || mv -f /var/log/kubelet.log /var/log/kubelet.log.1
setsid /usr/local/bin/kubelet --config /var/lib/kubelet/config.yaml --kubeconfig /root/kubeconfig \\
	--hostname-override "$name" --node-ip "$ip" --v 2 </dev/null >/var/log/kubelet.log 2>&1 &
EOF
cat >/usr/bin/systemctl <<'EOF'
#!/bin/sh
# systemctl of the lab's Kubernetes nodes (e2e/kube-node.sh): the kubelet is
# the only unit. start, stop, restart, is-active, and show (ActiveState).
unit=${2:-}
case $unit in kubelet | kubelet.service) ;; *)
	echo "systemctl (lab): unit '$unit' not known here; only the kubelet is one" >&2
	exit 5 ;;
esac
state() { if pidof kubelet >/dev/null; then echo active; else echo inactive; fi; }
stop() {
	pids=$(pidof kubelet) || return 0
	kill $pids
	n=0
	while pidof kubelet >/dev/null; do
		n=$((n + 1))
		# SIGKILL after 30 s, as systemd's default stop timeout
		[ $n -ne 300 ] || kill -9 $pids
		sleep 0.1
	done
}
case $1 in
start) /usr/local/sbin/kubelet-start ;;
stop) stop ;;
restart) stop && /usr/local/sbin/kubelet-start ;;
is-active)
	s=$(state)
	echo "$s"
	[ "$s" = active ] ;;
show)
	case " $* " in
	*" --value "*) state ;;
	*) echo "ActiveState=$(state)" ;;
	esac ;;
*)
	echo "systemctl (lab): '$1' is not supported here" >&2
	exit 1 ;;
esac
EOF
cat >/usr/bin/sudo <<'EOF'
#!/bin/sh
# sudo of the lab's Kubernetes nodes: everything runs as root already.
[ "${1:-}" != --version ] || { echo "sudo (ocfs2-csi lab: root already)"; exit 0; }
exec "$@"
EOF
chmod 755 /usr/local/sbin/kubelet-start /usr/bin/systemctl /usr/bin/sudo
/usr/local/sbin/kubelet-start
# conntrack-max-per-core=0: leave the guest's conntrack table size alone.
if ! pidof kube-proxy >/dev/null; then
	kube-proxy --kubeconfig /root/kubeconfig --hostname-override "$name" --proxy-mode iptables \
		--cluster-cidr 10.244.0.0/16 --conntrack-max-per-core 0 --v 2 >/var/log/kube-proxy.log 2>&1 &
fi

# SSH for root with the key the test gave (/root/ssh.pub), by dropbear
# (host keys made at the first connection), on port 22 of every address:
# the test reaches node1's through QEMU (e2e/lab.sh) and the other nodes'
# through node1 (the e2e suite's KUBE_SSH_BASTION).
ssh=
if [ -s /root/ssh.pub ]; then
	mkdir -p /root/.ssh /etc/dropbear
	chmod 700 /root /root/.ssh
	cp /root/ssh.pub /root/.ssh/authorized_keys
	chmod 600 /root/.ssh/authorized_keys
	# (its output elsewhere: a daemon holding ours would hang the caller)
	pidof dropbear >/dev/null || dropbear -R -s -p 22 -E </dev/null >/dev/null 2>>/var/log/dropbear.log
	ssh=", SSH"
fi
echo "kube-node: $name ($ip) containerd, kubelet, kube-proxy$ssh started"
