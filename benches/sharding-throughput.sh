#!/usr/bin/env bash
# Write throughput of a sharded cluster against one Raft group, side by
# side in one run on this machine.
#
#   bash benches/sharding-throughput.sh
#   REQUESTS=50000 CLIENTS=50 ROUNDS=3 bash benches/sharding-throughput.sh
#
# Starts two release clusters of 3 nodes on loopback with
# scripts/local-cluster.sh: one of 1 group, one of 3 groups with the slots
# spread evenly (`--groups 3`). Then, ROUNDS times and alternating between
# them (the machine drifts), runs two loads: SET of 100-byte values to
# random keys, REQUESTS requests from CLIENTS clients. Through the RESP
# door, `redis-benchmark --cluster` against node 1's RESP port (it reads
# CLUSTER NODES and sends each key to its slot's master, over one
# connection per client and master); through the native door,
# `kvstore-bench --library` given every node (one shared client library,
# whose routes send each key to its group's leader). Reports requests/s
# and latency p50/p99 of every round, and where each group's leader was. Writes
# bench-results/sharding-throughput.md (or $OUT). Stops every server it
# started by its process id.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-50000}
CLIENTS=${CLIENTS:-50}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-results}
PORT=${CLUSTER_PORT:-17900}

source benches/lib.sh
ensure_redis
build_release
cargo build --release -p kvstore-client --bin kvstore
bin=target/release
mkdir -p "$OUT"
export KVSTORE_BIN_DIR=$bin

# Runs local-cluster.sh on cluster $1 (1 or 3 groups) with the rest.
cluster() { # groups args...
  local groups=$1
  shift
  KVSTORE_CLUSTER_DIR="$work/groups$groups" KVSTORE_CLUSTER_PORT=$((PORT + groups * 1000)) \
    bash scripts/local-cluster.sh "$@"
}
trap 'cluster 1 stop >/dev/null 2>&1 || true; cluster 3 stop >/dev/null 2>&1 || true; cleanup' EXIT

cluster 1 start 3 >/dev/null
cluster 3 start 3 --groups 3 >/dev/null

# The leader of each group, as node 1 of cluster $1 sees it.
leaders() { # groups
  "$bin/kvstore" --addr "$(cluster "$1" addrs)" --output json cluster status | python3 -c '
import json, sys
status = json.load(sys.stdin)
print(", ".join("group %d: node %s" % (g["id"], g["leader"]) for g in status["groups"]))'
}

# Waits (at most 20 s) until CLUSTER NODES on cluster $1 lists its 3 nodes:
# each has recorded its RESP address.
wait_nodes() { # groups
  local resp=$((PORT + $1 * 1000 + 201))
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$resp" CLUSTER NODES | grep -c connected)" = 3 ] && return
    sleep 0.1
  done
  echo "cluster $1 did not list its nodes" >&2
  return 1
}

# One redis-benchmark run on cluster $1: "rps p50 p99". With one group,
# plainly against its leader (redis-benchmark --cluster refuses a cluster
# of one master, to which a cluster client would send everything anyway).
run() { # groups
  local resp=$((PORT + $1 * 1000 + 201)) cluster=(--cluster)
  if [ "$1" = 1 ]; then
    resp=$(redis-cli -p "$resp" CLUSTER NODES | grep master | awk '{print $2}' | cut -d@ -f1 | cut -d: -f2)
    cluster=()
  fi
  redis-benchmark "${cluster[@]}" -h 127.0.0.1 -p "$resp" -t set -n "$REQUESTS" -c "$CLIENTS" \
    -d 100 -r 1000000 --csv 2>/dev/null | python3 -c '
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if r and r[0] == "SET"]
r = rows[-1]
print(f"{float(r[1]):.0f} {r[4]} {r[6]}")'
}

# One kvstore-bench run through the client library on cluster $1: "rps
# p50 p99".
native() { # groups
  "$bench" --library --addr "$(cluster "$1" addrs)" -t set -n "$REQUESTS" -c "$CLIENTS" \
    -d 100 -r 1000000 -q | awk '
      $1 == "set" && $9 != 0 { print "kvstore-bench: " $9 " errors" > "/dev/stderr"; exit 1 }
      $1 == "set" { printf "%.0f %s %s\n", $3, $4, $6 }'
}

wait_nodes 1
wait_nodes 3
rows=()
for round in $(seq "$ROUNDS"); do
  for door in resp native; do
    for groups in 1 3; do
      if [ "$door" = resp ]; then
        read -r rps p50 p99 <<<"$(run "$groups")"
      else
        read -r rps p50 p99 <<<"$(native "$groups")"
      fi
      rows+=("| $round | $door | 3 nodes x $groups | $rps | $p50 | $p99 |")
    done
  done
done
{
  echo "# Write throughput: 3 nodes x 3 groups against 3 nodes x 1 group"
  echo
  echo "\`bash benches/sharding-throughput.sh\` (REQUESTS=$REQUESTS, CLIENTS=$CLIENTS,"
  echo "ROUNDS=$ROUNDS) at $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%F):"
  echo "resp: \`redis-benchmark --cluster -t set -d 100 -r 1000000\` against node 1's RESP port;"
  echo "native: \`kvstore-bench --library -t set -d 100 -r 1000000\` given every node."
  echo
  echo "| round | door | cluster | SET/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Leaders: 1 group: $(leaders 1); 3 groups: $(leaders 3)."
} | tee "$OUT/sharding-throughput.md"
