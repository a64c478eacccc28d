//! `--expiry`: what deadlines cost a running server (docs/expiry.md),
//! through the client library, in two phases:
//!
//! 1. `-r` keys (`ttl:N`) set with random times to live within a minute.
//!    Every hundredth is read 100 ms before its deadline, where it must be
//!    there, and 100 ms after, where it must be gone; then the server's
//!    figures say when the sweep has freed them all.
//! 2. `-r` keys (`due:N`) due at one instant while `-c` tasks GET 1,000
//!    other keys: the GETs' latency in the seconds before that instant and
//!    while the sweep runs, and with `--server-pid` the server's CPU time
//!    over each.
//!
//! The server should hold nothing else: it is done when `keys` is 1,000.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use kvstore_client::{Client, Condition, Expiry};
use tokio::task::JoinSet;

use crate::Args;

/// Keys the GET load of phase 2 reads.
const READ_KEYS: u64 = 1_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let client = Client::builder().addr(&args.addr).build()?;
    let value = vec![b'x'; args.size];
    for i in 0..READ_KEYS {
        client.set(format!("read:{i}"), &value).await?;
    }
    let phase_1_load = phase_1(args, &client, &value).await?;
    phase_2(args, &client, &value, phase_1_load).await
}

/// Sampled keys read just before and just after their deadlines: how
/// many were checked, seen early gone, and seen late.
#[derive(Default)]
struct Checks {
    checked: AtomicU64,
    early: AtomicU64,
    late: AtomicU64,
}

/// Phase 1; how long its keys took to set.
async fn phase_1(args: &Args, client: &Client, value: &[u8]) -> anyhow::Result<Duration> {
    let keys = args.keyspace;
    let checks = Arc::new(Checks::default());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..args.connections as u64 {
        let (client, value, checks) = (client.clone(), value.to_vec(), checks.clone());
        let step = args.connections as u64;
        tasks.spawn(async move {
            let mut checkers = JoinSet::new();
            let mut last_deadline = 0;
            for i in (task..keys).step_by(step as usize) {
                let ttl = 1 + fastrand::Rng::with_seed(i).u64(..60_000);
                let key = format!("ttl:{i}");
                let before = now_ms();
                let expiry = Expiry::In(ttl);
                client
                    .set_expiring(&key, &value, Condition::Always, expiry)
                    .await?;
                let after = now_ms();
                last_deadline = last_deadline.max(after + ttl);
                if i % 100 == 0 {
                    let window = (before + ttl, after + ttl);
                    checkers.spawn(check(client.clone(), key, window, checks.clone()));
                }
            }
            let loaded_in = started.elapsed();
            while let Some(done) = checkers.join_next().await {
                done??;
            }
            anyhow::Ok((last_deadline, loaded_in))
        });
    }
    let (mut last_deadline, mut loaded_in) = (0, Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        let (deadline, took) = done??;
        (last_deadline, loaded_in) = (last_deadline.max(deadline), loaded_in.max(took));
    }
    let swept = swept_after(client, last_deadline).await?;
    println!(
        "phase 1: {keys} keys, ttl 1 ms to 60 s, set in {:.1} s; sampled {}: {} gone 100 ms \
         before their deadline, {} there 100 ms after; all swept {:.1} s after the last deadline",
        loaded_in.as_secs_f64(),
        checks.checked.load(Ordering::Relaxed),
        checks.early.load(Ordering::Relaxed),
        checks.late.load(Ordering::Relaxed),
        swept.as_secs_f64()
    );
    Ok(loaded_in)
}

/// Reads `key` 100 ms before `window.0` (its deadline at the earliest)
/// and 100 ms after `window.1` (at the latest).
async fn check(
    client: Client,
    key: String,
    window: (u64, u64),
    checks: Arc<Checks>,
) -> anyhow::Result<()> {
    let until = |at: u64| Duration::from_millis(at.saturating_sub(now_ms()));
    let early_read = window.0.checked_sub(100).filter(|&at| at > now_ms());
    if let Some(at) = early_read {
        tokio::time::sleep(until(at)).await;
        let there = client.get(&key).await?.is_some();
        // A read that ended past the deadline proves nothing.
        if !there && now_ms() < window.0 {
            checks.early.fetch_add(1, Ordering::Relaxed);
        }
    }
    tokio::time::sleep(until(window.1 + 100)).await;
    if client.get(&key).await?.is_some() {
        checks.late.fetch_add(1, Ordering::Relaxed);
    }
    checks.checked.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Waits until the server holds only the GET load's keys; how long after
/// `deadline` (ms since the epoch) that was.
async fn swept_after(client: &Client, deadline: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let figures = client.stats().await?;
        let keys = figures.iter().find(|(n, _)| n == "keys").map(|(_, v)| *v);
        let bytes = figures
            .iter()
            .find(|(n, _)| n == "key_bytes")
            .map(|(_, v)| *v);
        let read_bytes: i64 = (0..READ_KEYS)
            .map(|i| format!("read:{i}").len() as i64)
            .sum();
        if keys == Some(READ_KEYS as i64) && bytes == Some(read_bytes) && now_ms() > deadline {
            return Ok(Duration::from_millis(now_ms() - deadline));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not swept after 10 minutes: {figures:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn phase_2(
    args: &Args,
    client: &Client,
    value: &[u8],
    phase_1_load: Duration,
) -> anyhow::Result<()> {
    let keys = args.keyspace;
    let load_started = Instant::now();
    // Past the end of a load as long as phase 1's, with seconds to spare.
    let due = now_ms() + 2 * phase_1_load.as_millis() as u64 + 5_000;
    let mut tasks = JoinSet::new();
    for task in 0..args.connections as u64 {
        let (client, value) = (client.clone(), value.to_vec());
        let step = args.connections;
        tasks.spawn(async move {
            for i in (task..keys).step_by(step) {
                let expiry = Expiry::At(due);
                client
                    .set_expiring(format!("due:{i}"), &value, Condition::Always, expiry)
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let loaded_in = load_started.elapsed();
    anyhow::ensure!(now_ms() + 2_000 < due, "the load took past the deadline");
    let windows = measure_gets(args, client, due).await?;
    println!(
        "phase 2: {keys} keys set in {:.1} s, due at one instant; GETs from {} tasks:",
        loaded_in.as_secs_f64(),
        args.connections
    );
    for window in windows {
        println!("  {window}");
    }
    Ok(())
}

/// GET latency and server CPU over one stretch of time.
struct Window {
    name: &'static str,
    took: Duration,
    gets: Histogram<u64>,
    cpu: Option<Duration>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |q: f64| self.gets.value_at_quantile(q) as f64 / 1000.0;
        write!(
            f,
            "{}: {:.1} s, {} GETs ({:.0}/s), p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.name,
            self.took.as_secs_f64(),
            self.gets.len(),
            self.gets.len() as f64 / self.took.as_secs_f64(),
            us(0.5),
            us(0.99),
            self.gets.max() as f64 / 1000.0
        )?;
        if let Some(cpu) = self.cpu {
            let share = cpu.as_secs_f64() / self.took.as_secs_f64() * 100.0;
            write!(
                f,
                "; server CPU {:.2} s ({share:.0}% of a core)",
                cpu.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// Runs the GET load from now until the sweep after `due` is done; the
/// windows before `due` and from `due` to the end of the sweep.
async fn measure_gets(args: &Args, client: &Client, due: u64) -> anyhow::Result<Vec<Window>> {
    let stop = Arc::new(AtomicBool::new(false));
    let sweeping = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for task in 0..args.connections as u64 {
        let (client, stop, sweeping) = (client.clone(), stop.clone(), sweeping.clone());
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            let mut windows = [latencies()?, latencies()?];
            while !stop.load(Ordering::Relaxed) {
                let window = usize::from(sweeping.load(Ordering::Relaxed));
                let sent = Instant::now();
                client.get(format!("read:{}", rng.u64(..READ_KEYS))).await?;
                windows[window].saturating_record(sent.elapsed().as_micros() as u64);
            }
            anyhow::Ok(windows)
        });
    }
    let before_started = Instant::now();
    let cpu_at_start = cpu_time(args.server_pid);
    tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await;
    sweeping.store(true, Ordering::Relaxed);
    let before_took = before_started.elapsed();
    let cpu_at_due = cpu_time(args.server_pid);
    let sweep_started = Instant::now();
    swept_after(client, due).await?;
    let sweep_took = sweep_started.elapsed();
    let cpu_at_end = cpu_time(args.server_pid);
    stop.store(true, Ordering::Relaxed);
    let mut gets = [latencies()?, latencies()?];
    while let Some(done) = tasks.join_next().await {
        for (all, one) in gets.iter_mut().zip(done??) {
            all.add(one)?;
        }
    }
    let spent = |from: Option<Duration>, to: Option<Duration>| Some(to? - from?);
    let [before, during] = gets;
    Ok(vec![
        Window {
            name: "before the deadline",
            took: before_took,
            gets: before,
            cpu: spent(cpu_at_start, cpu_at_due),
        },
        Window {
            name: "from the deadline until all are swept",
            took: sweep_took,
            gets: during,
            cpu: spent(cpu_at_due, cpu_at_end),
        },
    ])
}

/// Microseconds, from 1 to a minute, to 3 significant digits.
fn latencies() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// The user and system CPU time process `pid` has used (Linux).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}
