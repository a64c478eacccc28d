//! A disk fault in cluster mode: an `fdatasync` error of the raft log stops
//! the node (openraft's fatal storage error), acknowledges nothing after it,
//! and shows in the `log_failed` figure, as on a single node.

use super::*;

fn log_failed(addr: SocketAddr) -> Option<i64> {
    match try_call(addr, kvstore_client::Command::Stats)? {
        Reply::Stats(figures) => (figures.iter())
            .find(|(n, _)| n == "log_failed")
            .map(|(_, v)| *v),
        _ => None,
    }
}

#[test]
fn an_fdatasync_error_stops_the_node_and_shows_in_log_failed() {
    let dir = tempfile::tempdir().unwrap();
    let node = specs(1).remove(0);
    let (data, prefix) = (dir.path().join("node1.db"), dir.path().join("fiu"));
    let mut command = common::under_fiu(&prefix);
    command.arg("--listen").arg(node.addr.to_string());
    command.arg("--data").arg(&data);
    command.args(["--node-id", "1", "--raft-listen", &node.raft.to_string()]);
    let server = Server::spawn(command, &data);
    assert!(cli(node.addr, &["cluster", "init"]).status.success());
    wait_for_leader(std::slice::from_ref(&node));
    assert_eq!(try_call(node.addr, cmd::set("k", "v")), Some(Reply::Ok));
    assert_eq!(log_failed(node.addr), Some(0));

    common::fiu_ctrl(
        &prefix,
        server.child.id(),
        "enable name=posix/io/sync/fdatasync,failnum=1,failinfo=5",
    );
    let failed = try_call(node.addr, cmd::set("k", "lost"));
    assert_ne!(
        failed,
        Some(Reply::Ok),
        "a write acknowledged past a failed fdatasync"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_failed(node.addr) != Some(1) {
        assert!(Instant::now() < deadline, "log_failed stayed 0");
        std::thread::sleep(Duration::from_millis(50));
    }
    match try_call(node.addr, cmd::set("k", "after")) {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::StorageFailed as u32, "{message}")
        }
        other => panic!("a write after the failure: {other:?}"),
    }
}

/// With a follower down, every linearizable read's leadership check fails
/// to reach it, and openraft logs a line each time; those lines are
/// limited to one per log statement per 5 s.
#[test]
fn openraft_s_error_lines_are_rate_limited_while_a_node_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = specs(3);
    let log = |id: u64| dir.path().join(format!("node{id}.log"));
    let mut servers: Vec<Option<Server>> = (nodes.iter())
        .map(|n| {
            let (command, data) = command_for(n, &nodes, dir.path(), |p| p.raft, &[]);
            let mut logged = std::process::Command::new("sh");
            logged
                .arg("-c")
                .arg(r#"exec "$0" "$@" 2>"$KVSTORE_TEST_LOG_FILE""#)
                .arg(command.get_program())
                .args(command.get_args())
                .env("KVSTORE_TEST_LOG_FILE", log(n.id));
            Some(Server::spawn(logged, &data))
        })
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    assert_eq!(try_call(leader.addr, cmd::set("k", "v")), Some(Reply::Ok));
    let follower = nodes.iter().position(|n| n.id != leader.id).unwrap();
    servers[follower].take().unwrap().kill9();
    let openraft_lines = || {
        let text = std::fs::read_to_string(log(leader.id)).unwrap_or_default();
        (text.lines())
            .filter(|l| l.contains("openraft") && (l.contains("ERROR") || l.contains("WARN")))
            .count()
    };
    let before = openraft_lines();
    let reads = 200;
    for _ in 0..reads {
        let read = try_call(leader.addr, cmd::get("k"));
        assert_eq!(read, Some(Reply::Value(Some("v".into()))));
    }
    let logged = openraft_lines() - before;
    eprintln!("{reads} reads with a follower down: {logged} openraft lines");
    assert!(logged < 30, "{logged} openraft lines for {reads} reads");
}
