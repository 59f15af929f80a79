# Shared by the interop scripts (sourced, not run): the SDK environments and the tether binary.
# The caller sets ROOT, IT (tests/interop), TARGET_DIR and defines `section`.

# interop_setup: the Python venv with tests/interop/requirements.txt and node_modules from
# package-lock.json, each redone only when its lock file changed (a stamp of its hash), so a
# second script right after the first costs nothing.
interop_setup() {
    section "setup: python venv + requirements"
    VENV="$IT/.venv"
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    local req_stamp="$VENV/.requirements.sha256" req_sum
    req_sum="$(sha256sum "$IT/requirements.txt" | cut -d' ' -f1)"
    if [[ "$(cat "$req_stamp" 2>/dev/null || true)" != "$req_sum" ]]; then
        "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$IT/requirements.txt"
        echo "$req_sum" >"$req_stamp"
    else
        echo "requirements up to date"
    fi

    section "setup: npm ci"
    local npm_stamp="$IT/node_modules/.package-lock.sha256" lock_sum
    lock_sum="$(sha256sum "$IT/package-lock.json" | cut -d' ' -f1)"
    if [[ "$(cat "$npm_stamp" 2>/dev/null || true)" != "$lock_sum" ]]; then
        (cd "$IT" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_sum" >"$npm_stamp"
    else
        echo "node_modules up to date"
    fi
}

# interop_binary NAME: sets BIN to $TETHER_BIN, or builds `tether` (debug) into TARGET_DIR;
# fails, naming the script NAME, when there is no executable there.
interop_binary() {
    if [[ -n "${TETHER_BIN:-}" ]]; then
        BIN="$TETHER_BIN"
        section "using prebuilt tether: $BIN"
    else
        section "build: cargo build -p tether-server"
        (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build -p tether-server --bin tether)
        BIN="$TARGET_DIR/debug/tether"
    fi
    if [[ ! -x "$BIN" ]]; then
        echo "$1: tether binary not found at $BIN" >&2
        exit 1
    fi
}

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; nothing when PID is empty or gone.
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

# wait_http URL PID WHAT TENTHS: polls URL until it answers 2xx, for up to TENTHS/10 s; fails
# (naming WHAT) when the process PID exits first or time runs out.
wait_http() {
    local url="$1" pid="$2" what="$3" tenths="$4"
    for _ in $(seq 1 "$tenths"); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "interop: $what exited before answering $url" >&2
            return 1
        fi
        if curl -fsS --max-time 1 --noproxy '*' "$url" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "interop: $what did not answer $url within $((tenths / 10)) s" >&2
    return 1
}
