#!/usr/bin/env bash
# The OCFS2 lab: N QEMU (TCG) guests sharing one LUN file, on a private L2
# that exists only inside a network namespace made for the lab.
#
#   e2e/lab.sh up [-n N] [--lun-size SIZE] [--san]
#                                            boot N guests (default 3, 8G LUN);
#                                            --san: the LUN is served over iSCSI
#                                            (tgtd in the namespace) on two paths
#                                            per guest instead of a virtio disk
#   e2e/lab.sh exec NODE CMD...              run CMD on NODE (1..N or nodeI);
#                                            CMD "-" reads the script from stdin
#   e2e/lab.sh status                        QEMU alive? agent answering? uptime
#   e2e/lab.sh down                          clean poweroff, then kill; idempotent
#   e2e/lab.sh logs                          where the console logs are
#   e2e/lab.sh ns                            the network namespace's name
#   e2e/lab.sh crash NODE                    kill NODE's QEMU at once (power loss)
#   e2e/lab.sh start NODE                    boot a crashed/powered-off NODE again
#   e2e/lab.sh freeze|thaw NODE              pause/resume NODE's vCPU (QMP stop/cont):
#                                            a hung node, as its peers see it
#   e2e/lab.sh stall|unstall NODE            NODE's LUN stops answering / answers again
#                                            (QEMU I/O throttle); the guest runs on
#   e2e/lab.sh path-down|path-up NODE P      (--san) NODE's path P (1 or 2) loses /
#                                            regains its link (QMP set_link)
#   e2e/lab.sh target-stop|target-start      (--san) the iSCSI target goes away, its
#                                            ports dark / comes back with the same LUN
#   e2e/lab.sh grow-lun SIZE                 the array grows the LUN to SIZE (bytes or
#                                            K/M/G suffixes): guests see it as a real
#                                            host would (virtio at once, iSCSI after
#                                            a rescan)
#   e2e/lab.sh add-lun SIZE                  a new LUN (lunK.raw) zoned to every guest:
#                                            hot-plugged as /dev/vdb, /dev/vdc, ... (and
#                                            there at every later boot); prints it
#
# Env: LAB_STATE_DIR (default .cache/lab/run), LAB_IMAGE_DIR (default
# $OCFS2_CSI_CACHE/lab/image), LAB_BOOT_TIMEOUT (120 s), LAB_EXEC_TIMEOUT (300 s),
# LAB_DOWN_TIMEOUT (30 s), LAB_MEM (768 MB), LAB_APPEND (extra kernel
# arguments), LAB_KEEP_ON_FAIL=1 (leave the guests running when `up` fails),
# LAB_API_PORT (at `up`: guests reach this port of the namespace's loopback
# as 10.0.2.100:6443, for a Kubernetes API server the test relays there),
# LAB_DATA_DISK (at `up`: this file is every guest's last disk, read-only,
# serial lab-data; e.g. container images for Kubernetes nodes).
#
# Inside the namespace: node I's command agent is 127.0.0.1:(7100+I), its
# port 10000 is 127.0.0.1:(10100+I); in the guests, eth0 is 192.168.77.(10+I)
# on the shared L2 and eth1 is QEMU user networking (restrict=on).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E/.." && pwd)
. "$REPO/scripts/cache.sh"
STATE=${LAB_STATE_DIR:-$REPO/.cache/lab/run}
IMAGE=${LAB_IMAGE_DIR:-$OCFS2_CSI_CACHE/lab/image}
BOOT_TIMEOUT=${LAB_BOOT_TIMEOUT:-120}
EXEC_TIMEOUT=${LAB_EXEC_TIMEOUT:-300}
DOWN_TIMEOUT=${LAB_DOWN_TIMEOUT:-30}
MEM=${LAB_MEM:-768}
SUBNET=192.168.77
MCAST_PORT=23077

log() { echo "lab: $*"; }
err() { echo "lab: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

ns_name() { cat "$STATE/netns" 2>/dev/null || true; }
node_count() { cat "$STATE/nodes" 2>/dev/null || echo 0; }

# NODE argument -> index
node_index() {
	local n=${1#node}
	if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt "$(node_count)" ]; then
		err "no such node: '$1' (the lab has $(node_count) node(s): 1..$(node_count) or node1..)"
		return 2
	fi
	echo "$n"
}

# PID of node I's QEMU if it is alive and really ours (guards against reuse).
qemu_pid() {
	local f=$STATE/node-$1.pid p
	[ -f "$f" ] || return 1
	p=$(cat "$f" 2>/dev/null) || return 1
	[ -n "$p" ] && [ -d "/proc/$p" ] || return 1
	tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$STATE/node-$1.console.log" || return 1
	echo "$p"
}

# Send one command to node I's agent. Prints the output as it comes; returns
# the guest command's exit code, 124 on timeout, 255 when no exit status came
# back (then AGENT_NO_STATUS=1). The request travels on stdin (no
# argument-size limit).
AGENT_NO_STATUS=0
agent_call() {
	local i=$1 tmo=$2 cmd=$3 ns awk=awk rc=0 errf
	AGENT_NO_STATUS=0
	ns=$(ns_name)
	[ -n "$ns" ] || { err "no lab is up (no $STATE/netns)"; AGENT_NO_STATUS=1; return 255; }
	errf=$(mktemp)
	[ -x /bin/busybox ] && awk="/bin/busybox awk" # streams line by line
	printf '%s' "$cmd" | base64 -w0 | { cat; echo; } |
		timeout -k 5 "$tmo" ip netns exec "$ns" bash -c '
			exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 255
			cat >&3
			$2 '\''
				{
					if (h) { print held; h = 0 }
					if ($0 ~ /^__LAB_RC=[0-9]+$/) { held = $0; h = 1 } else print
					fflush()
				}
				END {
					if (!h) { print "__LAB_NO_STATUS" > "/dev/stderr"; exit 255 }
					sub(/^__LAB_RC=/, "", held)
					exit held + 0
				}'\'' <&3
		' _ "$((7100 + i))" "$awk" 2>"$errf" || rc=$?
	# A command's own exit 255 leaves stderr empty; no status or no connection does not.
	[ "$rc" = 255 ] && [ -s "$errf" ] && AGENT_NO_STATUS=1
	rm -f "$errf"
	return "$rc"
}

cmd_exec() {
	[ $# -ge 2 ] || { err "usage: lab.sh exec NODE CMD... (CMD '-' reads stdin)"; exit 2; }
	local i cmd rc=0
	i=$(node_index "$1") || exit 2
	shift
	if [ "$*" = - ]; then cmd=$(cat); else cmd="$*"; fi
	agent_call "$i" "$EXEC_TIMEOUT" "$cmd" || rc=$?
	case $rc in
	124 | 137)
		if qemu_pid "$i" >/dev/null; then
			err "node$i: command timed out after ${EXEC_TIMEOUT}s (LAB_EXEC_TIMEOUT): $cmd"
		else
			err "node$i: QEMU is gone (crashed, fenced or powered off); console log: $STATE/node-$i.console.log"
		fi
		;;
	255)
		[ "$AGENT_NO_STATUS" = 1 ] || exit 255
		if ! qemu_pid "$i" >/dev/null; then
			err "node$i: QEMU is gone (crashed, fenced or powered off); console log: $STATE/node-$i.console.log"
		else
			err "node$i: no exit status from the agent (connection refused or dropped); console log: $STATE/node-$i.console.log"
		fi
		;;
	esac
	exit "$rc"
}

# Kill node I's QEMU (TERM, then KILL), by its recorded PID only.
kill_node() {
	local i=$1 p _
	p=$(qemu_pid "$i") || return 0
	kill -TERM "$p" 2>/dev/null || true
	for _ in $(seq 50); do
		[ -d "/proc/$p" ] || return 0
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	for _ in $(seq 50); do
		[ -d "/proc/$p" ] || return 0
		sleep 0.1
	done
	err "node$i: QEMU pid $p survived SIGKILL"
}

cmd_down() {
	local n ns i alive=() t0 p
	n=$(node_count)
	ns=$(ns_name)
	if [ "$n" = 0 ] && [ -z "$ns" ]; then
		log "nothing is up"
		return 0
	fi
	t0=$(now)
	for i in $(seq "$n"); do
		qemu_pid "$i" >/dev/null && alive+=("$i")
	done
	if [ ${#alive[@]} -gt 0 ]; then
		log "asking node(s) ${alive[*]} to power off (unmount ocfs2, stop heartbeat)"
		local acked=() pids=()
		for i in "${alive[@]}"; do
			agent_call "$i" 5 '( sleep 0.3; /init __poweroff ) </dev/null >/dev/console 2>&1 &' >/dev/null 2>&1 &
			pids[i]=$!
		done
		for i in "${alive[@]}"; do
			if wait "${pids[i]}"; then
				acked+=("$i")
			else
				err "node$i: did not take the poweroff request (agent not answering); killing QEMU"
				kill_node "$i"
			fi
		done
		local deadline=$((SECONDS + DOWN_TIMEOUT))
		while [ ${#acked[@]} -gt 0 ] && [ $SECONDS -lt $deadline ]; do
			local left=0
			for i in "${acked[@]}"; do qemu_pid "$i" >/dev/null && left=$((left + 1)); done
			[ $left = 0 ] && break
			sleep 0.2
		done
		for i in "${acked[@]+"${acked[@]}"}"; do
			if p=$(qemu_pid "$i"); then
				err "node$i: still running after ${DOWN_TIMEOUT}s; killing QEMU pid $p"
				kill_node "$i"
			fi
		done
	fi
	target_stop
	if [ -n "$ns" ] && ip netns list | awk '{ print $1 }' | grep -qx "$ns"; then
		ip netns del "$ns"
	fi
	rm -f "$STATE/netns" "$STATE/nodes" "$STATE"/node-*.pid "$STATE/vmlinuz" "$STATE/initrd.img"
	log "down in $(elapsed "$t0") s; console logs kept in $STATE"
}

cmd_status() {
	local n i p up rc=0
	n=$(node_count)
	if [ "$n" = 0 ]; then
		log "no lab is up"
		return 1
	fi
	log "namespace $(ns_name), $n node(s), state in $STATE"
	for i in $(seq "$n"); do
		if p=$(qemu_pid "$i"); then
			if up=$(agent_call "$i" 10 'cut -d" " -f1 /proc/uptime' 2>/dev/null); then
				printf 'node%d: qemu pid %s alive, agent answering, uptime %ss\n' "$i" "$p" "$up"
			else
				printf 'node%d: qemu pid %s alive, agent NOT answering (console: %s)\n' "$i" "$p" "$STATE/node-$i.console.log"
				rc=1
			fi
		else
			printf 'node%d: qemu NOT running (console: %s)\n' "$i" "$STATE/node-$i.console.log"
			rc=1
		fi
	done
	return "$rc"
}

cmd_logs() {
	local f
	log "console logs in $STATE:"
	for f in "$STATE"/node-*.console.log; do
		[ -e "$f" ] && echo "$f"
	done
	return 0
}

cmd_up() {
	local n=3 lun_size=8G san=0
	while [ $# -gt 0 ]; do
		case "$1" in
		-n) n=${2:?}; shift 2 ;;
		--lun-size) lun_size=${2:?}; shift 2 ;;
		--san) san=1; shift ;;
		*) err "up: unknown argument '$1' (usage: up [-n N] [--lun-size SIZE] [--san])"; exit 2 ;;
		esac
	done
	if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then
		err "up: -n must be 1..200"
		exit 2
	fi

	if [ "$(node_count)" != 0 ] || [ -n "$(ns_name)" ]; then
		local i any=0
		for i in $(seq "$(node_count)"); do qemu_pid "$i" >/dev/null && any=1; done
		if [ $any = 1 ]; then
			err "a lab is already up ($STATE); run 'e2e/lab.sh down' first"
			exit 1
		fi
		log "cleaning up the remains of a previous lab"
		cmd_down >/dev/null
	fi

	"$E2E/image.sh" "$IMAGE"
	command -v qemu-system-x86_64 >/dev/null || { err "qemu-system-x86_64 missing: run e2e/deps.sh"; exit 1; }

	mkdir -p "$STATE"
	rm -f "$STATE"/node-*.console.log "$STATE"/node-*.qemu.log "$STATE"/node-*.qmp "$STATE"/lun*.raw "$STATE/added-luns"
	# The lab boots, and boots again (`start`), from its own links to the
	# image: another lab rebuilding the shared image for another binary
	# meanwhile must not change what a guest booted again here runs.
	(
		flock -w 900 9 || exit 1
		for f in vmlinuz initrd.img; do
			rm -f "$STATE/$f"
			ln "$IMAGE/$f" "$STATE/$f" 2>/dev/null || cp "$IMAGE/$f" "$STATE/$f"
		done
	) 9>"$IMAGE/.lock" || { err "cannot take the image from $IMAGE"; exit 1; }
	truncate -s "$lun_size" "$STATE/lun.raw"

	local ns
	ns=ocfs2lab-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
	ip netns add "$ns"
	echo "$ns" >"$STATE/netns"
	echo "$n" >"$STATE/nodes"
	ip netns exec "$ns" ip link set lo up
	log "namespace $ns, LUN $STATE/lun.raw ($lun_size, sparse), $n guest(s)"
	if [ "$san" = 1 ]; then
		echo 1 >"$STATE/san"
		target_start || { cmd_down >/dev/null; exit 1; }
	else
		rm -f "$STATE/san"
	fi

	# LAB_API_PORT: a port on the namespace's loopback where the test serves
	# (relays) a Kubernetes API server; guests reach it as 10.0.2.100:6443.
	# With restrict=on nothing else leaves the guests; the namespace keeps it
	# all on this machine.
	if [ -n "${LAB_API_PORT:-}" ]; then
		case "$LAB_API_PORT" in '' | *[!0-9]*) err "LAB_API_PORT must be a port number"; exit 2 ;; esac
		echo "$LAB_API_PORT" >"$STATE/api_port"
	else
		rm -f "$STATE/api_port"
	fi
	if [ -n "${LAB_DATA_DISK:-}" ]; then
		[ -f "$LAB_DATA_DISK" ] || { err "LAB_DATA_DISK=$LAB_DATA_DISK is not a file"; exit 2; }
		realpath "$LAB_DATA_DISK" >"$STATE/data_disk"
	else
		rm -f "$STATE/data_disk"
	fi

	local i t0
	t0=$(now)
	for i in $(seq "$n"); do boot_node "$i"; done
	wait_booted $(seq "$n")
	log "all $n guests up in $(elapsed "$t0") s"
}

# Starts node I's QEMU (daemonized) on the lab's LUN and networks; records
# its start time in BOOT_START[I]. Exits (tearing the lab down unless
# LAB_KEEP_ON_FAIL=1) when QEMU cannot start.
declare -A BOOT_START=()
boot_node() {
	local i=$1 ns mac api_fwd="" api
	ns=$(ns_name)
	mac=$(printf '%02x' "$i")
	api=$(cat "$STATE/api_port" 2>/dev/null || true)
	# With an API server, also its way back to the kubelet (logs, exec):
	# 11250+I on the namespace's loopback (testkit's Lab::connect_proxy);
	# and the node's SSH server (e2e/kube-node.sh) at 12220+I.
	[ -z "$api" ] || api_fwd=",guestfwd=tcp:10.0.2.100:6443-cmd:/bin/busybox nc 127.0.0.1 $api,hostfwd=tcp:127.0.0.1:$((11250 + i))-:10250,hostfwd=tcp:127.0.0.1:$((12220 + i))-:22"
	rm -f "$STATE/node-$i.console.log" "$STATE/node-$i.qemu.log" "$STATE/node-$i.qmp"
	local lun_args=()
	if [ -f "$STATE/san" ]; then
		# Two paths to the target, each its own NIC and network (10.0.3.0/24,
		# 10.0.4.0/24): the portal 10.0.P.100:3260 is forwarded to tgtd on
		# the namespace's loopback, one relay per connection (portal.sh).
		local p
		for p in 1 2; do
			lun_args+=(-netdev "user,id=s$p,restrict=on,net=10.0.$((2 + p)).0/24,guestfwd=tcp:10.0.$((2 + p)).100:3260-cmd:/bin/sh $STATE/portal.sh")
			lun_args+=(-device "virtio-net-pci,netdev=s$p,id=path$p,mac=52:54:00:77:1$p:$mac,romfile=")
		done
	else
		# shellcheck disable=SC2054 # QEMU's own comma-separated options
		lun_args=(-drive "file=$STATE/lun.raw,format=raw,if=none,id=d0,cache=none,file.locking=off"
			-device virtio-blk-pci,drive=d0,share-rw=on,serial=lab-lun0)
		local k
		while read -r k; do
			# shellcheck disable=SC2054
			lun_args+=(-drive "file=$STATE/lun$k.raw,format=raw,if=none,id=d$k,cache=none,file.locking=off"
				-device "virtio-blk-pci,drive=d$k,id=lun$k,share-rw=on,serial=lab-lun$k")
		done < <(cat "$STATE/added-luns" 2>/dev/null)
	fi
	local data
	data=$(cat "$STATE/data_disk" 2>/dev/null || true)
	# shellcheck disable=SC2054 # QEMU's own comma-separated options
	[ -z "$data" ] || lun_args+=(-drive "file=$data,format=raw,if=none,id=data,readonly=on"
		-device virtio-blk-pci,drive=data,serial=lab-data)
	BOOT_START[$i]=$(now)
	# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer
	# check can miss its ticks and panic at boot ("IO-APIC + timer doesn't
	# work!", seen in CI with two labs booting at once); the guest's timer
	# works, only the check's time budget is too short.
	if ! ip netns exec "$ns" qemu-system-x86_64 \
		-name "ocfs2lab-node$i" -accel tcg -cpu max -m "$MEM" -smp 1 \
		-display none -monitor none -no-reboot \
		-serial "file:$STATE/node-$i.console.log" \
		-qmp "unix:$STATE/node-$i.qmp,server=on,wait=off" \
		-kernel "$STATE/vmlinuz" -initrd "$STATE/initrd.img" \
		-append "console=ttyS0 panic=1 no_timer_check lab.name=node$i lab.ip=$SUBNET.$((10 + i))/24${LAB_APPEND:+ $LAB_APPEND}" \
		-netdev "socket,id=n0,mcast=230.0.0.1:$MCAST_PORT,localaddr=127.0.0.1" \
		-device "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:$mac,romfile=" \
		-netdev "user,id=u0,restrict=on,hostfwd=tcp:127.0.0.1:$((7100 + i))-:7000,hostfwd=tcp:127.0.0.1:$((10100 + i))-:10000$api_fwd" \
		-device "virtio-net-pci,netdev=u0,mac=52:54:00:77:01:$mac,romfile=" \
		"${lun_args[@]}" \
		-daemonize -pidfile "$STATE/node-$i.pid" \
		>"$STATE/node-$i.qemu.log" 2>&1; then
		err "node$i: QEMU failed to start:"
		sed 's/^/  /' "$STATE/node-$i.qemu.log" >&2
		[ "${LAB_KEEP_ON_FAIL:-}" = 1 ] || cmd_down >/dev/null
		exit 1
	fi
}

# Waits for the given nodes: LAB-READY on the console, then the agent
# answering. A dead QEMU, a LAB-FAILED line or a timeout names the node and
# the step, tears the lab down (unless LAB_KEEP_ON_FAIL=1) and exits 1.
wait_booted() {
	local i
	local pending=() ready_t=() failed=() deadline=$((SECONDS + BOOT_TIMEOUT))
	for i in "$@"; do pending+=("$i"); done
	while [ ${#pending[@]} -gt 0 ]; do
		local still=()
		for i in "${pending[@]}"; do
			local con=$STATE/node-$i.console.log
			if ! qemu_pid "$i" >/dev/null; then
				err "node$i: QEMU exited during boot (step: $( [ -n "${ready_t[i]:-}" ] && echo 'agent' || echo 'kernel/init')); console log: $con"
				failed+=("$i")
				continue
			fi
			if grep -q "^LAB-FAILED" "$con" 2>/dev/null; then
				err "node$i: guest init failed: $(grep -m1 '^LAB-FAILED' "$con"); console log: $con"
				failed+=("$i")
				continue
			fi
			if [ -z "${ready_t[i]:-}" ]; then
				if grep -q "^LAB-READY node$i" "$con" 2>/dev/null; then
					ready_t[i]=$(elapsed "${BOOT_START[$i]}")
				else
					still+=("$i")
					continue
				fi
			fi
			if agent_call "$i" 5 true >/dev/null 2>&1; then
				log "node$i: ready in ${ready_t[i]} s (LAB-READY), agent answering at $(elapsed "${BOOT_START[$i]}") s"
			else
				still+=("$i")
			fi
		done
		pending=("${still[@]+"${still[@]}"}")
		[ ${#pending[@]} -gt 0 ] || break
		if [ $SECONDS -ge $deadline ]; then
			for i in "${pending[@]}"; do
				if [ -z "${ready_t[i]:-}" ]; then
					local what="kernel/init"
					[ -s "$STATE/node-$i.console.log" ] || what="firmware/kernel load: console still empty"
					err "node$i: no LAB-READY on the console within ${BOOT_TIMEOUT}s (step: $what); console log: $STATE/node-$i.console.log"
				else
					err "node$i: LAB-READY but the agent did not answer on 127.0.0.1:$((7100 + i)) within ${BOOT_TIMEOUT}s (step: agent); console log: $STATE/node-$i.console.log"
				fi
				failed+=("$i")
			done
			break
		fi
		sleep 0.3
	done
	if [ ${#failed[@]} -gt 0 ]; then
		for i in "${failed[@]}"; do
			err "--- node$i console (last 15 lines) ---"
			tail -n 15 "$STATE/node-$i.console.log" >&2 2>/dev/null || true
		done
		if [ "${LAB_KEEP_ON_FAIL:-}" = 1 ]; then
			err "leaving the lab up (LAB_KEEP_ON_FAIL=1); 'e2e/lab.sh down' cleans up"
		else
			cmd_down >/dev/null
			err "lab torn down; console logs kept in $STATE (LAB_KEEP_ON_FAIL=1 leaves the guests up)"
		fi
		exit 1
	fi
}

# QMP command to node I's monitor socket, with optional JSON arguments.
qmp() {
	local i=$1 cmd=$2 args=${3:-'{}'}
	qemu_pid "$i" >/dev/null || { err "node$i: QEMU is not running"; return 1; }
	python3 - "$STATE/node-$i.qmp" "$cmd" "$args" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()  # greeting
for cmd, args in (("qmp_capabilities", {}), (sys.argv[2], json.loads(sys.argv[3]))):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r:
            continue
        if "error" in r:
            sys.exit("qmp %s: %s" % (cmd, r["error"].get("desc", r["error"])))
        break
PY
}

# The iSCSI target of a --san lab: tgtd in the lab's namespace, serving
# lun.raw with O_DIRECT (the controller on the host writes the file
# directly) as LUN 1 of one target, to any initiator. Its control socket
# carries a port number of this lab's own, so labs side by side do not
# meet. Returns when the target answers.
TARGET_IQN=iqn.2026-12.lab.ocfs2-csi:lun0
tgt_port() {
	local f=$STATE/tgt.control
	[ -f "$f" ] || echo $((1000 + RANDOM % 30000)) >"$f"
	cat "$f"
}
tgtd_pid() {
	local p
	p=$(cat "$STATE/tgtd.pid" 2>/dev/null) || return 1
	[ -n "$p" ] && [ -d "/proc/$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "-C $(tgt_port)" || return 1
	echo "$p"
}
target_start() {
	local ns port deadline
	ns=$(ns_name)
	port=$(tgt_port)
	command -v tgtd >/dev/null || { err "tgtd missing: run e2e/deps.sh"; return 1; }
	if tgtd_pid >/dev/null; then
		err "the target is already running"
		return 1
	fi
	# Guests reach tgtd only once its target is set up: a login that
	# reaches a tgtd without it is refused as "target not found", and
	# open-iscsi does not retry that; a closed connection it retries.
	rm -f "$STATE/target.ready"
	printf '#!/bin/sh\n[ -e %s/target.ready ] || exit 0\nexec /bin/busybox nc 127.0.0.1 3260\n' "$STATE" >"$STATE/portal.sh"
	ip netns exec "$ns" tgtd -f -C "$port" >>"$STATE/tgtd.log" 2>&1 </dev/null &
	echo $! >"$STATE/tgtd.pid"
	deadline=$((SECONDS + 30))
	until tgtadm -C "$port" --lld iscsi --mode target --op show >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || { err "tgtd did not answer (log: $STATE/tgtd.log)"; return 1; }
		sleep 0.2
	done
	if ! {
		tgtadm -C "$port" --lld iscsi --mode target --op new --tid 1 --targetname "$TARGET_IQN" &&
			tgtadm -C "$port" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 \
				--backing-store "$STATE/lun.raw" --bsoflags direct &&
			tgtadm -C "$port" --lld iscsi --mode logicalunit --op update --tid 1 --lun 1 \
				--params scsi_id=ocfs2lab-lun0,scsi_sn=ocfs2lab0001 &&
			tgtadm -C "$port" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
	}; then
		err "tgtadm could not set up the target (log: $STATE/tgtd.log)"
		return 1
	fi
	touch "$STATE/target.ready"
	log "iSCSI target $TARGET_IQN up (tgtd pid $(cat "$STATE/tgtd.pid"))"
}
target_stop() {
	local p
	rm -f "$STATE/target.ready"
	p=$(tgtd_pid) || return 0
	kill -KILL "$p"
	while [ -d "/proc/$p" ]; do sleep 0.1; done
	rm -f "$STATE/tgtd.pid"
}

cmd_crash() {
	local i p
	i=$(node_index "${1:-}") || exit 2
	p=$(qemu_pid "$i") || { err "node$i: QEMU is not running"; exit 1; }
	kill -KILL "$p"
	log "node$i: QEMU pid $p killed (abrupt power loss)"
}

# Boots a node whose QEMU is gone (crashed or powered off) again, on the same
# LUN and networks, and waits for it like `up` does.
cmd_start() {
	local i t0
	i=$(node_index "${1:-}") || exit 2
	if qemu_pid "$i" >/dev/null; then
		err "node$i: QEMU is still running"
		exit 1
	fi
	t0=$(now)
	boot_node "$i"
	wait_booted "$i"
	log "node$i: up again in $(elapsed "$t0") s"
}

need_root() {
	[ "$(id -u)" = 0 ] || { err "needs root (network namespaces)"; exit 1; }
}

# Every running guest's two path links go down (false) or up (true).
set_path_links() {
	local i p
	for i in $(seq "$(node_count)"); do
		qemu_pid "$i" >/dev/null || continue
		for p in 1 2; do qmp "$i" set_link "{\"name\": \"path$p\", \"up\": $1}"; done
	done
}

# The array grows the LUN. On the virtio lab every QEMU resizes its drive
# (the guest kernel learns the new capacity at once, as from a hypervisor).
# tgt reads a LU's size only when it opens the backing file, while an array
# grows a LUN in place; so the SAN lab holds every guest's path links down
# (I/O waits in the guests, as in a short path fault), waits until tgtd
# has no command in progress, has it reopen the file at its new size, and
# brings the links back. The guests then see the new size only when they
# rescan their paths, as with an array.
cmd_grow_lun() {
	local size=${1:-} bytes cur i p stat last n
	[ -n "$size" ] || { err "usage: grow-lun SIZE"; exit 2; }
	bytes=$(numfmt --from=iec "$size" 2>/dev/null) || { err "grow-lun: bad size '$size'"; exit 2; }
	cur=$(stat -c %s "$STATE/lun.raw")
	[ "$bytes" -gt "$cur" ] || { err "grow-lun: $size is not larger than the LUN ($cur bytes)"; exit 2; }
	truncate -s "$bytes" "$STATE/lun.raw"
	if [ ! -f "$STATE/san" ]; then
		for i in $(seq "$(node_count)"); do
			qemu_pid "$i" >/dev/null || continue
			qmp "$i" block_resize "{\"device\": \"d0\", \"size\": $bytes}"
		done
		log "LUN grown from $cur to $bytes bytes"
		return
	fi
	set_path_links false
	# Quiet: no command submitted and not done, and the counters the same
	# on two looks in a row (nothing arrived from a relay's buffer).
	last="" n=0
	while :; do
		stat=$(tgtadm -C "$(tgt_port)" --lld iscsi --mode logicalunit --op stat --tid 1 --lun 1 |
			awk 'NR > 1 { busy += ($5 - $7) + ($9 - $11); all = all " " $5 "/" $9 } END { print busy + 0, all }')
		if [ "${stat%% *}" = 0 ] && [ "$stat" = "$last" ]; then break; fi
		last=$stat n=$((n + 1))
		[ "$n" -lt 600 ] || { set_path_links true; err "grow-lun: tgtd never went quiet ($stat)"; exit 1; }
		sleep 0.1
	done
	if ! tgtadm -C "$(tgt_port)" --lld iscsi --mode logicalunit --op update --tid 1 --lun 1 \
		--params "online=0,path=$STATE/lun.raw"; then
		set_path_links true
		err "grow-lun: tgtd did not reopen the LUN (log: $STATE/tgtd.log)"
		exit 1
	fi
	set_path_links true
	log "LUN grown from $cur to $bytes bytes (paths held for the reopen)"
}

# A LUN the SAN admin zones to every host: a new file, hot-plugged into
# every running guest as the next virtio disk (guests booted later get it
# on their command line). Prints the guest's device.
cmd_add_lun() {
	local size=${1:-} k i file letter
	[ -n "$size" ] || { err "usage: add-lun SIZE"; exit 2; }
	[ ! -f "$STATE/san" ] || { err "add-lun: only on the virtio lab"; exit 2; }
	# Its device name below counts LUNs only.
	[ ! -f "$STATE/data_disk" ] || { err "add-lun: not with LAB_DATA_DISK"; exit 2; }
	k=$(($(wc -l <"$STATE/added-luns" 2>/dev/null || echo 0) + 1))
	file=$STATE/lun$k.raw
	truncate -s "$size" "$file"
	for i in $(seq "$(node_count)"); do
		qemu_pid "$i" >/dev/null || continue
		qmp "$i" blockdev-add "{\"driver\": \"raw\", \"node-name\": \"d$k\", \"cache\": {\"direct\": true},
			\"file\": {\"driver\": \"file\", \"filename\": \"$file\", \"locking\": \"off\"}}"
		qmp "$i" device_add "{\"driver\": \"virtio-blk-pci\", \"id\": \"lun$k\", \"drive\": \"d$k\",
			\"serial\": \"lab-lun$k\", \"share-rw\": true}"
	done
	echo "$k" >>"$STATE/added-luns"
	letter=$(echo abcdefghijklmnopqrstuvwxyz | cut -c$((k + 1)))
	log "LUN $file ($size) added to every guest as /dev/vd$letter"
	echo "/dev/vd$letter"
}

case "${1:-}" in
up) shift; need_root; cmd_up "$@" ;;
add-lun) shift; need_root; cmd_add_lun "$@" ;;
grow-lun) shift; need_root; cmd_grow_lun "$@" ;;
exec) shift; need_root; cmd_exec "$@" ;;
status) need_root; cmd_status ;;
down) need_root; cmd_down ;;
logs) cmd_logs ;;
ns) ns_name ;;
crash) shift; need_root; cmd_crash "$@" ;;
start) shift; need_root; cmd_start "$@" ;;
freeze | thaw)
	need_root
	i=$(node_index "${2:-}") || exit 2
	if [ "$1" = freeze ]; then
		qmp "$i" stop && log "node$i: frozen (vCPU paused)"
	else
		qmp "$i" cont && log "node$i: thawed"
	fi
	;;
stall | unstall)
	# The guest keeps running but its LUN stops answering: QEMU throttles
	# the drive to 1 byte/s, so after at most one more request every I/O
	# waits (a 4 KiB write over an hour) until unstall lifts the limit and
	# the queued I/O completes (measured: a stalled O_DIRECT write finished
	# at once after unstall).
	need_root
	i=$(node_index "${2:-}") || exit 2
	rate=0
	[ "$1" = stall ] && rate=1
	qmp "$i" block_set_io_throttle "{\"device\": \"d0\", \"bps\": 0, \"bps_rd\": $rate, \"bps_wr\": $rate, \"iops\": 0, \"iops_rd\": 0, \"iops_wr\": 0}" &&
		log "node$i: LUN $( [ "$1" = stall ] && echo 'stalled (1 byte/s)' || echo 'answering again')"
	;;
path-down | path-up)
	need_root
	[ -f "$STATE/san" ] || { err "$1: not a --san lab"; exit 2; }
	i=$(node_index "${2:-}") || exit 2
	case "${3:-}" in 1 | 2) ;; *) err "$1: path must be 1 or 2"; exit 2 ;; esac
	up=false
	[ "$1" = path-up ] && up=true
	qmp "$i" set_link "{\"name\": \"path$3\", \"up\": $up}" &&
		log "node$i: path $3 $( [ "$up" = true ] && echo up || echo down)"
	;;
# An array restarting: its ports stop answering (every guest's path links
# go down) while tgtd is gone, and answer again once the target is back.
# Links, not only tgtd: the portal relay accepts a connection before it
# can reach tgtd and then closes it, and a connection closed that way
# during a re-login sends Debian 12's open-iscsi (2.1.8) into a loop it
# never leaves (README, "Known problems").
target-stop)
	need_root
	[ -f "$STATE/san" ] || { err "$1: not a --san lab"; exit 2; }
	set_path_links false
	target_stop && log "iSCSI target stopped, its ports dark"
	;;
target-start)
	need_root
	[ -f "$STATE/san" ] || { err "$1: not a --san lab"; exit 2; }
	target_start || exit 1
	set_path_links true
	;;
*)
	sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'
	[ -n "${1:-}" ] && exit 2
	exit 0
	;;
esac
