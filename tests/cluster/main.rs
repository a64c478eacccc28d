//! Cluster mode end to end: three `kvstore-server` processes on 127.0.0.1,
//! each with its own data, replicating through Raft over their raft ports.

mod checker;
mod cluster_file;
#[path = "../common/mod.rs"]
mod common;
mod expiry;
mod faults;
mod groups;
mod linearizability;
mod membership;
mod once;
mod partition;
mod peer_tls;
mod proxy;
mod reads;
mod resharding;
mod restore;
mod versions;
mod watch;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{cli, cmd, Server};
use kvstore_client::{codec, ClusterRequest, ClusterStatus, ErrorCode, Reply, Request, Response};

/// A node's fixed addresses: the cluster is described before it starts.
#[derive(Clone)]
struct Spec {
    id: u64,
    addr: SocketAddr,
    raft: SocketAddr,
}

fn specs(n: u64) -> Vec<Spec> {
    let base = common::free_port_base(n as u16) as u64;
    (1..=n)
        .map(|id| Spec {
            id,
            addr: format!("127.0.0.1:{}", base + id).parse().unwrap(),
            raft: format!("127.0.0.1:{}", base + 100 + id).parse().unwrap(),
        })
        .collect()
}

/// The nodes' client addresses, comma-separated, in order: what `--addr`
/// and `Client::connect` take for a cluster.
fn addr_list<'a>(nodes: impl IntoIterator<Item = &'a Spec>) -> String {
    (nodes.into_iter())
        .map(|n| n.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The engine node `id` runs: the disk engine on odd ids, the memory engine
/// on even ones, so that every test runs both (and a leader of either kind
/// feeds followers of both); `KVSTORE_TEST_ENGINE=memory|disk` gives every
/// node the one named.
fn engine_of(id: u64) -> String {
    let mixed = if id % 2 == 1 { "disk" } else { "memory" };
    std::env::var("KVSTORE_TEST_ENGINE").unwrap_or_else(|_| mixed.into())
}

/// Starts node `me` of `all`, its data under `dir`.
fn start(me: &Spec, all: &[Spec], dir: &Path) -> Server {
    start_via(me, all, dir, |peer| peer.raft)
}

/// Starts node `me` of `all`, which reaches each peer's raft port at
/// `route(peer)` (a link proxy, in the partition tests).
fn start_via(me: &Spec, all: &[Spec], dir: &Path, route: impl Fn(&Spec) -> SocketAddr) -> Server {
    start_with(me, all, dir, route, &[])
}

/// Starts node `me` of `all` with `extra` arguments.
fn start_with(
    me: &Spec,
    all: &[Spec],
    dir: &Path,
    route: impl Fn(&Spec) -> SocketAddr,
    extra: &[&str],
) -> Server {
    let (command, data) = command_for(me, all, dir, route, extra);
    Server::spawn(command, &data)
}

/// The command line of node `me` of `all` (see [`start_with`]), and its
/// data path.
fn command_for(
    me: &Spec,
    all: &[Spec],
    dir: &Path,
    route: impl Fn(&Spec) -> SocketAddr,
    extra: &[&str],
) -> (std::process::Command, std::path::PathBuf) {
    let peers: Vec<String> = all
        .iter()
        .filter(|s| s.id != me.id)
        .map(|s| format!("{}={}/{}", s.id, s.addr, route(s)))
        .collect();
    let data = dir.join(format!("node{}.db", me.id));
    let (id, raft, peers) = (me.id.to_string(), me.raft.to_string(), peers.join(","));
    let engine = engine_of(me.id);
    let mut args = vec![
        "--node-id",
        &id,
        "--raft-listen",
        &raft,
        "--peers",
        &peers,
        "--raft-heartbeat-ms",
        "100",
        "--raft-election-ms",
        "500",
        // The Redis door too, to check its reads in cluster mode.
        "--resp-listen",
        "127.0.0.1:0",
        "--engine",
        &engine,
    ];
    // Small, so that a node that was down for a few hundred writes catches
    // up from a snapshot; unless `extra` says otherwise.
    if !extra.contains(&"--raft-snapshot-every") {
        args.extend_from_slice(&["--raft-snapshot-every", "100"]);
    }
    args.extend_from_slice(extra);
    (Server::command(&me.addr.to_string(), &data, &args), data)
}

/// How a request on a fresh connection went.
enum Sent {
    Answered(Reply),
    /// The node could not be reached: the request never left.
    Unreachable,
    /// Sent, but no answer within 5 s: it may or may not have been applied.
    NoAnswer,
}

fn send(addr: SocketAddr, command: kvstore_client::Command) -> Sent {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return Sent::Unreachable;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = codec::encode(&Request { id: 1, command }).unwrap();
    if stream.write_all(&common::frame(&body)).is_err() {
        return Sent::NoAnswer;
    }
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).is_err() {
        return Sent::NoAnswer;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    if stream.read_exact(&mut body).is_err() {
        return Sent::NoAnswer;
    }
    Sent::Answered(codec::decode::<Response>(&body).unwrap().reply)
}

/// `read` as the node at `addr` answers it from its own applied state (a
/// follower read); `None` if it got no answer.
fn local_read(addr: SocketAddr, read: kvstore_client::Command) -> Option<Reply> {
    let command = kvstore_client::Command::Indexed {
        after: 0,
        any_node: true,
        command: Box::new(read),
    };
    match try_call(addr, command)? {
        Reply::Indexed { reply, .. } => Some(*reply),
        other => panic!("a local read at {addr}: {other:?}"),
    }
}

/// One request on a fresh connection; `None` if it got no answer.
fn try_call(addr: SocketAddr, command: kvstore_client::Command) -> Option<Reply> {
    match send(addr, command) {
        Sent::Answered(reply) => Some(reply),
        Sent::Unreachable | Sent::NoAnswer => None,
    }
}

fn status(addr: SocketAddr) -> Option<ClusterStatus> {
    match try_call(
        addr,
        kvstore_client::Command::Cluster(ClusterRequest::Status),
    )? {
        Reply::Cluster(status) => Some(*status),
        _ => None,
    }
}

/// Waits (at most 20 s) until one of `nodes` says it is the leader; returns
/// its spec.
fn wait_for_leader(nodes: &[Spec]) -> Spec {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(leader) = leader_index(nodes) {
            return nodes[leader].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no leader within 20 s");
}

/// The node that says it leads, if one does (by its index).
fn leader_index(nodes: &[Spec]) -> Option<usize> {
    nodes
        .iter()
        .position(|n| status(n.addr).is_some_and(|s| s.role == "leader"))
}

/// Waits (at most 20 s) until every node in `nodes` has applied `index`.
fn wait_applied(nodes: &[Spec], index: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in nodes {
        loop {
            let applied = status(node.addr).and_then(|s| s.applied_index);
            if applied.is_some_and(|a| a >= index) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} applied {applied:?}, wanted {index}",
                node.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn is_not_leader(reply: &Reply) -> bool {
    matches!(reply, Reply::Error { code, .. } if *code == ErrorCode::NotLeader as u32)
}

/// The leader's native address a `NotLeader` error names.
fn named_leader(reply: &Reply) -> Option<SocketAddr> {
    match reply {
        Reply::Error { message, .. } => message
            .split("leader at ")
            .nth(1)
            .and_then(|a| a.trim().parse().ok()),
        _ => None,
    }
}

fn keys_figure(addr: SocketAddr) -> Option<i64> {
    figure(addr, "keys")
}

/// The figure `name` (a series, labels included) of the node at `addr`.
fn figure(addr: SocketAddr, name: &str) -> Option<i64> {
    match try_call(addr, kvstore_client::Command::Stats)? {
        Reply::Stats(figures) => figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
        _ => None,
    }
}

#[test]
fn three_nodes_replicate_every_write_and_only_the_leader_serves() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let servers: Vec<Server> = nodes.iter().map(|n| start(n, &nodes, dir.path())).collect();

    // Before `init` there is no cluster: writes are refused, nothing lost.
    assert!(is_not_leader(
        &try_call(nodes[0].addr, cmd::set("early", "x")).unwrap()
    ));
    let out = cli(nodes[0].addr, &["cluster", "init"]);
    assert!(out.status.success(), "cluster init: {out:?}");
    let again = cli(nodes[1].addr, &["cluster", "init"]);
    assert!(!again.status.success(), "a second init must be refused");

    let leader = wait_for_leader(&nodes);
    let followers: Vec<Spec> = nodes
        .iter()
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    for i in 0..200 {
        let reply = try_call(leader.addr, cmd::set(format!("k{i}"), format!("v{i}"))).unwrap();
        assert_eq!(reply, Reply::Ok, "set k{i}");
    }
    // Writes that read first are resolved once, at apply, on every node.
    for _ in 0..5 {
        try_call(leader.addr, cmd_incr("counter")).unwrap();
    }
    assert_eq!(
        try_call(leader.addr, cmd::get("counter")).unwrap(),
        Reply::Value(Some("5".into()))
    );
    assert_eq!(
        try_call(leader.addr, cmd::get("k199")).unwrap(),
        Reply::Value(Some("v199".into()))
    );

    // A follower takes no write and serves no linearizable read; it names
    // the leader.
    for follower in &followers {
        for command in [cmd::set("x", "y"), cmd::get("k1")] {
            let reply = try_call(follower.addr, command).unwrap();
            assert!(is_not_leader(&reply), "{reply:?}");
            assert_eq!(named_leader(&reply), Some(leader.addr), "{reply:?}");
        }
    }

    // The Redis door's reads are linearizable too: the leader answers, a
    // follower sends the client to the leader's RESP address as Redis
    // Cluster does (or, until the leader's address is recorded, refuses).
    let resp = |node: &Spec| {
        let addr = servers[(node.id - 1) as usize].resp.unwrap();
        redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let leader_resp = servers[(leader.id - 1) as usize].resp.unwrap();
    let refused_so = |refused: redis::RedisError| {
        let said = refused.to_string();
        let moved = refused.code() == Some("MOVED") && said.ends_with(&leader_resp.to_string());
        assert!(moved || said.contains("not the leader"), "{said}");
    };
    let value: Option<String> = redis::cmd("GET")
        .arg("k7")
        .query(&mut resp(&leader))
        .unwrap();
    assert_eq!(value.as_deref(), Some("v7"));
    for follower in &followers {
        let refused = redis::cmd("GET")
            .arg("k7")
            .query::<Option<String>>(&mut resp(follower))
            .unwrap_err();
        refused_so(refused);
    }

    // Every node holds every key once it has applied the leader's log.
    let last = status(leader.addr).unwrap().last_log_index.unwrap();
    wait_applied(&nodes, last);

    // After READONLY a follower's RESP connection reads this node's own
    // state (applied above); READWRITE makes it refuse again.
    for follower in &followers {
        let mut conn = resp(follower);
        let get = |conn: &mut redis::Connection| {
            redis::cmd("GET").arg("k7").query::<Option<String>>(conn)
        };
        let ok: String = redis::cmd("READONLY").query(&mut conn).unwrap();
        assert_eq!(ok, "OK");
        assert_eq!(get(&mut conn).unwrap().as_deref(), Some("v7"));
        let ok: String = redis::cmd("READWRITE").query(&mut conn).unwrap();
        assert_eq!(ok, "OK");
        refused_so(get(&mut conn).unwrap_err());
    }
    for node in &nodes {
        assert_eq!(keys_figure(node.addr), Some(201), "node {}", node.id);
    }

    // The CLI's status table lists the three with one leader.
    let out = cli(nodes[2].addr, &["cluster", "status", "--output", "json"]);
    assert!(out.status.success(), "{out:?}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = table["nodes"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let leaders: Vec<_> = rows.iter().filter(|r| r["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{table}");
    assert_eq!(leaders[0]["id"], leader.id);
    assert!(rows.iter().all(|r| r["pid"].as_u64().is_some()), "{table}");
}

/// Three nodes started and initialized: their specs, their processes (a
/// slot each, emptied when a test kills one) and the leader.
fn start_cluster(dir: &Path) -> (Vec<Spec>, Vec<Option<Server>>, Spec) {
    start_cluster_with(dir, &[])
}

/// [`start_cluster`], every node with `extra` arguments.
fn start_cluster_with(dir: &Path, extra: &[&str]) -> (Vec<Spec>, Vec<Option<Server>>, Spec) {
    let nodes = specs(3);
    let servers = (nodes.iter())
        .map(|n| Some(start_with(n, &nodes, dir, |peer| peer.raft, extra)))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    (nodes, servers, leader)
}

fn cmd_incr(key: &str) -> kvstore_client::Command {
    kvstore_client::Command::Incr {
        key: key.to_string().into(),
        by: 1,
    }
}

/// A write sent to whichever node looks like the leader, following
/// `NotLeader` answers; `Some(true)` acknowledged, `Some(false)` refused
/// (nothing written), `None` unknown (no answer: may have been applied).
fn write_anywhere(nodes: &[Spec], guess: &mut SocketAddr, key: &str, value: &str) -> Option<bool> {
    for attempt in 0..3 * nodes.len() {
        match send(*guess, cmd::set(key, value)) {
            Sent::Answered(Reply::Ok) => return Some(true),
            Sent::Answered(reply) if is_not_leader(&reply) => {
                *guess = named_leader(&reply).unwrap_or(nodes[attempt % nodes.len()].addr);
                if named_leader(&reply).is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Sent::Answered(other) => panic!("unexpected reply {other:?}"),
            Sent::Unreachable => *guess = nodes[attempt % nodes.len()].addr,
            Sent::NoAnswer => {
                *guess = nodes[attempt % nodes.len()].addr;
                return None;
            }
        }
    }
    Some(false)
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write_and_the_old_leader_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());

    let mut guess = leader.addr;
    let mut acked = Vec::new();
    let mut unknown = 0;
    for i in 0..300 {
        match write_anywhere(&nodes, &mut guess, &format!("before{i}"), "v") {
            Some(true) => acked.push(format!("before{i}")),
            Some(false) => {}
            None => unknown += 1,
        }
    }
    assert_eq!(
        acked.len(),
        300,
        "no fault yet: every write is acknowledged"
    );

    // kill -9 the leader, then keep writing until the new leader acknowledges.
    let old_last = status(leader.addr).and_then(|s| s.last_log_index).unwrap();
    let killed_at = Instant::now();
    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    let survivors: Vec<Spec> = nodes
        .iter()
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    guess = survivors[0].addr;
    let mut first_ack = None;
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 600 && Instant::now() < deadline {
        let key = format!("after{i}");
        i += 1;
        match write_anywhere(&survivors, &mut guess, &key, "v") {
            Some(true) => {
                first_ack.get_or_insert_with(|| killed_at.elapsed());
                acked.push(key);
            }
            Some(false) => std::thread::sleep(Duration::from_millis(20)),
            None => unknown += 1,
        }
    }
    let failover = first_ack.expect("no write acknowledged within 30 s of the leader's death");
    eprintln!(
        "failover: leader killed to first acknowledged write {} ms; {} writes acknowledged, {unknown} without answer",
        failover.as_millis(),
        acked.len()
    );

    // Every acknowledged write is there, through the new leader.
    let new_leader = wait_for_leader(&survivors);
    for key in &acked {
        assert_eq!(
            try_call(new_leader.addr, cmd::get(key)).unwrap(),
            Reply::Value(Some("v".into())),
            "acknowledged {key} was lost"
        );
    }

    // The old leader restarts from its own data and catches up: it missed
    // 300 entries, and the leader keeps 100 after each snapshot, so it gets
    // a snapshot once the new leader has purged what the old one lacks. Not
    // as soon as the snapshot exists: on a loaded machine the snapshot may
    // lag behind the writes, and openraft delays a purge while it still
    // tries to replicate those entries to the dead node.
    wait_for_purge(new_leader.addr, old_last + 1);
    let old = &nodes[(leader.id - 1) as usize];
    // It takes no snapshot of its own (one could replace the installed
    // one before the check below): a snapshot in its directory was sent.
    let own_snapshots_off = ["--raft-snapshot-every", "1000000"];
    let restarted = start_with(old, &nodes, dir.path(), |p| p.raft, &own_snapshots_off);
    let restarted_pid = restarted.child.id();
    servers[(leader.id - 1) as usize] = Some(restarted);
    let last = status(new_leader.addr).unwrap().last_log_index.unwrap();
    wait_applied(std::slice::from_ref(old), last);
    assert_eq!(
        keys_figure(old.addr),
        keys_figure(new_leader.addr),
        "the restarted node holds what the leader holds"
    );
    assert!(keys_figure(old.addr).unwrap() >= acked.len() as i64);
    let installed = snapshots(&dir.path().join(format!("node{}.db.raft", old.id)));
    assert!(
        installed.iter().any(|&(_, pid)| pid != restarted_pid),
        "the restarted node ({} engine) caught up without a snapshot from the leader: {installed:?}",
        engine_of(old.id)
    );
}

/// The snapshots in a node's raft directory: the index each covers and the
/// process id of the server that built it (from `snap-TERM-INDEX-PID-N`).
fn snapshots(raft_dir: &Path) -> Vec<(u64, u32)> {
    let names = std::fs::read_dir(raft_dir).unwrap();
    (names.map(|entry| entry.unwrap().file_name().into_string().unwrap()))
        .filter_map(|name| {
            let id = name.strip_prefix("snap-")?.strip_suffix(".meta")?;
            let mut fields = id.rsplit('-').skip(1);
            let pid = fields.next()?.parse().ok()?;
            Some((fields.next()?.parse().ok()?, pid))
        })
        .collect()
}

/// Waits until a snapshot covering `index` is in `raft_dir`.
/// Waits (at most 20 s) until the node at `addr` has purged group 1's log
/// up to `index`.
fn wait_for_purge(addr: SocketAddr, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let purged = || status(addr).and_then(|s| s.groups.first().and_then(|g| g.purged_index));
    while purged().is_none_or(|purged| purged < index) {
        assert!(
            Instant::now() < deadline,
            "{addr} has purged its log to {:?}, not {index}",
            purged()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_snapshot(raft_dir: &Path, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshots(raft_dir).iter().any(|&(i, _)| i >= index) {
        assert!(
            Instant::now() < deadline,
            "no snapshot covering {index} in {}: {:?}",
            raft_dir.display(),
            snapshots(raft_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--raft-snapshot-bytes`: a few large writes, far fewer entries than
/// `--raft-snapshot-every`, still bring a snapshot.
#[test]
fn a_log_of_large_values_is_snapshotted_by_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let node = specs(1).remove(0);
    let data = dir.path().join("node1.db");
    let raft = node.raft.to_string();
    let args = [
        "--node-id",
        "1",
        "--raft-listen",
        &raft,
        "--raft-snapshot-every",
        "1000000",
        "--raft-snapshot-bytes",
        "200000",
    ];
    let _server = Server::start_on(&node.addr.to_string(), &data, &args);
    assert!(cli(node.addr, &["cluster", "init"]).status.success());
    wait_for_leader(std::slice::from_ref(&node));
    let value = "x".repeat(10_000);
    for i in 0..40 {
        let set = cmd::set(format!("big{i}"), &value);
        assert_eq!(try_call(node.addr, set), Some(Reply::Ok));
    }
    // 400 KB in about 40 entries: a snapshot covering half of them at least.
    wait_for_snapshot(&dir.path().join("node1.db.raft"), 20);
}

#[test]
fn a_client_given_every_address_follows_the_leader_through_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    // The list starts with a follower: the client must move to the leader.
    let mut order: Vec<&Spec> = nodes.iter().filter(|n| n.id != leader.id).collect();
    order.push(&leader);
    let all = addr_list(order);

    let rt = common::runtime();
    let client = kvstore_client::Client::connect(all.clone()).unwrap();
    rt.block_on(async {
        for i in 0..50 {
            client.set(format!("a{i}"), "v").await.expect("set before");
        }
    });
    assert_eq!(client.addr(), leader.addr.to_string());

    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    let mut longest = Duration::ZERO;
    rt.block_on(async {
        for i in 0..50 {
            let started = Instant::now();
            client
                .set(format!("b{i}"), "v")
                .await
                .expect("a write after the failover, within the retry budget");
            longest = longest.max(started.elapsed());
        }
        for i in 0..50 {
            for key in [format!("a{i}"), format!("b{i}")] {
                assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(&b"v"[..]));
            }
        }
    });
    eprintln!(
        "longest write across the failover: {} ms",
        longest.as_millis()
    );
    assert_ne!(client.addr(), leader.addr.to_string());

    // The CLI takes the same list (the dead node first is fine).
    let dead_first = format!("{},{}", leader.addr, all);
    assert_eq!(common::cli_ok(&dead_first, &["get", "b49"]).trim(), "v");
}

#[test]
fn a_leader_restarted_at_once_serves_no_read_older_than_its_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    // 150 writes to one key: with a snapshot every 100 entries, the newest
    // snapshot holds an old value of it.
    for i in 1..=150 {
        let reply = try_call(leader.addr, cmd::set("k", format!("v{i}")));
        assert_eq!(reply, Some(Reply::Ok), "set v{i}");
    }
    std::thread::sleep(Duration::from_millis(500));
    // Then entries that take a while to apply again, and the last value.
    for b in 0..40 {
        let items = (0..2000)
            .map(|i| (format!("bulk{b}-{i}").into(), "x".into()))
            .collect();
        let reply = try_call(leader.addr, kvstore_client::Command::BulkSet { items });
        assert_eq!(reply, Some(Reply::Ok), "bulk {b}");
    }
    assert_eq!(
        try_call(leader.addr, cmd::set("k", "v250")),
        Some(Reply::Ok)
    );
    // kill -9 and restart at once, before the others elect a leader: the
    // node must not take up its old leadership and answer from its
    // snapshot before it has applied its log again.
    let slot = (leader.id - 1) as usize;
    servers[slot].take().unwrap().kill9();
    servers[slot] = Some(start(&leader, &nodes, dir.path()));
    // The first answers are the ones at risk: read until there are 20 (a
    // busy machine may take seconds to elect and apply the log again).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = 0;
    while answers < 20 {
        assert!(
            Instant::now() < deadline,
            "{answers} reads answered in 60 s"
        );
        for node in &nodes {
            if let Some(Reply::Value(value)) = try_call(node.addr, cmd::get("k")) {
                assert_eq!(
                    value.as_deref(),
                    Some(&b"v250"[..]),
                    "node {} read",
                    node.id
                );
                answers += 1;
            }
        }
    }
}

/// A backup streamed from the leader while it replicates holds what it
/// acknowledged, and restores into a single server of either engine.
/// Writes 999 keys (20 BulkSets of 50, then a Delete); every pair after.
fn fill(client: &kvstore_client::BlockingClient) -> Vec<(bytes::Bytes, bytes::Bytes)> {
    for batch in 0..20 {
        let items: Vec<_> = (0..50)
            .map(|i| (format!("k{:04}", batch * 50 + i), format!("v{batch}")))
            .collect();
        client.bulk_set(items).unwrap();
    }
    client.delete("k0007").unwrap();
    everything(client)
}

/// Every pair `client` reads, in key order.
fn everything(client: &kvstore_client::BlockingClient) -> Vec<(bytes::Bytes, bytes::Bytes)> {
    (client.scan(kvstore_client::ScanQuery::prefix("")))
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn a_backup_of_the_leader_restores_into_a_single_server_of_either_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, _servers, leader) = start_cluster(dir.path());
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    let before = fill(&client);
    assert_eq!(before.len(), 999);
    let path = dir.path().join("cluster.backup");
    let said = common::cli_ok(leader.addr, &["backup", path.to_str().unwrap()]);
    assert!(said.contains("999 keys"), "{said}");
    for (name, engine) in [("memory.db", "memory"), ("disk.db", "disk")] {
        let restore = ["--engine", engine, "--restore", path.to_str().unwrap()];
        let single = Server::start(&dir.path().join(name), &restore);
        let restored = kvstore_client::BlockingClient::connect(single.addr.to_string()).unwrap();
        assert_eq!(
            everything(&restored),
            before,
            "restored with the {engine} engine"
        );
    }
}
