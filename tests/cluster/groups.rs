//! Raft groups on the raft port: every message names its group, and a node
//! hands it to that group or answers that it runs no such group.

use kvstore::raft::network::{Rpc, RpcReply};
use kvstore::raft::FIRST_GROUP;
use kvstore_client::{ErrorCode, GroupView};

use super::common::cli_ok;
use super::peer_tls::ask_vote;
use super::*;

#[test]
fn a_message_for_a_group_the_node_does_not_run_is_answered_so() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    let term = status(leader.addr).unwrap().term;
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap();
    let rt = common::runtime();
    let ask = |group| {
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(follower.raft).await.unwrap();
            ask_vote(stream, group, leader.id, term).await
        })
    };
    match ask(FIRST_GROUP + 7) {
        Some(RpcReply::NoGroup(group)) => assert_eq!(group, FIRST_GROUP + 7),
        other => panic!("a message for group {}: {other:?}", FIRST_GROUP + 7),
    }
    assert!(
        matches!(ask(FIRST_GROUP), Some(RpcReply::Vote(Ok(_)))),
        "the data group answers"
    );
    assert_eq!(try_call(leader.addr, cmd::set("k", "1")), Some(Reply::Ok));
    let after = status(leader.addr).unwrap();
    assert_eq!((after.role.as_str(), after.term), ("leader", term));

    // A scan page, with its values or without them.
    let page = |keys_only| {
        let rpc = Rpc::ReadPage {
            from: follower.id,
            span: kvstore::engine::Span::prefix(b"", None, false),
            limit: 10,
            keys_only,
        };
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(leader.raft).await.unwrap();
            match super::peer_tls::ask(stream, FIRST_GROUP, rpc).await {
                Some(RpcReply::Page(Ok(page))) => page.pairs,
                other => panic!("a scan page: {other:?}"),
            }
        })
    };
    let pair = |value: &'static str| vec![(bytes::Bytes::from("k"), bytes::Bytes::from(value))];
    assert_eq!(page(false), pair("1"));
    assert_eq!(page(true), pair(""));
}

/// Which nodes run group `group`, and which of them say they lead it.
fn runners(nodes: &[Spec], group: u64) -> (Vec<u64>, Vec<u64>) {
    let views: Vec<(u64, GroupView)> = (nodes.iter())
        .filter_map(|n| status(n.addr).map(|s| (n.id, s.groups)))
        .flat_map(|(id, groups)| groups.into_iter().map(move |g| (id, g)))
        .filter(|(_, g)| g.id == group)
        .collect();
    let leading = (views.iter())
        .filter(|(_, g)| g.role == "leader")
        .map(|(id, _)| *id);
    (views.iter().map(|(id, _)| *id).collect(), leading.collect())
}

/// Waits (at most 20 s) until group `group` runs on exactly `on` with one
/// leader among them.
fn wait_for_group(nodes: &[Spec], group: u64, on: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        seen = runners(nodes, group);
        if seen.0 == on && seen.1.len() == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("group {group}: running on and led by {seen:?}, not on {on:?} with one leader");
}

#[test]
fn groups_added_to_a_cluster_elect_leaders_and_restart_with_their_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,3"]);
    wait_for_group(&nodes, FIRST_GROUP + 1, &[1, 2, 3]);
    wait_for_group(&nodes, FIRST_GROUP + 2, &[1, 3]);
    let refused = cli(leader.addr, &["cluster", "add-group", "--nodes", "1,9"]);
    assert!(!refused.status.success(), "a node outside the cluster");

    for i in 0..10 {
        let reply = try_call(leader.addr, cmd::set(format!("k{i}"), "v"));
        assert_eq!(reply, Some(Reply::Ok));
    }
    let table = cli_ok(leader.addr, &["cluster", "status", "--output", "json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let groups = table["groups"].as_array().unwrap();
    let slots: Vec<_> = groups.iter().map(|g| (&g["id"], &g["slots"])).collect();
    assert_eq!(slots.len(), 3, "{table}");
    assert_eq!(slots[0].1, &serde_json::json!(["0-16383"]), "{table}");
    assert_eq!(slots[1].1, &serde_json::json!([]), "{table}");
    assert_eq!(groups[2]["voters"], serde_json::json!([1, 3]), "{table}");
    let keys: Vec<_> = groups.iter().map(|g| &g["keys"]).collect();
    assert_eq!(keys, [10, 0, 0], "{table}");

    // After kill -9, nodes 2 (memory engine: the table comes back as group
    // 1's log is applied again) and 3 (disk engine: from its note) start
    // their groups again from their own files and rejoin each.
    for i in [1, 2] {
        servers[i].take().unwrap().kill9();
    }
    for i in [1, 2] {
        servers[i] = Some(start(&nodes[i], &nodes, dir.path()));
    }
    wait_for_group(&nodes, FIRST_GROUP, &[1, 2, 3]);
    wait_for_group(&nodes, FIRST_GROUP + 1, &[1, 2, 3]);
    wait_for_group(&nodes, FIRST_GROUP + 2, &[1, 3]);
}

/// A Redis connection to `server`'s RESP door.
fn redis_connection(server: &Option<Server>) -> redis::Connection {
    let addr = server.as_ref().unwrap().resp.unwrap();
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    client.get_connection().unwrap()
}

/// The error code of a reply, if it is an error.
fn code_of(reply: Option<Reply>) -> Option<u32> {
    match reply {
        Some(Reply::Error { code, .. }) => Some(code),
        _ => None,
    }
}

#[test]
fn set_slots_reaches_a_group_s_leader_and_decides_each_write_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,3"]);
    let slot = kvstore_client::slot::slot_of(b"k").to_string();
    let set_slots = |via: &Spec, group: &str, slots: &str, state: &str| {
        let args = ["cluster", "set-slots", "--group", group, "--slots", slots];
        cli(via.addr, &[&args[..], &["--state", state]].concat())
    };
    // Node 2 runs no group 2, and a follower does not lead group 1: both
    // hand the change on to the group's leader.
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap();
    assert!(set_slots(&nodes[1], "2", &slot, "serving").status.success());
    let write = |key: &str| code_of(try_call(leader.addr, cmd::set(key, "v")));
    for (state, answer) in [
        ("frozen", Some(ErrorCode::TryAgain as u32)),
        ("elsewhere", Some(ErrorCode::Moved as u32)),
        ("serving", None),
    ] {
        assert!(set_slots(follower, "1", &slot, state).status.success());
        assert_eq!(write("k"), answer, "slot of k {state} in group 1");
        // The Redis door answers with Redis Cluster's words.
        let mut resp = redis_connection(&servers[(leader.id - 1) as usize]);
        let mut code_of_resp = |args: &[&str]| {
            let refused = redis::cmd(args[0])
                .arg(&args[1..])
                .query::<()>(&mut resp)
                .err();
            refused.and_then(|e| e.code().map(String::from))
        };
        let codes = (
            code_of_resp(&["SET", "k", "v"]),
            code_of_resp(&["MSET", "{a}1", "v", "{b}2", "v"]),
        );
        let expected = match state {
            "frozen" => (Some("TRYAGAIN"), Some("CROSSSLOT")),
            "elsewhere" => (Some("ERR"), Some("CROSSSLOT")),
            _ => (None, None),
        };
        assert_eq!(
            (codes.0.as_deref(), codes.1.as_deref()),
            expected,
            "RESP, {state}"
        );
        assert_eq!(write("other"), None, "another slot is untouched");
        // Group 1 serves every slot but one while k's is away: multi-key
        // writes must stay in one slot then.
        let both = cmd::bulk_set([("{a}1", "v"), ("{b}2", "v")]);
        let cross = code_of(try_call(leader.addr, both));
        let expected = (state != "serving").then_some(ErrorCode::CrossSlot as u32);
        assert_eq!(cross, expected, "slot of k {state}");
    }
    for (group, slots) in [("9", "1"), ("1", "5-4"), ("1", "16384")] {
        let refused = set_slots(follower, group, slots, "serving");
        assert!(!refused.status.success(), "group {group} slots {slots}");
    }
}

/// The key count of each group in `cluster status --output json`.
fn group_keys(addr: SocketAddr) -> Vec<u64> {
    let table = cli_ok(addr, &["cluster", "status", "--output", "json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let groups = table["groups"].as_array().unwrap().iter();
    groups.map(|g| g["keys"].as_u64().unwrap()).collect()
}

#[test]
fn slots_move_to_another_group_and_back_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let mut acked: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    for key in &acked {
        assert_eq!(try_call(leader.addr, cmd::set(key, key)), Some(Reply::Ok));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_until(leader.addr, stop.clone());
    let moved = |slots: &str, to: &str| {
        cli_ok(
            leader.addr,
            &["cluster", "move-slots", "--slots", slots, "--to", to],
        )
    };
    moved("0-8191", "2");
    let keys = group_keys(leader.addr);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stored, refused) = writer.join().unwrap();
    eprintln!(
        "during the move: {} writes stored, {refused} refused",
        stored.len()
    );
    acked.extend(stored);
    assert!(keys[1] > 200, "group 2 holds about half the keys: {keys:?}");
    // Every node runs group 2: a client is sent on to its leader.
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = kvstore_client::BlockingClient::connect(addrs.join(",")).unwrap();
    let read = |key: &str| client.get(key).unwrap();
    for key in &acked {
        assert_eq!(
            read(key).as_deref(),
            Some(key.as_bytes()),
            "{key} after the move"
        );
    }

    // Back to group 1: every acknowledged write is there, and group 2 has
    // dropped its copy.
    moved("0-8191", "1");
    for key in &acked {
        assert_eq!(read(key).as_deref(), Some(key.as_bytes()), "{key}");
    }
    assert_eq!(group_keys(leader.addr), [acked.len() as u64, 0]);
}

/// A writer that goes on while slots move, until `stop`: each write
/// (`w0` = `w0`, ...) is stored, or refused with nothing written (TryAgain
/// while frozen, then Moved, or NotLeader once its slot's group is led by
/// another node). The keys stored, and the count refused.
fn write_until(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let (mut stored, mut refused) = (Vec::new(), 0);
        for i in 0..20_000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let key = format!("w{i}");
            match try_call(addr, cmd::set(&key, &key)) {
                Some(Reply::Ok) => stored.push(key),
                reply => {
                    let code = code_of(reply);
                    let moving = [ErrorCode::TryAgain, ErrorCode::Moved, ErrorCode::NotLeader]
                        .map(|c| Some(c as u32));
                    assert!(moving.contains(&code), "{key}: {code:?}");
                    refused += 1;
                }
            }
        }
        (stored, refused)
    })
}

/// The slot ranges of each group in `cluster status --output json`.
fn group_slots(addr: SocketAddr) -> Vec<serde_json::Value> {
    let table = cli_ok(addr, &["cluster", "status", "--output", "json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let groups = table["groups"].as_array().unwrap().iter();
    groups.map(|g| g["slots"].clone()).collect()
}

#[test]
fn rebalance_spreads_the_keys_over_new_groups_while_a_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    let mut acked: Vec<String> = (0..3_000).map(|i| format!("k{i}")).collect();
    for chunk in acked.chunks(500) {
        client.bulk_set(chunk.iter().map(|k| (k, k))).unwrap();
    }
    cli_ok(leader.addr, &["cluster", "add-group"]);
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_until(leader.addr, stop.clone());
    cli_ok(leader.addr, &["cluster", "rebalance"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stored, refused) = writer.join().unwrap();
    eprintln!(
        "during the rebalance: {} stored, {refused} refused",
        stored.len()
    );
    acked.extend(stored);

    // Each group holds about a third of the keys and of the slots, and
    // every acknowledged write is readable through any node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let keys = loop {
        let keys = group_keys(leader.addr);
        if keys.iter().sum::<u64>() == acked.len() as u64 || Instant::now() > deadline {
            break keys;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let third = acked.len() as f64 / 3.0;
    assert!(
        keys.iter().all(|&k| (k as f64 - third).abs() < 0.1 * third),
        "keys per group {keys:?} of {}",
        acked.len()
    );
    let slots = group_slots(leader.addr);
    eprintln!("slots per group after the rebalance: {slots:?}");
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = kvstore_client::BlockingClient::connect(addrs.join(",")).unwrap();
    for key in &acked {
        assert_eq!(client.get(key).unwrap().as_deref(), Some(key.as_bytes()));
    }
    // Balanced now: a second rebalance moves nothing.
    cli_ok(leader.addr, &["cluster", "rebalance"]);
    assert_eq!(group_slots(leader.addr), slots);
}

/// Waits (bounded) until node `addr` runs group `group` with `voters`
/// (`None`: does not run it); its view of the group.
fn wait_for_group_view(addr: SocketAddr, group: u64, voters: Option<&[u64]>) -> Option<GroupView> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = status(addr).and_then(|s| s.groups.into_iter().find(|g| g.id == group));
        if view.as_ref().map(|g| &g.voters[..]) == voters {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} on {addr}: {view:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_group_moves_to_a_node_that_did_not_run_it_with_every_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    let client = kvstore_client::BlockingClient::connect(addr_list(&nodes)).unwrap();
    let mut acked: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    for chunk in acked.chunks(500) {
        client.bulk_set(chunk.iter().map(|k| (k, k))).unwrap();
    }
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,2"]);
    let moved = ["cluster", "move-slots", "--slots", "0-8191", "--to", "2"];
    cli_ok(leader.addr, &moved);
    let g2 = dir.path().join("node2.db.raft").join("g2");
    assert!(g2.exists());

    // Group 2 goes from node 2 to node 3 while a writer goes on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_until(leader.addr, stop.clone());
    let move_replica = [
        "cluster",
        "move-replica",
        "--group",
        "2",
        "--from",
        "2",
        "--to",
        "3",
    ];
    cli_ok(leader.addr, &move_replica);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stored, refused) = writer.join().unwrap();
    eprintln!(
        "during the replica move: {} stored, {refused} refused",
        stored.len()
    );
    acked.extend(stored);

    for node in [&nodes[0], &nodes[2]] {
        wait_for_group_view(node.addr, 2, Some(&[1, 3]));
    }
    wait_for_group_view(nodes[1].addr, 2, None);
    assert!(!g2.exists(), "node 2 still runs group 2 from {g2:?}");
    assert!(
        g2.with_extension("left").exists(),
        "node 2 set its copy aside"
    );
    // Sent again, it finds the move done and changes nothing.
    cli_ok(leader.addr, &move_replica);

    // Node 2 is no longer needed by group 2: with it down, every
    // acknowledged write is read, and node 3 holds group 2's pairs.
    servers[1].take().unwrap().kill9();
    for key in &acked {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(key.as_bytes()),
            "{key}"
        );
    }
    let on = |node: &Spec| {
        wait_for_group_view(node.addr, 2, Some(&[1, 3]))
            .unwrap()
            .keys
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while on(&nodes[2]) != on(&nodes[0]) {
        assert!(
            Instant::now() < deadline,
            "node 3 has {} keys of group 2, node 1 {}",
            on(&nodes[2]),
            on(&nodes[0])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(on(&nodes[2]) > 500, "group 2 holds about half the keys");
    client.set("after", "the move").unwrap();
}

/// Writes `n` pairs (`k0` = `k0`, ...) through `leader`, then starts moving
/// slots 0-8191 to group 2 with the CLI on a thread of its own: the keys,
/// and the thread, which gives the CLI's output.
fn fill_and_move_half(
    leader: SocketAddr,
    n: usize,
) -> (Vec<String>, std::thread::JoinHandle<std::process::Output>) {
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(1000) {
        let items = chunk.iter().map(|k| (k.as_str(), k.as_str()));
        assert_eq!(try_call(leader, cmd::bulk_set(items)), Some(Reply::Ok));
    }
    let coordinator = std::thread::spawn(move || {
        cli(
            leader,
            &["cluster", "move-slots", "--slots", "0-8191", "--to", "2"],
        )
    });
    (keys, coordinator)
}

#[test]
fn a_move_whose_coordinator_is_killed_is_finished_by_the_next_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    // Enough pairs that the move is still under way when its coordinator
    // (group 1's leader) is killed.
    let (keys, coordinator) = fill_and_move_half(leader.addr, 20_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Killed once the source is frozen: the copy under way or done.
    let step = loop {
        let moving = status(leader.addr).and_then(|s| s.moving);
        if let Some(moving) = moving.filter(|m| !["Begun", "Importing"].contains(&&*m.step)) {
            break moving.step;
        }
        assert!(
            Instant::now() < deadline,
            "the move never got to its freeze"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    assert!(
        !coordinator.join().unwrap().status.success(),
        "killed at {step}"
    );
    eprintln!("coordinator killed after step {step}");

    // The next leader of group 1 finishes the move.
    let survivors: Vec<Spec> = nodes
        .iter()
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = wait_for_leader(&survivors);
        let done = status(next.addr).is_some_and(|s| {
            let slots = &s.groups[0].slots;
            s.moving.is_none() && slots == &[(8192, 16383)]
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the move was not finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Back to group 1 through the new leader: every pair is there, once.
    let next = wait_for_leader(&survivors);
    cli_ok(
        next.addr,
        &["cluster", "move-slots", "--slots", "0-8191", "--to", "1"],
    );
    let client = kvstore_client::BlockingClient::connect(next.addr.to_string()).unwrap();
    let mut expected: Vec<(bytes::Bytes, bytes::Bytes)> = (keys.iter())
        .map(|k| (k.clone().into(), k.clone().into()))
        .collect();
    expected.sort();
    assert!(everything(&client) == expected, "the pairs after the moves");
}

#[test]
fn a_move_aborted_before_its_release_leaves_every_pair_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, _servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let (keys, coordinator) = fill_and_move_half(leader.addr, 50_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let copying = |step: &str| ["Frozen", "Copied"].contains(&step);
    while status(leader.addr)
        .and_then(|s| s.moving)
        .is_none_or(|m| !copying(&m.step))
    {
        assert!(
            Instant::now() < deadline,
            "the move never got to its freeze"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    cli_ok(leader.addr, &["cluster", "abort-move"]);
    let moved = coordinator.join().unwrap();
    assert!(!moved.status.success(), "the move reports its abort");

    let after = status(leader.addr).unwrap();
    assert!(after.moving.is_none());
    assert_eq!(after.groups[0].slots, [(0, 16383)], "the map is as it was");
    assert_eq!((after.groups[0].keys, after.groups[1].keys), (50_000, 0));
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    assert_eq!(everything(&client).len(), keys.len());
    let slot_zero_key = "{06S}"; // slot 0
    assert_eq!(kvstore_client::slot::slot_of(slot_zero_key.as_bytes()), 0);
    assert_eq!(
        try_call(leader.addr, cmd::set(slot_zero_key, "v")),
        Some(Reply::Ok)
    );
}

/// A slot move's steps, in order (`MoveStep`).
const MOVE_STEPS: [&str; 7] = [
    "Begun",
    "Importing",
    "Frozen",
    "Copied",
    "Released",
    "Published",
    "Serving",
];

/// Waits (bounded) until a node among `nodes` that answers shows no move
/// under way and group 1 serving `slots`; its status.
fn wait_for_move_end(nodes: &[Spec], slots: &[(u16, u16)]) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = (nodes.iter())
            .filter_map(|n| status(n.addr))
            .find(|s| s.role == "leader" && s.moving.is_none() && s.groups[0].slots == slots);
        if let Some(status) = done {
            return status;
        }
        assert!(Instant::now() < deadline, "the move did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_move_and_its_writes_survive_a_kill_of_a_group_leader_at_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(1000) {
        client.bulk_set(chunk.iter().map(|k| (k, k))).unwrap();
    }
    let mut expected: Vec<(bytes::Bytes, bytes::Bytes)> = (keys.iter())
        .map(|k| (k.clone().into(), k.clone().into()))
        .collect();
    expected.sort();
    // A writer through the client library, given every node, all along.
    let every: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let writer_client = kvstore_client::BlockingClient::connect(every.join(",")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut acked = Vec::new();
            for i in 0..1_000_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{i}");
                // An error's outcome is unknown: not counted either way.
                if writer_client.set(&key, i.to_string()).is_ok() {
                    acked.push((key, i));
                }
            }
            acked
        }
    });
    // Slots 0-8191 go to group 2 and back; in each move the leader of its
    // target or its source is killed once the move has reached a step, and
    // started again.
    let plan = [
        ("Importing", "target"),
        ("Frozen", "source"),
        ("Copied", "target"),
        ("Released", "source"),
        ("Published", "target"),
    ];
    for (round, (step, whose)) in plan.into_iter().enumerate() {
        let (from, to) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        let coordinator = wait_for_leader(&nodes);
        let addr = coordinator.addr;
        let to_arg = to.to_string();
        let mover = std::thread::spawn(move || {
            let args = [
                "cluster",
                "move-slots",
                "--slots",
                "0-8191",
                "--to",
                &to_arg,
            ];
            cli(addr, &args)
        });
        let at = MOVE_STEPS.iter().position(|s| *s == step).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // At the step or a later one (steps after the copy are quick); at
        // the move's end if it ended before a look caught it.
        let (reached, victim) = loop {
            if let Some(seen) = status(addr) {
                let (now, name) = match &seen.moving {
                    Some(m) => (
                        MOVE_STEPS.iter().position(|s| *s == m.step).unwrap(),
                        m.step.clone(),
                    ),
                    None if mover.is_finished() => (MOVE_STEPS.len(), "the end".to_string()),
                    None => (0, String::new()),
                };
                let group = if whose == "target" { to } else { from };
                let leader = (seen.groups.iter())
                    .find(|g| g.id == group)
                    .and_then(|g| g.leader);
                if let (true, Some(leader)) = (now >= at, leader) {
                    break (name, leader);
                }
            }
            assert!(Instant::now() < deadline, "the move never reached {step}");
            std::thread::sleep(Duration::from_millis(1));
        };
        let index = nodes.iter().position(|n| n.id == victim).unwrap();
        servers[index].take().unwrap().kill9();
        eprintln!("move {round}: killed node {victim}, the {whose}'s leader, at {reached}");
        servers[index] = Some(start(&nodes[index], &nodes, dir.path()));
        let _ = mover.join().unwrap();
        let slots: &[(u16, u16)] = if to == 2 {
            &[(8192, 16383)]
        } else {
            &[(0, 16383)]
        };
        let after = wait_for_move_end(&nodes, slots);
        let client = kvstore_client::BlockingClient::connect(after_addr(&nodes, &after)).unwrap();
        let mut filled = everything(&client);
        filled.retain(|(key, _)| key.starts_with(b"k"));
        assert!(filled == expected, "move {round}: the pairs after it");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let client = kvstore_client::BlockingClient::connect(every.join(",")).unwrap();
    for (key, value) in &acked {
        let stored = client.get(key).unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(value.to_string().as_bytes()),
            "{key}"
        );
    }
    eprintln!(
        "{} writes acknowledged during the moves, each found",
        acked.len()
    );
}

/// The native address of the node whose status is `status`.
fn after_addr(nodes: &[Spec], status: &ClusterStatus) -> String {
    let node = nodes.iter().find(|n| n.id == status.node_id).unwrap();
    node.addr.to_string()
}

/// Every key of a scan of the keys starting with `prefix`, in pages of
/// `page` pairs, each page its own request, tried up to `tries` times.
pub(crate) fn scan_in_pages(
    client: &kvstore_client::BlockingClient,
    prefix: &str,
    page: u32,
    tries: usize,
) -> Result<Vec<String>, kvstore_client::Error> {
    let mut query = kvstore_client::ScanQuery::prefix(prefix);
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let mut reply = client.call(query.command(page));
        for _ in 1..tries {
            if reply.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            reply = client.call(query.command(page));
        }
        let (pairs, more) = match reply? {
            Reply::Pairs { pairs, more } => (pairs, more),
            other => panic!("a scan page answered {other:?}"),
        };
        if let Some((last, _)) = pairs.last() {
            query.advance(last);
        }
        keys.extend(
            pairs
                .iter()
                .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap()),
        );
        if !more {
            return Ok(keys);
        }
    }
    panic!("the scan did not end");
}

#[test]
fn a_full_scan_while_slots_move_gives_every_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, _servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    let keys: Vec<String> = (0..4_000).map(|i| format!("s{i:05}")).collect();
    for chunk in keys.chunks(500) {
        client.bulk_set(chunk.iter().map(|k| (k, k))).unwrap();
    }
    // Half the slots go to group 2 and back, five times, while scans run.
    let addr = leader.addr;
    let mover = std::thread::spawn(move || {
        for to in ["2", "1"].repeat(5) {
            cli_ok(
                addr,
                &["cluster", "move-slots", "--slots", "0-8191", "--to", to],
            );
        }
    });
    let mut scans = 0;
    while scans == 0 || !mover.is_finished() {
        let scanned = scan_in_pages(&client, "s", 20, 1).unwrap();
        assert!(scanned == keys, "scan {scans}: {} keys", scanned.len());
        scans += 1;
    }
    mover.join().unwrap();
    eprintln!("{scans} full scans while the slots moved ten times");
}

/// Waits (bounded) until node `addr`'s replicas hold `expected` keys per
/// group, in group order.
fn wait_for_group_keys(addr: SocketAddr, expected: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = group_keys(addr);
        if keys == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys per group {keys:?}, not {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keys_reach_their_group_through_the_client_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = ["--grpc-listen", "127.0.0.1:0"];
    let (nodes, servers, leader) = start_cluster_with(dir.path(), &grpc);
    // Node 3 runs no group 2: it sends clients of group 2's keys on.
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,2"]);
    let moved = ["cluster", "move-slots", "--slots", "0-8191", "--to", "2"];
    cli_ok(leader.addr, &moved);
    let third = &nodes[2];
    let client = kvstore_client::BlockingClient::connect(third.addr.to_string()).unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        client.set(key, key).unwrap();
    }
    for key in &keys {
        assert_eq!(client.get(key).unwrap().as_deref(), Some(key.as_bytes()));
    }
    let in_two = (keys.iter())
        .filter(|k| kvstore_client::slot::slot_of(k.as_bytes()) <= 8191)
        .count() as u64;
    wait_for_group_keys(nodes[0].addr, &[10_000 - in_two, in_two]);

    // The CLI, through the node that does not run the key's group.
    let key = "{06S}cli"; // slot 0: group 2's
    cli_ok(third.addr, &["set", key, "from the shell"]);
    assert_eq!(cli_ok(third.addr, &["get", key]).trim(), "from the shell");
    wait_for_group_keys(nodes[0].addr, &[10_000 - in_two, in_two + 1]);

    // A scan through node 3 asks both groups: every key once, in order,
    // both ways (pages end where a group stopped walking).
    let mut expected: Vec<String> = keys.clone();
    expected.push(key.to_string());
    expected.sort();
    let scanned = |query: kvstore_client::ScanQuery| -> Vec<String> {
        (client.scan(query))
            .map(|pair| String::from_utf8(pair.unwrap().0.to_vec()).unwrap())
            .collect()
    };
    let all = scanned(kvstore_client::ScanQuery::prefix(""));
    assert_eq!(all.len(), expected.len(), "keys scanned");
    assert!(all == expected, "every key once, in order");
    let down = scanned(kvstore_client::ScanQuery::prefix("key:").reverse());
    let expected_down: Vec<&String> = expected
        .iter()
        .rev()
        .filter(|k| k.starts_with("key:"))
        .collect();
    assert!(
        down.iter().collect::<Vec<_>>() == expected_down,
        "descending"
    );
    let listed = cli_ok(third.addr, &["keys"]);
    assert_eq!(listed.lines().count(), expected.len());
    let grpc = servers[2].as_ref().unwrap().grpc.unwrap();
    let (page, scanned) = grpc_scan(grpc, 100);
    assert!(page == expected[..100], "gRPC ListKeys: {page:?}");
    assert!(scanned == expected, "gRPC Scan: {} keys", scanned.len());

    // A write over two groups is refused whole.
    let cross = client.bulk_set([("{06S}a", "v"), ("{b}", "v")]);
    let code = cross.err().and_then(|e| e.code());
    assert_eq!(code, Some(ErrorCode::CrossSlot));

    // A backup would hold group 1's slots only: refused, as is a restore.
    for args in [&["backup", "-"][..], &["restore", "--server", "b1"]] {
        let refused = cli(leader.addr, args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("sharded cluster"),
            "kvstore {args:?}: {}, {stderr}",
            refused.status
        );
    }

    split_writes_store_every_part(&nodes, &dir.path().join("rows.csv"));
}

/// The explicit split of multi-key writes, and the bulk loader on it, in
/// the cluster of `keys_reach_their_group_through_the_client_and_the_cli`
/// (group 2 on nodes 1 and 2 with slots 0-8191).
fn split_writes_store_every_part(nodes: &[Spec], csv: &Path) {
    let pairs: Vec<(String, String)> = (0..1_000)
        .map(|i| (format!("split:{i}"), format!("v{i}")))
        .collect();
    let keys = || pairs.iter().map(|(key, _)| key);
    let group_of = |slot: u16| if slot <= 8191 { 2 } else { 1 };
    // Through node 1, which runs both groups: a part per slot, stored.
    let first = kvstore_client::BlockingClient::connect(nodes[0].addr.to_string()).unwrap();
    let parts = first.bulk_set_split(pairs.iter().map(|(k, v)| (k, v)));
    let mut slots: Vec<u16> = keys()
        .map(|k| kvstore_client::slot::slot_of(k.as_bytes()))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let split: Vec<Option<u16>> = parts.iter().map(|p| p.slot).collect();
    assert!(
        split == slots.iter().map(|s| Some(*s)).collect::<Vec<_>>(),
        "{} parts",
        parts.len()
    );
    for part in &parts {
        assert!(part.result.is_ok(), "{part:?}");
        assert_eq!(part.group, part.slot.map(group_of), "{part:?}");
    }
    assert_eq!(parts.iter().map(|p| p.keys).sum::<usize>(), pairs.len());
    for (key, value) in &pairs {
        assert_eq!(first.get(key).unwrap().as_deref(), Some(value.as_bytes()));
    }
    // Through node 3, which runs group 1 only; then two keys of one slot.
    let third = kvstore_client::BlockingClient::connect(nodes[2].addr.to_string()).unwrap();
    let parts = third.delete_many_split(keys());
    let removed: u64 = parts.iter().map(|p| *p.result.as_ref().unwrap()).sum();
    assert_eq!(removed, pairs.len() as u64);
    assert!(keys().all(|key| first.get(key).unwrap().is_none()));
    let one_slot = third.bulk_set_split([("{t}1", "a"), ("{t}2", "b")]);
    assert_eq!(one_slot.len(), 1, "{one_slot:?}");
    assert!(one_slot[0].result.is_ok() && one_slot[0].keys == 2);

    // The bulk loader, through node 3.
    let rows: String = (0..2_000).map(|i| format!("load:{i},v{i}\n")).collect();
    std::fs::write(csv, rows).unwrap();
    let said = cli_ok(nodes[2].addr, &["load", csv.to_str().unwrap()]);
    assert!(said.contains("loaded 2000 rows"), "{said}");
    let loaded = first.scan(kvstore_client::ScanQuery::prefix("load:"));
    assert_eq!(loaded.filter(|pair| pair.is_ok()).count(), 2_000);

    // A flush through node 3 empties both groups.
    third.flush().unwrap();
    wait_for_group_keys(nodes[0].addr, &[0, 0]);
    assert_eq!(
        scan_in_pages(&first, "", 100, 1).unwrap(),
        Vec::<String>::new()
    );
}

/// Through the gRPC door at `addr`: a `ListKeys` page of `limit` keys,
/// and every key a `Scan` streams.
fn grpc_scan(addr: SocketAddr, limit: u32) -> (Vec<String>, Vec<String>) {
    use kvstore_proto::v1::key_value_client::KeyValueClient;
    use kvstore_proto::v1::{ListKeysRequest, ScanRequest};
    let text = |key: &[u8]| String::from_utf8(key.to_vec()).unwrap();
    common::runtime().block_on(async {
        let mut grpc = KeyValueClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let page = ListKeysRequest {
            limit,
            ..Default::default()
        };
        let page = grpc.list_keys(page).await.unwrap().into_inner();
        let listed = page.keys.iter().map(|k| text(k)).collect();
        let mut stream = (grpc.scan(ScanRequest::default()).await)
            .unwrap()
            .into_inner();
        let mut scanned = Vec::new();
        while let Some(page) = stream.message().await.unwrap() {
            scanned.extend(page.pairs.iter().map(|p| text(&p.key)));
        }
        (listed, scanned)
    })
}

/// Waits (bounded) until `CLUSTER SLOTS` through `conn` shows `expected`
/// slot ranges with this many nodes each (in order): every node has
/// recorded its RESP address.
fn wait_for_redis_slots(conn: &mut redis::Connection, expected: &[(i64, i64, usize)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(conn).unwrap();
        let seen: Vec<(i64, i64, usize)> = match &slots {
            redis::Value::Array(ranges) => (ranges.iter())
                .filter_map(|range| match range {
                    redis::Value::Array(r) => match (&r[0], &r[1]) {
                        (redis::Value::Int(a), redis::Value::Int(b)) => Some((*a, *b, r.len() - 2)),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if seen == expected {
            return;
        }
        assert!(Instant::now() < deadline, "CLUSTER SLOTS: {slots:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redis_cluster_clients_find_each_key_s_group_and_list_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,2"]);
    let moved = ["cluster", "move-slots", "--slots", "0-8191", "--to", "2"];
    cli_ok(leader.addr, &moved);
    let resp = |i: usize| servers[i].as_ref().unwrap().resp.unwrap();
    // Node 3 runs no group 2, but learns its leader.
    let mut third = redis_connection(&servers[2]);
    wait_for_redis_slots(&mut third, &[(0, 8191, 2), (8192, 16383, 3)]);
    let mut first = redis_connection(&servers[0]);
    wait_for_the_same_view(&mut third, &mut first);
    // What cluster clients read at connect.
    let info: String = redis::cmd("INFO").query(&mut third).unwrap();
    for field in ["redis_mode:cluster", "# Cluster", "cluster_enabled:1"] {
        assert!(info.contains(field), "INFO lacks {field:?}:\n{info}");
    }

    // A plain connection to node 3 is sent to group 2's nodes.
    let refused = redis::cmd("SET")
        .arg("{06S}x")
        .arg("v")
        .query::<()>(&mut third)
        .unwrap_err();
    let said = refused.to_string();
    assert_eq!(refused.code(), Some("MOVED"), "{said}");
    let to_group_2 = [resp(0), resp(1)].map(|a| format!("0 {a}"));
    assert!(to_group_2.iter().any(|a| said.contains(a)), "{said}");
    let myid: String = redis::cmd("CLUSTER").arg("MYID").query(&mut third).unwrap();
    assert_eq!(myid, format!("{:040x}", 3));
    let lines: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut third)
        .unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");

    // redis-cli -c follows MOVED.
    let port = resp(2).port().to_string();
    let redis_cli = |args: &[&str]| {
        let base = ["-c", "-h", "127.0.0.1", "-p", &port];
        let out = std::process::Command::new("redis-cli")
            .args(base.iter().chain(args))
            .output()
            .expect("run redis-cli (redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis_cli(&["SET", "{06S}cli", "hello"]), "OK");
    assert_eq!(redis_cli(&["GET", "{06S}cli"]), "hello");

    // The redis crate's cluster client, given node 3 alone.
    let client = redis::cluster::ClusterClient::new(vec![format!("redis://{}/", resp(2))]).unwrap();
    let mut cluster = client.get_connection().unwrap();
    let keys: Vec<String> = (0..10_000).map(|i| format!("redis:{i}")).collect();
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(key)
            .query(&mut cluster)
            .unwrap();
    }
    for key in &keys {
        let value: String = redis::cmd("GET").arg(key).query(&mut cluster).unwrap();
        assert_eq!(&value, key);
    }
    let in_two = (keys.iter())
        .filter(|k| kvstore_client::slot::slot_of(k.as_bytes()) <= 8191)
        .count() as u64;
    wait_for_group_keys(nodes[0].addr, &[10_000 - in_two, in_two + 1]);

    // Every key once: KEYS and DBSIZE through the cluster client, which
    // asks every master and joins the answers, and SCAN on each master.
    let mut expected = keys.clone();
    expected.push("{06S}cli".to_string());
    expected.sort();
    let mut listed: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut cluster).unwrap();
    listed.sort();
    assert!(listed == expected, "KEYS: {} keys", listed.len());
    let size: usize = redis::cmd("DBSIZE").query(&mut cluster).unwrap();
    assert_eq!(size, expected.len(), "DBSIZE");
    let mut scanned = scan_masters(&mut third);
    scanned.sort();
    assert!(scanned == expected, "SCAN: {} keys", scanned.len());

    // CLUSTER COUNTKEYSINSLOT counts a node's own data, as on Redis.
    let slot = kvstore_client::slot::slot_of(b"redis:0");
    let in_slot = (keys.iter())
        .filter(|k| kvstore_client::slot::slot_of(k.as_bytes()) == slot)
        .count();
    let count = |conn: &mut redis::Connection, slot: u16| -> redis::RedisResult<usize> {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(conn)
    };
    assert_eq!(count(&mut first, slot).unwrap(), in_slot, "slot {slot}");
    let runs_it = slot > 8191; // group 1's, which node 3 runs
    let expected = if runs_it { in_slot } else { 0 };
    assert_eq!(
        count(&mut third, slot).unwrap(),
        expected,
        "slot {slot} at node 3"
    );
    let refused = count(&mut first, 16_384).unwrap_err();
    assert!(
        refused.to_string().contains("Invalid or out of range slot"),
        "{refused}"
    );

    // FLUSHALL, which the cluster client sends to every master.
    let _: () = redis::cmd("FLUSHALL").query(&mut cluster).unwrap();
    let size: usize = redis::cmd("DBSIZE").query(&mut cluster).unwrap();
    assert_eq!(size, 0, "DBSIZE after FLUSHALL");
    wait_for_group_keys(nodes[0].addr, &[0, 0]);
}

/// Waits (bounded) until `CLUSTER SLOTS` through `conn` gives what it
/// gives through `other`: the same masters and replicas of every range.
fn wait_for_the_same_view(conn: &mut redis::Connection, other: &mut redis::Connection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let slots = |conn: &mut redis::Connection| -> redis::Value {
        redis::cmd("CLUSTER").arg("SLOTS").query(conn).unwrap()
    };
    loop {
        let (seen, there) = (slots(conn), slots(other));
        if seen == there {
            return;
        }
        assert!(Instant::now() < deadline, "{seen:?}, not {there:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every key `SCAN` gives on each master `CLUSTER NODES` through `conn`
/// lists, as redis-py's `scan_iter` on a cluster walks them.
fn scan_masters(conn: &mut redis::Connection) -> Vec<String> {
    let lines: String = redis::cmd("CLUSTER").arg("NODES").query(conn).unwrap();
    let masters = (lines.lines())
        .filter(|line| line.contains("master"))
        .map(|line| line.split(' ').nth(1).unwrap().split('@').next().unwrap());
    let mut found = Vec::new();
    for addr in masters {
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut master = client.get_connection().unwrap();
        let mut cursor = 0u64;
        for _ in 0..1_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1_000)
                .query(&mut master)
                .unwrap();
            found.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(cursor, 0, "SCAN on {addr} did not end");
    }
    found
}

/// The redirects the native door has answered on every node: `Moved` and
/// `NotLeader` errors.
fn redirects(nodes: &[Spec]) -> i64 {
    let of = |node: &Spec| -> i64 {
        let client = kvstore_client::BlockingClient::connect(node.addr.to_string()).unwrap();
        let figures: std::collections::BTreeMap<String, i64> =
            client.stats().unwrap().into_iter().collect();
        figures["errors_total{code=\"Moved\"}"] + figures["errors_total{code=\"NotLeader\"}"]
    };
    nodes.iter().map(of).sum()
}

#[test]
fn the_client_learns_each_group_s_leader_and_sends_its_keys_there() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    // Group 2 runs on the two other nodes: its leader is never group 1's.
    let others: Vec<String> = (nodes.iter())
        .filter(|n| n.id != leader.id)
        .map(|n| n.id.to_string())
        .collect();
    cli_ok(
        leader.addr,
        &["cluster", "add-group", "--nodes", &others.join(",")],
    );
    let moved = ["cluster", "move-slots", "--slots", "0-8191", "--to", "2"];
    cli_ok(leader.addr, &moved);
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    let keys: Vec<String> = (0..2_000).map(|i| format!("key:{i}")).collect();
    let write_and_read = |round: &str| {
        for key in &keys {
            client.set(key, round).unwrap();
            assert_eq!(client.get(key).unwrap().as_deref(), Some(round.as_bytes()));
        }
    };
    let before = redirects(&nodes);
    write_and_read("first");
    // A redirect or two teach the client the routes (a few more if a
    // group's leader changes meanwhile); sent to one node, half the
    // 4,000 calls would be redirected.
    let redirected = redirects(&nodes) - before;
    assert!(redirected <= 10, "{redirected} redirects");

    // The slots move back: `Moved` makes the client learn them again.
    let back = ["cluster", "move-slots", "--slots", "0-8191", "--to", "1"];
    cli_ok(leader.addr, &back);
    let before = redirects(&nodes);
    write_and_read("second");
    let redirected = redirects(&nodes) - before;
    assert!(redirected <= 10, "{redirected} redirects after the move");
}
