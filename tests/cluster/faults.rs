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
