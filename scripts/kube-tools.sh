#!/usr/bin/env bash
# Builds the real Kubernetes pieces the kube tests run on loopback, from the Go
# module proxy, into $OCFS2_CSI_CACHE/kube/bin (scripts/cache.sh):
#   etcd, kube-apiserver, kube-controller-manager   (e2e/kube/controlplane)
#   csi-provisioner                                 (e2e/kube/csi-provisioner)
#   csi-resizer                                     (e2e/kube/csi-resizer)
# and with --node also what the lab's Kubernetes nodes run (e2e/kube-node.sh):
#   kubelet, kube-proxy, kube-scheduler, kubectl    (e2e/kube/node)
#   containerd, containerd-shim-runc-v2, ctr        (e2e/kube/containerd)
#   runc                                            (e2e/kube/runc)
#   bridge, loopback, host-local, portmap           (e2e/kube/cni-plugins)
#   csi-snapshotter, snapshot-controller            (e2e/kube/snapshotter)
#   crictl                                          (e2e/kube/cri-tools)
# and with --e2e the Kubernetes storage e2e suite, run against a real cluster
# (e2e/k8s-storage/; make test never builds it):
#   e2e-storage.test, ginkgo, agnhost               (e2e/kube/e2e-storage)
#   hello-populator                                 (e2e/kube/populator)
# The versions are the ones pinned in those wrapper modules (go.mod and
# go.sum, committed; e2e/kube/README.md says why wrappers and how to bump).
#
# Idempotent: each module's binaries are kept while a stamp beside them still
# matches the module's go.mod/go.sum (and Go sources: e2e-storage's test), the
# Go version and the build flags, so a second run returns in well under a
# second. A changed pin rebuilds that module only. Safe to run from several
# tests at once (one builder at a time, the others wait and then find the
# stamps fresh).
#
#   KUBE_TOOLS_BIN   where the binaries go (default: $OCFS2_CSI_CACHE/kube/bin)
#   KUBE_TOOLS_JOBS  go build -p (default: 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/cache.sh"
BIN=${KUBE_TOOLS_BIN:-$OCFS2_CSI_CACHE/kube/bin}
JOBS=${KUBE_TOOLS_JOBS:-2}
# The binaries are stripped (-s -w below), so the compiler need not make DWARF
# either: less to compile (910 s instead of 1071 s fresh, measured) and a
# smaller Go build cache (5.3 GB instead of 6.3 GB).
FLAGS=(-p "$JOBS" -trimpath -gcflags=all=-dwarf=false)
# Bump when the way of building changes (flags below), to rebuild cached binaries.
RECIPE=3
mkdir -p "$BIN"

# module dir -> "binary=package ..."
declare -A TOOLS=(
  [controlplane]="etcd=go.etcd.io/etcd/server/v3 kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager"
  [csi-provisioner]="csi-provisioner=github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
  [csi-resizer]="csi-resizer=github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
  [node]="kubelet=k8s.io/kubernetes/cmd/kubelet kube-proxy=k8s.io/kubernetes/cmd/kube-proxy kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler kubectl=k8s.io/kubernetes/cmd/kubectl"
  [containerd]="containerd=github.com/containerd/containerd/v2/cmd/containerd containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 ctr=github.com/containerd/containerd/v2/cmd/ctr"
  [runc]="runc=github.com/opencontainers/runc"
  [cni-plugins]="bridge=github.com/containernetworking/plugins/plugins/main/bridge loopback=github.com/containernetworking/plugins/plugins/main/loopback host-local=github.com/containernetworking/plugins/plugins/ipam/host-local portmap=github.com/containernetworking/plugins/plugins/meta/portmap"
  # NAME.test is the wrapper's own test package, built with go test -c (the
  # ginkgo CLI runs a precompiled suite only under a name ending in .test).
  # agnhost: the suite's test image's binary (scripts/lab-images.sh), from
  # the same release as the suite; with cgo, as everything here but
  # containerd and the CNI plugins (upstream's image build links it static),
  # the image carries the libraries ldd lists.
  [e2e-storage]="e2e-storage.test=. ginkgo=github.com/onsi/ginkgo/v2/ginkgo agnhost=k8s.io/kubernetes/test/images/agnhost"
  # The volume populator the suite's "any volume data source" spec deploys.
  [populator]="hello-populator=github.com/kubernetes-csi/lib-volume-populator/example/hello-populator"
  # crictl: the storage e2e suite stops containers with it on the node.
  [cri-tools]="crictl=sigs.k8s.io/cri-tools/cmd/crictl"
  [snapshotter]="csi-snapshotter=github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter snapshot-controller=github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
# Environment and build tags per module, where upstream's own build differs
# from the default: containerd's release builds static without btrfs (no
# headers here, and the guests use overlayfs), the CNI plugins' static too;
# runc needs libseccomp for the seccomp profiles the kubelet asks for
# (RuntimeDefault); crictl's release builds static.
declare -A ENVS=([containerd]="CGO_ENABLED=0" [cni-plugins]="CGO_ENABLED=0" [cri-tools]="CGO_ENABLED=0")
declare -A TAGS=([containerd]="no_btrfs" [runc]="seccomp")
ORDER=(controlplane csi-provisioner csi-resizer)
for arg in "$@"; do
  case $arg in
    --node) ORDER+=(node containerd runc cni-plugins snapshotter cri-tools) ;;
    --e2e) ORDER+=(e2e-storage populator) ;;
    *) echo "usage: kube-tools.sh [--node] [--e2e]" >&2; exit 2 ;;
  esac
done

command -v go >/dev/null || { echo "kube-tools: go is not installed" >&2; exit 1; }
goversion=$(go env GOVERSION)

key() { # module dir -> cache key
  # The other wrappers have no .go files, so their keys stay as they were.
  { cat "$root/e2e/kube/$1/go.mod" "$root/e2e/kube/$1/go.sum"
    find "$root/e2e/kube/$1" -maxdepth 1 -name '*.go' | sort | xargs -r cat
    echo "$goversion ${FLAGS[*]} recipe $RECIPE ${TOOLS[$1]}${ENVS[$1]:+ ${ENVS[$1]}}${TAGS[$1]:+ tags ${TAGS[$1]}}"; } | sha256sum | cut -c1-16
}

fresh() { # module dir -> 0 if every binary is there and the stamp matches
  local t
  [ "$(cat "$BIN/.stamp-$1" 2>/dev/null)" = "$(key "$1")" ] || return 1
  for t in ${TOOLS[$1]}; do [ -x "$BIN/${t%%=*}" ] || return 1; done
}

all_fresh() { local m; for m in "${ORDER[@]}"; do fresh "$m" || return 1; done; }

if all_fresh; then
  echo "kube-tools: cached in $BIN ($(cd "$BIN" && printf '%s ' *))"
  exit 0
fi

# One builder at a time; whoever waited re-checks and usually has nothing left.
exec 9>"$BIN/.lock"
flock 9

total_start=$(date +%s)
built=()
for m in "${ORDER[@]}"; do
  if fresh "$m"; then continue; fi
  rm -f "$BIN/.stamp-$m"
  dir="$root/e2e/kube/$m"
  # Downloads first, timed apart from compiling (the module cache keeps them).
  t0=$(date +%s)
  (cd "$dir" && go mod download)
  echo "kube-tools: $m modules downloaded in $(( $(date +%s) - t0 )) s"
  for t in ${TOOLS[$m]}; do
    name=${t%%=*} pkg=${t#*=}
    t0=$(date +%s)
    if [[ $name == *.test ]]; then
      # Stamped with the Kubernetes release whose tests it holds.
      read -r modpath version < <(cd "$dir" && go list -m -f '{{.Path}} {{.Version}}' k8s.io/kubernetes)
    else
      read -r modpath version < <(cd "$dir" && go list -f '{{.Module.Path}} {{.Module.Version}}' "$pkg")
    fi
    echo "kube-tools: building $name ($modpath $version)"
    # Stamp the version the way the upstream release builds do, so that
    # /version, --version and user agents say v1.37.1 rather than v0.0.0.
    ldflags="-s -w"
    case $modpath in
      k8s.io/kubernetes)
        minor=${version#v1.}; minor=${minor%%.*}
        for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
          ldflags+=" -X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
        done
        # agnhost has a version of its own, kept beside it (its Makefile
        # stamps it the same way); the image's tag is that version.
        if [ "$name" = agnhost ]; then
          ldflags+=" -X main.Version=$(cat "$(cd "$dir" && go list -f '{{.Dir}}' "$pkg")/VERSION")"
        fi ;;
      github.com/kubernetes-csi/*) ldflags+=" -X main.version=$version" ;;
      github.com/opencontainers/runc) ldflags+=" -X main.version=${version#v}" ;;
      sigs.k8s.io/cri-tools) ldflags+=" -X $modpath/pkg/version.Version=$version" ;;
      github.com/containerd/containerd/v2) ldflags+=" -X $modpath/version.Version=$version" ;;
      github.com/containernetworking/plugins)
        ldflags+=" -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$version" ;;
    esac
    # -vet=off: this is a build, not a lint; go test -c would otherwise vet
    # storage_test.go, which needs vet facts of all its dependencies (go vet
    # of it alone took 73 s, against 46 s for the whole build).
    gocmd=(build)
    [[ $name != *.test ]] || gocmd=(test -c -vet=off)
    # shellcheck disable=SC2086 # ENVS holds VAR=value words
    (cd "$dir" && env ${ENVS[$m]:-} go "${gocmd[@]}" "${FLAGS[@]}" -tags "${TAGS[$m]:-}" \
      -ldflags="$ldflags" -o "$BIN/.$name.tmp" "$pkg")
    mv -f "$BIN/.$name.tmp" "$BIN/$name"
    secs=$(( $(date +%s) - t0 ))
    echo "kube-tools: built $name in $secs s ($(du -m "$BIN/$name" | cut -f1) MiB)"
    built+=("$name ${secs}s")
  done
  key "$m" > "$BIN/.stamp-$m"
done
if [ ${#built[@]} -gt 0 ]; then
  echo "kube-tools: built ${built[*]}; total $(( $(date +%s) - total_start )) s, in $BIN"
else
  echo "kube-tools: cached in $BIN (another run built them)"
fi
