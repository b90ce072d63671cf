# shellcheck shell=bash
# Sourced by the demo scripts: `step WHAT COMMAND...` says what it starts,
# runs it, and says how long it took.
step() {
  local what=$1 t0=$SECONDS
  shift
  echo "demo: $what ..."
  "$@"
  echo "demo: $what: done in $((SECONDS - t0)) s"
}
