#!/usr/bin/env bash
# Builds the lab guests' boot image from Debian bookworm packages:
#   OUT_DIR/vmlinuz     the full-flavour Debian kernel (has OCFS2)
#   OUT_DIR/initrd.img  gzip'd cpio: busybox, ocfs2-tools, kmod, util-linux,
#                       gdisk, their libraries, the needed modules, /init
#                       (e2e/guest-init.sh), /usr/bin/ocfs2-csi and, when
#                       present, /usr/bin/csi-sanity
#   OUT_DIR/key         content address of all of the above
#   OUT_DIR/manifest    what went in
#
# Usage: e2e/image.sh [OUT_DIR]        (default $OCFS2_CSI_CACHE/lab/image, scripts/cache.sh)
# Env:   OCFS2_CSI_BIN   project binary (default target/debug/ocfs2-csi;
#                        set to empty to leave it out)
#        CSI_SANITY_BIN  csi-sanity binary (default $OCFS2_CSI_CACHE/bin/csi-sanity if
#                        it exists; empty to leave it out)
#        LAB_KERNEL_PKG  pin the kernel package (default: newest
#                        linux-image-6.1.0-N-amd64 that apt knows)
# The .debs are cached in $OCFS2_CSI_CACHE/lab/debs. When OUT_DIR/key matches, nothing
# is rebuilt.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E/.." && pwd)
. "$REPO/scripts/cache.sh"
OUT=${1:-$OCFS2_CSI_CACHE/lab/image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEBS=$OCFS2_CSI_CACHE/lab/debs
INIT=$E2E/guest-init.sh

if [ -z "${OCFS2_CSI_BIN+set}" ]; then
	OCFS2_CSI_BIN=$REPO/target/debug/ocfs2-csi
	if [ ! -x "$OCFS2_CSI_BIN" ]; then
		echo "image: warning: $OCFS2_CSI_BIN not built (cargo build --bins); the image will lack ocfs2-csi" >&2
		OCFS2_CSI_BIN=
	fi
elif [ -n "$OCFS2_CSI_BIN" ] && [ ! -x "$OCFS2_CSI_BIN" ]; then
	echo "image: OCFS2_CSI_BIN=$OCFS2_CSI_BIN is not an executable file" >&2
	exit 1
fi
if [ -z "${CSI_SANITY_BIN+set}" ]; then
	CSI_SANITY_BIN=$OCFS2_CSI_CACHE/bin/csi-sanity
	[ -x "$CSI_SANITY_BIN" ] || CSI_SANITY_BIN=
elif [ -n "$CSI_SANITY_BIN" ] && [ ! -x "$CSI_SANITY_BIN" ]; then
	echo "image: CSI_SANITY_BIN=$CSI_SANITY_BIN is not an executable file" >&2
	exit 1
fi

# One builder at a time per output directory.
exec 9>"$OUT/.lock"
flock -w 900 9 || { echo "image: another build holds $OUT/.lock" >&2; exit 1; }

USERLAND_PKGS=(busybox-static ocfs2-tools kmod util-linux mount gdisk dmsetup open-iscsi multipath-tools udev)
# LAB_KUBE_NODE_BIN=DIR makes a Kubernetes node image (e2e/kube-node.sh):
# the kubelet, kube-proxy, containerd, runc and crictl from DIR (scripts/kube-tools.sh
# --node builds them there) in /usr/local/bin, the CNI plugins in
# /opt/cni/bin, iptables (legacy: what kube-proxy's iptables mode and the
# CNI plugins drive) and the modules containers and Services need.
KUBE_BIN=${LAB_KUBE_NODE_BIN:-}
KUBE_NODE_TOOLS=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc crictl)
CNI_PLUGINS=(bridge loopback host-local portmap)
# dropbear: an SSH server for the storage e2e suite's [Disruptive] specs,
# which stop and start the kubelet over SSH (e2e/kube-node.sh starts it).
[ -z "$KUBE_BIN" ] || USERLAND_PKGS+=(iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libnetfilter-conntrack3 libnfnetlink0 libmnl0
	dropbear-bin)
# iscsi_tcp, sd_mod, dm_multipath and its path selectors: a --san lab's
# initiator and multipath (e2e/san-guest.sh).
MODULES=(virtio_pci virtio_blk virtio_net ocfs2 ocfs2_stack_o2cb ocfs2_dlmfs loop dm_mod
	iscsi_tcp sd_mod dm_multipath dm_round_robin dm_service_time dm_queue_length)
[ -z "$KUBE_BIN" ] || MODULES+=(overlay bridge veth br_netfilter nf_conntrack nf_nat ip_tables iptable_nat
	iptable_filter iptable_mangle xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_addrtype xt_nat
	xt_multiport xt_statistic xt_tcpudp ipt_REJECT nf_reject_ipv4 ip6_tables ip6table_nat ip6table_filter
	ip6table_mangle ext4)

# --- package versions ------------------------------------------------------
# apt-cache is slow (~1.5 s for everything); when apt's lists are unchanged
# since the last build, reuse the versions recorded then.
apt_stamp() {
	stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16
}
resolve_packages() {
	local kpkg=${LAB_KERNEL_PKG:-}
	if [ -z "$kpkg" ]; then
		kpkg=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null |
			grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n1 || true)
	fi
	[ -n "$kpkg" ] || return 1
	apt-cache policy "$kpkg" "${USERLAND_PKGS[@]}" 2>/dev/null |
		awk '/^[^ ]/ { sub(":$", "", $1); p = $1 } /Candidate:/ { print p, $2 }'
}
stamp=$(apt_stamp)
packages=
# The resolved versions are reused only for the same apt lists and the same
# package names.
stamp="$stamp ${USERLAND_PKGS[*]}"
if [ -f "$OUT/packages" ] && [ "$(cat "$OUT/apt-stamp" 2>/dev/null)" = "$stamp" ] && [ -z "${LAB_KERNEL_PKG:-}" ]; then
	packages=$(cat "$OUT/packages")
else
	packages=$(resolve_packages || true)
	if [ "$(printf '%s\n' "$packages" | grep -cv '(none)$' || true)" -ne $((1 + ${#USERLAND_PKGS[@]})) ]; then
		echo "image: apt does not know all packages; running apt-get update" >&2
		apt-get update -qq
		stamp="$(apt_stamp) ${USERLAND_PKGS[*]}"
		packages=$(resolve_packages || true)
	fi
	if [ "$(printf '%s\n' "$packages" | grep -cv '(none)$' || true)" -ne $((1 + ${#USERLAND_PKGS[@]})) ]; then
		echo "image: cannot resolve the packages; apt-cache says:" >&2
		printf '%s\n' "$packages" >&2
		exit 1
	fi
fi

# --- content key -----------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
key_input() {
	echo "packages:"
	printf '%s\n' "$packages"
	echo "modules: ${MODULES[*]}"
	echo "init: $(sha "$INIT")"
	echo "image.sh: $(sha "$E2E/image.sh")"
	echo "ocfs2-csi: ${OCFS2_CSI_BIN:+$(sha "$OCFS2_CSI_BIN")}"
	echo "csi-sanity: ${CSI_SANITY_BIN:+$(sha "$CSI_SANITY_BIN")}"
	if [ -n "$KUBE_BIN" ]; then
		local b
		for b in "${KUBE_NODE_TOOLS[@]}" "${CNI_PLUGINS[@]}"; do echo "kube $b: $(sha "$KUBE_BIN/$b")"; done
	fi
	# Libraries come from the host (same bookworm): hash the ones used last time.
	if [ -f "$OUT/libs.list" ]; then
		local l
		while read -r l; do
			echo "lib $l: $( [ -e "$l" ] && sha "$l")"
		done <"$OUT/libs.list"
	fi
}
key=$(key_input | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$key" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
	echo "image: up to date in $OUT ($(du -h "$OUT/initrd.img" | cut -f1) initrd, key ${key:0:12})"
	exit 0
fi

t0=$(date +%s.%N)
echo "image: building in $OUT"
printf '%s\n' "$packages" | sed 's/^/image:   /'

# --- download --------------------------------------------------------------
mkdir -p "$DEBS"
deb_of() { # package version -> cached .deb path (apt writes ':' as %3a)
	local v=${2//:/%3a}
	local d
	for d in "$DEBS/${1}_${v}_"*.deb; do
		[ -e "$d" ] && echo "$d" && return
	done
	return 0
}
need=()
while read -r p v; do
	[ -n "$(deb_of "$p" "$v")" ] || need+=("$p=$v")
done <<<"$packages"
if [ ${#need[@]} -gt 0 ]; then
	echo "image: downloading ${need[*]}"
	(cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${need[@]}" >/dev/null)
fi

# Drop cached .debs that no build uses any more (an older kernel, say).
keep=$(while read -r p v; do deb_of "$p" "$v"; done <<<"$packages")
for d in "$DEBS"/*.deb; do
	grep -qxF "$d" <<<"$keep" || rm -f "$d"
done

# --- extract -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocfs2-lab-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
X=$WORK/x   # everything extracted
S=$WORK/s   # the initramfs tree
mkdir -p "$X" "$S"
kernel_pkg=
while read -r p v; do
	dpkg-deb -x "$(deb_of "$p" "$v")" "$X"
	case "$p" in linux-image-*) kernel_pkg=$p ;; esac
done <<<"$packages"
KV=${kernel_pkg#linux-image-}
[ -f "$X/boot/vmlinuz-$KV" ] || { echo "image: no boot/vmlinuz-$KV in $kernel_pkg" >&2; exit 1; }

# --- modules -----------------------------------------------------------------
depmod -b "$X" "$KV"
mods=()
for m in "${MODULES[@]}"; do
	while read -r kw path _; do
		[ "$kw" = insmod ] && mods+=("$path")
	done < <(modprobe -d "$X" -S "$KV" --show-depends "$m")
done
mapfile -t mods < <(printf '%s\n' "${mods[@]}" | sort -u)
for f in "${mods[@]}"; do
	rel=${f#"$X"/}
	mkdir -p "$S/$(dirname "$rel")"
	cp "$f" "$S/$rel"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
	[ -f "$X/lib/modules/$KV/$f" ] && cp "$X/lib/modules/$KV/$f" "$S/lib/modules/$KV/"
done
depmod -b "$S" "$KV"

# --- userland ----------------------------------------------------------------
mkdir -p "$S"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/libexec,lib,lib64,etc,proc,sys,dev,run,tmp,root,mnt,var}
cp "$X/bin/busybox" "$S/bin/busybox"
for a in $("$X/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -sf busybox "$S/bin/$a"
done

# Real tools (they override busybox applets of the same name).
TOOLS=(
	sbin/mkfs.ocfs2 sbin/mount.ocfs2 sbin/tunefs.ocfs2 sbin/fsck.ocfs2 sbin/mounted.ocfs2
	sbin/debugfs.ocfs2 sbin/o2cb sbin/o2cb_ctl sbin/ocfs2_hb_ctl sbin/o2cluster sbin/o2image
	sbin/defragfs.ocfs2 usr/bin/o2info
	bin/kmod sbin/modprobe sbin/insmod sbin/rmmod sbin/lsmod sbin/modinfo sbin/depmod
	usr/bin/partx sbin/blockdev sbin/blkid usr/bin/setpriv sbin/wipefs sbin/blkdiscard
	bin/lsblk bin/findmnt usr/bin/flock usr/bin/nsenter usr/bin/unshare
	bin/mount bin/umount sbin/losetup
	sbin/sgdisk sbin/gdisk
	sbin/dmsetup
	sbin/iscsiadm sbin/iscsid sbin/multipath sbin/multipathd
	bin/udevadm lib/systemd/systemd-udevd
)
for t in "${TOOLS[@]}"; do
	src=$X/$t
	[ -e "$src" ] || [ -L "$src" ] || { echo "image: $t not found in the packages" >&2; exit 1; }
	rm -f "$S/$t"
	mkdir -p "$S/$(dirname "$t")"
	if [ -L "$src" ]; then
		cp -P "$src" "$S/$t"
	else
		cp "$src" "$S/$t"
	fi
done
# Busybox links in /bin must not shadow the real tools in /sbin.
for t in "${TOOLS[@]}"; do
	b=$S/bin/$(basename "$t")
	[ -L "$b" ] && [ "$(readlink "$b")" = busybox ] && [ "bin/$(basename "$t")" != "$t" ] && rm -f "$b"
done

# multipath's checkers and prioritisers (dlopened, so no ldd finds them),
# the initiator's defaults, and udev's rules and helpers: multipath only
# uses paths udev has seen (a --san guest starts udevd for block devices).
mkdir -p "$S/lib/multipath" "$S/etc/iscsi" "$S/lib/udev"
cp "$X"/lib/multipath/*.so "$S/lib/multipath/"
cp "$X/etc/iscsi/iscsid.conf" "$S/etc/iscsi/"
cp -a "$X/lib/udev/." "$S/lib/udev/"

if [ -n "$OCFS2_CSI_BIN" ]; then
	objcopy --strip-debug "$OCFS2_CSI_BIN" "$S/usr/bin/ocfs2-csi" 2>/dev/null || cp "$OCFS2_CSI_BIN" "$S/usr/bin/ocfs2-csi"
	chmod 755 "$S/usr/bin/ocfs2-csi"
fi
if [ -n "$KUBE_BIN" ]; then
	mkdir -p "$S/usr/local/bin" "$S/opt/cni/bin"
	for b in "${KUBE_NODE_TOOLS[@]}"; do cp "$KUBE_BIN/$b" "$S/usr/local/bin/"; done
	# where the storage e2e suite's host commands find it: their PATH has
	# no /usr/local
	ln -s /usr/local/bin/crictl "$S/usr/bin/crictl"
	for b in "${CNI_PLUGINS[@]}"; do cp "$KUBE_BIN/$b" "$S/opt/cni/bin/"; done
	for t in iptables ip6tables; do
		for v in "" -save -restore; do
			cp -P "$X/usr/sbin/$t-legacy$v" "$S/usr/sbin/$t$v" 2>/dev/null || cp "$X/usr/sbin/xtables-legacy-multi" "$S/usr/sbin/$t$v"
		done
	done
	cp "$X/usr/sbin/xtables-legacy-multi" "$S/usr/sbin/"
	cp "$X/usr/sbin/dropbear" "$S/usr/sbin/"
	mkdir -p "$S/usr/lib/x86_64-linux-gnu/xtables"
	cp -a "$X/usr/lib/x86_64-linux-gnu/xtables/." "$S/usr/lib/x86_64-linux-gnu/xtables/"
fi
if [ -n "$CSI_SANITY_BIN" ]; then
	objcopy --strip-debug "$CSI_SANITY_BIN" "$S/usr/bin/csi-sanity" 2>/dev/null || cp "$CSI_SANITY_BIN" "$S/usr/bin/csi-sanity"
	chmod 755 "$S/usr/bin/csi-sanity"
fi

# Shared libraries of every dynamic binary, taken from the host (bookworm too).
libs=()
while IFS= read -r -d '' f; do
	[ -L "$f" ] && continue
	head -c4 "$f" 2>/dev/null | grep -q $'^\x7fELF' || continue
	out=$(ldd "$f" 2>&1) || continue # "not a dynamic executable"
	if grep -q 'not found' <<<"$out"; then
		echo "image: ${f#"$S"} needs libraries this host lacks (run e2e/deps.sh):" >&2
		grep 'not found' <<<"$out" >&2
		exit 1
	fi
	while read -r l; do libs+=("$l"); done < <(awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' <<<"$out")
done < <(find "$S/bin" "$S/sbin" "$S/usr/bin" "$S/usr/sbin" "$S/usr/local/bin" "$S/lib/multipath" "$S/lib/udev" -type f -print0)
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
for l in "${libs[@]}"; do
	mkdir -p "$S/$(dirname "$l")"
	cp -L "$l" "$S/$l"
done
printf '%s\n' "${libs[@]}" >"$WORK/libs.list"

# --- init and the rest ---------------------------------------------------------
install -m 755 "$INIT" "$S/init"
cat >"$S/usr/sbin/lab-poweroff" <<'EOF'
#!/bin/sh
# Unmount ocfs2 and stop the heartbeat (bounded), then power off at once.
exec /init __poweroff
EOF
chmod 755 "$S/usr/sbin/lab-poweroff"
if [ "$(id -u)" = 0 ]; then
	mknod -m 600 "$S/dev/console" c 5 1
	mknod -m 666 "$S/dev/null" c 1 3
fi

(cd "$S" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$WORK/initrd.img"

# --- publish (key last) --------------------------------------------------------
rm -f "$OUT/key"
# Each file is replaced by a rename: a lab of another clone may be booting
# from this (shared, per-user) directory right now.
cp "$X/boot/vmlinuz-$KV" "$WORK/vmlinuz"
mv "$WORK/vmlinuz" "$OUT/vmlinuz"
mv "$WORK/initrd.img" "$OUT/initrd.img"
mv "$WORK/libs.list" "$OUT/libs.list"
printf '%s\n' "$packages" >"$OUT/packages"
printf '%s\n' "$stamp" >"$OUT/apt-stamp"
{
	echo "kernel: $KV"
	printf '%s\n' "$packages" | sed 's/^/package: /'
	printf 'module: %s\n' "${mods[@]#"$X"/lib/modules/"$KV"/}"
	echo "ocfs2-csi: ${OCFS2_CSI_BIN:-(none)}"
	echo "csi-sanity: ${CSI_SANITY_BIN:-(none)}"
	printf 'lib: %s\n' "${libs[@]}"
} >"$OUT/manifest"
key=$(key_input | sha256sum | cut -d' ' -f1) # now with this build's libs.list
echo "$key" >"$OUT/key"
t1=$(date +%s.%N)
printf 'image: built in %.1f s: kernel %s (%s), initrd %s (%d modules, %d libraries), key %s\n' \
	"$(awk "BEGIN { print $t1 - $t0 }")" "$KV" \
	"$(du -h "$OUT/vmlinuz" | cut -f1)" "$(du -h "$OUT/initrd.img" | cut -f1)" \
	"${#mods[@]}" "${#libs[@]}" "${key:0:12}"
