#!/usr/bin/env bash
# Tables (markdown) from the records of scripts/bench/disk.sh: medians with every value.
#
#   scripts/bench/disk-table.sh OUT_DIR
#
# Medians are the middle value of the sorted values (the upper middle of an even count).
set -euo pipefail
OUT="${1:?usage: disk-table.sh OUT_DIR}"
command -v jq >/dev/null || { echo "jq not found: no tables" >&2; exit 0; }

JQ_LIB='
def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
def all_values: map(tostring) | join(" / ");
def case_rank: {"memory": 0, "disk-always": 1, "disk-interval": 2}[.] // 9;
'

if [[ -s "$OUT/throughput.jsonl" ]]; then
  echo "### Publications/s (acknowledged), each publisher awaiting its ack before the next"
  echo
  echo "| engine | publishers | median pubs/s | all runs (rep 1 / 2 / 3) | ack p50 µs (median) | ack p99 µs (median) | failed | bench CPU % (median) |"
  echo "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
  jq -s -r "$JQ_LIB"'
    group_by([(.case | case_rank), .result.publishers]) | .[] |
    sort_by(.rep) |
    "| \(.[0].case) | \(.[0].result.publishers) | \(map(.result.acked_per_s | floor) | median) | \(map(.result.acked_per_s | floor) | all_values) | \(map(.result.p50_us) | median) | \(map(.result.p99_us) | median) | \(map(.result.failed) | add) | \(map(.result.client_cpu_pct | floor) | median) |"
  ' "$OUT/throughput.jsonl"
  echo
  echo "### Same-run ratios, disk / memory (per rep, then their median)"
  echo
  echo "| engine | publishers | median ratio | per rep |"
  echo "| --- | ---: | ---: | --- |"
  jq -s -r "$JQ_LIB"'
    (map(select(.case == "memory")) | map({key: "\(.rep) \(.result.publishers)", value: .result.acked_per_s}) | from_entries) as $mem |
    map(select(.case != "memory")) |
    group_by([(.case | case_rank), .result.publishers]) | .[] |
    sort_by(.rep) |
    map(. as $r | $mem["\($r.rep) \($r.result.publishers)"] as $m |
        if $m then (($r.result.acked_per_s / $m * 100 | round) / 100) else null end) as $ratios |
    "| \(.[0].case) | \(.[0].result.publishers) | \($ratios | map(select(. != null)) | median) | \($ratios | all_values) |"
  ' "$OUT/throughput.jsonl"
  echo
fi

if [[ -s "$OUT/restart.jsonl" ]]; then
  echo "### Restart with the fill ($(jq -r .case "$OUT/restart.jsonl" | sort -u | paste -sd,)), spawn to serving"
  echo
  echo "| stop | median ready ms | all | median serving ms (hist:0 history complete) | all | stop took ms | verify (kept / epoch-changed / LOST, per rep) |"
  echo "| --- | ---: | --- | ---: | --- | --- | --- |"
  jq -s -r "$JQ_LIB"'
    group_by(.how) | sort_by(.[0].how) | .[] | sort_by(.rep) |
    "| \(.[0].how) | \(map(.ready_ms | round) | median) | \(map(.ready_ms | round) | all_values) | \(map(.serving_ms | round) | median) | \(map(.serving_ms | round) | all_values) | \(map(.stop_ms) | all_values) | \(map("\(.verify.kept) / \(.verify.epoch_changed) / \(.verify.lost)") | join(", ")) |"
  ' "$OUT/restart.jsonl"
  echo
  echo "### Disk per publication over the payload, and RSS"
  echo
  echo "| stop | bytes/pub over payload (file sizes), median | all | allocated, median | RSS KiB filled (before stop) | RSS KiB restarted, at serving | RSS KiB after reading all back |"
  echo "| --- | ---: | --- | ---: | --- | --- | --- |"
  jq -s -r "$JQ_LIB"'
    group_by(.how) | sort_by(.[0].how) | .[] | sort_by(.rep) |
    "| \(.[0].how) | \(map(.overhead_per_pub * 10 | round / 10) | median) | \(map(.overhead_per_pub * 10 | round / 10) | all_values) | \(map(.overhead_blocks_per_pub * 10 | round / 10) | median) | \(map(.rss_filled_kib) | all_values) | \(map(.rss_ready_kib) | all_values) | \(map(.rss_read_kib) | all_values) |"
  ' "$OUT/restart.jsonl"
  echo
fi

if [[ -s "$OUT/rss.jsonl" ]]; then
  echo "### RSS of reference nodes"
  echo
  echo "| node | median KiB | all |"
  echo "| --- | ---: | --- |"
  jq -s -r "$JQ_LIB"'
    group_by([.kind, .case]) | .[] | sort_by(.rep) |
    "| \(.[0].case), \(if .[0].kind == "idle" then "empty" else "holding the fill" end) | \(map(.rss_kib) | median) | \(map(.rss_kib) | all_values) |"
  ' "$OUT/rss.jsonl"
  echo
fi

if [[ -s "$OUT/fill.jsonl" ]]; then
  echo "### Fills (64 publishers, round-robin)"
  echo
  echo "| engine | stop after | pubs/s, all | ack p99 µs, all |"
  echo "| --- | --- | --- | --- |"
  jq -s -r "$JQ_LIB"'
    group_by([.case, .how]) | .[] | sort_by(.rep) |
    "| \(.[0].case) | \(.[0].how // "-") | \(map(.result.acked_per_s | floor) | all_values) | \(map(.result.p99_us) | all_values) |"
  ' "$OUT/fill.jsonl"
  echo
fi

if [[ -s "$OUT/crash.jsonl" ]]; then
  echo "### kill -9 under load (64 publishers), then every acknowledged publication checked"
  echo
  echo "| engine | rep | checkpoint_interval | acked | kept | trimmed | epoch changed | LOST | verify passed |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"
  jq -s -r "$JQ_LIB"'
    sort_by([(.case | case_rank), .rep]) | .[] |
    "| \(.case) | \(.rep // 1) | \(.checkpoint_interval // "default") | \(.publish.acked) | \(.verify.kept) | \(.verify.trimmed) | \(.verify.epoch_changed) | \(.verify.lost) | \(.verified) |"
  ' "$OUT/crash.jsonl"
  echo
fi

if [[ -s "$OUT/load.txt" ]]; then
  echo "Load average (1, 5, 15 min):"
  echo
  sed 's/^/    /' "$OUT/load.txt"
fi
