#!/usr/bin/env bash
# Installs what the build and the check and host tiers need, from Debian's
# packages and the Go module proxy, so a fresh machine needs nothing by hand
# (the lab's own packages: e2e/deps.sh). Idempotent: does nothing when
# everything is already there.
#   --no-csi-sanity   packages only (make demo does not run csi-sanity)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh

CSI_SANITY_VERSION=v5.4.0
BIN="$OCFS2_CSI_CACHE/bin"

# command -> Debian package that provides it
declare -A PKG=(
  [mkfs.ocfs2]=ocfs2-tools      # mkfs/fsck/debugfs/tunefs.ocfs2
  [sgdisk]=gdisk                # independent GPT check in tests
  [protoc]=protobuf-compiler    # build.rs generates the CSI code
  [modprobe]=kmod               # mkfs.ocfs2 forks modprobe; without it the child runs mkfs twice
  [losetup]=mount               # loop devices over a partition's byte range
  [blkid]=util-linux
  [shellcheck]=shellcheck       # make check lints every script
)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/sbin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || missing+=("${PKG[$cmd]}")
done
# google/protobuf/descriptor.proto, imported by csi.proto
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" != --no-csi-sanity ] &&
   { [ ! -x "$BIN/csi-sanity" ] || [ "$(cat "$BIN/.csi-sanity-version" 2>/dev/null)" != "$CSI_SANITY_VERSION" ]; }; then
  echo "deps: building csi-sanity $CSI_SANITY_VERSION"
  mkdir -p "$BIN"
  GOBIN="$BIN" go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION"
  echo "$CSI_SANITY_VERSION" > "$BIN/.csi-sanity-version"
fi

# The tests attach loop devices; make sure the kernel offers them.
if [ ! -e /dev/loop-control ]; then
  echo "deps: /dev/loop-control is missing; the controller tests need loop devices" >&2
  exit 1
fi
