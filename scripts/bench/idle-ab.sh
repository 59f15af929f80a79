#!/usr/bin/env bash
# Alternating A/B idle-memory runs of two tether binaries in one run, same config, same bench
# command: put them at $TETHER_A_B_DIR/tether-baseline and $TETHER_A_B_DIR/tether-boxed
# (default /tmp), build tether-bench (`cargo build --release -p tether-bench`, or point BENCH
# at it), then run this script; each line is "<round> <binary> <tether-bench idle --json>".
# Uses port 18000 and 15,000 client connections (spread over 127.0.0.x by tether-bench).
set -u
cd "$(dirname "$0")/../.."
for round in 1 2 3; do
  for v in baseline boxed; do
    TETHER_TCP_ENABLED=false ${TETHER_A_B_DIR:-/tmp}/tether-$v serve --config scripts/bench/tether.json >/tmp/ab-$v.log 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:18000/health && break; sleep 0.1; done
    sleep 1
    out=$(timeout 170 ${BENCH:-target/release/tether-bench} idle -n 15000 --window 5s --target tether --addr 127.0.0.1:18000 --pid $pid --json 2>/dev/null | tail -1)
    echo "$round $v $out"
    kill $pid; wait $pid 2>/dev/null
    sleep 2
  done
done
