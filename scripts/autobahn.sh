#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1.*-7.* and 9.*) against our RFC 6455
# codec, through the echo server in crates/tether-server/examples/ws_echo.rs.
#
# autobahntestsuite runs only on CPython 2.7. If `pyenv versions` lists one, this script
# makes a py2.7 virtualenv (once; reused afterwards), pip-installs autobahntestsuite from
# PyPI, starts the echo example in release mode, runs the fuzzing client and prints every
# case whose behavior (or close behavior) is not OK / NON-STRICT / INFORMATIONAL, exiting
# non-zero if there is any. Without a CPython 2.7 it says so and exits 0.
#
# Environment: AUTOBAHN_PORT (default 9001), AUTOBAHN_CASES (comma list overriding the cases
# in tests/autobahn/fuzzingclient.json, e.g. "6.*,7.*"), CARGO_TARGET_DIR (the venv and the
# HTML/JSON reports go under $CARGO_TARGET_DIR/autobahn).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/autobahn
VENV=$WORK/venv
OUT=$WORK/reports
PORT=${AUTOBAHN_PORT:-9001}
# Autobahn 9.* sends messages of up to 16 MiB; the server default (64 KiB) would fail them
# with 1009 by design.
MAX_MESSAGE_SIZE=$((16 * 1024 * 1024))

if ! command -v pyenv >/dev/null 2>&1; then
    echo "autobahn: pyenv is not installed, so no CPython 2.7 for autobahntestsuite; skipping"
    exit 0
fi
PY27=$(pyenv versions --bare 2>/dev/null | grep -E '^2\.7(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
if [ -z "$PY27" ]; then
    echo "autobahn: \`pyenv versions\` lists no CPython 2.7 (autobahntestsuite needs it); skipping"
    exit 0
fi
PYTHON=$(pyenv root)/versions/$PY27/bin/python2.7
echo "autobahn: using CPython $PY27 ($PYTHON)"

mkdir -p "$WORK"
if [ ! -x "$VENV/bin/wstest" ]; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m virtualenv --version >/dev/null 2>&1; then
        # virtualenv 20.22 dropped Python 2 support.
        "$PYTHON" -m pip install --quiet --user 'virtualenv<20.22'
    fi
    "$PYTHON" -m virtualenv --quiet "$VENV"
    "$VENV/bin/pip" install --quiet autobahntestsuite
fi
"$VENV/bin/wstest" --autobahnversion

cd "$ROOT"
cargo build --release -p tether-server --example ws_echo
cargo run --quiet --release -p tether-server --example ws_echo -- \
    "127.0.0.1:$PORT" --max-message-size "$MAX_MESSAGE_SIZE" &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$ECHO_PID" 2>/dev/null; then
        echo "autobahn: the echo server exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done

rm -rf "$OUT"
mkdir -p "$OUT"
SPEC=$WORK/fuzzingclient.json
"$VENV/bin/python" - "$ROOT/tests/autobahn/fuzzingclient.json" "$SPEC" "$OUT" "$PORT" "${AUTOBAHN_CASES:-}" <<'PY'
import json, sys
src, dst, outdir, port, cases = sys.argv[1:6]
spec = json.load(open(src))
spec["outdir"] = outdir
for server in spec["servers"]:
    server["url"] = server["url"].replace("@PORT@", port)
if cases:
    spec["cases"] = [c.strip() for c in cases.split(",") if c.strip()]
json.dump(spec, open(dst, "w"), indent=2)
PY

(cd "$WORK" && "$VENV/bin/wstest" --mode fuzzingclient --spec "$SPEC")

"$VENV/bin/python" - "$OUT/index.json" <<'PY'
import json, sys
passing = ("OK", "NON-STRICT", "INFORMATIONAL")
index = json.load(open(sys.argv[1]))
def key(case_id):
    return [int(part) for part in case_id.split(".")]
total, bad = 0, []
for agent, cases in sorted(index.items()):
    for case_id in sorted(cases, key=key):
        result = cases[case_id]
        total += 1
        if result.get("behavior") not in passing or result.get("behaviorClose") not in passing:
            bad.append((agent, case_id, result))
for agent, case_id, result in bad:
    print("FAILED case %s (%s): behavior=%s behaviorClose=%s remoteCloseCode=%s report=%s" % (
        case_id, agent, result.get("behavior"), result.get("behaviorClose"),
        result.get("remoteCloseCode"), result.get("reportfile")))
print("autobahn: %d cases, %d passed, %d failed" % (total, total - len(bad), len(bad)))
sys.exit(1 if bad else 0)
PY
