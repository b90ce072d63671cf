#!/usr/bin/env bash
# Fails when a module of src/ imports a module of its own layer or above:
# lower layers never know the ones built on them, and the controller and the
# node plugin never import each other (what they share lives below both).
# A module's imports are the `crate::NAME` paths in its files (use lines and
# inline paths alike); `crate::{a, b}` groups are refused so that every
# import stays visible to this check.
set -euo pipefail
cd "$(dirname "$0")/.."

# layer of each top-level module of src/ (a module may import only lower ones)
declare -A LAYER=(
  [backoff]=0 [csi]=0 [escape]=0 [tools]=0
  [mountinfo]=1 [disk]=1 [ocfs2]=1 [metrics]=1
  [volume]=2 [cluster]=2 [server]=2
  [k8s]=3
  [identity]=4 [controller]=4 [node]=4 [vmdisk]=4
  [sanity]=5 [status]=5
)

fail=0
modules=$(cd src && for f in */ *.rs; do f=${f%/}; f=${f%.rs}; [ "$f" = main ] || [ "$f" = lib ] || echo "$f"; done)
for m in $modules; do
  if [ -z "${LAYER[$m]:-}" ]; then
    echo "check-layers: src/$m has no layer; add it to LAYER in $0" >&2
    fail=1
    continue
  fi
  files=$( { [ -d "src/$m" ] && find "src/$m" -name '*.rs'; [ -f "src/$m.rs" ] && echo "src/$m.rs"; } || true)
  # shellcheck disable=SC2086 # one word per file
  while IFS=: read -r file line dep; do
    [ "$dep" = "$m" ] && continue
    if [ -z "${LAYER[$dep]:-}" ]; then
      echo "$file:$line: $m imports crate::$dep, which has no layer" >&2
      fail=1
    elif [ "${LAYER[$dep]}" -ge "${LAYER[$m]}" ]; then
      echo "$file:$line: $m (layer ${LAYER[$m]}) imports crate::$dep (layer ${LAYER[$dep]})" >&2
      fail=1
    fi
  done < <(grep -HnoE 'crate::[a-z_0-9]+' $files | sed -E 's#crate::##')
  # shellcheck disable=SC2086
  if hits=$(grep -HnE 'crate::\{' $files); then
    while IFS= read -r hit; do
      echo "$hit: write one use line per module (crate::MODULE::...)" >&2
    done <<<"$hits"
    fail=1
  fi
done
if [ "$fail" = 0 ]; then
  echo "check-layers: $(wc -w <<<"$modules") modules, no upward or sideways imports"
fi
exit "$fail"
