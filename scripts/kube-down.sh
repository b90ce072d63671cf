#!/usr/bin/env bash
# Stops the control plane scripts/kube-up.sh started in DIR: exactly the
# processes recorded in DIR/pids (each checked to still be the binary that
# was started, so a reused pid is never touched), newest first, TERM then
# KILL after 10 s. Leaves DIR's logs and state in place. Idempotent: a DIR
# with nothing recorded, or none left, is fine.
#   scripts/kube-down.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
[ -d "$DIR" ] || exit 0

# The watchdog kube-up.sh leaves for an owner pid: end it, unless it is the
# one running this (it execs kube-down.sh, so it would be this very pid).
if [ -f "$DIR/watchdog.pid" ]; then
  wd=$(cat "$DIR/watchdog.pid")
  if [ "$wd" != "$$" ] && tr '\0' ' ' < "/proc/$wd/cmdline" 2>/dev/null | grep -q kube-up-watchdog; then
    kill "$wd" 2>/dev/null
  fi
  rm -f "$DIR/watchdog.pid"
fi

[ -f "$DIR/pids" ] || exit 0
# Running and still the recorded binary (a zombie or a reused pid is not).
is() { [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$2" ]; }

ours=()
while read -r _ pid exe; do
  [ -n "${pid:-}" ] || continue
  is "$pid" "$exe" && ours=("$pid=$exe" "${ours[@]}")  # newest first
done < "$DIR/pids"

for p in "${ours[@]}"; do
  pid=${p%%=*} exe=${p#*=}
  kill -TERM "$pid" 2>/dev/null
  # Each one in turn, so etcd outlives the API server that talks to it; both
  # stop in a second or two.
  for _ in $(seq 100); do is "$pid" "$exe" || break; sleep 0.1; done
  is "$pid" "$exe" && kill -KILL "$pid" 2>/dev/null
done
rm -f "$DIR/pids" "$DIR/env"
[ ${#ours[@]} -eq 0 ] || echo "kube-down: stopped ${#ours[@]} process(es) in $DIR"
exit 0
