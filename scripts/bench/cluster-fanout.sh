#!/usr/bin/env bash
# Fan-out across a cluster: two tether nodes on the Redis engine (one Redis, 127.0.0.1:6379),
# subscribers spread over both, publications through node A's API, so half of every
# publication's deliveries cross Redis Pub/Sub to node B. One node on the same Redis runs
# beside it as the reference. Records go to $OUT/cluster.jsonl.
#
#   scripts/bench/cluster-fanout.sh                  # 3 runs
#   RUNS=1 FANOUT_N=2000 scripts/bench/cluster-fanout.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/cluster-$(date +%Y%m%d-%H%M%S)}"
RUNS="${RUNS:-3}"
FANOUT_N="${FANOUT_N:-5000}"
FANOUT_RATES="${FANOUT_RATES:-10,50,100,200,400}"
FANOUT_STEP="${FANOUT_STEP:-5s}"
FANOUT_SIZE="${FANOUT_SIZE:-128}"
REDIS="${REDIS:-redis://127.0.0.1:6379}"
SKIP_BUILD="${SKIP_BUILD:-0}"
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || true

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi
scripts/ensure-services.sh >/dev/null

pids=()
prefix=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
  if [[ -n "$prefix" ]]; then
    redis-cli -u "$REDIS" --scan --pattern "$prefix*" | xargs -r redis-cli -u "$REDIS" DEL >/dev/null
  fi
}
trap cleanup EXIT

# node PORT: a tether node on the Redis engine under $prefix.
node() {
  TETHER_ENGINE_TYPE=redis TETHER_ENGINE_REDIS_ADDRESS="$REDIS" \
    TETHER_ENGINE_REDIS_PREFIX="$prefix" TETHER_HTTP_SERVER_PORT="$1" TETHER_TCP_ENABLED=false \
    "$BIN/tether" serve --config scripts/bench/tether.json >>"$OUT/tether-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}

fanout() {
  local label=$1; shift
  "$BIN/tether-bench" fanout -n "$FANOUT_N" --rates "$FANOUT_RATES" --duration "$FANOUT_STEP" \
    --size "$FANOUT_SIZE" --label "$label" --json "$@" | tee -a "$OUT/cluster.jsonl"
}

for run in $(seq 1 "$RUNS"); do
  echo "== run $run: one node on redis" >&2
  prefix="bench-cluster-$$-$run-a"
  node 18100
  fanout "redis-1-node" --addr 127.0.0.1:18100 --pid "${pids[0]}"
  cleanup
  sleep 2
  echo "== run $run: two nodes on redis" >&2
  prefix="bench-cluster-$$-$run-b"
  node 18100
  node 18101
  # --pid is node A (the publishing node); B's CPU is not in the record.
  fanout "redis-2-nodes" --addr 127.0.0.1:18100,127.0.0.1:18101 --api 127.0.0.1:18100 \
    --pid "${pids[0]}"
  cleanup
  sleep 2
done
"$BIN/tether-bench" table "$OUT/cluster.jsonl" | tee "$OUT/cluster-table.md"
echo "results: $OUT" >&2
