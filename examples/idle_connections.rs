//! Memory per idle connection: opens N connections to a server, sends one
//! request on each (so each has been fully set up and served), keeps them
//! open, and reports the server's resident memory before and after.
//!
//! `cargo run --release --example idle_connections -- --addr 127.0.0.1:65433 --pid PID -n 10000`
//! (the open-file limit must allow N descriptors here and in the server.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use clap::Parser;
use kvstore_client::{codec, Command, Request};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:65433")]
    addr: SocketAddr,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    pid: u32,
    #[arg(short = 'n', default_value_t = 10_000)]
    connections: usize,
}

fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let before = rss_kib(args.pid)?;
    let body = codec::encode(&Request {
        id: 1,
        command: Command::Exists {
            key: "probe".into(),
        },
    })?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let mut open = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let mut stream = TcpStream::connect(args.addr)?;
        stream.write_all(&frame)?;
        let mut reply = [0u8; 13];
        stream.read_exact(&mut reply)?;
        open.push(stream);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = rss_kib(args.pid)?;
    println!(
        "{} idle connections: server RSS {} KiB -> {} KiB, {:.1} KiB per connection",
        open.len(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / open.len() as f64
    );
    Ok(())
}
