#!/usr/bin/env bash
# Slot moves between Raft groups on a 3-node cluster on this machine.
#
#   bash benches/sharding.sh                # 1,000,000 keys, 16 moves
#   KEYS=200000 MOVES=8 bash benches/sharding.sh
#
# Starts a release cluster (scripts/local-cluster.sh), loads KEYS keys
# (16-byte keys, 100-byte values) through its leader with kvstore-bench
# BulkSets of 100, adds a group on all three nodes, then moves slots 0-8191
# to it in MOVES equal moves, one after another, and times each
# `kvstore cluster move-slots`. From the coordinator's log it reads how long
# each move kept its slots frozen (from the source's freeze to its release:
# the time writes to them are answered TryAgain) and how many pairs it
# copied. Then it adds a third group and times `kvstore cluster rebalance`
# with the moves it makes. Writes bench-results/sharding.md (or $OUT).
# Stops every server it
# started by its process id. Write throughput through a sharded cluster
# against one group: benches/sharding-throughput.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
MOVES=${MOVES:-16}
OUT=${OUT:-bench-results}
PORT=${CLUSTER_PORT:-17800}

source benches/lib.sh
build_release
cargo build --release -p kvstore-client --bin kvstore
bin=target/release
cli=$bin/kvstore
mkdir -p "$OUT"
export KVSTORE_CLUSTER_DIR="$work/cluster" KVSTORE_CLUSTER_PORT=$PORT KVSTORE_BIN_DIR=$bin
cluster() { bash scripts/local-cluster.sh "$@"; }
trap 'cluster stop >/dev/null 2>&1 || true; cleanup' EXIT

cluster start 3 >/dev/null
addrs=$(cluster addrs)
leader_of() {
  "$cli" --addr "$addrs" --output json cluster status | python3 -c '
import json, sys
status = json.load(sys.stdin)
print(next(n["addr"] for n in status["nodes"] if n["role"] == "leader"))'
}
leader=$(leader_of)
t0=$(now_ms)
$bench --addr "$leader" -t bulkset --bulk 100 --sequential -r "$KEYS" \
  -n $((KEYS / 100)) -c 8 -q >/dev/null
load_ms=$(($(now_ms) - t0))
"$cli" --addr "$leader" cluster add-group >/dev/null

span=$((8192 / MOVES))
took=()
for i in $(seq 0 $((MOVES - 1))); do
  first=$((i * span))
  last=$((first + span - 1))
  t0=$(now_ms)
  "$cli" --addr "$leader" cluster move-slots --slots "$first-$last" --to 2 >/dev/null
  took+=($(($(now_ms) - t0)))
done
leader_id=$(("${leader##*:}" - PORT))
log="$work/cluster/node$leader_id/server.log"
# The log has colour codes (issue 23): strip them before reading fields.
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
frozen=$(echo "$plain" | grep 'slots released' | grep -o 'frozen_ms=[0-9]*' | cut -d= -f2 | sort -n)
copied=$(echo "$plain" | grep 'slots moved' | grep -o 'copied=[0-9]*' | cut -d= -f2 |
  awk '{ s += $1 } END { print s + 0 }')
group_keys() {
  "$cli" --addr "$addrs" --output json cluster status | python3 -c '
import json, sys
print(" / ".join(str(g["keys"]) for g in json.load(sys.stdin)["groups"]))'
}
keys=$(group_keys)

"$cli" --addr "$leader" cluster add-group >/dev/null
before=$(echo "$plain" | grep -c 'slots moved' || true)
t0=$(now_ms)
"$cli" --addr "$leader" cluster rebalance >/dev/null
rebalance_ms=$(($(now_ms) - t0))
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
rebalanced=$(echo "$plain" | grep 'slots moved' | tail -n +$((before + 1)))
rebalance_moves=$(echo "$rebalanced" | grep -c . || true)
rebalance_copied=$(echo "$rebalanced" | grep -o 'copied=[0-9]*' | cut -d= -f2 |
  awk '{ s += $1 } END { print s + 0 }')
rebalanced_keys=$(group_keys)

pct() { # percentile, numbers on stdin
  sort -n | awk -v p="$1" '{ a[NR] = $1 } END { i = int((NR - 1) * p / 100) + 1; print a[i] }'
}
total=0
for t in "${took[@]}"; do total=$((total + t)); done
{
  echo "# Slot moves between groups"
  echo
  echo "\`bash benches/sharding.sh\` (KEYS=$KEYS, MOVES=$MOVES) at $(git rev-parse --short HEAD),"
  echo "$(nproc) cores, $(date -u +%F). Loading the keys took $load_ms ms."
  echo
  echo "| figure | value |"
  echo "|---|---|"
  echo "| moves | $MOVES of $span slots (slots 0-8191 to group 2) |"
  echo "| pairs copied | $copied |"
  echo "| time for all moves | $total ms |"
  echo "| move rate | $((copied * 1000 / (total > 0 ? total : 1))) pairs/s |"
  echo "| one move, p50 / p99 | $(printf '%s\n' "${took[@]}" | pct 50) / $(printf '%s\n' "${took[@]}" | pct 99) ms |"
  echo "| slots frozen per move, p50 / p99 | $(echo "$frozen" | pct 50) / $(echo "$frozen" | pct 99) ms |"
  echo "| keys per group afterwards (1 / 2) | $keys |"
  echo "| rebalance onto a third group | $rebalance_moves moves, $rebalance_copied pairs copied in $rebalance_ms ms |"
  echo "| keys per group after the rebalance (1 / 2 / 3) | $rebalanced_keys |"
} | tee "$OUT/sharding.md"
