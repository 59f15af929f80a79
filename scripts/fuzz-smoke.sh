#!/usr/bin/env bash
# Bounded fuzz smoke run of every cargo-fuzz target in fuzz/ (see fuzz/Cargo.toml).
#
# Needs a nightly toolchain (libFuzzer's coverage instrumentation); without one it prints why
# it is skipped and exits 0. Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when it
# is missing. Builds the targets once, runs each for FUZZ_SECONDS (default 8) from a scratch
# copy of its committed seeds (fuzz/corpus/<target>/ stays as committed), fails on any crash,
# leak, timeout or out-of-memory, and prints one summary line.
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 8)
#   FUZZ_TARGETS     space-separated subset of targets (default: all)
#   FUZZ_SANITIZER   cargo-fuzz sanitizer (default none: our code forbids `unsafe`, and the
#                    build and the runs are about twice as fast without ASan; use `address`
#                    for long local runs)
#   CARGO_TARGET_DIR where build artifacts go (default fuzz/target, gitignored)
# Crash inputs land in fuzz/artifacts/<target>/ (gitignored); reproduce one with
#   cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/crash-...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-8}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
ALL_TARGETS="json_commands protobuf_commands delimited_stream ws_frames upgrade_head jwt"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz smoke: SKIPPED: no nightly toolchain ('cargo +nightly' failed);" \
        "install one with 'rustup toolchain install nightly' to run the fuzz targets"
    exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

started=$SECONDS
# -a: debug assertions (and overflow checks) on, so arithmetic overflow on hostile input is
# a crash here rather than a silent wrap in release builds.
build_flags=(--release --debug-assertions --sanitizer "$FUZZ_SANITIZER")
echo "fuzz smoke: building targets ($(cargo +nightly --version))"
cargo +nightly fuzz build "${build_flags[@]}"
built=$((SECONDS - started))

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

total_runs=0
failed=()
for target in $TARGETS; do
    corpus="$scratch/$target"
    mkdir -p "$corpus"
    log="$scratch/$target.log"
    # New inputs go to the first corpus directory (the scratch one); the committed seeds are
    # only read.
    if cargo +nightly fuzz run "${build_flags[@]}" "$target" "$corpus" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        >"$log" 2>&1; then
        runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -n1 || true)"
        runs="${runs:-0}"
        total_runs=$((total_runs + runs))
        echo "fuzz smoke: $target: ok, $runs runs in ${FUZZ_SECONDS}s"
    else
        failed+=("$target")
        echo "fuzz smoke: $target: FAILED; libFuzzer output:"
        tail -n 60 "$log"
    fi
done

count="$(wc -w <<<"$TARGETS" | tr -d ' ')"
elapsed=$((SECONDS - started))
if ((${#failed[@]} > 0)); then
    echo "fuzz smoke: FAILED: ${failed[*]} (of $count targets; build ${built}s, total ${elapsed}s);" \
        "crash inputs are in fuzz/artifacts/"
    exit 1
fi
echo "fuzz smoke: passed: $count targets, $total_runs runs, no crash (build ${built}s, total ${elapsed}s)"
