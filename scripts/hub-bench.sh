#!/usr/bin/env bash
# One CloudHub + ReliableCloud (`hub-server`) holding NODES simulated edge nodes (`edge-swarm`,
# one TLS WebSocket each, KubeEdge's protocol), both on this machine's cores, then ROUNDS fan-out
# rounds: one ACK-tracked pod to every node at once, timed from `send` to the node's ACK.
# Writes hub-NODES.log and swarm-NODES.log in OUT_DIR and prints the hub's summary lines.
#
# usage: scripts/hub-bench.sh NODES ROUNDS SETTLE_SECS IDLE_SECS SWARM_SECS PORT
#   BIN=target/release (hub-server, edge-swarm)   OUT_DIR=.   SOURCE_IPS=127.0.0.2,...,127.0.0.5
set -euo pipefail
N=$1 ROUNDS=$2 SETTLE=$3 IDLE=$4 DUR=$5 PORT=$6
BIN=${BIN:-target/release}
OUT_DIR=${OUT_DIR:-.}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
PKI=$(mktemp -d)
trap 'rm -rf "$PKI"' EXIT
"$BIN/hub-server" --listen "127.0.0.1:$PORT" --pki-dir "$PKI" --nodes-expected "$N" \
    --fanout-rounds "$ROUNDS" --window 16 --settle-secs "$SETTLE" --idle-secs "$IDLE" \
    > "$OUT_DIR/hub-$N.log" 2>&1 &
hub=$!
# The hub writes its CA before it listens.
for _ in $(seq 100); do [[ -s $PKI/ca-key.pem ]] && break; sleep 0.1; done
"$BIN/edge-swarm" --server "127.0.0.1:$PORT" --pki-dir "$PKI" --nodes "$N" \
    --source-ips "$SOURCE_IPS" --ramp-per-sec 1000 --duration-secs "$DUR" \
    > "$OUT_DIR/swarm-$N.log" 2>&1 &
swarm=$!
status=0
wait "$hub" || status=$?
kill "$swarm" 2>/dev/null || true
wait "$swarm" 2>/dev/null || true
grep -v '^\s*$' "$OUT_DIR/hub-$N.log" | grep -iE 'round|rss|connected|idle' || true
exit "$status"
