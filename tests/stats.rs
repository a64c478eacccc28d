//! `Stats`, `kvstore stat` and `--metrics-listen` against the real server:
//! the figures count what the test did, and the HTTP page serves the same
//! figures in the Prometheus text format.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::{cli_ok, unused_port, Server};
use kvstore_client::{BlockingClient, ErrorCode};

fn figures(client: &BlockingClient) -> BTreeMap<String, i64> {
    client.stats().unwrap().into_iter().collect()
}

/// The whole HTTP response to `request`.
fn http(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8(response).unwrap()
}

#[test]
fn stats_count_keys_bytes_commands_errors_and_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &["--max-key", "8"]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    client.set("a", "1").unwrap();
    client.set("bb", "22").unwrap();
    client.set("a", "333").unwrap();
    assert_eq!(client.get("a").unwrap().as_deref(), Some(&b"333"[..]));
    let refused = client.set("much-too-long", "x").unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::KeyTooLarge), "{refused}");
    let f = figures(&client);
    assert_eq!(f["keys"], 2);
    assert_eq!(f["key_bytes"], 3, "a + bb");
    assert_eq!(f["value_bytes"], 5, "333 + 22");
    assert_eq!(f["commands_total{door=\"native\",command=\"Set\"}"], 4);
    assert_eq!(f["commands_total{door=\"native\",command=\"Get\"}"], 1);
    assert_eq!(f["errors_total{code=\"KeyTooLarge\"}"], 1);
    assert_eq!(f["errors_total{code=\"Malformed\"}"], 0);
    assert_eq!(f["log_records_total"], 3);
    assert_eq!(f["log_records_since_snapshot"], 3);
    assert_eq!(
        f["fsyncs_total"], 3,
        "--sync always: one fdatasync per lone write"
    );
    assert_eq!(f["fsync_latency_us_count"], 3);
    assert!(f["fsync_latency_us{quantile=\"0.5\"}"] > 0);
    assert!(f["fsync_latency_us_max"] >= f["fsync_latency_us{quantile=\"0.99\"}"]);
    assert_eq!(f["batch_records{quantile=\"0.5\"}"], 1);
    assert_eq!(f["log_failed"], 0);
    assert!(f["connections"] >= 1);
    assert_eq!(
        f[&format!("build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))],
        1
    );
    assert!(f.contains_key("uptime_seconds") && f.contains_key("last_snapshot_unix_seconds"));
}

#[test]
fn the_metrics_page_serves_the_same_figures_for_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", unused_port());
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--metrics-listen", &metrics],
    );
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    client
        .bulk_set([("x", "1"), ("y", "2"), ("z", "3")])
        .unwrap();

    let response = http(&metrics, b"GET /metrics HTTP/1.1\r\nHost: kvstore\r\n\r\n");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(
        body.contains("# TYPE kvstore_keys gauge\nkvstore_keys 3\n"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE kvstore_commands_total counter\n"),
        "{body}"
    );
    assert!(body.contains("kvstore_commands_total{door=\"native\",command=\"BulkSet\"} 1\n"));
    // Every series of the Stats reply is on the page, and nothing else.
    let page: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            l.rsplit_once(' ')
                .unwrap()
                .0
                .strip_prefix("kvstore_")
                .unwrap()
        })
        .collect();
    let stats: Vec<String> = client
        .stats()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(page, stats);

    let not_found = http(&metrics, b"GET /secret HTTP/1.1\r\n\r\n");
    assert!(
        not_found.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{not_found}"
    );
    let wrong_method = http(&metrics, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(wrong_method.starts_with("HTTP/1.1 405 "), "{wrong_method}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9000));
    let too_large = http(&metrics, &huge);
    assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");
    // And the server still answers.
    assert!(http(&metrics, b"GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn the_cli_prints_stats_as_a_table_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kvstore.db"), &[]);
    let client = BlockingClient::connect(server.addr.to_string()).unwrap();
    client.set("k", "value").unwrap();
    let cli = |args: &[&str]| cli_ok(server.addr, args);
    let table = cli(&["stat"]);
    let keys_line = table.lines().find(|l| l.starts_with("keys ")).unwrap();
    assert_eq!(
        keys_line.split_whitespace().collect::<Vec<_>>(),
        ["keys", "1"]
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli(&["--output", "json", "stat"])).unwrap();
    assert_eq!(json["keys"], 1);
    assert_eq!(json["value_bytes"], 5);
}
