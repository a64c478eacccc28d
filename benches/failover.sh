#!/usr/bin/env bash
# Failover with the default settings, as a new user meets it: a 3-node
# cluster on this machine (scripts/local-cluster.sh, no timing flags), its
# leader killed with kill -9, KILLS times. For each kill it measures, from
# the kill:
#   leader  - when a node logged that it became leader (openraft's
#             "become leader" line, timestamped by the server);
#   write   - when the first `kvstore set` given every address, started
#             right after the kill with the client's own retries and
#             backoff, is acknowledged.
# Then it restarts the killed node and waits until all three have applied
# the same index before the next kill. Prints each kill and the
# distribution (p50, p90, max), and writes bench-results/failover.csv (or
# $OUT). Stops every server it started by its process id.
#
#   bash benches/failover.sh             # 20 kills
#   KILLS=5 bash benches/failover.sh
#   KVSTORE_BIN_DIR=DIR bash benches/failover.sh   # another build's binaries
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${KILLS:-20}
OUT=${OUT:-bench-results}

source benches/lib.sh
build_release
cargo build --release -p kvstore-client --bin kvstore
mkdir -p "$OUT"
csv="$OUT/failover.csv"
work=$(mktemp -d)
export KVSTORE_CLUSTER_DIR="$work/cluster" KVSTORE_CLUSTER_PORT=${CLUSTER_PORT:-17600}
cluster() { bash scripts/local-cluster.sh "$@"; }
trap 'cluster stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cli=${KVSTORE_BIN_DIR:-target/release}/kvstore

cluster start 3 >/dev/null
addrs=$(cluster addrs)

# The leader's node id and every node's applied index, from one status.
status() {
  "$cli" --addr "$addrs" --output json cluster status 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
leader = next((str(n["id"]) for n in nodes if n.get("role") == "leader"), "")
applied = sorted({str(n.get("applied_index")) for n in nodes})
print(leader, len(nodes), ",".join(applied))' 2>/dev/null || echo "  0 none"
}

# Waits (up to 60 s) until a leader is known and all three nodes have
# applied the same index; prints the leader's id.
settled_leader() {
  local leader count applied
  for _ in $(seq 600); do
    read -r leader count applied <<<"$(status)"
    if [[ -n $leader && $count == 3 && $applied != *,* && $applied != None ]]; then
      echo "$leader"
      return
    fi
    sleep 0.1
  done
  echo "the cluster did not settle" >&2
  return 1
}

# Milliseconds from $1 (epoch ms) to the first "become leader" logged
# after it by any node.
elected_after() {
  cat "$KVSTORE_CLUSTER_DIR"/node*/server.log | python3 -c '
import re, sys
from datetime import datetime
t0 = int(sys.argv[1]) / 1000
times = []
for line in sys.stdin:
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "become leader" in line:
        at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        if at > t0:
            times.append(at)
print(int((min(times) - t0) * 1000) if times else "never")' "$1"
}

echo "kill,leader_ms,write_ms" >"$csv"
for kill in $(seq "$KILLS"); do
  "$cli" --addr "$addrs" set "failover:warmup" x >/dev/null
  old=$(settled_leader)
  pid=$(cat "$KVSTORE_CLUSTER_DIR/node$old/pid")
  t0=$(now_ms)
  kill -9 "$pid"
  ( "$cli" --addr "$addrs" set "failover:$kill" x >/dev/null 2>&1 && echo "$(($(now_ms) - t0))" >"$work/write" || echo failed >"$work/write" ) &
  writer=$!
  wait "$writer" || true
  write_ms=$(cat "$work/write")
  leader_ms=$(elected_after "$t0")
  echo "kill $kill: node $old killed; a new leader elected after $leader_ms ms, first write acknowledged after $write_ms ms"
  echo "$kill,$leader_ms,$write_ms" >>"$csv"
  cluster start >/dev/null
done

python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for col in ("leader_ms", "write_ms"):
    v = sorted(int(r[col]) for r in rows if r[col].isdigit())
    bad = len(rows) - len(v)
    if not v:
        print(f"{col}: no value"); continue
    q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
    print(f"{col}: {len(v)} kills, p50 {q(0.5)} ms, p90 {q(0.9)} ms, max {v[-1]} ms" + (f", {bad} failed" if bad else ""))
PY
