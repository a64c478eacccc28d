//! Watches in cluster mode (docs/watch.md#rules-and-limits): every node
//! serves them from what it applied, with the Raft index as the revision,
//! so a watch whose node dies goes on at another node from its last
//! revision, through a follower's restart and a leader change.

use bytes::Bytes;
use kvstore_client::{Client, Event, EventKind, WatchStream};

use super::*;

const WATCHERS: usize = 1_000;

/// A client that starts at `first` and moves along the others, patient
/// enough to outlast a failover.
fn client_starting_at(nodes: &[Spec], first: usize) -> Client {
    let order = (0..nodes.len()).map(|i| &nodes[(first + i) % nodes.len()]);
    Client::builder()
        .addr(addr_list(order))
        .max_attempts(100)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap()
}

/// Writes `count` values under `w/` one at a time (and one elsewhere each);
/// the changes a watcher of `w/` must see, in order.
async fn write(client: &Client, round: &str, count: usize) -> Vec<(Bytes, Bytes)> {
    let mut expected = Vec::new();
    for i in 0..count {
        let (key, value) = (format!("w/{}", i % 7), format!("{round}{i}"));
        client.set(&key, &value).await.unwrap();
        client.set(format!("x/{i}"), "not watched").await.unwrap();
        expected.push((Bytes::from(key), Bytes::from(value)));
    }
    expected
}

/// Reads a round of changes into `seen`, giving the watchers back.
async fn round(watchers: Vec<WatchStream>, seen: &mut [Vec<Event>], n: usize) -> Vec<WatchStream> {
    let read = common::watch_all(watchers, n).await;
    let mut back = Vec::new();
    for ((watch, events), seen) in read.into_iter().zip(seen.iter_mut()) {
        seen.extend(events);
        back.push(watch);
    }
    back
}

#[test]
fn watchers_get_every_change_once_across_a_follower_restart_and_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    // No snapshots: a restarted node replays its whole log, so its history
    // covers what its watchers resume from.
    let extra = ["--raft-snapshot-every", "100000"];
    let (nodes, mut servers, leader) = start_cluster_with(dir.path(), &extra);
    let rt = common::runtime();
    let clients: Vec<Client> = (0..nodes.len())
        .map(|first| client_starting_at(&nodes, first))
        .collect();
    let writer = &clients[0];
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap().clone();

    let mut watchers = Vec::new();
    rt.block_on(async {
        for i in 0..WATCHERS {
            watchers.push(clients[i % nodes.len()].watch("w/", 0).await.unwrap());
        }
    });
    let mut seen = vec![Vec::new(); WATCHERS];
    let mut expected = Vec::new();

    // Before anything happens.
    let before = rt.block_on(write(writer, "a", 60));
    expected.extend(before);
    watchers = rt.block_on(round(watchers, &mut seen, 60));

    // A follower dies, writes go on, it comes back: its watchers go on at
    // the next node.
    servers[(follower.id - 1) as usize].take().unwrap().kill9();
    expected.extend(rt.block_on(write(writer, "b", 60)));
    watchers = rt.block_on(round(watchers, &mut seen, 60));
    servers[(follower.id - 1) as usize] = Some(start_with(
        &follower,
        &nodes,
        dir.path(),
        |peer| peer.raft,
        &extra,
    ));

    // The leader dies: a new one is elected, and the leader's watchers go on
    // elsewhere.
    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    let survivors: Vec<Spec> = nodes
        .iter()
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    wait_for_leader(&survivors);
    expected.extend(rt.block_on(write(writer, "c", 60)));
    rt.block_on(round(watchers, &mut seen, 60));

    for (i, events) in seen.iter().enumerate() {
        let got: Vec<(Bytes, Bytes)> = (events.iter())
            .map(|e| match &e.kind {
                EventKind::Put { value, .. } => (e.key.clone(), value.clone()),
                other => panic!("watcher {i}: unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got, expected, "watcher {i}");
        // One Raft entry may hold several writes: revisions may repeat.
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "watcher {i}");
    }
}
