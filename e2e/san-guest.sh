#!/bin/sh
# Run inside a --san lab guest (e2e/lab.sh exec N - < e2e/san-guest.sh):
# logs in to the lab's iSCSI target on both paths, starts multipathd with
# deploy/multipath.conf (the caller puts it at /etc/multipath.conf) and
# waits for the LUN's multipath map with two active paths. Prints the map's
# stable path, /dev/mapper/<WWID>. Idempotent.
#
# With the argument `single` (`set -- single` before this script), the host
# is one without multipath: it logs in on path 1 only, keeps open-iscsi's
# default replacement timeout (120 s, longer than o2cb's dead time, so an
# outage pauses I/O and never fails it) and prints the disk's stable
# /dev/disk/by-id/scsi-... path.
set -eu
IQN=iqn.2026-12.lab.ocfs2-csi:lun0
mode=${1:-multipath}
case $mode in
multipath) paths="3 4" want=2 ;;
single) paths=3 want=1 ;;
*) echo "san-guest: unknown mode '$mode' (multipath or single)" >&2; exit 2 ;;
esac
modprobe -a iscsi_tcp sd_mod dm_multipath dm_round_robin dm_service_time dm_queue_length
mkdir -p /etc/iscsi /var/lib/iscsi /run/lock/iscsi
[ -f /etc/iscsi/initiatorname.iscsi ] ||
	echo "InitiatorName=iqn.2026-12.lab.ocfs2-csi:$(hostname)" >/etc/iscsi/initiatorname.iscsi
[ "$mode" = single ] || [ -f /etc/multipath.conf ] || { echo "san-guest: /etc/multipath.conf missing" >&2; exit 1; }
# udevd for block devices only (the NICs keep the names init gave them):
# multipath uses only paths udev has seen, and udev makes /dev/disk/by-id.
if ! pidof systemd-udevd >/dev/null; then
	/lib/systemd/systemd-udevd --daemon >&2
	udevadm trigger --subsystem-match=block --action=add
	udevadm settle --timeout=60
fi
pidof iscsid >/dev/null || iscsid
for p in $paths; do
	portal=10.0.$p.100:3260
	if ! iscsiadm -m node -T "$IQN" -p "$portal" >/dev/null 2>&1; then
		iscsiadm -m node -o new -T "$IQN" -p "$portal" >/dev/null
		# The settings README's "Multipath LUNs" asks for: a path whose
		# target stops answering is noticed within 2 + 5 s (NOP-Out) and
		# its I/O handed to multipath 5 s later, instead of the default
		# 120 s that would stall writes past o2cb's dead time.
		[ "$mode" = single ] ||
			for kv in node.session.timeo.replacement_timeout=5 \
				'node.conn[0].timeo.noop_out_interval=2' 'node.conn[0].timeo.noop_out_timeout=5'; do
				iscsiadm -m node -T "$IQN" -p "$portal" -o update -n "${kv%%=*}" -v "${kv#*=}"
			done
	fi
	iscsiadm -m session 2>/dev/null | grep -q "$portal" ||
		iscsiadm -m node -T "$IQN" -p "$portal" --login >/dev/null
done
i=0
while [ "$(find /sys/block -maxdepth 1 -name "sd*" | wc -l)" -lt "$want" ]; do
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "san-guest: the paths' disks did not appear" >&2; exit 1; }
	sleep 0.1
done
udevadm settle --timeout=60
if [ "$mode" = single ]; then
	disk=$(find /sys/block -maxdepth 1 -name "sd*" | head -n 1)
	disk=/dev/${disk##*/}
	for link in /dev/disk/by-id/scsi-*; do
		[ "$(readlink -f "$link")" = "$disk" ] && { echo "$link"; exit 0; }
	done
	echo "san-guest: no /dev/disk/by-id/scsi-* name for $disk:" >&2
	ls -l /dev/disk/by-id >&2
	exit 1
fi
pidof multipathd >/dev/null || multipathd
i=0
while :; do
	multipath >/dev/null 2>&1 || true
	map=$(multipath -ll 2>/dev/null | awk 'NR == 1 { print $1 }')
	paths=$(multipath -ll 2>/dev/null | grep -c 'active ready running' || true)
	[ -n "$map" ] && [ "$paths" -ge 2 ] && [ -b "/dev/mapper/$map" ] && break
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "san-guest: no multipath map with two active paths:" >&2; multipath -ll >&2; exit 1; }
	sleep 0.2
done
echo "/dev/mapper/$map"
