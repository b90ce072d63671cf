#!/usr/bin/env bash
# Builds the Debian bookworm base image both stages of the Dockerfile start
# from, localhost/ocfs2-csi-base:bookworm, out of Debian's own packages: no
# container registry is needed, only the apt sources this machine already
# uses. mmdebstrap makes a minbase root filesystem (Essential, Priority
# required and apt; no docs, man pages or locales; merged /usr made by
# mmdebstrap's hook rather than the usrmerge package, which would pull in
# 50 MB of perl), buildah turns the tarball into an image.
#
# What stays out of the image on purpose: this machine's apt sources, apt
# options and package lists (the image has no apt sources at all; the
# Dockerfile's RUN steps get the build host's through APT_CONFIG, see
# scripts/image.sh). The script checks that no host name from them is left.
#
# `scripts/image-base.sh --host-apt DIR` only writes this machine's apt
# sources and options into DIR, and `--mask HOSTS` hides the host names
# listed in HOSTS in a log (both for scripts/image.sh).
#
# Cached: nothing is done when the image exists with a label holding the hash
# of this script and the package list. FORCE=1 rebuilds anyway.
# Installs buildah and mmdebstrap from Debian when they are missing (no OCI
# runtime: nothing here runs a container, and scripts/image.sh uses chroot
# isolation).
# Set STORAGE_DRIVER=vfs where overlay mounts are not possible (containers
# inside containers); the same value must then be used by scripts/image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${OCFS2_CSI_BASE_IMAGE:-localhost/ocfs2-csi-base:bookworm}
SUITE=bookworm
VARIANT=minbase
# Packages beyond minbase. Keep it empty unless both stages need something:
# each stage installs its own.
INCLUDE=()
INPUTS_LABEL=dev.ocfs2-csi.base.inputs

# host_apt DIR: this machine's apt sources (sources.list, sources.list.d/)
# and the Acquire options its configuration sets beyond apt's defaults
# (acquire.conf: proxy, validity of snapshot Release files, ...), for apt
# runs that must reach the same mirror; plus the host names they contain
# (hosts), to check that none ends up in an image.
host_apt() {
  local dir=$1 f
  mkdir -p "$dir/sources.list.d"
  [ ! -s /etc/apt/sources.list ] || cp /etc/apt/sources.list "$dir/sources.list"
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ ! -f "$f" ] || cp "$f" "$dir/sources.list.d/"
  done
  if [ ! -f "$dir/sources.list" ] && [ -z "$(ls -A "$dir/sources.list.d")" ]; then
    echo "image-base: this machine has no apt sources" >&2
    return 1
  fi
  # apt's built-in defaults, read with no configuration files at all
  printf 'Dir "/nonexistent/";\n' >"$dir/empty.conf"
  comm -13 <(APT_CONFIG="$dir/empty.conf" apt-config dump Acquire 2>/dev/null | sort) \
           <(apt-config dump Acquire | sort) |
    grep -E '^Acquire::(Check-Valid-Until|Check-Date|Max-ValidTime|Min-ValidTime|https?|ftp|socks|Retries|ForceIPv[46]|Allow[A-Za-z]*)[: ]' \
    >"$dir/acquire.conf" || true
  rm -f "$dir/empty.conf"
  {
    find "$dir" -type f -exec cat {} + | grep -oE '[a-z+]+://[^/" ]+' |
      sed -E 's#^[^:]+://##; s#^[^@]*@##; s#:[0-9]+$##'
    # per-host proxy settings name the host in the key
    sed -nE 's/^Acquire::[a-z]+::Proxy::([^ "]+) .*/\1/p' "$dir/acquire.conf"
  } | sort -u >"$dir/hosts.new"
  mv "$dir/hosts.new" "$dir/hosts"
}

# mask HOSTS: stdin to stdout with the host names listed in HOSTS replaced,
# for logs shown on failure.
mask() {
  awk -v f="$1" 'BEGIN { while ((getline h < f) > 0) if (h != "") H[h] = 1 }
    { for (h in H) while ((i = index($0, h)) > 0)
        $0 = substr($0, 1, i - 1) "<apt-host>" substr($0, i + length(h))
      print }'
}

# For scripts/image.sh: --host-apt DIR writes host_apt's files into DIR,
# --mask HOSTS filters a log.
case ${1:-} in
  --host-apt) host_apt "$2"; exit 0 ;;
  --mask) mask "$2"; exit 0 ;;
esac

# command -> Debian package
declare -A PKG=([buildah]=buildah [mmdebstrap]=mmdebstrap)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "image-base: installing ${missing[*]}"
  t=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  tmp=$(mktemp -d)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$tmp/log" 2>&1; then
    host_apt "$tmp/apt" || true
    tail -n 30 "$tmp/log" | mask "$tmp/apt/hosts" >&2
    rm -rf "$tmp"
    echo "image-base: installing ${missing[*]} failed" >&2
    exit 1
  fi
  rm -rf "$tmp"
  echo "image-base: tools installed in $((SECONDS - t))s"
fi

inputs=$({ cat "$0"; echo "$SUITE $VARIANT ${INCLUDE[*]:-}"; } | sha256sum | cut -c1-16)
have=$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$INPUTS_LABEL\"}}" \
  "$BASE_IMAGE" 2>/dev/null || true)
if [ "$have" = "$inputs" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "image-base: $BASE_IMAGE is current ($inputs)"
  exit 0
fi

start=$SECONDS
work=$(mktemp -d /var/tmp/ocfs2-csi-base.XXXXXX)
ctr=""
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

host_apt "$work/apt"
sources=()
[ ! -f "$work/apt/sources.list" ] || sources+=("$work/apt/sources.list")
for f in "$work"/apt/sources.list.d/*; do sources+=("$f"); done

echo "image-base: mmdebstrap $SUITE ($VARIANT${INCLUDE[*]:+ + ${INCLUDE[*]}})"
include=()
[ ${#INCLUDE[@]} -eq 0 ] || include=(--include="$(IFS=,; echo "${INCLUDE[*]}")")
mmdebstrap --quiet --mode=root --variant="$VARIANT" --format=directory \
  "${include[@]}" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt="$work/apt/acquire.conf" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*' \
  --customize-hook='rm -rf "$1"/var/log/apt/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  --customize-hook='printf "%s\n" "# No sources: the image builds give the build host'"'"'s through APT_CONFIG." >"$1/etc/apt/sources.list"' \
  "$SUITE" "$work/rootfs" "${sources[@]}" >"$work/mmdebstrap.log" 2>&1 || {
  tail -n 40 "$work/mmdebstrap.log" | mask "$work/apt/hosts" >&2
  echo "image-base: mmdebstrap failed" >&2
  exit 1
}

# Where this machine's apt configuration could have been left behind
# (Debian's own files under /usr may name Debian's hosts, legitimately).
if [ -s "$work/apt/hosts" ]; then
  leaks=$( (cd "$work/rootfs" && grep -rlaF -D skip -f "$work/apt/hosts" etc var root) || true)
  if [ -n "$leaks" ]; then
    echo "image-base: these files name a host from this machine's apt configuration:" >&2
    echo "$leaks" >&2
    exit 1
  fi
fi
# A tarball keeps owners, modes and device nodes through buildah add.
tar --numeric-owner --xattrs --acls -C "$work/rootfs" -cf "$work/rootfs.tar" .
rm -rf "$work/rootfs"

echo "image-base: importing $(du -h "$work/rootfs.tar" | cut -f1) root filesystem as $BASE_IMAGE"
ctr=$(buildah from --name "ocfs2-csi-base-$$" scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd /bin/bash \
  --label "$INPUTS_LABEL=$inputs" \
  --label "org.opencontainers.image.title=ocfs2-csi-base" \
  --label "org.opencontainers.image.description=Debian $SUITE $VARIANT made with mmdebstrap by scripts/image-base.sh" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
ctr=""
size=$(buildah images --format '{{.Size}}' "$BASE_IMAGE" | head -n1)
echo "image-base: $BASE_IMAGE built in $((SECONDS - start))s, $size"
