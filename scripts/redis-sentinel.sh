#!/usr/bin/env bash
# A throwaway Redis Sentinel deployment on loopback — a master, one replica and 1 (or 3)
# sentinels — for the Sentinel tests (crates/tether-server/tests/redis_sentinel.rs) and local
# experiments.
#
#   scripts/redis-sentinel.sh start        # idempotent: starts what is missing and waits until
#                                          # the sentinels name a master that has a linked replica
#   scripts/redis-sentinel.sh stop         # shuts everything down and removes its directory
#   scripts/redis-sentinel.sh status       # the master the sentinels name, and each process
#   scripts/redis-sentinel.sh master       # prints host:port of the current master
#   scripts/redis-sentinel.sh kill PORT    # SIGKILL of one data node (a crash: no goodbye)
#   scripts/redis-sentinel.sh restart PORT # starts a killed data node again, empty, as a replica
#                                          # of the current master; waits for its link
#
# Data nodes listen on 127.0.0.1:${TETHER_REDIS_SENTINEL_PORT:-7201} and the port above it,
# sentinels from that port + 10 (${TETHER_REDIS_SENTINELS:-1} of them, quorum = majority),
# monitoring the master as ${TETHER_REDIS_SENTINEL_MASTER:-tether}; no persistence; files under
# ${TMPDIR:-/tmp}/tether-redis-sentinel-<port>. Tests that fail over use their own port, so they
# never disturb one another. Concurrent calls serialise on a lock file.
set -euo pipefail

BASE="${TETHER_REDIS_SENTINEL_PORT:-7201}"
NAME="${TETHER_REDIS_SENTINEL_MASTER:-tether}"
COUNT="${TETHER_REDIS_SENTINELS:-1}"
DATA=("$BASE" "$((BASE + 1))")
SENTINELS=()
for i in $(seq 0 $((COUNT - 1))); do SENTINELS+=("$((BASE + 10 + i))"); done
QUORUM=$((COUNT / 2 + 1))
DIR="${TMPDIR:-/tmp}/tether-redis-sentinel-$BASE"
# How long to wait for a process or the deployment (tenths of a second).
WAIT_TENTHS=300

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

up() { [[ "$(cli "$1" PING 2>/dev/null)" == "PONG" ]]; }

field() { cli "$1" INFO "$2" 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"; }

# host:port of the master, as the first answering sentinel names it.
current_master() {
    local port reply
    for port in "${SENTINELS[@]}"; do
        reply="$(cli "$port" SENTINEL get-master-addr-by-name "$NAME" 2>/dev/null | tr '\n' ':' || true)"
        if [[ "$reply" =~ ^[^:]+:[0-9]+:$ ]]; then
            echo "${reply%:}"
            return 0
        fi
    done
    return 1
}

# The named master is a master, every data node is up, and every other one is linked to it
# and known to the sentinels as its replica.
healthy() {
    local master port
    master="$(current_master)" || return 1
    port="${master##*:}"
    [[ "$(field "$port" replication role)" == "master" ]] || return 1
    for other in "${DATA[@]}"; do
        [[ "$other" == "$port" ]] && continue
        [[ "$(field "$other" replication master_link_status)" == "up" ]] || return 1
        [[ "$(field "$other" replication master_port)" == "$port" ]] || return 1
    done
    for sentinel in "${SENTINELS[@]}"; do
        # A healthy replica's flags are just "slave" (no s_down, no disconnected).
        [[ "$(cli "$sentinel" SENTINEL replicas "$NAME" 2>/dev/null \
            | grep -A1 '^flags$' | grep -c '^slave$' || true)" -ge $((${#DATA[@]} - 1)) ]] || return 1
    done
    return 0
}

wait_until() {
    local _
    for _ in $(seq 1 "$WAIT_TENTHS"); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# start_data PORT [MASTER_PORT]
start_data() {
    local port="$1" of="${2:-}"
    mkdir -p "$DIR/$port"
    local replica=()
    [[ -n "$of" ]] && replica=(--replicaof 127.0.0.1 "$of")
    # The daemon must not inherit the lock descriptor (it would hold the lock forever).
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
        --save '' --appendonly no --dir "$DIR/$port" \
        --replica-announce-ip 127.0.0.1 \
        --logfile "$DIR/$port/redis.log" --pidfile "$DIR/$port/redis.pid" "${replica[@]}" 9>&-
    wait_until up "$port" || {
        echo "redis-sentinel: data node on $port did not start (see $DIR/$port/redis.log)" >&2
        return 1
    }
}

start_sentinel() {
    local port="$1" master_port="$2"
    mkdir -p "$DIR/$port"
    local conf="$DIR/$port/sentinel.conf"
    # A sentinel rewrites its file with what it learnt: keep it across restarts.
    if [[ ! -f "$conf" ]]; then
        cat >"$conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
dir $DIR/$port
logfile $DIR/$port/sentinel.log
pidfile $DIR/$port/sentinel.pid
sentinel announce-ip 127.0.0.1
sentinel monitor $NAME 127.0.0.1 $master_port $QUORUM
sentinel down-after-milliseconds $NAME 1000
sentinel failover-timeout $NAME 4000
sentinel parallel-syncs $NAME 1
EOF
    fi
    redis-server "$conf" --sentinel 9>&-
    wait_until up "$port" || {
        echo "redis-sentinel: sentinel on $port did not start (see $DIR/$port/sentinel.log)" >&2
        return 1
    }
}

lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock 9
}

start() {
    command -v redis-server >/dev/null || { echo "redis-sentinel: redis-server not installed" >&2; exit 1; }
    lock
    local master port
    if master="$(current_master)"; then
        master="${master##*:}"
    else
        master="${DATA[0]}"
    fi
    up "$master" || start_data "$master"
    for port in "${DATA[@]}"; do
        [[ "$port" == "$master" ]] && continue
        up "$port" || start_data "$port" "$master"
    done
    for port in "${SENTINELS[@]}"; do
        up "$port" || start_sentinel "$port" "$master"
    done
    if wait_until healthy; then
        echo "redis-sentinel: $NAME at $(current_master), sentinels on ${SENTINELS[*]}"
        return 0
    fi
    echo "redis-sentinel: not healthy (see $DIR/*/*.log)" >&2
    status >&2
    return 1
}

kill_node() {
    local port="${1:?usage: $0 kill PORT}"
    [[ -f "$DIR/$port/redis.pid" ]] || { echo "redis-sentinel: no data node on $port" >&2; return 1; }
    kill -9 "$(cat "$DIR/$port/redis.pid")" 2>/dev/null || true
    wait_until bash -c "! redis-cli -h 127.0.0.1 -p $port PING >/dev/null 2>&1"
    echo "redis-sentinel: killed $port"
}

restart() {
    local port="${1:?usage: $0 restart PORT}"
    lock
    local master
    master="$(current_master)" || { echo "redis-sentinel: no master named" >&2; return 1; }
    master="${master##*:}"
    [[ "$master" == "$port" ]] && { echo "redis-sentinel: $port is the master" >&2; return 1; }
    up "$port" && cli "$port" SHUTDOWN NOSAVE NOW >/dev/null 2>&1 || true
    wait_until bash -c "! redis-cli -h 127.0.0.1 -p $port PING >/dev/null 2>&1"
    start_data "$port" "$master"
    if wait_until healthy; then
        echo "redis-sentinel: $port restarted as a replica of $master"
        return 0
    fi
    echo "redis-sentinel: not healthy after restarting $port" >&2
    return 1
}

stop() {
    local port
    for port in "${SENTINELS[@]}" "${DATA[@]}"; do
        up "$port" && cli "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
    echo "redis-sentinel: stopped"
}

status() {
    local port
    echo "master $NAME: $(current_master || echo unknown)"
    for port in "${DATA[@]}"; do
        if up "$port"; then
            echo "$port: $(field "$port" replication role)"
        else
            echo "$port: down"
        fi
    done
    for port in "${SENTINELS[@]}"; do
        if up "$port"; then echo "$port: sentinel"; else echo "$port: sentinel down"; fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    master) current_master ;;
    kill) kill_node "${2:-}" ;;
    restart) restart "${2:-}" ;;
    *)
        echo "usage: $0 start|stop|status|master|kill PORT|restart PORT" >&2
        exit 2
        ;;
esac
