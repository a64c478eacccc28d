//! Membership changes while clients write: an empty node joins as a learner,
//! is promoted to voter, and the leader is removed, with no acknowledged
//! write lost and no pause longer than the clients' retry budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvstore_client::Client;

use super::*;

/// `kvstore cluster ARGS` against every address in `nodes`; panics if it
/// fails.
fn cluster_cli(nodes: &[Spec], args: &[&str]) -> String {
    common::cli_ok(addr_list(nodes), &[&["cluster"], args].concat())
}

/// The voters and learners `node` sees.
fn members(node: &Spec) -> (Vec<u64>, Vec<u64>) {
    let status = status(node.addr).unwrap();
    let ids = |voter: bool| {
        (status.members.iter())
            .filter(|m| m.voter == voter)
            .map(|m| m.id)
            .collect()
    };
    (ids(true), ids(false))
}

#[test]
fn a_node_joins_and_the_leader_leaves_under_load_with_no_acknowledged_write_lost() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(4);
    let first = &nodes[..3];
    let mut servers: Vec<Option<Server>> = first
        .iter()
        .map(|n| Some(start(n, first, dir.path())))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(first);
    // The fourth node starts empty and belongs to no cluster yet.
    servers.push(Some(start(&nodes[3], &nodes, dir.path())));

    // Two clients write distinct keys the whole time, with the library's
    // retries (several addresses: it follows the leader).
    let all = addr_list(&nodes);
    let rt = common::runtime();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let client = Client::connect(all.clone()).unwrap();
            let (acked, stop) = (acked.clone(), stop.clone());
            rt.spawn(async move {
                let mut failed = 0;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    match client.set(&key, "v").await {
                        Ok(()) => acked.lock().unwrap().push(key),
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let progress = |since: usize| {
        // Writes go on through each change: wait for 50 more.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < since + 50 {
            assert!(Instant::now() < deadline, "writes stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
        acked.lock().unwrap().len()
    };
    let mut seen = progress(0);

    // Join: learner (returns once it has caught up), then voter.
    let (id, addr, raft) = (
        nodes[3].id.to_string(),
        nodes[3].addr.to_string(),
        nodes[3].raft.to_string(),
    );
    cluster_cli(first, &["add-learner", &id, &addr, &raft]);
    assert_eq!(members(&leader), (vec![1, 2, 3], vec![4]));
    seen = progress(seen);
    cluster_cli(first, &["promote", &id]);
    assert_eq!(members(&leader), (vec![1, 2, 3, 4], vec![]));
    seen = progress(seen);

    // The leader leaves; the other three elect a leader among themselves.
    cluster_cli(&nodes, &["remove", &leader.id.to_string()]);
    let rest: Vec<Spec> = nodes
        .iter()
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    let new_leader = wait_for_leader(&rest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while members(&new_leader).0.contains(&leader.id) {
        assert!(
            Instant::now() < deadline,
            "node {} still a voter",
            leader.id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    seen = progress(seen);

    stop.store(true, Ordering::Relaxed);
    let failed: u32 = rt.block_on(async {
        let mut failed = 0;
        for writer in writers {
            failed += writer.await.unwrap();
        }
        failed
    });
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "membership under load: {} writes acknowledged, {failed} failed",
        acked.len()
    );
    assert!(acked.len() >= seen);

    // Every acknowledged write is there, and the new node holds them all.
    let new_leader = wait_for_leader(&rest);
    let reader = Client::connect(all).unwrap();
    rt.block_on(async {
        for key in &acked {
            let value = reader.get(key).await.unwrap();
            assert_eq!(value.as_deref(), Some(&b"v"[..]), "acknowledged {key} lost");
        }
    });
    let last = status(new_leader.addr).unwrap().last_log_index.unwrap();
    wait_applied(&rest, last);
    assert_eq!(keys_figure(nodes[3].addr), keys_figure(new_leader.addr));
    assert!(keys_figure(nodes[3].addr).unwrap() >= acked.len() as i64);
}

/// openraft's default let `add-learner` answer while the learner was up to
/// 5,000 entries behind: at once after a restore, whose entries hold 1 MiB
/// each. It answers once the learner is within a few entries.
#[test]
fn add_learner_answers_once_the_learner_has_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(4);
    let first = &nodes[..3];
    let _servers: Vec<Server> = (first.iter())
        .map(|n| start(n, first, dir.path()))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(first);
    // 150 entries of 64 KB: one BulkSet at a time, one entry each.
    let client = kvstore_client::BlockingClient::connect(addr_list(first)).unwrap();
    for batch in 0..150u32 {
        let items = (0..64).map(|i| (format!("b{batch}-{i}"), vec![batch as u8; 1000]));
        client.bulk_set(items).unwrap();
    }
    let before = status(leader.addr).unwrap().last_log_index.unwrap();
    let _learner = start(&nodes[3], &nodes, dir.path());
    let (id, addr, raft) = (
        nodes[3].id.to_string(),
        nodes[3].addr.to_string(),
        nodes[3].raft.to_string(),
    );
    cluster_cli(first, &["add-learner", &id, &addr, &raft]);
    let has = status(nodes[3].addr).unwrap().last_log_index.unwrap_or(0);
    assert!(
        has + 8 >= before,
        "the learner had {has} of {before} entries when add-learner answered"
    );
}
