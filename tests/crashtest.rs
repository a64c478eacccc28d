//! The kill -9 harness, short: 20 cycles against the real server. The long
//! run (1,000 cycles) is a documented command (docs/durability.md).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn harness() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvstore-crashtest"));
    command.env("RUST_LOG", "error");
    command
}

/// Runs 20 kill -9 cycles of 200 ms at most with `extra` flags, and checks
/// that nothing acknowledged was lost.
fn twenty_cycles_lose_nothing(extra: &[&str]) {
    let out = harness()
        .args([
            "--server",
            env!("CARGO_BIN_EXE_kvstore-server"),
            "--cycles",
            "20",
            "--max-run-ms",
            "200",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("total: 20 cycles"), "{stdout}");
    assert!(
        stdout.contains("lost 0, torn BulkSets 0, unwritten values 0"),
        "{stdout}"
    );
}

#[test]
fn twenty_kill_9_cycles_lose_nothing() {
    twenty_cycles_lose_nothing(&[]);
}

/// The same against the disk engine: its checkpoints (one per 32 KiB of
/// log here) and the replay from the last one lose nothing either.
#[test]
fn twenty_kill_9_cycles_lose_nothing_on_the_disk_engine() {
    twenty_cycles_lose_nothing(&["--engine", "disk"]);
}

/// The harness itself must notice loss: a "server" that wipes its data at
/// every start fails it.
#[test]
fn the_harness_notices_a_server_that_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("forgetful-server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# finds --data PATH and wipes it before starting the real server\nprev=\nfor a in \"$@\"; do [ \"$prev\" = --data ] && rm -rf \"$a\" \"$a-wal\"; prev=$a; done\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_kvstore-server")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = harness()
        .arg("--server")
        .arg(&wrapper)
        .args(["--cycles", "3", "--max-run-ms", "100", "--seed", "7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a server that loses everything passed: {stdout}"
    );
    assert!(stdout.contains("VIOLATION"), "{stdout}");
}
