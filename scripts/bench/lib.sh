# Shared by the bench scripts (sourced, not run).

# wait_port PORT: waits up to 10 s for a listener on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}

# free_port START: prints the first port in START..START+99 with no listener on 127.0.0.1
# (nothing answers a connect); fails if all 100 are taken.
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 99))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port in $1..$(($1 + 99))" >&2
  return 1
}

# stop_pids PID...: asks each process to stop (SIGCONT first, in case it was frozen, then
# SIGTERM), waits up to 10 s for each (tether drains its connections, bounded by
# shutdown.timeout), then kills what is left and reaps it. Empty arguments are skipped.
stop_pids() {
  local p
  for p in "$@"; do
    [[ -n "$p" ]] || continue
    kill -CONT "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  for p in "$@"; do
    [[ -n "$p" ]] || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
