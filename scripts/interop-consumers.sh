#!/usr/bin/env bash
# Interop acceptance tests of the async consumers (issue 21): the REAL SDK (centrifuge-python,
# JSON + Protobuf) receives, in order, what a backend wrote to a PostgreSQL outbox table (also:
# a rolled-back transaction publishes nothing), a Redis stream, a NATS JetStream subject and a
# RabbitMQ queue, through one tether with a consumer of each type.
#
# tests/interop/py_consumers/resources.py creates the table (with its NOTIFY trigger), the
# JetStream stream and the queue under a run-unique prefix on this machine's services
# (scripts/ensure-services.sh), writes the config (tests/interop/tether.json plus
# `consumers`, on a free port), and removes them all at the end. scripts/interop.sh runs this
# as a phase (not under INTEROP_ENGINE=redis); it also runs on its own.
#
# Usage: scripts/interop-consumers.sh   (from anywhere; CARGO_TARGET_DIR is honoured)
# Env:   TETHER_BIN=/path/to/tether to test a prebuilt binary instead of building one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IT="$ROOT/tests/interop"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PY_TIMEOUT="${INTEROP_CONSUMERS_PY_TIMEOUT:-120}"
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

section() { printf '\n==== interop consumers: %s ====\n' "$*"; }

# shellcheck source=scripts/interop-lib.sh
source "$ROOT/scripts/interop-lib.sh"
interop_setup
interop_binary "interop consumers"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-interop-consumers.XXXXXX")"
CONFIG="$WORK/tether.json"
STATE="$WORK/sources.json"
LOG="$WORK/tether.log"
TETHER_PID=""
STATUS=1

cleanup() {
    local rc=$?
    stop_pid "$TETHER_PID"
    if [[ -f "$STATE" ]]; then
        (cd "$IT/py_consumers" && "$VENV/bin/python" resources.py teardown "$STATE") || true
    fi
    if [[ "$STATUS" -ne 0 || "$rc" -ne 0 ]]; then
        echo
        echo "==== interop consumers: tether log ($LOG) ===="
        tail -n 200 "$LOG" 2>/dev/null || echo "(no log)"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "services (scripts/ensure-services.sh)"
bash "$ROOT/scripts/ensure-services.sh" >/dev/null

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
section "sources: outbox table, redis stream, jetstream stream, rabbitmq queue"
(cd "$IT/py_consumers" && "$VENV/bin/python" resources.py setup "$STATE" "$IT/tether.json" "$CONFIG" "$PORT")

section "start: tether serve on 127.0.0.1:$PORT with four consumers"
"$BIN" serve --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
TETHER_PID=$!
wait_http "http://127.0.0.1:$PORT/ready" "$TETHER_PID" "tether" 150

section "pytest: centrifuge-python (JSON + Protobuf) fed by the consumers"
export TETHER_CONFIG="$CONFIG"
export INTEROP_CONSUMERS_STATE="$STATE"
py_rc=0
(cd "$IT" && timeout --kill-after=10 "$PY_TIMEOUT" \
    "$VENV/bin/python" -m pytest py_consumers) || py_rc=$?

metrics_rc=0
python3 - "http://127.0.0.1:$PORT/metrics" <<'PY' || metrics_rc=$?
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
counts = {}
for line in text.splitlines():
    if line.startswith("tether_consumer_messages_total{"):
        name = line.split('consumer="', 1)[1].split('"', 1)[0]
        counts[name] = float(line.rsplit(" ", 1)[1])
print(counts)
idle = [n for n in ("interop_outbox", "interop_redis", "interop_jetstream", "interop_amqp")
        if counts.get(n, 0.0) <= 0.0]
if idle:
    print("consumers that processed nothing:", ", ".join(idle), file=sys.stderr)
    sys.exit(1)
PY

section "summary: pytest exit $py_rc, metrics check $metrics_rc"
if [[ "$py_rc" -ne 0 || "$metrics_rc" -ne 0 ]]; then
    exit 1
fi
STATUS=0
