//! `scripts/local-cluster.sh`: a three-node cluster started, used through
//! the CLI, its leader killed, used again, and stopped with no process left.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn script(dir: &Path, port: u16, args: &[&str]) -> Output {
    script_with(dir, port, args, false)
}

/// The script, with `KVSTORE_CLUSTER_TLS=1` when `tls`.
fn script_with(dir: &Path, port: u16, args: &[&str], tls: bool) -> Output {
    let bin_dir = common::cli_path().parent().unwrap().to_path_buf();
    Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/local-cluster.sh"
        ))
        .args(args)
        .env("KVSTORE_CLUSTER_DIR", dir)
        .env("KVSTORE_CLUSTER_PORT", port.to_string())
        .env("KVSTORE_BIN_DIR", &bin_dir)
        .env("RUST_LOG", "warn")
        .env("KVSTORE_CLUSTER_TLS", if tls { "1" } else { "0" })
        .env_remove("KVSTORE_ADDR")
        .output()
        .expect("run local-cluster.sh")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The `kvstore` CLI against every node of the cluster.
fn kvstore(addrs: &str, args: &[&str]) -> Output {
    Command::new(common::cli_path())
        .arg("--addr")
        .arg(addrs)
        .args(args)
        .output()
        .unwrap()
}

/// Whether the process runs (a zombie waiting for a parent that does not
/// reap it, as in some containers, has stopped).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// Stops the script's nodes when the test ends, also when it fails half-way
/// (a failed `start` had left the nodes that did start running).
struct StopOnDrop<'a>(&'a Path, u16);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        script(self.0, self.1, &["stop"]);
    }
}

#[test]
fn the_local_cluster_script_survives_its_leader_and_stops_cleanly() {
    survives_its_leader_and_stops_cleanly(false);
}

#[test]
fn the_local_cluster_script_runs_the_raft_ports_over_mutual_tls() {
    survives_its_leader_and_stops_cleanly(true);
}

fn survives_its_leader_and_stops_cleanly(tls: bool) {
    // The server binary sits beside the CLI; the script uses both.
    assert!(common::cli_path().with_file_name("kvstore-server").exists());
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    // Node I uses PORT+I, PORT+100+I and PORT+200+I.
    let port = common::free_port_base(3);
    let _stop = StopOnDrop(&cluster, port);
    let started = ok(script_with(&cluster, port, &["start", "3"], tls));
    assert!(started.contains("cluster initialized"), "{started}");
    assert_eq!(started.matches(", TLS,").count(), if tls { 3 } else { 0 });
    let addrs = ok(script(&cluster, port, &["addrs"])).trim().to_string();
    assert_eq!(addrs.split(',').count(), 3);

    assert!(kvstore(&addrs, &["set", "greeting", "hello"])
        .status
        .success());
    let status = ok(kvstore(&addrs, &["--output", "json", "cluster", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    let pids: Vec<String> = nodes.iter().map(|n| n["pid"].to_string()).collect();
    let leader = nodes
        .iter()
        .find(|n| n["role"] == "leader")
        .expect("a leader");
    let leader_id = leader["id"].to_string();

    let killed = ok(script(&cluster, port, &["kill", &leader_id]));
    assert!(killed.contains("SIGKILL"), "{killed}");
    let out = kvstore(&addrs, &["get", "greeting"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello",
        "{out:?}"
    );
    assert!(kvstore(&addrs, &["set", "after", "failover"])
        .status
        .success());

    // `start` brings the killed node back; `stop` ends all three.
    let restarted = ok(script(&cluster, port, &["start"]));
    assert!(restarted.contains("already running"), "{restarted}");
    let table = ok(script(&cluster, port, &["status"]));
    assert_eq!(table.lines().count(), 4, "{table}");
    let all_pids: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    ok(script(&cluster, port, &["stop"]));
    for pid in pids.iter().chain(&all_pids) {
        assert!(!alive(pid), "process {pid} still running after stop");
    }
}

#[test]
fn the_local_cluster_script_starts_a_sharded_cluster_for_redis_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let port = common::free_port_base(3);
    let _stop = StopOnDrop(&cluster, port);
    let started = ok(script(&cluster, port, &["start", "3", "--groups", "3"]));
    assert!(started.contains("sharded: 3 groups"), "{started}");
    let addrs = ok(script(&cluster, port, &["addrs"])).trim().to_string();
    let status = ok(kvstore(&addrs, &["--output", "json", "cluster", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let slots: Vec<String> = (status["groups"].as_array().unwrap().iter())
        .map(|g| g["slots"].to_string())
        .collect();
    assert_eq!(
        slots,
        [r#"["0-5460"]"#, r#"["5461-10921"]"#, r#"["10922-16383"]"#],
        "{status}"
    );
    // `start` waits until every node has recorded its RESP address (and
    // every group has a leader).
    let resp: Vec<String> = (status["nodes"].as_array().unwrap().iter())
        .map(|n| n["resp_addr"].to_string())
        .collect();
    let expected: Vec<String> = (1..=3)
        .map(|i| format!("\"127.0.0.1:{}\"", port + 200 + i))
        .collect();
    assert_eq!(resp, expected, "{status}");

    // Keys of every group, with redis-cli -c on node 1 and the CLI.
    let resp_port = (port + 201).to_string();
    let redis_cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &resp_port])
            .args(args)
            .output()
            .expect("run redis-cli (redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Slots 0, 7365 and 12182: groups 1, 2 and 3. A group's leadership
    // may still move just after the start (the script's wait saw a leader
    // of each group from every node, but a loaded machine can time out a
    // heartbeat): a write that meets the election is sent again, for up
    // to 10 s, as a client of any Raft store would.
    let set = |key: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let reply = redis_cli(&["SET", key, key]);
            let electing = reply.ends_with("no leader known yet");
            if !electing || std::time::Instant::now() > deadline {
                return reply;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    for key in ["{06S}a", "{user}b", "{foo}c"] {
        assert_eq!(set(key), "OK", "{key}");
        let out = kvstore(&addrs, &["get", key]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), key, "{out:?}");
    }
    assert!(kvstore(&addrs, &["set", "{foo}d", "shell"])
        .status
        .success());
    assert_eq!(redis_cli(&["GET", "{foo}d"]), "shell");
}
