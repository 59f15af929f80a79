#!/usr/bin/env bash
# Makes sure the services the tests use are up: Redis on 127.0.0.1:6379 (cluster tests, the
# Redis engine's tests and the interop suite on Redis), and a 3-master Redis Cluster on
# 127.0.0.1:7101-7103 (scripts/redis-cluster.sh; the Redis Cluster tests). Starts a local
# redis-server the way this machine's image does if none answers; fails with a clear message
# if it cannot.
set -euo pipefail

redis_up() {
    python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
    s.sendall(b"PING\r\n")
    ok = s.recv(16).startswith(b"+PONG")
    s.close()
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
PY
}

ensure_redis() {
    if redis_up; then
        echo "redis: up on 127.0.0.1:6379"
        return 0
    fi
    if command -v redis-server >/dev/null 2>&1; then
        echo "redis: not answering; starting redis-server on 127.0.0.1:6379"
        mkdir -p /tmp/tether-redis
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir /tmp/tether-redis --logfile /tmp/tether-redis/redis.log
        for _ in $(seq 1 50); do
            if redis_up; then
                echo "redis: started"
                return 0
            fi
            sleep 0.1
        done
    fi
    echo "redis: no server on 127.0.0.1:6379 and none could be started (install redis-server)" >&2
    return 1
}

ensure_redis
# The Redis Cluster tests' 3-master cluster on 127.0.0.1:7101-7103 (idempotent; the tests
# would start it themselves, this keeps its start-up out of their time). Skipped when the
# tests are pointed at another cluster.
if [[ -z "${TETHER_TEST_REDIS_CLUSTER:-}" ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/redis-cluster.sh" start
fi
