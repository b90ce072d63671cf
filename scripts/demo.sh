#!/usr/bin/env bash
# `make demo`: the driver as a user meets it (examples/kube_demo.rs): three
# QEMU guests as Kubernetes nodes, the chart installed with helm, a
# ReadWriteMany claim shared by pods on the three nodes and grown with
# `kubectl patch pvc` while they write. Installs and builds what that needs,
# saying what each step is and how long it took. DEMO_KEEP=1 leaves the
# cluster up at the end (until Enter) and prints how to use kubectl on it.
# `make demo-grpc` is the quicker demo without Kubernetes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh
CARGO=${CARGO:-cargo}
start=$SECONDS

# shellcheck source=scripts/demo-step.sh
. scripts/demo-step.sh

step "Debian packages for the build (ocfs2-tools, gdisk, protobuf-compiler)" \
  scripts/deps.sh --no-csi-sanity
step "Debian packages for the lab (QEMU, busybox, cpio, libseccomp)" e2e/deps.sh
step "helm (built from its Go module once)" scripts/chart-deps.sh
# A cold build compiles Kubernetes, containerd and runc: many minutes on two
# cores (e2e/kube/README.md has the figures); cached afterwards.
step "Kubernetes control plane and node binaries (built from their Go modules once)" \
  scripts/kube-tools.sh --node
step "building the demo (cargo)" "$CARGO" build --example kube_demo
step "container images: the driver, the CSI sidecars, pause, busybox (buildah)" \
  scripts/lab-images.sh "$OCFS2_CSI_CACHE/lab/kube-images"
step "the nodes' boot image (Debian kernel with OCFS2, kubelet, containerd)" \
  env OCFS2_CSI_BIN= CSI_SANITY_BIN= LAB_KUBE_NODE_BIN="${KUBE_TOOLS_BIN:-$OCFS2_CSI_CACHE/kube/bin}" \
  e2e/image.sh "$OCFS2_CSI_CACHE/lab/kube-node-image"
echo "demo: ready after $((SECONDS - start)) s; running the demo"
./target/debug/examples/kube_demo
echo "demo: $((SECONDS - start)) s in all"
