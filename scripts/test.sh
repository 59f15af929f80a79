#!/usr/bin/env bash
# The project's single test command: formatting, lints, unit/integration tests, doc
# tests, then the interop acceptance tests with the real SDKs (scripts/interop.sh), the chaos
# suite's reduced form (scripts/chaos.sh), then a bounded fuzz smoke run
# (scripts/fuzz-smoke.sh; skipped without a nightly toolchain).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

section() { printf '\n======== %s ========\n' "$*"; }

section "services (scripts/ensure-services.sh)"
bash "$ROOT/scripts/ensure-services.sh"

section "cargo fmt --all --check"
cargo fmt --all --check

section "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run --workspace"
    cargo nextest run --workspace --no-tests=warn
else
    section "cargo test --workspace (cargo-nextest not installed)"
    cargo test --workspace --all-targets
fi

section "benches compile (cargo test --workspace --benches --no-run)"
cargo test --workspace --benches --no-run

section "cargo test --doc --workspace"
cargo test --doc --workspace

section "interop (scripts/interop.sh)"
# nextest just built the `tether` binary (the CLI tests run it): reuse it rather than
# rebuilding it with a different feature set.
BUILT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/tether"
if [[ -x "$BUILT_BIN" ]]; then
    export TETHER_BIN="$BUILT_BIN"
fi
bash "$ROOT/scripts/interop.sh"

section "interop on the Redis engine (INTEROP_ENGINE=redis scripts/interop.sh)"
# The proxy's transport does not depend on the engine: the HTTP half of the proxy phase shows
# the proxy on Redis, the gRPC half runs once, on the memory engine above.
INTEROP_ENGINE=redis INTEROP_SKIP_GRPC_PROXY=1 bash "$ROOT/scripts/interop.sh"

section "chaos, reduced form (CHAOS_QUICK=1 scripts/chaos.sh)"
# Four scenarios once each with few clients and short faults (docs/reliability.md); skips
# with a message where network namespaces or redis-server are unavailable.
CHAOS_QUICK=1 bash "$ROOT/scripts/chaos.sh"

section "fuzz smoke (scripts/fuzz-smoke.sh)"; bash "$ROOT/scripts/fuzz-smoke.sh"

section "all tests passed"
