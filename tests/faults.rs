//! Disk faults injected into the real server binary.
//!
//! - `fdatasync` returning EIO: through libfiu's POSIX preload (`fiu-run`,
//!   Debian package `fiu-utils`, which `.ci/run` installs), switched on while
//!   the server runs with `fiu-ctrl`. Only the log calls `fdatasync`, so the
//!   fault hits exactly the log.
//! - A full disk: the data directory on a 256 KiB tmpfs (mounted by the test,
//!   which runs as root here and in CI), so the kernel itself answers ENOSPC.
//! - A log write that fails part-way: the file size limit (RLIMIT_FSIZE, with
//!   SIGXFSZ ignored) makes the kernel write up to the limit and then fail
//!   with EFBIG, a real short write followed by an error, on files only.
//!   (libfiu's `write` faults cannot be used for these two: they also hit
//!   tokio's eventfd wake-ups and the server's sockets.)
//! - Damage to the files at rest: refused at start with the file and offset.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::{cmd, fiu_ctrl, Client, Server};
use kvstore_client::{ErrorCode, Reply};

fn value(v: &[u8]) -> Reply {
    Reply::Value(Some(Bytes::copy_from_slice(v)))
}

fn storage_failed(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Error { code, message }
            if ErrorCode::from_code(*code) == Some(ErrorCode::StorageFailed) =>
        {
            Some(message.clone())
        }
        _ => None,
    }
}

#[test]
fn an_fdatasync_eio_fails_the_batch_fences_writes_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let prefix = dir.path().join("fiu");
    let mut command = common::under_fiu(&prefix);
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let server = Server::spawn(command, &data);
    let mut c = server.client();
    for i in 0..100 {
        assert_eq!(
            c.call(cmd::set(format!("k{i}"), format!("v{i}"))),
            Reply::Ok
        );
    }

    fiu_ctrl(
        &prefix,
        server.child.id(),
        "enable name=posix/io/sync/fdatasync,failnum=1,failinfo=5",
    );
    let failed = c.call(cmd::set("lost", "x"));
    let message =
        storage_failed(&failed).unwrap_or_else(|| panic!("expected StorageFailed, got {failed:?}"));
    assert!(message.contains("Input/output error"), "{message}");
    // Every later write is refused, even with the fault switched off: the
    // fsync is never retried and the log stays fenced.
    fiu_ctrl(
        &prefix,
        server.child.id(),
        "disable name=posix/io/sync/fdatasync",
    );
    assert!(storage_failed(&c.call(cmd::set("later", "y"))).is_some());
    assert!(storage_failed(&c.call(cmd::bulk_set([("b1", "1"), ("b2", "2")]))).is_some());
    assert!(storage_failed(&c.call(cmd::delete("k1"))).is_some());
    // Reads go on, and never show the failed writes.
    assert_eq!(c.call(cmd::get("k42")), value(b"v42"));
    assert_eq!(c.call(cmd::get("lost")), Reply::Value(None));
    assert_eq!(server.client().call(cmd::exists("k1")), Reply::Bool(true));
    server.kill9();

    // After a restart: exactly the acknowledged state.
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    for i in 0..100 {
        assert_eq!(
            c.call(cmd::get(format!("k{i}"))),
            value(format!("v{i}").as_bytes())
        );
    }
    for key in ["lost", "later", "b1", "b2"] {
        assert_eq!(
            c.call(cmd::get(key)),
            Reply::Value(None),
            "{key} was refused, yet came back"
        );
    }
    assert_eq!(
        c.call(cmd::set("after", "restart")),
        Reply::Ok,
        "a restart lifts the fence"
    );
}

/// Starts the server with a file size limit of `limit` bytes. Its stderr is
/// a file already past the limit, as when the server's log file is on the
/// disk that filled up: every log line fails with EFBIG too, and the server
/// must carry on without it.
fn start_with_file_limit(data: &Path, limit: u64) -> Server {
    let stderr = data.with_extension("stderr");
    std::fs::write(&stderr, vec![b'.'; limit as usize + 1]).unwrap();
    let stderr = std::fs::OpenOptions::new()
        .append(true)
        .open(&stderr)
        .unwrap();
    let fd = stderr.as_raw_fd();
    let mut command = Server::command("127.0.0.1:0", data, &[]);
    // SAFETY: between fork and exec only async-signal-safe calls are made.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 || libc::dup2(fd, 2) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::spawn(command, data);
    drop(stderr);
    server
}

/// Sets 1,000-byte values until the server refuses one. Returns the indexes
/// acknowledged, the first refused one, and the storage error's message
/// (after checking that later writes are refused too and reads go on).
fn fill_until_refused(c: &mut Client, max: usize) -> (Vec<usize>, usize, String) {
    let big = vec![b'v'; 1000];
    let mut acked = Vec::new();
    for i in 0..max {
        let reply = c.call(cmd::set(format!("k{i}"), &big));
        if reply == Reply::Ok {
            acked.push(i);
            continue;
        }
        let message = storage_failed(&reply)
            .unwrap_or_else(|| panic!("expected StorageFailed, got {reply:?}"));
        assert!(
            storage_failed(&c.call(cmd::set("later", "x"))).is_some(),
            "writes stay refused"
        );
        assert_eq!(c.call(cmd::get("k0")), value(&big), "reads go on");
        return (acked, i, message);
    }
    panic!("{max} writes and none refused");
}

/// After a restart on `data`: every acknowledged write is there, the refused
/// one is not.
fn only_the_acknowledged_came_back(data: &Path, acked: &[usize], refused: usize) {
    let server = Server::start(data, &[]);
    let mut c = server.client();
    for i in acked {
        assert_eq!(
            c.call(cmd::get(format!("k{i}"))),
            value(&[b'v'; 1000]),
            "k{i}"
        );
    }
    assert_eq!(c.call(cmd::get(format!("k{refused}"))), Reply::Value(None));
}

#[test]
fn a_log_write_that_fails_part_way_is_refused_and_leaves_no_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let server = start_with_file_limit(&data, 64 * 1024);
    let (acked, refused, message) = fill_until_refused(&mut server.client(), 200);
    assert!(message.contains("File too large"), "{message}");
    assert!(acked.len() > 50, "only {} writes fit", acked.len());
    server.kill9();

    let wal = dir.path().join("kvstore.db-wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .unwrap()
        .path();
    let len = std::fs::metadata(&segment).unwrap().len();
    assert!(
        len < 64 * 1024,
        "the partial record was cut off the log ({len} bytes)"
    );
    only_the_acknowledged_came_back(&data, &acked, refused);
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Writes some data, stops the server (SIGTERM: snapshot; SIGKILL: log only).
fn prepared(dir: &Path, clean: bool) -> std::path::PathBuf {
    let data = dir.join("kvstore.db");
    let server = Server::start(&data, &[]);
    let mut c: Client = server.client();
    for i in 0..200 {
        assert_eq!(
            c.call(cmd::set(format!("key{i}"), format!("value{i}"))),
            Reply::Ok
        );
    }
    if clean {
        server.terminate();
    } else {
        server.kill9();
    }
    data
}

/// Prepares data (`clean`: SIGTERM, so a snapshot; else SIGKILL, log only),
/// damages it with `damage(dir, data)`, and returns what the refused start
/// printed.
fn refused_start_after(clean: bool, damage: impl FnOnce(&Path, &Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), clean);
    damage(dir.path(), &data);
    Server::refuse_start(&data)
}

#[test]
fn damage_at_rest_is_refused_at_start_with_the_file_and_offset() {
    // A flipped bit in the snapshot.
    let stderr = refused_start_after(true, |_, data| flip(data, 100));
    assert!(
        stderr.contains("kvstore.db is damaged at offset"),
        "{stderr}"
    );

    // A cut snapshot.
    let stderr = refused_start_after(true, |_, data| {
        let len = std::fs::metadata(data).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(data)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
    });
    assert!(
        stderr.contains("kvstore.db is damaged at offset"),
        "{stderr}"
    );

    // A deleted snapshot, with the log starting after it.
    let stderr = refused_start_after(true, |_, data| std::fs::remove_file(data).unwrap());
    assert!(stderr.contains("the snapshot is missing"), "{stderr}");

    // A flipped bit in the middle of the log (records follow it).
    let stderr = refused_start_after(false, |dir, _| {
        flip(
            &dir.join("kvstore.db-wal").join(format!("{:020}.wal", 1)),
            200,
        )
    });
    assert!(
        stderr.contains("00000000000000000001.wal is damaged at offset"),
        "{stderr}"
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the CI machine runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_with_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "256k");
    let data = dir.path().join("kvstore.db");
    let server = Server::start(&data, &[]);
    let (acked, refused, message) = fill_until_refused(&mut server.client(), 1000);
    assert!(message.contains("No space left on device"), "{message}");
    assert!(acked.len() > 100, "only {} writes fit", acked.len());
    server.kill9();
    // The disk is still nearly full; the server starts anyway.
    only_the_acknowledged_came_back(&data, &acked, refused);
}
