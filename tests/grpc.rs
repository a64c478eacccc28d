//! The gRPC door (`--grpc-listen`) against the real binary over TCP: every
//! method through the generated tonic client, writes shared with the native
//! door, a streaming scan of 100,000 keys, limits as status codes, the token,
//! the connection limit, backup and restore, shutdown; and a client we did
//! not write (Python grpcio, stubs generated from proto/keyvalue.proto), in
//! the clear and over TLS, plus the README's Python example.

mod common;

use std::path::Path;
use std::process::Command as Process;

use common::{cmd, runtime, throwaway_certificate, Server};
use kvstore_client::Reply;
use kvstore_proto::v1::key_value_client::KeyValueClient;
use kvstore_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

fn grpc_server(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(&dir.join("kvstore.db"), &args);
    assert!(
        server.grpc.is_some(),
        "the server did not say where gRPC is"
    );
    server
}

async fn client(server: &Server) -> KeyValueClient<Channel> {
    KeyValueClient::connect(format!("http://{}", server.grpc.unwrap()))
        .await
        .expect("connect to the gRPC door")
}

fn pair(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> KeyValuePair {
    KeyValuePair {
        key: key.into().into(),
        value: value.into().into(),
    }
}

/// A scan of every pair under `prefix`, ascending.
fn whole_prefix(prefix: &str) -> ScanRequest {
    ScanRequest {
        prefix: prefix.as_bytes().to_vec().into(),
        start_after: None,
        limit: 0,
        reverse: false,
    }
}

/// The status of a call that must fail.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    match result {
        Ok(answer) => panic!("the call went through: {answer:?}"),
        Err(status) => status,
    }
}

/// The native error code a failed call carries in its trailer.
fn native_code(status: &Status) -> Option<u32> {
    status
        .metadata()
        .get("kvstore-error-code")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[test]
fn every_method_answers_and_both_doors_see_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    let mut native = server.client();
    runtime().block_on(async {
        let mut kv = client(&server).await;
        kv.put(PutRequest {
            key: "greeting".into(),
            value: "hello".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
        // Acknowledged through gRPC, visible through the native door.
        assert_eq!(
            native.call(cmd::get("greeting")),
            Reply::Value(Some("hello".into()))
        );
        // And the other way round.
        native.call(cmd::set("native", "door"));
        let got = kv
            .get(GetRequest {
                key: "native".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((got.found, &got.value[..]), (true, &b"door"[..]));
        let missing = kv
            .get(GetRequest {
                key: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((missing.found, missing.value.len()), (false, 0));
        // With the revisions, as the native door reads them.
        let versioned = kv
            .get(GetRequest {
                key: "native".into(),
                with_version: true,
            })
            .await
            .unwrap()
            .into_inner();
        let Reply::Versioned {
            modified, created, ..
        } = native.call(kvstore_client::Command::GetWithVersion {
            key: "native".into(),
        })
        else {
            panic!("not a Versioned reply");
        };
        assert!(modified > 0);
        assert_eq!(
            (versioned.mod_revision, versioned.create_revision),
            (modified, created)
        );
        assert_eq!((got.mod_revision, got.create_revision), (0, 0));

        kv.bulk_put(BulkPutRequest {
            pairs: (0..30)
                .map(|i| pair(format!("user:{i:02}"), format!("v{i}")))
                .collect(),
        })
        .await
        .unwrap();
        let exists = |key: &str| ExistsRequest {
            key: key.as_bytes().to_vec().into(),
        };
        assert!(
            kv.exists(exists("user:07"))
                .await
                .unwrap()
                .into_inner()
                .exists
        );
        assert!(
            !kv.exists(exists("user:99"))
                .await
                .unwrap()
                .into_inner()
                .exists
        );

        let delete = |key: &str| DeleteRequest {
            key: key.as_bytes().to_vec().into(),
        };
        assert!(
            kv.delete(delete("user:07"))
                .await
                .unwrap()
                .into_inner()
                .deleted
        );
        assert!(
            !kv.delete(delete("user:07"))
                .await
                .unwrap()
                .into_inner()
                .deleted
        );
        assert_eq!(native.call(cmd::exists("user:07")), Reply::Bool(false));

        // ListKeys pages like the native Keys.
        let first = kv
            .list_keys(ListKeysRequest {
                prefix: "user:".into(),
                start_after: None,
                limit: 20,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((first.keys.len(), first.more), (20, true));
        let second = kv
            .list_keys(ListKeysRequest {
                prefix: "user:".into(),
                start_after: first.keys.last().cloned(),
                limit: 20,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((second.keys.len(), second.more), (9, false));
        assert_eq!(&second.keys[8][..], b"user:29");

        // Range: [user:10, user:15), descending, at most 3.
        let mut range = kv
            .range(RangeRequest {
                start: "user:10".into(),
                end: Some("user:15".into()),
                limit: 3,
                reverse: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = range.message().await.unwrap() {
            keys.extend(page.pairs.into_iter().map(|p| p.key));
        }
        assert_eq!(keys, vec!["user:14", "user:13", "user:12"]);

        let figures = kv.stat(StatRequest {}).await.unwrap().into_inner().figures;
        let figure = |name: &str, labels: &[(&str, &str)]| {
            figures
                .iter()
                .find(|f| {
                    f.name == name
                        && f.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| f.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|f| f.value)
        };
        // greeting, native, 30 users less one.
        assert_eq!(figure("keys", &[]), Some(31));
        let calls = |method| figure("commands_total", &[("door", "grpc"), ("command", method)]);
        assert_eq!(calls("Put"), Some(1));
        assert_eq!(calls("Get"), Some(3));
        assert_eq!(calls("Delete"), Some(2));
        assert_eq!(calls("ListKeys"), Some(2));
        assert_eq!(calls("Stat"), Some(1));
    });
    // A clean stop with a gRPC connection just closed.
    server.terminate();
}

/// Expiry through gRPC: Put's ttl_ms, Expire, Persist and Ttl.
#[test]
fn keys_expire_through_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    runtime().block_on(async {
        let mut kv = client(&server).await;
        let put = |key: &str, ttl_ms| PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: "v".into(),
            ttl_ms,
        };
        let ttl = |key: &str| TtlRequest {
            key: key.as_bytes().to_vec().into(),
        };
        let expire = |key: &str, deadline, when: ExpireWhen| ExpireRequest {
            key: key.as_bytes().to_vec().into(),
            deadline,
            when: when as i32,
        };
        kv.put(put("timed", 60_000)).await.unwrap();
        let answer = kv.ttl(ttl("timed")).await.unwrap().into_inner();
        assert!(answer.found && answer.at_ms.is_some(), "{answer:?}");
        assert!(
            (50_000..=60_000).contains(&answer.ttl_ms.unwrap()),
            "{answer:?}"
        );
        let persisted = kv
            .persist(PersistRequest {
                key: "timed".into(),
            })
            .await;
        assert!(persisted.unwrap().into_inner().persisted);
        let answer = kv.ttl(ttl("timed")).await.unwrap().into_inner();
        assert_eq!(
            (answer.found, answer.at_ms, answer.ttl_ms),
            (true, None, None)
        );
        let missing = kv.ttl(ttl("missing")).await.unwrap().into_inner();
        assert!(!missing.found);

        let later = Some(expire_request::Deadline::TtlMs(120_000));
        let changed = |r: Response<ExpireResponse>| r.into_inner().changed;
        let has = kv
            .expire(expire("timed", later, ExpireWhen::HasDeadline))
            .await;
        assert!(!changed(has.unwrap()), "XX on a key without a deadline");
        assert!(changed(
            kv.expire(expire("timed", later, ExpireWhen::NoDeadline))
                .await
                .unwrap()
        ));
        let gone = kv
            .expire(expire("missing", later, ExpireWhen::Always))
            .await;
        assert!(!changed(gone.unwrap()));
        let past = Some(expire_request::Deadline::AtMs(1));
        assert!(changed(
            kv.expire(expire("timed", past, ExpireWhen::Always))
                .await
                .unwrap()
        ));
        let get = kv
            .get(GetRequest {
                key: "timed".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!get.into_inner().found);
        let status = refused(kv.expire(expire("k", None, ExpireWhen::Always)).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        kv.put(put("short", 1)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let get = kv
            .get(GetRequest {
                key: "short".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!get.into_inner().found, "gone once its time passed");
    });
}

#[test]
fn a_streaming_scan_returns_100_000_keys_in_order_exactly_once_in_many_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    runtime().block_on(async {
        let mut kv = client(&server).await;
        for batch in 0..10 {
            let pairs = (batch * 10_000..(batch + 1) * 10_000)
                .map(|i| pair(format!("scan:{i:06}"), format!("value-{i}")))
                .collect();
            kv.bulk_put(BulkPutRequest { pairs }).await.unwrap();
        }
        kv.put(PutRequest {
            key: "scam:outside".into(),
            value: "x".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
        let mut stream = kv.scan(whole_prefix("scan:")).await.unwrap().into_inner();
        let (mut messages, mut next, mut largest) = (0, 0usize, 0usize);
        while let Some(page) = stream.message().await.unwrap() {
            messages += 1;
            largest = largest.max(page.pairs.len());
            for p in page.pairs {
                assert_eq!(p.key, format!("scan:{next:06}").into_bytes());
                assert_eq!(p.value, format!("value-{next}").into_bytes());
                next += 1;
            }
        }
        assert_eq!(next, 100_000, "every key exactly once, in order");
        assert!(
            messages >= 100,
            "{messages} messages: pages, not one message"
        );
        assert!(largest <= 1_000, "a message of {largest} pairs");

        // A limit counts pairs across pages; start_after and reverse work.
        let mut stream = kv
            .scan(ScanRequest {
                prefix: "scan:".into(),
                start_after: Some("scan:050000".into()),
                limit: 2_500,
                reverse: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream.message().await.unwrap() {
            keys.extend(page.pairs.into_iter().map(|p| p.key));
        }
        assert_eq!(keys.len(), 2_500);
        assert_eq!(&keys[0][..], b"scan:049999");
        assert_eq!(&keys[2_499][..], b"scan:047500");

        // Range over many pages, both ways: [scan:010000, scan:035000).
        for reverse in [false, true] {
            let mut stream = kv
                .range(RangeRequest {
                    start: "scan:010000".into(),
                    end: Some("scan:035000".into()),
                    limit: 0,
                    reverse,
                })
                .await
                .unwrap()
                .into_inner();
            let mut keys = Vec::new();
            while let Some(page) = stream.message().await.unwrap() {
                keys.extend(page.pairs.into_iter().map(|p| p.key));
            }
            let mut expected: Vec<_> = (10_000..35_000)
                .map(|i| format!("scan:{i:06}").into_bytes())
                .collect();
            if reverse {
                expected.reverse();
            }
            assert!(
                keys == expected,
                "range, reverse {reverse}: {} keys",
                keys.len()
            );
        }
    });
}

#[test]
fn limits_are_invalid_argument_with_the_native_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(
        dir.path(),
        &[
            "--max-key",
            "100",
            "--max-value",
            "1000",
            "--max-bulk-items",
            "10",
            "--max-frame",
            "65536",
        ],
    );
    runtime().block_on(async {
        let mut kv = client(&server).await;

        let status = refused(
            kv.put(PutRequest {
                key: vec![b'k'; 101].into(),
                value: "v".into(),
                ttl_ms: 0,
            })
            .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("KeyTooLarge (3): key of 101 bytes"),
            "{status:?}"
        );
        assert_eq!(native_code(&status), Some(3));

        let status = refused(
            kv.put(PutRequest {
                key: "k".into(),
                value: vec![0; 1001].into(),
                ttl_ms: 0,
            })
            .await,
        );
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::InvalidArgument, Some(4))
        );

        let status = refused(
            kv.bulk_put(BulkPutRequest {
                pairs: (0..11).map(|i| pair(format!("k{i}"), "v")).collect(),
            })
            .await,
        );
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::InvalidArgument, Some(5))
        );
        // Counted before decoding: 30,000 empty pairs are 60 KB on the wire.
        let status = refused(
            kv.bulk_put(BulkPutRequest {
                pairs: vec![KeyValuePair::default(); 30_000],
            })
            .await,
        );
        assert!(
            status.message().starts_with(
                "TooManyItems (5): BulkPut of 30000 pairs exceeds the limit of 10 pairs"
            ),
            "{status:?}"
        );
        // All or none: nothing of the refused batch is there.
        let k0 = kv.exists(ExistsRequest { key: "k0".into() }).await.unwrap();
        assert!(!k0.into_inner().exists);

        let status = refused(
            kv.scan(ScanRequest {
                prefix: vec![b'p'; 101].into(),
                start_after: None,
                limit: 0,
                reverse: false,
            })
            .await
            .unwrap()
            .into_inner()
            .message()
            .await,
        );
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::InvalidArgument, Some(3))
        );

        // A message over the frame limit is refused by its length, before
        // it is decoded.
        let status = refused(
            kv.bulk_put(BulkPutRequest {
                pairs: (0..10)
                    .map(|i| pair(format!("k{i}"), vec![0; 7_000]))
                    .collect(),
            })
            .await,
        );
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

        // The connection is still good after all of that.
        kv.put(PutRequest {
            key: "k".into(),
            value: "fine".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
    });
}

const TOKEN: &str = "a-long-random-token-for-tests";

/// A request with `authorization` metadata, if given.
fn with_auth<T>(message: T, authorization: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

fn token_server(dir: &Path, extra: &[&str]) -> Server {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut args = vec!["--auth-token-file", token.to_str().unwrap()];
    args.extend_from_slice(extra);
    grpc_server(dir, &args)
}

#[test]
fn the_token_is_asked_for_in_metadata_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = token_server(
        dir.path(),
        &[
            "--max-key",
            "100",
            "--max-value",
            "1000",
            "--max-frame",
            "4096",
        ],
    );
    let bearer = format!("Bearer {TOKEN}");
    runtime().block_on(async {
        let mut kv = client(&server).await;
        let put = |key: &str| PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: "v".into(),
            ttl_ms: 0,
        };
        let status = kv.put(with_auth(put("none"), None)).await.unwrap_err();
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::Unauthenticated, Some(9))
        );
        // A stream of changes asks for it too.
        let watch = kv.watch(with_auth(WatchRequest::default(), None)).await;
        assert_eq!(refused(watch).code(), Code::Unauthenticated);
        let status = kv
            .put(with_auth(put("wrong"), Some("Bearer wrong")))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::Unauthenticated, Some(10))
        );
        // Refused from its headers: a message over the frame limit without
        // the token is not read, so it is not OUT_OF_RANGE.
        let big = PutRequest {
            key: "big".into(),
            value: vec![0; 100_000].into(),
            ttl_ms: 0,
        };
        let status = kv.put(with_auth(big, None)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        kv.put(with_auth(put("right"), Some(&bearer)))
            .await
            .unwrap();
        // The refused calls wrote nothing; the right token reads.
        for (key, found) in [("none", false), ("wrong", false), ("right", true)] {
            let get = GetRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            };
            let got = kv.get(with_auth(get, Some(&bearer))).await.unwrap();
            assert_eq!(got.into_inner().found, found, "{key}");
        }
        let native = server.client().call(cmd::get("right"));
        assert!(
            matches!(native, Reply::Error { code: 9, .. }),
            "the native door still asks: {native:?}"
        );

        // Five wrong tokens on one connection close it, as on the native
        // door.
        let h2 = raw_h2(&server).await;
        for _ in 0..5 {
            let request = http::Request::post("http://kvstore/kvstore.v1.KeyValue/Put")
                .header("content-type", "application/grpc")
                .header("authorization", "Bearer guess")
                .body(())
                .unwrap();
            let (response, mut send) = h2
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(request, false)
                .unwrap();
            send.send_data(message(0, b"").into(), true).unwrap();
            if let Ok(response) = response.await {
                assert_eq!(response.headers()["grpc-status"], "16");
            }
        }
        let closed = async {
            let mut ready = h2.ready().await?;
            let request = http::Request::post("http://kvstore/kvstore.v1.KeyValue/Put")
                .body(())
                .unwrap();
            let (response, _send) = ready.send_request(request, true)?;
            response.await.map(drop)
        };
        assert!(
            closed.await.is_err(),
            "the connection is still open after 5 failures"
        );
    });
}

#[test]
fn a_connection_that_never_logs_in_gives_its_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = token_server(dir.path(), &["--max-connections", "1"]);
    // A gRPC connection that sends nothing holds the only slot...
    let mut silent = std::net::TcpStream::connect(server.grpc.unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let refused = server.client().recv().map(|r| r.reply);
    assert!(
        matches!(refused, Some(Reply::Error { code: 7, .. })),
        "a second connection was let in: {refused:?}"
    );
    // ...until the login timeout (10 s) closes it.
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    use std::io::Read;
    silent
        .read_to_end(&mut sink)
        .expect("closed by the server, not timed out here");
    for attempt in 0.. {
        let mut native = server.client();
        native.send(kvstore_client::Command::Auth {
            token: TOKEN.into(),
        });
        if matches!(native.recv(), Some(r) if r.reply == Reply::Ok) {
            break;
        }
        assert!(attempt < 100, "the slot never came back");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn shutdown_does_not_wait_for_watchers_or_unfinished_streams() {
    let dir = tempfile::tempdir().unwrap();
    // A grace far longer than `terminate` waits (30 s): a shutdown that
    // waited for these calls would fail the test.
    let server = grpc_server(dir.path(), &["--shutdown-grace-ms", "120000"]);
    let rt = runtime();
    let held = rt.block_on(async {
        let mut kv = client(&server).await;
        kv.bulk_put(BulkPutRequest {
            pairs: (0..5_000).map(|i| pair(format!("s:{i:05}"), "v")).collect(),
        })
        .await
        .unwrap();
        let mut scan = kv.scan(whole_prefix("s:")).await.unwrap().into_inner();
        assert!(scan.message().await.unwrap().is_some());
        let channel = Channel::from_shared(format!("http://{}", server.grpc.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut watch = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: "kvstore.v1.KeyValue".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, 1, "SERVING");
        // A watch of the store that no change will ever move.
        let mut changes = kv.watch(WatchRequest::default()).await.unwrap();
        assert!(changes.get_mut().message().await.unwrap().is_some());
        (kv, scan, watch, changes)
    });
    server.terminate();
    drop(held);
}

#[test]
fn grpc_connections_count_against_the_one_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &["--max-connections", "1"]);
    let mut native = server.client();
    assert_eq!(native.call(cmd::set("k", "v")), Reply::Ok);
    runtime().block_on(async {
        // The native connection holds the only slot: the gRPC connection is
        // closed at once.
        let endpoint = Channel::from_shared(format!("http://{}", server.grpc.unwrap())).unwrap();
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => KeyValueClient::new(channel)
                .get(GetRequest {
                    key: "k".into(),
                    ..Default::default()
                })
                .await
                .is_err(),
        };
        assert!(refused, "a gRPC call was served over the connection limit");
        drop(native);
        // Once the slot is free, gRPC is served (within a bounded wait for
        // the server to notice the native connection closed).
        for attempt in 0.. {
            let served = match endpoint.connect().await {
                Ok(channel) => KeyValueClient::new(channel)
                    .get(GetRequest {
                        key: "k".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if served {
                break;
            }
            assert!(attempt < 100, "gRPC never served after the slot was freed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_backup_streamed_through_grpc_restores_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let server = grpc_server(dir.path(), &["--backup-dir", backups.to_str().unwrap()]);
    let file = dir.path().join("streamed.kvb");
    runtime().block_on(async {
        let mut kv = client(&server).await;
        kv.bulk_put(BulkPutRequest {
            pairs: (0..5_000)
                .map(|i| pair(format!("b:{i:05}"), vec![b'x'; 300]))
                .collect(),
        })
        .await
        .unwrap();
        let mut stream = kv
            .backup(BackupRequest { name: None })
            .await
            .unwrap()
            .into_inner();
        let (mut bytes, mut summary, mut chunks) = (Vec::new(), None, 0);
        while let Some(message) = stream.message().await.unwrap() {
            assert!(summary.is_none(), "nothing follows the summary");
            match message.item.expect("an item") {
                backup_response::Item::Chunk(chunk) => {
                    chunks += 1;
                    bytes.extend_from_slice(&chunk);
                }
                backup_response::Item::Done(done) => summary = Some(done),
            }
        }
        let summary = summary.expect("a summary at the end");
        assert_eq!((summary.keys, summary.bytes), (5_000, bytes.len() as u64));
        assert!(chunks >= 2, "{chunks} chunks for 1.5 MB");
        std::fs::write(&file, &bytes).unwrap();

        // Into the server's backup directory, by name.
        let mut stream = kv
            .backup(BackupRequest {
                name: Some("nightly".into()),
            })
            .await
            .unwrap()
            .into_inner();
        let only = stream.message().await.unwrap().expect("the summary");
        assert!(matches!(only.item, Some(backup_response::Item::Done(ref d)) if d.keys == 5_000));
        assert!(stream.message().await.unwrap().is_none());
        assert!(backups.join("nightly").exists());
        // A taken name is refused with the native code.
        let status = kv
            .backup(BackupRequest {
                name: Some("nightly".into()),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), native_code(&status)),
            (Code::FailedPrecondition, Some(13))
        );
    });
    server.terminate();

    for (name, backup) in [("streamed", file), ("named", backups.join("nightly"))] {
        let data = dir.path().join(format!("restored-{name}.db"));
        let restored = Server::start(&data, &["--restore", backup.to_str().unwrap()]);
        let mut native = restored.client();
        assert_eq!(
            native.call(cmd::get("b:04999")),
            Reply::Value(Some(vec![b'x'; 300].into())),
            "{name}"
        );
        restored.terminate();
    }
}

/// Runs `tests/python/grpc_client.py` with `args`; panics with its output
/// unless every check passed.
fn python_client(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_client.py");
    let out = Process::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect(
        "run python3 (CI installs grpcio, grpcio-tools, grpcio-reflection, grpcio-health-checking)",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all python checks passed"),
        "python grpcio client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_grpcio_with_generated_stubs_uses_every_kind_of_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    python_client(&[&server.grpc.unwrap().to_string()]);
}

#[test]
fn python_grpcio_over_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = throwaway_certificate(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "python-token-over-tls").unwrap();
    let server = grpc_server(
        dir.path(),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--auth-token-file",
            token.to_str().unwrap(),
        ],
    );
    python_client(&[
        &format!("localhost:{}", server.grpc.unwrap().port()),
        "--token",
        "python-token-over-tls",
        "--ca",
        cert_path.to_str().unwrap(),
    ]);
}

/// The README's five-line Python example, run as it is written, against a
/// server on the port it names replaced by a free one.
#[test]
fn the_readme_python_example_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("a python block in the README")
        + "```python\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    assert!(example.contains("127.0.0.1:50051"), "{example}");
    assert!(example.lines().count() <= 5, "{example}");

    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    let stubs = dir.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let generated = Process::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", proto])
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(format!("{proto}/keyvalue.proto"))
        .status()
        .expect("python3 -m grpc_tools.protoc");
    assert!(generated.success());
    let example = example.replace("127.0.0.1:50051", &server.grpc.unwrap().to_string());
    let out = Process::new("python3")
        .args(["-c", &example])
        .current_dir(&stubs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b'hello'");
}

/// A raw HTTP/2 connection to the gRPC door, for requests no gRPC library
/// would send.
async fn raw_h2(server: &Server) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(server.grpc.unwrap())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Starts a `Put` call and sends `body` (without ending the request unless
/// `end`); returns the response future and the request's sending half.
async fn raw_put(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    body: Vec<u8>,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post("http://kvstore/kvstore.v1.KeyValue/Put")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, mut send) = ready.send_request(request, false).unwrap();
    send.send_data(body.into(), end).unwrap();
    (response, send)
}

/// The `grpc-status` of a response (in its headers or its trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> (u32, String) {
    let (parts, mut body) = response.await.unwrap().into_parts();
    let headers = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => {
            while body.data().await.is_some() {}
            body.trailers().await.unwrap().expect("trailers")
        }
    };
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (get("grpc-status").parse().unwrap(), get("grpc-message"))
}

/// A gRPC message prefix claiming `len` bytes, then `body`.
fn message(len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// The server's virtual memory size in KiB (`VmSize` in /proc).
fn vm_size_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_length_prefix_is_not_taken_at_its_word() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &["--read-timeout-ms", "500"]);
    runtime().block_on(async {
        let mut h2 = raw_h2(&server).await;
        // A prefix that claims 15 MiB, one byte, and the end: refused as
        // not being the message it claims.
        let (response, _send) = raw_put(&mut h2, message(15 << 20, b"x"), true).await;
        let (code, text) = grpc_status(response).await;
        assert_eq!(code, Code::InvalidArgument as u32, "{text}");
        // Two messages where a method takes one.
        let two = [message(0, b""), message(0, b"")].concat();
        let (response, _send) = raw_put(&mut h2, two, true).await;
        assert_eq!(grpc_status(response).await.0, Code::InvalidArgument as u32);

        // 100 calls that each claim 15 MiB and send one byte of it, left
        // open: the server holds what arrived, not what was claimed (tonic
        // alone would reserve 1.5 GB of address space here).
        let before = vm_size_kib(&server);
        let mut open = Vec::new();
        for _ in 0..100 {
            open.push(raw_put(&mut h2, message(15 << 20, b"x"), false).await);
        }
        // Every one of them is answered once the read timeout has passed.
        let mut grown = 0;
        for (response, _send) in open {
            grown = grown.max(vm_size_kib(&server).saturating_sub(before));
            let (code, text) = grpc_status(response).await;
            assert_eq!(code, Code::DeadlineExceeded as u32, "{text}");
        }
        assert!(
            grown < 512 * 1024,
            "the server's address space grew by {grown} KiB for 100 bytes received"
        );

        // The server still serves, on this connection and on a new one.
        let (response, _send) = raw_put(&mut h2, message(0, b""), true).await;
        assert_eq!(grpc_status(response).await.0, Code::Ok as u32);
        let mut kv = client(&server).await;
        kv.put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
    });
}

#[test]
fn every_put_answered_through_grpc_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    let data = server.data.clone();
    let acknowledged = runtime().block_on(async {
        let kv = client(&server).await;
        // 16 concurrent writers on one channel, 200 Puts each: they share
        // group commits.
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let mut kv = kv.clone();
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for i in 0..200 {
                        let key = format!("w{w}:{i}");
                        kv.put(PutRequest {
                            key: key.clone().into_bytes().into(),
                            value: "durable".into(),
                            ttl_ms: 0,
                        })
                        .await
                        .unwrap();
                        done.push(key);
                    }
                    done
                })
            })
            .collect();
        let mut all = Vec::new();
        for writer in writers {
            all.extend(writer.await.unwrap());
        }
        all
    });
    server.kill9();
    let restarted = Server::start(&data, &[]);
    let mut native = restarted.client();
    for key in &acknowledged {
        assert_eq!(
            native.call(cmd::get(key)),
            Reply::Value(Some("durable".into())),
            "{key} was acknowledged and lost"
        );
    }
    assert_eq!(acknowledged.len(), 3_200);
}

/// `Txn`: compare-and-swap on a revision read with `Get`'s
/// `with_version`, the failure branch when it no longer holds, an
/// operation's error in its place beside the others' writes, and a limit
/// refused as INVALID_ARGUMENT.
#[test]
fn txn_compares_and_swaps_as_the_native_transaction() {
    use kvstore_proto::v1::{
        compare, txn_op, txn_op_response, Compare, CompareOp, IncrRequest, TxnOp, TxnRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &["--max-bulk-items", "300"]);
    runtime().block_on(async {
        let mut kv = client(&server).await;
        let put = |key: &str, value: &str| TxnOp {
            op: Some(txn_op::Op::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ttl_ms: 0,
            })),
        };
        let get = |key: &str| TxnOp {
            op: Some(txn_op::Op::Get(GetRequest {
                key: key.as_bytes().to_vec().into(),
                with_version: true,
            })),
        };
        kv.put(PutRequest {
            key: "config".into(),
            value: "v1".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
        let seen = kv
            .get(GetRequest {
                key: "config".into(),
                with_version: true,
            })
            .await
            .unwrap()
            .into_inner()
            .mod_revision;
        let swap = TxnRequest {
            compare: vec![Compare {
                key: "config".into(),
                target: Some(compare::Target::ModRevision(seen)),
                op: CompareOp::Equal as i32,
            }],
            success: vec![put("config", "v2")],
            failure: vec![get("config")],
        };
        let done = kv.txn(swap.clone()).await.unwrap().into_inner();
        assert!(done.succeeded);
        let again = kv.txn(swap).await.unwrap().into_inner();
        assert!(!again.succeeded);
        let Some(txn_op_response::Response::Get(now)) = &again.responses[0].response else {
            panic!("{again:?}");
        };
        assert_eq!(&now.value[..], b"v2");
        // With its revision: the one the swap wrote.
        assert!(now.mod_revision > seen, "{now:?}");

        let incr = TxnOp {
            op: Some(txn_op::Op::Incr(IncrRequest {
                key: "config".into(),
                by: 1,
            })),
        };
        let mixed = TxnRequest {
            compare: vec![],
            success: vec![incr, put("b", "1")],
            failure: vec![],
        };
        let done = kv.txn(mixed).await.unwrap().into_inner();
        let Some(txn_op_response::Response::Error(e)) = &done.responses[0].response else {
            panic!("{done:?}");
        };
        assert_eq!(e.code, kvstore_client::ErrorCode::NotAnInteger as u32);
        assert!(matches!(
            done.responses[1].response,
            Some(txn_op_response::Response::Put(_))
        ));

        let many = TxnRequest {
            compare: vec![],
            success: (0..301).map(|i| get(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        let refused = kv.txn(many).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    });
}

/// Bounds every wait for a watch's next message: a missing one fails the
/// test rather than hanging it.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The next message of a watch that must go on.
async fn next_change(watch: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    let next = tokio::time::timeout(PATIENCE, watch.message()).await;
    let next = next.expect("a message within the patience");
    let message = next.expect("the watch goes on");
    message.expect("the stream is open")
}

/// Puts `value` under `key` (for `ttl_ms`, 0: for ever) and reads the
/// revision the put got.
async fn put_at(
    kv: &mut KeyValueClient<Channel>,
    key: &'static str,
    value: &'static str,
    ttl_ms: u64,
) -> u64 {
    let put = PutRequest {
        key: key.into(),
        value: value.into(),
        ttl_ms,
    };
    kv.put(put).await.unwrap();
    let get = GetRequest {
        key: key.into(),
        with_version: true,
    };
    kv.get(get).await.unwrap().into_inner().mod_revision
}

/// `Watch`: first a message with no events (the watch is in place), then
/// exactly the changes to the prefix, in order, with the revisions the
/// writes got; a put elsewhere is not sent.
#[test]
fn watch_streams_the_changes_to_a_prefix_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &[]);
    runtime().block_on(async {
        let mut kv = client(&server).await;
        let watch = WatchRequest {
            prefix: "w/".into(),
            from_revision: 0,
        };
        let mut watch = kv.watch(watch).await.unwrap().into_inner();
        let first = next_change(&mut watch).await;
        assert!(first.events.is_empty(), "{first:?}");

        let a = put_at(&mut kv, "w/a", "1", 0).await;
        let elsewhere = put_at(&mut kv, "elsewhere", "1", 0).await;
        let deleted = kv.delete(DeleteRequest { key: "w/a".into() }).await;
        assert!(deleted.unwrap().into_inner().deleted);
        let b = put_at(&mut kv, "w/b", "2", 60_000).await;
        assert!(first.revision < a && a < elsewhere && elsewhere < b);

        // Every change up to `b` is sent once a message's revision says so.
        let mut events = Vec::new();
        loop {
            let message = next_change(&mut watch).await;
            events.extend(message.events);
            if message.revision >= b {
                break;
            }
        }
        let got: Vec<_> = (events.iter())
            .map(|e| (e.revision, &e.key[..], e.kind(), &e.value[..]))
            .collect();
        // The delete's revision lies between the puts around it.
        let delete = got.get(1).map_or(0, |e| e.0);
        assert!(elsewhere < delete && delete < b, "{got:?}");
        assert_eq!(
            got,
            [
                (a, &b"w/a"[..], EventKind::Put, &b"1"[..]),
                (delete, b"w/a", EventKind::Delete, b""),
                (b, b"w/b", EventKind::Put, b"2"),
            ]
        );
        // Only the put with a ttl has a deadline, about a minute away.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let minute = now.unwrap().as_millis() as u64 + 60_000;
        let deadlines: Vec<_> = events.iter().map(|e| e.deadline_ms).collect();
        assert!(
            matches!(deadlines[..], [None, None, Some(at)] if at.abs_diff(minute) < 10_000),
            "{deadlines:?}"
        );
    });
}

/// A watch from a revision the history no longer holds fails at once with
/// OUT_OF_RANGE, as etcd answers a compacted revision.
#[test]
fn a_watch_from_a_compacted_revision_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = grpc_server(dir.path(), &["--watch-history-mb", "0"]);
    runtime().block_on(async {
        let mut kv = client(&server).await;
        kv.put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ttl_ms: 0,
        })
        .await
        .unwrap();
        let watch = WatchRequest {
            prefix: "".into(),
            from_revision: 1,
        };
        let status = refused(kv.watch(watch).await);
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(
            native_code(&status),
            Some(kvstore_client::ErrorCode::Compacted as u32)
        );
        assert!(status.message().contains("compacted"), "{status:?}");
    });
}
