//! The command line refuses nonsense before it connects anywhere. (The load
//! itself is tested against the real server in the workspace root's
//! `tests/bench.rs`; this file also makes `cargo test` build the binary.)

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvstore-bench"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_settings_are_refused_with_a_message() {
    for (args, message) in [
        (&["-c", "0"][..], "-c must be at least 1"),
        (&["-P", "0"], "-P must be at least 1"),
        (&["--read-ratio", "1.5"], "--read-ratio"),
        (&["-t", "lpush"], "invalid value 'lpush'"),
        (
            &["-n", "0", "--plot", "charts"],
            "--plot draws the rows of --csv FILE",
        ),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unreachable_server_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bench(&["--addr", &format!("127.0.0.1:{port}"), "-n", "10", "-q"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect to"));
}

#[test]
fn the_fsync_probe_reports_percentiles_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&["--fsync-probe", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The floor first (writes over zeros written ahead), then appends.
    assert!(
        stdout.starts_with("write 128 B over zeros + fdatasync, 2000 times: p50 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("; append 128 B + fdatasync, 2000 times: p50 "),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_fsync_probe_names_a_directory_it_cannot_use() {
    let out = bench(&["--fsync-probe", "/nonexistent/kvstore-bench"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}
