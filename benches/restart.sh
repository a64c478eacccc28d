#!/usr/bin/env bash
# Restart after kill -9 with the defaults, at the worst moment.
#
#   bash benches/restart.sh                 # 10,000,000 keys, as issue 19 asks
#   KEYS=2000000 bash benches/restart.sh    # a shorter run
#
# The memory engine, --sync always, every other setting at its default: loads
# KEYS keys (16-byte keys, 100-byte values) through BulkSets of 100, stops
# with SIGTERM (the snapshot then holds everything) and restarts, then sends
# single SETs until the log written since that snapshot is nearly
# --snapshot-after-bytes (64 MiB), and kills the server with SIGKILL: a
# restart then loads the whole snapshot and replays the most log it ever
# has to. Reports spawn to the first answered GET, ROUNDS (3) times, and the
# snapshot-only restart (after SIGTERM) for comparison. Writes
# bench-results/restart.md. SERVER names another server binary to measure
# (a build of an older commit, say). Everything it starts it stops by
# process id.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
ROUNDS=${ROUNDS:-3}
LOG_MIB=${LOG_MIB:-60}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17121}
RESP=${RESP_PORT:-17122}
SERVER=${SERVER:-target/release/kvstore-server}

source benches/lib.sh
build_release
mkdir -p "$OUT"
pid=""
data="$work/kvstore.db"

start() {
  "$SERVER" --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
    --data "$data" >>"$work/server.out" 2>>"$work/server.log" &
  pid=$!
  pids=("$pid")
}
# Spawn to first answer, in ms, into $took (not in a subshell: `stop` waits).
restart() {
  local t0
  t0=$(now_ms)
  start
  took=$(first_answer_ms "$t0" "$RESP")
}
log_bytes() { du -sb "$data-wal" | cut -f1; }

report() { echo "$*" | tee -a "$OUT/restart.md"; }
{
  echo "# Restart after kill -9 with the defaults"
  echo
  echo "\`KEYS=$KEYS bash benches/restart.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD), server $SERVER."
  echo "Memory engine, 16-byte keys, 100-byte values, --sync always, default snapshot threshold."
  echo
} >"$OUT/restart.md"

start
wait_up "$RESP"
$bench --addr "127.0.0.1:$NATIVE" -t bulkset --bulk 100 --sequential -r "$KEYS" \
  -n $((KEYS / 100)) -c 8 -q >/dev/null
stop TERM
restart
report "- after SIGTERM (the snapshot alone): $took ms; snapshot $(($(stat -c %s "$data") / 1000000)) MB"
for round in $(seq "$ROUNDS"); do
  # Each SET of a 100-byte value is about 150 bytes of log.
  while [ "$(log_bytes)" -lt $((LOG_MIB << 20)) ]; do
    $bench --addr "127.0.0.1:$NATIVE" -t set -d 100 -r "$KEYS" -n 20000 -c 50 -q >/dev/null
  done
  log=$(log_bytes)
  stop KILL
  restart
  report "- round $round, after kill -9 with $((log / 1000000)) MB of log since the snapshot: $took ms"
  # The next round starts from a fresh snapshot.
  stop TERM
  restart
done
stop TERM
cat "$OUT/restart.md"
