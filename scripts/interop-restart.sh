#!/usr/bin/env bash
# Interop acceptance tests across a server restart (issue 19): the REAL SDKs (centrifuge-js
# JSON + Protobuf, centrifuge-python JSON + Protobuf) recover what they missed while tether
# was killed (kill -9) or stopped (SIGTERM) and started again on the `disk` engine:
# `recovered: true`, the missed publications once each, in order, on the same epoch. A
# negative control runs the same on the memory engine and must see `recovered: false`.
#
# The tests start, kill and restart tether themselves (tests/interop/js/restart/,
# tests/interop/py_restart/); this script gives them the binary, a config derived from
# tests/interop/tether-disk.json on a free port, a fresh data root (each test makes its own
# store directory under it), a log file and a pid file, and afterwards stops any tether a
# crashed runner left behind. scripts/interop.sh runs this as a phase after the proxy phase
# (not under INTEROP_ENGINE=redis: the phase always runs the disk engine); it also runs on
# its own.
#
# Usage: scripts/interop-restart.sh    (from anywhere; CARGO_TARGET_DIR is honoured)
# Env:   INTEROP_SKIP_JS=1 / INTEROP_SKIP_PY=1 to run one side only;
#        TETHER_BIN=/path/to/tether to test a prebuilt binary instead of building one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IT="$ROOT/tests/interop"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Hard bounds per runner (each test has its own, smaller timeout as well).
JS_TIMEOUT="${INTEROP_RESTART_JS_TIMEOUT:-120}"
PY_TIMEOUT="${INTEROP_RESTART_PY_TIMEOUT:-90}"
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

section() { printf '\n==== interop restart: %s ====\n' "$*"; }

# ---------------------------------------------------------------- setup (idempotent)
# The same stamps as scripts/interop.sh: instant when that script has just run.
# shellcheck source=scripts/interop-lib.sh
source "$ROOT/scripts/interop-lib.sh"
interop_setup

# ---------------------------------------------------------------- build
interop_binary "interop restart"
BIN="$(readlink -f "$BIN")"

# ---------------------------------------------------------------- work dir + cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-interop-restart.XXXXXX")"
CONFIG="$WORK/tether-disk.json"
LOG="$WORK/tether.log"
PIDS="$WORK/pids"
DATA="$WORK/data"
mkdir -p "$DATA"
: >"$LOG"
: >"$PIDS"
STATUS=1

# Stops the tether processes the tests started and did not stop (a runner that crashed or hit
# its timeout), by the pids they recorded, and only while the pid is still that binary.
stop_leftovers() {
    local pid left=0
    while read -r pid; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$BIN" ]]; then
            left=$((left + 1))
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done <"$PIDS"
    echo "$left"
}

cleanup() {
    local rc=$?
    local left
    left="$(stop_leftovers 2>/dev/null || echo 0)"
    if [[ "$left" -ne 0 ]]; then
        echo "interop restart: stopped $left tether process(es) the tests left running" >&2
    fi
    if [[ "$STATUS" -ne 0 || "$rc" -ne 0 ]]; then
        echo
        echo "==== interop restart: tether log ($LOG) ===="
        tail -n 300 "$LOG" 2>/dev/null || echo "(no log)"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
python3 - "$IT/tether-disk.json" "$CONFIG" "$PORT" <<'PY'
import json, sys
src, dst, port = sys.argv[1:4]
cfg = json.load(open(src))
cfg.setdefault("http_server", {})["address"] = "127.0.0.1"
cfg["http_server"]["port"] = int(port)
cfg["tcp"] = {"enabled": False}
json.dump(cfg, open(dst, "w"), indent=2)
PY

# What the tests need to start and restart tether (see js/restart/helpers.mjs,
# py_restart/restart_helpers.py).
export TETHER_CONFIG="$CONFIG"
export TETHER_BIN="$BIN"
export INTEROP_DISK_DIR="$DATA"
export INTEROP_RESTART_LOG="$LOG"
export INTEROP_RESTART_PIDS="$PIDS"

js_rc=0
py_rc=0
started=$SECONDS
if [[ -z "${INTEROP_SKIP_JS:-}" ]]; then
    section "node --test: centrifuge-js (JSON + Protobuf) across restarts, port $PORT"
    (cd "$IT" && timeout --kill-after=10 "$JS_TIMEOUT" \
        node --test --test-concurrency=1 js/restart/*.test.mjs) || js_rc=$?
fi
if [[ -z "${INTEROP_SKIP_PY:-}" ]]; then
    section "pytest: centrifuge-python (JSON + Protobuf) across restarts, port $PORT"
    (cd "$IT" && timeout --kill-after=10 "$PY_TIMEOUT" \
        "$VENV/bin/python" -m pytest py_restart) || py_rc=$?
fi

# Every test stops the servers it started; one still running is a failure.
left="$(stop_leftovers)"
section "summary: node exit $js_rc, pytest exit $py_rc, tether left running: $left, $((SECONDS - started)) s"
if [[ "$js_rc" -ne 0 || "$py_rc" -ne 0 || "$left" -ne 0 ]]; then
    exit 1
fi
STATUS=0
