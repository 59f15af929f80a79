#!/usr/bin/env bash
# Interop acceptance tests of the backend proxy (Centrifugo's `client.proxy.*`,
# `channel.proxy.*`, `rpc.proxy`): the REAL SDKs (centrifuge-js JSON + Protobuf,
# centrifuge-python JSON + Protobuf) against a tether running tests/interop/tether-proxy.json,
# which forwards client events to a REAL backend process (tests/interop/backend/app.py).
# scripts/interop.sh runs this as its last phase (skip with INTEROP_SKIP_PROXY=1); it also
# runs on its own.
#
# Usage: scripts/interop-proxy.sh      (from anywhere; CARGO_TARGET_DIR is honoured)
# Env:   INTEROP_SKIP_JS=1 / INTEROP_SKIP_PY=1 to run one side only;
#        TETHER_BIN=/path/to/tether to test a prebuilt binary instead of building one;
#        INTEROP_ENGINE=redis (INTEROP_REDIS_URL) as for scripts/interop.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IT="$ROOT/tests/interop"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Hard bounds per runner (each test has its own, smaller timeout as well).
JS_TIMEOUT="${INTEROP_PROXY_JS_TIMEOUT:-150}"
PY_TIMEOUT="${INTEROP_PROXY_PY_TIMEOUT:-180}"
# The backend endpoints in tether-proxy.json point here; rewritten to the real port.
CONFIG_BACKEND="http://127.0.0.1:18100"
# Loopback only: never route the tests (or tether's proxy calls) through a proxy from the
# environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

section() { printf '\n==== interop proxy: %s ====\n' "$*"; }

# ---------------------------------------------------------------- setup (idempotent)
# The same stamps as scripts/interop.sh: instant when that script has just run.
section "setup: python venv + requirements, npm ci"
VENV="$IT/.venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
REQ_STAMP="$VENV/.requirements.sha256"
REQ_SUM="$(sha256sum "$IT/requirements.txt" | cut -d' ' -f1)"
if [[ "$(cat "$REQ_STAMP" 2>/dev/null || true)" != "$REQ_SUM" ]]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$IT/requirements.txt"
    echo "$REQ_SUM" >"$REQ_STAMP"
fi
NPM_STAMP="$IT/node_modules/.package-lock.sha256"
LOCK_SUM="$(sha256sum "$IT/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$NPM_STAMP" 2>/dev/null || true)" != "$LOCK_SUM" ]]; then
    (cd "$IT" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$LOCK_SUM" >"$NPM_STAMP"
fi

# ---------------------------------------------------------------- build
if [[ -n "${TETHER_BIN:-}" ]]; then
    BIN="$TETHER_BIN"
    section "using prebuilt tether: $BIN"
else
    section "build: cargo build -p tether-server"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build -p tether-server --bin tether)
    BIN="$TARGET_DIR/debug/tether"
fi
if [[ ! -x "$BIN" ]]; then
    echo "interop proxy: tether binary not found at $BIN" >&2
    exit 1
fi

# ---------------------------------------------------------------- processes + cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-interop-proxy.XXXXXX")"
LOG="$WORK/tether.log"
BACKEND_LOG="$WORK/backend.log"
CONFIG="$WORK/tether-proxy.json"
TETHER_PID=""
BACKEND_PID=""
STATUS=1

stop_pid() {
    local pid="$1"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$?
    stop_pid "$TETHER_PID"
    stop_pid "$BACKEND_PID"
    if [[ "$STATUS" -ne 0 || "$rc" -ne 0 ]]; then
        echo
        echo "==== interop proxy: tether log ($LOG) ===="
        tail -n 300 "$LOG" 2>/dev/null || echo "(no log)"
        echo "==== interop proxy: backend log ($BACKEND_LOG) ===="
        tail -n 100 "$BACKEND_LOG" 2>/dev/null || echo "(no log)"
    fi
    if [[ -n "${REDIS_PREFIX:-}" ]]; then
        redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX.*" 2>/dev/null \
            | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two distinct free ports, both held until both are known.
read -r PORT BACKEND_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
a.close(); b.close()')
ENGINE="${INTEROP_ENGINE:-memory}"
REDIS_URL="${INTEROP_REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_PREFIX=""
if [[ "$ENGINE" == "redis" ]]; then
    REDIS_PREFIX="tether-interop-proxy-$$-$RANDOM"
fi

# ---------------------------------------------------------------- backend
section "backend: self-test (pytest backend)"
(cd "$IT" && timeout --kill-after=5 60 "$VENV/bin/python" -m pytest -q backend)

section "start: proxy backend on 127.0.0.1:$BACKEND_PORT"
"$VENV/bin/python" "$IT/backend/app.py" --port "$BACKEND_PORT" >"$BACKEND_LOG" 2>&1 </dev/null &
BACKEND_PID=$!
ready=""
for _ in $(seq 1 100); do
    if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        echo "interop proxy: the backend exited before answering" >&2
        BACKEND_PID=""
        exit 1
    fi
    if curl -fsS --max-time 1 --noproxy '*' "http://127.0.0.1:$BACKEND_PORT/health" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    echo "interop proxy: the backend did not answer GET /health within 10 s" >&2
    exit 1
fi
echo "backend is up (pid $BACKEND_PID)"

# ---------------------------------------------------------------- tether with the proxy config
python3 - "$IT/tether-proxy.json" "$CONFIG" "$PORT" "$ENGINE" "$REDIS_URL" "$REDIS_PREFIX" \
    "$CONFIG_BACKEND" "http://127.0.0.1:$BACKEND_PORT" <<'PY'
import json, sys
src, dst, port, engine, redis_url, prefix, old_backend, new_backend = sys.argv[1:9]
cfg = json.load(open(src))

def rewrite(node):
    if isinstance(node, dict):
        return {k: rewrite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(v) for v in node]
    if isinstance(node, str) and node.startswith(old_backend + "/"):
        return new_backend + node[len(old_backend):]
    return node

cfg = rewrite(cfg)
cfg.setdefault("http_server", {})["address"] = "127.0.0.1"
cfg["http_server"]["port"] = int(port)
cfg["tcp"] = {"enabled": False}
if engine == "redis":
    cfg["engine"] = {"type": "redis", "redis": {"address": redis_url, "prefix": prefix}}
json.dump(cfg, open(dst, "w"), indent=2)
PY

section "start: tether serve on 127.0.0.1:$PORT with the proxy config (engine: $ENGINE)"
"$BIN" serve --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
TETHER_PID=$!
healthy=""
for _ in $(seq 1 150); do
    if ! kill -0 "$TETHER_PID" 2>/dev/null; then
        wait "$TETHER_PID" && rc=0 || rc=$?
        echo "interop proxy: tether exited (status $rc) before becoming healthy" >&2
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
    echo "interop proxy: tether did not answer GET /ready with 200 within 15 s" >&2
    exit 1
fi
echo "tether is healthy (pid $TETHER_PID)"

# ---------------------------------------------------------------- run the suites
export TETHER_PROXY_CONFIG="$CONFIG"
js_rc=0
py_rc=0
if [[ -z "${INTEROP_SKIP_JS:-}" ]]; then
    section "node --test: centrifuge-js via the proxy (JSON + Protobuf)"
    (cd "$IT" && timeout --kill-after=10 "$JS_TIMEOUT" \
        node --test --test-concurrency=1 js/proxy/*.test.mjs) || js_rc=$?
fi
if [[ -z "${INTEROP_SKIP_PY:-}" ]]; then
    section "pytest: centrifuge-python via the proxy (JSON + Protobuf)"
    (cd "$IT" && timeout --kill-after=10 "$PY_TIMEOUT" \
        "$VENV/bin/python" -m pytest py_proxy) || py_rc=$?
fi

alive=1
if ! kill -0 "$TETHER_PID" 2>/dev/null; then
    echo "interop proxy: tether died during the tests" >&2
    alive=0
fi
if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
    echo "interop proxy: the backend died during the tests" >&2
    alive=0
fi

section "summary: node exit $js_rc, pytest exit $py_rc, tether + backend alive: $alive"
if [[ "$js_rc" -ne 0 || "$py_rc" -ne 0 || "$alive" -ne 1 ]]; then
    exit 1
fi
STATUS=0
