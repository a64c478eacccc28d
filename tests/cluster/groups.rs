//! Raft groups on the raft port: every message names its group, and a node
//! hands it to that group or answers that it runs no such group.

use kvstore::raft::network::RpcReply;
use kvstore::raft::FIRST_GROUP;

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
}
