#!/usr/bin/env bash
# A kvstore cluster on this machine, for trying replication out.
#
#   scripts/local-cluster.sh start [N] [--groups G]
#                                        start N nodes (default 3) and init the cluster;
#                                        with G > 1, shard it: G Raft groups (each on 3
#                                        nodes), the 16,384 slots spread evenly over them
#   scripts/local-cluster.sh status      every node: id, address, role, term, applied, lag, pid
#   scripts/local-cluster.sh addrs       the nodes' addresses, for --addr / KVSTORE_ADDR
#   scripts/local-cluster.sh kill ID     kill -9 node ID (to watch a failover)
#   scripts/local-cluster.sh stop        stop every node (SIGTERM, by process id)
#
# Node I listens on 127.0.0.1:(PORT+I) for clients, 127.0.0.1:(PORT+100+I)
# for raft and 127.0.0.1:(PORT+200+I) for Redis clients (`redis-cli -c -p
# PORT+201`), keeps its data in DIR/nodeI/ and its log in
# DIR/nodeI/server.log.
# `start` again restarts the nodes that are not running (a killed node
# catches up). Settings: KVSTORE_CLUSTER_DIR (default ./local-cluster),
# KVSTORE_CLUSTER_PORT (default 7100), KVSTORE_BIN_DIR (default
# target/release, built if missing), KVSTORE_CLUSTER_TLS=1 (mutual TLS on
# the raft ports, with a CA and node certificates made by openssl in
# DIR/certs/; a cluster started so keeps it on restarts).
set -euo pipefail

dir=${KVSTORE_CLUSTER_DIR:-./local-cluster}
port=${KVSTORE_CLUSTER_PORT:-7100}
bin=${KVSTORE_BIN_DIR:-target/release}

addr() { echo "127.0.0.1:$((port + $1))"; }
raft() { echo "127.0.0.1:$((port + 100 + $1))"; }
resp() { echo "127.0.0.1:$((port + 200 + $1))"; }
size() { cat "$dir/size" 2>/dev/null || echo 0; }

all_addrs() {
    local n i out=""
    n=$(size)
    for ((i = 1; i <= n; i++)); do out+="${out:+,}$(addr "$i")"; done
    echo "$out"
}

# The process id of node $1 if it is running (and is a kvstore-server).
running_pid() {
    local pidfile="$dir/node$1/pid" pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q kvstore-server && echo "$pid"
}

# Whether process $1 exists and has not exited (a zombie has).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${stat##*) } != Z* ]]
}

ensure_binaries() {
    if [[ ! -x $bin/kvstore-server || ! -x $bin/kvstore ]]; then
        echo "building the release binaries into $bin ..." >&2
        cargo build --release -p kvstore -p kvstore-client --bins >&2
    fi
}

# A CA and a certificate per node (naming it node-I), for the raft ports.
make_certs() {
    local n=$1 i c=$dir/certs
    mkdir -p "$c"
    if [[ ! -f $c/ca.pem ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=kvstore local cluster CA" -keyout "$c/ca.key" -out "$c/ca.pem" 2>/dev/null
    fi
    for ((i = 1; i <= n; i++)); do
        [[ -f $c/node$i.pem ]] && continue
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=node-$i" \
            -keyout "$c/node$i.key" -out "$c/node$i.csr" 2>/dev/null
        openssl x509 -req -in "$c/node$i.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" \
            -CAcreateserial -days 3650 -out "$c/node$i.pem" 2>/dev/null \
            -extfile <(printf 'subjectAltName=DNS:node-%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$i")
    done
}

start_node() {
    local i=$1 n=$2 peers="" j
    for ((j = 1; j <= n; j++)); do
        [[ $j == "$i" ]] || peers+="${peers:+,}$j=$(addr "$j")/$(raft "$j")"
    done
    local c=$dir/certs tls=()
    if [[ -f $c/node$i.pem ]]; then
        tls=(--raft-tls-cert "$c/node$i.pem" --raft-tls-key "$c/node$i.key" --raft-tls-ca "$c/ca.pem")
    fi
    mkdir -p "$dir/node$i"
    # setsid: the node is not in this shell's process group, so a Ctrl-C
    # here does not reach it; `stop` ends it by its process id.
    setsid "$bin/kvstore-server" --node-id "$i" --listen "$(addr "$i")" \
        --raft-listen "$(raft "$i")" --resp-listen "$(resp "$i")" --peers "$peers" "${tls[@]}" \
        --data "$dir/node$i/kvstore.db" >"$dir/node$i/server.log" 2>&1 </dev/null &
    echo $! >"$dir/node$i/pid"
    local waited
    for ((waited = 0; waited < 100; waited++)); do
        if grep -q "listening on" "$dir/node$i/server.log" 2>/dev/null; then
            echo "node $i: pid $(cat "$dir/node$i/pid"), $(addr "$i") (raft $(raft "$i")${tls[0]:+, TLS}, RESP $(resp "$i"))"
            return 0
        fi
        # Not running_pid: until setsid has exec'd the server, the process
        # is still a shell.
        if ! alive "$(cat "$dir/node$i/pid")"; then break; fi
        sleep 0.1
    done
    echo "node $i did not start; see $dir/node$i/server.log:" >&2
    grep -v '^ ' "$dir/node$i/server.log" | tail -5 >&2
    return 1
}

# Adds groups 2..$1 and moves to each its even share of the slots (group
# 1 keeps the first share). Once per cluster.
shard() {
    local groups=$1 g first last
    [[ $groups -gt 1 && ! -f $dir/sharded ]] || return 0
    for ((g = 2; g <= groups; g++)); do
        "$bin/kvstore" --addr "$(all_addrs)" cluster add-group >/dev/null
    done
    for ((g = 2; g <= groups; g++)); do
        first=$(((g - 1) * 16384 / groups))
        last=$((g * 16384 / groups - 1))
        "$bin/kvstore" --addr "$(all_addrs)" cluster move-slots --slots "$first-$last" --to "$g" >/dev/null
    done
    echo "$groups" >"$dir/sharded"
    echo "sharded: $groups groups, the slots spread evenly"
}

# Whether node $1, as it sees the cluster, has every node's RESP address
# and a leader for every group.
node_ready() {
    local json
    json=$("$bin/kvstore" --addr "$(addr "$1")" --output json cluster status 2>/dev/null) || return 1
    [[ $json == *'"resp_addr"'* && $json != *'"resp_addr":null'* && $json != *'"leader":null'* ]]
}

# Waits (at most 10 s) until every node has recorded its RESP address in
# the cluster's table and every group has a leader every node knows of
# (each node asked in turn: a Redis client meets the one it talks to), so
# that Redis clients are sent on (-MOVED) from the first command, not told
# that no leader is known yet.
wait_ready() {
    local i n next=1
    n=$(size)
    for ((i = 0; i < 100 && next <= n; i++)); do
        while ((next <= n)) && node_ready "$next"; do next=$((next + 1)); done
        ((next > n)) || sleep 0.1
    done
    ((next > n)) && return 0
    echo "not every node has recorded its RESP address, or a group has no leader, yet" >&2
}

cmd_start() {
    local n="" groups=1 i
    while [[ $# -gt 0 ]]; do
        case $1 in
        --groups) groups=${2:?usage: start [N] [--groups G]}; shift 2 ;;
        *) n=$1; shift ;;
        esac
    done
    n=${n:-$(size)}
    [[ $n -ge 1 ]] || n=3
    if [[ $(size) -ne 0 && $(size) -ne $n ]]; then
        echo "$dir holds a cluster of $(size) nodes; stop it and remove $dir first" >&2
        exit 2
    fi
    ensure_binaries
    mkdir -p "$dir"
    echo "$n" >"$dir/size"
    if [[ ${KVSTORE_CLUSTER_TLS:-0} == 1 ]]; then make_certs "$n"; fi
    for ((i = 1; i <= n; i++)); do
        if pid=$(running_pid "$i"); then
            echo "node $i: already running (pid $pid)"
        else
            start_node "$i" "$n"
        fi
    done
    if [[ ! -f $dir/initialized ]]; then
        "$bin/kvstore" --addr "$(addr 1)" cluster init >/dev/null
        touch "$dir/initialized"
        echo "cluster initialized"
    fi
    shard "$groups"
    wait_ready
    echo "export KVSTORE_ADDR=$(all_addrs)"
    echo "redis-cli -c -p $((port + 201))"
}

cmd_stop() {
    local n i pid waited
    n=$(size)
    for ((i = 1; i <= n; i++)); do
        pid=$(running_pid "$i") || continue
        kill -TERM "$pid"
        for ((waited = 0; waited < 100; waited++)); do
            running_pid "$i" >/dev/null || break
            sleep 0.1
        done
        if running_pid "$i" >/dev/null; then
            echo "node $i (pid $pid) still running after 10 s; sending SIGKILL" >&2
            kill -KILL "$pid"
        fi
        rm -f "$dir/node$i/pid"
        echo "node $i stopped"
    done
}

cmd_kill() {
    local i=${1:?usage: kill ID} pid
    pid=$(running_pid "$i") || { echo "node $i is not running" >&2; exit 1; }
    kill -KILL "$pid"
    echo "node $i (pid $pid) killed with SIGKILL"
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) cmd_stop ;;
status) ensure_binaries && "$bin/kvstore" --addr "$(all_addrs)" cluster status ;;
addrs) all_addrs ;;
kill) cmd_kill "${2:-}" ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
