#!/usr/bin/env bash
# Makes sure the services the tests use are up: Redis on 127.0.0.1:6379 (cluster tests, the
# Redis engine's tests and the interop suite on Redis), NATS on 127.0.0.1:4222 (the NATS
# broker's cluster tests), and a 3-master Redis Cluster on 127.0.0.1:7101-7103
# (scripts/redis-cluster.sh; the Redis Cluster tests). Starts a local server the way this
# machine's image does if none answers; fails with a clear message if it cannot.
set -euo pipefail

# Exit status 0 when the server on 127.0.0.1:PORT answers SEND (may be empty) with a reply
# starting with EXPECT.
answers() {
    python3 - "$1" "$2" "$3" <<'PY'
import socket, sys
port, send, expect = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    if send:
        s.sendall(send.replace(b"\\r\\n", b"\r\n"))
    ok = s.recv(16).startswith(expect)
    s.close()
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
PY
}

redis_up() { answers 6379 'PING\r\n' '+PONG'; }
nats_up() { answers 4222 '' 'INFO '; }

# wait_for NAME CHECK: polls CHECK for up to 5 s.
wait_for() {
    for _ in $(seq 1 50); do
        if "$2"; then
            echo "$1: started"
            return 0
        fi
        sleep 0.1
    done
    return 1
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
        wait_for redis redis_up && return 0
    fi
    echo "redis: no server on 127.0.0.1:6379 and none could be started (install redis-server)" >&2
    return 1
}

ensure_nats() {
    if nats_up; then
        echo "nats: up on 127.0.0.1:4222"
        return 0
    fi
    local server
    server="$(command -v nats-server || true)"
    if [ -z "$server" ] && [ -x /usr/sbin/nats-server ]; then
        server=/usr/sbin/nats-server
    fi
    if [ -n "$server" ]; then
        echo "nats: not answering; starting nats-server on 127.0.0.1:4222"
        mkdir -p /tmp/tether-nats
        nohup "$server" -a 127.0.0.1 -p 4222 -l /tmp/tether-nats/nats.log >/dev/null 2>&1 &
        wait_for nats nats_up && return 0
    fi
    echo "nats: no server on 127.0.0.1:4222 and none could be started (install nats-server)" >&2
    return 1
}

ensure_redis
ensure_nats
# The Redis Cluster tests' 3-master cluster on 127.0.0.1:7101-7103 (idempotent; the tests
# would start it themselves, this keeps its start-up out of their time). Skipped when the
# tests are pointed at another cluster.
if [[ -z "${TETHER_TEST_REDIS_CLUSTER:-}" ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/redis-cluster.sh" start
fi
