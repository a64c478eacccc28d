//! The client library against the real server binary on loopback.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{runtime, Server};
use futures_util::TryStreamExt;
use kvstore_client::{BlockingClient, Client, Error, ErrorCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tags: Vec<String>,
}

#[test]
fn the_async_client_does_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = Client::connect(format!("kvstore://{}", server.addr)).unwrap();
    runtime().block_on(async {
        assert_eq!(client.get("a").await.unwrap(), None);
        client.set("a", "1").await.unwrap();
        assert_eq!(client.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(client.exists("a").await.unwrap());
        assert!(client.delete("a").await.unwrap());
        assert!(!client.delete("a").await.unwrap());
        assert!(!client.exists("a").await.unwrap());

        let profile = Profile {
            name: "ann".into(),
            tags: vec!["x".into(), "y".into()],
        };
        client.set_json("p", &profile).await.unwrap();
        assert_eq!(
            client.get_json::<Profile>("p").await.unwrap(),
            Some(profile)
        );
        assert_eq!(client.get_json::<Profile>("nope").await.unwrap(), None);

        // 2,500 keys: the stream walks three pages of the default 1,000.
        let items: Vec<_> = (0..2500)
            .map(|i| (format!("k:{i:05}"), format!("v{i}")))
            .collect();
        client.bulk_set(items.clone()).await.unwrap();
        let keys: Vec<_> = client.keys("k:").try_collect().await.unwrap();
        assert_eq!(keys.len(), 2500);
        assert!(keys
            .iter()
            .zip(&items)
            .all(|(k, (e, _))| k.as_ref() == e.as_bytes()));
        let (page, more) = client.keys_page("k:", Some(b"k:02497"), 0).await.unwrap();
        assert_eq!((page.len(), more), (2, false));
    });
}

#[test]
fn the_blocking_client_does_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    client.set("a", [0u8, 255]).unwrap();
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&[0u8, 255][..]));
    assert!(client.exists("a").unwrap());
    assert!(client.delete("a").unwrap());
    assert_eq!(client.get("a").unwrap(), None);
    client.set_json("list", &vec![1, 2, 3]).unwrap();
    assert_eq!(
        client.get_json::<Vec<i32>>("list").unwrap(),
        Some(vec![1, 2, 3])
    );
    client
        .bulk_set((0..1500).map(|i| (format!("b:{i:04}"), "v")))
        .unwrap();
    let keys: Vec<_> = client.keys("b:").collect::<Result<_, _>>().unwrap();
    assert_eq!(keys.len(), 1500);
    assert_eq!(keys.first().map(|k| k.as_ref()), Some(&b"b:0000"[..]));
    let (page, more) = client.keys_page("b:", None, 10).unwrap();
    assert_eq!((page.len(), more), (10, true));

    assert_eq!(client.set_range("r", 2, "ab").unwrap(), 4);
    assert_eq!(client.get("r").unwrap().as_deref(), Some(&b"\0\0ab"[..]));
    assert_eq!(client.incr_by_float("f", 2.5).unwrap(), 2.5);
    assert_eq!(client.incr_by_float("f", -0.5).unwrap(), 2.0);
    let not_a_float = client.incr_by_float("r", 1.0).unwrap_err();
    assert_eq!(not_a_float.code(), Some(ErrorCode::NotAFloat));
    assert!(client.bulk_set_if_absent([("x", "1"), ("y", "2")]).unwrap());
    assert!(!client.bulk_set_if_absent([("y", "3"), ("z", "4")]).unwrap());
    assert!(!client.exists("z").unwrap());
    assert!(client.copy("x", "x2", false).unwrap());
    assert!(!client.copy("y", "x2", false).unwrap());
    assert!(client.copy("y", "x2", true).unwrap());
    assert_eq!(client.get("x2").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(!client.rename("x2", "x", false).unwrap());
    assert!(client.rename("x2", "x3", false).unwrap());
    assert!(!client.exists("x2").unwrap());
    let missing = client.rename("x2", "x", true).unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NoSuchKey));
}

/// A server that accepts connections and never answers: each attempt times
/// out, the client reconnects for the next one, and gives up after the
/// configured number of attempts.
#[test]
fn a_server_that_never_answers_times_out_after_bounded_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(10) {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let client = Client::builder()
        .addr(addr.to_string())
        .request_timeout(Duration::from_millis(200))
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap();
    let error = runtime().block_on(client.get("k")).unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(error.is_retryable());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per attempt"
    );
}

/// A write whose first attempt got no answer (it may have been carried out)
/// and whose last could not connect: the call's outcome is unknown, not
/// "never arrived".
#[test]
fn a_call_whose_earlier_attempt_may_have_landed_reports_an_unknown_outcome() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held = listener.accept();
        drop(listener);
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let client = Client::builder()
        .addr(addr.to_string())
        .request_timeout(Duration::from_millis(200))
        .max_attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .exactly_once(false)
        .build()
        .unwrap();
    let error = runtime().block_on(client.set("k", "v")).unwrap_err();
    assert!(!error.never_arrived(), "{error}");
    assert!(
        matches!(&error, Error::Server { code, .. } if *code == kvstore_client::ErrorCode::OutcomeUnknown as u32),
        "{error}"
    );
}

#[test]
fn an_unreachable_server_is_a_connect_error() {
    let client = Client::builder()
        // Port 1: no test server can be listening there (see tests/cli.rs).
        .addr("127.0.0.1:1")
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    let error = runtime().block_on(client.get("k")).unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
}

/// After a restart the next call reconnects by itself; a call made while the
/// server is down is retried until it is back.
#[test]
fn the_client_reconnects_and_retries_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &[]);
    let addr = server.addr;
    let client = Client::builder()
        .addr(addr.to_string())
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .max_attempts(20)
        .build()
        .unwrap();
    let rt = runtime();
    rt.block_on(client.set("k", "before")).unwrap();
    server.kill9();
    let data2 = data.clone();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Server::start_on(&addr.to_string(), &data2, &[])
    });
    // Issued while the server is down: retried until it is back.
    assert_eq!(
        rt.block_on(client.get("k")).unwrap().as_deref(),
        Some(&b"before"[..])
    );
    let _server = restart.join().unwrap();
    rt.block_on(client.set("k", "after")).unwrap();
    assert_eq!(
        rt.block_on(client.get("k")).unwrap().as_deref(),
        Some(&b"after"[..])
    );
}

#[test]
fn errors_the_server_gives_on_purpose_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--max-key", "4"]);
    let client = Client::connect(server.addr.to_string()).unwrap();
    let error = runtime().block_on(client.set("too long", "v")).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::KeyTooLarge));
    assert!(!error.is_retryable());
}

/// Thousands of requests in flight on one multiplexed connection.
#[test]
fn thousands_of_pipelined_requests_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = one_connection(&server);
    runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..5000u32 {
            let client = client.clone();
            tasks.spawn(async move { client.set(format!("p{i}"), i.to_le_bytes()).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..5000u32 {
            let client = client.clone();
            tasks.spawn(async move { (i, client.get(format!("p{i}")).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, value) = done.unwrap();
            assert_eq!(value.unwrap().as_deref(), Some(&i.to_le_bytes()[..]));
        }
    });
}

/// Large requests and large replies at once on one connection: the client
/// reads replies while it writes, so neither side can block the other.
#[test]
fn large_values_in_both_directions_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = one_connection(&server);
    runtime().block_on(async {
        let value = bytes::Bytes::from(vec![7u8; 1 << 20]);
        client.set("big", &value).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..48 {
            let (client, value) = (client.clone(), value.clone());
            tasks.spawn(async move {
                if i % 2 == 0 {
                    client.set(format!("big{i}"), &value).await.map(|()| None)
                } else {
                    client.get("big").await
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Some(got) = done.unwrap().unwrap() {
                assert_eq!(got.len(), 1 << 20);
            }
        }
    });
}

/// A request over the client's frame limit fails at once, is not retried,
/// and does not disturb the connection the other calls use.
#[test]
fn a_request_over_the_frame_limit_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = Client::builder()
        .addr(server.addr.to_string())
        .connections(1)
        .max_frame(1000)
        .build()
        .unwrap();
    runtime().block_on(async {
        client.set("small", "v").await.unwrap();
        let error = client.set("big", vec![0u8; 2000]).await.unwrap_err();
        assert!(matches!(error, Error::Encode(_)), "{error}");
        assert!(!error.is_retryable());
        assert_eq!(
            client.get("small").await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
    });
}

/// A client whose calls all share one multiplexed connection.
fn one_connection(server: &Server) -> Client {
    Client::builder()
        .addr(server.addr.to_string())
        .connections(1)
        .build()
        .unwrap()
}
