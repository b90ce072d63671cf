#!/usr/bin/env bash
# Builds every container image the lab's Kubernetes nodes run, as OCI
# archives in OUTDIR, one per image, for `ctr -n k8s.io images import
# --all-platforms FILE` in each guest: the guests reach no registry, so
# nothing can be pulled.
#
#   pause.tar            localhost/pause:lab            sandbox image: a static
#                        binary from scripts/lab-images/pause.c, entrypoint /pause
#   busybox.tar          localhost/busybox:lab          Debian's busybox-static with
#                        its applet links, /tmp, users root and qemu (107, the
#                        uid KubeVirt's virt-launcher runs as)
#   csi-provisioner.tar  localhost/csi-provisioner:lab  the binaries that
#   csi-resizer.tar      localhost/csi-resizer:lab      scripts/kube-tools.sh builds,
#                        at /NAME (the entrypoint: the chart passes args only),
#                        with the libraries ldd lists
#   ocfs2-csi.tar        localhost/ocfs2-csi:lab        scripts/image.sh's image
#                        (localhost/ocfs2-csi:<version>) under the lab's name
# and only when asked for by name or group (every archive in OUTDIR is
# imported into every guest at boot; the nodes tier and make e2e-k8s ask):
#   group snapshot: the snapshot stack (e2e/kube/snapshotter), built by
#   scripts/kube-tools.sh --node, like the sidecars above
#   csi-snapshotter.tar      localhost/csi-snapshotter:lab
#   snapshot-controller.tar  localhost/snapshot-controller:lab
#   group e2e: the images the Kubernetes storage e2e suite (v1.37.1) runs its
#   pods with, under the names and tags its test/utils/image/manifest.go asks
#   for, in a registry of our own (e2e/k8s-storage/repo-list.yaml, given to the
#   suite as -kube-test-repo-list, maps promoterE2eRegistry to it):
#   e2e-busybox.tar    localhost/e2e-test-images/busybox:1.37.0-2
#                      the busybox image above under the suite's name
#   e2e-agnhost.tar    localhost/e2e-test-images/agnhost:2.66.1
#                      agnhost of k8s.io/kubernetes v1.37.1 (scripts/kube-tools.sh
#                      --e2e) at /agnhost (entrypoint, `pause` by default, as
#                      upstream), with busybox's applets for the shell that the
#                      suite's hostexec and subpath pods use
#   e2e-nginx.tar      localhost/e2e-test-images/nginx:1.27.0-2
#                      Debian's nginx (1.22, not 1.27: the suite only runs
#                      `/bin/sh -ec` in it) with busybox's applets and a
#                      minimal config serving /usr/share/nginx/html on port 80
#   e2e-glibc-dns-testing.tar  localhost/e2e-test-images/glibc-dns-testing:2.1.1
#                      a stand-in: the busybox image with Debian coreutils'
#                      dd and dash as /bin/sh (glibc). The storage suite
#                      (multivolume) only runs dd (GNU's: oflag=nocache),
#                      base64, sha256sum, blockdev and test in it through
#                      /bin/sh; the DNS tests the upstream image is made for
#                      are not run here.
#   and by name alone (make e2e-k8s asks for it; CI's subset does not run
#   the one spec that needs it):
#   e2e-hello-populator.tar  localhost/sig-storage/hello-populator:v1.0.1
#                      the example volume populator of lib-volume-populator
#                      (scripts/kube-tools.sh --e2e), at /hello-populator
#                      (the entrypoint), with its libraries: the [Serial]
#                      "any volume data source" spec deploys it (its
#                      registry is sigStorageRegistry in the repo list)
# All but ocfs2-csi are made from scratch, x86_64 only (as the guests are).
# Runs as root (buildah, chroot for the smoke checks of each tree).
# Each archive's index.json names its image in io.containerd.image.name
# (which ctr import uses as is) and org.opencontainers.image.ref.name; layers
# are left uncompressed, so the emulated guests need not gunzip them.
#
# Usage: scripts/lab-images.sh OUTDIR [IMAGE|GROUP...]   (IMAGE: any name
#        above without .tar; GROUP: default (pause busybox csi-provisioner
#        csi-resizer ocfs2-csi, also what no argument means), snapshot, e2e)
# Cached: OUTDIR/.IMAGE.key holds the hash of the image's inputs (this script,
# the C source, the binaries and their libraries, the .debs, the driver's
# sources); an archive whose key still matches is kept, so a run with nothing
# changed takes about a second. FORCE=1 rebuilds all. Prints each image's
# build time and size, then `lab-images: N images in OUTDIR (X MiB)`.
# Buildah's storage is scripts/image.sh's (the default one; STORAGE_DRIVER is
# honoured, and vfs is used when unset and overlay cannot mount); only the
# driver image stays in it, the others go straight to archives.
set -euo pipefail

DEFAULT=(pause busybox csi-provisioner csi-resizer ocfs2-csi)
SNAPSHOT=(csi-snapshotter snapshot-controller)
E2E=(e2e-busybox e2e-agnhost e2e-nginx e2e-glibc-dns-testing)
ALL=("${DEFAULT[@]}" "${SNAPSHOT[@]}" "${E2E[@]}" e2e-hello-populator)
# The e2e images' tags: what Kubernetes v1.37.1's test/utils/image/manifest.go
# asks for (agnhost's is also checked against the binary's own version).
declare -A E2E_TAGS=([busybox]=1.37.0-2 [agnhost]=2.66.1 [nginx]=1.27.0-2 [glibc-dns-testing]=2.1.1
  [hello-populator]=v1.0.1)
usage() { echo "usage: $0 OUTDIR [default snapshot e2e ${ALL[*]}]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$(realpath -m -- "$1")
shift
want=()
for n in "$@"; do
  case $n in
    default) want+=("${DEFAULT[@]}") ;;
    snapshot) want+=("${SNAPSHOT[@]}") ;;
    e2e) want+=("${E2E[@]}") ;;
    *) [[ " ${ALL[*]} " == *" $n "* ]] || { echo "lab-images: unknown image '$n'" >&2; usage; }
       want+=("$n") ;;
  esac
done
[ ${#want[@]} -gt 0 ] || want=("${DEFAULT[@]}")

self=$(realpath -- "$0")
root=$(cd "$(dirname "$self")/.." && pwd)
cd "$root"
. scripts/cache.sh
CACHE=$OCFS2_CSI_CACHE/lab-images
KUBE_BIN=${KUBE_TOOLS_BIN:-$OCFS2_CSI_CACHE/kube/bin}
mkdir -p "$OUT" "$CACHE/debs" "$CACHE/sums"
[ "$(uname -m)" = x86_64 ] || { echo "lab-images: the guests are x86_64; this machine is $(uname -m)" >&2; exit 1; }
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

# One run per OUTDIR at a time.
exec 9>"$OUT/.lock"
flock 9

work=$(mktemp -d /var/tmp/ocfs2-csi-lab-images.XXXXXX)
ctr=""
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# sum FILE: its sha256, remembered by path, size, mtime and inode (the kube
# binaries are 70 MB each; kube-tools.sh replaces them with mv, a new inode).
sum() {
  local f id memo line
  f=$(realpath -- "$1")
  id=$(stat -c '%s %.9Y %i' -- "$f")
  memo=$CACHE/sums/$(printf '%s' "$f" | sha256sum | cut -c1-32)
  line=$(cat "$memo" 2>/dev/null || true)
  if [ "${line% *}" = "$id" ]; then echo "${line##* }"; return; fi
  line="$id $(sha256sum -- "$f" | cut -d' ' -f1)"
  printf '%s\n' "$line" >"$memo.$$" && mv -f "$memo.$$" "$memo"
  echo "${line##* }"
}

SELF=$(sum "$self")

# --- inputs: each prints the lines its image's key is the hash of -----------

inputs_pause() {
  echo "pause.c $(sum scripts/lab-images/pause.c)"
  gcc --version | head -n1
}

# Debian packages by name -> their .deb in $CACHE/debs (set by deb below)
declare -A DEBS=()
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
apt_lists() { stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16; }
# deb PACKAGE: apt's candidate of an amd64 package, downloaded once into
# $CACHE/debs (older versions removed), its path in DEBS[PACKAGE]; prints
# its input line.
deb() {
  local p=$1 v d lists memo=$CACHE/$1.version
  # apt-cache takes half a second: its answer is kept while apt's lists stay
  lists=$(apt_lists)
  v=$(sed -n "s/^$lists //p" "$memo" 2>/dev/null || true)
  if [ -z "$v" ]; then
    v=$(candidate "$p")
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
      apt-get update -qq >/dev/null
      lists=$(apt_lists)
      v=$(candidate "$p")
    fi
    case $v in "" | "(none)") ;; *) echo "$lists $v" >"$memo" ;; esac
  fi
  case $v in "" | "(none)") echo "lab-images: apt knows no $p" >&2; return 1 ;; esac
  # apt writes the epoch's ':' as %3a; e2e/image.sh may have it already.
  d=${p}_${v//:/%3a}_amd64.deb
  if [ ! -s "$CACHE/debs/$d" ]; then
    if [ -s "$OCFS2_CSI_CACHE/lab/debs/$d" ]; then
      cp "$OCFS2_CSI_CACHE/lab/debs/$d" "$CACHE/debs/$d.$$"
    else
      (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$p=$v" >/dev/null) ||
        { echo "lab-images: apt-get download $p=$v failed" >&2; return 1; }
      mv "$work/$d" "$CACHE/debs/$d.$$"
    fi
    mv -f "$CACHE/debs/$d.$$" "$CACHE/debs/$d"
    find "$CACHE/debs" -name "${p}_*.deb" ! -name "$d" -delete
  fi
  DEBS[$p]=$CACHE/debs/$d
  echo "$p $v $(sum "${DEBS[$p]}")"
}
inputs_busybox() { deb busybox-static; }

KUBE_TOOLS_RAN=" "
# inputs_sidecar NAME [kube-tools.sh option]: a binary built (or found cached)
# by scripts/kube-tools.sh, run once per option.
inputs_sidecar() {
  local bin=$KUBE_BIN/$1 opt=${2:-}
  if [[ $KUBE_TOOLS_RAN != *" $opt "* ]]; then
    # shellcheck disable=SC2086 # no option: no word
    scripts/kube-tools.sh $opt >"$work/kube-tools.log" 2>&1 || {
      cat "$work/kube-tools.log" >&2; echo "lab-images: scripts/kube-tools.sh $opt failed" >&2; return 1; }
    KUBE_TOOLS_RAN+="$opt "
  fi
  echo "$1 $(sum "$bin")"
  lib_sums "$bin"
}
inputs_csi-provisioner() { inputs_sidecar csi-provisioner; }
inputs_csi-resizer() { inputs_sidecar csi-resizer; }
inputs_csi-snapshotter() { inputs_sidecar csi-snapshotter --node; }
inputs_snapshot-controller() { inputs_sidecar snapshot-controller --node; }
inputs_e2e-busybox() { deb busybox-static; }
# coreutils' dd, dash, and the libraries ldd finds for them on this machine
inputs_e2e-glibc-dns-testing() {
  local p
  deb busybox-static || return 1
  for p in coreutils:dd dash:dash; do
    deb "${p%%:*}" || return 1
    dpkg-deb -x "${DEBS[${p%%:*}]}" "$work/${p%%:*}-deb"
    lib_sums "$work/${p%%:*}-deb/bin/${p#*:}"
  done
}
inputs_e2e-hello-populator() { inputs_sidecar hello-populator --e2e; }
inputs_e2e-agnhost() { deb busybox-static && inputs_sidecar agnhost --e2e; }
# nginx's binary and the libraries ldd finds for it on this machine (the
# package's dependencies, installed here)
inputs_e2e-nginx() {
  deb busybox-static && deb nginx || return 1
  dpkg-deb -x "${DEBS[nginx]}" "$work/nginx-deb"
  lib_sums "$work/nginx-deb/usr/sbin/nginx"
}

# What scripts/image.sh builds from (the files it copies into its build
# context, itself and the base image's script, the Rust toolchain). The git
# revision it stamps into a label is left out: a commit elsewhere in the tree
# should not rebuild the driver.
inputs_ocfs2-csi() {
  find Dockerfile .dockerignore Cargo.toml Cargo.lock build.rs proto src testkit \
    scripts/image.sh scripts/image-base.sh -type f -print0 | sort -z | xargs -0 sha256sum
  rustc --version
  echo "${OCFS2_CSI_IMAGE:-}"
}

# libs BINARY: the loader and shared libraries ldd lists, as absolute paths.
libs() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }'
}

# lib_sums BINARY: a key line for each library BINARY needs (libs)
lib_sums() {
  local lib
  for lib in $(libs "$1"); do echo "$lib $(sum "$lib")"; done
}

# with_libs TREE BINARY: the libraries BINARY needs (libs), copied into TREE
# at their paths
with_libs() {
  local lib
  for lib in $(libs "$2"); do
    mkdir -p "$1$(dirname "$lib")"
    cp -L "$lib" "$1$lib"
  done
}

# --- building ------------------------------------------------------------------

STORAGE_CHECKED=""
# Overlay cannot mount everywhere (containers inside containers): fall back to
# vfs once when the caller did not choose a driver.
check_storage() {
  [ -z "$STORAGE_CHECKED" ] || return 0
  STORAGE_CHECKED=1
  [ -z "${STORAGE_DRIVER:-}" ] || return 0
  local c
  if c=$(buildah from --quiet scratch 2>/dev/null); then
    if buildah mount "$c" >/dev/null 2>&1; then
      buildah rm "$c" >/dev/null
      return 0
    fi
    buildah rm "$c" >/dev/null 2>&1 || true
  fi
  echo "lab-images: buildah's default storage cannot mount; using STORAGE_DRIVER=vfs"
  export STORAGE_DRIVER=vfs
}

# from_tree DIR REF LAYOUT [buildah config args]: an image from scratch with
# DIR's contents (owners as in DIR), committed straight to an OCI layout
# directory (not into buildah's storage).
from_tree() {
  local dir=$1 ref=$2 layout=$3
  shift 3
  check_storage
  tar --numeric-owner --sort=name -C "$dir" -cf "$work/layer.tar" .
  ctr=$(buildah from --quiet scratch)
  buildah add --quiet "$ctr" "$work/layer.tar" / >/dev/null
  buildah config --os linux --arch amd64 \
    --label "org.opencontainers.image.source=scripts/lab-images.sh" "$@" "$ctr"
  buildah commit --quiet --rm "$ctr" "oci:$layout:$ref" >/dev/null
  ctr=""
  rm -f "$work/layer.tar"
}

# gunzip_layers LAYOUT: its manifest's gzip layers stored uncompressed instead
# (buildah 1.28's push gzips them even with -D), the manifest and index.json
# rewritten to match. The config, and so the image ID, stay the same.
gunzip_layers() {
  local dir=$1 m man cfg d nd os ns gz='"application/vnd.oci.image.layer.v1.tar+gzip"'
  m=$(grep -oE 'sha256:[0-9a-f]{64}' "$dir/index.json")
  [ "$(wc -l <<<"$m")" = 1 ] || { echo "lab-images: $dir: not one manifest" >&2; return 1; }
  man=$(cat "$dir/blobs/sha256/${m#sha256:}")
  grep -qF "$gz" <<<"$man" || return 0
  cfg=$(grep -oE '"config":\{[^}]*\}' <<<"$man" | grep -oE '[0-9a-f]{64}')
  while read -r d; do
    gunzip -c "$dir/blobs/sha256/$d" >"$dir/layer.tmp"
    nd=$(sha256sum "$dir/layer.tmp" | cut -d' ' -f1)
    # what the config lists as the layer's diff_id
    grep -qF "\"sha256:$nd\"" "$dir/blobs/sha256/$cfg" ||
      { echo "lab-images: $dir: layer $d unpacks to $nd, not in the config's diff_ids" >&2; return 1; }
    os=$(stat -c %s "$dir/blobs/sha256/$d")
    ns=$(stat -c %s "$dir/layer.tmp")
    mv "$dir/layer.tmp" "$dir/blobs/sha256/$nd"
    rm "$dir/blobs/sha256/$d"
    man=${man//"$gz,\"digest\":\"sha256:$d\",\"size\":$os"/"\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$nd\",\"size\":$ns"}
  done < <(grep -oE "${gz//+/\\+},\"digest\":\"sha256:[0-9a-f]{64}\"" <<<"$man" | grep -oE '[0-9a-f]{64}' | sort -u)
  if grep -qF "$gz" <<<"$man"; then
    echo "lab-images: $dir: gzip layers left in the manifest: $man" >&2
    return 1
  fi
  rm "$dir/blobs/sha256/${m#sha256:}"
  printf '%s' "$man" >"$dir/manifest.tmp"
  nd=$(sha256sum "$dir/manifest.tmp" | cut -d' ' -f1)
  mv "$dir/manifest.tmp" "$dir/blobs/sha256/$nd"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}\n' \
    "$nd" "$(stat -c %s "$dir/blobs/sha256/$nd")" >"$dir/index.json"
}

# pack LAYOUT REF ARCHIVE: the OCI layout directory as a tar, its index.json
# rewritten to name its one manifest REF in io.containerd.image.name (ctr
# import takes that name as is, where it would drop a full reference in
# ref.name unless --base-name matches it) and in
# org.opencontainers.image.ref.name, with the platform beside them.
pack() {
  local dir=$1 ref=$2 archive=$3 idx digest size
  idx=$(cat "$dir/index.json")
  digest=$(grep -oE '"digest" *: *"sha256:[0-9a-f]{64}"' <<<"$idx" | grep -oE 'sha256:[0-9a-f]{64}' || true)
  size=$(grep -oE '"size" *: *[0-9]+' <<<"$idx" | grep -oE '[0-9]+$' || true)
  if [ -z "$digest" ] || [ "$(wc -l <<<"$digest")" != 1 ] || [ "$(wc -l <<<"$size")" != 1 ] ||
     ! grep -q '"application/vnd.oci.image.manifest.v1+json"' <<<"$idx"; then
    echo "lab-images: $dir: expected one OCI manifest in index.json, got: $idx" >&2
    return 1
  fi
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}\n' \
    "$digest" "$size" "$ref" "$ref" >"$dir/index.json"
  tar --numeric-owner --owner=0 --group=0 --sort=name -C "$dir" -cf "$archive" oci-layout index.json blobs
}

# etc_files DIR: minimal /etc/passwd, /etc/group and /etc/nsswitch.conf
# (glibc's files and dns services are built into libc since 2.34).
etc_files() {
  mkdir -p "$1/etc"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
    >"$1/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$1/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$1/etc/nsswitch.conf"
}

build_pause() { # LAYOUT REF
  local t=$work/pause
  mkdir -p "$t"
  gcc -Os -static -s -Wall -Wextra -Werror -o "$t/pause" scripts/lab-images/pause.c
  # static: it runs alone in its tree, prints its version, exits 0 on SIGTERM
  chroot "$t" /pause -v >/dev/null
  local pid rc=0 cgt
  chroot "$t" /pause 2>/dev/null & pid=$!
  # (once it handles SIGTERM: bit 15 of SigCgt)
  for _ in $(seq 100); do
    cgt=$(awk '/^SigCgt:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    [ -z "$cgt" ] || (( (16#$cgt & 0x4000) == 0 )) || break
    sleep 0.02
  done
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || { echo "lab-images: pause exited $rc on SIGTERM" >&2; return 1; }
  from_tree "$t" "$2" "$1" --entrypoint '["/pause"]' \
    --label "org.opencontainers.image.title=pause" \
    --label "org.opencontainers.image.description=Pod sandbox process of the ocfs2-csi lab"
}

# bb_tree DIR: Debian's busybox-static with its applet links, /tmp, users
# root, qemu and nobody, checked in a chroot.
bb_tree() {
  local x=$work/bb-deb t=$1 a
  rm -rf "$x"
  dpkg-deb -x "${DEBS[busybox-static]}" "$x"
  mkdir -p "$t/bin" "$t/root" "$t/home/qemu" "$t/tmp" "$t/etc"
  cp "$x/bin/busybox" "$t/bin/busybox"
  for a in $("$t/bin/busybox" --list-full); do
    [ "$a" != bin/busybox ] || continue
    mkdir -p "$t/$(dirname "$a")"
    ln -sf /bin/busybox "$t/$a"
  done
  chmod 1777 "$t/tmp"
  chmod 700 "$t/root"
  chown 107:107 "$t/home/qemu"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'qemu:x:107:107:qemu:/home/qemu:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$t/etc/passwd"
  printf '%s\n' 'root:x:0:' 'qemu:x:107:' 'nogroup:x:65534:' >"$t/etc/group"
  # the applets tests use, and the users by name
  chroot "$t" /bin/sh -c 'for a in sh sleep dd sha256sum stat id touch cat df ls mkdir rm sync; do
      [ -n "$(command -v $a)" ] || { echo "no $a" >&2; exit 1; }; done
    [ "$(id -u qemu):$(id -g qemu):$(id -gn qemu)" = 107:107:qemu ] && [ "$(id -u)" = 0 ]' ||
    { echo "lab-images: busybox tree check failed" >&2; return 1; }
}

# bb_image TREE LAYOUT REF TITLE VERSION DESCRIPTION: a tree that bb_tree
# made (and more) as an image whose command is its shell
bb_image() {
  from_tree "$1" "$3" "$2" --cmd '["/bin/sh"]' \
    --env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.title=$4" \
    --label "org.opencontainers.image.version=$5" \
    --label "org.opencontainers.image.description=$6"
}

build_busybox() { # LAYOUT REF
  local t=$work/busybox v
  bb_tree "$t"
  v=$(dpkg-deb -f "${DEBS[busybox-static]}" Version)
  bb_image "$t" "$1" "$2" busybox "$v" "Debian busybox-static $v, test image of the ocfs2-csi lab"
}

build_sidecar() { # NAME LAYOUT REF
  local name=$1 bin=$KUBE_BIN/$1 t=$work/$1 v
  mkdir -p "$t/tmp"
  chmod 1777 "$t/tmp"
  cp "$bin" "$t/$name"
  with_libs "$t" "$bin"
  etc_files "$t"
  # loader and libraries complete: it runs alone in its tree
  v=$(chroot "$t" "/$name" --version 2>&1) ||
    { echo "lab-images: /$name --version failed in its tree: $v" >&2; return 1; }
  v=$(awk '{ print $NF; exit }' <<<"$v")
  from_tree "$t" "$3" "$2" --entrypoint "[\"/$name\"]" \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$v" \
    --label "org.opencontainers.image.description=$name $v built by scripts/kube-tools.sh"
}
build_csi-provisioner() { build_sidecar csi-provisioner "$@"; }
build_csi-resizer() { build_sidecar csi-resizer "$@"; }
build_csi-snapshotter() { build_sidecar csi-snapshotter "$@"; }
build_snapshot-controller() { build_sidecar snapshot-controller "$@"; }
build_e2e-hello-populator() { build_sidecar hello-populator "$@"; }

# --- the storage e2e suite's images ----------------------------------------

# e2e_shell_check DIR: what the storage suite runs in its pods' shells
# (volumes, multivolume, provisioning, subpath: framework/volume,
# storage/utils) is there, dd with direct I/O for block volumes included,
# and nsenter, with which its hostexec pods (agnhost) enter the node's mount
# namespace to run the node's own sh.
e2e_shell_check() {
  chroot "$1" /bin/sh -ec 'for a in sh sleep dd sha256sum base64 blockdev grep head cat echo chmod \
        ls mkdir rm touch test stat mount find nsenter; do
      [ -n "$(command -v $a)" ] || { echo "no $a" >&2; exit 1; }; done
    trap exit TERM
    echo lab | base64 | base64 -d | dd of=/tmp/f oflag=direct bs=512 conv=sync 2>/tmp/dd.err
    dd if=/tmp/f iflag=direct bs=512 count=1 2>/tmp/dd.err | sha256sum | grep -q "^[0-9a-f]\{64\} "
    rm /tmp/f /tmp/dd.err' || { echo "lab-images: $1: shell check failed" >&2; cat "$1/tmp/dd.err" >&2 || true; return 1; }
}

build_e2e-busybox() { # LAYOUT REF
  local t=$work/busybox v
  bb_tree "$t"
  e2e_shell_check "$t"
  v=$(dpkg-deb -f "${DEBS[busybox-static]}" Version)
  bb_image "$t" "$1" "$2" busybox "${E2E_TAGS[busybox]}" \
    "Debian busybox-static $v as the storage e2e suite's busybox image, ocfs2-csi lab"
}

# Upstream's is a glibc image with DNS tools; see the header. Its users here,
# the multivolume tests, run GNU dd in it: oflag=nocache, which busybox's dd
# refuses. Its /bin/sh is dash: busybox's shell would run its own dd applet
# whatever PATH says.
build_e2e-glibc-dns-testing() { # LAYOUT REF
  local t=$work/glibc-dns-testing b v
  bb_tree "$t"
  for b in "$work/coreutils-deb/bin/dd" "$work/dash-deb/bin/dash"; do
    rm -f "$t/bin/${b##*/}"
    cp "$b" "$t/bin/${b##*/}"
    with_libs "$t" "$b"
  done
  ln -sf dash "$t/bin/sh"
  e2e_shell_check "$t"
  # (the chroot has no /dev)
  chroot "$t" /bin/sh -ec 'echo lab | dd of=/tmp/f oflag=nocache bs=512 count=1 2>/tmp/dd.err; rm /tmp/f /tmp/dd.err' ||
    { echo "lab-images: GNU dd with oflag=nocache failed in its tree:" >&2; cat "$t/tmp/dd.err" >&2 || true; return 1; }
  v=$(dpkg-deb -f "${DEBS[busybox-static]}" Version)
  bb_image "$t" "$1" "$2" glibc-dns-testing "${E2E_TAGS[glibc-dns-testing]}" \
    "Debian busybox-static $v with coreutils' dd $(dpkg-deb -f "${DEBS[coreutils]}" Version) and dash $(dpkg-deb -f "${DEBS[dash]}" Version) as the storage e2e suite's glibc-dns-testing image, ocfs2-csi lab"
}

build_e2e-agnhost() { # LAYOUT REF
  local t=$work/agnhost bin=$KUBE_BIN/agnhost v
  bb_tree "$t"
  cp "$bin" "$t/agnhost"
  # as upstream's image: the entrypoint-tester's second name, netexec's
  # upload folder, a user and group defined in the image
  ln -s agnhost "$t/agnhost-2"
  mkdir -p "$t/uploads"
  echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$t/etc/passwd"
  printf '%s\n' 'user-defined-in-image:x:1000:' 'group-defined-in-image:x:50000:user-defined-in-image' >>"$t/etc/group"
  with_libs "$t" "$bin"
  e2e_shell_check "$t"
  chroot "$t" /agnhost --help >/dev/null ||
    { echo "lab-images: /agnhost --help failed in its tree" >&2; return 1; }
  # the suite's subpath tests run mounttest
  chroot "$t" /agnhost mounttest --fs_type=/tmp >/dev/null ||
    { echo "lab-images: /agnhost mounttest failed in its tree" >&2; return 1; }
  v=$(chroot "$t" /agnhost --version | awk '{ print $NF }')
  [ "$v" = "${E2E_TAGS[agnhost]}" ] ||
    { echo "lab-images: agnhost says version $v, the suite asks for ${E2E_TAGS[agnhost]}" >&2; return 1; }
  from_tree "$t" "$2" "$1" --entrypoint '["/agnhost"]' --cmd '["pause"]' \
    --env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.title=agnhost" \
    --label "org.opencontainers.image.version=$v" \
    --label "org.opencontainers.image.description=agnhost $v of Kubernetes v1.37.1 with busybox, ocfs2-csi lab"
}

build_e2e-nginx() { # LAYOUT REF
  local t=$work/nginx x=$work/nginx-deb v
  bb_tree "$t"
  mkdir -p "$t/usr/sbin" "$t/etc/nginx" "$t/usr/share/nginx/html" "$t/var/log/nginx" \
    "$t/var/lib/nginx" "$t/run"
  cp "$x/usr/sbin/nginx" "$t/usr/sbin/nginx"
  with_libs "$t" "$x/usr/sbin/nginx"
  # Debian's compiled-in paths (nginx -V); the logs go to the container's
  # output, as upstream's image links them there.
  cat >"$t/etc/nginx/nginx.conf" <<'CONF'
user nobody nogroup;
worker_processes 1;
error_log stderr;
pid /run/nginx.pid;
events { worker_connections 64; }
http {
  access_log /dev/stdout;
  types { text/html html; text/plain txt; }
  default_type application/octet-stream;
  server {
    listen 80;
    root /usr/share/nginx/html;
  }
}
CONF
  echo '<html><body>nginx of the ocfs2-csi lab</body></html>' >"$t/usr/share/nginx/html/index.html"
  e2e_shell_check "$t"
  # (the chroot has no /dev; the container's /dev/stdout stands in for a moment)
  mkdir "$t/dev"
  : >"$t/dev/stdout"
  chroot "$t" /usr/sbin/nginx -t -q ||
    { echo "lab-images: nginx -t failed in its tree" >&2; return 1; }
  rm -r "${t:?}/dev"
  v=$(dpkg-deb -f "${DEBS[nginx]}" Version)
  from_tree "$t" "$2" "$1" --cmd '["/usr/sbin/nginx", "-g", "daemon off;"]' \
    --env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.title=nginx" \
    --label "org.opencontainers.image.version=${E2E_TAGS[nginx]}" \
    --label "org.opencontainers.image.description=Debian nginx $v with busybox as the storage e2e suite's nginx image, ocfs2-csi lab"
}

build_ocfs2-csi() { # LAYOUT REF
  local version image
  check_storage
  # (FORCE means this script's archives, not image-base.sh's base image)
  env -u FORCE scripts/image.sh
  version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
  image=${OCFS2_CSI_IMAGE:-localhost/ocfs2-csi}:$version
  buildah push --quiet "$image" "oci:$1:$2" >/dev/null
  gunzip_layers "$1"
}

# --- main ------------------------------------------------------------------------

for n in "${want[@]}"; do
  t=$(now)
  case $n in
    e2e-hello-populator) ref=localhost/sig-storage/${n#e2e-}:${E2E_TAGS[${n#e2e-}]} ;;
    e2e-*) ref=localhost/e2e-test-images/${n#e2e-}:${E2E_TAGS[${n#e2e-}]} ;;
    *) ref=localhost/$n:lab ;;
  esac
  archive=$OUT/$n.tar
  # (not in a subshell: deb sets DEBS)
  "inputs_$n" >"$work/inputs"
  key=$({ cat "$work/inputs"; echo "script $SELF ref $ref"; } | sha256sum | cut -c1-64)
  if [ "${FORCE:-0}" != 1 ] && [ -s "$archive" ] && [ "$(cat "$OUT/.$n.key" 2>/dev/null)" = "$key" ]; then
    printf 'lab-images: %-16s cached  %5ss %7s MiB  %s\n' "$n" "$(since "$t")" "$(mib "$archive")" "$ref"
    continue
  fi
  rm -f "$OUT/.$n.key"
  rm -rf "$work/layout"
  "build_$n" "$work/layout" "$ref"
  pack "$work/layout" "$ref" "$archive.tmp"
  rm -rf "$work/layout"
  mv -f "$archive.tmp" "$archive"
  echo "$key" >"$OUT/.$n.key"
  printf 'lab-images: %-16s built   %5ss %7s MiB  %s\n' "$n" "$(since "$t")" "$(mib "$archive")" "$ref"
done

total=0
for n in "${want[@]}"; do total=$((total + $(stat -c %s "$OUT/$n.tar"))); done
echo "lab-images: ${#want[@]} images in $OUT ($(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }') MiB)"
