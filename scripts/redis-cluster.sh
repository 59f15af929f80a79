#!/usr/bin/env bash
# A throwaway 3-master Redis Cluster on loopback for the Redis Cluster tests
# (crates/tether-server/tests/redis_cluster.rs) and local experiments.
#
#   scripts/redis-cluster.sh start    # idempotent: starts what is missing, creates the cluster
#                                     # if it has no slots, waits for cluster_state:ok
#   scripts/redis-cluster.sh stop     # shuts the nodes down and removes their directory
#   scripts/redis-cluster.sh status   # cluster_state of every node
#   scripts/redis-cluster.sh restart PORT   # restarts one node empty (it keeps its slots, as a
#                                           # master that lost its data), waits for ok
#
# Nodes listen on 127.0.0.1:${TETHER_REDIS_CLUSTER_PORTS:-7101 7102 7103} (bus ports +10000),
# without persistence, under ${TMPDIR:-/tmp}/tether-redis-cluster-<first port> (tests that
# break nodes use their own ports, so they never disturb the shared cluster). Concurrent calls
# (parallel tests) serialise on a lock file; a cluster that is up is left untouched.
set -euo pipefail

PORTS=(${TETHER_REDIS_CLUSTER_PORTS:-7101 7102 7103})
DIR="${TMPDIR:-/tmp}/tether-redis-cluster-${PORTS[0]}"
# How long to wait for a node to answer and for the cluster to agree (tenths of a second).
WAIT_TENTHS=200

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

node_up() { [[ "$(cli "$1" PING 2>/dev/null)" == "PONG" ]]; }

info_field() { cli "$1" CLUSTER INFO 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

all_ok() {
    local port
    for port in "${PORTS[@]}"; do
        [[ "$(info_field "$port" cluster_state)" == "ok" ]] || return 1
        [[ "$(info_field "$port" cluster_known_nodes)" == "${#PORTS[@]}" ]] || return 1
    done
}

wait_all_ok() {
    local _
    for _ in $(seq 1 "$WAIT_TENTHS"); do
        all_ok && return 0
        sleep 0.1
    done
    return 1
}

start_node() {
    local port="$1"
    mkdir -p "$DIR/$port"
    # The daemon must not inherit the lock descriptor (it would hold the lock forever).
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
        --cluster-enabled yes --cluster-config-file "$DIR/$port/nodes.conf" \
        --cluster-node-timeout 2000 \
        --save '' --appendonly no --dir "$DIR/$port" \
        --logfile "$DIR/$port/redis.log" --pidfile "$DIR/$port/redis.pid" 9>&-
    local _
    for _ in $(seq 1 "$WAIT_TENTHS"); do
        node_up "$port" && return 0
        sleep 0.1
    done
    echo "redis-cluster: node on port $port did not start (see $DIR/$port/redis.log)" >&2
    return 1
}

create_cluster() {
    local addresses=() port
    for port in "${PORTS[@]}"; do
        # A node left half-joined by an interrupted create cannot join a new one.
        cli "$port" FLUSHALL >/dev/null
        cli "$port" CLUSTER RESET HARD >/dev/null
        addresses+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
}

lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock 9
}

start() {
    command -v redis-server >/dev/null || { echo "redis-cluster: redis-server not installed" >&2; exit 1; }
    lock
    local port
    for port in "${PORTS[@]}"; do
        node_up "$port" || start_node "$port"
    done
    if all_ok; then
        echo "redis-cluster: up on ${PORTS[*]}"
        return 0
    fi
    # Nodes that still hold a cluster config (a restarted node) may just need a moment.
    if [[ "$(info_field "${PORTS[0]}" cluster_slots_assigned)" == "16384" ]] && wait_all_ok; then
        echo "redis-cluster: up on ${PORTS[*]}"
        return 0
    fi
    echo "redis-cluster: creating the cluster on ${PORTS[*]}"
    create_cluster
    if wait_all_ok; then
        echo "redis-cluster: up on ${PORTS[*]}"
        return 0
    fi
    echo "redis-cluster: cluster_state did not become ok (see $DIR/*/redis.log)" >&2
    return 1
}

restart() {
    local port="${1:?usage: $0 restart PORT}"
    lock
    if node_up "$port"; then
        cli "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    fi
    local _
    for _ in $(seq 1 "$WAIT_TENTHS"); do
        node_up "$port" || break
        sleep 0.1
    done
    start_node "$port"
    if wait_all_ok; then
        echo "redis-cluster: node $port restarted"
        return 0
    fi
    echo "redis-cluster: cluster_state did not become ok after restarting $port" >&2
    return 1
}

stop() {
    local port
    for port in "${PORTS[@]}"; do
        if node_up "$port"; then
            cli "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$DIR"
    echo "redis-cluster: stopped"
}

status() {
    local port
    for port in "${PORTS[@]}"; do
        if node_up "$port"; then
            echo "$port: cluster_state=$(info_field "$port" cluster_state)"
        else
            echo "$port: down"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) restart "${2:-}" ;;
    *)
        echo "usage: $0 start|stop|status|restart PORT" >&2
        exit 2
        ;;
esac
