//! Watches (docs/watch.md) on the real server over TCP: what each write
//! makes a watcher see, 1,000 watchers that get every change once and in
//! order across `kill -9` and a restart (resuming by revision), a history
//! too short for a revision (`Compacted`), and a watcher that stops
//! reading, cancelled (`SlowWatcher`) while the writes go on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{runtime, take, watch_all, Server};
use kvstore_client::{
    Client, Command, CompareOp, Condition, Error, ErrorCode, Event, EventKind, ExpireWhen, Expiry,
    Reply, Target, Transaction,
};

const ENGINES: [&[&str]; 2] = [&[], &["--engine", "disk"]];

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> (Bytes, EventKind) {
    let value = b(value);
    (
        b(key),
        EventKind::Put {
            value,
            deadline: None,
        },
    )
}

fn without_revisions(events: &[Event]) -> Vec<(Bytes, EventKind)> {
    events
        .iter()
        .map(|e| (e.key.clone(), e.kind.clone()))
        .collect()
}

#[test]
fn each_write_shows_as_the_changes_it_made() {
    let rt = runtime();
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("kvstore.db"), engine);
        rt.block_on(async {
            let client = Client::connect(server.addr.to_string()).unwrap();
            let mut watch = client.watch("w/", 0).await.unwrap();
            client.set("w/a", "1").await.unwrap();
            client.set("elsewhere", "1").await.unwrap();
            assert!(!client.delete("w/missing").await.unwrap());
            client.bulk_set([("w/b", "2"), ("w/c", "3")]).await.unwrap();
            client.delete("w/b").await.unwrap();
            assert_eq!(client.delete_many(["w/a", "w/nothing"]).await.unwrap(), 1);
            client.incr("w/n", 5).await.unwrap();
            let expiry = Expiry::At(4_000_000_000_000);
            client
                .expire("w/n", expiry, ExpireWhen::Always)
                .await
                .unwrap();
            client.persist("w/n").await.unwrap();
            client.rename("w/n", "w/m", false).await.unwrap();
            let txn = Transaction::new()
                .when("w/m", Target::Exists(true), CompareOp::Equal)
                .then(Command::Set {
                    key: b("w/t"),
                    value: b("x"),
                })
                .then(Command::Delete { key: b("w/c") });
            assert!(client.txn(txn).await.unwrap().succeeded);
            let expiry = Expiry::In(1);
            client
                .set_expiring("w/e", "gone", Condition::Always, expiry)
                .await
                .unwrap();
            client.flush().await.unwrap();

            let events = take(&mut watch, 14).await;
            let expected = [
                put("w/a", "1"),
                put("w/b", "2"),
                put("w/c", "3"),
                (b("w/b"), EventKind::Delete),
                (b("w/a"), EventKind::Delete),
                put("w/n", "5"),
                (b("w/n"), EventKind::Deadline(Some(4_000_000_000_000))),
                (b("w/n"), EventKind::Deadline(None)),
                (b("w/n"), EventKind::Delete),
                put("w/m", "5"),
                put("w/t", "x"),
                (b("w/c"), EventKind::Delete),
            ];
            let got = without_revisions(&events);
            assert_eq!(got[..12], expected, "{engine:?}");
            // The key with a deadline: written, then gone by Flush or by the
            // sweep first, whichever came first.
            assert!(matches!(
                &got[12].1,
                EventKind::Put {
                    deadline: Some(_),
                    ..
                }
            ));
            assert!(matches!(got[13].1, EventKind::Clear | EventKind::Expired));
            // One revision per write, growing; a write's changes share one.
            let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
            assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
            assert_eq!(revisions[1], revisions[2], "one BulkSet, one revision");
            assert_eq!(
                revisions[10], revisions[11],
                "one transaction, one revision"
            );
        });
    }
}

/// Writes `count` changes under `w/` (and one elsewhere each), one at a
/// time; the changes a watcher of `w/` must see, in order.
async fn write(client: &Client, round: &str, count: usize) -> Vec<(Bytes, EventKind)> {
    let mut expected = Vec::new();
    for i in 0..count {
        let key = format!("w/{}", i % 17);
        let value = format!("{round}{i}");
        if i % 5 == 4 {
            if client.delete(&key).await.unwrap() {
                expected.push((b(&key), EventKind::Delete));
            }
        } else {
            client.set(&key, &value).await.unwrap();
            expected.push(put(&key, &value));
        }
        client.set(format!("x/{i}"), "not watched").await.unwrap();
    }
    expected
}

#[test]
fn a_thousand_watchers_get_every_change_once_in_order_across_kill_9() {
    const WATCHERS: usize = 1_000;
    let rt = runtime();
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kvstore.db");
        let server = Server::start(&data, engine);
        let addr = server.addr.to_string();
        // Enough attempts to outlast the restart.
        let client = Client::builder()
            .addr(&addr)
            .max_attempts(100)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
            .unwrap();
        let (watchers, mut expected, seen) = rt.block_on(async {
            let mut watchers = Vec::new();
            for _ in 0..WATCHERS {
                watchers.push(client.watch("w/", 0).await.unwrap());
            }
            let expected = write(&client, "a", 100).await;
            let read = watch_all(watchers, expected.len()).await;
            let (watchers, seen): (Vec<_>, Vec<_>) = read.into_iter().unzip();
            // Acknowledged while nobody reads the watches; then the server
            // dies before they do.
            let mut expected = expected;
            expected.extend(write(&client, "b", 100).await);
            (watchers, expected, seen)
        });
        server.kill9();
        let server = Server::start_on(&addr, &data, engine);
        rt.block_on(async {
            expected.extend(write(&client, "c", 100).await);
            // What was read before and after: each watch went on by itself
            // from the last revision it had.
            let after = expected.len() - seen[0].len();
            let read = watch_all(watchers, after).await;
            for (mut before, (_, after)) in seen.into_iter().zip(read) {
                before.extend(after);
                assert_eq!(without_revisions(&before), expected, "{engine:?}");
                let revisions: Vec<u64> = before.iter().map(|e| e.revision).collect();
                assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{engine:?}");
            }
        });
        drop(server);
    }
}

#[test]
fn a_revision_older_than_the_history_is_compacted() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--watch-history-mb", "1"]);
    rt.block_on(async {
        let client = Client::connect(server.addr.to_string()).unwrap();
        let value = "v".repeat(64 << 10);
        for i in 0..40 {
            client.set(format!("k{i}"), &value).await.unwrap();
        }
        let Err(Error::Server { code, message }) = client.watch("", 1).await else {
            panic!("revision 1 is older than 1 MiB of history");
        };
        assert_eq!(code, ErrorCode::Compacted as u32, "{message}");
        let oldest: u64 = (message.split_whitespace())
            .find_map(|word| word.trim_end_matches(':').parse().ok())
            .expect("the message names the oldest revision");
        assert!(oldest > 1, "{message}");
        // From the oldest on, the history has every write (one key each).
        let mut watch = client.watch("", oldest).await.unwrap();
        let newest = client
            .get_with_version("k39")
            .await
            .unwrap()
            .unwrap()
            .modified;
        let events = take(&mut watch, (newest - oldest + 1) as usize).await;
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, (oldest..=newest).collect::<Vec<_>>());
    });
}

#[test]
fn a_watcher_that_stops_reading_is_cancelled_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--watch-lag", "8", "--write-timeout-ms", "0"];
    let server = Server::start(&dir.path().join("kvstore.db"), &args);
    let mut stalled = server.client();
    stalled.send(Command::Watch {
        prefix: Bytes::new(),
        from_revision: 0,
    });
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(server.addr.to_string()).unwrap();
        // Far more than the socket buffers hold: the watcher falls behind.
        let value = "v".repeat(64 << 10);
        for i in 0..600 {
            client.set(format!("k{i}"), &value).await.unwrap();
        }
    });
    // It reads at last: what fit in the buffers, then the reason.
    let mut events = 0;
    let reason = loop {
        match stalled.recv().expect("the watch's replies").reply {
            Reply::Events { events: more, .. } => events += more.len(),
            Reply::Error { code, message } => break (code, message),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(reason.0, ErrorCode::SlowWatcher as u32, "{}", reason.1);
    assert!(
        events < 600,
        "{events} changes arrived: it never fell behind"
    );
}
