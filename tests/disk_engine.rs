//! `--engine disk` on the real server over TCP: every command works, the
//! data stays across clean restarts and `kill -9` (with log checkpoints
//! along the way), and the engine is recorded with the data. The kill -9
//! harness runs against it too (tests/crashtest.rs).

mod common;

use bytes::Bytes;
use common::{cmd, Server};
use kvstore_client::{Command, Reply};

const DISK: &[&str] = &["--engine", "disk", "--snapshot-after-bytes", "8192"];

fn value(v: &[u8]) -> Reply {
    Reply::Value(Some(Bytes::copy_from_slice(v)))
}

/// Every key `prefix` holds, paging through `Keys`.
fn all_keys(c: &mut common::Client, prefix: &str) -> Vec<Bytes> {
    let mut keys = Vec::new();
    for _ in 0..1000 {
        let after = keys.last().map(|k: &Bytes| k.to_vec());
        match c.call(cmd::keys(prefix, after.as_deref(), 100)) {
            Reply::Keys { keys: page, more } => {
                keys.extend(page);
                if !more {
                    return keys;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("more than 1000 pages");
}

#[test]
fn the_disk_engine_answers_and_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, DISK);
    let mut c = server.client();
    // Enough log for several checkpoints (one per 8 KiB of log).
    for batch in 0..20 {
        let items: Vec<_> = (0..50)
            .map(|i| (format!("k{:04}", batch * 50 + i), format!("v{batch}")))
            .collect();
        assert_eq!(c.call(cmd::bulk_set(items)), Reply::Ok);
    }
    assert_eq!(c.call(cmd::delete("k0000")), Reply::Bool(true));
    assert_eq!(c.call(cmd::set("", "the empty key")), Reply::Ok);
    let incr = Command::Incr {
        key: Bytes::from_static(b"n"),
        by: 5,
    };
    assert_eq!(c.call(incr.clone()), Reply::Int(5));
    let scan = Command::Scan {
        prefix: Bytes::from_static(b"k09"),
        start_after: None,
        limit: 3,
        reverse: true,
    };
    let Reply::Pairs { pairs, more } = c.call(scan.clone()) else {
        panic!("a Scan answers pairs");
    };
    assert!(more);
    let newest: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(newest, [&b"k0999"[..], b"k0998", b"k0997"]);
    server.terminate();

    let server = Server::start(&data, DISK);
    let mut c = server.client();
    assert_eq!(all_keys(&mut c, "k").len(), 999);
    assert_eq!(c.call(cmd::get("")), value(b"the empty key"));
    assert_eq!(c.call(cmd::get("k0000")), Reply::Value(None));
    assert_eq!(c.call(cmd::get("k0999")), value(b"v19"));
    assert_eq!(c.call(incr.clone()), Reply::Int(10));
    assert_eq!(c.call(cmd::set("after", "restart")), Reply::Ok);
    server.kill9();

    let server = Server::start(&data, DISK);
    let mut c = server.client();
    assert_eq!(c.call(cmd::get("after")), value(b"restart"));
    assert_eq!(c.call(incr), Reply::Int(15));
    assert_eq!(all_keys(&mut c, "").len(), 999 + 3);
}

#[test]
fn the_engine_is_recorded_and_the_other_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let memory = dir.path().join("memory.db");
    let server = Server::start(&memory, &[]);
    assert_eq!(server.client().call(cmd::set("k", "v")), Reply::Ok);
    server.terminate();
    let refused = Server::refuse_start_with(&memory, &["--engine", "disk"]);
    assert!(
        refused.contains("belongs to the memory engine: start with --engine memory"),
        "{refused}"
    );

    let disk = dir.path().join("disk.db");
    let server = Server::start(&disk, &["--engine", "disk"]);
    assert_eq!(server.client().call(cmd::set("k", "v")), Reply::Ok);
    server.kill9();
    let refused = Server::refuse_start(&disk);
    assert!(
        refused.contains("belongs to the disk engine: start with --engine disk"),
        "{refused}"
    );
    // Neither refusal touched the data.
    let server = Server::start(&disk, &["--engine", "disk"]);
    assert_eq!(server.client().call(cmd::get("k")), value(b"v"));
}

#[test]
fn a_key_longer_than_the_disk_engine_stores_is_refused_at_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), DISK);
    let mut c = server.client();
    let longest = vec![b'k'; 65_534];
    assert_eq!(c.call(cmd::set(&longest, "v")), Reply::Ok);
    match c.call(cmd::set(vec![b'k'; 65_535], "v")) {
        Reply::Error { message, .. } => assert!(
            message.contains("key of 65535 bytes exceeds the limit of 65534 bytes"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.call(cmd::get(&longest)), value(b"v"));
}
