#!/usr/bin/env bash
# Interop acceptance tests of the backend proxy (Centrifugo's `client.proxy.*`,
# `channel.proxy.*`, `rpc.proxy`): the REAL SDKs (centrifuge-js JSON + Protobuf,
# centrifuge-python JSON + Protobuf) against tether forwarding client events to a REAL
# backend process, in two halves, each with its own backend and tether:
#   HTTP: tests/interop/tether-proxy.json -> tests/interop/backend/app.py (aiohttp, JSON);
#   gRPC: tests/interop/tether-proxy-grpc.json -> tests/interop/backend/grpc_app.py (grpcio,
#         service centrifugal.centrifugo.proxy.CentrifugoProxy; stubs generated here from
#         backend/proxy.proto into the gitignored backend/_gen).
# The same suites run in both halves (they read the mode from the config's endpoints).
# scripts/interop.sh runs this as a phase (skip with INTEROP_SKIP_PROXY=1); it also
# runs on its own.
#
# Usage: scripts/interop-proxy.sh      (from anywhere; CARGO_TARGET_DIR is honoured)
# Env:   INTEROP_SKIP_JS=1 / INTEROP_SKIP_PY=1 to run one side only;
#        INTEROP_SKIP_GRPC_PROXY=1 to run the HTTP half only;
#        TETHER_BIN=/path/to/tether to test a prebuilt binary instead of building one;
#        INTEROP_ENGINE=redis (INTEROP_REDIS_URL) as for scripts/interop.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IT="$ROOT/tests/interop"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Hard bounds per runner and half (each test has its own, smaller timeout as well).
JS_TIMEOUT="${INTEROP_PROXY_JS_TIMEOUT:-150}"
PY_TIMEOUT="${INTEROP_PROXY_PY_TIMEOUT:-180}"
# The backend endpoints in tether-proxy.json / tether-proxy-grpc.json point here; rewritten
# to the real ports.
CONFIG_BACKEND="http://127.0.0.1:18100"
CONFIG_GRPC_BACKEND="grpc://127.0.0.1:18101"
SKIP_GRPC="${INTEROP_SKIP_GRPC_PROXY:-}"
# Loopback only: never route the tests (or tether's proxy calls) through a proxy from the
# environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

section() { printf '\n==== interop proxy: %s ====\n' "$*"; }

# ---------------------------------------------------------------- setup (idempotent)
# The same stamps as scripts/interop.sh: instant when that script has just run.
# shellcheck source=scripts/interop-lib.sh
source "$ROOT/scripts/interop-lib.sh"
interop_setup
if [[ -z "$SKIP_GRPC" ]]; then
    section "setup: gRPC stubs of backend/proxy.proto (python -m grpc_tools.protoc)"
    "$VENV/bin/python" "$IT/backend/gen_stubs.py"
fi

# ---------------------------------------------------------------- build
interop_binary "interop proxy"

# ---------------------------------------------------------------- processes + cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tether-interop-proxy.XXXXXX")"
# One backend and one tether per half; every process started here is stopped by cleanup.
TETHER_PID=""
BACKEND_PID=""
GRPC_TETHER_PID=""
GRPC_BACKEND_PID=""
STATUS=1

show_log() {
    local what="$1" file="$2" lines="$3"
    if [[ -e "$file" ]]; then
        echo "==== interop proxy: $what ($file) ===="
        tail -n "$lines" "$file" 2>/dev/null || true
    fi
}

cleanup() {
    local rc=$?
    stop_pid "$TETHER_PID"
    stop_pid "$BACKEND_PID"
    stop_pid "$GRPC_TETHER_PID"
    stop_pid "$GRPC_BACKEND_PID"
    if [[ "$STATUS" -ne 0 || "$rc" -ne 0 ]]; then
        echo
        show_log "HTTP half: tether log" "$WORK/http/tether.log" 300
        show_log "HTTP half: backend log" "$WORK/http/backend.log" 100
        show_log "gRPC half: tether log" "$WORK/grpc/tether.log" 300
        show_log "gRPC half: backend log" "$WORK/grpc/backend.log" 100
    fi
    if [[ -n "${REDIS_PREFIX:-}" ]]; then
        redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX.*" 2>/dev/null \
            | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Distinct free ports, all held until all are known: tether and backend of the HTTP half,
# tether, backend (gRPC) and its introspection (HTTP) of the gRPC half.
read -r PORT BACKEND_PORT GRPC_PORT GRPC_BACKEND_PORT GRPC_BACKEND_HTTP_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()')
ENGINE="${INTEROP_ENGINE:-memory}"
REDIS_URL="${INTEROP_REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_PREFIX=""
if [[ "$ENGINE" == "redis" ]]; then
    REDIS_PREFIX="tether-interop-proxy-$$-$RANDOM"
fi

# wait_http URL PID WHAT TENTHS: polls URL until it answers 2xx; fails when PID exits first
# or after TENTHS tenths of a second.
# write_config SRC DST PORT OLD_BACKEND NEW_BACKEND: SRC with the backend endpoints
# (OLD_BACKEND itself or under it) moved to NEW_BACKEND, tether on PORT, the engine chosen.
write_config() {
    python3 - "$1" "$2" "$3" "$ENGINE" "$REDIS_URL" "$REDIS_PREFIX" "$4" "$5" <<'PY'
import json, sys
src, dst, port, engine, redis_url, prefix, old_backend, new_backend = sys.argv[1:9]
cfg = json.load(open(src))

def rewrite(node):
    if isinstance(node, dict):
        return {k: rewrite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(v) for v in node]
    if isinstance(node, str) and (node == old_backend or node.startswith(old_backend + "/")):
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
}

# run_suites HALF CONFIG BACKEND_URL: both SDK suites against the tether running CONFIG;
# sets JS_RC and PY_RC.
run_suites() {
    local half="$1" config="$2" backend_url="$3"
    JS_RC=0
    PY_RC=0
    if [[ -z "${INTEROP_SKIP_JS:-}" ]]; then
        section "$half half: node --test: centrifuge-js via the proxy (JSON + Protobuf)"
        (cd "$IT" && TETHER_PROXY_CONFIG="$config" TETHER_PROXY_BACKEND_URL="$backend_url" \
            timeout --kill-after=10 "$JS_TIMEOUT" \
            node --test --test-concurrency=1 js/proxy/*.test.mjs) || JS_RC=$?
    fi
    if [[ -z "${INTEROP_SKIP_PY:-}" ]]; then
        section "$half half: pytest: centrifuge-python via the proxy (JSON + Protobuf)"
        (cd "$IT" && TETHER_PROXY_CONFIG="$config" TETHER_PROXY_BACKEND_URL="$backend_url" \
            timeout --kill-after=10 "$PY_TIMEOUT" \
            "$VENV/bin/python" -m pytest py_proxy) || PY_RC=$?
    fi
}

# ---------------------------------------------------------------- backend self-tests
if [[ -z "$SKIP_GRPC" ]]; then
    section "backends: self-test (pytest backend: HTTP and gRPC)"
    (cd "$IT" && timeout --kill-after=5 90 "$VENV/bin/python" -m pytest -q backend)
else
    section "backends: self-test (pytest backend: HTTP only)"
    (cd "$IT" && timeout --kill-after=5 60 "$VENV/bin/python" -m pytest -q backend \
        --ignore=backend/test_grpc_backend.py)
fi

# ---------------------------------------------------------------- HTTP half
# http_half: backend app.py + tether with tether-proxy.json, the suites, then both stopped.
# Sets HTTP_JS_RC, HTTP_PY_RC, HTTP_ALIVE; returns non-zero when a process did not start.
http_half() {
    mkdir -p "$WORK/http"
    local config="$WORK/http/tether-proxy.json" backend_url="http://127.0.0.1:$BACKEND_PORT"

    section "HTTP half: start the proxy backend (app.py) on 127.0.0.1:$BACKEND_PORT"
    "$VENV/bin/python" "$IT/backend/app.py" --port "$BACKEND_PORT" \
        >"$WORK/http/backend.log" 2>&1 </dev/null &
    BACKEND_PID=$!
    wait_http "$backend_url/health" "$BACKEND_PID" "the HTTP backend" 100 || return 1
    echo "backend is up (pid $BACKEND_PID)"

    write_config "$IT/tether-proxy.json" "$config" "$PORT" "$CONFIG_BACKEND" "$backend_url" || return 1
    section "HTTP half: start tether on 127.0.0.1:$PORT with tether-proxy.json (engine: $ENGINE)"
    "$BIN" serve --config "$config" >"$WORK/http/tether.log" 2>&1 </dev/null &
    TETHER_PID=$!
    wait_http "http://127.0.0.1:$PORT/ready" "$TETHER_PID" "tether (HTTP half)" 150 || return 1
    echo "tether is healthy (pid $TETHER_PID)"

    run_suites HTTP "$config" "$backend_url"
    HTTP_JS_RC=$JS_RC
    HTTP_PY_RC=$PY_RC
    HTTP_ALIVE=1
    if ! kill -0 "$TETHER_PID" 2>/dev/null; then
        echo "interop proxy: tether (HTTP half) died during the tests" >&2
        HTTP_ALIVE=0
    fi
    if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        echo "interop proxy: the HTTP backend died during the tests" >&2
        HTTP_ALIVE=0
    fi
    stop_pid "$TETHER_PID"
    stop_pid "$BACKEND_PID"
}

# ---------------------------------------------------------------- gRPC half
# grpc_half: backend grpc_app.py + a third tether with tether-proxy-grpc.json, the same
# suites, then both stopped. Sets GRPC_JS_RC, GRPC_PY_RC, GRPC_ALIVE.
grpc_half() {
    mkdir -p "$WORK/grpc"
    local config="$WORK/grpc/tether-proxy-grpc.json"
    local backend_url="http://127.0.0.1:$GRPC_BACKEND_HTTP_PORT"

    section "gRPC half: start the gRPC proxy backend (grpc_app.py) on 127.0.0.1:$GRPC_BACKEND_PORT (introspection :$GRPC_BACKEND_HTTP_PORT)"
    "$VENV/bin/python" "$IT/backend/grpc_app.py" --port "$GRPC_BACKEND_PORT" \
        --http-port "$GRPC_BACKEND_HTTP_PORT" >"$WORK/grpc/backend.log" 2>&1 </dev/null &
    GRPC_BACKEND_PID=$!
    # The gRPC server starts before the HTTP side: /health answering means both listen.
    wait_http "$backend_url/health" "$GRPC_BACKEND_PID" "the gRPC backend" 150 || return 1
    echo "gRPC backend is up (pid $GRPC_BACKEND_PID)"

    write_config "$IT/tether-proxy-grpc.json" "$config" "$GRPC_PORT" "$CONFIG_GRPC_BACKEND" \
        "grpc://127.0.0.1:$GRPC_BACKEND_PORT" || return 1
    section "gRPC half: start tether on 127.0.0.1:$GRPC_PORT with tether-proxy-grpc.json (engine: $ENGINE)"
    "$BIN" serve --config "$config" >"$WORK/grpc/tether.log" 2>&1 </dev/null &
    GRPC_TETHER_PID=$!
    wait_http "http://127.0.0.1:$GRPC_PORT/ready" "$GRPC_TETHER_PID" "tether (gRPC half)" 150 || return 1
    echo "tether is healthy (pid $GRPC_TETHER_PID)"

    run_suites gRPC "$config" "$backend_url"
    GRPC_JS_RC=$JS_RC
    GRPC_PY_RC=$PY_RC
    GRPC_ALIVE=1
    if ! kill -0 "$GRPC_TETHER_PID" 2>/dev/null; then
        echo "interop proxy: tether (gRPC half) died during the tests" >&2
        GRPC_ALIVE=0
    fi
    if ! kill -0 "$GRPC_BACKEND_PID" 2>/dev/null; then
        echo "interop proxy: the gRPC backend died during the tests" >&2
        GRPC_ALIVE=0
    fi
    stop_pid "$GRPC_TETHER_PID"
    stop_pid "$GRPC_BACKEND_PID"
}

# half_summary START_RC JS_RC PY_RC ALIVE: one line for the summary.
half_summary() {
    if [[ "$1" -ne 0 ]]; then
        echo "its backend or tether did not start (logs below)"
    else
        echo "node exit $2, pytest exit $3, tether + backend alive: $4"
    fi
}

HTTP_JS_RC=1 HTTP_PY_RC=1 HTTP_ALIVE=0
http_rc=0
http_half || http_rc=$?
http_summary="$(half_summary "$http_rc" "$HTTP_JS_RC" "$HTTP_PY_RC" "$HTTP_ALIVE")"

GRPC_JS_RC=0 GRPC_PY_RC=0 GRPC_ALIVE=1
grpc_rc=0
grpc_summary="skipped (INTEROP_SKIP_GRPC_PROXY)"
if [[ -z "$SKIP_GRPC" ]]; then
    GRPC_JS_RC=1 GRPC_PY_RC=1 GRPC_ALIVE=0
    grpc_half || grpc_rc=$?
    grpc_summary="$(half_summary "$grpc_rc" "$GRPC_JS_RC" "$GRPC_PY_RC" "$GRPC_ALIVE")"
fi

section "summary: HTTP half: $http_summary; gRPC half: $grpc_summary"
if [[ "$http_rc" -ne 0 || "$HTTP_JS_RC" -ne 0 || "$HTTP_PY_RC" -ne 0 || "$HTTP_ALIVE" -ne 1 ]]; then
    exit 1
fi
if [[ "$grpc_rc" -ne 0 || "$GRPC_JS_RC" -ne 0 || "$GRPC_PY_RC" -ne 0 || "$GRPC_ALIVE" -ne 1 ]]; then
    exit 1
fi
STATUS=0
