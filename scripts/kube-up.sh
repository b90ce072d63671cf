#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback, state and logs in DIR:
#   etcd                      http://127.0.0.1:<free port>
#   kube-apiserver            https://127.0.0.1:<free port> (self-signed, RBAC)
#   kube-controller-manager   PV binder and expander, namespaces, GC, ...
# and writes
#   DIR/kubeconfig   admin (group system:masters) by bearer token, CA = the
#                    API server's own self-signed certificate
#   DIR/env          SERVER= TOKEN= CA= ETCD= KCM_HEALTHZ= ... (shell syntax)
#   DIR/pids         "name pid binary" per process, for kube-down.sh
# then waits until /readyz says ok (and the controller manager's /healthz).
#
#   scripts/kube-up.sh DIR      (scripts/kube-tools.sh must have run)
#   scripts/kube-down.sh DIR    stops exactly the processes recorded in DIR/pids
#
# Idempotent: when DIR already holds a running, ready control plane it only
# says so. The processes outlive this script; kube-down.sh stops them. With
# KUBE_UP_OWNER_PID=<pid> a small watchdog also runs kube-down.sh once that
# process is gone, so a test that dies without cleaning up leaves nothing.
#
#   KUBE_TOOLS_BIN     binaries (default: $OCFS2_CSI_CACHE/kube/bin)
#   KUBE_CONTROLLERS   kube-controller-manager --controllers (default below);
#                      "none" starts no controller manager
#   KUBE_UP_TIMEOUT    seconds to wait for readiness (default: 120)
#   KUBE_SCHEDULER=1   also start kube-scheduler, for clusters with kubelets
#                      (the lab's Kubernetes nodes; kube-tools.sh --node)
#   KUBE_EGRESS_UDS=P  the API server reaches nodes (kubelets: logs, exec)
#                      through the HTTP CONNECT proxy on unix socket P (its
#                      egress selector `cluster`), with a client certificate
#                      the kubelets trust: DIR/certs/kubelet-client-ca.crt
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/cache.sh"
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
BIN=${KUBE_TOOLS_BIN:-$OCFS2_CSI_CACHE/kube/bin}
TIMEOUT=${KUBE_UP_TIMEOUT:-120}
CONTROLLERS=${KUBE_CONTROLLERS:-namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,persistentvolume-binder-controller,persistentvolume-expander-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller}
ms() { echo $(( $(date +%s%N) / 1000000 )); }
t_start=$(ms)

for b in etcd kube-apiserver kube-controller-manager; do
  [ -x "$BIN/$b" ] || { echo "kube-up: $BIN/$b is missing; run scripts/kube-tools.sh" >&2; exit 1; }
done

alive() { # name -> 0 if the recorded process is still that binary
  local pid exe
  read -r _ pid exe < <(awk -v n="$1" '$1 == n' "$DIR/pids" 2>/dev/null) || return 1
  [ -n "${pid:-}" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

# Already up? (A half-started DIR is torn down and started again.)
if [ -f "$DIR/env" ] && [ -f "$DIR/pids" ]; then
  # shellcheck disable=SC1091
  . "$DIR/env"
  if alive etcd && alive kube-apiserver \
     && curl -sf --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$SERVER/readyz" >/dev/null 2>&1; then
    echo "kube-up: already running in $DIR ($SERVER)"
    exit 0
  fi
  "$root/scripts/kube-down.sh" "$DIR"
fi
rm -f "$DIR/env" "$DIR/pids"

# Free loopback ports, all asked for in one go (one interpreter start: python3
# may be a slow shim) and held together while asked, so they are distinct.
PORTS=()
free_port() {
  if [ ${#PORTS[@]} -eq 0 ]; then
    read -r -a PORTS < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(8)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
  fi
  PORT=${PORTS[0]}
  PORTS=("${PORTS[@]:1}")
}

record() { # name pid
  echo "$1 $2 $(readlink "/proc/$2/exe")" >> "$DIR/pids"
}

fail() {
  echo "kube-up: $*" >&2
  for f in "$DIR"/*.log; do
    [ -f "$f" ] && { echo "--- tail of $f ---" >&2; tail -n 25 "$f" >&2; }
  done
  "$root/scripts/kube-down.sh" "$DIR" >&2 || true
  exit 1
}

# wait_for NAME PID CMD... : until CMD succeeds; fails if PID dies or time runs out
wait_for() {
  local name=$1 pid=$2; shift 2
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$deadline" ] || fail "$name not ready within $TIMEOUT s"
    sleep 0.2
  done
}

# start NAME LOG ARGS... : launched in its own session so that it outlives
# this script and a Ctrl-C in the caller's terminal; records its pid.
start() {
  local name=$1 log=$2; shift 2
  setsid "$BIN/$name" "$@" >>"$log" 2>&1 < /dev/null &
  STARTED=$!
  # setsid forks only when it is a group leader; `&` makes it none, so the
  # pid is the binary's own once exec'd. Give exec a moment before recording.
  for _ in $(seq 50); do
    [ "$(readlink "/proc/$STARTED/exe" 2>/dev/null)" = "$BIN/$name" ] && break
    sleep 0.01
  done
  record "$name" "$STARTED"
}

# ---- secrets: admin token, service-account signing key ----
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,admin,admin-uid,system:masters" > "$DIR/tokens.csv"
chmod 600 "$DIR/tokens.csv"
[ -f "$DIR/sa.key" ] || openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
[ -f "$DIR/sa.pub" ] || openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

# ---- etcd ----
# A port taken between free_port and bind makes the process exit at once:
# pick new ports and try again.
for attempt in 1 2 3; do
  free_port; ETCD_PORT=$PORT
  free_port; PEER_PORT=$PORT
  ETCD=http://127.0.0.1:$ETCD_PORT
  start etcd "$DIR/etcd.log" \
    --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 1073741824
  ETCD_PID=$STARTED
  if wait_for etcd "$ETCD_PID" curl -sf "$ETCD/health"; then break; fi
  [ "$attempt" = 3 ] && fail "etcd exited"
  echo "kube-up: etcd exited (port taken?), retrying" >&2
  sed -i "/^etcd $ETCD_PID /d" "$DIR/pids"
done
t_etcd=$(ms)

# ---- the API server's way to the kubelets (optional) ----
EGRESS=()
if [ -n "${KUBE_EGRESS_UDS:-}" ]; then
  certs=$DIR/certs
  mkdir -p "$certs"
  # A CA of their own for the kubelets' client-certificate check, and the
  # API server's certificate from it; system:masters passes the kubelets'
  # authorization (a SubjectAccessReview to this API server).
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=lab-kubelet-client-ca \
    -keyout "$certs/kubelet-client-ca.key" -out "$certs/kubelet-client-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$certs/kubelet-client.key" -out "$certs/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$certs/kubelet-client.csr" -days 30 \
    -CA "$certs/kubelet-client-ca.crt" -CAkey "$certs/kubelet-client-ca.key" -CAcreateserial \
    -out "$certs/kubelet-client.crt" 2>/dev/null
  cat >"$DIR/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $KUBE_EGRESS_UDS
EOF
  EGRESS=(--egress-selector-config-file "$DIR/egress.yaml"
    --kubelet-client-certificate "$certs/kubelet-client.crt"
    --kubelet-client-key "$certs/kubelet-client.key")
fi

# ---- kube-apiserver ----
CA=$DIR/certs/apiserver.crt
for attempt in 1 2 3; do
  free_port; API_PORT=$PORT
  SERVER=https://127.0.0.1:$API_PORT
  start kube-apiserver "$DIR/kube-apiserver.log" \
    --etcd-servers "$ETCD" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --allow-privileged=true \
    --secure-port "$API_PORT" --cert-dir "$DIR/certs" \
    --authorization-mode RBAC --token-auth-file "$DIR/tokens.csv" \
    --anonymous-auth=false \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/sa.pub" \
    --service-account-signing-key-file "$DIR/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --endpoint-reconciler-type none \
    --profiling=false "${EGRESS[@]}"
  API_PID=$STARTED
  if wait_for kube-apiserver "$API_PID" \
      curl -sf --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$SERVER/readyz"; then
    break
  fi
  # shellcheck disable=SC2015 # retry only a port race, and at most 3 times
  grep -q "address already in use" "$DIR/kube-apiserver.log" && [ "$attempt" != 3 ] \
    || fail "kube-apiserver exited"
  echo "kube-up: kube-apiserver port taken, retrying" >&2
  sed -i "/^kube-apiserver $API_PID /d" "$DIR/pids"
done
t_api=$(ms)

cat > "$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $SERVER
    certificate-authority: $CA
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
EOF
chmod 600 "$DIR/kubeconfig"

# ---- kube-controller-manager ----
KCM_HEALTHZ=
if [ "$CONTROLLERS" != none ]; then
  for attempt in 1 2 3; do
    free_port; KCM_PORT=$PORT
    KCM_HEALTHZ=https://127.0.0.1:$KCM_PORT/healthz
    start kube-controller-manager "$DIR/kube-controller-manager.log" \
      --kubeconfig "$DIR/kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
      --controllers "$CONTROLLERS" \
      --use-service-account-credentials=false --leader-elect=false \
      --service-account-private-key-file "$DIR/sa.key" \
      --root-ca-file "$CA" \
      --profiling=false
    KCM_PID=$STARTED
    if wait_for kube-controller-manager "$KCM_PID" curl -skf "$KCM_HEALTHZ"; then break; fi
    # shellcheck disable=SC2015 # retry only a port race, and at most 3 times
    grep -q "address already in use" "$DIR/kube-controller-manager.log" && [ "$attempt" != 3 ] \
      || fail "kube-controller-manager exited"
    echo "kube-up: kube-controller-manager port taken, retrying" >&2
    sed -i "/^kube-controller-manager $KCM_PID /d" "$DIR/pids"
  done
fi
t_kcm=$(ms)

# ---- kube-scheduler ----
SCHED_HEALTHZ=
if [ "${KUBE_SCHEDULER:-0}" = 1 ]; then
  [ -x "$BIN/kube-scheduler" ] || fail "$BIN/kube-scheduler is missing; run scripts/kube-tools.sh --node"
  for attempt in 1 2 3; do
    free_port; SCHED_PORT=$PORT
    SCHED_HEALTHZ=https://127.0.0.1:$SCHED_PORT/healthz
    start kube-scheduler "$DIR/kube-scheduler.log" \
      --kubeconfig "$DIR/kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
      --leader-elect=false --profiling=false
    SCHED_PID=$STARTED
    if wait_for kube-scheduler "$SCHED_PID" curl -skf "$SCHED_HEALTHZ"; then break; fi
    # shellcheck disable=SC2015 # retry only a port race, and at most 3 times
    grep -q "address already in use" "$DIR/kube-scheduler.log" && [ "$attempt" != 3 ] \
      || fail "kube-scheduler exited"
    echo "kube-up: kube-scheduler port taken, retrying" >&2
    sed -i "/^kube-scheduler $SCHED_PID /d" "$DIR/pids"
  done
fi

cat > "$DIR/env" <<EOF
SERVER=$SERVER
TOKEN=$TOKEN
CA=$CA
KUBECONFIG=$DIR/kubeconfig
ETCD=$ETCD
KCM_HEALTHZ=$KCM_HEALTHZ
SCHED_HEALTHZ=$SCHED_HEALTHZ
EOF
chmod 600 "$DIR/env"

# ---- watchdog: tear down when the owner is gone ----
if [ -n "${KUBE_UP_OWNER_PID:-}" ]; then
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    exec "$3" "$2"' kube-up-watchdog "$KUBE_UP_OWNER_PID" "$DIR" "$root/scripts/kube-down.sh" \
    >>"$DIR/watchdog.log" 2>&1 < /dev/null &
  echo "$!" > "$DIR/watchdog.pid"
fi

secs() { local d=$(( $2 - $1 )); printf '%d.%d' $(( d / 1000 )) $(( d % 1000 / 100 )); }
echo "kube-up: ready at $SERVER in $(secs "$t_start" "$t_kcm") s" \
  "(etcd $(secs "$t_start" "$t_etcd") s, kube-apiserver $(secs "$t_etcd" "$t_api") s," \
  "kube-controller-manager $(secs "$t_api" "$t_kcm") s); kubeconfig: $DIR/kubeconfig"
