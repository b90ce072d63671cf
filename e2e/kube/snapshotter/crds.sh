#!/usr/bin/env bash
# Prints the VolumeSnapshot CRDs (snapshot.storage.k8s.io/v1:
# volumesnapshotclasses, volumesnapshotcontents, volumesnapshots) as one YAML
# stream, for `kubectl apply -f -`:
#   e2e/kube/snapshotter/crds.sh | kubectl apply -f -
#
# They are read from external-snapshotter's client/v8 module at the version
# this wrapper pins (go.mod; go.sum verifies the download), in its
# config/crd, rather than copied into the repository: they follow a bump of
# the snapshotter by themselves and cannot drift from the snapshot-controller
# and csi-snapshotter built from the same pin (scripts/kube-tools.sh --node).
# The files are upstream's, Apache-2.0 like the module, printed unchanged.
# The groupsnapshot.storage.k8s.io CRDs beside them are left out: the driver
# claims no group snapshots.
set -euo pipefail
cd "$(dirname "$0")"
mod=github.com/kubernetes-csi/external-snapshotter/client/v8
go mod download "$mod"
dir=$(go list -m -f '{{.Dir}}' "$mod")
version=$(go list -m -f '{{.Version}}' "$mod")
for r in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  f=$dir/config/crd/snapshot.storage.k8s.io_$r.yaml
  [ -s "$f" ] || { echo "crds.sh: no $f in $mod@$version" >&2; exit 1; }
  echo "# $mod@$version config/crd/${f##*/}"
  # each file starts with its own "---"
  cat "$f"
done
