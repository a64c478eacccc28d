#!/usr/bin/env bash
# A backup restored into a 3-node cluster on this machine, then a new node
# that catches up from a Raft snapshot.
#
#   bash benches/cluster-restore.sh               # 1,000,000 keys
#   KEYS=200000 bash benches/cluster-restore.sh
#
# Loads KEYS keys (16-byte keys, 100-byte values) into a release server with
# kvstore-bench BulkSets of 100 and has it write a backup into its
# --backup-dir. Then, for two clusters (scripts/local-cluster.sh, every node
# with that --backup-dir): one with the default settings, one snapshotting
# every 20 entries (so the log is purged and a new node must be sent a
# snapshot), it times `kvstore restore --server NAME` given every address
# and reads each node's key count and peak memory (VmHWM). Into the second
# cluster it adds a learner of each engine and times `cluster add-learner`,
# which answers once the learner has caught up: the snapshot, streamed in
# chunks, is what its peak memory shows. Writes bench-results/cluster-restore.md
# (or $OUT). Stops every server it started by its process id.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
OUT=${OUT:-bench-results}
PORT=${CLUSTER_PORT:-17700}

source benches/lib.sh
build_release
cargo build --release -p kvstore-client --bin kvstore
bin=target/release
cli=$bin/kvstore
mkdir -p "$OUT" "$work/backups" "$work/source"
export KVSTORE_BACKUP_DIR="$work/backups" KVSTORE_BIN_DIR=$bin
cluster() { bash scripts/local-cluster.sh "$@"; }
trap 'cluster stop >/dev/null 2>&1 || true; cleanup' EXIT

peak_mib() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
keys_of() { "$cli" --addr "$1" stat | awk '$1 == "keys" {print $2}'; }

$bin/kvstore-server --listen "127.0.0.1:$PORT" --data "$work/source/kvstore.db" \
  >/dev/null 2>"$work/source.log" &
pid=$!
pids=("$pid")
for _ in $(seq 200); do "$cli" --addr "127.0.0.1:$PORT" stat >/dev/null 2>&1 && break; sleep 0.05; done
$bench --addr "127.0.0.1:$PORT" -t bulkset --bulk 100 --sequential -r "$KEYS" \
  -n $((KEYS / 100)) -c 8 -q >/dev/null
"$cli" --addr "127.0.0.1:$PORT" backup --server nightly >/dev/null
stop TERM
bytes=$(stat -c %s "$work/backups/nightly")

rows=()
# Restores into a fresh cluster at port base $1, the node settings in the
# environment; sets $addrs and $leader, adds a row per node.
restore_into() { # name, port base
  export KVSTORE_CLUSTER_DIR="$work/$1" KVSTORE_CLUSTER_PORT=$2
  cluster start 3 >/dev/null
  addrs=$(cluster addrs)
  local t0 took i
  t0=$(now_ms)
  "$cli" --addr "$addrs" restore --server nightly >/dev/null
  took=$(($(now_ms) - t0))
  rows+=("| $1: \`kvstore restore --server nightly\` | $took ms | |")
  leader=$("$cli" --addr "$addrs" --output json cluster status | python3 -c '
import json, sys
print(next(n["addr"] for n in json.load(sys.stdin)["nodes"] if n["role"] == "leader"))')
  sleep 2 # the followers apply what the leader acknowledged
  for i in 1 2 3; do
    rows+=("| $1: node $i holds $(keys_of "127.0.0.1:$(($2 + i))") keys | | $(peak_mib "$(cat "$work/$1/node$i/pid")") MiB |")
  done
}

restore_into defaults $((PORT + 10))
cluster stop >/dev/null
KVSTORE_RAFT_SNAPSHOT_EVERY=20 restore_into snapshots $((PORT + 20))
for engine in disk memory; do
  id=$([[ $engine == disk ]] && echo 4 || echo 5)
  mkdir -p "$work/learner$id"
  $bin/kvstore-server --node-id "$id" --listen "127.0.0.1:$((PORT + 20 + id))" \
    --raft-listen "127.0.0.1:$((PORT + 120 + id))" --engine "$engine" \
    --data "$work/learner$id/kvstore.db" >/dev/null 2>"$work/learner$id.log" &
  pid=$!
  pids=("$pid")
  sleep 1
  t0=$(now_ms)
  "$cli" --addr "$leader" cluster add-learner "$id" "127.0.0.1:$((PORT + 20 + id))" \
    "127.0.0.1:$((PORT + 120 + id))" >/dev/null
  took=$(($(now_ms) - t0))
  rows+=("| snapshots: \`cluster add-learner\` of a $engine-engine node, to its answer ($(keys_of "127.0.0.1:$((PORT + 20 + id))") keys then) | $took ms | $(peak_mib "$pid") MiB |")
  stop TERM
done

{
  echo "# Restore into a cluster, and a new node's catch-up"
  echo
  echo "\`bash benches/cluster-restore.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD)."
  echo "$KEYS keys (16-byte keys, 100-byte values), a $((bytes / 1000000)) MB backup; three nodes and the learners on this one machine."
  echo
  echo "| what | time | peak memory (VmHWM) |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} >"$OUT/cluster-restore.md"
cat "$OUT/cluster-restore.md"
