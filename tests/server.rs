//! End to end: the real `kvstore-server` binary over real TCP on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{cmd, frame, Client, Server};
use kvstore_client::{codec, Command, ErrorCode, Reply, Request};

fn value(v: &[u8]) -> Reply {
    Reply::Value(Some(Bytes::copy_from_slice(v)))
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => ErrorCode::from_code(*code),
        _ => None,
    }
}

#[test]
fn every_command_does_what_the_protocol_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let mut c = server.client();

    assert_eq!(c.call(cmd::get("a")), Reply::Value(None));
    assert_eq!(c.call(cmd::exists("a")), Reply::Bool(false));
    assert_eq!(c.call(cmd::set("a", "1")), Reply::Ok);
    assert_eq!(c.call(cmd::get("a")), value(b"1"));
    assert_eq!(c.call(cmd::exists("a")), Reply::Bool(true));
    assert_eq!(c.call(cmd::set("a", "2")), Reply::Ok);
    assert_eq!(c.call(cmd::get("a")), value(b"2"));
    assert_eq!(c.call(cmd::delete("a")), Reply::Bool(true));
    assert_eq!(c.call(cmd::delete("a")), Reply::Bool(false));
    assert_eq!(c.call(cmd::get("a")), Reply::Value(None));

    // Binary keys and values, including empty ones.
    assert_eq!(c.call(cmd::set([0u8, 255, 10], [])), Reply::Ok);
    assert_eq!(c.call(cmd::get([0u8, 255, 10])), value(b""));

    assert_eq!(
        c.call(cmd::bulk_set([
            ("user:1", "ann"),
            ("user:2", "bob"),
            ("user:3", "cy"),
            ("other", "x")
        ])),
        Reply::Ok
    );
    assert_eq!(c.call(cmd::get("user:2")), value(b"bob"));

    // Keys: prefix, ascending, paged with start_after.
    let page = |c: &mut Client, after: Option<&[u8]>, limit| match c
        .call(cmd::keys("user:", after, limit))
    {
        Reply::Keys { keys, more } => (keys, more),
        other => panic!("not a keys page: {other:?}"),
    };
    let (keys, more) = page(&mut c, None, 0);
    assert_eq!(keys, vec!["user:1", "user:2", "user:3"]);
    assert!(!more);
    let (keys, more) = page(&mut c, None, 2);
    assert_eq!(keys, vec!["user:1", "user:2"]);
    assert!(more);
    let (keys, more) = page(&mut c, Some(b"user:2"), 2);
    assert_eq!(keys, vec!["user:3"]);
    assert!(!more);
    match c.call(cmd::keys("", None, 0)) {
        Reply::Keys { keys, more } => {
            assert_eq!(keys.len(), 5);
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending order");
            assert!(!more);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_are_refused_with_their_codes_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &[
            "--max-key",
            "8",
            "--max-value",
            "16",
            "--max-bulk-items",
            "2",
        ],
    );
    let mut c = server.client();
    assert_eq!(
        error_code(&c.call(cmd::set("123456789", "v"))),
        Some(ErrorCode::KeyTooLarge)
    );
    assert_eq!(
        error_code(&c.call(cmd::get("123456789"))),
        Some(ErrorCode::KeyTooLarge)
    );
    assert_eq!(
        error_code(&c.call(cmd::set("k", [7u8; 17]))),
        Some(ErrorCode::ValueTooLarge)
    );
    assert_eq!(
        error_code(&c.call(cmd::bulk_set([("a", "1"), ("b", "2"), ("c", "3")]))),
        Some(ErrorCode::TooManyItems)
    );
    // Nothing of the refused BulkSet was stored, and the connection still works.
    assert_eq!(c.call(cmd::exists("a")), Reply::Bool(false));
    assert_eq!(c.call(cmd::set("k", [7u8; 16])), Reply::Ok);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_reads_see_earlier_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let mut c = server.client();
    let mut exchange = Vec::new();
    for i in 0..200u64 {
        let key = format!("k{}", i % 7);
        exchange.push((cmd::set(&key, i.to_le_bytes()), Reply::Ok));
        exchange.push((cmd::get(&key), value(&i.to_le_bytes())));
    }
    pipeline(&mut c, exchange);
}

/// Sends every command in one write, then expects each reply, in order.
fn pipeline(c: &mut Client, exchange: Vec<(Command, Reply)>) {
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for (i, (command, reply)) in exchange.into_iter().enumerate() {
        let id = 1000 + i as u64;
        let body = codec::encode(&Request { id, command }).unwrap();
        burst.extend_from_slice(&frame(&body));
        expected.push((id, reply));
    }
    c.send_raw(&burst);
    for (id, reply) in expected {
        let response = c.recv().expect("response");
        assert_eq!((response.id, response.reply), (id, reply));
    }
}

/// A burst of writes with nothing between them (handed to the log together)
/// is logged and applied in request order: the last write to a key wins, and
/// increments count up one by one.
#[test]
fn a_pipelined_burst_of_writes_keeps_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let mut c = server.client();
    let exchange = (0..300u64)
        .map(|i| match i % 3 {
            0 => (
                Command::Incr {
                    key: "counter".into(),
                    by: 1,
                },
                Reply::Int((i / 3 + 1) as i64),
            ),
            _ => (cmd::set(format!("k{}", i % 5), i.to_string()), Reply::Ok),
        })
        .collect();
    pipeline(&mut c, exchange);
    for k in 0..5u64 {
        // The last i below 300 with i % 5 == k and i % 3 != 0.
        let last = (0..300u64)
            .rev()
            .find(|i| i % 5 == k && i % 3 != 0)
            .unwrap();
        assert_eq!(
            c.call(cmd::get(format!("k{k}"))),
            value(last.to_string().as_bytes()),
            "k{k}"
        );
    }
}

#[test]
fn a_hostile_frame_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--max-frame", "1048576", "--max-value", "900000"],
    );
    let mut good = server.client();
    assert_eq!(good.call(cmd::set("k", "v")), Reply::Ok);

    // A length prefix far over the limit (4 GiB - 1): refused before any body.
    let mut bad = server.client();
    bad.send_raw(&u32::MAX.to_be_bytes());
    let response = bad.recv().expect("an error frame");
    assert_eq!(error_code(&response.reply), Some(ErrorCode::FrameTooLarge));
    assert!(bad.is_closed());

    // A body that is not a request: the error names the id it could read.
    let mut bad = server.client();
    let mut body = 42u64.to_le_bytes().to_vec();
    body.extend_from_slice(&[0xff; 13]);
    bad.send_raw(&frame(&body));
    let response = bad.recv().expect("an error frame");
    assert_eq!(response.id, 42);
    assert_eq!(error_code(&response.reply), Some(ErrorCode::Malformed));
    assert!(bad.is_closed());

    // A byte string that claims 2^62 bytes in a tiny frame (tag 0: Set), and
    // a BulkSet (tag 3) that claims 2^31 items with nothing behind them.
    for (tag, claim) in [(0u32, 1u64 << 62), (3, 1 << 31)] {
        let mut bad = server.client();
        let mut body = 7u64.to_le_bytes().to_vec();
        body.extend_from_slice(&tag.to_le_bytes());
        body.extend_from_slice(&claim.to_le_bytes());
        bad.send_raw(&frame(&body));
        let response = bad.recv().expect("an error frame");
        assert_eq!(
            error_code(&response.reply),
            Some(ErrorCode::Malformed),
            "tag {tag}"
        );
        assert!(bad.is_closed());
    }

    // A truncated frame followed by the client hanging up.
    let mut bad = server.client();
    bad.send_raw(&[0, 0, 0, 100, 1, 2, 3]);
    drop(bad);

    // The first connection never noticed.
    assert_eq!(good.call(cmd::get("k")), value(b"v"));
    assert_eq!(server.client().call(cmd::get("k")), value(b"v"));
}

#[test]
fn connections_over_the_limit_get_an_error_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--max-connections", "2"]);
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.call(cmd::set("k", "v")), Reply::Ok);
    assert_eq!(b.call(cmd::get("k")), value(b"v"));
    let mut c = server.client();
    let response = c.recv().expect("an error frame");
    assert_eq!(
        error_code(&response.reply),
        Some(ErrorCode::TooManyConnections)
    );
    assert!(c.is_closed());
    drop(a);
    // Once a slot is free a new client gets in (bounded retries: the server
    // notices the close asynchronously).
    let mut served = false;
    for _ in 0..100 {
        let mut d = server.client();
        d.send(cmd::get("k"));
        if let Some(r) = d.recv() {
            if r.reply == value(b"v") {
                served = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(served, "a freed slot was never reused");
}

/// What one writer has had acknowledged, and the one write it has in flight.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Vec<u8>, Option<Vec<u8>>>,
    in_flight: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// Writes acknowledged in all.
    count: usize,
}

/// Writers on several connections; every write that was acknowledged must be
/// there after SIGKILL and a restart on the same data. A key may instead hold
/// the outcome of its writer's one write in flight at the kill (durable but
/// not yet acknowledged), and nothing else.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    // A small snapshot threshold so that snapshots and log rotation happen
    // while the writers run.
    let server = Server::start(&data, &["--snapshot-after-bytes", "16384"]);
    let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..8).map(|_| Arc::default()).collect();
    let writers: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(w, ledger)| {
            let ledger = ledger.clone();
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..2000u32 {
                    let key = format!("w{w}:k{}", i % 50).into_bytes();
                    let val = format!("w{w}:i{i}:{}", "x".repeat((i % 40) as usize)).into_bytes();
                    let (command, after) = match i % 10 {
                        9 => (cmd::delete(&key), None),
                        _ => (cmd::set(&key, &val), Some(val)),
                    };
                    ledger.lock().unwrap().in_flight = Some((key.clone(), after.clone()));
                    c.send(command);
                    let Some(response) = c.recv() else { return };
                    assert!(
                        matches!(response.reply, Reply::Ok | Reply::Bool(_)),
                        "{:?}",
                        response.reply
                    );
                    let mut ledger = ledger.lock().unwrap();
                    ledger.acked.insert(key, after);
                    ledger.in_flight = None;
                    ledger.count += 1;
                }
            })
        })
        .collect();
    // Kill while the writers are in full flow.
    let acked = || {
        ledgers
            .iter()
            .map(|l| l.lock().unwrap().count)
            .sum::<usize>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while acked() < 4000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.kill9();
    for w in writers {
        w.join().expect("writer");
    }
    assert!(
        acked() >= 4000,
        "too few writes were acknowledged before the kill"
    );
    assert!(
        data.exists(),
        "no snapshot was written while the writers ran"
    );

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let mut checked = 0;
    for ledger in &ledgers {
        let ledger = ledger.lock().unwrap();
        for (key, expected) in &ledger.acked {
            let found = match c.call(cmd::get(key)) {
                Reply::Value(v) => v.map(|b| b.to_vec()),
                other => panic!("{other:?}"),
            };
            let in_flight = ledger
                .in_flight
                .as_ref()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v);
            assert!(
                found == *expected || Some(&found) == in_flight,
                "key {:?}: acknowledged {:?}, found {:?}",
                String::from_utf8_lossy(key),
                expected
                    .as_ref()
                    .map(|e| String::from_utf8_lossy(e).into_owned()),
                found
                    .as_ref()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
            );
            checked += 1;
        }
    }
    assert!(checked >= 400);
}

/// `periodic` and `never` acknowledge before the fsync, but the data is in the
/// OS page cache, which `kill -9` leaves intact.
#[test]
fn every_sync_mode_keeps_acknowledged_writes_across_kill_9() {
    for mode in ["always", "periodic", "never"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kvstore.db");
        let server = Server::start(&data, &["--sync", mode]);
        let mut c = server.client();
        for i in 0..300u32 {
            assert_eq!(
                c.call(cmd::set(format!("k{i}"), format!("{mode}{i}"))),
                Reply::Ok
            );
        }
        assert_eq!(c.call(cmd::bulk_set([("b1", "x"), ("b2", "y")])), Reply::Ok);
        server.kill9();
        let server = Server::start(&data, &[]);
        let mut c = server.client();
        for i in 0..300u32 {
            assert_eq!(
                c.call(cmd::get(format!("k{i}"))),
                value(format!("{mode}{i}").as_bytes()),
                "{mode}"
            );
        }
        assert_eq!(c.call(cmd::get("b2")), value(b"y"), "{mode}");
    }
}

#[test]
fn a_clean_sigterm_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    for i in 0..500u32 {
        assert_eq!(
            c.call(cmd::set(format!("k{i}"), format!("v{i}"))),
            Reply::Ok
        );
    }
    assert_eq!(c.call(cmd::delete("k7")), Reply::Bool(true));
    assert_eq!(c.call(cmd::bulk_set([("b1", "x"), ("b2", "y")])), Reply::Ok);
    drop(c);
    server.terminate();
    assert!(data.exists(), "a clean shutdown writes a snapshot");

    let server = Server::start(&data, &[]);
    let mut c = server.client();
    for i in 0..500u32 {
        let expected = if i == 7 {
            Reply::Value(None)
        } else {
            value(format!("v{i}").as_bytes())
        };
        assert_eq!(c.call(cmd::get(format!("k{i}"))), expected);
    }
    assert_eq!(c.call(cmd::get("b2")), value(b"y"));
}

/// SIGTERM with a pipelined burst in flight: every request already read is
/// answered before the server exits, and everything acknowledged is there
/// after the restart.
#[test]
fn sigterm_finishes_the_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    let mut burst = Vec::new();
    for i in 0..2000u64 {
        let body = codec::encode(&Request {
            id: i,
            command: cmd::set(format!("k{i}"), "v"),
        })
        .unwrap();
        burst.extend_from_slice(&frame(&body));
    }
    c.send_raw(&burst);
    // Wait for the first reply so the burst is being served, then stop.
    let first = c.recv().expect("first reply");
    assert_eq!((first.id, first.reply), (0, Reply::Ok));
    // SAFETY: kill(2) on the pid of a child this test started.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let mut acked = vec![0u64];
    while let Some(response) = c.recv() {
        assert_eq!(response.id, acked.len() as u64, "replies in order");
        match response.reply {
            Reply::Ok => acked.push(response.id),
            Reply::Error { code, .. } => {
                assert_eq!(ErrorCode::from_code(code), Some(ErrorCode::ShuttingDown))
            }
            other => panic!("{other:?}"),
        }
    }
    server.terminate();
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    for id in acked {
        assert_eq!(
            c.call(cmd::get(format!("k{id}"))),
            value(b"v"),
            "k{id} was acknowledged"
        );
    }
}

/// The log does not grow without bound: past the threshold a snapshot is
/// written and the segments it covers are deleted.
#[test]
fn snapshots_keep_the_log_short() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &["--snapshot-after-bytes", "100000"]);
    let mut c = server.client();
    let value = vec![b'x'; 1000];
    for i in 0..2000u32 {
        assert_eq!(c.call(cmd::set(format!("k{}", i % 100), &value)), Reply::Ok);
    }
    // 2 MB written through a 100 kB threshold; snapshots run in the
    // background, so give the last one a bounded moment to finish.
    // Bytes of records: the newest segment also holds the zeros it wrote
    // ahead of them.
    let wal_dir = dir.path().join("kvstore.db-wal");
    let log_bytes = || -> u64 {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let bytes = std::fs::read(e.path()).unwrap();
                bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64
            })
            .sum()
    };
    for _ in 0..100 {
        if log_bytes() < 300_000 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(log_bytes() < 300_000, "the log holds {} bytes", log_bytes());
    assert!(data.exists());
    server.kill9();
    let server = Server::start(&data, &[]);
    assert_eq!(
        server.client().call(cmd::get("k99")),
        Reply::Value(Some(Bytes::from(value)))
    );
}

#[test]
fn a_second_server_on_the_same_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let _server = Server::start(&data, &[]);
    let stderr = Server::refuse_start(&data);
    assert!(stderr.contains("in use by another"), "{stderr}");
}

/// A log written to a file or a pipe is plain text: no colour codes.
#[test]
fn the_log_has_no_escape_codes_when_standard_error_is_not_a_terminal() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let mut child = Server::command("127.0.0.1:0", &data, &[])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let line = (stderr.lines().map_while(Result::ok).take(50))
        .find(|line| line.contains("kvstore-server listening"));
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("the server logged that it listens");
    assert!(!line.contains('\x1b'), "an escape code in {line:?}");
}
