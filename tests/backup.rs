//! Backup and restore against the real binaries over loopback: a backup made
//! while writers run is one instant's state; a restore brings back exactly
//! what was backed up and survives a restart; damaged backups are refused;
//! backups into the server's directory never escape it or replace a file;
//! a running server with an empty store restores one from that directory.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{cli, cli_ok, Server};
use kvstore_client::{BlockingClient, Client, ErrorCode, ScanQuery};

/// Every pair the server holds, in key order.
fn everything(client: &BlockingClient) -> BTreeMap<Bytes, Bytes> {
    client
        .scan(ScanQuery::prefix(""))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A file's permission bits: backups and data files are the owner's only.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn figure(client: &BlockingClient, name: &str) -> i64 {
    let figures = client.stats().unwrap();
    figures
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no figure {name}"))
        .1
}

/// The flags that choose each engine.
const MEMORY: &[&str] = &[];
const DISK: &[&str] = &["--engine", "disk"];

/// Runs each test named against both engines, in modules `memory` and
/// `disk`: the test takes the engine's flags.
macro_rules! on_both_engines {
    ($($test:ident),*) => {
        mod memory {
            $(#[test] fn $test() { super::$test(super::MEMORY) })*
        }
        mod disk {
            $(#[test] fn $test() { super::$test(super::DISK) })*
        }
    };
}

on_both_engines!(
    a_backup_made_while_writers_run_is_the_state_at_one_instant,
    a_restore_brings_back_exactly_the_backup_and_keeps_it_across_restarts,
    a_damaged_or_cut_backup_is_refused_and_restores_nothing,
    a_running_server_restores_a_backup_from_its_directory
);

/// The other engine's flags.
fn other(engine: &[&str]) -> &'static [&'static str] {
    if engine == DISK {
        MEMORY
    } else {
        DISK
    }
}

/// `args` after `engine`'s flags.
fn with<'a>(engine: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    engine.iter().chain(args).copied().collect()
}

/// A fresh server started from `backup`; it refuses to start if the file
/// is damaged.
fn restored(dir: &Path, backup: &Path) -> (Server, BlockingClient) {
    restored_into(dir, "restored.db", backup, MEMORY)
}

/// A fresh server of `engine` at `dir/name` started from `backup`.
fn restored_into(
    dir: &Path,
    name: &str,
    backup: &Path,
    engine: &[&str],
) -> (Server, BlockingClient) {
    let data = dir.join(name);
    let server = Server::start(
        &data,
        &with(engine, &["--restore", backup.to_str().unwrap()]),
    );
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    (server, client)
}

/// A server holding 30,000 pairs of 200-byte values (about 7 MiB: the copy
/// takes several 1 MiB chunks) plus a few binary keys.
fn loaded(dir: &Path, extra: &[&str]) -> (Server, BlockingClient) {
    let server = Server::start(&dir.join("kvstore.db"), extra);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    // BulkSets of 100 (22 KB): they fit a server with small frames too.
    for batch in 0..300 {
        let items: Vec<(String, String)> = (batch * 100..(batch + 1) * 100)
            .map(|i| (format!("static:{i:05}"), format!("{i:0>200}")))
            .collect();
        client.bulk_set(items).unwrap();
    }
    client
        .bulk_set([
            (&b"\x00\xff binary"[..], &b"\x00\x01"[..]),
            (b"", b"empty key"),
        ])
        .unwrap();
    (server, client)
}

/// Two writers run while a backup streams slowly:
/// - one sets `seq:{i % 300}` to `i` for i = 0, 1, 2, ..., one write at a
///   time: at any instant its keys hold a prefix of that sequence;
/// - one alternately sets all of `pair:00..49` to `c` (one BulkSet) and
///   deletes them all (one DeleteMany): at any instant all are equal or all
///   are gone.
///
/// The restored backup must be such an instant, and hold the static keys.
fn a_backup_made_while_writers_run_is_the_state_at_one_instant(engine: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = loaded(dir.path(), engine);
    let addr = server.addr.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [0, 1]
        .into_iter()
        .map(|which| {
            let (stop, addr) = (stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let client = BlockingClient::connect(addr).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 200_000 {
                    if which == 0 {
                        client
                            .set(format!("seq:{:03}", i % 300), i.to_string())
                            .unwrap();
                    } else if i.is_multiple_of(2) {
                        client
                            .bulk_set((0..50).map(|p| (format!("pair:{p:02}"), i.to_string())))
                            .unwrap();
                    } else {
                        client
                            .delete_many((0..50).map(|p| format!("pair:{p:02}")))
                            .unwrap();
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    // Let both writers get going, then copy slowly: writes land between
    // the chunks, on keys copied already and on keys not yet copied.
    std::thread::sleep(Duration::from_millis(200));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backup_client = Client::connect(addr).unwrap();
    let (file, summary) = runtime.block_on(async {
        let mut stream = backup_client.backup_stream().await.unwrap();
        let mut file = Vec::new();
        while let Some(chunk) = stream.next_chunk().await.unwrap() {
            assert!(chunk.len() <= 1 << 20);
            file.extend_from_slice(&chunk);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        (file, stream.summary().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        written.iter().all(|&n| n > 10),
        "the writers ran: {written:?}"
    );
    assert_eq!(file.len() as u64, summary.bytes);
    // The memory engine's copy is fuzzy, made exact by the writes teed
    // during it; the disk engine's is one instant's and has none.
    assert_eq!(
        summary.ops > 0,
        engine == MEMORY,
        "writes landed during the copy, so the test checks the tee: {summary:?}"
    );
    assert_eq!(figure(&client, "backups_total{outcome=\"ok\"}"), 1);
    assert_eq!(figure(&client, "backups_running"), 0);

    let path = dir.path().join("under-load.backup");
    std::fs::write(&path, &file).unwrap();
    let (_restored, restored) = restored_into(dir.path(), "restored.db", &path, engine);
    let got = everything(&restored);
    // The other engine loads the same state (from a memory engine's
    // backup, with its teed writes applied after the pairs).
    let (_other, other) = restored_into(dir.path(), "other.db", &path, other(engine));
    assert!(
        everything(&other) == got,
        "the other engine restored another state"
    );

    // The static keys, untouched by the writers, are all there.
    let statics = got.keys().filter(|k| k.starts_with(b"static:")).count();
    assert_eq!(statics, 30_000);
    assert_eq!(
        got.get(&b"\x00\xff binary"[..]).map(|v| &v[..]),
        Some(&b"\x00\x01"[..])
    );

    // The sequence writer: a prefix 0..=n of its writes, for one n.
    let seq: BTreeMap<u64, u64> = got
        .iter()
        .filter_map(|(k, v)| {
            let k = std::str::from_utf8(k.strip_prefix(b"seq:")?).ok()?;
            Some((
                k.parse().unwrap(),
                std::str::from_utf8(v).unwrap().parse().unwrap(),
            ))
        })
        .collect();
    let n = *seq
        .values()
        .max()
        .expect("the sequence writer wrote before the cut");
    for key in 0..300u64 {
        let want = (key <= n).then(|| n - (n - key) % 300);
        assert_eq!(seq.get(&key).copied(), want, "seq:{key:03} at cut n = {n}");
    }

    // The pair writer: all 50 equal, or none.
    let pairs: Vec<&Bytes> = got
        .iter()
        .filter(|(k, _)| k.starts_with(b"pair:"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        pairs.is_empty() || (pairs.len() == 50 && pairs.iter().all(|v| *v == pairs[0])),
        "a BulkSet or DeleteMany seen in part: {pairs:?}"
    );
}

/// Into a server of the same engine, and of the other one.
fn a_restore_brings_back_exactly_the_backup_and_keeps_it_across_restarts(engine: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = loaded(dir.path(), engine);
    client.delete("static:00007").unwrap();
    client.set("big", vec![7u8; 3 << 20]).unwrap();
    let before = everything(&client);
    let path = dir.path().join("nightly.backup");
    let said = cli_ok(server.addr, &["backup", path.to_str().unwrap()]);
    assert!(
        said.starts_with(&format!("backup {}: 30002 keys", path.display())),
        "{said}"
    );
    assert!(!dir.path().join("nightly.backup.tmp").exists());
    assert_eq!(mode(&path), 0o600);

    let (_other, other) = restored_into(dir.path(), "other.db", &path, other(engine));
    assert_eq!(everything(&other), before, "restored into the other engine");
    let (restored_server, restored) = restored_into(dir.path(), "restored.db", &path, engine);
    assert_eq!(everything(&restored), before);
    if engine == MEMORY {
        assert_eq!(mode(&restored_server.data), 0o600, "the restored snapshot");
    }
    // The restored data is the new server's own: a restart without
    // --restore starts from it.
    restored.set("after-restore", "yes").unwrap();
    let data = restored_server.data.clone();
    restored_server.terminate();
    let again = Server::start(&data, engine);
    let again_client = BlockingClient::connect(again.addr.to_string()).unwrap();
    let mut want = before.clone();
    want.insert(Bytes::from("after-restore"), Bytes::from("yes"));
    assert_eq!(everything(&again_client), want);
    drop(again_client);
    again.terminate();

    // --restore never overwrites data.
    let refused =
        Server::refuse_start_with(&data, &with(engine, &["--restore", path.to_str().unwrap()]));
    assert!(refused.contains("already holds data"), "{refused}");

    // JSON output and standard output.
    let json: serde_json::Value = serde_json::from_str(&cli_ok(
        server.addr,
        &["--output", "json", "backup", path.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(json["keys"], 30002);
    let piped = cli(server.addr, &["backup", "-"]);
    assert!(piped.status.success());
    assert_eq!(
        piped.stdout,
        std::fs::read(&path).unwrap(),
        "no writes between: same bytes"
    );
}

fn a_damaged_or_cut_backup_is_refused_and_restores_nothing(engine: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = loaded(dir.path(), engine);
    let mut file = Vec::new();
    let summary = client.backup(&mut file).unwrap();
    assert_eq!(summary.keys, 30_002);
    drop(server);

    let mut flipped = file.clone();
    flipped[file.len() / 2] ^= 0x10;
    let cut = &file[..file.len() - 10];
    for (name, bytes) in [("flipped", &flipped[..]), ("cut", cut), ("empty", &[][..])] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let data = dir.path().join(format!("{name}.db"));
        let restore = with(engine, &["--restore", path.to_str().unwrap()]);
        let stderr = Server::refuse_start_with(&data, &restore);
        assert!(
            stderr.contains(&format!("{} is damaged at offset", path.display())),
            "{name}: {stderr}"
        );
        // Nothing was restored: the data path starts empty, and holds
        // nothing of the attempt.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("restoring") || n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        assert_eq!(figure(&client, "keys"), 0, "{name}");
    }
    let missing = dir.path().join("no-such-backup");
    let stderr = Server::refuse_start_with(
        &dir.path().join("missing.db"),
        &with(engine, &["--restore", missing.to_str().unwrap()]),
    );
    assert!(stderr.contains("no-such-backup"), "{stderr}");
}

#[test]
fn the_server_writes_backups_only_into_its_directory_under_new_names() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let (server, client) = loaded(dir.path(), &["--backup-dir", backups.to_str().unwrap()]);
    let summary = client.backup_on_server("nightly-1").unwrap();
    assert_eq!(summary.keys, 30_002);
    let file = backups.join("nightly-1");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), summary.bytes);
    assert_eq!(mode(&file), 0o600);

    let said = cli_ok(server.addr, &["backup", "--server", "nightly-2"]);
    assert!(said.starts_with("backup nightly-2: 30002 keys"), "{said}");

    for (name, why) in [
        ("nightly-1", "exists already"),
        ("../escape", "is not a backup name"),
        ("/tmp/x", "is not a backup name"),
        (".hidden", "is not a backup name"),
    ] {
        let err = client.backup_on_server(name).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BackupFailed), "{name}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
    let failed = cli(server.addr, &["backup", "--server", "nightly-1"]);
    assert_eq!(failed.status.code(), Some(4));
    let mut names: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["nightly-1", "nightly-2"]);
    assert!(!dir.path().join("escape").exists());

    let (_restored, restored) = restored(dir.path(), &file);
    assert_eq!(everything(&restored), everything(&client));

    // Without --backup-dir the server writes nowhere.
    let plain = Server::start(&dir.path().join("plain.db"), &[]);
    let plain_client = BlockingClient::connect(plain.addr.to_string()).unwrap();
    let err = plain_client.backup_on_server("x").unwrap_err();
    assert!(err.to_string().contains("--backup-dir"), "{err}");
}

#[test]
fn a_server_with_small_frames_streams_its_backup_in_chunks_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--max-frame",
        "65536",
        "--max-key",
        "1024",
        "--max-value",
        "32768",
    ];
    let (_server, client) = loaded(dir.path(), &small);
    let mut file = Vec::new();
    let summary = client.backup(&mut file).unwrap();
    assert_eq!((summary.keys, file.len() as u64), (30_002, summary.bytes));
    let path = dir.path().join("small.backup");
    std::fs::write(&path, &file).unwrap();
    let (_restored, restored) = restored(dir.path(), &path);
    assert_eq!(everything(&restored), everything(&client));
}

#[test]
fn an_abandoned_stream_frees_its_place_and_at_most_two_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = loaded(dir.path(), &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_client = Client::connect(server.addr.to_string()).unwrap();
    runtime.block_on(async {
        let mut first = async_client.backup_stream().await.unwrap();
        let mut second = async_client.backup_stream().await.unwrap();
        assert!(first.next_chunk().await.unwrap().is_some());
        assert!(second.next_chunk().await.unwrap().is_some());
        let mut third = async_client.backup_stream().await.unwrap();
        let err = third.next_chunk().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BackupFailed));
        assert!(err.to_string().contains("running already"), "{err}");
        drop((first, second));
        // Aborted connection tasks are dropped, closing their sockets, when
        // the runtime runs them next.
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    // The server ends a backup's tee when its connection closes.
    let mut running = figure(&client, "backups_running");
    for _ in 0..100 {
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        running = figure(&client, "backups_running");
    }
    assert_eq!(running, 0);
    // BackupNext without a backup on the connection is an error.
    let mut raw = server.client();
    let reply = raw.call(kvstore_client::Command::BackupNext);
    assert!(
        matches!(reply, kvstore_client::Reply::Error { code, .. } if code == ErrorCode::BackupFailed as u32),
        "{reply:?}"
    );
    assert!(client.backup(&mut Vec::new()).is_ok());
}

/// `kvstore restore --server NAME` into a running server of `engine`: a
/// damaged file, a bad name or a missing file writes nothing; a good one
/// brings back exactly the backup, durably; a store that is not empty is
/// refused.
fn a_running_server_restores_a_backup_from_its_directory(engine: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (source, client) = loaded(dir.path(), other(engine));
    let before = everything(&client);
    let mut file = Vec::new();
    client.backup(&mut file).unwrap();
    drop(source);
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("nightly"), &file).unwrap();
    let mut flipped = file.clone();
    flipped[file.len() / 2] ^= 0x10;
    std::fs::write(backups.join("flipped"), &flipped).unwrap();

    let data = dir.path().join("target.db");
    let args = with(engine, &["--backup-dir", backups.to_str().unwrap()]);
    let server = Server::start(&data, &args);
    let target = BlockingClient::connect(server.addr.to_string()).unwrap();
    let refused = |name: &str, why: &str| {
        let out = cli(server.addr, &["restore", "--server", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{name}: {stderr}"
        );
    };
    refused("flipped", "is damaged at offset");
    refused("absent", "no backup named absent");
    refused("../nightly", "is not a backup name");
    assert_eq!(figure(&target, "keys"), 0, "nothing written");

    let said = cli_ok(server.addr, &["restore", "--server", "nightly"]);
    assert!(said.starts_with("restore nightly: 30002 keys"), "{said}");
    assert_eq!(everything(&target), before);
    let err = target.restore_on_server("nightly").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RestoreFailed), "{err}");
    assert!(err.to_string().contains("holds 30002 keys"), "{err}");

    // Written through the log: a kill -9 keeps it.
    drop(target);
    server.kill9();
    let again = Server::start(&data, &args);
    let client = BlockingClient::connect(again.addr.to_string()).unwrap();
    assert_eq!(everything(&client), before);

    // Without --backup-dir there is nothing to restore from.
    let bare = Server::start(&dir.path().join("bare.db"), engine);
    let out = cli(bare.addr, &["restore", "--server", "nightly"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backup-dir"));
}
