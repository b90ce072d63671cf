#!/usr/bin/env bash
# Builds the ocfs2-csi container image with buildah, without a container
# registry or a Docker daemon, and proves it runs:
#
#   1. scripts/image-base.sh: buildah and mmdebstrap from Debian when
#      missing, then the bookworm base image (cached).
#   2. the Dockerfile, `buildah bud --layers`, tagged
#      localhost/ocfs2-csi:<version in Cargo.toml>. The build stage uses this
#      machine's Rust toolchain (`rustc --print sysroot`) and crate cache
#      (filled by `cargo fetch` first) through volumes, so cargo runs
#      offline; apt in both stages reads this machine's sources through
#      APT_CONFIG on a volume (never in a layer). The release target
#      directory is kept in $OCFS2_CSI_CACHE/image/target.
#   3. `ocfs2-csi --version` inside the image must print
#      `ocfs2-csi <version>`, and no host name from this machine's apt
#      configuration may be left in the image.
#
# Usage: scripts/image.sh [--save FILE]   (FILE: an OCI archive of the image)
# Environment: OCFS2_CSI_IMAGE (repository, default localhost/ocfs2-csi),
# STORAGE_DRIVER (e.g. vfs where overlay mounts are impossible).
set -euo pipefail

usage() { echo "usage: $0 [--save FILE]" >&2; exit 2; }
save=""
while [ $# -gt 0 ]; do
  case $1 in
    --save) [ $# -ge 2 ] || usage; save=$2; shift 2 ;;
    --save=*) save=${1#--save=}; shift ;;
    *) usage ;;
  esac
done
# relative to where the script was started
[ -z "$save" ] || save=$(realpath -m -- "$save")
cd "$(dirname "$0")/.."
. scripts/cache.sh

# RUN steps and the check run chrooted in their own namespaces, without an
# OCI runtime or cgroups: crun refuses hosts with hybrid cgroups (v1
# controllers plus an empty v2 hierarchy), as CI machines can have.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

t0=$SECONDS
scripts/image-base.sh
t_base=$((SECONDS - t0))

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
IMAGE=${OCFS2_CSI_IMAGE:-localhost/ocfs2-csi}:$VERSION
CACHE=$OCFS2_CSI_CACHE/image
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
mkdir -p "$CACHE/target" "$CARGO_HOME/registry"

work=$(mktemp -d /var/tmp/ocfs2-csi-image.XXXXXX)
ctr=""
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
# Shows a log with the host names of this machine's apt configuration masked.
mask() { scripts/image-base.sh --mask "$work/apt/hosts"; }

# The host's Rust toolchain (the one rustup would pick in this directory).
sysroot=$(rustc --print sysroot)
echo "image: Rust $(rustc --version | cut -d' ' -f2) from $sysroot"

# Every crate the release build needs, in the cache the build stage mounts.
t=$SECONDS
cargo fetch --locked --quiet --target "$(rustc -vV | sed -n 's/^host: //p')"
t_fetch=$((SECONDS - t))

# This machine's apt sources and Acquire options (mirror, proxy, snapshot
# validity) for the RUN steps, read through APT_CONFIG from a volume.
scripts/image-base.sh --host-apt "$work/apt"
{
  echo 'Dir::Etc::SourceList "/mnt/sources.list";'
  echo 'Dir::Etc::SourceParts "/mnt/sources.list.d";'
  cat "$work/apt/acquire.conf"
} >"$work/apt/apt.conf"

# Both runs of buildah bud below build from one snapshot of the sources:
# an edit between them would miss the first run's layer cache, and the
# second run (which has no toolchain mounted) would then fail to compile.
ctx=$work/context
mkdir -p "$ctx"
cp -a Dockerfile .dockerignore Cargo.toml Cargo.lock build.rs proto src testkit "$ctx/"

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
if [ -n "$revision" ] && ! git diff --quiet HEAD -- Cargo.toml Cargo.lock build.rs proto src; then
  revision+=-dirty
fi
source=$(git remote get-url origin 2>/dev/null | sed -E 's#://[^/@]*@#://#' || true)

# Two runs of buildah bud: the build stage alone with the toolchain, crate
# cache and target directory mounted, then the whole Dockerfile (the build
# stage now comes from the layer cache) with only the apt volume, on /mnt,
# which the base already has: buildah leaves an empty directory in the layer
# for every mount point it has to create, and the runtime image should not
# carry /opt/rust or /cargo-target.
bud() {
  buildah bud --layers --pull=never --network host \
    -v "$work/apt:/mnt:ro" \
    --build-arg APT_CONFIG=/mnt/apt.conf \
    --build-arg CARGO_NET_OFFLINE=true \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source" \
    -f "$ctx/Dockerfile" "$@" "$ctx" >>"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" | mask >&2
    echo "image: buildah bud failed" >&2
    exit 1
  }
}
echo "image: building $IMAGE"
t=$SECONDS
bud --target build \
  -v "$sysroot:/opt/rust:ro" \
  -v "$CARGO_HOME/registry:/usr/local/cargo/registry" \
  -v "$CACHE/target:/cargo-target"
t_compile=$((SECONDS - t))
bud -t "$IMAGE"
t_build=$((SECONDS - t))

t=$SECONDS
ctr=$(buildah from --pull=never "$IMAGE")
got=$(buildah run "$ctr" -- /usr/bin/ocfs2-csi --version)
if [ "$got" != "ocfs2-csi $VERSION" ]; then
  echo "image: ocfs2-csi --version printed '$got', expected 'ocfs2-csi $VERSION'" >&2
  exit 1
fi
# The OCFS2 tools refuse to format without a mount table at /etc/mtab.
if [ "$(buildah run "$ctr" -- readlink /etc/mtab)" != ../proc/self/mounts ]; then
  echo "image: /etc/mtab is not a link to the mount table" >&2
  exit 1
fi
# Where this machine's apt configuration could have been left (Debian's own
# files under /usr may name Debian's hosts, legitimately), and the image's
# configuration and history.
mnt=$(buildah mount "$ctr")
if [ -s "$work/apt/hosts" ]; then
  leaks=$( (cd "$mnt" && grep -rlaF -D skip -f "$work/apt/hosts" etc var root usr/local opt tmp 2>/dev/null) || true)
  if [ "$(buildah inspect --type image "$IMAGE" | grep -caF -f "$work/apt/hosts")" != 0 ]; then
    leaks+=" (image configuration)"
  fi
  if [ -n "$leaks" ]; then
    echo "image: these files name a host from this machine's apt configuration:" >&2
    echo "$leaks" >&2
    exit 1
  fi
fi
buildah umount "$ctr" >/dev/null
buildah rm "$ctr" >/dev/null
ctr=""
t_check=$((SECONDS - t))

if [ -n "$save" ]; then
  rm -f "$save"
  buildah push --quiet "$IMAGE" "oci-archive:$save:$IMAGE"
  echo "image: saved to $save ($(du -h "$save" | cut -f1))"
fi

size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n1)
echo "image: base ${t_base}s, cargo fetch ${t_fetch}s, build ${t_build}s (build stage ${t_compile}s), checks ${t_check}s, total $((SECONDS - t0))s"
echo "image: $IMAGE $size: $got"
