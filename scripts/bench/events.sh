#!/usr/bin/env bash
# Lifecycle events (issue 20): what they cost, events off against on in the same run, and how
# many a local receiver gets.
#
#   scripts/bench/events.sh
#   ROUNDS=1 IDLE_N=2000 CHURN_TIME=3s scripts/bench/events.sh      # a quick smoke
#
# Builds tether and tether-bench (release), starts `tether-bench receiver` (the webhook
# backend: checks each batch's X-Tether-Signature, counts events) on 127.0.0.1:$RECV_PORT,
# then for each round and each case a fresh tether on 127.0.0.1:$PORT (18010) with
# scripts/bench/tether.json, either as is ("off") or with TETHER_WEBHOOK_ENDPOINT pointing at
# the receiver and TETHER_WEBHOOK_SECRET set ("on"; user_status off, every event type,
# the other webhook.* at their defaults). Off and on alternate within a round, and which goes
# first alternates between rounds:
#
#   idle:  tether-bench idle -n $IDLE_N --window $IDLE_WINDOW   -> server RSS per idle connection
#   churn: tether-bench churn --duration $CHURN_TIME ...        -> connect/subscribe/close cycles/s
#
# Around each churn: the machine's busy CPU (/proc/stat, so what other processes took shows)
# and the receiver's CPU; with events on, the receiver's count before, right after and once
# the node has drained (its webhook buffer at 0 and nothing new for a second, after the
# offline grace), and the node's tether_webhook_{delivered,dropped,failures}_total and
# tether_webhook_buffer_events. Records (one JSON line per case) go to $OUT/events.jsonl;
# per-case lines and the table of medians and on/off ratios are printed and written to
# $OUT/summary.txt. Exits non-zero at once if a server, the receiver or a bench command does
# not start or produces no record, and at the end if any case was incomplete (clients not
# connected, churn errors, events dropped or refused, a buffer that did not drain).
# Knobs (environment): ROUNDS (3), CASES ("idle churn"), IDLE_N (15000), IDLE_WINDOW (5s),
# CHURN_TIME (12s), CHURN_CONC (128), CHURN_WORKERS (2), PORT (18010), RECV_PORT (18090),
# ON_EXTRA (more VAR=value for the "on" node, e.g. "TETHER_WEBHOOK_BATCH_MAX_SIZE=1000"),
# OUT, SKIP_BUILD=1; TABLE_ONLY=DIR reprints the table of an earlier run's records.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=lib.sh
source scripts/bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
OUT="${OUT:-$CARGO_TARGET_DIR/bench-results/events-$(date +%Y%m%d-%H%M%S)}"
ROUNDS="${ROUNDS:-3}"
IDLE_N="${IDLE_N:-15000}"
IDLE_WINDOW="${IDLE_WINDOW:-5s}"
CHURN_TIME="${CHURN_TIME:-12s}"
CHURN_CONC="${CHURN_CONC:-128}"
CHURN_WORKERS="${CHURN_WORKERS:-2}"
# Not tether.json's 18000: the interop suite (tests/interop/tether.json) listens there too, and
# may run on the same machine; the port is overridden with TETHER_HTTP_SERVER_PORT.
PORT="${PORT:-18010}"
RECV_PORT="${RECV_PORT:-18090}"
SECRET="${SECRET:-bench-webhook-secret}"
DRAIN_LIMIT="${DRAIN_LIMIT:-30}" # seconds after a case's load to wait for the node to drain
GRACE_S=5                        # webhook.offline_grace (default): user_offline/channel_vacated come this late
SKIP_BUILD="${SKIP_BUILD:-0}"
# ON_EXTRA: more VAR=value settings for the "on" node only, space-separated, e.g.
# ON_EXTRA="TETHER_WEBHOOK_BATCH_MAX_SIZE=1000".
ON_EXTRA="${ON_EXTRA:-}"
CASES="${CASES:-idle churn}"     # which cases to run
command -v jq >/dev/null || { echo "events.sh needs jq" >&2; exit 1; }
command -v curl >/dev/null || { echo "events.sh needs curl" >&2; exit 1; }


die() { echo "FAIL: $*" >&2; exit 1; }

server_pid=""
recv_pid=""
cleanup() { stop_pids "$server_pid" "$recv_pid"; }
trap cleanup EXIT

# port_taken PORT: true when something already answers there.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

recv_stats() { curl -sf --max-time 5 "http://127.0.0.1:$RECV_PORT/stats"; }
recv_events() { recv_stats | jq '.events'; }

# metric NAME: the node's value of a metric without labels (0 when absent).
metric() {
  curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics" \
    | awk -v m="$1" '$1 == m { v = $2 } END { print (v == "" ? 0 : v) + 0 }'
}

# machine_ticks: "<busy> <total>" clock ticks of all CPUs since boot (/proc/stat).
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# cpu_ticks PID: utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# start_tether MODE TAG: a fresh node, events off or on; sets server_pid.
start_tether() {
  local mode=$1 tag=$2
  port_taken "$PORT" && die "port $PORT still in use before $tag"
  local -a env=(TETHER_HTTP_SERVER_PORT="$PORT" TETHER_TCP_ENABLED=false TETHER_USER_STATUS_ENABLED=false)
  if [[ "$mode" == on ]]; then
    env+=(TETHER_WEBHOOK_ENDPOINT="http://127.0.0.1:$RECV_PORT/events"
          TETHER_WEBHOOK_SECRET="$SECRET")
    # shellcheck disable=SC2206
    [[ -n "$ON_EXTRA" ]] && env+=($ON_EXTRA)
  fi
  env "${env[@]}" "$BIN/tether" serve --config scripts/bench/tether.json >"$OUT/tether-$tag.log" 2>&1 &
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

# drain SINCE_EVENTS: waits (up to DRAIN_LIMIT s) until the node's webhook buffer is empty,
# the grace has passed and the receiver got nothing new for a second; prints
# "<seconds waited> <buffer left>".
drain() {
  local t0 prev cur buf ms
  t0=$(date +%s%N)
  prev=$(recv_events)
  while :; do
    sleep 1
    cur=$(recv_events)
    buf=$(metric tether_webhook_buffer_events)
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [[ "$cur" == "$prev" && "$buf" == 0 ]] && ((ms > (GRACE_S + 1) * 1000)); then
      break
    fi
    ((ms > DRAIN_LIMIT * 1000)) && break
    prev=$cur
  done
  awk -v ms="$ms" -v buf="$buf" 'BEGIN { printf "%.3f %d\n", ms / 1000, buf }'
}

# webhook_json: the node's webhook counters as a JSON object.
webhook_json() {
  jq -nc --argjson delivered "$(metric tether_webhook_delivered_total)" \
    --argjson dropped "$(metric tether_webhook_dropped_total)" \
    --argjson failures "$(metric tether_webhook_failures_total)" \
    --argjson buffer "$(metric tether_webhook_buffer_events)" \
    '{delivered: $delivered, dropped: $dropped, failures: $failures, buffer: $buffer}'
}

bad=0
flag() { echo "INCOMPLETE: $*" | tee -a "$OUT/summary.txt" >&2; bad=1; }

# run_idle ROUND MODE
run_idle() {
  local round=$1 mode=$2 tag="r$1-idle-$2" e0 e1 out
  start_tether "$mode" "$tag"
  e0=$(recv_events)
  out=$(timeout 300 "$BIN/tether-bench" idle -n "$IDLE_N" --window "$IDLE_WINDOW" --target tether \
    --addr "127.0.0.1:$PORT" --pid "$server_pid" --label "events-$mode" --json 2>"$OUT/bench-$tag.err" | tail -1) \
    || die "idle ($tag) failed (see $OUT/bench-$tag.err)"
  jq -e '.result.connected' <<<"$out" >/dev/null 2>&1 || die "idle ($tag) produced no record"
  local hook
  hook=$(webhook_json)
  e1=$(recv_events)
  jq -c --argjson round "$round" --arg mode "$mode" --argjson hook "$hook" \
    --argjson received "$((e1 - e0))" \
    '{round: $round, case: "idle", mode: $mode, webhook: $hook, received: $received} + .' \
    <<<"$out" >>"$OUT/events.jsonl"
  jq -r '"round \(.round) idle  \(.mode): \(.result.bytes_per_conn | floor) B/conn, connected \(.result.connected)/\(.result.n) in \(.result.connect_s * 10 | round / 10) s, RSS \(.result.rss_before / 1048576 | . * 10 | round / 10) -> \(.result.rss_after / 1048576 | . * 10 | round / 10) MiB, cpu \(.result.cpu_pct * 100 | round / 100)%" + (if .mode == "on" then ", events received by the end of the bench \(.received), dropped \(.webhook.dropped), buffer \(.webhook.buffer)" else "" end)' \
    <<<"$(tail -1 "$OUT/events.jsonl")" | tee -a "$OUT/summary.txt"
  local rec
  rec=$(tail -1 "$OUT/events.jsonl")
  [[ $(jq '.result.connected == .result.n' <<<"$rec") == true ]] || flag "$tag: not all clients connected"
  if [[ "$mode" == on ]]; then
    [[ $(jq '.webhook.dropped == 0 and .received > 0' <<<"$rec") == true ]] \
      || flag "$tag: events dropped, or none received"
  else
    [[ $(jq '.received == 0' <<<"$rec") == true ]] || flag "$tag: events received with events off"
  fi
  stop_tether
  sleep 2
}

# run_churn ROUND MODE
run_churn() {
  local round=$1 mode=$2 tag="r$1-churn-$2" e0 e1 e2 rc0 rc1 out hook_end hook_drained
  start_tether "$mode" "$tag"
  e0=$(recv_events)
  rc0=$(cpu_ticks "$recv_pid")
  local m0 m1
  m0=$(machine_ticks)
  out=$(timeout 120 "$BIN/tether-bench" churn --duration "$CHURN_TIME" --concurrency "$CHURN_CONC" \
    --workers "$CHURN_WORKERS" --target tether --addr "127.0.0.1:$PORT" --pid "$server_pid" \
    --label "events-$mode" --json 2>"$OUT/bench-$tag.err" | tail -1) \
    || die "churn ($tag) failed (see $OUT/bench-$tag.err)"
  m1=$(machine_ticks)
  e1=$(recv_events)
  rc1=$(cpu_ticks "$recv_pid")
  jq -e '.result.cycles' <<<"$out" >/dev/null 2>&1 || die "churn ($tag) produced no record"
  hook_end=$(webhook_json)
  local drained="0 0"
  if [[ "$mode" == on ]]; then drained=$(drain); fi
  hook_drained=$(webhook_json)
  e2=$(recv_events)
  local hz
  hz=$(getconf CLK_TCK)
  jq -c --argjson round "$round" --arg mode "$mode" --argjson at_end "$hook_end" \
    --argjson drained_hook "$hook_drained" --argjson during "$((e1 - e0))" \
    --argjson total "$((e2 - e0))" --argjson drain_s "${drained% *}" \
    --argjson recv_cpu "$(awk -v t=$((rc1 - rc0)) -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')" \
    --argjson ncpu "$(nproc)" --argjson machine_busy "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.4f", (y[1] - x[1]) / (y[2] - x[2]) }')" \
    '{round: $round, case: "churn", mode: $mode,
      webhook_at_end: $at_end, webhook_drained: $drained_hook,
      received_during: $during, received_total: $total, drain_s: $drain_s,
      received_per_s: ($during / .result.elapsed_s),
      receiver_cpu_pct: ($recv_cpu / .result.elapsed_s * 100),
      machine_busy_pct: ($machine_busy * $ncpu * 100),
      others_cpu_pct: ($machine_busy * $ncpu * 100 - .result.cpu_pct - .result.clients_cpu_pct - ($recv_cpu / .result.elapsed_s * 100)),
      server_cpu_us_per_cycle: (.result.cpu_pct / 100 / .result.cycles_per_s * 1e6)} + .' \
    <<<"$out" >>"$OUT/events.jsonl"
  local rec
  rec=$(tail -1 "$OUT/events.jsonl")
  jq -r '"round \(.round) churn \(.mode): \(.result.cycles_per_s | floor) cycles/s (\(.result.cycles) cycles, \(.result.errors) errors, p50 \(.result.p50_ms) ms, p99 \(.result.p99_ms) ms), server cpu \(.result.cpu_pct | floor)% (\(.server_cpu_us_per_cycle | floor) µs/cycle), clients cpu \(.result.clients_cpu_pct | floor)%, machine busy \(.machine_busy_pct | floor)% (100 per core; others \(.others_cpu_pct | floor)%)" + (if .mode == "on" then ", receiver: \(.received_per_s | floor) events/s during the churn (\(.received_during)), \(.received_total) in all = \(.received_total / .result.cycles * 100 | round / 100) per cycle, receiver cpu \(.receiver_cpu_pct | floor)%; node at churn end: buffer \(.webhook_at_end.buffer), delivered \(.webhook_at_end.delivered); drained after \(.drain_s * 10 | round / 10) s: buffer \(.webhook_drained.buffer), delivered \(.webhook_drained.delivered), dropped \(.webhook_drained.dropped), failures \(.webhook_drained.failures)" else "" end)' \
    <<<"$rec" | tee -a "$OUT/summary.txt"
  [[ $(jq '.result.errors == 0' <<<"$rec") == true ]] || flag "$tag: churn errors"
  if [[ "$mode" == on ]]; then
    [[ $(jq '.webhook_drained.dropped == 0 and .webhook_drained.buffer == 0 and .received_total > 0 and .received_total == .webhook_drained.delivered' <<<"$rec") == true ]] \
      || flag "$tag: events dropped, not drained, or receiver count != node's delivered"
  else
    [[ $(jq '.received_total == 0' <<<"$rec") == true ]] || flag "$tag: events received with events off"
  fi
  stop_tether
  sleep 2
}

# table FILE: medians over rounds, and the median of the per-round on/off ratios.
table() {
jq -s -r '
def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
def r2: if . == null then null else . * 100 | round / 100 end;
def r3: if . == null then null else . * 1000 | round / 1000 end;
def row($name; $case; f):
  (map(select(.case == $case))) as $c
  | ($c | map(select(.mode == "off") | f)) as $off
  | ($c | map(select(.mode == "on") | f)) as $on
  | ([range(0; [$off, $on] | map(length) | min)] | map(if $off[.] == 0 then null else $on[.] / $off[.] end) | map(select(. != null))) as $ratio
  | "| \($name) | \($off | median | r2) | \($on | median | r2) | \($ratio | median | r3) | \($off | map(r2 | tostring) | join(" / ")) | \($on | map(r2 | tostring) | join(" / ")) |";
sort_by(.round)
| "| median of rounds | off | on | on/off (median of per-round ratios) | off per round | on per round |",
  "| --- | ---: | ---: | ---: | --- | --- |",
  row("idle: server RSS bytes/conn"; "idle"; .result.bytes_per_conn),
  row("idle: seconds to connect all"; "idle"; .result.connect_s),
  row("idle: server CPU % of a core (window)"; "idle"; .result.cpu_pct),
  row("churn: cycles/s"; "churn"; .result.cycles_per_s),
  row("churn: cycle p50 ms"; "churn"; .result.p50_ms),
  row("churn: cycle p99 ms"; "churn"; .result.p99_ms),
  row("churn: server CPU % of a core"; "churn"; .result.cpu_pct),
  row("churn: server CPU µs per cycle"; "churn"; .server_cpu_us_per_cycle),
  row("churn: client workers CPU % of a core"; "churn"; .result.clients_cpu_pct),
  row("churn: other processes CPU % (machine busy - server - clients - receiver)"; "churn"; .others_cpu_pct),
  "",
  "| events on, churn (median of rounds) | value | per round |",
  "| --- | ---: | --- |",
  (map(select(.case == "churn" and .mode == "on")) as $on
   | ("events/s received during the churn" , "events received in all per cycle", "webhook buffer at churn end", "seconds to drain after the churn (grace 5 s)", "receiver CPU % of a core", "dropped (sum)", "POST failures (sum)", "receiver count == node delivered") as $k
   | ($on | map(
       if $k == "events/s received during the churn" then .received_per_s | floor
       elif $k == "events received in all per cycle" then .received_total / .result.cycles | r2
       elif $k == "webhook buffer at churn end" then .webhook_at_end.buffer
       elif $k == "seconds to drain after the churn (grace 5 s)" then .drain_s | . * 10 | round / 10
       elif $k == "receiver CPU % of a core" then .receiver_cpu_pct | floor
       elif $k == "dropped (sum)" then .webhook_drained.dropped
       elif $k == "POST failures (sum)" then .webhook_drained.failures
       else (.received_total == .webhook_drained.delivered) end)) as $v
   | if ($k | endswith("(sum)")) then "| \($k) | \($v | add) | \($v | map(tostring) | join(" / ")) |"
     elif $k == "receiver count == node delivered" then "| \($k) | \($v | all) | \($v | map(tostring) | join(" / ")) |"
     else "| \($k) | \($v | median) | \($v | map(tostring) | join(" / ")) |" end)
' "$1"
}

# TABLE_ONLY=DIR: only print the table of an earlier run's records.
if [[ -n "${TABLE_ONLY:-}" ]]; then table "$TABLE_ONLY/events.jsonl"; exit 0; fi

if [[ "$SKIP_BUILD" != 1 ]]; then
  cargo build --release -p tether-server -p tether-bench
fi
for b in tether tether-bench; do
  [[ -x "$BIN/$b" ]] || { echo "FAIL: $BIN/$b not built" >&2; exit 1; }
done
mkdir -p "$OUT"

port_taken "$PORT" && die "port $PORT is already in use (not ours)"
port_taken "$RECV_PORT" && die "port $RECV_PORT is already in use (not ours)"

"$BIN/tether-bench" receiver --listen "127.0.0.1:$RECV_PORT" --secret "$SECRET" --every 1s \
  >"$OUT/receiver-summary.json" 2>"$OUT/receiver.log" &
recv_pid=$!
wait_port "$RECV_PORT" || die "the receiver did not start (see $OUT/receiver.log)"

recv_stats >/dev/null || die "the receiver does not answer GET /stats"

{
  echo "events.sh at $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty'), $(date -u +%FT%TZ)"
  echo "CASES=\"$CASES\" ON_EXTRA=\"$ON_EXTRA\" ROUNDS=$ROUNDS IDLE_N=$IDLE_N IDLE_WINDOW=$IDLE_WINDOW CHURN_TIME=$CHURN_TIME CHURN_CONC=$CHURN_CONC CHURN_WORKERS=$CHURN_WORKERS"
  echo "load before: $(cat /proc/loadavg)"
} | tee "$OUT/summary.txt"

for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 == 1 )); then order="off on"; else order="on off"; fi
  if [[ " $CASES " == *" idle "* ]]; then for mode in $order; do run_idle "$round" "$mode"; done; fi
  if [[ " $CASES " == *" churn "* ]]; then for mode in $order; do run_churn "$round" "$mode"; done; fi
  echo "load after round $round: $(cat /proc/loadavg)" | tee -a "$OUT/summary.txt"
done

stop_pids "$recv_pid"
recv_pid=""
echo "receiver totals: $(cat "$OUT/receiver-summary.json")" | tee -a "$OUT/summary.txt"

table "$OUT/events.jsonl" | tee -a "$OUT/summary.txt"

echo "records: $OUT/events.jsonl" >&2
if (( bad )); then
  echo "FAIL: some case was incomplete (see INCOMPLETE lines above)" >&2
  exit 1
fi
