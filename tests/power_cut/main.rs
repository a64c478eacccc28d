//! Power cuts under the disk engine: the real server writes its log and its
//! fjall tree through a FUSE file system ([`fs`]) that keeps what a power
//! cut would leave (only synced bytes, only synced names). While a client
//! writes, the test takes crash images at random moments; each image must
//! restart and hold every write acknowledged before it was taken.
//!
//! The memory engine has its crash images in `tests/crash_images.rs`, on a
//! simulated disk behind kvstore's `Fs`; fjall does its own file I/O, so
//! the disk engine needs a file system underneath. Needs `/dev/fuse` and
//! `fusermount3` (Debian's fuse3; `.ci/run` installs it).

mod fs;

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cmd, Client, Server};
use kvstore_client::Reply;

const IMAGES: usize = 16;

fn key(i: u64) -> String {
    format!("k{i:06}")
}

fn value(i: u64) -> String {
    format!("value of write {i}")
}

/// Sets `key(i)` for i = 0, 1, ... until `stop`, one write at a time,
/// publishing in `acked` how many were acknowledged.
fn write_until(addr: std::net::SocketAddr, acked: &AtomicU64, stop: &AtomicBool) {
    let mut client = Client::connect(addr);
    let mut i = 0;
    while !stop.load(Ordering::Acquire) && i < 1_000_000 {
        assert_eq!(client.call(cmd::set(key(i), value(i))), Reply::Ok);
        i += 1;
        acked.store(i, Ordering::Release);
    }
}

/// Starts a server with `engine` on the image in `dir` and checks the
/// first `acked` writes.
fn check_image(dir: &Path, engine: &str, n: usize, acked: u64) {
    eprintln!("image {n}: {acked} writes acknowledged before it");
    let server = Server::start(&dir.join("kvstore.db"), &["--engine", engine]);
    let mut client = server.client();
    for i in 0..acked {
        assert_eq!(
            client.call(cmd::get(key(i))),
            Reply::Value(Some(value(i).into())),
            "image {n}: acknowledged write {i} of {acked} is lost"
        );
    }
    server.kill9();
}

#[test]
fn every_acknowledged_write_survives_a_power_cut_on_the_disk_engine() {
    power_cuts("disk");
}

/// The same file system under the memory engine: its log and snapshot
/// files through the strict model, as a check of the model against the
/// engine whose crash images `tests/crash_images.rs` already takes.
#[test]
fn every_acknowledged_write_survives_a_power_cut_on_the_memory_engine() {
    power_cuts("memory");
}

/// Writes through the server with `engine` on the recording file system,
/// takes crash images while it runs, and checks each.
fn power_cuts(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt, images) = (
        dir.path().join("backing"),
        dir.path().join("mnt"),
        dir.path().join("images"),
    );
    for d in [&backing, &mnt, &images] {
        std::fs::create_dir(d).unwrap();
    }
    let (fs, durable) = fs::PowerCutFs::new(&backing);
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("kvstore-power-cut".into())];
    let session = fuser::spawn_mount(fs, &mnt, &config)
        .expect("mount the FUSE file system (needs /dev/fuse and fusermount3)");

    // A checkpoint every 64 KiB of log: the engine is persisted (fjall's
    // tree, or the snapshot file) and old log segments are removed many
    // times during the run.
    let server = Server::start(
        &mnt.join("kvstore.db"),
        &["--engine", engine, "--snapshot-after-bytes", "65536"],
    );
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), server.addr);
        std::thread::spawn(move || write_until(addr, &acked, &stop))
    };
    let mut taken = Vec::new();
    for n in 0..IMAGES {
        std::thread::sleep(Duration::from_millis(100 + 37 * (n as u64 % 5)));
        // Read first: every write counted here was acknowledged, so synced,
        // before the image.
        let before = acked.load(Ordering::Acquire);
        durable.image(&images.join(n.to_string()));
        taken.push(before);
    }
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    server.kill9();
    drop(session);

    assert!(
        taken.last().is_some_and(|&n| n > 1_000),
        "too few writes to test anything: {taken:?}"
    );
    for (n, &before) in taken.iter().enumerate() {
        check_image(&images.join(n.to_string()), engine, n, before);
    }
}
