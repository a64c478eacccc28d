//! Expiry in cluster mode (docs/expiry.md): the leader decides, so every
//! node agrees; followers hide a key once its time has passed; the sweep's
//! removals replicate; and a slot move keeps each key's deadline.

use kvstore_client::slot::slot_of;
use kvstore_client::{BlockingClient, Command, Condition, Expiry};

use super::common::cli_ok;
use super::*;

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as u64
}

/// `key` as the node at `addr` holds it (a follower read of its own
/// applied state), and how that node's reply came.
fn local_get(addr: SocketAddr, key: &str) -> Option<Option<bytes::Bytes>> {
    let get = Command::Get {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
    };
    match local_read(addr, get)? {
        Reply::Value(value) => Some(value),
        other => panic!("a follower read of {key}: {other:?}"),
    }
}

fn group_keys(addr: SocketAddr) -> Vec<u64> {
    let table = cli_ok(addr, &["cluster", "status", "--output", "json"]);
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    let groups = table["groups"].as_array().unwrap().iter();
    groups.map(|g| g["keys"].as_u64().unwrap()).collect()
}

/// `name0` to `name39`.
fn keys(name: &'static str) -> impl Iterator<Item = String> {
    (0..40).map(move |i| format!("{name}{i}"))
}

#[test]
fn deadlines_replicate_survive_slot_moves_and_hide_keys_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _servers, leader) = start_cluster(dir.path());
    cli_ok(leader.addr, &["cluster", "add-group"]);
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = BlockingClient::connect(addrs.join(",")).unwrap();
    // Far enough off to move a slot range first.
    let soon = now_ms() + 8_000;
    for (name, at) in [("short", soon), ("long", soon + 3_600_000)] {
        for key in keys(name) {
            let set = client.set_expiring(&key, "v", Condition::Always, Expiry::At(at));
            assert!(set.unwrap(), "{key}");
        }
    }
    client.set("plain", "v").unwrap();
    let deadlines = |client: &BlockingClient| -> Vec<i64> {
        let all = keys("short").chain(keys("long"));
        all.map(|key| client.ttl(&key, true).unwrap()).collect()
    };
    let before = deadlines(&client);
    assert!(before
        .iter()
        .all(|&at| at == soon as i64 || at == soon as i64 + 3_600_000));

    let moved = |to: &str| {
        let args = ["cluster", "move-slots", "--slots", "0-8191", "--to", to];
        cli_ok(leader.addr, &args)
    };
    moved("2");
    let split = group_keys(leader.addr);
    assert!(
        split[1] > 10 && split[0] > 10,
        "both groups hold keys: {split:?}"
    );
    assert_eq!(
        deadlines(&client),
        before,
        "a slot move keeps every deadline"
    );
    assert!(
        now_ms() < soon,
        "the move took past the deadline; no check made"
    );

    // Once the time passes, no node returns a short key, swept or not.
    while now_ms() <= soon {
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in &nodes {
        for key in keys("short").take(10) {
            assert_eq!(
                local_get(node.addr, &key),
                Some(None),
                "{key} on {}",
                node.id
            );
        }
        let long = local_get(node.addr, "long0");
        assert_eq!(long, Some(Some("v".into())), "node {}", node.id);
    }
    assert_eq!(group_keys(leader.addr).iter().sum::<u64>(), 41);
    // The leaders' sweeps remove them through the log: gone from every
    // node, not just hidden. Group 1 (slots 8192 and up now) keeps the
    // bytes of its long keys and `plain` (a node's key_bytes is group 1's).
    let stays = keys("long").chain(["plain".to_string()]);
    let group_1 = stays.filter(|k| slot_of(k.as_bytes()) >= 8192);
    let bytes = group_1.map(|k| k.len() as i64).sum::<i64>();
    let held = || -> Vec<_> { nodes.iter().map(|n| figure(n.addr, "key_bytes")).collect() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while held() != vec![Some(bytes); nodes.len()] {
        assert!(
            Instant::now() < deadline,
            "not swept: {:?}, not {bytes}",
            held()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // And back: the long keys keep their deadlines.
    moved("1");
    assert_eq!(group_keys(leader.addr), [41, 0]);
    let long: Vec<i64> = keys("long")
        .map(|k| client.ttl(&k, true).unwrap())
        .collect();
    assert_eq!(long, before[40..]);
}
