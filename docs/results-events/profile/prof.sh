#!/usr/bin/env bash
# ad hoc: perf profile of tether during churn, events off vs on
set -eu
cd /work/wt-bench
source scripts/bench/lib.sh
B=/work/target-bench/release
O=/work/target-bench/prof
"$B/tether-bench" receiver --listen 127.0.0.1:18091 --secret s --every 0s > $O/recv.json 2>$O/recv.log &
rp=$!
wait_port 18091
for mode in off on; do
  env_=(TETHER_HTTP_SERVER_PORT=18011 TETHER_TCP_ENABLED=false)
  [[ $mode == on ]] && env_+=(TETHER_WEBHOOK_ENDPOINT=http://127.0.0.1:18091/e TETHER_WEBHOOK_SECRET=s)
  env "${env_[@]}" "$B/tether" serve --config scripts/bench/tether.json > $O/tether-$mode.log 2>&1 &
  tp=$!
  wait_port 18011; sleep 1
  "$B/tether-bench" churn --duration 12s --concurrency 128 --workers 2 --addr 127.0.0.1:18011 --pid $tp --json > $O/churn-$mode.json 2>/dev/null &
  cp=$!
  sleep 2
  perf record -F 499 -g -p $tp -o $O/perf-$mode.data -- sleep 8 2>/dev/null >/dev/null
  wait $cp
  curl -s http://127.0.0.1:18011/metrics | grep -E '^tether_webhook' > $O/metrics-$mode.txt || true
  stop_pids $tp
  sleep 2
done
stop_pids $rp
