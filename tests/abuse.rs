//! Clients that misbehave on purpose, against the real binary on loopback:
//! slowloris, a client that never reads its replies, a connection flood, and
//! running out of file descriptors. Every loop here is bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{cmd, frame, Server};
use kvstore_client::{codec, ErrorCode, Reply, Request};

/// Waits (bounded) until the server closes `stream`: reads until EOF. Makes
/// at least one short read however little time is left.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.clamp(Duration::from_millis(1), Duration::from_millis(200));
        stream.set_read_timeout(Some(wait)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true, // reset
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[test]
fn slowloris_connections_are_closed_while_a_normal_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--read-timeout-ms", "1000"],
    );
    // 2,000 connections that each start a frame and never finish it: half
    // send two bytes of the length, half the whole length and nothing more.
    let mut slow: Vec<TcpStream> = (0..2000)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(if i % 2 == 0 {
                &[0, 0][..]
            } else {
                &[0, 0, 0, 20][..]
            })
            .unwrap();
            s
        })
        .collect();
    // A normal client keeps working meanwhile.
    let mut c = server.client();
    let mut latencies = Vec::new();
    for i in 0..300 {
        let sent = Instant::now();
        assert_eq!(c.call(cmd::set(format!("k{i}"), "v")), Reply::Ok);
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "normal client during 2,000 slowloris connections: p50 {:?}, p99 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1]
    );
    // Every slow connection is cut once its frame is late (all checked
    // within one bounded wait).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open = 0;
    for s in slow.iter_mut() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if !closed_by_server(s, left) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "slowloris connections left open");
    assert_eq!(c.call(cmd::get("k0")), Reply::Value(Some("v".into())));
}

#[test]
fn a_client_that_never_reads_its_replies_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--write-timeout-ms", "500"],
    );
    let mut c = server.client();
    assert_eq!(c.call(cmd::set("big", vec![b'x'; 256 * 1024])), Reply::Ok);

    // Pipeline Gets of the big value and never read: replies pile up.
    let mut greedy = TcpStream::connect(server.addr).unwrap();
    let mut burst = Vec::new();
    for id in 0..2000u64 {
        burst.extend(frame(
            &codec::encode(&Request {
                id,
                command: cmd::get("big"),
            })
            .unwrap(),
        ));
    }
    let writer = {
        let mut greedy = greedy.try_clone().unwrap();
        greedy
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::thread::spawn(move || {
            // Stops when the server stops reading or closes the connection.
            let _ = greedy.write_all(&burst);
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // Others are served meanwhile.
    assert_eq!(server.client().call(cmd::exists("big")), Reply::Bool(true));
    assert!(
        closed_by_server(&mut greedy, Duration::from_secs(20)),
        "the greedy client was never cut off"
    );
    writer.join().unwrap();
    assert_eq!(c.call(cmd::exists("big")), Reply::Bool(true));
}

#[test]
fn a_connection_flood_past_the_limit_is_refused_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--max-connections", "100"],
    );
    let mut kept = server.client();
    assert_eq!(kept.call(cmd::set("k", "v")), Reply::Ok);
    let mut flood: Vec<common::Client> = (0..400).map(|_| server.client()).collect();
    let mut refused = 0;
    for c in flood.iter_mut() {
        // An accepted connection answers the Get; a refused one has its
        // error frame waiting instead.
        c.send(cmd::get("k"));
        match c.recv().map(|r| r.reply) {
            Some(Reply::Value(v)) => assert_eq!(v.as_deref(), Some(&b"v"[..])),
            Some(Reply::Error { code, .. }) => {
                assert_eq!(
                    ErrorCode::from_code(code),
                    Some(ErrorCode::TooManyConnections)
                );
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        refused,
        400 - 99,
        "everyone past the limit of 100 (one is `kept`) is refused"
    );
    drop(flood);
    assert_eq!(kept.call(cmd::get("k")), Reply::Value(Some("v".into())));
}

#[test]
fn running_out_of_file_descriptors_neither_crashes_nor_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let mut command = Server::command("127.0.0.1:0", &data, &[]);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::spawn(command, &data);
    let mut kept = server.client();
    assert_eq!(kept.call(cmd::set("k", "v")), Reply::Ok);
    // More connections than the server has descriptors: accept fails with EMFILE.
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    assert_eq!(
        kept.call(cmd::get("k")),
        Reply::Value(Some("v".into())),
        "an accepted client is still served"
    );
    drop(flood);
    // Once descriptors are free again, new clients get in (bounded retries).
    let mut served = false;
    for _ in 0..100 {
        let mut c = server.client();
        c.stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c.send(cmd::get("k"));
        if c.recv()
            .is_some_and(|r| r.reply == Reply::Value(Some("v".into())))
        {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served,
        "no new client was served after the descriptors came back"
    );
}

/// A client that keeps the server busy for longer than the read timeout, with
/// frames always arriving, is not a slow client: it is never cut off.
#[test]
fn a_steady_pipelining_client_outlives_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &["--read-timeout-ms", "300"],
    );
    let mut c = server.client();
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        // Bursts of 50 pipelined requests, the last one split across two
        // writes so that a frame is often half arrived.
        let mut burst = Vec::new();
        for _ in 0..50 {
            burst.extend(frame(
                &codec::encode(&Request {
                    id,
                    command: cmd::set("k", "v"),
                })
                .unwrap(),
            ));
            id += 1;
        }
        let (a, b) = burst.split_at(burst.len() - 3);
        c.send_raw(a);
        std::thread::sleep(Duration::from_millis(5));
        c.send_raw(b);
        for _ in 0..50 {
            assert_eq!(c.recv().expect("the connection was cut").reply, Reply::Ok);
        }
    }
}
