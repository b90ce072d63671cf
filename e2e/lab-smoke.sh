#!/usr/bin/env bash
# Proves a running lab (e2e/lab.sh up) is a working OCFS2 cluster:
#   (a) o2cb global heartbeat on a 16 MiB partition of the shared LUN; every
#       node registered, heartbeating, and seeing every other node live;
#   (b) a volume made with --global-heartbeat, mounted on every node; a file
#       written on each node is read back on every other node.
# Plus the control path: a port-10000 listener in a guest reached from the host.
#
# Usage: e2e/lab-smoke.sh [--init guest|controller] [--keep]
#   --init guest       (default) node1 writes the GPT with sgdisk and formats
#                      the heartbeat partition with mkfs.ocfs2 -H
#   --init controller  the project's `ocfs2-csi controller` runs on the host
#                      against the LUN file and initialises it (GPT + heartbeat)
#   --keep             leave the volume mounted and the cluster running
# Env: LAB_SMOKE_TIMEOUT (600 s, whole run), LAB_EXEC_TIMEOUT (120 s per
#      command), OCFS2_CSI_BIN (for --init controller).
# Exits non-zero with a message naming the step and node on any failure.
# Starts from any state the guests are in: it unmounts ocfs2, stops heartbeat,
# unregisters clusters and wipes the LUN first.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E/.." && pwd)
LAB=$E2E/lab.sh
STATE=${LAB_STATE_DIR:-$REPO/.cache/lab/run}
SMOKE_TIMEOUT=${LAB_SMOKE_TIMEOUT:-600}
export LAB_EXEC_TIMEOUT=${LAB_EXEC_TIMEOUT:-120}

if [ -z "${LAB_SMOKE_CHILD:-}" ]; then
	rc=0
	LAB_SMOKE_CHILD=1 timeout -k 10 "$SMOKE_TIMEOUT" "$0" "$@" || rc=$?
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		echo "smoke: FAILED: did not finish within ${SMOKE_TIMEOUT}s (LAB_SMOKE_TIMEOUT)" >&2
	fi
	exit "$rc"
fi

INIT=guest
KEEP=0
while [ $# -gt 0 ]; do
	case "$1" in
	--init) INIT=${2:?}; shift 2 ;;
	--keep) KEEP=1; shift ;;
	*) echo "usage: $0 [--init guest|controller] [--keep]" >&2; exit 2 ;;
	esac
done
case "$INIT" in guest | controller) ;; *) echo "smoke: --init must be guest or controller" >&2; exit 2 ;; esac

CLUSTER=lab
SUBNET=192.168.77
PORT=7777
N=$(cat "$STATE/nodes" 2>/dev/null || echo 0)
[ "$N" -ge 1 ] || { echo "smoke: FAILED: no lab is up ($STATE/nodes missing); run e2e/lab.sh up" >&2; exit 1; }
SLOTS=$((N > 4 ? N : 4))
NODES=$(seq "$N")
TMP=$(mktemp -d /tmp/ocfs2-lab-smoke.XXXXXX)
CTRL_PID=
cleanup() {
	if [ -n "$CTRL_PID" ] && kill -0 "$CTRL_PID" 2>/dev/null; then kill "$CTRL_PID" 2>/dev/null || true; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
step() { echo "smoke: $*"; }
fail() {
	echo "smoke: FAILED: $*" >&2
	exit 1
}
TIMING_KEYS=()
TIMING_VALS=()
timing() { TIMING_KEYS+=("$1"); TIMING_VALS+=("$2"); }

# on NODE CMD: run CMD on NODE; on failure, fail naming the step.
on() {
	local i=$1 what=$2 cmd=$3 out rc=0
	out=$("$LAB" exec "$i" "$cmd" 2>&1) || rc=$?
	if [ "$rc" != 0 ]; then
		fail "node$i: $what (exit $rc):"$'\n'"    ${out//$'\n'/$'\n'    }"
	fi
	printf '%s' "$out"
}

# on_all WHAT CMD: run CMD on every node at once; fail naming every node that failed.
on_all() {
	local what=$1 cmd=$2 i bad=() pids=()
	for i in $NODES; do
		"$LAB" exec "$i" "$cmd" >"$TMP/out.$i" 2>&1 &
		pids[i]=$!
	done
	for i in $NODES; do
		wait "${pids[i]}" || bad+=("$i")
	done
	if [ ${#bad[@]} -gt 0 ]; then
		for i in "${bad[@]}"; do
			echo "smoke: node$i: $what failed:" >&2
			sed 's/^/    /' "$TMP/out.$i" >&2
		done
		fail "$what on node(s) ${bad[*]}"
	fi
}

t_all=$(now)
step "lab has $N node(s); checking they are alive"
"$LAB" status >"$TMP/status" 2>&1 || fail "the lab is not healthy:"$'\n'"$(cat "$TMP/status")"

# --- reset: nothing mounted, no cluster registered ----------------------------
step "reset: unmount ocfs2, stop heartbeat, unregister clusters"
on_all "reset" '
	set -e
	for m in $(awk '\''$3 == "ocfs2" { print $2 }'\'' /proc/mounts); do umount "$m"; done
	for c in /sys/kernel/config/cluster/*; do
		[ -d "$c" ] || continue
		name=${c##*/}
		o2cb stop-heartbeat "$name" >/dev/null 2>&1 || true
		o2cb unregister-cluster "$name"
	done
	rm -f /etc/ocfs2/cluster.conf
	if [ -f /run/smoke-listener.pid ]; then kill "$(cat /run/smoke-listener.pid)" 2>/dev/null || true; rm -f /run/smoke-listener.pid; fi'

# --- control path: host -> guest port 10000 -----------------------------------
step "control path: 127.0.0.1:10101 in the namespace reaches node1:10000"
on 1 "start a listener on port 10000" \
	'nc -l -p 10000 -e /bin/echo lab-port-10000-ok </dev/null >/dev/null 2>&1 &
	 echo $! >/run/smoke-listener.pid; sleep 0.3' >/dev/null
NS=$("$LAB" ns)
got=$(timeout 10 ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/10101 && cat <&3' 2>&1 || true)
[ "$got" = lab-port-10000-ok ] || fail "host could not reach node1:10000 through 127.0.0.1:10101 (got: '$got')"

# --- (a) the LUN: GPT + heartbeat partition --------------------------------------
step "LUN: wipe, then GPT + 16 MiB heartbeat partition (--init $INIT)"
t=$(now)
if [ "$INIT" = controller ]; then
	BIN=${OCFS2_CSI_BIN:-$REPO/target/debug/ocfs2-csi}
	[ -x "$BIN" ] || fail "$BIN not built (cargo build --bins)"
	size=$(stat -c %s "$STATE/lun.raw")
	fallocate -p -o 0 -l "$size" "$STATE/lun.raw" # all zero, still sparse
	"$BIN" controller --lun "$STATE/lun.raw" --init-lun "$STATE/lun.raw" --endpoint "unix://$TMP/ctrl.sock" \
		--cluster-name "$CLUSTER" --cluster-id "$CLUSTER-id" >"$TMP/ctrl.log" 2>&1 &
	CTRL_PID=$!
	for _ in $(seq 300); do
		grep -q "all LUNs open" "$TMP/ctrl.log" && break
		kill -0 "$CTRL_PID" 2>/dev/null || break
		sleep 0.1
	done
	grep -q "all LUNs open" "$TMP/ctrl.log" || fail "ocfs2-csi controller did not initialise the LUN:"$'\n'"$(cat "$TMP/ctrl.log")"
	kill "$CTRL_PID"
	wait "$CTRL_PID" 2>/dev/null || true
	CTRL_PID=
else
	on 1 "write the GPT and format the heartbeat partition" "
		set -e
		dd if=/dev/zero of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null
		sgdisk -Z /dev/vda >/dev/null 2>&1 || true
		sgdisk -o -S 256 -a 2048 -n 1:1MiB:+16MiB -c 1:heartbeat /dev/vda >/dev/null
		blockdev --flushbufs /dev/vda
		blockdev --rereadpt /dev/vda
		mkfs.ocfs2 -H -F -q --cluster-stack=o2cb --cluster-name=$CLUSTER -L lab-heartbeat /dev/vda1 >/dev/null" >/dev/null
fi
timing "LUN init ($INIT)" "$(since "$t")"

# Every node drops its cached view of the disk and re-reads the table.
on_all "re-read the partition table" '
	blockdev --flushbufs /dev/vda && blockdev --rereadpt /dev/vda || exit 1
	for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda1 ] && exit 0; sleep 0.2; done
	echo "no /dev/vda1 after re-reading the table:"; cat /proc/partitions; exit 1'

REGION=$(on 1 "read the heartbeat region UUID" 'tunefs.ocfs2 -Q "%U" /dev/vda1')
[[ $REGION =~ ^[0-9A-F]{32}$ ]] || fail "node1: unexpected heartbeat UUID '$REGION'"
for i in $NODES; do
	r=$(on "$i" "read the heartbeat region UUID" 'tunefs.ocfs2 -Q "%U" /dev/vda1')
	[ "$r" = "$REGION" ] || fail "node$i: sees heartbeat UUID '$r', node1 sees '$REGION' (stale disk view?)"
done
step "heartbeat region $REGION"

# --- (a) cluster.conf, register, heartbeat ----------------------------------------
{
	printf 'cluster:\n\tname = %s\n\theartbeat_mode = global\n\tnode_count = %d\n\n' "$CLUSTER" "$N"
	for i in $NODES; do
		printf 'node:\n\tnumber = %d\n\tcluster = %s\n\tip_port = %d\n\tip_address = %s.%d\n\tname = node%d\n\n' \
			$((i - 1)) "$CLUSTER" "$PORT" "$SUBNET" $((10 + i)) "$i"
	done
	printf 'heartbeat:\n\tcluster = %s\n\tregion = %s\n' "$CLUSTER" "$REGION"
} >"$TMP/cluster.conf"
step "register cluster '$CLUSTER' on every node"
t=$(now)
on_all "write cluster.conf and o2cb register-cluster" "
	set -e
	mkdir -p /etc/ocfs2
	cat >/etc/ocfs2/cluster.conf <<'CONF'
$(cat "$TMP/cluster.conf")
CONF
	o2cb register-cluster $CLUSTER
	want=\"$(for i in $NODES; do echo "node$i"; done | sort | tr '\n' ' ')\"
	have=\$(ls /sys/kernel/config/cluster/$CLUSTER/node | sort | tr '\n' ' ')
	[ \"\$have\" = \"\$want\" ] || { echo \"configfs nodes: '\$have', want '\$want'\"; exit 1; }
	[ \"\$(cat /sys/kernel/config/cluster/$CLUSTER/node/\$(hostname)/local)\" = 1 ] || { echo 'own node not marked local'; exit 1; }"
timing "o2cb register-cluster (all nodes)" "$(since "$t")"

step "o2cb start-heartbeat on every node at once"
t=$(now)
on_all "o2cb start-heartbeat" "o2cb start-heartbeat $CLUSTER"
timing "o2cb start-heartbeat (all nodes, parallel)" "$(since "$t")"

want_live=$(for i in $NODES; do echo $((i - 1)); done | tr '\n' ' ')
want_live=${want_live% }
for i in $NODES; do
	on "$i" "heartbeat active with all nodes live" "
		d=/sys/kernel/config/cluster/$CLUSTER/heartbeat/$REGION
		[ -n \"\$(cat \$d/pid 2>/dev/null)\" ] || { echo \"no heartbeat thread for $REGION\"; exit 1; }
		for _ in \$(seq 150); do
			live=\$(echo \$(cat /sys/kernel/debug/o2hb/$REGION/livenodes 2>/dev/null))
			[ \"\$live\" = \"$want_live\" ] && exit 0
			sleep 0.2
		done
		echo \"live nodes on region: '\$live', want '$want_live'\"; exit 1" >/dev/null
done
timing "heartbeat live on all nodes" "$(since "$t")"
step "(a) ok: every node registered, heartbeating, sees nodes $want_live live"

# --- (b) a shared volume -----------------------------------------------------------
step "carve partition 2 (2 GiB) on node1; every node adds it"
on 1 "create partition 2" 'sgdisk -n 2:0:+2GiB -c 2:smoke-vol -t 2:8300 /dev/vda >/dev/null 2>&1 || { sgdisk -p /dev/vda; exit 1; }' >/dev/null
on_all "add partition 2 (BLKPG)" '
	blockdev --flushbufs /dev/vda
	partx -a --nr 2 /dev/vda 2>/dev/null || true
	for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda2 ] && exit 0; sleep 0.2; done
	echo "no /dev/vda2:"; cat /proc/partitions; exit 1'

step "mkfs.ocfs2 --global-heartbeat -N $SLOTS on node1"
t=$(now)
on 1 "mkfs.ocfs2" "mkfs.ocfs2 -q -F --global-heartbeat --cluster-stack=o2cb --cluster-name=$CLUSTER -N $SLOTS -J size=16M -L smoke-vol /dev/vda2" >/dev/null
timing "mkfs.ocfs2 (2 GiB, -N $SLOTS, -J size=16M)" "$(since "$t")"

for i in $NODES; do
	t=$(now)
	on "$i" "mount /dev/vda2" 'mkdir -p /mnt/v && mount -t ocfs2 /dev/vda2 /mnt/v' >/dev/null
	timing "mount on node$i" "$(since "$t")"
done

TOKEN=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
step "write a file on every node"
on_all "write a file" "echo \"$TOKEN from \$(hostname)\" >/mnt/v/\$(hostname).txt && sync"
step "read every other node's file on every node"
for i in $NODES; do
	for j in $NODES; do
		[ "$i" = "$j" ] && continue
		got=$(on "$i" "read node$j's file" "cat /mnt/v/node$j.txt")
		[ "$got" = "$TOKEN from node$j" ] || fail "node$i: /mnt/v/node$j.txt holds '$got', want '$TOKEN from node$j'"
	done
done
mounted=$(on 1 "mounted.ocfs2 -f" 'mounted.ocfs2 -f /dev/vda2')
for i in $NODES; do
	grep -qw "node$i" <<<"$mounted" || fail "mounted.ocfs2 -f does not list node$i:"$'\n'"$mounted"
done
step "(b) ok: volume mounted on all $N nodes; every file read back everywhere"

if [ "$KEEP" = 1 ]; then
	step "--keep: /dev/vda2 stays mounted on /mnt/v, cluster '$CLUSTER' running"
else
	step "clean up: unmount, stop heartbeat, unregister"
	t=$(now)
	on_all "unmount" 'umount /mnt/v'
	timing "unmount (all nodes, parallel)" "$(since "$t")"
	t=$(now)
	on_all "stop heartbeat and unregister" "o2cb stop-heartbeat $CLUSTER && o2cb unregister-cluster $CLUSTER"
	timing "stop-heartbeat + unregister (all nodes, parallel)" "$(since "$t")"
fi

echo "smoke: timings (seconds, wall clock on the host):"
for k in "${!TIMING_KEYS[@]}"; do
	printf '  %-52s %s\n' "${TIMING_KEYS[k]}" "${TIMING_VALS[k]}"
done
echo "smoke: PASSED in $(since "$t_all") s"
