//! `--cluster-file`: one JSON file describes the first voters; each node is
//! started with its id, its data and the file.

use std::process::Command;

use super::*;

/// The file for `nodes`.
fn write_cluster_file(path: &Path, nodes: &[Spec]) {
    let entries: Vec<serde_json::Value> = (nodes.iter())
        .map(|n| {
            serde_json::json!({"id": n.id, "addr": n.addr.to_string(), "raft_addr": n.raft.to_string()})
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "nodes": entries }).to_string()).unwrap();
}

/// `kvstore-server --node-id ID --cluster-file FILE --data DATA` and `extra`.
fn from_file(id: u64, file: &Path, dir: &Path, extra: &[&str]) -> Command {
    let data = dir.join(format!("node{id}.db"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvstore-server"));
    command
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--cluster-file")
        .arg(file)
        .arg("--data")
        .arg(data)
        .args(["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"])
        .args(extra);
    command
}

#[test]
fn nodes_started_from_one_cluster_file_form_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let file = dir.path().join("cluster.json");
    write_cluster_file(&file, &nodes);
    // No --listen, no --raft-listen, no --peers: the file says them all.
    let servers: Vec<Server> = (nodes.iter())
        .map(|n| {
            let data = dir.path().join(format!("node{}.db", n.id));
            Server::spawn(from_file(n.id, &file, dir.path(), &[]), &data)
        })
        .collect();
    for (server, node) in servers.iter().zip(&nodes) {
        assert_eq!(
            server.addr, node.addr,
            "node {} listens where the file says",
            node.id
        );
    }
    assert!(cli(nodes[1].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    assert_eq!(try_call(leader.addr, cmd::set("k", "v")), Some(Reply::Ok));
    let status = status(leader.addr).unwrap();
    let members: Vec<(u64, String, String)> = (status.members.iter())
        .map(|m| (m.id, m.addr.clone(), m.raft_addr.clone()))
        .collect();
    let expected: Vec<(u64, String, String)> = (nodes.iter())
        .map(|n| (n.id, n.addr.to_string(), n.raft.to_string()))
        .collect();
    assert_eq!(members, expected);
}

#[test]
fn a_cluster_file_that_does_not_fit_the_node_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let file = dir.path().join("cluster.json");
    write_cluster_file(&file, &nodes);
    let refused = |mut command: Command| {
        let out = command.env("RUST_LOG", "warn").output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(from_file(9, &file, dir.path(), &[]));
    assert!(err.contains("no node 9"), "{err}");
    let err = refused(from_file(
        1,
        &file,
        dir.path(),
        &["--listen", "127.0.0.1:1"],
    ));
    assert!(err.contains("but --listen is 127.0.0.1:1"), "{err}");
    let err = refused(from_file(1, &file, dir.path(), &["--peers", "2=a:1/a:2"]));
    assert!(err.contains("--peers"), "{err}");

    let mut twice = nodes.clone();
    twice[2].id = 2;
    write_cluster_file(&file, &twice);
    let err = refused(from_file(1, &file, dir.path(), &[]));
    assert!(err.contains("node 2 is listed twice"), "{err}");
    std::fs::write(&file, "{\"nodes\": [{\"id\": 1}]}").unwrap();
    let err = refused(from_file(1, &file, dir.path(), &[]));
    assert!(err.contains("missing field"), "{err}");
}

/// `--advertise-addr`: what the membership records and a follower's
/// `NotLeader` names is the advertised address, not the bound one.
#[test]
fn nodes_tell_clients_and_peers_their_advertised_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let advertised = |n: &Spec| format!("localhost:{}", n.addr.port());
    // The peers too are named by their advertised addresses.
    let _servers: Vec<Server> = (nodes.iter())
        .map(|n| {
            let peers: Vec<String> = (nodes.iter())
                .filter(|p| p.id != n.id)
                .map(|p| format!("{}={}/{}", p.id, advertised(p), p.raft))
                .collect();
            let (id, raft, peers) = (n.id.to_string(), n.raft.to_string(), peers.join(","));
            let own = advertised(n);
            let args = [
                "--node-id",
                &id,
                "--raft-listen",
                &raft,
                "--peers",
                &peers,
                "--advertise-addr",
                &own,
            ];
            let data = dir.path().join(format!("node{}.db", n.id));
            Server::start_on(&n.addr.to_string(), &data, &args)
        })
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    let members = status(leader.addr).unwrap().members;
    for node in &nodes {
        let member = members.iter().find(|m| m.id == node.id).unwrap();
        assert_eq!(member.addr, advertised(node), "{members:?}");
    }
    // A follower names the leader once it has heard from it.
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let message = match try_call(follower.addr, cmd::set("k", "v")) {
            Some(Reply::Error { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        if message.contains("leader at") || Instant::now() > deadline {
            assert!(message.ends_with(&advertised(&leader)), "{message}");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client given the advertised addresses finds the leader by them.
    let all: Vec<String> = nodes.iter().map(advertised).collect();
    let out = cli(all.join(","), &["set", "k", "v"]);
    assert!(out.status.success(), "{out:?}");
}
