#!/usr/bin/env bash
# tether's backend proxy (issue 17): connects/s through the connect proxy, rpc through the rpc
# proxy against the same backend called directly (side by side, one run), rpc/s at most; over
# HTTP, over gRPC, or both.
#
#   scripts/bench/proxy.sh                       # builds, 3 runs of each, medians at the end
#   SKIP_BUILD=1 RUNS=1 RATE=500 PROXY=grpc scripts/bench/proxy.sh
#
# Per run and proxy kind (PROXY=http|grpc|both, both by default: http, then grpc, in every
# run): a fresh `tether-bench backend` (the trivial backend: POST /connect answers a user,
# POST /rpc echoes; with --grpc-listen, CentrifugoProxy Connect and RPC alike) and a fresh
# `tether serve` on free loopback ports, with a temporary config whose connect and rpc proxies
# point at the backend (`http://.../connect` and `http://.../rpc`, or `grpc://...` for both)
# and whose per-connection command rate limit is off (the max phase sends far more than 100
# commands/s per connection); then `tether-bench proxy --json --label KIND` (direct calls
# over the same protocol); then, once per run after the last kind, as the same run's
# reference for the connect figure, plain `tether-bench churn --label token-churn` (token
# connect + subscribe + close, no proxy involved) with as many loops for as long on the same
# tether (REFERENCE=0 skips it). Records go to $OUT/proxy.jsonl; the table of medians (one
# column per kind and, with jq, one per run) is printed and written to $OUT/proxy-table.md.
# Loopback only; every wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
TETHER="${TETHER:-$BIN/tether}"
BENCH="${BENCH:-$BIN/tether-bench}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/proxy-$(date +%Y%m%d-%H%M%S)}"
RUNS="${RUNS:-3}"
CONNECT_LOOPS="${CONNECT_LOOPS:-200}"
CONNECT_WORKERS="${CONNECT_WORKERS:-2}"
CONNECT_DURATION="${CONNECT_DURATION:-10s}"
CLIENTS="${CLIENTS:-100}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-20s}"
SIZE="${SIZE:-64}"
MAX_DURATION="${MAX_DURATION:-10s}"
DEPTH="${DEPTH:-4}"
BACKEND_THREADS="${BACKEND_THREADS:-1}"
REFERENCE="${REFERENCE:-1}"
PROXY="${PROXY:-both}"
case "$PROXY" in
  http | grpc) KINDS=("$PROXY") ;;
  both) KINDS=(http grpc) ;;
  *) echo "PROXY must be http, grpc or both, not $PROXY" >&2; exit 2 ;;
esac
# One run takes about connect + fixed rate + 2 x max + 10 s; this bounds it.
RUN_TIMEOUT="${RUN_TIMEOUT:-240}"
SKIP_BUILD="${SKIP_BUILD:-0}"
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || true

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-proxy-bench.XXXXXX")"
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

# start KIND: a fresh backend (HTTP, and gRPC for KIND grpc) and tether with KIND proxies, on
# free ports; sets the pids and ports.
start() {
  local kind="$1" grpc_args=() connect_endpoint rpc_endpoint
  backend_port="$(free_port 18200)"
  if [[ "$kind" == grpc ]]; then
    grpc_port="$(free_port $((backend_port + 1)))"
    grpc_args=(--grpc-listen "127.0.0.1:$grpc_port")
    connect_endpoint="grpc://127.0.0.1:$grpc_port"
    rpc_endpoint="grpc://127.0.0.1:$grpc_port"
  else
    connect_endpoint="http://127.0.0.1:$backend_port/connect"
    rpc_endpoint="http://127.0.0.1:$backend_port/rpc"
  fi
  "$BENCH" backend --listen "127.0.0.1:$backend_port" "${grpc_args[@]}" \
    --threads "$BACKEND_THREADS" >>"$OUT/backend.log" 2>&1 &
  backend_pid=$!
  wait_port "$backend_port"
  if [[ "$kind" == grpc ]]; then wait_port "$grpc_port"; fi
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
    "connection_rate_limit": 0,
    "proxy": {
      "connect": {
        "enabled": true,
        "endpoint": "$connect_endpoint",
        "timeout": "1s"
      }
    }
  },
  "channel": { "without_namespace": { "allow_subscribe_for_client": true } },
  "rpc": {
    "proxy": { "endpoint": "$rpc_endpoint", "timeout": "1s" },
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
  for kind in "${KINDS[@]}"; do
    echo "== run $run of $RUNS: $kind" >&2
    start "$kind"
    sleep 1
    direct_args=(--direct http)
    if [[ "$kind" == grpc ]]; then
      direct_args=(--direct grpc --backend-grpc "127.0.0.1:$grpc_port")
    fi
    if ! timeout --kill-after=10 "$RUN_TIMEOUT" "$BENCH" proxy --target tether --label "$kind" \
      --addr "127.0.0.1:$tether_port" --pid "$tether_pid" \
      --backend "127.0.0.1:$backend_port" "${direct_args[@]}" --backend-pid "$backend_pid" \
      --connect-loops "$CONNECT_LOOPS" --connect-workers "$CONNECT_WORKERS" \
      --connect-duration "$CONNECT_DURATION" --clients "$CLIENTS" --rate "$RATE" \
      --duration "$DURATION" --size "$SIZE" --max-duration "$MAX_DURATION" --depth "$DEPTH" \
      --json >>"$tmp/run.json"; then
      echo "run $run ($kind) failed (see $OUT/tether.log, $OUT/backend.log)" >&2
    fi
    # The reference churn runs once per run, on the last kind's tether.
    if [[ "$REFERENCE" == 1 && "$kind" == "${KINDS[-1]}" ]]; then
      sleep 1
      timeout --kill-after=10 "$RUN_TIMEOUT" "$BENCH" churn --target tether --label token-churn \
        --addr "127.0.0.1:$tether_port" --pid "$tether_pid" --concurrency "$CONNECT_LOOPS" \
        --workers "$CONNECT_WORKERS" --duration "$CONNECT_DURATION" --json >>"$tmp/run.json" \
        || echo "run $run: reference churn failed" >&2
    fi
    stop
    sleep 2
  done
  cat "$tmp/run.json" >>"$OUT/proxy.jsonl"
  if command -v jq >/dev/null; then
    jq -c --arg run "run $run" '.target = "\(.target) \($run)"' "$tmp/run.json" \
      >>"$tmp/runs.jsonl" || true
  fi
done

{
  echo "Medians of $RUNS runs:"
  echo
  "$BENCH" table "$OUT/proxy.jsonl"
  if [[ -s "$tmp/runs.jsonl" ]]; then
    echo
    echo "Per run:"
    echo
    "$BENCH" table "$tmp/runs.jsonl"
  fi
} | tee "$OUT/proxy-table.md"
echo "results: $OUT" >&2
