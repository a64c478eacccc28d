//! A backup restored into a running cluster: `kvstore restore --server`
//! sends it to the leader, which writes it through Raft, so every node
//! holds it, and refuses a second restore into the no longer empty store.

use kvstore_client::{BlockingClient, Reads};

use super::*;

#[test]
fn a_backup_of_one_cluster_restores_into_another_through_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (old, backups) = (dir.path().join("old"), dir.path().join("backups"));
    std::fs::create_dir_all(&old).unwrap();
    let (_old_nodes, _old_servers, leader) = start_cluster(&old);
    let client = BlockingClient::connect(leader.addr.to_string()).unwrap();
    fill(&client);
    client.set(&b"\x00\xff binary"[..], [0u8, 1]).unwrap();
    let before = everything(&client);
    assert_eq!(before.len(), 1000);
    std::fs::create_dir_all(&backups).unwrap();
    let file = backups.join("nightly");
    common::cli_ok(leader.addr, &["backup", file.to_str().unwrap()]);

    // A new cluster whose nodes all see the backup directory.
    let nodes = specs(3);
    let backup_dir = ["--backup-dir", backups.to_str().unwrap()];
    let _servers: Vec<Server> = (nodes.iter())
        .map(|n| start_with(n, &nodes, dir.path(), |peer| peer.raft, &backup_dir))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    wait_for_leader(&nodes);
    // Given every address, the CLI finds the leader.
    let said = common::cli_ok(addr_list(&nodes), &["restore", "--server", "nightly"]);
    assert!(said.starts_with("restore nightly: 1000 keys"), "{said}");

    // Every node has it, read from its own applied state once it has
    // applied everything the leader had when the restore ended.
    let last = status(wait_for_leader(&nodes).addr)
        .and_then(|s| s.last_log_index)
        .unwrap();
    wait_applied(&nodes, last);
    for node in &nodes {
        let reader = BlockingClient::from_builder(
            kvstore_client::Client::builder()
                .addr(node.addr.to_string())
                .reads(Reads::Follower),
        )
        .unwrap();
        assert_eq!(everything(&reader), before, "node {}", node.id);
    }

    let again = cli(addr_list(&nodes), &["restore", "--server", "nightly"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("the store holds 1000 keys"),
        "a second restore is refused: {stderr}"
    );
}
