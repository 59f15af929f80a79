#!/usr/bin/env bash
# Side-by-side benchmark of tether and its peers, in one run on this machine.
#
#   scripts/bench/run.sh                 # everything, 3 runs, table at the end
#   RUNS=1 TARGETS="tether nats" IDLE_N=5000 scripts/bench/run.sh
#
# Builds tether + tether-bench (release), installs the peers (scripts/bench/install-peers.sh),
# then for each run and each target: starts a fresh server, runs idle, fanout and churn with
# tether-bench --json, stops the server. Records go to $OUT/results.jsonl; the table of
# medians is printed and written to $OUT/table.md. The `floor` target is `tether-bench floor`,
# a server that only writes (one send per subscriber per publication): it runs fan-out only,
# as the yardstick for the fan-out latency this machine allows in the same run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
PEERS_DIR="${PEERS_DIR:-$CARGO_TARGET_DIR/peers}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/$(date +%Y%m%d-%H%M%S)}"
RUNS="${RUNS:-3}"
TARGETS="${TARGETS:-tether sockudo nats ws floor}"
IDLE_N="${IDLE_N:-15000}"
IDLE_WINDOW="${IDLE_WINDOW:-60s}"
FANOUT_N="${FANOUT_N:-15000}"
FANOUT_RATES="${FANOUT_RATES:-2,5,10,20,40,80}"
FANOUT_STEP="${FANOUT_STEP:-5s}"
FANOUT_SIZE="${FANOUT_SIZE:-128}"
CHURN_TIME="${CHURN_TIME:-10s}"
CHURN_CONC="${CHURN_CONC:-128}"
SKIP_BUILD="${SKIP_BUILD:-0}"
mkdir -p "$OUT"

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
  scripts/bench/install-peers.sh all || echo "warning: a peer failed to install; it is skipped" >&2
fi

server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT

# start_server TARGET: sets server_pid, WS and API addresses; returns 1 if unavailable.
start_server() {
  case "$1" in
    tether)
      "$BIN/tether" serve --config scripts/bench/tether.json >"$OUT/tether.log" 2>&1 &
      server_pid=$!; WS=127.0.0.1:18000; API=127.0.0.1:18000; wait_port 18000 ;;
    nats)
      command -v nats-server >/dev/null || return 1
      nats-server -c scripts/bench/nats.conf >"$OUT/nats.log" 2>&1 &
      server_pid=$!; WS=127.0.0.1:18002; API=127.0.0.1:18001; wait_port 18002 ;;
    ws)
      [[ -d scripts/bench/ws-server/node_modules/ws ]] || return 1
      PORT=18003 node scripts/bench/ws-server/server.js >"$OUT/ws.log" 2>&1 &
      server_pid=$!; WS=127.0.0.1:18003; API=127.0.0.1:18003; wait_port 18003 ;;
    floor)
      "$BIN/tether-bench" floor --listen 127.0.0.1:18005 >"$OUT/floor.log" 2>&1 &
      server_pid=$!; WS=127.0.0.1:18005; API=127.0.0.1:18005; wait_port 18005 ;;
    sockudo)
      [[ -x "$PEERS_DIR/sockudo/bin/sockudo" ]] || return 1
      # Production-style: an app with limits sized for the test (the default app allows
      # only 100 connections), pings after 25 s of inactivity like the others (default 120),
      # memory adapter/app manager (defaults), metrics on (default) on a side port. Its
      # per-IP rate limiter is off: every bench client comes from 127.0.0.1 (it answers 429
      # after a few hundred connections otherwise), as a deployment behind a proxy would do.
      ( cd "$OUT" && RATE_LIMITER_ENABLED=false ENVIRONMENT=production HOST=127.0.0.1 PORT=18004 ACTIVITY_TIMEOUT=25 \
        METRICS_PORT=19601 SOCKUDO_MAX_CONNECTIONS=100000 \
        SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=bench-key \
        SOCKUDO_DEFAULT_APP_SECRET=bench-app-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 \
        SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000 \
        exec "$PEERS_DIR/sockudo/bin/sockudo" ) >"$OUT/sockudo.log" 2>&1 &
      server_pid=$!; WS=127.0.0.1:18004; API=127.0.0.1:18004; wait_port 18004 ;;
  esac
}

bench() {
  "$BIN/tether-bench" "$@" --target "$t" --addr "$WS" --api "$API" --pid "$server_pid" --json \
    | tee -a "$OUT/results.jsonl"
}

for run in $(seq 1 "$RUNS"); do
  for t in $TARGETS; do
    echo "== run $run: $t" >&2
    if ! start_server "$t"; then echo "$t: not installed, skipped" >&2; continue; fi
    sleep 1
    if [[ "$t" != floor ]]; then
      bench idle -n "$IDLE_N" --window "$IDLE_WINDOW" || echo "$t idle failed" >&2
    fi
    bench fanout -n "$FANOUT_N" --rates "$FANOUT_RATES" --duration "$FANOUT_STEP" \
      --size "$FANOUT_SIZE" || echo "$t fanout failed" >&2
    if [[ "$t" != floor ]]; then
      bench churn --duration "$CHURN_TIME" --concurrency "$CHURN_CONC" || echo "$t churn failed" >&2
    fi
    stop_server
    sleep 2
  done
done

"$BIN/tether-bench" table "$OUT/results.jsonl" | tee "$OUT/table.md"
echo "results: $OUT" >&2
