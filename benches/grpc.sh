#!/usr/bin/env bash
# kvstore's gRPC door against its native protocol: same server, same run.
#
#   bash benches/grpc.sh                      # 3 rounds of 10 s per measurement
#   ROUNDS=2 DURATION=5 SYNC=never bash benches/grpc.sh
#
# Starts one release kvstore-server (--sync $SYNC, default always) listening
# natively and on --grpc-listen, fills 100,000 keys, then in each round runs
# kvstore-bench -t set,get -c 50 (50 clients, one request in flight each,
# 100-byte values, random keys of 100,000) through the native protocol and
# then through gRPC, alternating so that neither always runs on a warmer
# server. Writes bench-results/grpc.csv (or $OUT) and prints requests/s,
# latency and the server's CPU time per request (from /proc/PID/stat: the
# load generator shares the machine, and tonic's client costs more than the
# native one, so CPU per request shows the server's side alone) per round and
# protocol. Stops the server by its process id.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SYNC=${SYNC:-always}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17211}
RESP=${RESP_PORT:-17212}
GRPC=${GRPC_PORT:-17213}

source benches/lib.sh
build_release
mkdir -p "$OUT"
csv="$OUT/grpc.csv"
rm -f "$csv"

target/release/kvstore-server --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
  --grpc-listen "127.0.0.1:$GRPC" --data "$work/kvstore.db" --sync "$SYNC" \
  >"$work/server.out" 2>"$work/server.log" &
pid=$!
pids=("$pid")
command -v redis-cli >/dev/null || { echo "wait_up needs redis-cli (apt install redis-tools)" >&2; exit 1; }
wait_up "$RESP"
$bench --addr "127.0.0.1:$NATIVE" -t bulkset --bulk 100 --sequential -r 100000 -n 1000 -c 8 -q >/dev/null

# The server's CPU time so far (user + system), in clock ticks.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
ticks_per_s=$(getconf CLK_TCK)
cpu="$work/cpu.txt"
for round in $(seq "$ROUNDS"); do
  for door in native grpc; do
    if [ "$door" = native ]; then
      flags=(--addr "127.0.0.1:$NATIVE" --label "native-r$round")
    else
      flags=(--grpc --addr "127.0.0.1:$GRPC" --label "grpc-r$round")
    fi
    for test in set get; do
      before=$(server_ticks)
      $bench "${flags[@]}" -t "$test" -c 50 -d 100 -r 100000 --duration "$DURATION" -q --csv "$csv" >/dev/null
      echo "$(($(server_ticks) - before))" >>"$cpu"
    done
  done
done
stop TERM

echo "kvstore-server --sync $SYNC, $ROUNDS rounds of $DURATION s, -c 50 -d 100; $(nproc) cores"
echo "server CPU: the server process's user + system time over the run, per request"
awk -F, -v tps="$ticks_per_s" 'NR == FNR { ticks[FNR + 1] = $1; next }
  FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  { printf "%-10s %-6s %-4s %8.0f req/s  p50 %6.3f ms  p99 %6.3f ms  server CPU %5.1f us/req  errors %s\n",
      $col["system"], $col["protocol"], $col["test"], $col["requests_per_sec"],
      $col["p50_ms"], $col["p99_ms"], ticks[FNR] / tps * 1e6 / $col["requests"], $col["errors"] }' "$cpu" "$csv"
