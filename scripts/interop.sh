#!/usr/bin/env bash
# Interop acceptance tests: the REAL client SDKs (npm `centrifuge` JSON + Protobuf builds,
# PyPI `centrifuge-python`) and the server API client (PyPI `cent`) against a freshly built
# tether. Idempotent setup, one tether on a free port, always stopped at the end.
#
# Usage: scripts/interop.sh            (from anywhere; CARGO_TARGET_DIR is honoured)
# Env:   INTEROP_SKIP_JS=1 / INTEROP_SKIP_PY=1 to run one side only;
#        TETHER_BIN=/path/to/tether to test a prebuilt binary instead of building one;
#        INTEROP_ENGINE=redis to run tether on the Redis engine (INTEROP_REDIS_URL, default
#        redis://127.0.0.1:6379, under a unique key prefix deleted at the end);
#        INTEROP_SKIP_PROXY=1 to skip the proxy phase, the backend proxy suites
#        (scripts/interop-proxy.sh: a second tether with tests/interop/tether-proxy.json and
#        the backend tests/interop/backend/app.py, then a third with
#        tests/interop/tether-proxy-grpc.json and the gRPC backend backend/grpc_app.py; that
#        script also runs on its own); INTEROP_SKIP_GRPC_PROXY=1 skips only the gRPC half.
#        INTEROP_SKIP_RESTART=1 to skip the restart phase after it (scripts/interop-restart.sh:
#        the SDKs recover across kill -9 / SIGTERM of a tether on the disk engine; not run
#        under INTEROP_ENGINE=redis).
#        INTEROP_SKIP_CONSUMERS=1 to skip the consumers phase (scripts/interop-consumers.sh:
#        centrifuge-python fed through an outbox table, a Redis stream, JetStream and
#        RabbitMQ; not run under INTEROP_ENGINE=redis).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IT="$ROOT/tests/interop"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Hard bounds per runner (each test has its own, smaller timeout as well).
JS_TIMEOUT="${INTEROP_JS_TIMEOUT:-120}"
PY_TIMEOUT="${INTEROP_PY_TIMEOUT:-150}"
# Loopback only: never route the tests through a proxy from the environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

section() { printf '\n==== interop: %s ====\n' "$*"; }

# ---------------------------------------------------------------- setup (idempotent)
# shellcheck source=scripts/interop-lib.sh
source "$ROOT/scripts/interop-lib.sh"
interop_setup

# ---------------------------------------------------------------- build
interop_binary interop

# ---------------------------------------------------------------- start tether
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-interop.XXXXXX")"
LOG="$WORK/tether.log"
CONFIG="$WORK/tether.json"
TETHER_PID=""
STATUS=1

cleanup() {
    local rc=$?
    if [[ -n "$TETHER_PID" ]] && kill -0 "$TETHER_PID" 2>/dev/null; then
        kill "$TETHER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$TETHER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$TETHER_PID" 2>/dev/null || true
        wait "$TETHER_PID" 2>/dev/null || true
    fi
    if [[ "$STATUS" -ne 0 || "$rc" -ne 0 ]]; then
        echo
        echo "==== interop: tether log ($LOG) ===="
        tail -n 300 "$LOG" 2>/dev/null || echo "(no log)"
    fi
    if [[ -n "${REDIS_PREFIX:-}" ]]; then
        # Only this run's keys: the Redis may be shared.
        redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX.*" 2>/dev/null \
            | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
ENGINE="${INTEROP_ENGINE:-memory}"
REDIS_URL="${INTEROP_REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_PREFIX=""
if [[ "$ENGINE" == "redis" ]]; then
    REDIS_PREFIX="tether-interop-$$-$RANDOM"
fi
python3 - "$IT/tether.json" "$CONFIG" "$PORT" "$ENGINE" "$REDIS_URL" "$REDIS_PREFIX" <<'PY'
import json, sys
src, dst, port, engine, redis_url, prefix = sys.argv[1:7]
cfg = json.load(open(src))
cfg.setdefault("http_server", {})["address"] = "127.0.0.1"
cfg["http_server"]["port"] = int(port)
# The SDKs speak WebSocket; keep the raw TCP port out of the way of other servers.
cfg["tcp"] = {"enabled": False}
if engine == "redis":
    cfg["engine"] = {"type": "redis", "redis": {"address": redis_url, "prefix": prefix}}
json.dump(cfg, open(dst, "w"), indent=2)
PY

section "start: tether serve on 127.0.0.1:$PORT (engine: $ENGINE)"
"$BIN" serve --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
TETHER_PID=$!

healthy=""
for _ in $(seq 1 150); do
    if ! kill -0 "$TETHER_PID" 2>/dev/null; then
        wait "$TETHER_PID" && rc=0 || rc=$?
        echo "interop: tether exited (status $rc) before becoming healthy" >&2
        TETHER_PID=""
        exit 1
    fi
    if curl -fsS --max-time 1 --noproxy '*' "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.1
done
if [[ -z "$healthy" ]]; then
    echo "interop: tether did not answer GET /ready with 200 within 15 s" >&2
    exit 1
fi
echo "tether is healthy (pid $TETHER_PID)"

# ---------------------------------------------------------------- run the suites
export TETHER_CONFIG="$CONFIG"
js_rc=0
py_rc=0

if [[ -z "${INTEROP_SKIP_JS:-}" ]]; then
    section "node --test: centrifuge-js (JSON + Protobuf)"
    (cd "$IT" && timeout --kill-after=10 "$JS_TIMEOUT" \
        node --test --test-concurrency=1 js/*.test.mjs) || js_rc=$?
fi

if [[ -z "${INTEROP_SKIP_PY:-}" ]]; then
    section "pytest: centrifuge-python (JSON + Protobuf) + cent"
    (cd "$IT" && timeout --kill-after=10 "$PY_TIMEOUT" \
        "$VENV/bin/python" -m pytest) || py_rc=$?
fi

alive=1
if ! kill -0 "$TETHER_PID" 2>/dev/null; then
    echo "interop: tether died during the tests" >&2
    alive=0
fi

# After the suites every metric family the operators rely on must have moved.
metrics_rc=0
if [[ "$alive" -eq 1 && -z "${INTEROP_SKIP_JS:-}" && -z "${INTEROP_SKIP_PY:-}" ]]; then
    section "metrics after the suites (GET /metrics)"
    python3 - "http://127.0.0.1:$PORT/metrics" <<'PY' || metrics_rc=$?
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
totals = {}
for line in text.splitlines():
    if line.startswith("#") or not line.strip():
        continue
    name = re.split(r"[{ ]", line, 1)[0]
    totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
wanted = [
    "tether_connects_total", "tether_disconnects_total", "tether_commands_total",
    "tether_command_duration_seconds_count", "tether_publications_total",
    "tether_deliveries_total", "tether_recoveries_total",
    "tether_engine_operation_duration_seconds_count", "tether_process_resident_memory_bytes",
    "tether_process_open_fds",
]
missing = [n for n in wanted if totals.get(n, 0.0) <= 0.0]
for n in wanted:
    print(f"{n} {totals.get(n, 0.0):g}")
if missing:
    print("metrics still zero after the interop suites:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
fi

# ---------------------------------------------------------------- proxy phase
# Its own backend and tether (own ports, own cleanup trap); this run's tether is untouched.
proxy_rc=0
if [[ -z "${INTEROP_SKIP_PROXY:-}" ]]; then
    section "proxy phase (scripts/interop-proxy.sh)"
    TETHER_BIN="$BIN" INTEROP_ENGINE="$ENGINE" INTEROP_REDIS_URL="$REDIS_URL" \
        bash "$ROOT/scripts/interop-proxy.sh" || proxy_rc=$?
fi

# ---------------------------------------------------------------- restart phase
# The SDKs across a restart of tether on the disk engine (scripts/interop-restart.sh: the
# tests start, kill and restart their own tether). It always runs the disk engine, so only
# the memory-engine run includes it.
restart_rc=0
restart_note="run"
if [[ -n "${INTEROP_SKIP_RESTART:-}" ]]; then
    restart_note="skipped"
elif [[ "$ENGINE" == "redis" ]]; then
    restart_note="skipped: engine redis"
else
    section "restart phase (scripts/interop-restart.sh)"
    TETHER_BIN="$BIN" bash "$ROOT/scripts/interop-restart.sh" || restart_rc=$?
fi

# ---------------------------------------------------------------- consumers phase
# The SDK fed by the async consumers (scripts/interop-consumers.sh: its own tether with a
# consumer of each type, and its own table, streams and queue). The consumers run the same
# command path on any engine, so only the memory-engine run includes it.
consumers_rc=0
consumers_note="run"
if [[ -n "${INTEROP_SKIP_CONSUMERS:-}" ]]; then
    consumers_note="skipped"
elif [[ "$ENGINE" == "redis" ]]; then
    consumers_note="skipped: engine redis"
else
    section "consumers phase (scripts/interop-consumers.sh)"
    TETHER_BIN="$BIN" bash "$ROOT/scripts/interop-consumers.sh" || consumers_rc=$?
fi

section "summary: node exit $js_rc, pytest exit $py_rc, metrics check $metrics_rc, proxy phase $proxy_rc, restart phase $restart_rc ($restart_note), consumers phase $consumers_rc ($consumers_note), tether alive: $alive"
if [[ "$js_rc" -ne 0 || "$py_rc" -ne 0 || "$metrics_rc" -ne 0 || "$proxy_rc" -ne 0 || "$restart_rc" -ne 0 || "$consumers_rc" -ne 0 || "$alive" -ne 1 ]]; then
    exit 1
fi
STATUS=0
