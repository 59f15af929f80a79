#!/usr/bin/env bash
# What two tether builds hold per idle connection, split by kind: each build serves its own
# 15,000 idle clients (ports 18400 and 18410), and while they are held the script reads each
# server's anonymous and file-backed RSS (/proc/<pid>/status) and asks glibc, through gdb,
# how much of its heap is in use (`malloc_stats()`, printed to the server's stderr). The heap
# in use per connection is what the connections allocate; RSS also counts the allocator's
# free space and the code pages the run touched.
# Usage: scripts/bench/idle-heap-pair.sh BIN_DIR_A BIN_DIR_B [CLIENTS]
#   BIN_DIR_*: directories holding `tether` (the bench binary is taken from A).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
source scripts/bench/lib.sh
A="$1"; B="$2"; N="${3:-15000}"
command -v gdb >/dev/null || { echo "idle-heap-pair: needs gdb (apt-get install gdb)" >&2; exit 2; }
OUT="$(mktemp -d)"
export TETHER_CLIENT_PING_INTERVAL=25s TETHER_CLIENT_PONG_TIMEOUT=3s
TETHER_HTTP_SERVER_PORT=18400 TETHER_TCP_PORT=8401 \
  "$A/tether" serve --config scripts/bench/tether.json >"$OUT/a.log" 2>&1 &
pa=$!
TETHER_HTTP_SERVER_PORT=18410 TETHER_TCP_PORT=8411 \
  "$B/tether" serve --config scripts/bench/tether.json >"$OUT/b.log" 2>&1 &
pb=$!
trap 'kill $pa $pb 2>/dev/null || true; rm -rf "$OUT"' EXIT
wait_port 18400
wait_port 18410
sleep 1
rss() { awk '/RssAnon|RssFile/ { printf "%s %s kB  ", $1, $2 }' "/proc/$1/status"; }
in_use() {
  : >"$2"
  timeout 30 gdb -p "$1" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1 || true
  sleep 1
  grep -a -A2 '^Total' "$2" | awk '/in use bytes/ { print $NF }'
}
# stderr of each server goes to its log; malloc_stats() writes there.
a0=$(in_use "$pa" "$OUT/a.log"); b0=$(in_use "$pb" "$OUT/b.log")
ra0=$(rss "$pa"); rb0=$(rss "$pb")
benches=()
for side in "18400 $pa A" "18410 $pb B"; do
  set -- $side
  timeout 300 "$A/tether-bench" idle -n "$N" --window 30s --target tether \
    --addr "127.0.0.1:$1" --api "127.0.0.1:$1" --pid "$2" --label "$3" >"$OUT/$3.txt" 2>&1 &
  benches+=($!)
done
sleep 25
ra1=$(rss "$pa"); rb1=$(rss "$pb")
a1=$(in_use "$pa" "$OUT/a.log"); b1=$(in_use "$pb" "$OUT/b.log")
wait "${benches[@]}"
for x in A B; do
  if [[ $x == A ]]; then dir=$A s0=$a0 s1=$a1 r0=$ra0 r1=$ra1; else dir=$B s0=$b0 s1=$b1 r0=$rb0 r1=$rb1; fi
  echo "$x ($dir): heap in use $s0 -> $s1 bytes: $(( (s1 - s0) / N )) bytes/conn"
  echo "   RSS at start: $r0"
  echo "   RSS held:     $r1"
  echo "   $(grep -m1 'server RSS' "$OUT/$x.txt" | sed 's/^ *//')"
done
