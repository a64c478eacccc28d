#!/usr/bin/env bash
# redis-benchmark against kvstore's RESP door (--sync always) and against
# redis-server with appendonly yes + appendfsync always, on this machine, in one
# run, alternating rounds so that drift hits both alike. Everything it starts it
# stops by process id.
#
#   bash benches/resp-vs-redis.sh            # 3 rounds, -c 50 -n 200000 -d 100
#   ROUNDS=5 PIPELINE="1 16" bash benches/resp-vs-redis.sh
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-200000}
C=${C:-50}
D=${D:-100}
PIPELINE=${PIPELINE:-1}
KV_PORT=${KV_PORT:-16380}
REDIS_PORT=${REDIS_PORT:-16379}

source benches/lib.sh
ensure_redis
cargo build --release --bin kvstore-server

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --appendonly yes \
  --appendfsync always --save "" --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
target/release/kvstore-server --listen 127.0.0.1:0 --resp-listen "127.0.0.1:$KV_PORT" \
  --data "$work/kvstore.db" --sync always >"$work/kvstore.out" 2>"$work/kvstore.log" &
pids+=($!)
wait_up "$REDIS_PORT"
wait_up "$KV_PORT"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "redis: $(redis-server --version | cut -d' ' -f3) appendfsync always; kvstore: --sync always"
echo "command: redis-benchmark -p PORT -t set,get -c $C -n $N -d $D -P <pipeline> --csv"
echo
printf '%-6s %-8s %-9s %-5s %12s %8s %8s\n' round system pipeline test "requests/s" "p50 ms" "p99 ms"
for round in $(seq "$ROUNDS"); do
  for p in $PIPELINE; do
    for system in kvstore redis; do
      port=$KV_PORT
      [ "$system" = redis ] && port=$REDIS_PORT
      redis-benchmark -p "$port" -t set,get -c "$C" -n "$N" -d "$D" -P "$p" --csv 2>/dev/null |
        awk -F'","' -v r="$round" -v s="$system" -v p="$p" 'NR > 1 {
          gsub(/"/, "", $1)
          printf "%-6s %-8s %-9s %-5s %12s %8s %8s\n", r, s, p, $1, $2, $5, $7 }'
    done
  done
done
