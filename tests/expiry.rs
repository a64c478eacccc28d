//! Key expiry (docs/expiry.md) on the real server over TCP, on both
//! engines: a key is gone for every read once its deadline passes, stays
//! gone after `kill -9` and a restart, and the sweep frees what it held;
//! `Persist`, `Expire`'s conditions and past times, `Incr` keeping a
//! deadline, `GetEx`, and `Ttl`'s answers.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use kvstore_client::{BlockingClient, Condition, ErrorCode, ExpireWhen, Expiry};

const ENGINES: [&[&str]; 2] = [&[], &["--engine", "disk"]];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn figures(client: &BlockingClient) -> BTreeMap<String, i64> {
    client.stats().unwrap().into_iter().collect()
}

/// Polls `done` every 20 ms for up to 10 s; how long it took.
fn within_10s(mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn a_key_is_gone_at_its_deadline_and_stays_gone_after_kill_9() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kvstore.db");
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        let set = |key: &str, expiry| {
            assert!(client
                .set_expiring(key, "v", Condition::Always, expiry)
                .unwrap());
        };
        set("soon", Expiry::In(500));
        set("later", Expiry::In(3_600_000));
        set("kept", Expiry::In(500));
        client.set("plain", "p").unwrap();
        assert!(client.persist("kept").unwrap());
        assert!(!client.persist("plain").unwrap());

        let left = client.ttl("soon", false).unwrap();
        assert!((1..=500).contains(&left), "{left}");
        let at = client.ttl("later", true).unwrap() as u64;
        assert!(at.abs_diff(now_ms() + 3_600_000) < 60_000, "{at}");
        assert_eq!(client.ttl("plain", false).unwrap(), -1);
        assert_eq!(client.ttl("kept", false).unwrap(), -1);
        assert_eq!(client.ttl("missing", false).unwrap(), -2);
        assert!(client.exists("soon").unwrap());

        within_10s(|| client.get("soon").unwrap().is_none());
        assert!(!client.exists("soon").unwrap());
        assert_eq!(client.ttl("soon", false).unwrap(), -2);
        let keys = client.keys_page("", None, 100).unwrap().0;
        assert_eq!(keys, ["kept", "later", "plain"], "{engine:?}");
        assert_eq!(figures(&client)["keys"], 3);

        server.kill9();
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        assert_eq!(client.get("soon").unwrap(), None, "{engine:?}");
        assert_eq!(client.get("kept").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(client.ttl("kept", false).unwrap(), -1);
        assert_eq!(client.ttl("later", true).unwrap() as u64, at);
        // An Incr keeps the deadline; a Set drops it.
        client.set("later", "41").unwrap();
        assert!(client
            .expire("later", Expiry::At(at), ExpireWhen::Always)
            .unwrap());
        assert_eq!(client.incr("later", 1).unwrap(), 42);
        assert_eq!(client.ttl("later", true).unwrap() as u64, at);
        drop(server);
    }
}

#[test]
fn expire_obeys_its_conditions_and_removes_a_key_whose_time_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    let expire = |key, ms, when| client.expire(key, Expiry::In(ms), when).unwrap();
    client.set("k", "v").unwrap();
    assert!(!expire("missing", 1_000, ExpireWhen::Always));
    assert!(!expire("k", 1_000, ExpireWhen::HasDeadline));
    assert!(
        !expire("k", 1_000, ExpireWhen::Later),
        "none is later than any"
    );
    assert!(expire("k", 100_000, ExpireWhen::NoDeadline));
    assert!(!expire("k", 1_000, ExpireWhen::NoDeadline));
    assert!(!expire("k", 1_000, ExpireWhen::Later));
    assert!(expire("k", 200_000, ExpireWhen::Later));
    assert!(expire("k", 50_000, ExpireWhen::Earlier));
    let left = client.ttl("k", false).unwrap();
    assert!((40_000..=50_000).contains(&left), "{left}");
    let past = client.expire("k", Expiry::At(now_ms() - 1), ExpireWhen::Always);
    assert!(past.unwrap());
    assert_eq!(client.get("k").unwrap(), None);
    let keep = client
        .expire("k", Expiry::Keep, ExpireWhen::Always)
        .unwrap_err();
    assert_eq!(keep.code(), Some(ErrorCode::Malformed), "{keep}");
}

/// GetEx answers the value and changes the deadline in one write.
#[test]
fn get_ex_reads_and_changes_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    let get_ex = |expiry| client.get_ex("k", expiry).unwrap();
    assert_eq!(get_ex(Expiry::In(60_000)), None);
    client.set("k", "v").unwrap();
    assert_eq!(get_ex(Expiry::In(60_000)).as_deref(), Some(&b"v"[..]));
    assert!(client.ttl("k", false).unwrap() > 50_000);
    assert_eq!(get_ex(Expiry::Keep).as_deref(), Some(&b"v"[..]));
    assert!(client.ttl("k", false).unwrap() > 50_000);
    assert_eq!(get_ex(Expiry::Never).as_deref(), Some(&b"v"[..]));
    assert_eq!(client.ttl("k", false).unwrap(), -1);
    assert_eq!(get_ex(Expiry::At(1)).as_deref(), Some(&b"v"[..]));
    assert!(!client.exists("k").unwrap());
}

/// Expired keys are removed in the background: the bytes they held go.
#[test]
fn the_sweep_frees_what_expired_keys_held() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("kvstore.db"), engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        // One deadline for all, far enough off to count the bytes first.
        let at = now_ms() + 3_000;
        for i in 0..2_500 {
            let key = format!("k{i:05}");
            client
                .set_expiring(key, "value", Condition::Always, Expiry::At(at))
                .unwrap();
        }
        client.set("stays", "1").unwrap();
        let bytes = |client: &BlockingClient| {
            let f = figures(client);
            (f["keys"], f["key_bytes"], f["value_bytes"])
        };
        assert_eq!(bytes(&client), (2_501, 2_500 * 6 + 5, 2_500 * 5 + 1));
        assert!(now_ms() < at, "the keys expired before they were counted");
        within_10s(|| bytes(&client) == (1, 5, 1));
        drop(server);
    }
}
