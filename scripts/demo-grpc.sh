#!/usr/bin/env bash
# `make demo-grpc`: the quicker demo, at the CSI (gRPC) level: installs and
# builds only what it needs (no Kubernetes tools, no csi-sanity, no chart
# tools), saying what each step is and how long it took, then runs it
# (examples/lab_demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh
CARGO=${CARGO:-cargo}
start=$SECONDS

# shellcheck source=scripts/demo-step.sh
. scripts/demo-step.sh

step "Debian packages for the build (ocfs2-tools, gdisk, protobuf-compiler)" \
  scripts/deps.sh --no-csi-sanity
step "Debian packages for the lab (QEMU, busybox, cpio)" e2e/deps.sh
# cargo prints a line per crate (a progress bar on a terminal); a cold build
# takes minutes on two cores, a warm one seconds.
step "building ocfs2-csi and the demo (cargo)" \
  "$CARGO" build --bin ocfs2-csi --example lab_demo
# Downloading the kernel and tools (about 70 MB once, then cached in
# $OCFS2_CSI_CACHE/lab) and packing the initramfs.
step "the guests' boot image (Debian kernel with OCFS2, ocfs2-tools)" \
  env CSI_SANITY_BIN= e2e/image.sh
echo "demo: ready after $((SECONDS - start)) s; running the demo"
./target/debug/examples/lab_demo
