#!/usr/bin/env bash
# Installs Python's grpcio (gRPC's C core, the client side that is not Go)
# into $OCFS2_CSI_CACHE/grpc-venv, for tests/grpc_clients.rs: it calls the
# driver over its unix socket the way a C-core client does by default.
# Idempotent and fast once done: grpcio is only (re)installed when the pinned
# version is missing. Prints the venv's python on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cache.sh

GRPCIO_VERSION=1.85.3
VENV="$OCFS2_CSI_CACHE/grpc-venv"

if [ ! -x "$VENV/bin/python" ] ||
   [ "$(cat "$VENV/.grpcio-version" 2>/dev/null)" != "$GRPCIO_VERSION" ]; then
  echo "py-grpc-deps: installing grpcio $GRPCIO_VERSION into $VENV" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" >&2
  # Proves the wheel loads (its native core) before the stamp says it is done.
  "$VENV/bin/python" -c 'import grpc' >&2
  echo "$GRPCIO_VERSION" > "$VENV/.grpcio-version"
fi
echo "$VENV/bin/python"
