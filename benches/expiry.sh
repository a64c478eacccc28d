#!/usr/bin/env bash
# What expiry costs (docs/expiry.md), on the memory engine, --sync always.
#
#   bash benches/expiry.sh                 # 1,000,000 keys, as issue 23 asks
#   KEYS=100000 bash benches/expiry.sh     # a shorter run
#
# 1. Memory: the server's resident size after KEYS single SETs of 100-byte
#    values, without and with a time to live (an hour), each in a fresh
#    server: the difference per key is what a deadline costs. The same for
#    Redis 7 (appendfsync always) with SET ... PX, side by side.
# 2. `kvstore-bench --expiry` on a fresh server: KEYS keys with random times
#    to live within a minute (every hundredth read 100 ms before and after
#    its deadline), then KEYS keys due at one instant while 50 tasks GET
#    other keys: GET latency and server CPU before the deadline and while
#    the sweep runs.
# Writes bench-results/expiry.md. Everything it starts it stops by process id.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17131}
RESP=${RESP_PORT:-17132}
REDIS=${REDIS_PORT:-17133}
SERVER=${SERVER:-target/release/kvstore-server}

source benches/lib.sh
ensure_redis
build_release
mkdir -p "$OUT"
pid=""

start() {
  rm -rf "$work/data"; mkdir -p "$work/data"
  "$SERVER" --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
    --data "$work/data/kvstore.db" >>"$work/server.out" 2>>"$work/server.log" &
  pid=$!
  pids=("$pid")
  wait_up "$RESP"
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
report() { echo "$*" | tee -a "$OUT/expiry.md"; }
{
  echo "# What expiry costs"
  echo
  echo "\`KEYS=$KEYS bash benches/expiry.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD)."
  echo "Memory engine, --sync always, 16-byte keys (key:NNNNNNNNNNNN), 100-byte values (16-byte in the second part); Redis $(redis-server --version | grep -o 'v=[0-9.]*')."
  echo
} >"$OUT/expiry.md"

# load LABEL PORT [--resp]: KEYS single SETs, without and then with a TTL,
# each into a fresh server that `start_$LABEL` starts.
load() {
  local label=$1 port=$2 empty full ttl
  shift 2
  for ttl in none 3600000; do
    "start_$label"
    empty=$(rss_kib)
    extra=()
    [ "$ttl" = none ] || extra=(--ttl-ms "$ttl")
    $bench --addr "127.0.0.1:$port" "$@" -q -c 50 -d 100 -t set --sequential \
      -r "$KEYS" -n "$KEYS" "${extra[@]}" >/dev/null
    full=$(rss_kib)
    report "- $label, SET of $KEYS keys, ttl $ttl ms: resident $((empty / 1024)) MiB empty, $((full / 1024)) MiB loaded: $(((full - empty) * 1024 / KEYS)) bytes a key"
    stop TERM
  done
}
start_kvstore() { start; }
start_redis() {
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --dir "$work/redis" >"$work/redis.log" 2>&1 &
  pid=$!
  pids=("$pid")
  wait_up "$REDIS"
}
load kvstore "$NATIVE"
load redis "$REDIS" --resp
start
report
report '```'
$bench --addr "127.0.0.1:$NATIVE" --expiry -r "$KEYS" -c 50 -d 16 --server-pid "$pid" \
  | tee -a "$OUT/expiry.md"
report '```'
stop TERM
