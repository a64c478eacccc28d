#!/usr/bin/env bash
# Time to back up and restore a store.
#
#   bash benches/backup.sh                # 1,000,000 keys
#   KEYS=200000 bash benches/backup.sh    # a quicker run
#
# Loads KEYS keys (16-byte keys, 100-byte values) into a release server
# (--sync always) with kvstore-bench BulkSets of 100, then times:
# `kvstore backup FILE` (streamed to the CLI, written, fsynced, renamed) on an
# idle server; `kvstore backup --server NAME` (written by the server into its
# --backup-dir); a streamed backup while kvstore-bench runs SETs on 16
# connections (the writes it had to keep, and the SET rate during the backup
# against the rate without one); and a restore: spawn of
# `kvstore-server --restore FILE` on an empty data path until the first key
# answers, with the key count checked; and `kvstore restore --server NAME`
# into a running, empty server (the backup written through its log).
# Writes bench-results/backup.md.
# Everything it starts it stops by process id.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17111}
RESP=${RESP_PORT:-17112}

source benches/lib.sh
ensure_redis
build_release
cargo build --release -p kvstore-client --bin kvstore
cli=target/release/kvstore
mkdir -p "$OUT"
pid=""

start_server() { # data, extra flags...
  local data=$1
  shift
  target/release/kvstore-server --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
    --data "$data" "$@" >>"$work/server.out" 2>>"$work/server.log" &
  pid=$!
  pids=("$pid")
}
set_rate() { # seconds: SET requests/s on 16 connections
  $bench --addr "127.0.0.1:$NATIVE" -t set -c 16 -r "$KEYS" --duration "$1" -q |
    awk '$1 == "set" {print $3}'
}

mkdir -p "$work/data" "$work/backups"
start_server "$work/data/kvstore.db" --backup-dir "$work/backups"
wait_up "$RESP"
$bench --addr "127.0.0.1:$NATIVE" -t bulkset --bulk 100 --sequential -r "$KEYS" \
  -n $((KEYS / 100)) -c 8 -q >"$work/load.txt"

t0=$(now_ms)
$cli --addr "127.0.0.1:$NATIVE" backup "$work/idle.kvs" >"$work/idle.txt"
streamed=$(($(now_ms) - t0))
bytes=$(stat -c %s "$work/idle.kvs")

t0=$(now_ms)
$cli --addr "127.0.0.1:$NATIVE" backup --server nightly >"$work/server.txt"
server_side=$(($(now_ms) - t0))

quiet_rate=$(set_rate 5)
set_rate 8 >"$work/busy_rate" &
load_pid=$!
pids+=("$load_pid")
sleep 2
t0=$(now_ms)
$cli --addr "127.0.0.1:$NATIVE" --output json backup "$work/busy.kvs" >"$work/busy.json"
busy=$(($(now_ms) - t0))
wait "$load_pid"
busy_ops=$(sed 's/.*"ops":\([0-9]*\).*/\1/' "$work/busy.json")
busy_rate=$(cat "$work/busy_rate")
stop TERM

mkdir -p "$work/restored"
t0=$(now_ms)
start_server "$work/restored/kvstore.db" --restore "$work/idle.kvs"
restore=$(first_answer_ms "$t0" "$RESP")
restored_keys=$(redis-cli -p "$RESP" DBSIZE)
stop TERM

mkdir -p "$work/running"
start_server "$work/running/kvstore.db" --backup-dir "$work/backups"
wait_up "$RESP"
t0=$(now_ms)
$cli --addr "127.0.0.1:$NATIVE" restore --server nightly >"$work/running.txt"
running=$(($(now_ms) - t0))
running_keys=$(redis-cli -p "$RESP" DBSIZE)
stop TERM

{
  echo "# Backup and restore"
  echo
  echo "\`bash benches/backup.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD)."
  echo "$KEYS keys (16-byte keys, 100-byte values), --sync always; the backup file is $((bytes / 1000000)) MB."
  echo
  echo "| what | time |"
  echo "|---|---:|"
  echo "| \`kvstore backup FILE\`, idle server (streamed, written, fsynced, renamed) | $streamed ms |"
  echo "| \`kvstore backup --server NAME\`, idle server | $server_side ms |"
  echo "| \`kvstore backup FILE\` while 16 connections SET (it kept $busy_ops writes made during the copy) | $busy ms |"
  echo "| restore: spawn of \`kvstore-server --restore FILE\` to the first answer ($restored_keys keys) | $restore ms |"
  echo "| \`kvstore restore --server NAME\` into a running, empty server, through its log ($running_keys keys) | $running ms |"
  echo
  echo "SET requests/s on 16 connections: $quiet_rate without a backup, $busy_rate over 8 s that include the backup."
} >"$OUT/backup.md"
cat "$OUT/backup.md"
