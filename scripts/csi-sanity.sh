#!/usr/bin/env bash
# Runs the real csi-sanity against `ocfs2-csi controller` on a file-backed LUN
# and `ocfs2-csi node` (Identity, and the Node calls csi-sanity cleans up
# with). This host's kernel has no OCFS2, so the node cannot join a cluster
# and the Node Service tests run in the lab instead (tests/lab.rs runs the
# whole suite inside a guest); everything skipped is listed with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh
BIN=target/debug/ocfs2-csi
SANITY=$OCFS2_CSI_CACHE/bin/csi-sanity
[ -x "$BIN" ] || cargo test --no-run --all-targets
[ -x "$SANITY" ] || scripts/deps.sh

work=$(mktemp -d /tmp/ocfs2-csi-sanity.XXXXXX)
pids=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 200G "$work/lun.raw"
"$BIN" controller --endpoint "unix://$work/controller.sock" --lun "$work/lun.raw" \
  --init-lun "$work/lun.raw" --cluster-name sanity --cluster-id sanity-id >"$work/controller.log" 2>&1 &
pids+=($!)
echo "sanity-node 0 127.0.0.1" >"$work/members"
"$BIN" node --endpoint "unix://$work/node.sock" --node-id sanity-node --lun "$work/lun.raw" \
  --members-file "$work/members" --cluster-name sanity --cluster-id sanity-id --state-dir "$work/node-state" >"$work/node.log" 2>&1 &
pids+=($!)
# Serving starts at once; the controller is ready (Probe says so, and its
# log) only once the LUN is initialised. csi-sanity does not wait for Probe.
for _ in $(seq 600); do
  [ -S "$work/node.sock" ] && grep -q "all LUNs open; ready" "$work/controller.log" && break
  sleep 0.1
done
grep -q "all LUNs open; ready" "$work/controller.log" \
  || { echo "controller not ready within 60 s:"; cat "$work/controller.log"; exit 1; }

# Small volumes with few slots: mkfs and each snapshot's copy are then
# quick; the protocol is what this run tests (tests/controller.rs and the
# lab test the geometry).
echo 'nodeSlots: "4"' >"$work/parameters.yaml"
rc=0
"$SANITY" \
  -csi.endpoint "unix://$work/node.sock" \
  -csi.controllerendpoint "unix://$work/controller.sock" \
  -csi.mountdir "$work/mnt" -csi.stagingdir "$work/stage" \
  -csi.testvolumeparameters "$work/parameters.yaml" \
  -csi.testvolumesize 268435456 -csi.testvolumeexpandsize 536870912 \
  -csi.junitfile "$work/junit.xml" \
  -ginkgo.skip 'Node Service' \
  -ginkgo.no-color >"$work/sanity.out" 2>&1 || rc=$?
tail -n 4 "$work/sanity.out"

python3 - "$work/junit.xml" <<'PY'
import sys, collections, xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
by = collections.defaultdict(list)
for c in cases:
    name = c.get("name", "").replace("[It] ", "")
    if c.find("failure") is not None or c.find("error") is not None:
        by["FAILED"].append(name)
    elif (s := c.find("skipped")) is not None:
        msg = (s.get("message") or "").strip()
        if "Node Service" in name:
            reason = "excluded here (no OCFS2 in this kernel); run in the lab by tests/lab.rs"
        elif msg.lower() in ("pending", "skipped - pending"):
            reason = "marked pending in csi-sanity itself"
        else:
            reason = msg.replace("skipped - ", "") or "skipped"
        by["skipped: " + reason].append(name)
    elif c.get("status") == "pending":
        by["pending in csi-sanity itself"].append(name)
    else:
        by["passed"].append(name)
print("csi-sanity summary:")
for k in sorted(by, key=lambda k: (k != "FAILED", k != "passed", k)):
    print(f"  {len(by[k]):3d} {k}")
    if k in ("FAILED",) or k.startswith("pending"):
        for n in by[k]:
            print(f"        - {n}")
passed, failed = len(by["passed"]), len(by["FAILED"])
skipped = sum(len(v) for k, v in by.items() if k not in ("passed", "FAILED"))
print(f"csi-sanity: {passed} passed, {failed} failed, {skipped} skipped")
PY

# Every volume csi-sanity made must be gone and the table valid.
left=$(sgdisk -p "$work/lun.raw" | awk '$1 ~ /^[0-9]+$/ && $1 != 1' | wc -l)
sgdisk -v "$work/lun.raw" | grep -q "No problems found" || { echo "GPT invalid after csi-sanity"; rc=1; }
if [ "$left" != 0 ]; then echo "csi-sanity left $left partition(s) behind"; rc=1; fi
if [ "$rc" != 0 ]; then
  echo "--- csi-sanity output ---"; tail -n 80 "$work/sanity.out"
  echo "--- controller log ---"; tail -n 40 "$work/controller.log"
fi
exit "$rc"
