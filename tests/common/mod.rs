//! Helpers shared by the end-to-end tests: the real `kvstore-server` binary on
//! a free loopback port, and a minimal blocking client that speaks raw frames.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kvstore_client::{codec, Event, Reply, Request, Response, WatchStream};

/// How many times a server this test binary started wrote that a thread
/// panicked. A panic in a task (a Raft group's, say) leaves the process
/// running, and a test that only watches clients may not notice it.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// [`PANICS`] so far.
pub fn server_panics() -> usize {
    PANICS.load(Ordering::Relaxed)
}

/// Passes the server's standard error on to the test's, counting panics.
fn forward_stderr(child: &mut Child) {
    let Some(stderr) = child.stderr.take() else {
        return;
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panicked at") {
                PANICS.fetch_add(1, Ordering::Relaxed);
            }
            eprintln!("{line}");
        }
    });
}

/// A running server process. Killed (SIGKILL) when dropped, if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The RESP listener, when started with `--resp-listen`.
    pub resp: Option<SocketAddr>,
    /// The gRPC listener, when started with `--grpc-listen`.
    pub grpc: Option<SocketAddr>,
    pub data: PathBuf,
}

impl Server {
    /// Starts the binary on `127.0.0.1:0` with its data at `data`.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", data, extra)
    }

    /// Starts the binary on `listen` (a restart on a known port).
    pub fn start_on(listen: &str, data: &Path, extra: &[&str]) -> Server {
        Server::spawn(Server::command(listen, data, extra), data)
    }

    /// The command line of the server, to adjust before [`Server::spawn`].
    pub fn command(listen: &str, data: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvstore-server"));
        command
            .arg("--listen")
            .arg(listen)
            .arg("--data")
            .arg(data)
            .args(extra);
        command
    }

    /// Spawns a prepared command (the server, or a wrapper that runs it) and
    /// waits for the line that says where it listens.
    pub fn spawn(mut command: Command, data: &Path) -> Server {
        let mut child = command
            // KVSTORE_TEST_LOG: the servers' RUST_LOG, to study a failure.
            .env(
                "RUST_LOG",
                std::env::var("KVSTORE_TEST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvstore-server");
        forward_stderr(&mut child);
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        // "kvstore-server listening on ADDR [and RESP on ADDR] [and gRPC on ADDR]"
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = words
            .get(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("server did not say where it listens: {line:?}"));
        let door = |name: &str| {
            words
                .windows(3)
                .find(|w| w[0] == name && w[1] == "on")
                .and_then(|w| w[2].parse().ok())
        };
        Server {
            child,
            addr,
            resp: door("RESP"),
            grpc: door("gRPC"),
            data: data.to_path_buf(),
        }
    }

    /// Starts the binary and expects it to refuse to start; returns its stderr.
    pub fn refuse_start(data: &Path) -> String {
        Server::refuse_start_with(data, &[])
    }

    /// [`Server::refuse_start`] with more flags.
    pub fn refuse_start_with(data: &Path, extra: &[&str]) -> String {
        let out = Server::command("127.0.0.1:0", data, extra)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run kvstore-server");
        assert!(!out.status.success(), "the server started on damaged data");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "server exited with {status} after SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client speaking raw frames, for tests only (the real client
/// library lives in `kvstore-client`).
pub struct Client {
    pub stream: TcpStream,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, next_id: 1 }
    }

    /// Sends one request without waiting; returns its id.
    pub fn send(&mut self, command: kvstore_client::Command) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let body = codec::encode(&Request { id, command }).unwrap();
        self.send_raw(&frame(&body));
        id
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one response; `None` if the server closed the connection.
    pub fn recv(&mut self) -> Option<Response> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(codec::decode(&body).expect("a response that decodes"))
    }

    /// Sends one command and returns its reply.
    pub fn call(&mut self, command: kvstore_client::Command) -> Reply {
        let id = self.send(command);
        let response = self.recv().expect("a response");
        assert_eq!(response.id, id);
        response.reply
    }

    /// Whether the server has closed this connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// A frame: the 4-byte big-endian length, then the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

pub mod cmd {
    use bytes::Bytes;
    use kvstore_client::Command;

    pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Command {
        Command::Set {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        }
    }
    pub fn get(key: impl AsRef<[u8]>) -> Command {
        Command::Get {
            key: Bytes::copy_from_slice(key.as_ref()),
        }
    }
    pub fn delete(key: impl AsRef<[u8]>) -> Command {
        Command::Delete {
            key: Bytes::copy_from_slice(key.as_ref()),
        }
    }
    pub fn exists(key: impl AsRef<[u8]>) -> Command {
        Command::Exists {
            key: Bytes::copy_from_slice(key.as_ref()),
        }
    }
    pub fn bulk_set<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Command {
        Command::BulkSet {
            items: items
                .into_iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_ref()),
                        Bytes::copy_from_slice(v.as_ref()),
                    )
                })
                .collect(),
        }
    }
    pub fn keys(prefix: impl AsRef<[u8]>, start_after: Option<&[u8]>, limit: u32) -> Command {
        Command::Keys {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            start_after: start_after.map(Bytes::copy_from_slice),
            limit,
        }
    }
}

/// The `kvstore` command-line tool, built by `cargo test --workspace` beside
/// this test's own binary (it belongs to the `kvstore-client` package, so
/// cargo gives no `CARGO_BIN_EXE_` variable for it here).
pub fn cli_path() -> PathBuf {
    workspace_bin("kvstore", "kvstore-client")
}

/// Runs the `kvstore` CLI against `addr`, requires success, returns stdout.
pub fn cli_ok(addr: impl std::fmt::Display, args: &[&str]) -> String {
    let out = cli(addr, args);
    assert!(out.status.success(), "kvstore {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs the `kvstore` CLI against `addr` (one address, or a cluster's list),
/// whatever the outcome.
pub fn cli(addr: impl std::fmt::Display, args: &[&str]) -> std::process::Output {
    Command::new(cli_path())
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .env_remove("KVSTORE_ADDR")
        .env_remove("KVSTORE_READS")
        .output()
        .expect("run kvstore")
}

/// A binary of another package of the workspace, built by `cargo test
/// --workspace` into the directory above this test's own.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p {package}` first)",
        path.display()
    );
    path
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A base port for `nodes` nodes: base+1..=base+nodes,
/// base+101..=base+100+nodes and base+201..=base+200+nodes are all free. Taken below the kernel's
/// ephemeral range (32768 and up), so that the outgoing connections of other
/// tests cannot take one between this check and the nodes' start.
pub fn free_port_base(nodes: u16) -> u16 {
    let seed =
        std::process::id() as u64 ^ std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + (seed.wrapping_add(attempt * 7919) % 12_000) as u16;
        let free = (1..=nodes)
            .flat_map(|i| [base + i, base + 100 + i, base + 200 + i])
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free ports for {nodes} nodes");
}

/// A multi-threaded tokio runtime for a test's async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM;
/// returns (certificate, key) paths. The certificate is its own CA.
pub fn throwaway_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// The server binary under libfiu's POSIX preload (`fiu-run -x -f
/// prefix`), its faults switched on later with [`fiu_ctrl`].
pub fn under_fiu(prefix: &Path) -> Command {
    let mut command = Command::new("fiu-run");
    command
        .arg("-x")
        .arg("-f")
        .arg(prefix)
        .arg(env!("CARGO_BIN_EXE_kvstore-server"));
    command
}

/// Sends a libfiu command to server `pid` started under `fiu-run -f prefix`
/// (Debian package fiu-utils; `.ci/run` installs it).
pub fn fiu_ctrl(prefix: &Path, pid: u32, command: &str) {
    let status = Command::new("fiu-ctrl")
        .arg("-f")
        .arg(prefix)
        .args(["-c", command])
        .arg(pid.to_string())
        .status()
        .expect("fiu-ctrl (Debian package fiu-utils; .ci/run installs it)");
    assert!(status.success(), "fiu-ctrl {command} failed");
}

/// Bounds every wait for a watched change: a missing one fails the test
/// rather than hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// The next `n` changes `watch` delivers, and not one more in what came.
pub async fn take(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < n {
        let more = tokio::time::timeout(PATIENCE, watch.next()).await;
        events.extend(more.expect("a change within the patience").unwrap());
    }
    assert_eq!(events.len(), n, "more changes than written");
    events
}

/// Each watcher's next `n` changes, read concurrently; the watchers back.
pub async fn watch_all(watchers: Vec<WatchStream>, n: usize) -> Vec<(WatchStream, Vec<Event>)> {
    let tasks: Vec<_> = (watchers.into_iter())
        .map(|mut watch| {
            tokio::spawn(async move {
                let events = take(&mut watch, n).await;
                (watch, events)
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    done
}
