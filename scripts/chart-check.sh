#!/usr/bin/env bash
# Checks the Helm chart (deploy/helm/ocfs2-csi) and the manifest rendered
# from it, with the chart's default values, with ci/static-values.yaml
# (LUNs, a registry mirror, static membership, every optional block) and
# with ci/no-sidecar-values.yaml (no registrar or livenessprobe sidecar):
#   1. helm lint --strict
#   2. helm template, for each supported Kubernetes version
#   3. every rendered object validated strictly against that version's
#      published schemas (kubernetes-validate)
#   4. deploy/manifests/ocfs2-csi.yaml equals a fresh render
#   5. the `helm test` manifest renders
#   6. images: by default the sidecars from the Kubernetes project's
#      registry and no registry host for the others; the configured mirror
#      everywhere when set
#   7. placement and RBAC on a real cluster: both workloads only on nodes
#      with the SAN label, the node health port off the common ones, the
#      node Role limited to the 255 membership Leases, no status.hostIP
#   8. the controller: 2 replicas by default, spread, rolled one at a time
#   9. the registrar and livenessprobe sidecars: present by default; when
#      off, the node plugin registers itself and no probe needs them
#  10. metrics: on by default in both workloads, off when disabled, the
#      node port clear of others; the PodMonitor selects both
# Exits non-zero on any failure; the last line counts the checks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/cache.sh

# The Kubernetes releases the chart supports, as kubernetes-validate names
# their schemas.
KUBE_VERSIONS=(1.31.0 1.32.0 1.33.0 1.34.0 1.35.0)

CHART=deploy/helm/ocfs2-csi
CI_VALUES=$CHART/ci/static-values.yaml
NO_SIDECAR_VALUES=$CHART/ci/no-sidecar-values.yaml
MANIFEST=deploy/manifests/ocfs2-csi.yaml
TEST_TEMPLATE=templates/tests/shared-volume-test.yaml
HELM="$OCFS2_CSI_CACHE/bin/helm"
VALIDATE="$OCFS2_CSI_CACHE/venv/bin/kubernetes-validate"

start=$(date +%s)
scripts/chart-deps.sh || { echo "chart-check: installing the tools failed"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok    $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
# check DESCRIPTION COMMAND...: runs it quietly, shows its output on failure.
check() {
  local what=$1; shift
  if "$@" > "$TMP/out" 2>&1; then pass "$what"; else fail "$what"; sed 's/^/      /' "$TMP/out"; fi
}

echo "chart-check: $("$HELM" version --short), kubernetes-validate $("$VALIDATE" --version)"
schema_root=$("$OCFS2_CSI_CACHE/venv/bin/python" -c \
  'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
for v in "${KUBE_VERSIONS[@]}"; do
  if [ -d "$schema_root/v$v-local-strict" ]; then
    echo "chart-check: Kubernetes $v: schemas v$v-local-strict"
  else
    fail "kubernetes-validate has no strict schemas for Kubernetes $v"
  fi
done

# --- 1. lint --------------------------------------------------------------
check "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
check "helm lint --strict ($CI_VALUES)" "$HELM" lint --strict "$CHART" -f "$CI_VALUES"
check "helm lint --strict ($NO_SIDECAR_VALUES)" "$HELM" lint --strict "$CHART" -f "$NO_SIDECAR_VALUES"

# --- 2 and 3. render and validate, per Kubernetes version -----------------
# A document that fails validation prints ERROR; a kind or apiVersion that
# version does not have prints WARN (and would otherwise pass): both fail.
validate() { # FILE VERSION
  "$VALIDATE" --strict --quiet -k "$2" "$1" > "$TMP/validate" 2>&1
  local rc=$?
  cat "$TMP/validate"
  [ $rc -eq 0 ] && ! grep -qE '^(ERROR|WARN|FATAL)' "$TMP/validate"
}
for variant in default ci no-sidecar; do
  args=()
  [ $variant = ci ] && args=(-f "$CI_VALUES")
  [ $variant = no-sidecar ] && args=(-f "$NO_SIDECAR_VALUES")
  for v in "${KUBE_VERSIONS[@]}"; do
    out="$TMP/$variant-$v.yaml"
    if "$HELM" template ocfs2-csi "$CHART" --namespace kube-system --kube-version "v$v" \
        "${args[@]}" > "$out" 2> "$TMP/err"; then
      n=$(grep -c '^kind: ' "$out")
      check "kubernetes-validate --strict -k $v: $n objects ($variant values)" validate "$out" "$v"
    else
      fail "helm template --kube-version v$v ($variant values)"
      sed 's/^/      /' "$TMP/err"
    fi
  done
done
# What a plain `helm template` (the Kubernetes version Helm assumes) gives.
check "helm template (default values, helm's default Kubernetes version)" \
  "$HELM" template ocfs2-csi "$CHART" --namespace kube-system
kinds() { grep '^kind: ' "$1" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $3, $1; sep=", "}'; }
echo "chart-check: default values render $(kinds "$TMP/default-${KUBE_VERSIONS[-1]}.yaml")"
echo "chart-check: ci values render $(kinds "$TMP/ci-${KUBE_VERSIONS[-1]}.yaml")"
echo "chart-check: no-sidecar values render $(kinds "$TMP/no-sidecar-${KUBE_VERSIONS[-1]}.yaml")"

# --- 4. the generated manifest is current ----------------------------------
if scripts/render-manifests.sh --stdout > "$TMP/manifest.yaml" 2> "$TMP/err"; then
  if cmp -s "$TMP/manifest.yaml" "$MANIFEST"; then
    pass "$MANIFEST is current"
  else
    fail "$MANIFEST: stale: run scripts/render-manifests.sh"
    diff -u "$MANIFEST" "$TMP/manifest.yaml" 2>&1 | head -40 | sed 's/^/      /'
  fi
else
  fail "scripts/render-manifests.sh --stdout"
  sed 's/^/      /' "$TMP/err"
fi
check "$MANIFEST validates (Kubernetes ${KUBE_VERSIONS[-1]})" validate "$MANIFEST" "${KUBE_VERSIONS[-1]}"

# --- 5. the helm test ---------------------------------------------------------
test_renders() {
  "$HELM" template ocfs2-csi "$CHART" --namespace kube-system --show-only "$TEST_TEMPLATE" > "$TMP/test.yaml" &&
    cat "$TMP/test.yaml" &&
    grep -q '^kind: PersistentVolumeClaim' "$TMP/test.yaml" &&
    grep -q '^kind: Pod' "$TMP/test.yaml" &&
    [ "$(grep -c '"helm.sh/hook": test' "$TMP/test.yaml")" = 2 ] &&
    grep -q 'ReadWriteMany' "$TMP/test.yaml"
}
check "helm template --show-only $TEST_TEMPLATE (RWX claim and pod, both test hooks)" test_renders

# --- 6. image references ------------------------------------------------------
# Default values: the sig-storage sidecars from their public home, so that
# a default install pulls them; every other image names no registry host
# (an image's first path component holding a '.' or ':', or being
# localhost, is a host).
images() { sed -n 's/^ *image: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$1" | sort -u; }
default_images() {
  local bad=0 img sidecars=0
  for img in $(images "$1"); do
    echo "$img"
    case "$img" in
      registry.k8s.io/sig-storage/*) sidecars=$((sidecars + 1)) ;;
      */sig-storage/*|sig-storage/*) bad=1 ;;
      *) case "${img%%/*}" in
           *.*|*:*|localhost) [ "$img" != "${img%%/*}" ] && bad=1 ;;
         esac ;;
    esac
  done
  [ $bad = 0 ] && [ $sidecars = 4 ]
}
check "default images: the 4 sidecars from registry.k8s.io/sig-storage, no other registry host" \
  default_images "$TMP/default-${KUBE_VERSIONS[-1]}.yaml"
all_from_mirror() {
  local img ok=0
  for img in $(images "$1"); do
    echo "$img"
    case "$img" in mirror.example/*) ;; *) ok=1 ;; esac
  done
  return $ok
}
check "imageRegistry (or an image's own registry) prefixes every image" \
  all_from_mirror "$TMP/ci-${KUBE_VERSIONS[-1]}.yaml"

# --- 7. placement and RBAC ---------------------------------------------------
# One object (KIND NAME) of a rendered file, as YAML.
object() { # file kind name
  awk -v k="kind: $2" -v n="  name: $3" '
    /^---/ { if (hit) exit; doc = ""; kind = 0; name = 0; next }
    { doc = doc $0 "\n" }
    $0 == k { kind = 1 }
    $0 == n { name = 1 }
    kind && name { hit = 1 }
    END { if (hit) printf "%s", doc }' "$1"
}
DEFAULT="$TMP/default-${KUBE_VERSIONS[-1]}.yaml"
on_san_nodes() {
  local kind name kind_name
  for kind_name in "DaemonSet ocfs2-csi-node" "Deployment ocfs2-csi-controller"; do
    read -r kind name <<<"$kind_name"
    object "$DEFAULT" "$kind" "$name" > "$TMP/obj"
    grep -A1 '^      nodeSelector:$' "$TMP/obj" > "$TMP/sel" || true
    grep -qx '        ocfs2.csi.dev/san: "true"' "$TMP/sel" ||
      { echo "$kind $name: no nodeSelector ocfs2.csi.dev/san"; return 1; }
    echo "$kind $name: nodeSelector ocfs2.csi.dev/san=true"
  done
}
check "node plugins and controller only on nodes labelled ocfs2.csi.dev/san=true" on_san_nodes
health_port() {
  local port
  port=$(object "$DEFAULT" DaemonSet ocfs2-csi-node | sed -n 's/^ *- --http-endpoint=:\([0-9]*\)$/\1/p')
  echo "node livenessprobe port: $port"
  case "$port" in
    ''|9100|9808|9809|10248|10249|10250|10255|10256|7777) return 1 ;;
  esac
  [ "$port" -lt 30000 ]
}
check "node health port clear of kubelet, kube-proxy, node-exporter, livenessprobe defaults" health_port
controller_replicas() {
  object "$DEFAULT" Deployment ocfs2-csi-controller > "$TMP/ctl"
  grep -qx '  replicas: 2' "$TMP/ctl" || { echo "default replicas not 2"; return 1; }
  if ! grep -qx '    type: RollingUpdate' "$TMP/ctl" || ! grep -qx '      maxSurge: 0' "$TMP/ctl"; then
    echo "not a one-at-a-time rolling update"; return 1
  fi
  grep -q 'podAntiAffinity:' "$TMP/ctl" || { echo "no anti-affinity by default"; return 1; }
  # The schema allows 0 to 3 replicas.
  "$HELM" template "$CHART" --set controller.replicas=3 > /dev/null &&
    ! "$HELM" template "$CHART" --set controller.replicas=4 > /dev/null 2>&1
}
check "controller: 2 replicas on different nodes by default, rolled one at a time; the schema allows 0-3" controller_replicas
node_rbac() {
  object "$DEFAULT" Role ocfs2-csi-node-membership > "$TMP/role"
  object "$DEFAULT" ClusterRole ocfs2-csi-node > "$TMP/crole"
  cat "$TMP/role" "$TMP/crole"
  grep -h 'verbs:' "$TMP/role" "$TMP/crole" > "$TMP/verbs"
  [ "$(grep -c '^      - ocfs2-ocfs2csi-n[0-9]*$' "$TMP/role")" = 255 ] &&
    grep -qx '      - ocfs2-ocfs2csi-n0' "$TMP/role" &&
    grep -qx '      - ocfs2-ocfs2csi-n254' "$TMP/role" &&
    ! grep -Eq 'watch|patch|\*' "$TMP/verbs" &&
    [ "$(grep -c 'verbs:' "$TMP/crole")" = 3 ] && grep -q 'verbs: \["get"\]' "$TMP/crole" &&
    grep -B1 'verbs: \["list"\]' "$TMP/crole" | grep -q 'resources: \["persistentvolumes"\]' &&
    grep -B1 'verbs: \["create"\]' "$TMP/crole" | grep -q 'resources: \["events"\]' &&
    "$HELM" template ocfs2-csi "$CHART" --set events.enabled=false > "$TMP/noev.yaml" &&
    object "$TMP/noev.yaml" ClusterRole ocfs2-csi-node | grep -c 'verbs:' | grep -qx 1 &&
    ! grep -A1 'name: OCFS2_CSI_EVENTS$' "$TMP/noev.yaml" | grep -q '"true"' &&
    [ "$(grep -A1 'name: OCFS2_CSI_EVENTS$' "$DEFAULT" | grep -c 'value: "true"')" = 2 ]
}
check "node RBAC: Nodes get; PersistentVolumes list and Events create (events.enabled); Leases list, create, and get/update/delete of the 255 membership Leases only" node_rbac
out_of_service_rbac() {
  "$HELM" template ocfs2-csi "$CHART" --set outOfService.enabled=true > "$TMP/oos.yaml"
  object "$TMP/oos.yaml" ClusterRole ocfs2-csi-node > "$TMP/crole"
  object "$TMP/oos.yaml" DaemonSet ocfs2-csi-node > "$TMP/obj"
  cat "$TMP/crole"
  [ "$(grep -c 'verbs:' "$TMP/crole")" = 4 ] && grep -q 'verbs: \["get"\]' "$TMP/crole" &&
    grep -q 'verbs: \["list", "update"\]' "$TMP/crole" &&
    ! grep 'verbs:' "$TMP/crole" | grep -Eq 'watch|patch|\*' &&
    grep -A1 'name: OCFS2_CSI_OUT_OF_SERVICE$' "$TMP/obj" | grep -q 'value: "true"' &&
    ! "$HELM" template "$CHART" --set outOfService.enabled=true --set membership.source=static \
      --set 'membership.static[0].name=a' --set 'membership.static[0].number=0' \
      --set 'membership.static[0].address=10.0.0.1' > /dev/null 2>&1
}
check "outOfService.enabled: Nodes list and update added, nothing more; refused with static membership" out_of_service_rbac
metrics_endpoints() {
  local ci="$TMP/ci-${KUBE_VERSIONS[-1]}.yaml" kind_name kind name file port
  for file in "$DEFAULT:8090:29778" "$ci:18090:19778"; do
    IFS=: read -r file cport nport <<<"$file"
    for kind_name in "Deployment ocfs2-csi-controller $cport" "DaemonSet ocfs2-csi-node $nport"; do
      read -r kind name port <<<"$kind_name"
      object "$file" "$kind" "$name" > "$TMP/obj"
      if ! grep -A1 'name: OCFS2_CSI_METRICS_ADDRESS$' "$TMP/obj" | grep -q "value: \"0.0.0.0:$port\"" ||
        ! grep -B1 "containerPort: $port\$" "$TMP/obj" | grep -q 'name: metrics$'; then
        echo "$kind $name in $file: no metrics env and port $port"; return 1
      fi
      echo "$kind $name: metrics on port $port"
    done
  done
  case "$(object "$DEFAULT" DaemonSet ocfs2-csi-node | grep -B1 'name: metrics$' | head -1)" in
    *9100*|*9808*|*9809*|*10248*|*10249*|*10250*|*10255*|*10256*|*7777*) return 1 ;;
  esac
  "$HELM" template ocfs2-csi "$CHART" --set metrics.enabled=false > "$TMP/off.yaml" &&
    ! grep -nE 'METRICS|name: metrics$|kind: PodMonitor' "$TMP/off.yaml" &&
    ! grep -q 'kind: PodMonitor' "$DEFAULT" &&
    ! "$HELM" template "$CHART" --set metrics.nodePort=7777 > /dev/null 2>&1 &&
    ! "$HELM" template "$CHART" --set metrics.nodePort=29777 > /dev/null 2>&1
}
check "metrics: on by default in both workloads (env and a port named metrics), off when disabled; the node port clear of o2cb and health ports" metrics_endpoints
pod_monitor() {
  "$HELM" template ocfs2-csi "$CHART" --namespace kube-system --set metrics.podMonitor.enabled=true \
    --set metrics.podMonitor.labels.release=prom > "$TMP/pm.yaml" || return 1
  object "$TMP/pm.yaml" PodMonitor ocfs2-csi > "$TMP/obj"
  cat "$TMP/obj"
  grep -qx 'apiVersion: monitoring.coreos.com/v1' "$TMP/obj" &&
    grep -qx '    release: prom' "$TMP/obj" &&
    grep -qx '    - port: metrics' "$TMP/obj" &&
    grep -qx '      - kube-system' "$TMP/obj" &&
    # Its selector picks both workloads' pods (their template labels).
    for kind_name in "Deployment ocfs2-csi-controller" "DaemonSet ocfs2-csi-node"; do
      read -r kind name <<<"$kind_name"
      object "$TMP/pm.yaml" "$kind" "$name" > "$TMP/wl"
      sed -n '/^    matchLabels:$/,/^  [a-zA-Z]/p' "$TMP/obj" | grep '^      ' | sed 's/^ *//' | while read -r label; do
        grep -q "^        $label\$" "$TMP/wl" || { echo "$kind $name lacks $label"; exit 1; }
      done || return 1
    done
}
check "metrics.podMonitor.enabled: a PodMonitor selecting both workloads' pods, port metrics, extra labels" pod_monitor
o2cb_profiles() {
  local profile want got
  for profile in "default 31 30000" "fast 16 15000"; do
    read -r profile dead idle <<<"$profile"
    "$HELM" template ocfs2-csi "$CHART" --set o2cb.profile="$profile" > "$TMP/p.yaml" || return 1
    object "$TMP/p.yaml" DaemonSet ocfs2-csi-node > "$TMP/obj"
    want="$dead $idle 2000 2000"
    got=$(for e in DEAD_THRESHOLD IDLE_TIMEOUT_MS KEEPALIVE_DELAY_MS RECONNECT_DELAY_MS; do
      grep -A1 "name: OCFS2_CSI_$e\$" "$TMP/obj" | sed -n 's/.*value: "\([0-9]*\)"/\1/p'
    done | xargs)
    echo "o2cb.profile $profile: $got"
    [ "$got" = "$want" ] || return 1
  done
  # custom takes the four values; a value changed beside a named profile,
  # or a name that is none, is refused rather than ignored.
  "$HELM" template ocfs2-csi "$CHART" --set o2cb.profile=custom --set o2cb.deadThreshold=21 |
    grep -A1 'name: OCFS2_CSI_DEAD_THRESHOLD$' | grep -q 'value: "21"' &&
    ! "$HELM" template "$CHART" --set o2cb.deadThreshold=21 > /dev/null 2>&1 &&
    ! "$HELM" template "$CHART" --set o2cb.profile=fast --set o2cb.idleTimeoutMs=9000 > /dev/null 2>&1 &&
    ! "$HELM" template "$CHART" --set o2cb.profile=quick > /dev/null 2>&1
}
check "o2cb.profile: default and fast set the four timeouts, custom takes them as given; others refused" o2cb_profiles
no_host_ip() { ! grep -n 'fieldPath: status.hostIP' "$DEFAULT" "$TMP/ci-${KUBE_VERSIONS[-1]}.yaml"; }
check "no status.hostIP (the o2net address is the Node's IPv4 InternalIP)" no_host_ip
static_no_node_api() {
  local ci="$TMP/ci-${KUBE_VERSIONS[-1]}.yaml"
  object "$ci" DaemonSet ocfs2-csi-node > "$TMP/obj"
  ! grep -q 'name: ocfs2-csi-node-membership' "$ci" &&
    grep -qx '      automountServiceAccountToken: false' "$TMP/obj"
}
check "static membership: no node RBAC, no token in the node pods" static_no_node_api

# --- 9. the registrar and livenessprobe sidecars ---------------------------
# Two registrations of one driver would replace each other's socket: the
# node plugin registers itself exactly when the registrar is not rendered.
sidecars_by_default() {
  object "$DEFAULT" DaemonSet ocfs2-csi-node > "$TMP/obj"
  grep -q 'image: .*/csi-node-driver-registrar:' "$TMP/obj" &&
    [ "$(grep -c 'image: .*/livenessprobe:' "$DEFAULT")" = 2 ] &&
    [ "$(grep -c 'path: /healthz$' "$DEFAULT")" = 2 ] &&
    ! grep -n 'kubelet-registration-dir' "$TMP/obj"
}
check "default values: registrar and livenessprobe sidecars; the node plugin leaves registering to the registrar" sidecars_by_default
self_registration() {
  local rendered="$TMP/no-sidecar-${KUBE_VERSIONS[-1]}.yaml"
  object "$rendered" DaemonSet ocfs2-csi-node > "$TMP/obj"
  # No sidecar that is off, and no probe or port that only it answers.
  ! grep -nE 'csi-node-driver-registrar|livenessprobe|liveness-probe|path: /healthz$|name: healthz$|--http-endpoint=:(9808|29777)' "$rendered" &&
    grep -qx '            - --kubelet-registration-dir=/registration' "$TMP/obj" &&
    grep -qx '            - --kubelet-registration-path=/var/lib/k0s/kubelet/plugins/ocfs2.example.org/csi.sock' "$TMP/obj" &&
    grep -qx '              mountPath: /registration' "$TMP/obj" &&
    grep -A2 -x '        - name: registration-dir' "$TMP/obj" | grep -qx '            path: /var/lib/k0s/kubelet/plugins_registry'
}
check "sidecars off: the node plugin registers itself (flags, plugins_registry mount), no liveness probe needs the sidecar" self_registration

echo "chart-check: took $(( $(date +%s) - start ))s"
echo "chart-check: $passed passed, $failed failed"
[ "$failed" = 0 ]
