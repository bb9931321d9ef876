#!/bin/sh
# One-shot before edge, ingest and compute: the gateway's signing key (created once,
# kept in the edge-state volume) and server.toml with its public key.
set -eu
line=$(python -m edge --config /app/deploy/compose/edge.toml --init-key)
key=${line#* }
mkdir -p /app/run-config
sed "s#@EDGE_PUBLIC_KEY@#${key}#" /app/deploy/compose/server.toml \
    > /app/run-config/server.toml
echo "gateway key ready: ${line}"
