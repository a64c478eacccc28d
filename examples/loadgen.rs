//! A small load generator for kvstore's native protocol.
//!
//! `cargo run --release --example loadgen -- --addr 127.0.0.1:65433 -c 50 -n 200000 -t set,get -d 100`
//!
//! Each of `-c` connections sends requests one at a time (no pipelining) on
//! random keys out of `-r`, and measures each round trip. Prints requests per
//! second and latency percentiles per test. With `--shared-client N`, the `-c`
//! tasks instead share one `kvstore_client::Client` over N connections.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use kvstore_client::{codec, Client, Command, Reply, Request, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:65433")]
    addr: SocketAddr,
    /// Concurrent connections.
    #[arg(short = 'c', default_value_t = 50)]
    connections: usize,
    /// Requests per test, across all connections.
    #[arg(short = 'n', default_value_t = 100_000)]
    requests: usize,
    /// Value size in bytes.
    #[arg(short = 'd', default_value_t = 100)]
    size: usize,
    /// Key space: keys are `key:NNNNNNNN` for NNNNNNNN below this.
    #[arg(short = 'r', default_value_t = 100_000)]
    keyspace: u64,
    /// Tests to run, in order: set, get.
    #[arg(short = 't', default_value = "set,get", value_delimiter = ',')]
    tests: Vec<String>,
    /// Instead of one raw connection per task, share one `kvstore_client::Client`
    /// with this many multiplexed connections among all `-c` tasks (measures
    /// the client library and its pool size).
    #[arg(long)]
    shared_client: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "kvstore loadgen: {} connections, {} requests, {}-byte values, {} keys",
        args.connections, args.requests, args.size, args.keyspace
    );
    let shared = match args.shared_client {
        Some(n) => Some(
            Client::builder()
                .addr(args.addr.to_string())
                .connections(n)
                .build()?,
        ),
        None => None,
    };
    for test in &args.tests {
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| {
                let args = args.clone();
                let test = test.clone();
                let shared = shared.clone();
                let share = args.requests / args.connections
                    + usize::from(c < args.requests % args.connections);
                tokio::spawn(async move {
                    match shared {
                        Some(client) => run_client(&client, c as u64, &args, &test, share).await,
                        None => run_connection(c as u64, &args, &test, share).await,
                    }
                })
            })
            .collect();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for task in tasks {
            latency.add(task.await??)?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:>4}: {:>9.0} req/s  ({} requests in {:.2} s)  latency us p50 {} p90 {} p99 {} p99.9 {} max {}",
            test,
            latency.len() as f64 / secs,
            latency.len(),
            secs,
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.90),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
            latency.max()
        );
    }
    Ok(())
}

/// The same workload through the client library.
async fn run_client(
    client: &Client,
    task: u64,
    args: &Args,
    test: &str,
    count: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let value = vec![b'x'; args.size];
    let mut keys = Keys::new(task);
    for _ in 0..count {
        let key = keys.next(args.keyspace);
        let sent = Instant::now();
        match test {
            "set" => client.set(&key, &value).await?,
            "get" => drop(client.get(&key).await?),
            other => anyhow::bail!("unknown test {other:?} (set, get)"),
        }
        latency.record((sent.elapsed().as_micros() as u64).max(1))?;
    }
    Ok(latency)
}

/// Random keys `key:NNNNNNNN` from a small xorshift per task: no dependency.
struct Keys(u64);

impl Keys {
    fn new(task: u64) -> Keys {
        Keys(0x9E37_79B9_7F4A_7C15u64 ^ (task + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }

    fn next(&mut self, keyspace: u64) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        format!("key:{:08}", self.0 % keyspace.max(1))
    }
}

async fn run_connection(
    conn_id: u64,
    args: &Args,
    test: &str,
    count: usize,
) -> anyhow::Result<Histogram<u64>> {
    let stream = TcpStream::connect(args.addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, codec::frame_codec(codec::HARD_MAX_FRAME));
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let value = Bytes::from(vec![b'x'; args.size]);
    let mut keys = Keys::new(conn_id);
    for i in 0..count {
        let key = Bytes::from(keys.next(args.keyspace));
        let command = match test {
            "set" => Command::Set {
                key,
                value: value.clone(),
            },
            "get" => Command::Get { key },
            other => anyhow::bail!("unknown test {other:?} (set, get)"),
        };
        let id = i as u64;
        let body = codec::encode(&Request { id, command })?;
        let sent = Instant::now();
        framed.send(Bytes::from(body)).await?;
        let frame = framed
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("server closed the connection"))??;
        latency.record((sent.elapsed().as_micros() as u64).max(1))?;
        let response: Response = codec::decode(&frame)?;
        anyhow::ensure!(response.id == id, "response out of order");
        if let Reply::Error { code, message } = response.reply {
            anyhow::bail!("server error {code}: {message}");
        }
    }
    Ok(latency)
}
