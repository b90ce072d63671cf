#!/usr/bin/env bash
# Renders deploy/manifests/ocfs2-csi.yaml: the Helm chart with its default
# values, for clusters installed with `kubectl apply` instead of Helm.
# Run it after every change to deploy/helm/ocfs2-csi; scripts/chart-check.sh
# fails while the file is stale.
#
#   scripts/render-manifests.sh           rewrite deploy/manifests/ocfs2-csi.yaml
#   scripts/render-manifests.sh --stdout  print what the file should hold
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh

OUT=deploy/manifests/ocfs2-csi.yaml
HELM="$OCFS2_CSI_CACHE/bin/helm"

scripts/chart-deps.sh >&2

render() {
  cat <<'EOF'
# GENERATED FILE, do not edit: the ocfs2-csi Helm chart (deploy/helm/ocfs2-csi)
# rendered with its default values by scripts/render-manifests.sh, i.e.
#   helm template ocfs2-csi deploy/helm/ocfs2-csi --namespace kube-system --skip-tests
# (the `helm test` objects are left out). Change the chart, then rerun the script.
#
# Before `kubectl apply -f` it, edit in:
#   - OCFS2_CSI_LUNS (both workloads): the shared LUNs' stable device paths,
#     comma-separated; nothing starts without them;
#   - the driver image's location (it is named without a registry), and a
#     mirror for the sig-storage sidecars if the nodes cannot pull from
#     registry.k8s.io. Helm users set `luns`, `image.registry` and
#     `imageRegistry` instead.
# Then label the nodes that see the LUNs (`kubectl label node NODE
# ocfs2.csi.dev/san=true`): the controller and the node plugins run only there.
EOF
  "$HELM" template ocfs2-csi deploy/helm/ocfs2-csi --namespace kube-system --skip-tests
}

if [ "${1:-}" = --stdout ]; then
  render
else
  mkdir -p "$(dirname "$OUT")"
  render > "$OUT.tmp"
  mv "$OUT.tmp" "$OUT"
  echo "render-manifests: wrote $OUT"
fi
