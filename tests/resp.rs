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
        .arg("0")
        .query::<Value>(&mut c);
    assert!(expiry
        .unwrap_err()
        .to_string()
        .contains("invalid expire time"));
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

    // GETRANGE and SUBSTR, Redis's documented examples.
    let _: () = c.set("mykey", "This is a string").unwrap();
    let range = |name: &str, start: i64, end: i64, c: &mut Connection| -> String {
        cmd(name).arg("mykey").arg(start).arg(end).query(c).unwrap()
    };
    assert_eq!(range("GETRANGE", 0, 3, &mut c), "This");
    assert_eq!(range("GETRANGE", -3, -1, &mut c), "ing");
    assert_eq!(range("GETRANGE", 0, -1, &mut c), "This is a string");
    assert_eq!(range("SUBSTR", 10, 100, &mut c), "string");
    let missing: String = cmd("GETRANGE")
        .arg("nope")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(missing, "");
    let bad = cmd("GETRANGE")
        .arg("mykey")
        .arg("a")
        .arg(1)
        .query::<String>(&mut c);
    assert!(bad.unwrap_err().to_string().contains("not an integer"));

    // OBJECT ENCODING as Redis 7 answers it; FREQ with Redis's error.
    let _: () = c.set("long", "x".repeat(45)).unwrap();
    let encoding = |key: &str, c: &mut Connection| -> Option<String> {
        cmd("OBJECT").arg("ENCODING").arg(key).query(c).unwrap()
    };
    assert_eq!(encoding("n", &mut c).as_deref(), Some("int"));
    assert_eq!(encoding("mykey", &mut c).as_deref(), Some("embstr"));
    assert_eq!(encoding("long", &mut c).as_deref(), Some("raw"));
    assert_eq!(encoding("nope", &mut c), None);
    let freq = cmd("OBJECT").arg("FREQ").arg("n").query::<i64>(&mut c);
    assert!(freq.unwrap_err().to_string().contains("LFU"));
    assert_eq!(
        cmd("TOUCH")
            .arg("n")
            .arg("nope")
            .arg("long")
            .query::<i64>(&mut c)
            .unwrap(),
        2
    );
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
        "redis_mode:standalone",
        "# Cluster",
        "cluster_enabled:0",
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

/// A key over the key limit is refused the same way by every read, as the
/// native `Get` refuses it: the reads go through one place (`cmd`).
#[test]
fn every_read_refuses_a_key_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-key", "16"]);
    let mut c = connect(&server);
    let long = "k".repeat(17);
    let _: () = c.set("short", "v").unwrap();
    for (name, args) in [
        ("GET", vec![long.as_str()]),
        ("STRLEN", vec![long.as_str()]),
        ("EXISTS", vec!["short", long.as_str()]),
        ("TYPE", vec![long.as_str()]),
        ("TTL", vec![long.as_str()]),
        ("PTTL", vec![long.as_str()]),
        ("MGET", vec!["short", long.as_str()]),
        ("KEYS", vec![&format!("{long}*")]),
        ("SCAN", vec!["0", "MATCH", &format!("{long}*")]),
    ] {
        let err = cmd(name).arg(&args).query::<Value>(&mut c).expect_err(name);
        assert!(
            err.to_string()
                .contains("key of 17 bytes exceeds the limit of 16 bytes"),
            "{name}: {err}"
        );
    }
    // Keys within the limit are still served.
    assert_eq!(c.strlen::<_, i64>("short").unwrap(), 1);
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

/// A raw RESP connection: bytes in, bytes out, for what a client library
/// would never send.
fn raw(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends `request` and reads until the server closes the connection (or
/// `expect` bytes have come), returning what it sent.
fn exchange(stream: &mut std::net::TcpStream, request: &[u8], expect: usize) -> String {
    use std::io::{Read, Write};
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < expect {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closes the connection within the socket's 10 s read
/// timeout (a timeout is not a close).
fn closed(stream: &mut std::net::TcpStream) -> bool {
    use std::io::{ErrorKind, Read};
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn inline_commands_work_as_from_telnet() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut s = raw(server.resp.unwrap());
    let reply = exchange(
        &mut s,
        b"SET greeting \"hello world\"\r\nGET greeting\r\nPING\nEXISTS greeting nope\r\n",
        34, // the four replies below
    );
    assert_eq!(reply, "+OK\r\n$11\r\nhello world\r\n+PONG\r\n:1\r\n");
}

#[test]
fn length_claims_are_refused_before_the_bytes_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let addr = server.resp.unwrap();
    let mut bystander = connect(&server);
    let _: () = bystander.set("k", "v").unwrap();
    for (request, error) in [
        // A 2 GiB bulk string: refused on its header, nothing buffered.
        (
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483647\r\n"[..],
            "invalid bulk length",
        ),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n:5\r\n", "expected '$'"),
        (b"SET k \"unterminated\r\n", "unbalanced quotes"),
    ] {
        let mut s = raw(addr);
        let reply = exchange(&mut s, request, usize::MAX);
        assert!(
            reply.starts_with("-ERR Protocol error: ") && reply.contains(error),
            "{request:?}: {reply:?}"
        );
        assert!(closed(&mut s), "a protocol error closes the connection");
    }
    // Requests over the frame limit in total are refused too.
    let dir2 = tempfile::tempdir().unwrap();
    let small = start(
        dir2.path(),
        &[
            "--max-frame",
            "4096",
            "--max-key",
            "1024",
            "--max-value",
            "2048",
        ],
    );
    let mut s = raw(small.resp.unwrap());
    let mut request = b"*7\r\n$4\r\nMSET\r\n".to_vec();
    for key in ["a", "b"] {
        request.extend_from_slice(format!("$1\r\n{key}\r\n$2000\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'x', 2000));
        request.extend_from_slice(b"\r\n");
    }
    // The third value's header takes the request past 4,096 bytes.
    request.extend_from_slice(b"$1\r\nc\r\n$2000\r\n");
    let reply = exchange(&mut s, &request, usize::MAX);
    assert!(
        reply.contains("request of more than 4096 bytes"),
        "{reply:?}"
    );
    // A value over the value limit is a bulk string over the bulk limit.
    let mut s = raw(small.resp.unwrap());
    let reply = exchange(
        &mut s,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2049\r\n",
        usize::MAX,
    );
    assert!(reply.contains("invalid bulk length"), "{reply:?}");
    // Everyone else is still served.
    assert_eq!(bystander.get::<_, String>("k").unwrap(), "v");
}

#[test]
fn before_login_only_small_requests_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Server::command(
        "127.0.0.1:0",
        &dir.path().join("kv.db"),
        &["--resp-listen", "127.0.0.1:0"],
    );
    command.env(kvstore::config::AUTH_TOKEN_ENV, "s3cret-token");
    let server = Server::spawn(command, &dir.path().join("kv.db"));
    let mut s = raw(server.resp.unwrap());
    let reply = exchange(
        &mut s,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n",
        usize::MAX,
    );
    assert!(reply.contains("Protocol error"), "{reply:?}");
    assert!(closed(&mut s));
}

#[test]
fn one_connection_limit_covers_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-connections", "2"]);
    // One connection: the client's first write also asks for a session.
    let native = kvstore_client::BlockingClient::from_builder(
        kvstore_client::Client::builder()
            .addr(server.addr.to_string())
            .connections(1),
    )
    .unwrap();
    native.set("k", "v").unwrap();
    let mut first = connect(&server);
    assert_eq!(first.get::<_, String>("k").unwrap(), "v");
    let mut third = raw(server.resp.unwrap());
    let reply = exchange(&mut third, b"PING\r\n", usize::MAX);
    assert_eq!(reply, "-ERR max number of clients reached\r\n");
    let info: String = cmd("INFO").arg("stats").query(&mut first).unwrap();
    assert!(info.contains("rejected_connections:1"), "{info}");
}

#[test]
fn writes_acknowledged_over_resp_survive_kill_9() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let stop = AtomicBool::new(false);
    // Each writer records what the server acknowledged before it died.
    let acked: Vec<(usize, i64)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (server, stop) = (&server, &stop);
                s.spawn(move || {
                    let mut c = connect(server);
                    let (mut sets, mut incrs) = (0, 0);
                    // Bounded: stops at the kill, or after 20,000 writes.
                    for i in 0..10_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let set: redis::RedisResult<()> = c.set(format!("w{w}:{i}"), i);
                        if set.is_err() {
                            break;
                        }
                        sets = i + 1;
                        match c.incr::<_, _, i64>(format!("count{w}"), 1) {
                            Ok(n) => incrs = n,
                            Err(_) => break,
                        }
                    }
                    (sets, incrs)
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let pid = server.child.id();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    drop(server);
    let restarted = start(dir.path(), &[]);
    let mut c = connect(&restarted);
    let total: usize = acked.iter().map(|(sets, _)| sets).sum();
    assert!(total > 0, "some writes were acknowledged before the kill");
    for (w, (sets, incrs)) in acked.into_iter().enumerate() {
        for i in 0..sets {
            let value: Option<usize> = c.get(format!("w{w}:{i}")).unwrap();
            assert_eq!(value, Some(i), "acknowledged SET w{w}:{i} was lost");
        }
        let count: i64 = c.get(format!("count{w}")).unwrap();
        // The increment in flight at the kill may or may not have landed.
        assert!(
            count == incrs || count == incrs + 1,
            "counter {w}: {count} after {incrs} acknowledged increments"
        );
    }
}

/// Runs a tool from Debian's `redis-tools` (installed by `.ci/run`).
fn redis_tool(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): install Debian's redis-tools (.ci/run does)")
        });
    assert!(out.status.success(), "{tool} {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_kvstore() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let port = server.resp.unwrap().port().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", &port];
        all.extend_from_slice(args);
        redis_tool("redis-cli", &all)
    };
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&["SET", "session", "s", "EX", "60"]), "OK\n");
    assert_eq!(cli(&["TTL", "session"]), "60\n");
    assert_eq!(cli(&["PERSIST", "session"]), "1\n");
    assert_eq!(cli(&["TTL", "session"]), "-1\n");
    assert_eq!(cli(&["DEL", "session"]), "1\n");
    for i in 0..30 {
        cli(&["SET", &format!("user:{i}"), "x"]);
    }
    let info = cli(&["INFO"]);
    assert!(info.contains("db0:keys=31,"), "{info}");
    // --scan walks the whole keyspace with SCAN.
    let mut scanned: Vec<String> = cli(&["--scan", "--pattern", "user:*"])
        .lines()
        .map(str::to_owned)
        .collect();
    scanned.sort();
    assert_eq!(scanned.len(), 30, "{scanned:?}");
    let first_page = cli(&["SCAN", "0", "COUNT", "5"]);
    assert_eq!(
        first_page.lines().count(),
        6,
        "a cursor and five keys: {first_page}"
    );

    // redis-benchmark: no error replies (-e prints them), both tests done.
    let bench = redis_tool(
        "redis-benchmark",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "10",
            "-d",
            "100",
            "-q",
            "-e",
        ],
    );
    assert!(!bench.to_lowercase().contains("error"), "{bench}");
    for test in ["SET:", "GET:"] {
        assert!(bench.contains(test), "{bench}");
    }
}

#[test]
fn slow_and_silent_resp_clients_are_closed_by_the_shared_timeouts() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &["--read-timeout-ms", "300", "--idle-timeout-ms", "600"],
    );
    let addr = server.resp.unwrap();
    // A request that never completes (slowloris) is cut after the read
    // timeout, well before the 10 s socket timeout of `closed`.
    let mut slow = raw(addr);
    slow.write_all(b"*2\r\n$3\r\nGET\r\n$5\r\nhel").unwrap();
    assert!(closed(&mut slow));
    // A client that sends nothing is cut after the idle timeout.
    let mut silent = raw(addr);
    assert_eq!(exchange(&mut silent, b"PING\r\n", 7), "+PONG\r\n");
    assert!(closed(&mut silent));
    // A client that keeps talking stays.
    let mut c = connect(&server);
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _: String = cmd("PING").query(&mut c).unwrap();
    }
}

/// A real redis-server on a free port, in cluster mode or not (`CLUSTER
/// KEYSLOT` needs no slots assigned), killed when dropped.
struct RedisNode {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisNode {
    fn start(cluster: bool) -> RedisNode {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port_base(1) + 1;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                if cluster { "yes" } else { "no" },
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("cannot run redis-server: install Debian's redis-server (.ci/run does)");
        RedisNode {
            child,
            port,
            _dir: dir,
        }
    }

    fn connect(&self) -> Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match client.get_connection() {
                Ok(c) => return c,
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not come up: {e}"
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cluster_keyslot_agrees_with_redis_for_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut ours = connect(&server);
    let redis = RedisNode::start(true);
    let mut theirs = redis.connect();
    // Keys of bytes drawn mostly from braces, so that hash tags of every
    // shape come up: empty, unclosed, nested, several, binary.
    let alphabet = b"{}{}ab:\x00\xff";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let keyslot = |c: &mut Connection, key: &[u8]| -> i64 {
        cmd("CLUSTER").arg("KEYSLOT").arg(key).query(c).unwrap()
    };
    for _ in 0..2000 {
        let len = (next() % 12) as usize;
        let key: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        assert_eq!(
            keyslot(&mut ours, &key),
            keyslot(&mut theirs, &key),
            "{:?}",
            String::from_utf8_lossy(&key)
        );
    }
    let err = cmd("CLUSTER")
        .arg("NODES-OF-MARS")
        .query::<Value>(&mut ours)
        .unwrap_err();
    assert!(err.to_string().contains("unknown subcommand"), "{err}");
}

/// `words` as one command; its reply, or its error as text.
fn run(c: &mut Connection, words: &[&str]) -> Result<Value, String> {
    let mut command = cmd(words[0]);
    command.arg(&words[1..]);
    command.query::<Value>(c).map_err(|e| e.to_string())
}

/// Runs each command of `script` on kvstore (`ours`) and on a real
/// redis-server (`theirs`): the replies and error texts must be the same.
fn same_as_redis(ours: &mut Connection, theirs: &mut Connection, script: &[&[&str]]) {
    for words in script {
        assert_eq!(run(ours, words), run(theirs, words), "{words:?}");
    }
}

/// The expiry commands, run one after the other on kvstore and on a real
/// redis-server 7, answer alike: replies, error texts, and the deadlines
/// they leave (far-off absolute times, so both read the same figures).
#[test]
fn expiry_commands_answer_as_redis_does() {
    const AT_S: &str = "4102444800"; // 2100-01-01T00:00:00Z
    const AT_MS: &str = "4102444800000";
    let script: &[&[&str]] = &[
        &["SET", "k", "v", "EX", "100"],
        &["TTL", "k"],
        &["SET", "k", "v", "PXAT", AT_MS],
        &["PEXPIRETIME", "k"],
        &["EXPIRETIME", "k"],
        &["SET", "k", "v2", "KEEPTTL"],
        &["PEXPIRETIME", "k"],
        &["SET", "k", "v3"],
        &["TTL", "k"],
        &["SET", "k", "v", "EX", "0"],
        &["SET", "k", "v", "PX", "-5"],
        &["SET", "k", "v", "EX", "10", "PX", "10"],
        &["SET", "k", "v", "KEEPTTL", "EX", "10"],
        &["SET", "k", "v", "EX", "abc"],
        &["SET", "k", "v", "EX", "9223372036854775807"],
        &["SET", "k", "v", "NX", "EX", "10"],
        &["SET", "k", "v", "XX", "GET", "EXAT", AT_S],
        &["EXPIRETIME", "k"],
        &["SETEX", "s", "100", "v"],
        &["TTL", "s"],
        &["SETEX", "s", "0", "v"],
        &["PSETEX", "s", "-1", "v"],
        &["SETEX", "s", "x", "v"],
        &["GETEX", "s", "PERSIST"],
        &["TTL", "s"],
        &["GETEX", "s", "EXAT", AT_S],
        &["PEXPIRETIME", "s"],
        &["GETEX", "s", "EX", "10", "PERSIST"],
        &["GETEX", "s", "EX", "0"],
        &["GETEX", "missing", "EX", "10"],
        &["GETEX", "s"],
        &["GETEX", "s", "PXAT", "1"],
        &["EXISTS", "s"],
        &["SET", "e", "v"],
        &["EXPIRE", "e", "100", "XX"],
        &["EXPIRE", "e", "100", "GT"],
        &["EXPIRE", "e", "100", "XX", "LT"],
        &["EXPIRE", "e", "100", "NX"],
        &["EXPIRE", "e", "50", "NX"],
        &["EXPIRE", "e", "50", "GT"],
        &["EXPIRE", "e", "200", "gt"],
        &["TTL", "e"],
        &["EXPIRE", "e", "100", "LT"],
        &["TTL", "e"],
        &["EXPIRE", "e", "10", "NX", "XX"],
        &["EXPIRE", "e", "10", "GT", "LT"],
        &["EXPIRE", "e", "10", "FOO"],
        &["EXPIRE", "e", "abc"],
        &["EXPIRE", "e", "9223372036854775807"],
        &["EXPIREAT", "e", "9223372036854775807"],
        &["PEXPIRE", "e", "9223372036854775807"],
        &["PEXPIREAT", "e", AT_MS],
        &["PEXPIRETIME", "e"],
        &["EXPIREAT", "e", AT_S, "LT"],
        &["PERSIST", "e"],
        &["PERSIST", "e"],
        &["PERSIST", "missing"],
        &["EXPIRE", "missing", "10"],
        &["TTL", "missing"],
        &["PTTL", "missing"],
        &["EXPIRETIME", "missing"],
        &["PTTL", "e"],
        &["EXPIRETIME", "e"],
        &["EXPIRE", "e", "-1"],
        &["EXISTS", "e"],
        &["SET", "n", "1", "EX", "100"],
        &["INCR", "n"],
        &["APPEND", "n", "0"],
        &["TTL", "n"],
        &["GETSET", "n", "x"],
        &["TTL", "n"],
        &["PEXPIREAT", "n", "-9223372036854775808"],
        &["EXISTS", "n"],
        &["EXPIRETIME"],
        &["SETEX", "s", "10"],
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let redis = RedisNode::start(false);
    let mut ours = connect(&server);
    let mut theirs = redis.connect();
    same_as_redis(&mut ours, &mut theirs, script);
    // A key whose time passes is gone for every read at once.
    for c in [&mut ours, &mut theirs] {
        assert_eq!(run(c, &["SET", "p", "v", "PX", "1"]), Ok(Value::Okay));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    for words in [
        &["GET", "p"][..],
        &["EXISTS", "p"],
        &["TTL", "p"],
        &["KEYS", "p"],
    ] {
        assert_eq!(run(&mut ours, words), run(&mut theirs, words), "{words:?}");
    }
    // Left: `k` with a deadline, and one without.
    let _: () = ours.set("plain", "v").unwrap();
    let info: String = cmd("INFO").arg("keyspace").query(&mut ours).unwrap();
    assert!(info.contains("db0:keys=2,expires=1,avg_ttl=0"), "{info}");
}

/// The string and keyspace commands that change data, side by side with a
/// real redis-server 7 as `expiry_commands_answer_as_redis_does` does.
#[test]
fn data_changing_string_commands_answer_as_redis_does() {
    let script: &[&[&str]] = &[
        &["SETRANGE", "r", "0", ""],
        &["EXISTS", "r"],
        &["SETRANGE", "r", "3", "ab"],
        &["GET", "r"],
        &["SETRANGE", "r", "1", "xyz"],
        &["GET", "r"],
        &["SETRANGE", "r", "-1", "x"],
        &["SETRANGE", "r", "x", "x"],
        &["SETRANGE", "r", "2", ""],
        &["SET", "t", "hello", "EX", "100"],
        &["SETRANGE", "t", "0", "J"],
        &["TTL", "t"],
        &["INCRBYFLOAT", "f", "10.5"],
        &["INCRBYFLOAT", "f", "0.1"],
        &["INCRBYFLOAT", "f", "-5"],
        &["INCRBYFLOAT", "f", "abc"],
        &["INCRBYFLOAT", "f", "0.4"],
        &["INCRBYFLOAT", "f", "inf"],
        &["INCRBYFLOAT", "t", "1"],
        &["SET", "n", "3", "EX", "100"],
        &["INCRBYFLOAT", "n", "1.5"],
        &["TTL", "n"],
        &["INCRBYFLOAT", "m", " 1"],
        &["MSETNX", "a", "1", "b", "2"],
        &["MSETNX", "b", "3", "c", "4"],
        &["EXISTS", "c"],
        &["MGET", "a", "b"],
        &["MSETNX", "a"],
        &["MSETNX", "x", "1", "y"],
        &["COPY", "a", "a2"],
        &["COPY", "a", "a2"],
        &["COPY", "b", "a2", "REPLACE"],
        &["GET", "a2"],
        &["COPY", "missing", "z"],
        &["COPY", "t", "t2", "DB", "0"],
        &["TTL", "t2"],
        &["COPY", "a", "a", "REPLACE"],
        &["COPY", "a", "a5", "FOO"],
        &["COPY", "a", "a6", "DB"],
        &["COPY", "a", "a7", "DB", "x"],
        &["RANDOMKEY", "extra"],
        &["RENAME", "nokey", "z"],
        &["RENAMENX", "nokey", "z"],
        &["SET", "rn", "v", "EX", "100"],
        &["RENAME", "rn", "rn2"],
        &["TTL", "rn2"],
        &["EXISTS", "rn"],
        &["RENAME", "rn2", "rn2"],
        &["RENAMENX", "rn2", "a"],
        &["RENAMENX", "rn2", "rn3"],
        &["RENAMENX", "rn3", "rn3"],
        &["RENAME", "rn3", "a"],
        &["GET", "a"],
        &["TTL", "a"],
        &["RENAME", "a"],
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let redis = RedisNode::start(false);
    let mut ours = connect(&server);
    let mut theirs = redis.connect();
    same_as_redis(&mut ours, &mut theirs, script);
    // Where kvstore differs, on purpose (docs/resp.md): databases other
    // than 0, f64 rather than long double, and an ordered key space.
    let other_db = run(&mut ours, &["COPY", "a", "a4", "DB", "1"]).unwrap_err();
    assert!(other_db.contains("DB index is out of range"), "{other_db}");
    assert_eq!(
        run(&mut ours, &["INCRBYFLOAT", "x", "0.1"]),
        Ok(Value::BulkString(b"0.1".to_vec()))
    );
    assert_eq!(
        run(&mut ours, &["INCRBYFLOAT", "x", "0.2"]),
        Ok(Value::BulkString(b"0.30000000000000004".to_vec()))
    );
    let keys: std::collections::BTreeSet<String> = ours.keys("*").unwrap();
    for _ in 0..20 {
        let key: String = cmd("RANDOMKEY").query(&mut ours).unwrap();
        assert!(keys.contains(&key), "{key}");
    }
    let _: () = cmd("FLUSHDB").query(&mut ours).unwrap();
    let none: Option<String> = cmd("RANDOMKEY").query(&mut ours).unwrap();
    assert_eq!(none, None);
}

/// MULTI, EXEC, DISCARD, WATCH and UNWATCH answer as Redis 7 does, side by
/// side with a real redis-server: queued replies, EXEC's array with each
/// command's reply or error in its place, the errors that discard the
/// transaction at EXEC (EXECABORT) and those that do not, and a WATCH
/// that another connection's write makes EXEC answer nil.
#[test]
fn transactions_answer_as_redis_does() {
    let script: &[&[&str]] = &[
        &["MULTI"],
        &["SET", "a", "1"],
        &["INCR", "a"],
        &["GET", "a"],
        &["SET", "t", "x"],
        &["INCR", "t"],
        &["SET", "b", "v", "BADOPT"],
        &["EXISTS", "a"],
        &["PING"],
        &["EXEC"],
        &["GET", "a"],
        &["EXEC"],
        &["DISCARD"],
        &["MULTI"],
        &["MULTI"],
        &["WATCH", "a"],
        &["UNWATCH"],
        &["EXEC"],
        &["MULTI"],
        &["NOSUCHCOMMAND", "x"],
        &["SET", "x", "1"],
        &["EXEC"],
        &["GET", "x"],
        &["MULTI"],
        &["SET", "x"],
        &["EXEC"],
        &["MULTI"],
        &["SET", "x", "2"],
        &["DISCARD"],
        &["GET", "x"],
        &["MULTI"],
        &["EXEC"],
        &["MULTI"],
        &["MGET", "a", "nope", "t"],
        &["EXISTS", "a", "nope", "a"],
        &["DEL", "a", "b", "t"],
        &["MSET", "m1", "1", "m2", "2"],
        &["APPEND", "m1", "0"],
        &["EXPIRE", "m2", "100"],
        &["TTL", "m2"],
        &["EXEC"],
        &["WATCH", "w"],
        &["MULTI"],
        &["SET", "w", "3"],
        &["EXEC"],
        &["GET", "w"],
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let redis = RedisNode::start(false);
    let mut ours = connect(&server);
    let mut theirs = redis.connect();
    // TTL is a read kvstore does not queue (docs/resp.md): left out here.
    let script: Vec<&[&str]> = script.iter().copied().filter(|w| w[0] != "TTL").collect();
    same_as_redis(&mut ours, &mut theirs, &script);

    // Another connection's write to a watched key between WATCH and EXEC
    // makes EXEC answer nil, and nothing of the block is written.
    let mut our_other = connect(&server);
    let mut their_other = redis.connect();
    for (c, other) in [(&mut ours, &mut our_other), (&mut theirs, &mut their_other)] {
        assert_eq!(run(c, &["WATCH", "w", "missing"]), Ok(Value::Okay));
        assert_eq!(run(other, &["SET", "w", "4"]), Ok(Value::Okay));
        assert_eq!(run(c, &["MULTI"]), Ok(Value::Okay));
        run(c, &["SET", "w", "5"]).unwrap();
        run(c, &["SET", "other", "5"]).unwrap();
        assert_eq!(run(c, &["EXEC"]), Ok(Value::Nil));
        assert_eq!(run(c, &["GET", "w"]), Ok(Value::BulkString(b"4".to_vec())));
        assert_eq!(run(c, &["GET", "other"]), Ok(Value::Nil));
        // A missing key that another connection creates counts too.
        assert_eq!(run(c, &["WATCH", "missing"]), Ok(Value::Okay));
        assert_eq!(run(other, &["SET", "missing", "now"]), Ok(Value::Okay));
        assert_eq!(run(c, &["MULTI"]), Ok(Value::Okay));
        run(c, &["DEL", "missing"]).unwrap();
        assert_eq!(run(c, &["EXEC"]), Ok(Value::Nil));
        // UNWATCH inside MULTI is queued: the watches still decide.
        assert_eq!(run(c, &["WATCH", "w"]), Ok(Value::Okay));
        assert_eq!(run(other, &["SET", "w", "6"]), Ok(Value::Okay));
        assert_eq!(run(c, &["MULTI"]), Ok(Value::Okay));
        run(c, &["UNWATCH"]).unwrap();
        run(c, &["SET", "w", "7"]).unwrap();
        assert_eq!(run(c, &["EXEC"]), Ok(Value::Nil), "UNWATCH inside MULTI");
        // A watched key whose time passes counts as changed.
        assert_eq!(run(c, &["SET", "e", "v", "PX", "50"]), Ok(Value::Okay));
        assert_eq!(run(c, &["WATCH", "e"]), Ok(Value::Okay));
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert_eq!(run(c, &["MULTI"]), Ok(Value::Okay));
        run(c, &["SET", "e", "new"]).unwrap();
        assert_eq!(run(c, &["EXEC"]), Ok(Value::Nil), "an expired watched key");
    }
    // Where kvstore differs (docs/resp.md): only GET, MGET and EXISTS are
    // queued among reads; another discards the transaction.
    let refused = run(&mut ours, &["MULTI"]).and_then(|_| run(&mut ours, &["STRLEN", "a"]));
    assert!(refused.unwrap_err().contains("cannot be queued"));
    let aborted = run(&mut ours, &["EXEC"]).unwrap_err();
    assert!(aborted.contains("Transaction discarded"), "{aborted}");
}

/// redis-py's default pipeline (MULTI/EXEC), its `transaction()` helper
/// retrying on WATCH from 8 clients (exactly 200 increments), and its
/// WatchError: `tests/python/redis_transactions.py`.
#[test]
fn redis_py_pipelines_and_watch_retries_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/redis_transactions.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(server.resp.unwrap().to_string())
        .output()
        .expect("run python3 (CI installs redis-py: tests/python/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all python checks passed"),
        "redis-py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A MULTI holds what one native transaction may (`--max-bulk-items`
/// commands here 3): a fourth command is refused when queued and EXEC
/// discards the transaction.
#[test]
fn a_multi_past_the_transaction_limit_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--max-bulk-items", "3"]);
    let mut c = connect(&server);
    assert_eq!(run(&mut c, &["MULTI"]), Ok(Value::Okay));
    for i in 0..3 {
        let queued = run(&mut c, &["SET", &format!("k{i}"), "v"]);
        assert_eq!(queued, Ok(Value::SimpleString("QUEUED".into())));
    }
    let refused = run(&mut c, &["SET", "k3", "v"]).unwrap_err();
    assert!(refused.contains("at most 3 commands"), "{refused}");
    let aborted = run(&mut c, &["EXEC"]).unwrap_err();
    assert!(aborted.contains("Transaction discarded"), "{aborted}");
    assert_eq!(run(&mut c, &["EXISTS", "k0"]), Ok(Value::Int(0)));
}

/// Sends `request` and reads what comes until the connection has been quiet
/// for 300 ms.
fn said(stream: &mut std::net::TcpStream, request: &[u8]) -> String {
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Subscribing, what a subscribed RESP2 connection may send, and
/// unsubscribing answer byte for byte as a real redis-server 7 does.
#[test]
fn subscribed_connections_answer_as_redis_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let redis = RedisNode::start(false);
    drop(redis.connect());
    let mut ours = raw(server.resp.unwrap());
    let mut theirs = raw(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let script: [&[u8]; 9] = [
        b"UNSUBSCRIBE\r\n",
        b"SUBSCRIBE a b a\r\n",
        b"PSUBSCRIBE __key*__:*\r\n",
        b"GET a\r\n",
        b"PING\r\n",
        b"PING hi\r\n",
        b"UNSUBSCRIBE a\r\n",
        b"PUNSUBSCRIBE\r\n",
        b"UNSUBSCRIBE\r\n",
    ];
    // Each request to both; `same`: the replies must be equal.
    let mut both = |request: &[u8], same: bool| {
        let expected = said(&mut theirs, request);
        let got = said(&mut ours, request);
        assert!(
            !same || got == expected,
            "{:?}: {got:?}, Redis {expected:?}",
            String::from_utf8_lossy(request)
        );
    };
    script.into_iter().for_each(|request| both(request, true));
    // Unsubscribed again: any command.
    both(b"GET a\r\n", true);
    // RESP3: confirmations are pushes, and every command may be sent.
    // (HELLO's own replies differ: server name, version, id.)
    both(b"HELLO 3\r\n", false);
    for request in [&b"SUBSCRIBE a\r\n"[..], b"GET a\r\n", b"PING\r\n"] {
        both(request, true);
    }
}

/// A subscriber that stops reading while keys change is disconnected, as
/// Redis disconnects one over its output limit, and the writes go on.
#[test]
fn a_subscriber_that_stops_reading_is_disconnected() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--watch-lag", "16"]);
    let mut writer = connect(&server);
    let _: () = cmd("CONFIG")
        .arg(&["SET", "notify-keyspace-events", "KA"])
        .query(&mut writer)
        .unwrap();
    let mut silent = raw(server.resp.unwrap());
    assert!(said(&mut silent, b"PSUBSCRIBE *\r\n").contains("psubscribe"));
    // Far more messages than the socket buffers hold (about 60 bytes each),
    // so the server falls behind.
    let mut mset = cmd("MSET");
    for i in 0..1000 {
        mset.arg(format!("k{i}")).arg("v");
    }
    for _ in 0..300 {
        let _: () = mset.query(&mut writer).unwrap();
    }
    // What it had sent, then the end (bounded: read at most 1 GiB).
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut read = 0usize;
    let ended = loop {
        match silent.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) if read < 1 << 30 => read += n,
            _ => break false,
        }
    };
    assert!(ended, "still open after {read} bytes");
    let _: () = cmd("SET").arg("after").arg("1").query(&mut writer).unwrap();
}

/// What one subscriber got: (pattern, channel, payload) for each message.
type Messages = Vec<(Option<String>, String, String)>;

/// Reads messages until one with `last` as its payload (at most 10 s).
fn messages_until(pubsub: &mut redis::PubSub<'_>, last: &str) -> Messages {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Messages::new();
    while std::time::Instant::now() < deadline {
        let Ok(msg) = pubsub.get_message() else {
            continue;
        };
        let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
        let pattern = msg.get_pattern::<Option<String>>().unwrap();
        got.push((pattern, msg.get_channel_name().to_string(), payload.clone()));
        if payload == last {
            return got;
        }
    }
    panic!("no message {last:?} within 10 s; got {got:?}");
}

/// Runs `writes`, then SET marker; the messages a subscriber to key `k1`'s
/// channel and to every key event gets, up to the marker's; then a key
/// that expires.
fn notifications(writer: &mut Connection, subscriber: &mut Connection) -> (Messages, Messages) {
    let writes: [&[&str]; 7] = [
        &["SET", "k1", "v"],
        &["SET", "k2", "v", "EX", "100"],
        &["DEL", "k1", "missing"],
        &["EXPIRE", "k2", "200"],
        &["PERSIST", "k2"],
        &["MSET", "k1", "a", "k3", "b"],
        &["SET", "marker", "1"],
    ];
    let _: () = cmd("CONFIG")
        .arg(&["SET", "notify-keyspace-events", "KEA"])
        .query(writer)
        .unwrap();
    let mut pubsub = subscriber.as_pubsub();
    pubsub
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    pubsub.subscribe("__keyspace@0__:k1").unwrap();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    for words in writes {
        run(writer, words).unwrap();
    }
    let written = messages_until(&mut pubsub, "marker");
    run(writer, &["PEXPIRE", "k3", "1"]).unwrap();
    let expired = messages_until(&mut pubsub, "k3");
    (written, messages_until_expired(&mut pubsub, expired))
}

/// The messages up to `k3`'s `expired` event.
fn messages_until_expired(pubsub: &mut redis::PubSub<'_>, mut got: Messages) -> Messages {
    while !got
        .iter()
        .any(|(_, channel, _)| channel.ends_with("expired"))
    {
        got.extend(messages_until(pubsub, "k3"));
    }
    got
}

/// The same writes on kvstore and on a real redis-server 7 publish the same
/// keyspace notifications (channels, payloads, patterns, in order).
#[test]
fn keyspace_notifications_are_what_redis_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let redis = RedisNode::start(false);
    let (mut writer, mut subscriber) = (connect(&server), connect(&server));
    let ours = notifications(&mut writer, &mut subscriber);
    let (mut writer, mut subscriber) = (redis.connect(), redis.connect());
    let theirs = notifications(&mut writer, &mut subscriber);
    assert_eq!(ours.0, theirs.0);
    assert_eq!(ours.1, theirs.1);
    // Off again: nothing more.
    let _: () = cmd("CONFIG")
        .arg(&["SET", "notify-keyspace-events", ""])
        .query(&mut connect(&server))
        .unwrap();
    let got: String = cmd("CONFIG")
        .arg(&["GET", "notify-keyspace-events"])
        .query::<Vec<String>>(&mut connect(&server))
        .unwrap()
        .join(" ");
    assert_eq!(got, "notify-keyspace-events ");
}
