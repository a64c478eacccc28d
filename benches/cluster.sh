#!/usr/bin/env bash
# Write throughput of a 3-node cluster against one server with --sync always,
# on this machine.
#
#   bash benches/cluster.sh                    # 3 rounds of 10 s each
#   ROUNDS=1 DURATION=5 CLIENTS=50 bash benches/cluster.sh
#
# In each round: one release kvstore-server --sync always alone, then a
# 3-node cluster (scripts/local-cluster.sh, all three on this machine, each
# fsyncing its own log) on the memory engine, then one on the disk engine
# (cluster3-disk), all loaded by kvstore-bench -t set -c $CLIENTS
# -d 100 -r 100000 against the single server and against the cluster's
# leader. All nodes share the machine's cores and disk: a real cluster has
# a machine per node and a network between them. Writes
# bench-results/cluster.csv (or $OUT). Stops every server by its process id.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-50}
OUT=${OUT:-bench-results}
SINGLE=${SINGLE_PORT:-17311}
RESP=${RESP_PORT:-17312}
CLUSTER_PORT=${CLUSTER_PORT:-17400}

source benches/lib.sh
build_release
cargo build --release -p kvstore-client --bin kvstore
mkdir -p "$OUT"
csv="$OUT/cluster.csv"
rm -f "$csv"
command -v redis-cli >/dev/null || { echo "wait_up needs redis-cli (apt install redis-tools)" >&2; exit 1; }

cluster() { # args...
  KVSTORE_CLUSTER_DIR="$work/cluster" KVSTORE_CLUSTER_PORT=$CLUSTER_PORT \
    KVSTORE_BIN_DIR=target/release bash scripts/local-cluster.sh "$@"
}
trap 'cluster stop >/dev/null 2>&1 || true; cleanup' EXIT

for round in $(seq "$ROUNDS"); do
  rm -rf "$work/single.db" "$work/single.db-wal" "$work/cluster"
  target/release/kvstore-server --listen "127.0.0.1:$SINGLE" --resp-listen "127.0.0.1:$RESP" \
    --data "$work/single.db" --sync always >"$work/single.out" 2>"$work/single.log" &
  pid=$!
  pids=("$pid")
  wait_up "$RESP" || { cat "$work/single.log" >&2; exit 1; }
  $bench --addr "127.0.0.1:$SINGLE" -t set -c "$CLIENTS" -d 100 -r 100000 \
    --duration "$DURATION" -q --label "single-r$round" --csv "$csv" >/dev/null
  stop TERM

  for engine in memory disk; do
    rm -rf "$work/cluster"
    KVSTORE_ENGINE=$engine cluster start 3 >/dev/null
    leader=""
    for _ in $(seq 100); do
      leader=$(target/release/kvstore --addr "$(cluster addrs)" --output json cluster status |
        python3 -c 'import json,sys; print(next((n["addr"] for n in json.load(sys.stdin)["nodes"] if n.get("role") == "leader"), ""))')
      [ -n "$leader" ] && break
      sleep 0.1
    done
    [ -n "$leader" ] || { echo "the cluster elected no leader" >&2; exit 1; }
    label=cluster3; [ "$engine" = disk ] && label=cluster3-disk
    $bench --addr "$leader" -t set -c "$CLIENTS" -d 100 -r 100000 \
      --duration "$DURATION" -q --label "$label-r$round" --csv "$csv" >/dev/null
    cluster stop >/dev/null
  done
done

echo "-t set -c $CLIENTS -d 100, $ROUNDS rounds of $DURATION s; $(nproc) cores; all nodes on this machine"
awk -F, 'FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  { printf "%-12s %8.0f req/s  p50 %6.3f ms  p99 %6.3f ms  errors %s\n",
      $col["system"], $col["requests_per_sec"], $col["p50_ms"], $col["p99_ms"], $col["errors"] }' "$csv"
