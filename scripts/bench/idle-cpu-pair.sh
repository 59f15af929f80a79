#!/usr/bin/env bash
# Idle CPU (and memory) of two tether builds measured in the same window, so that the host's speed, which
# varies a lot from hour to hour, is the same for both. Each build serves its own 15,000 idle
# clients (ports 18000 and 18010); `tether-bench idle` runs against both at once.
# Usage: scripts/bench/idle-cpu-pair.sh BIN_DIR_A BIN_DIR_B [WINDOW] [PING_INTERVAL]
#   BIN_DIR_*: directories holding `tether` (the bench binary is taken from A).
#   Defaults: WINDOW=30s, PING_INTERVAL=5s (pong timeout 3 s): more pings, a clearer signal.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
source scripts/bench/lib.sh
A="$1"; B="$2"; WINDOW="${3:-30s}"; PING="${4:-5s}"
OUT="$(mktemp -d)"
export TETHER_CLIENT_PING_INTERVAL="$PING" TETHER_CLIENT_PONG_TIMEOUT=3s
"$A/tether" serve --config scripts/bench/tether.json >"$OUT/a.log" 2>&1 &
pa=$!
TETHER_HTTP_SERVER_PORT=18010 TETHER_TCP_PORT=8011 \
  "$B/tether" serve --config scripts/bench/tether.json >"$OUT/b.log" 2>&1 &
pb=$!
trap 'kill $pa $pb 2>/dev/null || true' EXIT
wait_port 18000
wait_port 18010
sleep 1
idle() {
  "$A/tether-bench" idle -n 15000 --window "$WINDOW" --target tether \
    --addr "127.0.0.1:$1" --api "127.0.0.1:$1" --pid "$2" --label "$3"
}
idle 18000 "$pa" A >"$OUT/a.txt" 2>&1 &
ja=$!
idle 18010 "$pb" B >"$OUT/b.txt" 2>&1 &
jb=$!
wait "$ja" "$jb"
for x in a b; do
  echo "${x^^} ($( [[ $x == a ]] && echo "$A" || echo "$B")): $(grep -m1 'CPU over' "$OUT/$x.txt" | sed 's/^ *//')"
  echo "   $(grep -m1 'server RSS' "$OUT/$x.txt" | sed 's/^ *//')"
done
rm -rf "$OUT"
