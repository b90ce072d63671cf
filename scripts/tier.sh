#!/usr/bin/env bash
# Runs one test tier and records how long each part took, for the table
# `make test` ends with (scripts/tier.sh --table).
#
#   scripts/tier.sh check   fmt, clippy, shellcheck, layer check, unit and
#                           in-process tests (no root-only devices, no QEMU)
#   scripts/tier.sh host    integration tests on file-backed LUNs and loop
#                           devices, csi-sanity on the host, the chart, the image
#   scripts/tier.sh lab     QEMU scenarios on real OCFS2 kernels
#   scripts/tier.sh kube    tests against a real kube-apiserver
#   scripts/tier.sh nodes   lab guests as Kubernetes nodes, the chart
#                           installed with helm, the user's flows
#   scripts/tier.sh deps    make deps (what every tier installs or builds;
#                           minutes on a fresh machine, a second once cached)
#   scripts/tier.sh --table print the recorded times
#   scripts/tier.sh --reset forget them (make test starts with this)
#
# One test of a tier: `cargo test --test NAME` (see the lists below), or
# `cargo test --test NAME -- --nocapture` to watch it.
set -euo pipefail
cd "$(dirname "$0")/.."

TIMES=target/tier-times.tsv
CARGO=${CARGO:-cargo}

# The integration test files of each tier (tests/NAME.rs). A new test file
# goes into exactly one list; `check` refuses files in none.
HOST_TESTS=(controller lun_safety crash crash_expand crash_lun_growth scale storm sizing bad_input server grpc_clients image)
LAB_TESTS=(lab)
KUBE_TESTS=(kube_smoke kube_membership kube_provisioning kube_helm)
NODES_TESTS=(kube_nodes)
CHECK_TESTS=(csi_proto_compat)

record() { # tier part seconds
  mkdir -p target
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TIMES"
}

timed() { # tier part command...
  local tier=$1 part=$2 t0=$SECONDS
  shift 2
  echo "== $tier: $part"
  "$@"
  record "$tier" "$part" $((SECONDS - t0))
}

# Runs one integration test binary (ARGS go to the test harness); scenario
# lines it prints (`scenario-time: NAME SECONDS`) are recorded too.
test_file() { # tier name [ARGS...]
  local tier=$1 name=$2 t0=$SECONDS log
  shift 2
  log=$(mktemp)
  echo "== $tier: tests/$name.rs"
  if ! "$CARGO" test --test "$name" -- --nocapture "$@" 2>&1 | tee "$log"; then
    rm -f "$log"
    return 1
  fi
  # `tee` hides cargo's status; the pipeline's status is cargo's (pipefail).
  sed -n 's/^scenario-time: \([^ ]*\) \([0-9]*\)$/\1 \2/p' "$log" | while read -r s secs; do
    record "$tier" "  $name: $s" "$secs"
  done
  rm -f "$log"
  record "$tier" "tests/$name.rs" $((SECONDS - t0))
}

every_test_file_has_a_tier() {
  local f n all=" ${HOST_TESTS[*]} ${LAB_TESTS[*]} ${KUBE_TESTS[*]} ${NODES_TESTS[*]} ${CHECK_TESTS[*]} " missing=()
  for f in tests/*.rs; do
    n=$(basename "$f" .rs)
    [[ $all == *" $n "* ]] || missing+=("$n")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tier: tests/{${missing[*]}}.rs belong to no tier; add them to scripts/tier.sh" >&2
    return 1
  fi
}

shellcheck_all() {
  command -v shellcheck >/dev/null || { echo "tier: shellcheck is missing (scripts/deps.sh installs it)" >&2; return 1; }
  mapfile -t scripts < <(git ls-files '*.sh' .ci/run deploy/kubectl-ocfs2_csi)
  shellcheck "${scripts[@]}"
  echo "shellcheck: ${#scripts[@]} scripts clean"
}

case ${1:-} in
  deps)
    timed deps "install and build what the tiers need" make --no-print-directory deps
    ;;
  check)
    every_test_file_has_a_tier
    timed check fmt "$CARGO" fmt --all --check
    timed check clippy "$CARGO" clippy --workspace --all-targets -- -D warnings
    timed check shellcheck shellcheck_all
    timed check layers scripts/check-layers.sh
    timed check "unit and in-process tests" "$CARGO" test --workspace --lib --bins
    for t in "${CHECK_TESTS[@]}"; do test_file check "$t"; done
    ;;
  host)
    # `cargo test --no-run` builds the binary with the features the tests
    # use (a plain `cargo build` resolves dev-dependency features apart and
    # would rebuild every crate).
    timed host build "$CARGO" test --no-run --all-targets
    timed host chart scripts/chart-check.sh
    # The host csi-sanity spends most of its time in the controller's real
    # delete and snapshot graces (sleeps), so it runs beside the test files
    # (its own LUN file and sockets); its output follows theirs. Its time
    # is shown indented: it is not added to the tier's.
    sanity_log=$(mktemp)
    timed host "  csi-sanity (beside the test files)" scripts/csi-sanity.sh >"$sanity_log" 2>&1 &
    sanity=$!
    files_ok=0
    for t in "${HOST_TESTS[@]}"; do test_file host "$t" || { files_ok=1; break; }; done
    sanity_ok=0
    wait "$sanity" || sanity_ok=$?
    cat "$sanity_log"
    rm -f "$sanity_log"
    [ "$sanity_ok" = 0 ] || echo "tier: the host csi-sanity failed (its output is above)" >&2
    [ "$files_ok" = 0 ] && [ "$sanity_ok" = 0 ]
    ;;
  lab)
    # The three labs at once (tests/lab.rs says why).
    for t in "${LAB_TESTS[@]}"; do test_file lab "$t" --test-threads=3; done
    ;;
  kube)
    for t in "${KUBE_TESTS[@]}"; do test_file kube "$t"; done
    ;;
  nodes)
    for t in "${NODES_TESTS[@]}"; do test_file nodes "$t"; done
    ;;
  --reset)
    rm -f "$TIMES"
    ;;
  --table)
    [ -f "$TIMES" ] || { echo "tier: no times recorded"; exit 0; }
    echo
    echo "time per tier and part (s):"
    awk -F'\t' '
      { part[NR] = $2; tier[NR] = $1; secs[NR] = $3
        if ($2 !~ /^  /) total[$1] += $3
        if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
      END {
        for (i = 1; i <= n; i++) {
          t = order[i]; printf "  %-6s %6d\n", t, total[t]
          for (j = 1; j <= NR; j++) if (tier[j] == t) printf "           %6d  %s\n", secs[j], part[j]
          all += total[t]
        }
        printf "  %-6s %6d\n", "all", all
      }' "$TIMES"
    ;;
  *)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
