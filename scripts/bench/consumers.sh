#!/usr/bin/env bash
# Async consumers (issue 21): tether's PostgreSQL outbox consumer end to end, NOTIFY on
# against off in the same run.
#
#   scripts/bench/consumers.sh
#   ROUNDS=1 ROWS=20000 LAT_ROWS=2000 scripts/bench/consumers.sh     # a quick smoke
#
# Builds tether and tether-bench (release). For each round and each case ("notify", "poll")
# it (re)creates the outbox table $TABLE in $DSN (Centrifugo's schema; the NOTIFY trigger of
# compat-consumers.md §3.2 in the notify case only), starts a fresh tether on 127.0.0.1:$PORT
# (scripts/bench/tether.json, memory engine) with one consumer from TETHER_CONSUMERS
# (postgresql, $PARTITIONS partitions, partition_select_limit $SELECT_LIMIT, poll interval
# 300ms; partition_notification_channel set in the notify case), and runs
#
#   tether-bench outbox --rows $ROWS --batch $BATCH --rate $RATE --latency-rows $LAT_ROWS
#
# which subscribes one client per partition channel, then (1) inserts ROWS rows over the
# partitions from one producer connection each, BATCH rows per transaction, as fast as they
# commit -> rows/s end to end and the insert rate alone; (2) inserts LAT_ROWS single-row
# transactions paced at RATE rows/s -> commit-to-delivery p50/p99/max; and checks that every
# row was delivered exactly once, in order per partition, and that the outbox is empty at the
# end (the bench exits non-zero otherwise). Around each case: tether's CPU and the machine's
# busy CPU (/proc/stat: what the other processes took shows). The two cases alternate within
# a round and which goes first alternates between rounds. Records (one JSON line per case)
# go to $OUT/consumers.jsonl, the table of medians to $OUT/summary.txt.
# Knobs (environment): ROUNDS (3), ROWS (100000), BATCH (100), RATE (500), LAT_ROWS (6000),
# PARTITIONS (4), SELECT_LIMIT (100), PORT (18020), DSN, TABLE (bench_outbox), OUT,
# SKIP_BUILD=1, TIMEOUT (60s: per phase, for the rows to arrive); TABLE_ONLY=DIR reprints
# the table of an earlier run's records.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/consumers-$(date +%Y%m%d-%H%M%S)}"
ROUNDS="${ROUNDS:-3}"
ROWS="${ROWS:-100000}"
BATCH="${BATCH:-100}"
RATE="${RATE:-500}"
LAT_ROWS="${LAT_ROWS:-6000}"
PARTITIONS="${PARTITIONS:-4}"
SELECT_LIMIT="${SELECT_LIMIT:-100}"
# Not 18000 (the interop suite) nor 18010 (events.sh).
PORT="${PORT:-18020}"
DSN="${DSN:-host=127.0.0.1 port=5432 user=postgres dbname=test}"
TABLE="${TABLE:-bench_outbox}"
CHANNEL="${CHANNEL:-bench_outbox_change}"
TIMEOUT="${TIMEOUT:-60s}"
SKIP_BUILD="${SKIP_BUILD:-0}"
command -v jq >/dev/null || { echo "consumers.sh needs jq" >&2; exit 1; }
command -v curl >/dev/null || { echo "consumers.sh needs curl" >&2; exit 1; }

die() { echo "FAIL: $*" >&2; exit 1; }

server_pid=""
cleanup() { stop_pids "$server_pid"; }
trap cleanup EXIT

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# machine_ticks: "<busy> <total>" clock ticks of all CPUs since boot (/proc/stat).
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# cpu_ticks PID: utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# consumers_json MODE: the TETHER_CONSUMERS value of a case.
consumers_json() {
  local channel=""
  [[ "$1" == notify ]] && channel="$CHANNEL"
  jq -nc --arg dsn "$DSN" --arg table "$TABLE" --arg channel "$channel" \
    --argjson parts "$PARTITIONS" --argjson limit "$SELECT_LIMIT" \
    '[{name: "bench_outbox", enabled: true, type: "postgresql",
       postgresql: {dsn: $dsn, outbox_table_name: $table, num_partitions: $parts,
                    partition_select_limit: $limit, partition_poll_interval: "300ms",
                    partition_notification_channel: $channel}}]'
}

# start_tether MODE TAG: a fresh node with the case's consumer; sets server_pid.
start_tether() {
  local mode=$1 tag=$2
  port_taken "$PORT" && die "port $PORT still in use before $tag"
  TETHER_HTTP_SERVER_PORT="$PORT" TETHER_TCP_ENABLED=false TETHER_USER_STATUS_ENABLED=false \
    TETHER_ENGINE_TYPE=memory TETHER_CONSUMERS="$(consumers_json "$mode")" \
    "$BIN/tether" serve --config scripts/bench/tether.json >"$OUT/tether-$tag.log" 2>&1 &
  server_pid=$!
  wait_port "$PORT" || die "tether ($tag) did not start (see $OUT/tether-$tag.log)"
  for _ in $(seq 1 50); do
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$PORT/health" && break
    sleep 0.1
  done
  curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$PORT/health" \
    || die "tether ($tag) does not answer /health"
  sleep 1
}

stop_tether() { stop_pids "$server_pid"; server_pid=""; }

bad=0
flag() { echo "INCOMPLETE: $*" | tee -a "$OUT/summary.txt" >&2; bad=1; }

# run_case ROUND MODE
run_case() {
  local round=$1 mode=$2 tag="r$1-$2" out rc=0
  local -a notify=()
  [[ "$mode" == notify ]] && notify=(--notify-channel "$CHANNEL")
  timeout 30 "$BIN/tether-bench" outbox --create-only --dsn "$DSN" --table "$TABLE" "${notify[@]}" \
    || die "could not create $TABLE ($tag)"
  start_tether "$mode" "$tag"
  local c0 m0 c1 m1 hz
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$server_pid")
  m0=$(machine_ticks)
  out=$(timeout 600 "$BIN/tether-bench" outbox --addr "127.0.0.1:$PORT" --dsn "$DSN" \
    --table "$TABLE" --partitions "$PARTITIONS" "${notify[@]}" --rows "$ROWS" --batch "$BATCH" \
    --rate "$RATE" --latency-rows "$LAT_ROWS" --timeout "$TIMEOUT" --label "$mode" --json \
    2>"$OUT/bench-$tag.err" | tail -1) || rc=$?
  c1=$(cpu_ticks "$server_pid")
  m1=$(machine_ticks)
  jq -e '.result.checks' <<<"$out" >/dev/null 2>&1 \
    || die "outbox ($tag) produced no record (exit $rc; see $OUT/bench-$tag.err)"
  ((rc == 0)) || flag "$tag: tether-bench outbox exited $rc ($(tail -1 "$OUT/bench-$tag.err"))"
  local secs
  secs=$(jq '.result.throughput.end_to_end_s + .result.latency.rows / .result.latency.achieved_rate' <<<"$out")
  jq -c --argjson round "$round" --arg mode "$mode" --argjson hz "$hz" --argjson ncpu "$(nproc)" \
    --argjson server_ticks "$((c1 - c0))" --arg m0 "$m0" --arg m1 "$m1" \
    --argjson select_limit "$SELECT_LIMIT" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '($m0 | split(" ") | map(tonumber)) as $a | ($m1 | split(" ") | map(tonumber)) as $b
     | {round: $round, mode: $mode, select_limit: $select_limit, loadavg: $load,
        server_cpu_s: ($server_ticks / $hz),
        machine_busy_pct: (($b[0] - $a[0]) / ($b[1] - $a[1]) * $ncpu * 100)} + .' \
    <<<"$out" >>"$OUT/consumers.jsonl"
  jq -r '"round \(.round) \(.mode): \(.result.throughput.rows_per_s | floor) rows/s end to end (inserts alone \(.result.throughput.insert_rows_per_s | floor) rows/s, tail \(.result.throughput.tail_s * 1000 | floor) ms); latency at \(.result.latency.achieved_rate | floor)/s: p50 \(.result.latency.p50_ms) ms, p99 \(.result.latency.p99_ms) ms, max \(.result.latency.max_ms) ms (insert p50 \(.result.latency.insert_p50_ms) ms); checks ok=\(.result.checks.ok) (missing \(.result.checks.missing), dup \(.result.checks.duplicates), out of order \(.result.checks.out_of_order), left \(.result.checks.outbox_left)); tether cpu \(.server_cpu_s | . * 10 | round / 10) s; machine busy \(.machine_busy_pct | floor)% (100 per core), load \(.loadavg)"' \
    <<<"$(tail -1 "$OUT/consumers.jsonl")" | tee -a "$OUT/summary.txt"
  [[ $(jq '.result.checks.ok' <<<"$out") == true ]] || flag "$tag: checks failed"
  grep -qi "skipped\|retried" "$OUT/tether-$tag.log" && flag "$tag: tether skipped or retried rows (see $OUT/tether-$tag.log)"
  stop_tether
  sleep 1
}

# table FILE: medians over rounds per mode, and the targets.
table() {
jq -s -r '
def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
def r1: if . == null then null else . * 10 | round / 10 end;
def row($name; f):
  (map(select(.mode == "notify") | f)) as $on
  | (map(select(.mode == "poll") | f)) as $off
  | "| \($name) | \($on | median | r1) | \($off | median | r1) | \($on | map(r1 | tostring) | join(" / ")) | \($off | map(r1 | tostring) | join(" / ")) |";
sort_by(.round)
| "| median of \(map(.round) | unique | length) rounds | NOTIFY on | NOTIFY off (poll 300 ms) | on, per round | off, per round |",
  "| --- | ---: | ---: | --- | --- |",
  row("throughput: rows/s end to end"; .result.throughput.rows_per_s),
  row("throughput: inserts alone, rows/s"; .result.throughput.insert_rows_per_s),
  row("throughput: tail after the last insert, ms"; .result.throughput.tail_s * 1000),
  row("latency: commit-to-delivery p50 ms"; .result.latency.p50_ms),
  row("latency: p99 ms"; .result.latency.p99_ms),
  row("latency: max ms"; .result.latency.max_ms),
  row("latency: single-row INSERT round trip p50 ms"; .result.latency.insert_p50_ms),
  row("latency: achieved rows/s"; .result.latency.achieved_rate),
  row("tether CPU seconds over the case"; .server_cpu_s),
  row("machine busy % over the case (200 = both cores)"; .machine_busy_pct),
  "",
  "checks: \(map(.result.checks.ok) | all) (missing \(map(.result.checks.missing) | add), duplicates \(map(.result.checks.duplicates) | add), out of order \(map(.result.checks.out_of_order) | add), left in outbox \(map(.result.checks.outbox_left) | add)) over \(length) cases"
' "$1"
}

if [[ -n "${TABLE_ONLY:-}" ]]; then table "$TABLE_ONLY/consumers.jsonl"; exit 0; fi

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi
for b in tether tether-bench; do
  [[ -x "$BIN/$b" ]] || { echo "FAIL: $BIN/$b not built" >&2; exit 1; }
done
mkdir -p "$OUT"
port_taken "$PORT" && die "port $PORT is already in use (not ours)"

{
  echo "consumers.sh at $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty'), $(date -u +%FT%TZ)"
  echo "ROUNDS=$ROUNDS ROWS=$ROWS BATCH=$BATCH RATE=$RATE LAT_ROWS=$LAT_ROWS PARTITIONS=$PARTITIONS SELECT_LIMIT=$SELECT_LIMIT TABLE=$TABLE"
  echo "load before: $(cat /proc/loadavg)"
} | tee "$OUT/summary.txt"

for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2 == 1)); then order="notify poll"; else order="poll notify"; fi
  for mode in $order; do run_case "$round" "$mode"; done
  echo "load after round $round: $(cat /proc/loadavg)" | tee -a "$OUT/summary.txt"
done

table "$OUT/consumers.jsonl" | tee -a "$OUT/summary.txt"
echo "records: $OUT/consumers.jsonl" >&2
if ((bad)); then
  echo "FAIL: some case was incomplete (see INCOMPLETE lines above)" >&2
  exit 1
fi
