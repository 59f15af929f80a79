#!/usr/bin/env bash
# Makes sure the services the tests use are up: Redis on 127.0.0.1:6379 (cluster tests, the
# Redis engine's tests, the Redis Streams consumer and the interop suite on Redis), NATS with
# JetStream on 127.0.0.1:4222 (the NATS broker's cluster tests, the JetStream consumer),
# PostgreSQL on 127.0.0.1:5432 (the outbox consumer; database `test`), RabbitMQ on
# 127.0.0.1:5672 (the AMQP consumer), and a 3-master Redis Cluster on 127.0.0.1:7101-7103
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
# PostgreSQL answers an SSLRequest with one byte, 'S' or 'N'.
postgres_up() {
    python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 5432), timeout=1)
    s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    sys.exit(0 if s.recv(1) in (b"S", b"N") else 1)
except OSError:
    sys.exit(1)
PY
}
# RabbitMQ answers the AMQP 0-9-1 protocol header with a Connection.Start method frame.
rabbitmq_up() {
    python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 5672), timeout=1)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)
except OSError:
    sys.exit(1)
PY
}

# wait_for NAME CHECK [TENTHS]: polls CHECK for up to TENTHS/10 s (default 5 s).
wait_for() {
    for _ in $(seq 1 "${3:-50}"); do
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
        nohup "$server" -a 127.0.0.1 -p 4222 -js -sd /tmp/tether-nats/js \
            -l /tmp/tether-nats/nats.log >/dev/null 2>&1 &
        wait_for nats nats_up && return 0
    fi
    echo "nats: no server on 127.0.0.1:4222 and none could be started (install nats-server)" >&2
    return 1
}

ensure_postgres() {
    if postgres_up; then
        echo "postgresql: up on 127.0.0.1:5432"
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "postgresql: not answering; starting the local cluster"
        local version
        version="$(ls /etc/postgresql | sort -V | tail -n 1)"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        wait_for postgresql postgres_up 150 && return 0
    fi
    echo "postgresql: no server on 127.0.0.1:5432 and none could be started (install postgresql)" >&2
    return 1
}

ensure_rabbitmq() {
    if rabbitmq_up; then
        echo "rabbitmq: up on 127.0.0.1:5672"
        return 0
    fi
    if command -v rabbitmq-server >/dev/null 2>&1; then
        echo "rabbitmq: not answering; starting rabbitmq-server"
        rabbitmq-server -detached || true
        wait_for rabbitmq rabbitmq_up 600 && return 0
    fi
    echo "rabbitmq: no server on 127.0.0.1:5672 and none could be started (install rabbitmq-server)" >&2
    return 1
}

ensure_redis
ensure_nats
ensure_postgres
ensure_rabbitmq
# The Redis Cluster tests' 3-master cluster on 127.0.0.1:7101-7103 (idempotent; the tests
# would start it themselves, this keeps its start-up out of their time). Skipped when the
# tests are pointed at another cluster.
if [[ -z "${TETHER_TEST_REDIS_CLUSTER:-}" ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/redis-cluster.sh" start
fi
