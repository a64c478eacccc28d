//! Follower reads and session guarantees: a follower cut off from the leader
//! answers follower reads with what it has (stale), while a session read
//! waits for the client's own writes and moves on to a node that has them;
//! follower reads go to the least loaded node.

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
    // The follower first: a fresh client's first read goes there.
    let list =
        addr_list(std::iter::once(&follower).chain(nodes.iter().filter(|n| n.id != follower.id)));
    let client = |addrs: &str, reads| Client::builder().addr(addrs).reads(reads).build().unwrap();
    let stale = client(&follower.addr.to_string(), Reads::Follower);
    let session = client(&list, Reads::Session);

    rt.block_on(async {
        session.set("k", "1").await.unwrap();
        let first = session.session_index();
        assert!(first > 0, "a session write reports its log index");
        // Read from a node known to have applied it (the leader that
        // acknowledged it), or one that waits until it has.
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
        // A session read must see the session's write: the leader is known
        // to have it.
        assert_eq!(session.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
        // A new client carrying the session knows no node with it, so it
        // starts with the first, the follower, which cannot get there
        // (Lagging): the client asks another node.
        let carried = client(&list, Reads::Session);
        carried.observe_index(session.session_index());
        assert_eq!(carried.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
        let loads = carried.replica_loads();
        assert_eq!(loads[0].addr, follower.addr.to_string());
        assert!(
            loads[0].latency.unwrap() >= Duration::from_secs(1),
            "the follower was tried first, and waited: {loads:?}"
        );
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
        let mut request = tonic::Request::new(GetRequest {
            key: "g".into(),
            ..Default::default()
        });
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
            ttl_ms: 0,
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

/// The native `Indexed` requests a node has received: follower reads.
fn reads_served(node: &Spec) -> i64 {
    figure(
        node.addr,
        r#"commands_total{door="native",command="Indexed"}"#,
    )
    .unwrap()
}

/// Follower reads each node served while `work` ran.
fn served_during(nodes: &[Spec], work: impl FnOnce()) -> Vec<i64> {
    let before: Vec<i64> = nodes.iter().map(reads_served).collect();
    work();
    (nodes.iter().zip(before))
        .map(|(node, before)| reads_served(node) - before)
        .collect()
}

#[test]
fn follower_reads_go_to_the_least_loaded_node_and_status_shows_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, _leader) = start_cluster(dir.path());
    let rt = common::runtime();
    // The first node answers through a proxy that holds every chunk 100 ms:
    // it is far away. It comes first in the list, as the nearest should.
    let far = super::proxy::slow(&rt, nodes[0].addr, Duration::from_millis(100));
    let list = format!("{far},{},{}", nodes[1].addr, nodes[2].addr);
    let client = Client::builder()
        .addr(list)
        .reads(Reads::Follower)
        .build()
        .unwrap();
    rt.block_on(Client::connect(addr_list(&nodes)).unwrap().set("k", "v"))
        .unwrap();

    // One after another: the far node answers the first read, then is left
    // alone while the others answer quickly.
    let served = served_during(&nodes, || {
        rt.block_on(async {
            for _ in 0..200 {
                client.get("k").await.unwrap();
            }
        })
    });
    assert_eq!(served.iter().sum::<i64>(), 200, "{served:?}");
    assert!(served[0] <= 3, "the far node served {served:?}");
    let loads = client.replica_loads();
    assert!(
        loads[0].latency.unwrap() > Duration::from_millis(100),
        "{loads:?}"
    );
    assert!(loads[0].latency > loads[1].latency.max(loads[2].latency));

    // 16 at once: reads outstanding on one node send the next to the other.
    let served = served_during(&nodes, || {
        rt.block_on(async {
            let readers: Vec<_> = (0..16)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            client.get("k").await.unwrap();
                        }
                    })
                })
                .collect();
            for reader in readers {
                reader.await.unwrap();
            }
        })
    });
    assert_eq!(served.iter().sum::<i64>(), 800, "{served:?}");
    assert!(served[0] < 80, "the far node served {served:?}");
    assert!(
        served[1] >= 160 && served[2] >= 160,
        "not spread: {served:?}"
    );

    // `cluster status` shows each node's load: the requests of its last
    // whole second.
    let busy = nodes[1].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = common::runtime();
            let client = Client::builder()
                .addr(busy.addr.to_string())
                .reads(Reads::Follower)
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                rt.block_on(client.exists("k")).unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    let out = cli(nodes[2].addr, &["cluster", "status", "--output", "json"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rate = |id: u64| {
        let rows = table["nodes"].as_array().unwrap();
        let row = rows.iter().find(|r| r["id"] == id).unwrap();
        assert!(row["connections"].as_i64().unwrap() >= 1, "{table}");
        row["commands_last_second"].as_i64().unwrap()
    };
    let (busy, idle) = (rate(nodes[1].id), rate(nodes[0].id));
    assert!(busy >= 50 && busy > 10 * idle.max(1), "{table}");
}
