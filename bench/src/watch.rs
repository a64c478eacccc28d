//! `--watchers N,..`: what watches cost (docs/watch.md). For each count N:
//! N watches of one prefix, each on its own connection through the client
//! library; then one writer sets -n keys under the prefix, one at a time.
//! It reports the writer's writes/s, the time from each write's
//! acknowledgement at the writer to its event at each watcher (0 when the
//! event came first), and with --server-pid the server's resident memory
//! per idle watcher.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvstore_client::{Client, WatchStream};
use tokio::task::JoinSet;

use crate::Args;

/// Watches opened at once.
const OPENING: usize = 256;

/// Bounds every wait for an event.
const PATIENCE: Duration = Duration::from_secs(120);

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let client = Client::builder().addr(&args.addr).build()?;
    for &count in &args.watchers {
        let prefix = format!("bench-watch/{count}/");
        let rss_before = resident_bytes(args.server_pid);
        let watchers = open(&client, &prefix, count).await?;
        let rss_after = resident_bytes(args.server_pid);
        let started = Instant::now();
        let readers: JoinSet<_> = (watchers.into_iter())
            .map(|watch| arrivals(watch, started, args.requests as usize))
            .collect();
        let (acks, took) = write(&client, &prefix, args, started).await?;
        let latency = ack_to_event(readers, &acks).await?;
        let memory = rss_before.zip(rss_after).map(|(b, a)| a.saturating_sub(b));
        println!("{}", describe(count, args.requests, took, &latency, memory));
    }
    Ok(())
}

/// `count` watches of `prefix` from now.
async fn open(client: &Client, prefix: &str, count: usize) -> anyhow::Result<Vec<WatchStream>> {
    let mut watchers = Vec::with_capacity(count);
    while watchers.len() < count {
        let batch = OPENING.min(count - watchers.len());
        let mut opening = JoinSet::new();
        for _ in 0..batch {
            let (client, prefix) = (client.clone(), prefix.to_string());
            opening.spawn(async move { client.watch(prefix, 0).await });
        }
        while let Some(watch) = opening.join_next().await {
            watchers.push(watch??);
        }
    }
    Ok(watchers)
}

/// Sets `prefix` + 0.. -n one at a time: when each was acknowledged (since
/// `started`), and how long they all took.
async fn write(
    client: &Client,
    prefix: &str,
    args: &Args,
    started: Instant,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let value = vec![b'x'; args.size];
    let mut acks = Vec::with_capacity(args.requests as usize);
    let first = Instant::now();
    for i in 0..args.requests {
        client.set(format!("{prefix}{i}"), &value).await?;
        acks.push(started.elapsed());
    }
    Ok((acks, first.elapsed()))
}

/// When (since `started`) `watch` saw each of the first `writes` keys.
async fn arrivals(
    mut watch: WatchStream,
    started: Instant,
    writes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut seen = Vec::with_capacity(writes);
    while seen.len() < writes {
        let events = tokio::time::timeout(PATIENCE, watch.next()).await??;
        seen.extend(events.iter().map(|_| started.elapsed()));
    }
    Ok(seen)
}

/// Each event's delay after its write's acknowledgement, in microseconds.
async fn ack_to_event(
    mut readers: JoinSet<anyhow::Result<Vec<Duration>>>,
    acks: &[Duration],
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = Histogram::new_with_bounds(1, 600_000_000, 3)?;
    while let Some(seen) = readers.join_next().await {
        for (arrived, acked) in seen??.iter().zip(acks) {
            let micros = arrived.saturating_sub(*acked).as_micros() as u64;
            latency.record(micros.max(1))?;
        }
    }
    Ok(latency)
}

fn describe(
    count: usize,
    writes: u64,
    took: Duration,
    latency: &Histogram<u64>,
    memory: Option<u64>,
) -> String {
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let mut line = format!(
        "watchers {count}: {:.0} writes/s",
        writes as f64 / took.as_secs_f64()
    );
    if count > 0 {
        line += &format!(
            "; ack to event p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} events)",
            ms(0.5),
            ms(0.99),
            latency.max() as f64 / 1000.0,
            latency.len()
        );
    }
    if let Some(bytes) = memory.filter(|_| count > 0) {
        line += &format!(
            "; server memory +{:.1} MiB, {:.1} KiB per watcher",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / 1024.0 / count as f64
        );
    }
    line
}

/// Process `pid`'s resident memory (Linux `VmRSS`).
fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
