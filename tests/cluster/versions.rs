//! Revisions in cluster mode (docs/transactions.md#revisions): a write's
//! revision is its Raft entry's index, so every node, whatever its engine,
//! answers the same revisions, and a new leader after a failover too.

use std::collections::BTreeMap;

use kvstore_client::{BlockingClient, Command, Versioned};

use super::*;

/// `key`'s value and revisions as the node at `addr` has applied them.
fn local_versioned(addr: SocketAddr, key: &str) -> Reply {
    let read = Command::GetWithVersion {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
    };
    local_read(addr, read).unwrap_or_else(|| panic!("no answer from {addr}"))
}

#[test]
fn every_node_answers_the_same_revisions_and_so_does_a_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = BlockingClient::connect(addrs.join(",")).unwrap();
    // Writers on a few keys at once, so entries hold several writes, some
    // of the same key.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let client = &client;
            scope.spawn(move || {
                for i in 0..50 {
                    client
                        .set(format!("k{}", i % 8), format!("{t}:{i}"))
                        .unwrap();
                }
            });
        }
    });
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let on_leader: BTreeMap<&String, Versioned> = (keys.iter())
        .map(|key| (key, client.get_with_version(key).unwrap().unwrap()))
        .collect();
    assert!(on_leader
        .values()
        .all(|v| v.modified >= v.created && v.created > 0));
    let index = status(leader.addr).unwrap().applied_index.unwrap();
    wait_applied(&nodes, index);
    for node in &nodes {
        for (key, expected) in &on_leader {
            let Reply::Versioned {
                value,
                modified,
                created,
            } = local_versioned(node.addr, key)
            else {
                panic!("not a Versioned reply");
            };
            let got = (value, modified, created);
            let want = (
                Some(expected.value.clone()),
                expected.modified,
                expected.created,
            );
            assert_eq!(
                got,
                want,
                "{key} on node {} ({})",
                node.id,
                engine_of(node.id)
            );
        }
    }

    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    for (key, expected) in &on_leader {
        let found = client.get_with_version(key).unwrap().unwrap();
        assert_eq!(&found, expected, "{key} after the failover");
    }
}

/// Compare-and-swap increments from several clients through Raft lose no
/// update, and every node holds the same count at the same revision.
#[test]
fn compare_and_swap_increments_through_raft_lose_no_update() {
    use kvstore_client::{CompareOp, Target, Transaction};
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let increment = |client: &BlockingClient| loop {
        let found = client.get_with_version("counter").unwrap();
        let (n, seen) = found.map_or((0u64, 0), |v| {
            (
                std::str::from_utf8(&v.value).unwrap().parse().unwrap(),
                v.modified,
            )
        });
        let set = Command::Set {
            key: "counter".into(),
            value: (n + 1).to_string().into(),
        };
        let txn = Transaction::new()
            .when("counter", Target::ModRevision(seen), CompareOp::Equal)
            .then(set);
        if client.txn(txn).unwrap().succeeded {
            return;
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let client = BlockingClient::connect(addrs.join(",")).unwrap();
            scope.spawn(move || (0..10).for_each(|_| increment(&client)));
        }
    });
    let client = BlockingClient::connect(addrs.join(",")).unwrap();
    let on_leader = client.get_with_version("counter").unwrap().unwrap();
    assert_eq!(&on_leader.value[..], b"40");
    let index = status(leader.addr).unwrap().applied_index.unwrap();
    wait_applied(&nodes, index);
    for node in &nodes {
        let Reply::Versioned {
            value, modified, ..
        } = local_versioned(node.addr, "counter")
        else {
            panic!("not a Versioned reply");
        };
        assert_eq!(
            (value, modified),
            (Some(on_leader.value.clone()), on_leader.modified)
        );
    }
}
