#!/usr/bin/env bash
# The chaos suite (crates/tether-chaos, docs/reliability.md): tether nodes and Redis in
# network namespaces the suite makes, SDK clients, faults, and an auditor of every
# acknowledged publication.
#
#   scripts/chaos.sh                 # every scenario, CHAOS_RUNS (3) times each; release build
#   CHAOS_QUICK=1 scripts/chaos.sh   # the reduced form CI runs: 4 scenarios, 1 run, few clients
#
# Env: CHAOS_RUNS, CHAOS_SCENARIOS (comma-separated names), CHAOS_OUT (JSON lines appended,
# default docs/results-chaos.jsonl for the full run, none for the quick one), CHAOS_PROFILE
# (release | debug; debug for the quick form), CHAOS_ARGS (more tether-chaos flags),
# CHAOS_KEEP=1 (keep the run directory with configs and logs).
# Needs root (network namespaces), iproute2 and redis-server; without them the quick form
# skips with exit 0, the full run fails. Exit 1 when a run found loss, duplicates,
# reordering or a false `recovered: true`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK="${CHAOS_QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
    PROFILE="${CHAOS_PROFILE:-debug}"
    RUNS="${CHAOS_RUNS:-1}"
    OUT="${CHAOS_OUT:-}"
else
    PROFILE="${CHAOS_PROFILE:-release}"
    RUNS="${CHAOS_RUNS:-3}"
    OUT="${CHAOS_OUT:-$ROOT/docs/results-chaos.jsonl}"
fi

missing=""
[[ "$(id -u)" == 0 ]] || missing="root (network namespaces)"
command -v ip >/dev/null || missing="iproute2 (ip)"
command -v redis-server >/dev/null || missing="redis-server"
command -v redis-cli >/dev/null || missing="redis-cli"
if [[ -z "$missing" ]] && ! ip netns add "tchaos-probe-$$" 2>/dev/null; then
    missing="network namespace support (ip netns add failed)"
fi
ip netns del "tchaos-probe-$$" 2>/dev/null || true
if [[ -n "$missing" ]]; then
    if [[ "$QUICK" == 1 ]]; then
        echo "chaos: skipped, missing $missing"
        exit 0
    fi
    echo "chaos: missing $missing" >&2
    exit 1
fi

flags=()
[[ "$PROFILE" == release ]] && flags=(--release)
cargo build "${flags[@]}" -p tether-server -p tether-chaos --bin tether --bin tether-chaos
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

# An interrupted run leaves its processes and namespaces: kill those it recorded, by pid,
# and delete its namespaces (named after its pid). The run directory (configs and logs,
# kept by tether-chaos when a run failed) goes too, unless CHAOS_KEEP=1.
CHAOS_PID=""
RUN_PID=""
cleanup() {
    local dir
    [[ -n "$RUN_PID" ]] || return 0
    dir="${TMPDIR:-/tmp}/tether-chaos-$RUN_PID"
    if [[ -n "$CHAOS_PID" ]]; then
        kill "$CHAOS_PID" 2>/dev/null || true
        wait "$CHAOS_PID" 2>/dev/null || true
        if [[ -f "$dir/pids" ]]; then
            while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
        fi
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^tchaos-$RUN_PID-" || true); do
            ip netns del "$ns" 2>/dev/null || true
        done
    fi
    if [[ -d "$dir" ]]; then
        if [[ "${CHAOS_KEEP:-0}" == 1 ]]; then
            echo "chaos: run directory kept: $dir"
        else
            rm -rf "$dir"
        fi
    fi
}
trap cleanup EXIT INT TERM

args=(run --tether "$BIN/tether" --scripts "$ROOT/scripts" --runs "$RUNS"
    --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
[[ "$QUICK" == 1 ]] && args+=(--quick)
[[ -n "${CHAOS_SCENARIOS:-}" ]] && args+=(--scenario "$CHAOS_SCENARIOS")
[[ -n "$OUT" ]] && args+=(--out "$OUT")
# shellcheck disable=SC2206
[[ -n "${CHAOS_ARGS:-}" ]] && args+=($CHAOS_ARGS)

"$BIN/tether-chaos" "${args[@]}" &
CHAOS_PID=$!
RUN_PID=$CHAOS_PID
status=0
wait "$CHAOS_PID" || status=$?
CHAOS_PID=""
exit "$status"
