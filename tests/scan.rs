//! Scan and Range against the real server over loopback: every page in key
//! order, both directions, paging through the client library and the CLI,
//! and the promises about writers running meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{cli_ok, Server};
use kvstore_client::{BlockingClient, Reply, ScanQuery};

fn user(i: usize) -> String {
    format!("user:{i:05}")
}

/// A server holding `user:00000..user:02999` (value `v{i}`) and some keys
/// around them that no `user:` scan may return.
fn loaded() -> (tempfile::TempDir, Server, BlockingClient) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    let items: Vec<(String, String)> = (0..3000).map(|i| (user(i), format!("v{i}"))).collect();
    client.bulk_set(items).unwrap();
    client
        .bulk_set([("user", "x"), ("user;", "x"), ("usea", "x"), ("zzz", "x")])
        .unwrap();
    (dir, server, client)
}

fn keys(pairs: &[(Bytes, Bytes)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
        .collect()
}

#[test]
fn a_prefix_scan_returns_every_pair_once_in_order_across_pages() {
    let (_dir, _server, client) = loaded();
    let all: Vec<(Bytes, Bytes)> = client
        .scan(ScanQuery::prefix("user:"))
        .collect::<Result<_, _>>()
        .unwrap();
    // 3,000 pairs take three default pages of 1,000 and a last, empty look.
    assert_eq!(keys(&all), (0..3000).map(user).collect::<Vec<_>>());
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (_, v))| v == &format!("v{i}")));

    let backwards: Vec<String> = keys(
        &client
            .scan(ScanQuery::prefix("user:").reverse())
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
    );
    assert_eq!(backwards, (0..3000).rev().map(user).collect::<Vec<_>>());

    let (page, more) = client.scan_page(&ScanQuery::prefix("user:"), 7).unwrap();
    assert_eq!(keys(&page), (0..7).map(user).collect::<Vec<_>>());
    assert!(more);
    let (page, more) = client.scan_page(&ScanQuery::prefix("nobody"), 7).unwrap();
    assert!(page.is_empty() && !more);
}

#[test]
fn a_range_is_half_open_and_pages_both_ways() {
    let (_dir, _server, client) = loaded();
    let range = |q: ScanQuery| keys(&client.scan(q).collect::<Result<Vec<_>, _>>().unwrap());
    let expected: Vec<String> = (1000..2500).map(user).collect();
    assert_eq!(
        range(ScanQuery::range(user(1000), Some(user(2500)))),
        expected
    );
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        range(ScanQuery::range(user(1000), Some(user(2500))).reverse()),
        reversed
    );
    // No end: to the last key; an empty or inverted range: nothing.
    assert_eq!(
        range(ScanQuery::range("user;", None::<&str>)),
        ["user;", "zzz"]
    );
    assert!(range(ScanQuery::range("b", Some("a"))).is_empty());
    assert!(range(ScanQuery::range("b", Some("b"))).is_empty());
    // Pages of 100 through the raw command, as a client in another language
    // would page: next start = last key + 0x00.
    let mut query = ScanQuery::range(user(0), Some(user(250)));
    let mut seen = Vec::new();
    loop {
        let Reply::Pairs { pairs, more } = client.call(query.command(100)).unwrap() else {
            panic!("not a Pairs reply");
        };
        assert!(pairs.len() <= 100);
        if let Some((last, _)) = pairs.last() {
            query.advance(last);
        }
        seen.extend(keys(&pairs));
        if !more {
            break;
        }
    }
    assert_eq!(seen, (0..250).map(user).collect::<Vec<_>>());
}

/// A page is one instant's view: a writer keeps ten keys (in different
/// shards) equal with one BulkSet each time, and no page ever shows two of
/// them different. Keys present throughout come back exactly once while
/// other keys come and go.
#[test]
fn pages_are_consistent_cuts_while_writers_run() {
    let (_dir, server, client) = loaded();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, addr) = (stop.clone(), server.addr.to_string());
        std::thread::spawn(move || {
            let client = BlockingClient::connect(addr).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let items: Vec<(String, String)> = (0..10)
                    .map(|k| (format!("pair:{k}"), n.to_string()))
                    .collect();
                client.bulk_set(items).unwrap();
                // Keys that appear and vanish among the user: keys.
                let churn = format!("user:{:05}x", n % 3000);
                client.set(&churn, "new").unwrap();
                client
                    .delete(format!("user:{:05}x", (n + 1500) % 3000))
                    .unwrap();
            }
            n
        })
    };
    for _ in 0..40 {
        let (page, _) = client.scan_page(&ScanQuery::prefix("pair:"), 0).unwrap();
        let values: Vec<&Bytes> = page.iter().map(|(_, v)| v).collect();
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "a page mixed two BulkSets: {values:?}"
        );
        let stable: Vec<String> = keys(
            &client
                .scan(ScanQuery::prefix("user:"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
        )
        .into_iter()
        .filter(|k| !k.ends_with('x'))
        .collect();
        assert_eq!(stable, (0..3000).map(user).collect::<Vec<_>>());
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
}

#[test]
fn the_cli_prints_scans_and_ranges() {
    let (_dir, server, _client) = loaded();
    let cli = |args: &[&str]| cli_ok(server.addr, args);
    assert_eq!(
        cli(&["scan", "user:", "--limit", "2"]),
        "user:00000\tv0\nuser:00001\tv1\n"
    );
    assert_eq!(
        cli(&["scan", "user:", "--limit", "1", "--reverse"]),
        "user:02999\tv2999\n"
    );
    assert_eq!(
        cli(&["range", "user:00010", "user:00012"]),
        "user:00010\tv10\nuser:00011\tv11\n"
    );
    assert_eq!(
        cli(&["--output", "json", "range", "user;"]),
        "{\"pairs\":[{\"key\":\"user;\",\"value\":\"x\"},{\"key\":\"zzz\",\"value\":\"x\"}]}\n"
    );
}
