#!/usr/bin/env bash
# The disk engine at scale, against the memory engine where both fit.
#
#   bash benches/engine.sh                   # 40,000,000 keys (about 5 GB), as issue 19 asks
#   KEYS=2000000 bash benches/engine.sh      # a shorter run
#   KEYS=0 bash benches/engine.sh            # only the rounds on SMALL_KEYS
#
# Runs as root (a cgroup v1 memory group). For --engine disk (--sync always):
#  1. loads KEYS keys (16-byte keys, 100-byte values) through BulkSets of 100
#     with kvstore-bench over 8 connections, the server in a memory cgroup of
#     MEM_LIMIT_MB (512) with --cache-mb CACHE_MB (64): the load rate, the
#     peak RSS, whether the cgroup killed it, bytes on disk against the key
#     and value bytes (space amplification);
#  2. random GETs over the whole key space at 50 connections for DURATION s;
#  3. restart to the first answered GET after SIGTERM and after SIGKILL;
#  4. a prefix scan of 100,000 pairs through the CLI (pairs/s);
#  5. a backup streamed to a file, and its restore into a new data path
#     (time, peak RSS, keys), in the cgroup too.
# Then, on SMALL_KEYS (1,000,000) keys that fit in memory, ROUNDS (3) times,
# both engines in turn: SET at 50 connections for DURATION s (the
# disk/memory ratio), the same scan, and the restarts. Writes bench-results/engine.md.
# Everything it starts it stops by process id; the cgroup is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-40000000}
SMALL=${SMALL_KEYS:-1000000}
MEM_LIMIT_MB=${MEM_LIMIT_MB:-512}
CACHE_MB=${CACHE_MB:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-results}
NATIVE=${NATIVE_PORT:-17111}
RESP=${RESP_PORT:-17112}

source benches/lib.sh
build_release
cargo build --release --bin kvstore
cli=target/release/kvstore
mkdir -p "$OUT"
pid=""
cgroup=/sys/fs/cgroup/memory/kvstore-engine-bench-$$
mkdir "$cgroup"
echo $((MEM_LIMIT_MB << 20)) >"$cgroup/memory.limit_in_bytes"
trap 'cleanup; rmdir "$cgroup" 2>/dev/null || true' EXIT

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
start() { # engine data [cgroup [more server flags...]]
  target/release/kvstore-server --listen "127.0.0.1:$NATIVE" --resp-listen "127.0.0.1:$RESP" \
    --engine "$1" --cache-mb "$CACHE_MB" --data "$2" "${@:4}" >>"$work/server.out" 2>>"$work/server.log" &
  pid=$!
  pids=("$pid")
  if [ -n "${3:-}" ]; then echo "$pid" >"$3/cgroup.procs"; fi
}
load() { # keys
  $bench --addr "127.0.0.1:$NATIVE" -t bulkset --bulk 100 --sequential -r "$1" \
    -n $(($1 / 100)) -c 8 -q >"$work/load.txt"
}
# Requests per second, p50, p99 and p99.9 of one kvstore-bench test.
measure() { # test keys label
  local csv="$work/$3.csv"
  rm -f "$csv"
  $bench --addr "127.0.0.1:$NATIVE" -t "$1" -c 50 -d 100 -r "$2" --duration "$DURATION" -q \
    --label "$3" --csv "$csv" >/dev/null
  awk -F, 'FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { printf "%.0f req/s, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, errors %s",
        $col["requests_per_sec"], $col["p50_ms"], $col["p99_ms"], $col["p999_ms"], $col["errors"] }' "$csv"
}
scan_pairs_per_s() {
  local t0 n
  t0=$(now_ms)
  n=$($cli --addr "127.0.0.1:$NATIVE" scan key:0000 --limit 100000 | wc -l)
  echo "$((n * 1000 / ($(now_ms) - t0 + 1))) pairs/s ($n pairs)"
}
# Restarts after SIGTERM, then after SIGKILL, into $restarted. Not to be
# called in a $(...) subshell: `stop` must wait for the server it stops.
restarts() { # engine data
  local t0 term kill
  stop TERM
  t0=$(now_ms)
  start "$1" "$2"
  term=$(first_answer_ms "$t0" "$RESP")
  stop KILL
  t0=$(now_ms)
  start "$1" "$2"
  kill=$(first_answer_ms "$t0" "$RESP")
  restarted="after SIGTERM $term ms, after kill -9 $kill ms"
}

report() { echo "$*" | tee -a "$OUT/engine.md"; }
{
  echo "# The disk engine"
  echo
  echo "\`KEYS=$KEYS bash benches/engine.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(findmnt -no FSTYPE -T "$work"), kvstore $(git rev-parse --short HEAD)."
  echo "16-byte keys, 100-byte values; --sync always; --cache-mb $CACHE_MB."
  echo
} >"$OUT/engine.md"

# The disk engine at KEYS keys, in the memory cgroup.
big() {
  data="$work/disk/kvstore.db"
  mkdir -p "$(dirname "$data")"
  start disk "$data" "$cgroup"
  wait_up "$RESP"
  t0=$(now_ms)
  load "$KEYS"
  ms=$(($(now_ms) - t0))
  if ! kill -0 "$pid" 2>/dev/null; then
    report "- the server died during the load in a $MEM_LIMIT_MB MiB memory cgroup (failcnt $(cat "$cgroup/memory.failcnt"))"
    exit 1
  fi
  tree=$(du -sb "$data-fjall" | cut -f1)
  log=$(du -sb "$data-wal" | cut -f1)
  # failcnt counts the times the cgroup reached its limit and reclaimed (page
  # cache included); a kill would have ended the server.
  report "- load of $KEYS keys in a $MEM_LIMIT_MB MiB memory cgroup: $((KEYS * 1000 / ms)) keys/s; peak RSS $(($(hwm_kib "$pid") / 1024)) MiB; not killed (limit reached $(cat "$cgroup/memory.failcnt") times)"
  report "- on disk right after the load: the tree $((tree / 1000000)) MB and the log $((log / 1000000)) MB, for $((KEYS * 116 / 1000000)) MB of keys and values (the tree alone: $(awk "BEGIN {printf \"%.2f\", $tree / ($KEYS * 116)}")x)"
  report "- random GET over $KEYS keys, 50 connections: $(measure get "$KEYS" disk-get)"
  report "- prefix scan: $(scan_pairs_per_s)"
  restarts disk "$data"
  report "- restart at $KEYS keys: $restarted"
  stop TERM
  backup_and_restore
}

# A backup of the whole tree streamed to a file, then a restore of it into
# a new data path, the server in the memory cgroup both times.
backup_and_restore() {
  local backup="$work/backup.kvs" restored="$work/restored/kvstore.db" t0 ms
  start disk "$data" "$cgroup"
  wait_up "$RESP"
  echo 5 >"/proc/$pid/clear_refs" # resets the peak RSS
  t0=$(now_ms)
  $cli --addr "127.0.0.1:$NATIVE" backup "$backup" >/dev/null
  ms=$(($(now_ms) - t0))
  report "- a backup streamed to a file: $ms ms, $(($(stat -c %s "$backup") / 1000000)) MB; peak RSS meanwhile $(($(hwm_kib "$pid") / 1024)) MiB"
  stop TERM
  rm -rf "$data" "$data-wal" "$data-fjall"
  mkdir -p "$(dirname "$restored")"
  t0=$(now_ms)
  start disk "$restored" "$cgroup" --restore "$backup"
  ms=$(first_answer_ms "$t0" "$RESP")
  if ! kill -0 "$pid" 2>/dev/null; then
    report "- the server died restoring in a $MEM_LIMIT_MB MiB memory cgroup"
    exit 1
  fi
  report "- its restore into a new data path: first answer after $ms ms ($((KEYS * 1000 / (ms + 1))) keys/s), $(redis-cli -p "$RESP" DBSIZE) keys; peak RSS $(($(hwm_kib "$pid") / 1024)) MiB"
  stop TERM
  rm -rf "$backup" "$(dirname "$restored")"
}
if [ "$KEYS" -gt 0 ]; then big; fi

for round in $(seq "$ROUNDS"); do
  for engine in memory disk; do
    data="$work/small-$round-$engine/kvstore.db"
    mkdir -p "$(dirname "$data")"
    start "$engine" "$data"
    wait_up "$RESP"
    load "$SMALL"
    set_rate=$(measure set "$SMALL" "$engine-set")
    scan=$(scan_pairs_per_s)
    restarts "$engine" "$data"
    report "- round $round, $engine engine, $SMALL keys: SET at 50 connections $set_rate; scan $scan; restart $restarted"
    stop TERM
    rm -rf "$(dirname "$data")"
  done
done
cat "$OUT/engine.md"
