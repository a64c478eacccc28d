//! `kvstore-bench` against the real server, over both doors and through the
//! client library: every test
//! completes without errors, the CSV gets one row per test, the data it
//! wrote is really there, and `--plot` draws the charts.

mod common;

use std::process::Command;

use common::Server;

fn bench(args: &[&str]) -> String {
    let out = Command::new(common::workspace_bin("kvstore-bench", "kvstore-bench"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kvstore-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_test_runs_over_both_doors_and_the_library_and_lands_in_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("kv.db"), &["--resp-listen", "127.0.0.1:0"]);
    let csv = dir.path().join("results.csv");
    let csv_arg = csv.to_str().unwrap();
    let native = server.addr.to_string();
    let resp = server.resp.unwrap().to_string();
    let tests = "set,get,del,exists,bulkset,mixed";
    let common_args = ["-c", "4", "-n", "2000", "-r", "500", "--bulk", "10", "-q"];
    let mut args = vec!["--addr", &native, "-t", tests, "--csv", csv_arg];
    args.extend(common_args);
    let table = bench(&args);
    let mut args = vec![
        "--addr", &resp, "--resp", "-P", "8", "-t", tests, "--csv", csv_arg, "--label", "via-resp",
    ];
    args.extend(common_args);
    bench(&args);
    let mut args = vec![
        "--addr",
        &native,
        "--library",
        "-P",
        "4",
        "-t",
        tests,
        "--csv",
        csv_arg,
    ];
    args.extend(common_args);
    bench(&args);
    for test in ["set", "get", "del", "exists", "bulkset", "mixed"] {
        assert!(table.lines().any(|l| l.starts_with(test)), "{table}");
    }

    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 18, "one row per test and way in");
    for row in &rows {
        assert_eq!(&row[col("requests")], "2000", "{row:?}");
        assert_eq!(&row[col("errors")], "0", "{row:?}");
        assert!(row[col("requests_per_sec")].parse::<f64>().unwrap() > 0.0);
        let p50: f64 = row[col("p50_ms")].parse().unwrap();
        let max: f64 = row[col("max_ms")].parse().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{row:?}");
    }
    for system in ["via-resp", "kvstore-library"] {
        let of_system = rows.iter().filter(|r| &r[col("system")] == system);
        assert_eq!(of_system.count(), 6, "{system}");
    }

    // The last test (mixed) wrote keys of the key space: they are there.
    let mut client = server.client();
    let page = client.call(common::cmd::keys("key:", None, 1000));
    match page {
        kvstore_client::Reply::Keys { keys, .. } => {
            assert!(!keys.is_empty() && keys.len() <= 500, "{}", keys.len());
        }
        other => panic!("{other:?}"),
    }

    // The same workload through the RESP door, for a ratio table.
    let mut args = vec![
        "--addr", &resp, "--resp", "-t", "set", "--csv", csv_arg, "--label", "resp",
    ];
    args.extend(common_args);
    bench(&args);
    let markdown = dir.path().join("summary.md");
    bench(&[
        "-n",
        "0",
        "--csv",
        csv_arg,
        "--compare",
        "kvstore:resp",
        "--compare",
        "kvstore:nobody",
        "--markdown",
        markdown.to_str().unwrap(),
    ]);
    let summary = std::fs::read_to_string(&markdown).unwrap();
    let lines: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("| set, 4 conn, P1"))
        .collect();
    assert_eq!(lines.len(), 1, "one comparable workload:\n{summary}");
    let ratio: f64 = lines[0].split('|').nth(4).unwrap().trim().parse().unwrap();
    assert!(ratio > 0.0, "{summary}");
    assert!(summary.contains("### kvstore / nobody"), "{summary}");

    let charts = dir.path().join("charts");
    let out = bench(&[
        "-n",
        "0",
        "--csv",
        csv_arg,
        "--plot",
        charts.to_str().unwrap(),
    ]);
    for test in ["set", "get", "bulkset"] {
        for kind in ["throughput", "latency"] {
            let png = charts.join(format!("{kind}-{test}.png"));
            let bytes =
                std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}\n{out}", png.display()));
            assert!(
                bytes.starts_with(b"\x89PNG"),
                "{} is not a PNG",
                png.display()
            );
        }
    }
}
