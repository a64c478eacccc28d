#!/usr/bin/env bash
# Restart and memory at scale.
#
#   bash benches/scale.sh                 # kvstore at 10,000,000 and 1,000,000 keys, Redis at 1,000,000
#   KEYS=2000000 bash benches/scale.sh    # a smaller kvstore run
#
# For kvstore (--sync always): loads KEYS keys (16-byte keys, 100-byte values)
# through BulkSets of 100 with kvstore-bench, and reports the load rate, the
# resident memory per key, the log size; kills it with SIGKILL and measures
# the restart from the log alone (spawn to first answered GET); stops it with
# SIGTERM, which writes the snapshot (its size and write time from the
# server's log); and measures the restart from the snapshot. The same at
# 1,000,000 keys, and Redis 7 with appendonly yes + appendfsync always at
# 1,000,000 keys (memory, AOF size, restart from the AOF). Writes
# bench-results/scale.md. Everything it starts it stops by process id.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
SMALL=${SMALL_KEYS:-1000000}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17101}
RESP=${RESP_PORT:-17102}
REDIS=${REDIS_PORT:-17103}

source benches/lib.sh
ensure_redis
build_release
mkdir -p "$OUT"
# The one server running at a time (also in `pids`, for cleanup on exit).
pid=""

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
start_kvstore() { # data
  target/release/kvstore-server --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
    --data "$1" --snapshot-after-bytes 1099511627776 >>"$work/kvstore.out" 2>>"$work/kvstore.log" &
  pid=$!
  pids=("$pid")
}

kvstore_at() { # keys
  local keys=$1 data="$work/kv-$1/kvstore.db" t0 load rate rss log_bytes
  mkdir -p "$(dirname "$data")"
  : >"$work/kvstore.log"
  start_kvstore "$data"
  wait_up "$RESP"
  t0=$(now_ms)
  $bench --addr "127.0.0.1:$NATIVE" -t bulkset --bulk 100 --sequential -r "$keys" \
    -n $((keys / 100)) -c 8 -q >"$work/load.txt"
  load=$(($(now_ms) - t0))
  rate=$((keys * 1000 / load))
  rss=$(rss_kib "$pid")
  log_bytes=$(du -sb "$data-wal" | cut -f1)
  stop KILL
  t0=$(now_ms)
  start_kvstore "$data"
  local from_log
  from_log=$(first_answer_ms "$t0" "$RESP")
  local keys_after
  keys_after=$(redis-cli -p "$RESP" DBSIZE)
  t0=$(now_ms)
  stop TERM
  local shutdown=$(($(now_ms) - t0))
  local snap_ms
  snap_ms=$(grep "snapshot written" "$work/kvstore.log" | tail -1 |
    sed 's/\x1b\[[0-9;]*m//g; s/.* ms=\([0-9]*\).*/\1/')
  local snap_bytes
  snap_bytes=$(stat -c %s "$data")
  t0=$(now_ms)
  start_kvstore "$data"
  local from_snapshot
  from_snapshot=$(first_answer_ms "$t0" "$RESP")
  stop TERM
  printf '| kvstore | %s | %s | %s | %s | %s MB | %s MB (%s ms to write; shutdown %s ms) | %s ms | %s ms |\n' \
    "$keys" "$keys_after" "$rate" "$((rss * 1024 / keys))" "$((log_bytes / 1000000))" \
    "$((snap_bytes / 1000000))" "$snap_ms" "$shutdown" "$from_log" "$from_snapshot"
}

redis_at() { # keys
  local keys=$1 dir="$work/redis" t0 load rate rss aof
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --dir "$dir" --appendonly yes \
    --appendfsync always >"$work/redis.log" 2>&1 &
  pid=$!
  pids=("$pid")
  wait_up "$REDIS"
  t0=$(now_ms)
  $bench --resp --addr "127.0.0.1:$REDIS" -t bulkset --bulk 100 --sequential -r "$keys" \
    -n $((keys / 100)) -c 8 -q >"$work/load.txt"
  load=$(($(now_ms) - t0))
  rate=$((keys * 1000 / load))
  rss=$(rss_kib "$pid")
  aof=$(du -sb "$dir" | cut -f1)
  stop KILL
  t0=$(now_ms)
  redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --dir "$dir" --appendonly yes \
    --appendfsync always >>"$work/redis.log" 2>&1 &
  pid=$!
  pids=("$pid")
  local from_aof keys_after
  from_aof=$(first_answer_ms "$t0" "$REDIS")
  keys_after=$(redis-cli -p "$REDIS" DBSIZE)
  stop TERM
  printf '| Redis 7 AOF always | %s | %s | %s | %s | %s MB (AOF) | — | %s ms (AOF) | — |\n' \
    "$keys" "$keys_after" "$rate" "$((rss * 1024 / keys))" "$((aof / 1000000))" "$from_aof"
}

{
  echo "# Restart and memory at scale"
  echo
  echo "\`bash benches/scale.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD), $(redis-server --version | cut -d' ' -f1-3)."
  echo "16-byte keys, 100-byte values, loaded as BulkSet/MSET of 100 by kvstore-bench over 8 connections; durable mode (--sync always / appendfsync always)."
  echo
  echo "| system | keys loaded | keys after restart | load, keys/s | RSS per key, bytes | log on disk | snapshot | restart from the log, to first answer | restart from the snapshot |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$OUT/scale.md"
kvstore_at "$KEYS" | tee -a "$OUT/scale.md"
kvstore_at "$SMALL" | tee -a "$OUT/scale.md"
redis_at "$SMALL" | tee -a "$OUT/scale.md"
cat "$OUT/scale.md"
