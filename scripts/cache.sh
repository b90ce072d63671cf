# shellcheck shell=bash
# Sourced by the scripts: where pinned external builds are kept. It lies
# outside the clone, so a fresh clone on a machine that built them (CI's
# case) reuses them; every entry is checked against a content key or a pinned
# version before use, and removing the folder makes everything build again.
#   OCFS2_CSI_CACHE  the folder (default: $XDG_CACHE_HOME/ocfs2-csi, else
#                    ~/.cache/ocfs2-csi)
OCFS2_CSI_CACHE=${OCFS2_CSI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocfs2-csi}
export OCFS2_CSI_CACHE
