#!/usr/bin/env bash
# Installs the peers tether is benchmarked against, each from its registry (nothing vendored):
#   sockudo      crates.io  (cargo install --locked), needs protoc + libprotobuf-dev (Debian)
#   nats-server  Debian package
#   node ws      npm (scripts/bench/ws-server, npm ci from its lockfile)
# Everything lands under $PEERS_DIR (default: $CARGO_TARGET_DIR/peers or target/peers).
# Usage: scripts/bench/install-peers.sh [sockudo|nats|ws|all]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
PEERS_DIR="${PEERS_DIR:-$TARGET/peers}"
SOCKUDO_VERSION="${SOCKUDO_VERSION:-5.2.0}"
what="${1:-all}"
mkdir -p "$PEERS_DIR"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

install_sockudo() {
  if [[ -x "$PEERS_DIR/sockudo/bin/sockudo" ]]; then echo "sockudo: present"; return; fi
  apt_install protobuf-compiler libprotobuf-dev pkg-config libssl-dev
  # Its own target dir: never share one with the workspace.
  CARGO_TARGET_DIR="$PEERS_DIR/sockudo-build" \
    nice -n 10 cargo install sockudo --version "$SOCKUDO_VERSION" --locked \
    --root "$PEERS_DIR/sockudo"
  "$PEERS_DIR/sockudo/bin/sockudo" --version || true
}

install_nats() {
  if command -v nats-server >/dev/null 2>&1; then echo "nats-server: $(nats-server --version)"; return; fi
  apt_install nats-server
  nats-server --version
}

install_ws() {
  (cd "$ROOT/scripts/bench/ws-server" && npm ci --no-audit --no-fund --silent)
  echo "node ws: $(node -e 'console.log(require(process.argv[1]).version)' "$ROOT/scripts/bench/ws-server/node_modules/ws/package.json")"
}

case "$what" in
  sockudo) install_sockudo ;;
  nats) install_nats ;;
  ws) install_ws ;;
  all) install_nats; install_ws; install_sockudo ;;
  *) echo "usage: $0 [sockudo|nats|ws|all]" >&2; exit 2 ;;
esac
