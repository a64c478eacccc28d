//! The Redis-protocol door, driven by a Redis client we did not write (the
//! `redis` crate) against the real binary over TCP: every command with
//! Redis's reply types, pipelining, RESP3, auth, limits, and writes seen by
//! both doors.

mod common;

use common::Server;
use redis::{Commands, Connection, Value};

/// Starts a server with a RESP listener on a free port.
fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--resp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&dir.join("kv.db"), &args)
}

fn connect(server: &Server) -> Connection {
    let addr = server.resp.expect("the server has a RESP listener");
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .expect("connect over RESP")
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

#[test]
fn string_commands_answer_as_redis_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = connect(&server);

    let _: () = c.set("k", "v1").unwrap();
    assert_eq!(
        c.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(c.get::<_, Option<String>>("missing").unwrap(), None);
    assert_eq!(c.strlen::<_, i64>("k").unwrap(), 2);
    assert_eq!(c.strlen::<_, i64>("missing").unwrap(), 0);

    // SET with NX / XX / GET.
    let nx: Option<String> = cmd("SET")
        .arg("k")
        .arg("x")
        .arg("NX")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        nx, None,
        "NX on an existing key stores nothing and answers nil"
    );
    let xx: String = cmd("SET")
        .arg("k")
        .arg("v2")
        .arg("XX")
        .query(&mut c)
        .unwrap();
    assert_eq!(xx, "OK");
    let old: Option<String> = cmd("SET")
        .arg("k")
        .arg("v3")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(old.as_deref(), Some("v2"));
    let old: Option<String> = cmd("SET")
        .arg("fresh")
        .arg("f")
        .arg("NX")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(old, None);
    assert_eq!(c.get::<_, String>("fresh").unwrap(), "f");
    let both = cmd("SET")
        .arg("k")
        .arg("v")
        .arg("NX")
        .arg("XX")
        .query::<Value>(&mut c);
    assert!(both.unwrap_err().to_string().contains("syntax error"));
    let expiry = cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg("10")
        .query::<Value>(&mut c);
    assert!(
        expiry.unwrap_err().to_string().contains("do not expire"),
        "expiry options are refused clearly"
    );
    assert_eq!(
        c.get::<_, String>("k").unwrap(),
        "v3",
        "a refused SET changes nothing"
    );

    // SETNX, GETSET, GETDEL.
    assert!(!c.set_nx::<_, _, bool>("k", "x").unwrap());
    assert!(c.set_nx::<_, _, bool>("nx", "1").unwrap());
    assert_eq!(c.getset::<_, _, String>("k", "v4").unwrap(), "v3");
    assert_eq!(
        c.get_del::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v4")
    );
    assert_eq!(c.get_del::<_, Option<String>>("k").unwrap(), None);

    // APPEND.
    assert_eq!(c.append::<_, _, i64>("log", "ab").unwrap(), 2);
    assert_eq!(c.append::<_, _, i64>("log", "cde").unwrap(), 5);
    assert_eq!(c.get::<_, String>("log").unwrap(), "abcde");

    // INCR family.
    assert_eq!(c.incr::<_, _, i64>("n", 1).unwrap(), 1);
    assert_eq!(c.incr::<_, _, i64>("n", 41).unwrap(), 42);
    assert_eq!(c.decr::<_, _, i64>("n", 2).unwrap(), 40);
    assert_eq!(cmd("DECR").arg("n").query::<i64>(&mut c).unwrap(), 39);
    assert_eq!(cmd("INCR").arg("n").query::<i64>(&mut c).unwrap(), 40);
    assert_eq!(c.get::<_, String>("n").unwrap(), "40");
    let not_int = c.incr::<_, _, i64>("log", 1).unwrap_err().to_string();
    assert!(not_int.contains("not an integer"), "{not_int}");
    let _: () = c.set("big", i64::MAX).unwrap();
    let overflow = c.incr::<_, _, i64>("big", 1).unwrap_err().to_string();
    assert!(overflow.contains("overflow"), "{overflow}");
    let bad_arg = cmd("INCRBY")
        .arg("n")
        .arg("1.5")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(bad_arg.to_string().contains("not an integer"));

    // MSET / MGET.
    let _: () = c.mset(&[("a", "1"), ("b", "2"), ("c", "3")]).unwrap();
    let values: Vec<Option<String>> = c.mget(&["a", "nope", "c"]).unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("3".into())]);
    let odd = cmd("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .query::<Value>(&mut c);
    assert!(odd
        .unwrap_err()
        .to_string()
        .contains("wrong number of arguments"));
}

#[test]
fn keyspace_commands_walk_and_count_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = connect(&server);

    let pairs: Vec<(String, String)> = (0..250)
        .map(|i| (format!("user:{i:03}"), format!("v{i}")))
        .chain((0..50).map(|i| (format!("item:{i:02}"), "x".to_string())))
        .collect();
    let _: () = c.mset(&pairs).unwrap();
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 300);

    assert_eq!(
        c.exists::<_, i64>(&["user:001", "nope", "user:001"])
            .unwrap(),
        2
    );
    assert_eq!(
        cmd("TYPE").arg("user:001").query::<String>(&mut c).unwrap(),
        "string"
    );
    assert_eq!(
        cmd("TYPE").arg("nope").query::<String>(&mut c).unwrap(),
        "none"
    );
    assert_eq!(cmd("TTL").arg("user:001").query::<i64>(&mut c).unwrap(), -1);
    assert_eq!(cmd("PTTL").arg("nope").query::<i64>(&mut c).unwrap(), -2);

    let mut keys: Vec<String> = c.keys("item:*").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 50);
    assert_eq!(keys[0], "item:00");
    let keys: Vec<String> = c.keys("user:1?[05]").unwrap();
    assert_eq!(keys.len(), 20, "{keys:?}");

    // SCAN through the redis crate's iterator: every key exactly once.
    let scanned: Vec<String> = c
        .scan_match::<_, String>("user:*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(scanned.len(), 250);
    let mut unique = scanned.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 250, "no key twice");
    // And by hand, with COUNT: the cursor comes back as 0 at the end.
    let mut cursor = "0".to_string();
    let mut seen = 0;
    let mut calls = 0;
    loop {
        let (next, page): (String, Vec<String>) = cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(100)
            .query(&mut c)
            .unwrap();
        seen += page.len();
        calls += 1;
        if next == "0" {
            break;
        }
        assert!(calls < 10, "SCAN must finish");
        cursor = next;
    }
    assert_eq!((seen, calls), (300, 3));
    let bad = cmd("SCAN").arg("987654").query::<Value>(&mut c);
    assert!(bad.unwrap_err().to_string().contains("invalid cursor"));

    // DEL of many keys is one atomic record; it counts what existed.
    assert_eq!(
        c.del::<_, i64>(&["user:000", "user:001", "nope"]).unwrap(),
        2
    );
    assert_eq!(c.del::<_, i64>("user:002").unwrap(), 1);
    assert_eq!(
        cmd("UNLINK").arg("user:003").query::<i64>(&mut c).unwrap(),
        1
    );
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 296);

    let ok: String = cmd("FLUSHDB").query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 0);
    let _: () = c.set("after", "1").unwrap();
    let ok: String = cmd("FLUSHALL").arg("ASYNC").query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(c.keys::<_, Vec<String>>("*").unwrap().len(), 0);
}

#[test]
fn connection_and_server_commands_satisfy_clients_and_tools() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = connect(&server);

    assert_eq!(cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
    assert_eq!(cmd("PING").arg("hi").query::<String>(&mut c).unwrap(), "hi");
    assert_eq!(cmd("ECHO").arg("e").query::<String>(&mut c).unwrap(), "e");
    assert_eq!(cmd("SELECT").arg(0).query::<String>(&mut c).unwrap(), "OK");
    let other = cmd("SELECT").arg(1).query::<Value>(&mut c);
    assert!(other.unwrap_err().to_string().contains("out of range"));

    let id: i64 = cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert!(id > 0);
    assert_eq!(
        cmd("CLIENT")
            .arg("GETNAME")
            .query::<Option<String>>(&mut c)
            .unwrap(),
        None
    );
    let _: () = cmd("CLIENT")
        .arg("SETNAME")
        .arg("worker-1")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        cmd("CLIENT")
            .arg("GETNAME")
            .query::<Option<String>>(&mut c)
            .unwrap()
            .as_deref(),
        Some("worker-1")
    );

    let _: () = c.set("k", "v").unwrap();
    let info: String = cmd("INFO").query(&mut c).unwrap();
    for field in [
        "# Server",
        "redis_version:",
        "process_id:",
        "# Clients",
        "connected_clients:",
        "# Persistence",
        "aof_enabled:1",
        "kvstore_sync:always",
        "# Stats",
        "total_commands_processed:",
        "# Keyspace",
        "db0:keys=1,",
    ] {
        assert!(info.contains(field), "INFO lacks {field:?}:\n{info}");
    }
    let records = info
        .lines()
        .find_map(|l| l.strip_prefix("kvstore_log_records:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap();
    assert!(records >= 1, "the Set above was logged");
    let keyspace: String = cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(!keyspace.contains("# Server"));

    let config: Vec<String> = cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query(&mut c)
        .unwrap();
    assert_eq!(config, vec!["appendonly", "yes", "appendfsync", "always"]);
    let save: Vec<String> = cmd("CONFIG").arg("GET").arg("save").query(&mut c).unwrap();
    assert_eq!(save, vec!["save", ""]);
    let set = cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("")
        .query::<Value>(&mut c);
    assert!(set.unwrap_err().to_string().contains("not supported"));

    let count: i64 = cmd("COMMAND").arg("COUNT").query(&mut c).unwrap();
    let all: Vec<Value> = cmd("COMMAND").query(&mut c).unwrap();
    assert_eq!(all.len() as i64, count);
    let docs: Value = cmd("COMMAND").arg("DOCS").arg("get").query(&mut c).unwrap();
    assert!(format!("{docs:?}").contains("Returns the string value of a key"));

    let unknown = cmd("LPUSH").arg("l").arg("x").query::<Value>(&mut c);
    let message = unknown.unwrap_err().to_string();
    assert!(message.contains("unknown command 'LPUSH'"), "{message}");
    let arity = cmd("GET").query::<Value>(&mut c);
    assert!(arity
        .unwrap_err()
        .to_string()
        .contains("wrong number of arguments for 'get'"));
    // The connection is still good after errors.
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
}

#[test]
fn hello_3_switches_to_resp3() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let addr = server.resp.unwrap();
    let client = redis::Client::open(format!("redis://{addr}/?protocol=resp3")).unwrap();
    let mut c = client.get_connection().unwrap();
    let hello: Value = cmd("HELLO").arg(3).query(&mut c).unwrap();
    match hello {
        Value::Map(fields) => {
            let proto = fields
                .iter()
                .find(|(k, _)| *k == Value::BulkString(b"proto".to_vec()))
                .map(|(_, v)| v.clone());
            assert_eq!(proto, Some(Value::Int(3)));
        }
        other => panic!("HELLO 3 should answer a map, got {other:?}"),
    }
    // RESP3 nil and map replies.
    assert_eq!(
        cmd("GET").arg("missing").query::<Value>(&mut c).unwrap(),
        Value::Nil
    );
    let config: Value = cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query(&mut c)
        .unwrap();
    assert!(matches!(config, Value::Map(_)), "{config:?}");
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    let bad = cmd("HELLO").arg(4).query::<Value>(&mut c);
    assert!(bad.unwrap_err().to_string().contains("NOPROTO"));
}

#[test]
fn a_pipeline_reads_its_own_writes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = connect(&server);
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i);
        pipe.cmd("INCR").arg(format!("p{i}"));
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let replies: Vec<Value> = pipe.query(&mut c).unwrap();
    assert_eq!(replies.len(), 600);
    for i in 0..200 {
        assert_eq!(replies[3 * i], Value::Okay);
        assert_eq!(replies[3 * i + 1], Value::Int(i as i64 + 1));
        assert_eq!(
            replies[3 * i + 2],
            Value::BulkString((i + 1).to_string().into_bytes()),
            "GET after SET and INCR in one pipeline sees both"
        );
    }
}

#[test]
fn concurrent_increments_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = connect(&server);
                for _ in 0..250 {
                    let _: i64 = c.incr("counter", 1).unwrap();
                    let _: i64 = c.append("trail", "x").unwrap();
                }
            });
        }
    });
    let mut c = connect(&server);
    assert_eq!(c.get::<_, i64>("counter").unwrap(), 1000);
    assert_eq!(c.strlen::<_, i64>("trail").unwrap(), 1000);
}

#[test]
fn both_doors_see_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut c = connect(&server);
    let native = kvstore_client::BlockingClient::connect(server.addr.to_string()).unwrap();

    let _: () = c.set("from-resp", "r").unwrap();
    assert_eq!(native.get("from-resp").unwrap().as_deref(), Some(&b"r"[..]));
    native.set("from-native", "n").unwrap();
    assert_eq!(c.get::<_, String>("from-native").unwrap(), "n");
    assert_eq!(native.incr("count", 5).unwrap(), 5);
    assert_eq!(c.incr::<_, _, i64>("count", 1).unwrap(), 6);
    assert_eq!(native.get_del("count").unwrap().as_deref(), Some(&b"6"[..]));
    assert_eq!(native.append("from-resp", "+").unwrap(), 2);
    assert!(native
        .set_if("from-resp", "x", kvstore_client::Condition::Present)
        .unwrap());
    assert!(!native
        .set_if("from-resp", "y", kvstore_client::Condition::Absent)
        .unwrap());
    assert_eq!(
        native.get_set("from-resp", "z").unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(native.delete_many(["from-resp", "nope"]).unwrap(), 1);
    native.flush().unwrap();
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 0);
}

#[test]
fn auth_guards_the_resp_door_with_the_same_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(
        {
            let mut command = Server::command(
                "127.0.0.1:0",
                &dir.path().join("kv.db"),
                &["--resp-listen", "127.0.0.1:0"],
            );
            command.env(kvstore::config::AUTH_TOKEN_ENV, "s3cret-token");
            command
        },
        &dir.path().join("kv.db"),
    );
    let addr = server.resp.unwrap();
    let anonymous = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut c = anonymous.get_connection().unwrap();
    let refused = c.get::<_, Option<String>>("k").unwrap_err();
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
    let wrong = cmd("AUTH").arg("nope").query::<Value>(&mut c).unwrap_err();
    assert!(wrong.to_string().contains("WRONGPASS"), "{wrong}");
    let ok: String = cmd("AUTH").arg("s3cret-token").query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    let _: () = c.set("k", "v").unwrap();

    // The URL form: the client sends AUTH itself.
    let with_password = redis::Client::open(format!("redis://:s3cret-token@{addr}/")).unwrap();
    let mut c = with_password.get_connection().unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    // HELLO with AUTH in one step.
    let mut c = anonymous.get_connection().unwrap();
    let hello: Value = cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg("default")
        .arg("s3cret-token")
        .query(&mut c)
        .unwrap();
    assert!(matches!(hello, Value::Array(_)), "{hello:?}");
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
}
