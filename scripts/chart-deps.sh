#!/usr/bin/env bash
# Installs what scripts/chart-check.sh and scripts/render-manifests.sh need,
# so a fresh machine with only Go and Python needs nothing by hand:
#   - helm, built from its Go module into $OCFS2_CSI_CACHE/bin
#   - kubernetes-validate (Kubernetes' published JSON schemas) in $OCFS2_CSI_CACHE/venv
# Idempotent and fast once done: each tool is only (re)installed when its
# pinned version is missing. Set CHART_DEPS_SKIP_HELM=1 to install only the
# Python part (it needs no compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh

HELM_VERSION=v4.3.1
KUBERNETES_VALIDATE_VERSION=1.37.0
BIN="$OCFS2_CSI_CACHE/bin"
VENV="$OCFS2_CSI_CACHE/venv"

if [ "${CHART_DEPS_SKIP_HELM:-0}" != 1 ]; then
  if [ ! -x "$BIN/helm" ] || [ "$(cat "$BIN/.helm-version" 2>/dev/null)" != "$HELM_VERSION" ]; then
    echo "chart-deps: building helm $HELM_VERSION into $OCFS2_CSI_CACHE/bin"
    mkdir -p "$BIN"
    GOBIN="$BIN" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    echo "$HELM_VERSION" > "$BIN/.helm-version"
  fi
fi

if [ ! -x "$VENV/bin/kubernetes-validate" ] ||
   [ "$(cat "$VENV/.kubernetes-validate-version" 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  echo "chart-deps: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $OCFS2_CSI_CACHE/venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  echo "$KUBERNETES_VALIDATE_VERSION" > "$VENV/.kubernetes-validate-version"
fi
