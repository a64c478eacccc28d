#!/usr/bin/env bash
# kvstore against Redis, side by side, on this machine, in one run.
#
#   bash benches/compare.sh                  # 2 rounds of 3 s per measurement
#   ROUNDS=3 DURATION=5 bash benches/compare.sh
#
# Starts (and at the end stops, by process id) three redis-server instances
# (appendonly yes + appendfsync always; appendfsync everysec; no persistence)
# and three kvstore-servers (--sync always, periodic, never), all on loopback
# ports, fills each with the same 100,000 keys, then measures every workload
# on every system with kvstore-bench, alternating systems within each round.
# kvstore is measured through its native protocol, and with --sync always
# also through its RESP door; Redis through RESP. Writes to bench-results/
# (or $OUT): results.csv, PNG charts, summary.md (ratios kvstore / Redis) and
# machine.txt. Installs redis-server with apt if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-3}
OUT=${OUT:-bench-results}
BASE=${BASE_PORT:-17000}

source benches/lib.sh
ensure_redis
build_release

mkdir -p "$OUT"
rm -f "$OUT/results.csv"

redis() { # name port args...
  local name=$1 port=$2; shift 2
  mkdir -p "$work/$name"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --dir "$work/$name" "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
}
kvstore() { # name native-port resp-port sync
  mkdir -p "$work/$1"
  target/release/kvstore-server --listen "127.0.0.1:$2" --resp-listen "127.0.0.1:$3" \
    --data "$work/$1/kvstore.db" --sync "$4" >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
}
redis redis-always $((BASE + 1)) --appendonly yes --appendfsync always
redis redis-everysec $((BASE + 2)) --appendonly yes --appendfsync everysec
redis redis-none $((BASE + 3)) --appendonly no
kvstore kvstore-always $((BASE + 11)) $((BASE + 21)) always
kvstore kvstore-periodic $((BASE + 12)) $((BASE + 22)) periodic
kvstore kvstore-never $((BASE + 13)) $((BASE + 23)) never
# Every server answers on a RESP port (kvstore's listens on both at once).
for port in 1 2 3 21 22 23; do wait_up $((BASE + port)); done

# label address protocol-flag
systems=(
  "kvstore-always 127.0.0.1:$((BASE + 11)) native"
  "kvstore-resp-always 127.0.0.1:$((BASE + 21)) resp"
  "redis-always 127.0.0.1:$((BASE + 1)) resp"
  "kvstore-periodic 127.0.0.1:$((BASE + 12)) native"
  "redis-everysec 127.0.0.1:$((BASE + 2)) resp"
  "kvstore-never 127.0.0.1:$((BASE + 13)) native"
  "redis-none 127.0.0.1:$((BASE + 3)) resp"
)
workloads=()
for test in set get; do
  for c in 1 50; do
    for p in 1 16; do workloads+=("-t $test -c $c -P $p"); done
  done
done
workloads+=("-t bulkset -c 50 -P 1 --bulk 100")

run() { # system-line extra-args...
  local label addr proto flag=""
  read -r label addr proto <<<"$1"; shift
  [ "$proto" = resp ] && flag=--resp
  # shellcheck disable=SC2086
  $bench --addr "$addr" $flag --label "$label" -d 100 -r 100000 -q "$@"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "disk: $(df -h "$work" | awk 'NR == 2 {print $1, $2}') ($(findmnt -no FSTYPE -T "$work"))"
  echo "kernel: $(uname -r)"
  echo "redis: $(redis-server --version)"
  echo "kvstore: $(git rev-parse --short HEAD)"
  echo "rounds: $ROUNDS, $DURATION s per measurement, 100-byte values, 100,000 random keys"
  # The floor under a one-connection durable write, on the disk the servers use.
  echo "fsync probe: $($bench --fsync-probe "$work")"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

echo "== filling every system with the same 100,000 keys"
for system in "${systems[@]}"; do
  run "$system" -t bulkset --bulk 100 --sequential -n 1000 -c 10 >/dev/null
done

for round in $(seq "$ROUNDS"); do
  for workload in "${workloads[@]}"; do
    echo "== round $round: $workload"
    for system in "${systems[@]}"; do
      # shellcheck disable=SC2086
      run "$system" $workload --duration "$DURATION" --csv "$OUT/results.csv" | tail -n 1 |
        sed "s/^/$(printf '%-20s' "${system%% *}") /"
    done
  done
done

$bench -n 0 --csv "$OUT/results.csv" --plot "$OUT" --markdown "$OUT/summary.md" \
  --compare kvstore-always:redis-always --compare kvstore-resp-always:redis-always \
  --compare kvstore-periodic:redis-everysec --compare kvstore-never:redis-none
# The one-connection target: durable SET p50 against one fdatasync (the
# probe's p50) plus one round trip (GET p50 on the same connection count).
p50() { # system test -> mean p50 in ms over the rounds
  awk -F, -v s="$1" -v t="$2" '$1 == s && $3 == t && $4 == 1 && $5 == 1 { n++; sum += $11 }
    END { if (n) printf "%.3f", sum / n }' "$OUT/results.csv"
}
fsync_ms=$(sed -n 's/^fsync probe: [^,]*, [0-9]* times: p50 \([0-9]*\) us.*/\1/p' "$OUT/machine.txt" | awk '{printf "%.3f", $1 / 1000}')
{
  echo
  echo "#### One connection, durable SET: p50 against its floor"
  echo
  echo "| system | SET p50 ms | fdatasync p50 ms (probe) | GET p50 ms (round trip) | floor ms | SET p50 / floor |"
  echo "|---|---:|---:|---:|---:|---:|"
  for s in kvstore-always kvstore-resp-always redis-always; do
    set_ms=$(p50 "$s" set) get_ms=$(p50 "$s" get)
    awk -v s="$s" -v a="$set_ms" -v f="$fsync_ms" -v g="$get_ms" \
      'BEGIN { printf "| %s | %.3f | %.3f | %.3f | %.3f | %.2f |\n", s, a, f, g, f + g, a / (f + g) }'
  done
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
