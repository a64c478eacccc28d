#!/usr/bin/env bash
# What watches cost (docs/watch.md), on the memory engine, --sync always.
#
#   bash benches/watch.sh                       # 0, 1, 100 and 10,000 watchers
#   WATCHERS=1,100 WRITES=200 bash benches/watch.sh
#
# `kvstore-bench --watchers` against one fresh server: for each count, that
# many watches of a prefix (a connection each, through the client library),
# then WRITES sets of 100 bytes under it, one at a time: the writer's
# writes/s, the time from each write's acknowledgement to its event at each
# watcher (p50, p99, max), and the server's resident memory per idle
# watcher. Writes bench-results/watch.md. Everything it starts it stops by
# process id.
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHERS=${WATCHERS:-0,1,100,10000}
WRITES=${WRITES:-1000}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17141}
RESP=${RESP_PORT:-17142}
SERVER=${SERVER:-target/release/kvstore-server}

source benches/lib.sh
ensure_redis
build_release
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$SERVER" --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
  --max-connections 20000 --data "$work/kvstore.db" >"$work/server.out" 2>"$work/server.log" &
pid=$!
pids=("$pid")
wait_up "$RESP"
{
  echo "# What watches cost"
  echo
  echo "\`WATCHERS=$WATCHERS WRITES=$WRITES bash benches/watch.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD); server and watchers on the same cores."
  echo
  echo '```'
} >"$OUT/watch.md"
$bench --addr "127.0.0.1:$NATIVE" --watchers "$WATCHERS" -n "$WRITES" -d 100 \
  --server-pid "$pid" | tee -a "$OUT/watch.md"
echo '```' >>"$OUT/watch.md"
stop TERM
