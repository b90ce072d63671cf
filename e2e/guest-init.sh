#!/bin/sh
# shellcheck disable=SC3040,SC3045 # busybox ash has pipefail and read -t
# /init of an OCFS2 lab guest (busybox sh). One file, several roles:
#   /init                 boot: mounts, modules, network, then busybox init
#   /init __agent         one command-agent connection (run by nc -e)
#   /init __ready         prints LAB-READY once the agent listens
#   /init __shutdown      bounded clean-up: unmount ocfs2, stop heartbeat, sync
#   /init __poweroff      clean-up, then poweroff -f (also installed as lab-poweroff)
#
# Kernel command line: lab.name=NAME lab.ip=ADDR/PREFIX
# NICs are found by MAC (lab.sh sets them): 52:54:00:77:00:xx is the private
# cluster L2 (renamed eth0), 52:54:00:77:01:xx is QEMU user networking for
# control (renamed eth1, 10.0.2.15/24, where hostfwd delivers).

PATH=/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME

AGENT_PORT=7000
MODULES="virtio_pci virtio_blk virtio_net loop configfs ocfs2 ocfs2_stack_o2cb ocfs2_dlmfs dm_mod"

log() { echo "lab-init: $*"; }

die() {
	echo "LAB-FAILED $(hostname 2>/dev/null): $*"
	# Stay alive so the console log and the state can be inspected.
	exec sh -c 'while :; do sleep 3600; done'
}

lab_param() {
	read -r cmdline </proc/cmdline
	for w in $cmdline; do
		case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
	done
	return 1
}

# Protocol: the client sends one line, the base64 of a shell command; the reply
# is the command's combined output (line-buffered), then "__LAB_RC=<code>".
agent() {
	cd /root || cd /
	if ! IFS= read -r -t 30 req; then
		exit 0
	fi
	# The command goes through a file: an argument is limited to 128 KiB.
	f=$(mktemp /tmp/lab-cmd.XXXXXX)
	if ! printf '%s' "$req" | base64 -d >"$f" 2>/dev/null; then
		rm -f "$f"
		echo "lab-agent: request is not base64"
		echo "__LAB_RC=255"
		exit 0
	fi
	set -o pipefail
	sh "$f" </dev/null 2>&1 | awk '{ print; fflush() }'
	rc=$?
	rm -f "$f"
	echo "__LAB_RC=$rc"
}

ready() {
	# LISTEN (0A) on 0x1B58 = 7000, in /proc/net/tcp or tcp6.
	i=0
	while [ $i -lt 100 ]; do
		if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$2 ~ /:1B58$/ && $4 == "0A" { f = 1 } END { exit !f }'; then
			echo "LAB-READY $(hostname) uptime=$(cut -d' ' -f1 /proc/uptime)s"
			return 0
		fi
		sleep 0.1
		i=$((i + 1))
	done
	echo "LAB-FAILED $(hostname): command agent not listening on port $AGENT_PORT"
}

# Unmount every ocfs2 filesystem and stop every global heartbeat, bounded in
# time: with a dead or frozen peer, unmount and even sync block in the DLM
# until the peer is evicted (about a minute). Returns 1 when it gave up.
clean_up() {
	(
		sync
		awk '$3 == "ocfs2" { print $2 }' /proc/mounts | while read -r m; do
			umount "$m" || umount -l "$m"
		done
		for c in /sys/kernel/config/cluster/*; do
			[ -d "$c/heartbeat" ] || continue
			for r in "$c"/heartbeat/*; do
				[ -d "$r" ] || continue
				o2cb stop-heartbeat "${c##*/}" >/dev/null 2>&1 && break
			done
		done
		sync
	) &
	pid=$!
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "clean-up (unmount/heartbeat stop/sync) still blocked after 15 s; powering off without sync"
		return 1
	fi
	return 0
}

boot() {
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts
	mount -t tmpfs tmpfs /run
	mount -t tmpfs tmpfs /tmp
	exec </dev/null >/dev/console 2>&1

	name=$(lab_param lab.name) || name=lab
	addr=$(lab_param lab.ip) || die "no lab.ip= on the kernel command line"
	hostname "$name"
	log "$name: init at $(cut -d' ' -f1 /proc/uptime)s"

	ln -sf /proc/mounts /etc/mtab
	mkdir -p /var/lib/libuuid /dlm /etc/ocfs2 /mnt /root /var/log /var/tmp
	[ -e /var/run ] || ln -s /run /var/run

	# shellcheck disable=SC2086
	modprobe -a $MODULES || die "modprobe failed"
	mount -t configfs configfs /sys/kernel/config || die "configfs mount failed"
	mount -t ocfs2_dlmfs ocfs2_dlmfs /dlm || die "ocfs2_dlmfs mount failed"
	# o2hb's live node lists: /sys/kernel/debug/o2hb/livenodes and per region.
	mount -t debugfs debugfs /sys/kernel/debug || log "debugfs mount failed (o2hb lists unavailable)"

	ip link set lo up
	priv=
	ctl=
	i=0
	while [ $i -lt 100 ]; do
		for d in /sys/class/net/*; do
			case "$(cat "$d/address" 2>/dev/null)" in
			52:54:00:77:00:*) priv=${d##*/} ;;
			52:54:00:77:01:*) ctl=${d##*/} ;;
			esac
		done
		[ -n "$priv" ] && [ -n "$ctl" ] && break
		sleep 0.1
		i=$((i + 1))
	done
	[ -n "$priv" ] || die "private NIC (MAC 52:54:00:77:00:xx) not found"
	[ -n "$ctl" ] || die "control NIC (MAC 52:54:00:77:01:xx) not found"
	{ ip link set "$priv" name labpriv && ip link set "$ctl" name labctl &&
		ip link set labpriv name eth0 && ip link set labctl name eth1; } || die "NIC rename failed"
	{ ip addr add "$addr" dev eth0 && ip link set eth0 up; } || die "eth0 $addr failed"
	{ ip addr add 10.0.2.15/24 dev eth1 && ip link set eth1 up; } || die "eth1 failed"
	# A --san lab's two paths to the iSCSI target (MACs 52:54:00:77:1P:xx):
	# san1 on 10.0.3.0/24, san2 on 10.0.4.0/24, portal 10.0.(2+P).100.
	for d in /sys/class/net/*; do
		case "$(cat "$d/address" 2>/dev/null)" in
		52:54:00:77:1[12]:*)
			p=$(cut -c14 "$d/address")
			{ ip link set "${d##*/}" name "san$p" && ip addr add "10.0.$((2 + p)).15/24" dev "san$p" &&
				ip link set "san$p" up; } || die "san$p failed"
			;;
		esac
	done

	cat >/etc/passwd <<-'EOF'
		root:x:0:0:root:/root:/bin/sh
		nobody:x:65534:65534:nobody:/nonexistent:/bin/false
	EOF
	printf 'root:x:0:\nnogroup:x:65534:\n' >/etc/group
	printf '127.0.0.1\tlocalhost\n%s\t%s\n' "${addr%/*}" "$name" >/etc/hosts

	cat >/etc/inittab <<-EOF
		::once:/init __ready
		::respawn:/bin/busybox nc -ll -p $AGENT_PORT -e /init __agent
		::ctrlaltdel:/init __poweroff
		::shutdown:/init __shutdown
	EOF
	log "$name: setup done at $(cut -d' ' -f1 /proc/uptime)s ($addr on eth0)"
	exec /bin/busybox init
}

case "${1:-}" in
__agent) agent ;;
__ready) ready ;;
__shutdown) clean_up ;;
__poweroff)
	if clean_up; then
		poweroff -f
	else
		poweroff -f -n # -n: no sync(), which would block like the clean-up did
	fi
	;;
*)
	if [ "$$" = 1 ]; then
		boot
	else
		echo "usage: $0 [__agent|__ready|__shutdown|__poweroff] (boot mode runs only as PID 1)" >&2
		exit 2
	fi
	;;
esac
