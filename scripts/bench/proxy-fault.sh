#!/usr/bin/env bash
# tether's rpc proxy at fault (issue 17): while K clients send rpc through the rpc proxy into a
# backend that is healthy, slow, down, failing or flapping, do S other clients' publications
# keep flowing, and does every rpc get a prompt answer?
#
#   scripts/bench/proxy-fault.sh                 # builds, 3 runs of every mode, medians
#   SKIP_BUILD=1 RUNS=1 DURATION=5s MODES="healthy down" scripts/bench/proxy-fault.sh
#
# Per run and mode (MODES, in order; default all five): a fresh backend and a fresh
# `tether serve` on free loopback ports, with a temporary config whose rpc proxy (timeout
# PROXY_TIMEOUT, 1s) points at the backend's `POST /rpc`, with no connect proxy (every client
# connects with a token) and the per-connection command rate limit off; then
# `tether-bench proxy-fault --mode MODE --json` (S subscribers in worker processes,
# publications through the API at PUB_RATE, K rpc clients at RPC_RATE in all, for DURATION).
# The modes:
#   healthy  `tether-bench backend`: every rpc answered at once (the baseline)
#   slow     `--fault slow --slow-delay SLOW_DELAY` (2s): every answer after tether gave up
#   down     no backend: the rpc proxy's port is a free port nothing listens on
#   error    `--fault error`: every rpc answered with HTTP 500
#   flap     `--fault flap --flap-period FLAP_PERIOD` (1s): healthy and 500 by turns
# Records go to $OUT/proxy-fault.jsonl, labelled with the mode; the table of medians (one
# column per mode) is printed and written to $OUT/proxy-fault-table.md. Loopback only; every
# wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
TETHER="${TETHER:-$BIN/tether}"
BENCH="${BENCH:-$BIN/tether-bench}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/proxy-fault-$(date +%Y%m%d-%H%M%S)}"
RUNS="${RUNS:-3}"
MODES="${MODES:-healthy slow down error flap}"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
PUB_RATE="${PUB_RATE:-50}"
PUBLISHERS="${PUBLISHERS:-2}"
SIZE="${SIZE:-128}"
CLIENTS="${CLIENTS:-100}"
RPC_RATE="${RPC_RATE:-500}"
DURATION="${DURATION:-15s}"
PROXY_TIMEOUT="${PROXY_TIMEOUT:-1s}"
SLOW_DELAY="${SLOW_DELAY:-2s}"
FLAP_PERIOD="${FLAP_PERIOD:-1s}"
BACKEND_THREADS="${BACKEND_THREADS:-1}"
# One mode takes about DURATION + connects + the drains (at most 20 s); this bounds it.
RUN_TIMEOUT="${RUN_TIMEOUT:-120}"
SKIP_BUILD="${SKIP_BUILD:-0}"
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || true

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-proxy-fault.XXXXXX")"
tether_pid=""
backend_pid=""
stop() {
  stop_pids "$tether_pid" "$backend_pid"
  tether_pid=""
  backend_pid=""
}
cleanup() {
  stop
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start MODE: the backend MODE asks for (none for down) and a fresh tether on free ports;
# sets the pids and ports.
start() {
  local mode="$1" fault_args=()
  backend_port="$(free_port 18200)"
  case "$mode" in
    healthy) fault_args=(--fault healthy) ;;
    slow) fault_args=(--fault slow --slow-delay "$SLOW_DELAY") ;;
    error) fault_args=(--fault error) ;;
    flap) fault_args=(--fault flap --flap-period "$FLAP_PERIOD") ;;
    down) ;;
    *) echo "unknown mode $mode" >&2; return 1 ;;
  esac
  if [[ "$mode" != down ]]; then
    "$BENCH" backend --listen "127.0.0.1:$backend_port" --threads "$BACKEND_THREADS" \
      "${fault_args[@]}" >>"$OUT/backend.log" 2>&1 &
    backend_pid=$!
    wait_port "$backend_port"
  fi
  tether_port="$(free_port 18300)"
  cat >"$tmp/tether.json" <<JSON
{
  "http_server": { "address": "127.0.0.1", "port": $tether_port },
  "tcp": { "enabled": false },
  "client": {
    "token": { "hmac_secret_key": "bench-secret" },
    "ping_interval": "25s",
    "pong_timeout": "8s",
    "command_rate_limit": { "rate": 0 },
    "connection_limit": 0,
    "ip_connection_limit": 0,
    "connection_rate_limit": 0
  },
  "channel": { "without_namespace": { "allow_subscribe_for_client": true } },
  "rpc": {
    "proxy": { "endpoint": "http://127.0.0.1:$backend_port/rpc", "timeout": "$PROXY_TIMEOUT" },
    "without_namespace": { "proxy_enabled": true }
  },
  "http_api": { "key": "bench-api-key" },
  "log": { "level": "warn" }
}
JSON
  "$TETHER" serve --config "$tmp/tether.json" >>"$OUT/tether.log" 2>&1 &
  tether_pid=$!
  wait_port "$tether_port"
}

for run in $(seq 1 "$RUNS"); do
  : >"$tmp/run.json"
  for mode in $MODES; do
    echo "== run $run of $RUNS: $mode" >&2
    start "$mode"
    sleep 1
    backend_args=()
    if [[ -n "$backend_pid" ]]; then backend_args=(--backend-pid "$backend_pid"); fi
    if ! timeout --kill-after=10 "$RUN_TIMEOUT" "$BENCH" proxy-fault --target tether \
      --label "$mode" --mode "$mode" --addr "127.0.0.1:$tether_port" --pid "$tether_pid" \
      "${backend_args[@]}" --subscribers "$SUBSCRIBERS" --pub-rate "$PUB_RATE" \
      --publishers "$PUBLISHERS" --size "$SIZE" --clients "$CLIENTS" --rpc-rate "$RPC_RATE" \
      --duration "$DURATION" --json >>"$tmp/run.json"; then
      echo "run $run ($mode) failed (see $OUT/tether.log, $OUT/backend.log)" >&2
    fi
    stop
    sleep 2
  done
  cat "$tmp/run.json" >>"$OUT/proxy-fault.jsonl"
  if command -v jq >/dev/null; then
    jq -c --arg run "run $run" '.target = "\(.target) \($run)"' "$tmp/run.json" \
      >>"$tmp/runs.jsonl" || true
  fi
done

{
  echo "Medians of $RUNS runs:"
  echo
  "$BENCH" table "$OUT/proxy-fault.jsonl"
  if [[ -s "$tmp/runs.jsonl" ]]; then
    echo
    echo "Per run:"
    echo
    "$BENCH" table "$tmp/runs.jsonl"
  fi
} | tee "$OUT/proxy-fault-table.md"
echo "results: $OUT" >&2
