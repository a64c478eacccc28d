//! Native transactions (docs/transactions.md) on the real server over TCP,
//! on both engines: compare-and-swap on a revision, create-if-absent, an
//! operation's error beside the others' writes, the limits, concurrent
//! compare-and-swap increments that lose no update, and a transaction's
//! writes after `kill -9` and a restart.

mod common;

use bytes::Bytes;
use common::Server;
use kvstore_client::{
    BlockingClient, Command, CompareOp, Error, ErrorCode, ExpireWhen, Expiry, Reply, Target,
    Transaction,
};

/// Both engines, with a transaction's limit (`--max-bulk-items`) low
/// enough to pass in a test.
const ENGINES: [&[&str]; 2] = [
    &["--max-bulk-items", "300"],
    &["--max-bulk-items", "300", "--engine", "disk"],
];

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get(key: &str) -> Command {
    Command::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

fn modified(client: &BlockingClient, key: &str) -> u64 {
    let found = client.get_with_version(key).unwrap();
    found.map_or(0, |v| v.modified)
}

/// Adds one to the counter at `key` by compare-and-swap on its revision,
/// trying again until no other write came between; how many tries.
fn cas_increment(client: &BlockingClient, key: &str) -> u32 {
    for tries in 1..=1_000 {
        let found = client.get_with_version(key).unwrap();
        let (n, seen) = found.map_or((0, 0), |v| {
            let n: u64 = std::str::from_utf8(&v.value).unwrap().parse().unwrap();
            (n, v.modified)
        });
        let txn = Transaction::new()
            .when(key, Target::ModRevision(seen), CompareOp::Equal)
            .then(set(key, &(n + 1).to_string()));
        if client.txn(txn).unwrap().succeeded {
            return tries;
        }
    }
    panic!("no increment of {key} in 1,000 tries");
}

#[test]
fn compare_and_swap_transactions_apply_all_or_nothing_and_survive_kill_9() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kvstore.db");
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();

        // Compare-and-swap on the revision read.
        client.set("config", "v1").unwrap();
        let seen = modified(&client, "config");
        let swap = |to: &str| {
            Transaction::new()
                .when("config", Target::ModRevision(seen), CompareOp::Equal)
                .then(set("config", to))
                .otherwise(get("config"))
        };
        let done = client.txn(swap("v2")).unwrap();
        assert_eq!((done.succeeded, done.replies), (true, vec![Reply::Ok]));
        let done = client.txn(swap("v3")).unwrap();
        let now = Reply::Value(Some(Bytes::from("v2")));
        assert_eq!(
            (done.succeeded, done.replies),
            (false, vec![now]),
            "{engine:?}"
        );

        // A failure branch that reads the key with its revision gives what
        // the next attempt needs; a key the transaction writes reads with
        // the transaction's own revision.
        let stale = Transaction::new()
            .when("config", Target::ModRevision(seen), CompareOp::Equal)
            .then(set("config", "v3"))
            .otherwise(Command::GetWithVersion {
                key: "config".into(),
            });
        let done = client.txn(stale).unwrap();
        let Reply::Versioned {
            modified: current, ..
        } = done.replies[0]
        else {
            panic!("{:?}", done.replies);
        };
        let retry = Transaction::new()
            .when("config", Target::ModRevision(current), CompareOp::Equal)
            .then(set("config", "v3"))
            .then(Command::GetWithVersion {
                key: "config".into(),
            });
        let done = client.txn(retry).unwrap();
        assert!(done.succeeded, "{engine:?}");
        let Reply::Versioned {
            modified: written, ..
        } = done.replies[1]
        else {
            panic!("{:?}", done.replies);
        };
        assert_eq!(written, modified(&client, "config"), "{engine:?}");

        // Create if absent: a missing key's creation revision is 0.
        let lock = || {
            Transaction::new()
                .when("lock", Target::CreateRevision(0), CompareOp::Equal)
                .then(set("lock", "me"))
        };
        assert!(client.txn(lock()).unwrap().succeeded);
        assert!(!client.txn(lock()).unwrap().succeeded);

        // An operation that fails writes nothing; the others still do.
        client.set("text", "x").unwrap();
        let txn = Transaction::new()
            .then(Command::Incr {
                key: "text".into(),
                by: 1,
            })
            .then(set("b", "1"))
            .then(Command::Delete { key: "lock".into() });
        let done = client.txn(txn).unwrap();
        let Reply::Error { code, .. } = &done.replies[0] else {
            panic!("{:?}", done.replies);
        };
        assert_eq!(*code, ErrorCode::NotAnInteger as u32);
        assert_eq!(done.replies[1..], [Reply::Ok, Reply::Bool(true)]);
        assert_eq!(client.get("text").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(client.get("b").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(client.get("lock").unwrap(), None);

        // Any write of data, Get and Exists; Flush refuses the whole.
        let txn = Transaction::new()
            .then(Command::Append {
                key: "s".into(),
                value: "ab".into(),
            })
            .then(Command::Exists { key: "s".into() })
            .then(Command::Expire {
                key: "s".into(),
                expiry: Expiry::In(3_600_000),
                when: ExpireWhen::Always,
            });
        let done = client.txn(txn).unwrap();
        let replies = [Reply::Int(2), Reply::Bool(true), Reply::Bool(true)];
        assert_eq!(done.replies, replies, "{engine:?}");
        assert!(client.ttl("s", false).unwrap() > 3_000_000);
        let Err(Error::Server { code, .. }) = client.txn(Transaction::new().then(Command::Flush))
        else {
            panic!("a Flush in a transaction was taken");
        };
        assert_eq!(code, ErrorCode::Malformed as u32);

        // Limits: at most --max-bulk-items compares.
        let mut many = Transaction::new();
        for i in 0..301 {
            many = many.when(format!("k{i}"), Target::Exists(true), CompareOp::Equal);
        }
        let Err(Error::Server { code, .. }) = client.txn(many) else {
            panic!("301 compares were taken");
        };
        assert_eq!(code, ErrorCode::TooManyItems as u32);

        // 8 clients, 25 increments each, by compare-and-swap: no update lost.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let addr = server.addr.to_string();
                scope.spawn(move || {
                    let client = BlockingClient::connect(addr).unwrap();
                    for _ in 0..25 {
                        cas_increment(&client, "counter");
                    }
                });
            }
        });
        assert_eq!(client.get("counter").unwrap().as_deref(), Some(&b"200"[..]));

        let before: Vec<_> = ["config", "b", "counter"]
            .iter()
            .map(|key| client.get_with_version(key).unwrap())
            .collect();
        server.kill9();
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        let after: Vec<_> = ["config", "b", "counter"]
            .iter()
            .map(|key| client.get_with_version(key).unwrap())
            .collect();
        assert_eq!(after, before, "{engine:?}");
        assert_eq!(client.get("lock").unwrap(), None);
    }
}
