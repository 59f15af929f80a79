#!/usr/bin/env bash
# The Redis engine's circuit breaker (issue 18): Redis frozen (SIGSTOP) for 5 s under 100
# publishes/s, through two tethers on the same Redis in the same run: one with the breaker
# (the default), one without (engine.redis.circuit_breaker.enabled: false).
#
#   scripts/bench/redis-freeze.sh                  # builds, 3 runs, a table of medians
#   SKIP_BUILD=1 RUNS=1 scripts/bench/redis-freeze.sh
#
# Per run: a fresh redis-server of its own on a free loopback port (no persistence), two
# fresh `tether serve` on free ports with the Redis engine on it (distinct prefixes), then
# `tether-bench engine-fault --api breaker=... --api off=... --freeze-pid <redis>`, which
# publishes to both at RATE/s each for DURATION, freezes Redis at FREEZE_AT for FREEZE_FOR and
# thaws it. Records go to $OUT/redis-freeze.jsonl; with jq, a table of medians is printed and
# written to $OUT/redis-freeze-table.md. Loopback only; every wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
TETHER="${TETHER:-$BIN/tether}"
BENCH="${BENCH:-$BIN/tether-bench}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/redis-freeze-$(date +%Y%m%d-%H%M%S)}"
RUNS="${RUNS:-3}"
RATE="${RATE:-100}"
DURATION="${DURATION:-12s}"
FREEZE_AT="${FREEZE_AT:-3s}"
FREEZE_FOR="${FREEZE_FOR:-5s}"
SETTLE="${SETTLE:-200ms}"
RUN_TIMEOUT="${RUN_TIMEOUT:-60}"
SKIP_BUILD="${SKIP_BUILD:-0}"
mkdir -p "$OUT"

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-redis-freeze.XXXXXX")"
pids=()
stop() {
  stop_pids "${pids[@]}"
  pids=()
}
cleanup() {
  stop
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# tether_config PORT PREFIX BREAKER: a tether on PORT with the Redis engine on $redis_port.
tether_config() {
  cat <<JSON
{
  "http_server": { "address": "127.0.0.1", "port": $1 },
  "tcp": { "enabled": false },
  "client": { "token": { "hmac_secret_key": "bench-secret" } },
  "channel": { "without_namespace": { "history_size": 100, "history_ttl": "60s" } },
  "engine": {
    "type": "redis",
    "redis": {
      "address": "redis://127.0.0.1:$redis_port",
      "prefix": "$2",
      "circuit_breaker": { "enabled": $3 }
    }
  },
  "http_api": { "key": "bench-api-key" },
  "log": { "level": "warn" }
}
JSON
}

for run in $(seq 1 "$RUNS"); do
  echo "== run $run of $RUNS" >&2
  redis_port="$(free_port 18600)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    >>"$OUT/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port"
  on_port="$(free_port 18700)"
  tether_config "$on_port" "freeze-on-$run" true >"$tmp/on.json"
  "$TETHER" serve --config "$tmp/on.json" >>"$OUT/tether-on.log" 2>&1 &
  pids+=("$!")
  wait_port "$on_port"
  off_port="$(free_port $((on_port + 1)))"
  tether_config "$off_port" "freeze-off-$run" false >"$tmp/off.json"
  "$TETHER" serve --config "$tmp/off.json" >>"$OUT/tether-off.log" 2>&1 &
  pids+=("$!")
  wait_port "$off_port"
  sleep 1
  if ! timeout --kill-after=10 "$RUN_TIMEOUT" "$BENCH" engine-fault \
    --api "breaker=127.0.0.1:$on_port" --api "off=127.0.0.1:$off_port" \
    --rate "$RATE" --duration "$DURATION" --freeze-pid "$redis_pid" \
    --freeze-at "$FREEZE_AT" --freeze-for "$FREEZE_FOR" --settle "$SETTLE" \
    --json >>"$OUT/redis-freeze.jsonl"; then
    echo "run $run failed (see $OUT/*.log)" >&2
  fi
  stop
  sleep 1
done

if command -v jq >/dev/null; then
  {
    echo "Medians of $RUNS runs (RATE=$RATE/s, Redis frozen $FREEZE_FOR from $FREEZE_AT; 'after open' = calls sent from $SETTLE after the freeze began):"
    echo
    echo "| metric | breaker | off |"
    echo "| --- | ---: | ---: |"
    row() {
      local name="$1" expr="$2" on off
      on="$(jq -s "[.[].result.targets[] | select(.label == \"breaker\") | $expr] | sort | .[(length / 2 | floor)]" "$OUT/redis-freeze.jsonl")"
      off="$(jq -s "[.[].result.targets[] | select(.label == \"off\") | $expr] | sort | .[(length / 2 | floor)]" "$OUT/redis-freeze.jsonl")"
      echo "| $name | $on | $off |"
    }
    row "calls while frozen" ".frozen.calls"
    row "of which published" ".frozen.ok"
    row "while frozen: p50 ms" ".frozen.p50_ms"
    row "while frozen: p99 ms" ".frozen.p99_ms"
    row "after open: calls" ".frozen_settled.calls"
    row "after open: p50 ms" ".frozen_settled.p50_ms"
    row "after open: p99 ms" ".frozen_settled.p99_ms"
    row "after open: max ms" ".frozen_settled.max_ms"
    row "most calls in flight while frozen" ".max_in_flight_frozen"
    row "most calls in flight before" ".max_in_flight_before"
    row "before: p99 ms" ".before.p99_ms"
    row "after the thaw: calls / published" "\"\\(.after.calls) / \\(.after.ok)\""
    row "thaw to the first publish again, ms" ".recovered_after_ms"
  } | tee "$OUT/redis-freeze-table.md"
fi
echo "results: $OUT" >&2
