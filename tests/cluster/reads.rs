//! Follower reads and session guarantees: a follower cut off from the leader
//! answers follower reads with what it has (stale), while a session read
//! waits for the client's own writes and moves on to a node that has them.

use kvstore_client::{Client, Reads};

use super::partition::start_partitionable;
use super::proxy::Link;
use super::*;

#[test]
fn follower_reads_may_be_stale_but_session_reads_see_their_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let (nodes, _servers, links) = start_partitionable(dir.path(), &rt);
    let leader = wait_for_leader(&nodes);
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap().clone();
    // The follower first: reads go there while it answers.
    let list =
        addr_list(std::iter::once(&follower).chain(nodes.iter().filter(|n| n.id != follower.id)));
    let client = |reads| {
        Client::builder()
            .addr(list.clone())
            .reads(reads)
            .build()
            .unwrap()
    };
    let (stale, session) = (client(Reads::Follower), client(Reads::Session));

    rt.block_on(async {
        session.set("k", "1").await.unwrap();
        let first = session.session_index();
        assert!(first > 0, "a session write reports its log index");
        // The follower has applied it (the session read waits until it has).
        assert_eq!(session.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(
            session.addr(),
            leader.addr.to_string(),
            "writes follow the leader"
        );
        assert_eq!(stale.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
    });

    // Cut off from the leader, the follower applies nothing new.
    links.set_between(leader.id, follower.id, Link::Down);
    rt.block_on(async {
        session.set("k", "2").await.unwrap();
        // A follower read gets what the follower holds: the old value.
        assert_eq!(stale.get("k").await.unwrap().as_deref(), Some(&b"1"[..]));
        // A session read must see the session's write: the follower cannot
        // get there (Lagging), so the client asks the next node.
        assert_eq!(session.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
    });
    // The CLI's --reads follower reads the follower's copy; by default it
    // reads through the leader.
    let cli_get = |extra: &[&str]| {
        let out = common::cli_ok(&list, &[extra, &["get", "k"]].concat());
        out.trim().to_string()
    };
    assert_eq!(cli_get(&["--reads", "follower"]), "1");
    assert_eq!(cli_get(&[]), "2");

    // Healed, the follower catches up and its follower reads with it.
    links.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    let caught_up = Client::builder()
        .addr(follower.addr.to_string())
        .reads(Reads::Follower)
        .build()
        .unwrap();
    loop {
        let value = rt.block_on(caught_up.get("k")).unwrap();
        if value.as_deref() == Some(&b"2"[..]) {
            break;
        }
        assert_eq!(value.as_deref(), Some(&b"1"[..]), "no value but 1 or 2");
        assert!(Instant::now() < deadline, "the follower did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_running_alone_answers_session_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("alone.db"), &[]);
    let rt = common::runtime();
    let client = Client::builder()
        .addr(server.addr.to_string())
        .reads(Reads::Session)
        .build()
        .unwrap();
    rt.block_on(async {
        client.set("k", "v").await.unwrap();
        assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert!(client.delete("k").await.unwrap());
        assert_eq!(client.session_index(), 0, "no log index without a cluster");
    });
}

#[test]
fn grpc_reads_go_to_a_follower_when_asked_and_carry_the_session_index() {
    use kvstore_proto::v1::key_value_client::KeyValueClient;
    use kvstore_proto::v1::{GetRequest, PutRequest};
    use tonic::metadata::MetadataValue;

    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let grpc = ["--grpc-listen", "127.0.0.1:0"];
    let servers: Vec<Server> = (nodes.iter())
        .map(|n| start_with(n, &nodes, dir.path(), |peer| peer.raft, &grpc))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    let url = |id: u64| {
        let server = &servers[nodes.iter().position(|n| n.id == id).unwrap()];
        format!("http://{}", server.grpc.unwrap())
    };
    let follower = nodes.iter().find(|n| n.id != leader.id).unwrap().id;
    let index_of = |metadata: &tonic::metadata::MetadataMap| -> u64 {
        let index = metadata.get("kvstore-index").expect("an index");
        index.to_str().unwrap().parse().unwrap()
    };
    let get = |headers: &[(&'static str, String)]| {
        let mut request = tonic::Request::new(GetRequest { key: "g".into() });
        for (name, value) in headers {
            let value: MetadataValue<_> = value.parse().unwrap();
            request.metadata_mut().insert(*name, value);
        }
        request
    };
    common::runtime().block_on(async {
        let mut lead = KeyValueClient::connect(url(leader.id)).await.unwrap();
        let put = PutRequest {
            key: "g".into(),
            value: "1".into(),
        };
        let written = index_of(lead.put(put).await.unwrap().metadata());
        assert!(written > 0);

        let mut other = KeyValueClient::connect(url(follower)).await.unwrap();
        // Without the header a read takes the leader's path: refused here.
        let refused = other.get(get(&[])).await.unwrap_err();
        assert!(refused.message().contains("NotLeader"), "{refused:?}");
        // As a follower read after the write's index: the write is there.
        let session = [
            ("kvstore-read", "follower".to_string()),
            ("kvstore-after-index", written.to_string()),
        ];
        let read = other.get(get(&session)).await.unwrap();
        assert!(index_of(read.metadata()) >= written);
        assert_eq!(read.into_inner().value, "1");
        // An index no node has reached: Lagging, after the wait.
        let ahead = [
            ("kvstore-read", "follower".to_string()),
            ("kvstore-after-index", (written + 1_000_000).to_string()),
        ];
        let lagging = other.get(get(&ahead)).await.unwrap_err();
        assert!(lagging.message().contains("Lagging"), "{lagging:?}");
        let bad = other
            .get(get(&[("kvstore-read", "sideways".to_string())]))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    });
}
