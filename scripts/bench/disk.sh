#!/usr/bin/env bash
# The disk engine (issue 19) against the memory engine, in one run: publications/s with 1, 16
# and 64 concurrent publishers per engine and fsync mode; restart time, RSS and bytes on disk
# with 1,000,000 stored publications over 10,000 channels; and acknowledged publications
# checked after a kill -9 under load.
#
#   scripts/bench/disk.sh                        # builds, 3 reps of everything, tables at the end
#   DISK_BENCH_QUICK=1 scripts/bench/disk.sh     # smoke: 1 rep, 1 s per load, a 50,000 fill
#   SKIP_BUILD=1 PARTS=throughput CASES=memory scripts/bench/disk.sh
#
# Parts (PARTS, all three by default, in this order):
#  - throughput: for rep 1..REPS (outermost), for case in CASES (interleaved: memory,
#    disk-always, disk-interval): a fresh data dir and a fresh `tether serve`, then
#    `tether-bench history publish` with 1, 16 and 64 publishers (PUBLISHERS) for SECS each,
#    each publisher awaiting its ack before the next, SIZE-byte incompressible data into
#    random channels hist:0 .. hist:CHANNELS-1 (namespace `hist`: history_size 100,
#    history_ttl 1h; tether, like Centrifugo, wants namespace names of 2+ characters).
#  - restart: for rep 1..RESTART_REPS: RSS of a node on an empty disk store and of one on the
#    memory engine; then, for stop in clean (SIGTERM) and crash (kill -9): a fresh disk store
#    (fsync always) filled with FILL_COUNT publications round-robin over CHANNELS
#    (`tether-bench history fill --record`), the node stopped that way, the store's files
#    written back and dropped from the page cache (EVICT=1; `dd iflag=nocache`), then the
#    time from spawning `tether serve` on it to /ready answering 200 and to a history call on
#    hist:0 returning all its FILL_COUNT / CHANNELS publications (`tether-bench history ready`);
#    RSS then, and after every acknowledged publication was read back and checked
#    (`tether-bench history verify`); bytes on disk per publication minus the payload. In
#    rep 1, RSS of a memory-engine node holding the same fill.
#  - crash: for case in CASES: 64 publishers with `--record` for CRASH_SECS, the node killed
#    (kill -9) CRASH_AT seconds in, restarted on the same store, every acknowledged
#    publication checked: kept, or its channel's epoch changed (memory: all of them), or LOST.
#    CRASH_REPS times (1 by default); CHECKPOINT_INTERVAL=20ms takes checkpoints among the
#    writes.
#
# Records go to $OUT/*.jsonl; with jq, tables are printed and written to $OUT/disk-table.md.
# Load average is sampled before and after each part into $OUT/load.txt. Loopback only;
# every wait is bounded (TIMEOUT per bench command).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
TETHER="${TETHER:-$BIN/tether}"
BENCH="${BENCH:-$BIN/tether-bench}"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/disk-$(date +%Y%m%d-%H%M%S)}"
QUICK="${DISK_BENCH_QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
  : "${REPS:=1}" "${RESTART_REPS:=1}" "${SECS:=1}" "${FILL_COUNT:=50000}" "${CHANNELS:=500}"
  : "${CRASH_SECS:=2}" "${CRASH_AT:=1}"
fi
REPS="${REPS:-3}"
RESTART_REPS="${RESTART_REPS:-3}"
SECS="${SECS:-5}"
PUBLISHERS="${PUBLISHERS:-1 16 64}"
CASES="${CASES:-memory disk-always disk-interval}"
PARTS="${PARTS:-throughput restart crash}"
CHANNELS="${CHANNELS:-10000}"
SIZE="${SIZE:-100}"
HISTORY_SIZE=100
FILL_COUNT="${FILL_COUNT:-1000000}"
FSYNC_INTERVAL="${FSYNC_INTERVAL:-100ms}"
# engine.disk.checkpoint_interval (the engine's default, 1m, when empty); a short one makes
# checkpoints fall among the writes of the crash part.
CHECKPOINT_INTERVAL="${CHECKPOINT_INTERVAL:-}"
CRASH_SECS="${CRASH_SECS:-4}"
CRASH_AT="${CRASH_AT:-2}"
CRASH_REPS="${CRASH_REPS:-1}"
EVICT="${EVICT:-1}"
# The engine of the restart part (memory: a control, to try the harness without the disk engine).
RESTART_CASE="${RESTART_CASE:-disk-always}"
TIMEOUT="${TIMEOUT:-900}"
SKIP_BUILD="${SKIP_BUILD:-0}"
# The stores live here (same disk as the rest of the machine); removed at the end.
DATA_ROOT="${DATA_ROOT:-$CARGO_TARGET_DIR/disk-bench-data}"
mkdir -p "$OUT" "$DATA_ROOT"

if [[ "$SKIP_BUILD" != 1 ]]; then
  # Two commands: `--bin tether` would apply to tether-bench's package too and skip its binary.
  cargo build --release -p tether-server --bin tether
  cargo build --release -p tether-bench --bin tether-bench
fi

tmp="$(mktemp -d "$DATA_ROOT/run.XXXXXX")"
# Cases whose node did not start; any makes the run fail at the end.
failures=0
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

load() { echo "$(date -u +%H:%M:%S) $1: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt" >&2; }

# engine_json CASE DIR: the `engine` section of a case.
engine_json() {
  local extra=""
  [[ -n "$CHECKPOINT_INTERVAL" ]] && extra=", \"checkpoint_interval\": \"$CHECKPOINT_INTERVAL\""
  case "$1" in
    memory) echo '{ "type": "memory" }' ;;
    disk-always) echo "{ \"type\": \"disk\", \"disk\": { \"path\": \"$2\", \"fsync\": \"always\"$extra } }" ;;
    disk-interval)
      echo "{ \"type\": \"disk\", \"disk\": { \"path\": \"$2\", \"fsync\": \"interval\", \"fsync_interval\": \"$FSYNC_INTERVAL\"$extra } }"
      ;;
    *) echo "unknown case $1" >&2; return 2 ;;
  esac
}

# tether_config PORT CASE DIR: a node on PORT with the case's engine on DIR.
tether_config() {
  cat <<JSON
{
  "http_server": { "address": "127.0.0.1", "port": $1 },
  "tcp": { "enabled": false },
  "client": { "token": { "hmac_secret_key": "bench-secret" } },
  "channel": {
    "namespaces": [ { "name": "hist", "history_size": $HISTORY_SIZE, "history_ttl": "1h" } ]
  },
  "engine": $(engine_json "$2" "$3"),
  "http_api": { "key": "bench-api-key" },
  "log": { "level": "warn" }
}
JSON
}

# start CASE DIR LOG: writes the config, spawns `tether serve` in the background (sets $node
# and $port and $spawned_ns, the wall clock just before the spawn). Does not wait.
start() {
  port="$(free_port 18800)"
  tether_config "$port" "$1" "$2" >"$tmp/$1.json"
  spawned_ns="$(date +%s%N)"
  "$TETHER" serve --config "$tmp/$1.json" >>"$OUT/$3" 2>&1 &
  node=$!
  pids+=("$node")
}

# start_fresh CASE DIR LOG: a node of CASE on an emptied store DIR, waited for until it serves;
# when it does not start, says so, counts the failure, stops it and returns 1.
start_fresh() {
  rm -rf "$2" && mkdir -p "$2"
  start "$1" "$2" "$3"
  if ! ready_json 0 >/dev/null; then
    echo "$1 did not start (see $OUT/$3)" >&2
    failures=$((failures + 1))
    stop
    return 1
  fi
}

# bench ARGS...: tether-bench bounded by TIMEOUT.
bench() { timeout --kill-after=10 "$TIMEOUT" "$BENCH" "$@"; }

# ready_json MIN: waits for the node started last to serve h:0 with MIN publications.
ready_json() {
  bench history ready --api "127.0.0.1:$port" --channel hist:0 --min "$1" \
    --since-unix-ns "$spawned_ns" --json
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# stop_node SIGNAL: stops $node with SIGTERM (waits up to 60 s) or SIGKILL; sets $stopped_ms
# to the time it took to exit.
stop_node() {
  local t0 t1
  t0="$(date +%s%N)"
  kill "-$1" "$node" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$node" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$node" 2>/dev/null; then
    echo "node $node did not stop within 60 s of SIG$1; killed" >&2
    kill -9 "$node" 2>/dev/null || true
  fi
  wait "$node" 2>/dev/null || true
  t1="$(date +%s%N)"
  pids=()
  stopped_ms=$(((t1 - t0) / 1000000))
}

# evict DIR: writes the store's files back and drops them from the page cache (the virtio
# host may still cache them).
evict() {
  [[ "$EVICT" == 1 ]] || return 0
  find "$1" -type f -print0 | while IFS= read -r -d '' f; do
    sync "$f" 2>/dev/null || true
    dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true
  done
}

throughput() {
  load "throughput start"
  for rep in $(seq 1 "$REPS"); do
    for case in $CASES; do
      echo "== throughput rep $rep of $REPS: $case" >&2
      dir="$tmp/tp-$case"
      start_fresh "$case" "$dir" "tether-$case.log" || continue
      for n in $PUBLISHERS; do
        if bench history publish --api "127.0.0.1:$port" --publishers "$n" \
          --channels "$CHANNELS" --size "$SIZE" --secs "$SECS" --json >"$tmp/one.json"; then
          jq -c --arg case "$case" --argjson rep "$rep" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
            '. + {case: $case, rep: $rep, load: $load}' "$tmp/one.json" | tee -a "$OUT/throughput.jsonl" |
            jq -r '"\(.case) rep \(.rep) \(.result.publishers) publishers: \(.result.acked_per_s | floor)/s p99 \(.result.p99_us) us failed \(.result.failed) \(.result.errors)"' >&2
        else
          echo "$case: publish with $n publishers failed" >&2
        fi
      done
      echo "{\"case\":\"$case\",\"rep\":$rep,\"rss_kib\":$(rss_kib "$node"),\"disk_bytes\":$(du -sb "$dir" | cut -f1)}" \
        >>"$OUT/throughput-node.jsonl"
      stop
      rm -rf "$dir"
    done
  done
  load "throughput end"
}

# idle_rss CASE: RSS of a node that has started and served one (empty) history call.
idle_rss() {
  local dir="$tmp/idle-$1"
  start_fresh "$1" "$dir" "tether-idle-$1.log" || return 0
  sleep 1
  echo "{\"kind\":\"idle\",\"case\":\"$1\",\"rep\":$rep,\"rss_kib\":$(rss_kib "$node")}" >>"$OUT/rss.jsonl"
  stop
  rm -rf "$dir"
}

restart() {
  load "restart start"
  # The memory engine (RESTART_CASE=memory, a control) forgets everything on restart.
  local per_channel=$((FILL_COUNT / CHANNELS))
  [[ "$RESTART_CASE" == memory ]] && per_channel=0
  for rep in $(seq 1 "$RESTART_REPS"); do
    idle_rss "$RESTART_CASE"
    [[ "$RESTART_CASE" == memory ]] || idle_rss memory
    if [[ "$rep" == 1 ]]; then
      echo "== memory engine holding the fill" >&2
      start memory "$tmp" tether-memory-fill.log
      if ready_json 0 >/dev/null && bench history fill --api "127.0.0.1:$port" \
        --count "$FILL_COUNT" --channels "$CHANNELS" --size "$SIZE" --json >"$tmp/fill.json"; then
        jq -c '. + {case: "memory"}' "$tmp/fill.json" >>"$OUT/fill.jsonl"
        sleep 1
        echo "{\"kind\":\"filled\",\"case\":\"memory\",\"rep\":$rep,\"rss_kib\":$(rss_kib "$node")}" >>"$OUT/rss.jsonl"
      else
        echo "memory fill failed" >&2
      fi
      stop
    fi
    for how in clean crash; do
      echo "== restart rep $rep of $RESTART_REPS: $how" >&2
      dir="$tmp/store"
      start_fresh "$RESTART_CASE" "$dir" "tether-restart.log" || continue
      if ! bench history fill --api "127.0.0.1:$port" --count "$FILL_COUNT" --channels "$CHANNELS" \
        --size "$SIZE" --record "$tmp/fill.rec" --json >"$tmp/fill.json"; then
        echo "fill failed: $(cat "$tmp/fill.json")" >&2
        stop
        continue
      fi
      jq -c --arg case "$RESTART_CASE" --arg how "$how" --argjson rep "$rep" '. + {case: $case, how: $how, rep: $rep}' \
        "$tmp/fill.json" | tee -a "$OUT/fill.jsonl" | jq -r '"fill: \(.result.acked_per_s | floor)/s"' >&2
      local rss_filled
      rss_filled="$(rss_kib "$node")"
      if [[ "$how" == clean ]]; then stop_node TERM; else stop_node KILL; fi
      evict "$dir"
      local bytes blocks
      ls -ls "$dir" >"$OUT/store-$how-$rep.txt"
      bytes="$(du -sb "$dir" | cut -f1)"
      blocks="$(du -sB1 "$dir" | cut -f1)"
      start "$RESTART_CASE" "$dir" "tether-restart.log"
      if ! ready_json "$per_channel" >"$tmp/ready.json"; then
        echo "restart ($how) did not serve: $(cat "$tmp/ready.json")" >&2
        stop
        continue
      fi
      local rss_ready rss_read verify_ok=true
      rss_ready="$(rss_kib "$node")"
      bench history verify --api "127.0.0.1:$port" --record "$tmp/fill.rec" \
        --history-size "$HISTORY_SIZE" --json >"$tmp/verify.json" || verify_ok=false
      rss_read="$(rss_kib "$node")"
      jq -c --arg how "$how" --argjson rep "$rep" --argjson stop_ms "$stopped_ms" \
        --argjson bytes "$bytes" --argjson blocks "$blocks" --argjson count "$FILL_COUNT" \
        --argjson size "$SIZE" --argjson rss_filled "$rss_filled" --argjson rss_ready "$rss_ready" \
        --argjson rss_read "$rss_read" --argjson verified "$verify_ok" \
        --slurpfile verify "$tmp/verify.json" \
        --arg case "$RESTART_CASE" \
        '{case: $case, how: $how, rep: $rep, ready_ms: .result.ready_ms, serving_ms: .result.serving_ms,
          publications: .result.publications, stop_ms: $stop_ms, disk_bytes: $bytes,
          disk_blocks: $blocks,
          overhead_per_pub: (($bytes / $count) - $size), overhead_blocks_per_pub: (($blocks / $count) - $size),
          rss_filled_kib: $rss_filled, rss_ready_kib: $rss_ready, rss_read_kib: $rss_read,
          verified: $verified, verify: $verify[0].result}' "$tmp/ready.json" |
        tee -a "$OUT/restart.jsonl" |
        jq -r '"restart \(.how): ready \(.ready_ms | round) ms, serving \(.serving_ms | round) ms; rss \(.rss_ready_kib) KiB; \(.overhead_per_pub) B/pub over payload; verify: \(.verify.kept) kept \(.verify.epoch_changed) epoch-changed \(.verify.lost) LOST"' >&2
      stop
      rm -rf "$dir" "$tmp/fill.rec"
    done
  done
  load "restart end"
}

crash() {
  load "crash start"
  for rep in $(seq 1 "$CRASH_REPS"); do
  for case in $CASES; do
    echo "== kill -9 under load, rep $rep of $CRASH_REPS: $case" >&2
    dir="$tmp/crash-$case"
    start_fresh "$case" "$dir" "tether-crash-$case.log" || continue
    bench history publish --api "127.0.0.1:$port" --publishers 64 --channels "$CHANNELS" \
      --size "$SIZE" --secs "$CRASH_SECS" --record "$tmp/crash.rec" --json >"$tmp/crash-pub.json" &
    local pub=$!
    sleep "$CRASH_AT"
    stop_node KILL
    wait "$pub" || true
    start "$case" "$dir" "tether-crash-$case.log"
    if ! ready_json 0 >/dev/null; then
      echo "$case did not restart after kill -9 (see $OUT/tether-crash-$case.log)" >&2
      stop
      continue
    fi
    local verify_ok=true
    bench history verify --api "127.0.0.1:$port" --record "$tmp/crash.rec" \
      --history-size "$HISTORY_SIZE" --json >"$tmp/crash-verify.json" || verify_ok=false
    jq -c --arg case "$case" --argjson verified "$verify_ok" --slurpfile pub "$tmp/crash-pub.json" \
      --argjson rep "$rep" --arg checkpoint "${CHECKPOINT_INTERVAL:-default}" \
      '{case: $case, rep: $rep, checkpoint_interval: $checkpoint, verified: $verified, publish: $pub[0].result, verify: .result}' \
      "$tmp/crash-verify.json" | tee -a "$OUT/crash.jsonl" |
      jq -r '"crash \(.case): \(.publish.acked) acked before and around the kill; \(.verify.kept) kept, \(.verify.trimmed) trimmed, \(.verify.epoch_changed) epoch-changed, \(.verify.lost) LOST \(.verify.lost_examples)"' >&2
    stop
    rm -rf "$dir" "$tmp/crash.rec"
  done
  done
  load "crash end"
}

for part in $PARTS; do
  case "$part" in
    throughput) throughput ;;
    restart) restart ;;
    crash) crash ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done

scripts/bench/disk-table.sh "$OUT" | tee "$OUT/disk-table.md"
echo "results: $OUT" >&2
if ((failures > 0)); then
  echo "disk bench: $failures case(s) did not start" >&2
  exit 1
fi
