# Shared by the benchmark scripts (sourced, not run): the work directory and
# the processes a script starts, stopped by process id when it exits; Redis
# installed if missing; waiting for a server to answer.

# Installs Debian's redis-server and redis-tools if redis-server is missing.
# Builds the release server and load generator; sets $bench.
build_release() {
  cargo build --release --bin kvstore-server --bin kvstore-bench
  bench=target/release/kvstore-bench
}

ensure_redis() {
  command -v redis-server >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq redis-server redis-tools
}

# A temporary work directory, and `pids`: every process id pushed there is
# stopped, and the directory removed, when the script exits.
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Milliseconds since the epoch.
now_ms() { date +%s%3N; }

# Stops the one server a script runs at a time, `$pid`, with SIGNAL and
# waits for it.
stop() { # signal
  kill "-$1" "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  pids=()
}

# Waits until the RESP server on 127.0.0.1:PORT answers PING (at most 20 s).
wait_up() { # port
  for _ in $(seq 2000); do
    redis-cli -p "$1" PING >/dev/null 2>&1 && return
    sleep 0.01
  done
  echo "the server on port $1 did not come up" >&2
  return 1
}

# Prints the milliseconds from $1 until GET key:000000000000 on the RESP
# port $2 answers the 100-byte value kvstore-bench loads (refused
# connections are retried); "never", and failure, after about 5 minutes.
first_answer_ms() { # since port
  local value
  value=$(printf 'x%.0s' $(seq 100))
  for _ in $(seq 60000); do
    if [ "$(redis-cli -p "$2" GET key:000000000000 2>/dev/null)" = "$value" ]; then
      echo $(($(now_ms) - $1))
      return
    fi
    sleep 0.005
  done
  echo never
  return 1
}
