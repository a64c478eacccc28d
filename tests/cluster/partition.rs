//! A partition through the link proxies: the leader cut off from the other
//! two keeps its process and its clients, and must not acknowledge anything.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::proxy::{Link, Links};
use super::*;

/// Three nodes whose raft messages all go through `links`' proxies.
pub(crate) fn start_partitionable(
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> (Vec<Spec>, Vec<Option<Server>>, Links) {
    start_partitionable_n(dir, rt, 3)
}

/// `n` nodes, all voters, whose raft messages all go through `links`'
/// proxies.
pub(crate) fn start_partitionable_n(
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    n: u64,
) -> (Vec<Spec>, Vec<Option<Server>>, Links) {
    let nodes = specs(n);
    let raft: Vec<(u64, SocketAddr)> = nodes.iter().map(|n| (n.id, n.raft)).collect();
    let links = Links::start(rt, &raft);
    let servers = nodes
        .iter()
        .map(|n| Some(start_proxied(n, &nodes, dir, &links)))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    (nodes, servers, links)
}

/// Starts `me`, reaching every peer through its link proxy.
pub(crate) fn start_proxied(me: &Spec, all: &[Spec], dir: &Path, links: &Links) -> Server {
    start_via(me, all, dir, |peer| links.addr(me.id, peer.id))
}

#[test]
fn a_leader_cut_off_from_the_majority_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let (nodes, _servers, links) = start_partitionable(dir.path(), &rt);
    let old = wait_for_leader(&nodes);
    assert_eq!(
        try_call(old.addr, cmd::set("split", "before")),
        Some(Reply::Ok)
    );

    // The leader's links stall: it still believes it leads, and its clients
    // still reach it.
    links.isolate(old.id, Link::Stalled);
    let writers: Vec<_> = (0..5)
        .map(|i| {
            let addr = old.addr;
            std::thread::spawn(move || send(addr, cmd::set("split", format!("minority{i}"))))
        })
        .collect();

    // The other two elect a leader and take writes.
    let majority: Vec<Spec> = nodes.iter().filter(|n| n.id != old.id).cloned().collect();
    let new = wait_for_leader(&majority);
    assert_eq!(
        try_call(new.addr, cmd::set("split", "majority")),
        Some(Reply::Ok)
    );

    // The old leader cannot confirm it leads, so it serves no read either.
    let read = send(old.addr, cmd::get("split"));
    assert!(
        !matches!(read, Sent::Answered(Reply::Value(_))),
        "the cut-off leader answered a read"
    );
    for writer in writers {
        match writer.join().unwrap() {
            Sent::Answered(Reply::Ok) => panic!("a write on the minority side was acknowledged"),
            Sent::Answered(Reply::Error { .. }) | Sent::NoAnswer | Sent::Unreachable => {}
            Sent::Answered(other) => panic!("unexpected reply {other:?}"),
        }
    }

    // Healed, the old leader follows the new term and drops what it alone
    // had; every node ends with the majority's value.
    links.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let states: Vec<_> = nodes.iter().map(|n| status(n.addr).unwrap()).collect();
        let leaders: Vec<_> = states.iter().filter(|s| s.role == "leader").collect();
        if leaders.len() == 1 && states.iter().all(|s| s.leader == Some(leaders[0].node_id)) {
            break nodes[(leaders[0].node_id - 1) as usize].clone();
        }
        assert!(Instant::now() < deadline, "the nodes disagree: {states:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        try_call(leader.addr, cmd::get("split")),
        Some(Reply::Value(Some("majority".into())))
    );
    let last = status(leader.addr).unwrap().last_log_index.unwrap();
    wait_applied(&nodes, last);
}
