//! `kvstore-crashtest`: the kill -9 durability harness.
//!
//! Each cycle starts the real `kvstore-server` on a free loopback port and one
//! data directory, checks that it came back with exactly what was promised,
//! lets several writers (Set, Delete, BulkSet, Txn) run for a random time while it
//! records every acknowledged write and every write in flight, then kills the
//! server with SIGKILL. Snapshots are made frequent (`--snapshot-after-bytes`)
//! so that kills land during snapshots and log rotation too.
//!
//! After each restart, for every key: the value is the last acknowledged one,
//! or the outcome of its writer's one write in flight; nothing else (a value
//! nobody wrote, a lost acknowledged write, a BulkSet or Txn in part) is a violation,
//! printed with the key, the expected and the found value. Values carry their
//! writer, sequence number and a CRC32C, so damaged bytes are caught too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use kvstore_client::{Client, Transaction};

use kvstore::storage::simfs::Rng;

/// Kill -9 durability harness for kvstore-server.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-crashtest", version, about)]
pub struct Args {
    /// The server binary (default: kvstore-server beside this program).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Data directory (default: a fresh temporary one, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Kill/restart cycles to run.
    #[arg(long, default_value_t = 20)]
    pub cycles: u64,
    /// Run for this many seconds instead of a fixed number of cycles.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Concurrent writer connections.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Keys each writer owns.
    #[arg(long, default_value_t = 32)]
    pub keys: usize,
    /// Longest time the writers run before the kill, in milliseconds (the
    /// kill lands at a random moment up to this).
    #[arg(long, default_value_t = 400)]
    pub max_run_ms: u64,
    /// The server's snapshot threshold: small, so kills hit snapshots.
    #[arg(long, default_value_t = 32 * 1024)]
    pub snapshot_after_bytes: u64,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The server's storage engine (`--engine`).
    #[arg(long, value_enum, default_value_t = kvstore::config::EngineKind::Memory)]
    pub engine: kvstore::config::EngineKind,
}

/// What one writer knows.
#[derive(Clone, Default)]
struct Ledger {
    /// Key to its last acknowledged value (`None`: deleted).
    acked: BTreeMap<Bytes, Option<Bytes>>,
    /// The effects of the write sent and not yet acknowledged.
    in_flight: Vec<(Bytes, Option<Bytes>)>,
    /// Writes acknowledged in this cycle.
    acked_count: u64,
    /// The writer's next sequence number: it never restarts, so no value is
    /// ever written twice and a stale value cannot pass for a new one.
    next_seq: u64,
}

/// Totals over all cycles.
#[derive(Debug, Default)]
pub struct Totals {
    pub cycles: u64,
    pub acked: u64,
    pub lost: u64,
    pub torn_bulksets: u64,
    pub foreign_values: u64,
    pub in_flight_landed: u64,
    pub max_restart: Duration,
    pub total_restart: Duration,
    /// Kills that left an unfinished snapshot (`kvstore.db.tmp`) behind.
    pub kills_mid_snapshot: u64,
    /// Kills that left more than one log segment: after a rotation, before
    /// the snapshot that covers the old segment had finished.
    pub kills_mid_rotation: u64,
}

impl Totals {
    pub fn violations(&self) -> u64 {
        self.lost + self.torn_bulksets + self.foreign_values
    }
}

/// A value that says who wrote it and proves its bytes: `w{w}:s{seq}:{crc}`.
fn value(writer: usize, seq: u64) -> Bytes {
    let payload = format!("w{writer}:s{seq}:{}", "x".repeat((seq % 64) as usize));
    Bytes::from(format!(
        "{payload}:{:08x}",
        crc32c::crc32c(payload.as_bytes())
    ))
}

fn value_is_intact(v: &[u8]) -> bool {
    let Some(at) = v.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (payload, crc) = (&v[..at], &v[at + 1..]);
    format!("{:08x}", crc32c::crc32c(payload)).as_bytes() == crc
}

fn key(writer: usize, k: usize) -> Bytes {
    Bytes::from(format!("w{writer}:k{k:04}"))
}

/// Runs the harness; returns the totals (violations are counted, printed,
/// and make the caller exit non-zero).
pub fn run(args: &Args) -> anyhow::Result<Totals> {
    let server = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .with_file_name(format!("kvstore-server{}", std::env::consts::EXE_SUFFIX)),
    };
    anyhow::ensure!(
        server.exists(),
        "no server binary at {} (use --server)",
        server.display()
    );
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "kvstore-crashtest: server {}, data {}, {} writers x {} keys, seed {seed}",
        server.display(),
        dir.display(),
        args.writers,
        args.keys
    );
    let mut rng = Rng::new(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut ledgers: Vec<Ledger> = vec![Ledger::default(); args.writers];
    let mut totals = Totals::default();
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    loop {
        let done = match deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => totals.cycles >= args.cycles,
        };
        if done {
            break;
        }
        totals.cycles += 1;
        if dir.join("kvstore.db.tmp").exists() {
            totals.kills_mid_snapshot += 1;
        }
        let segments = std::fs::read_dir(dir.join("kvstore.db-wal"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                    .count()
            })
            .unwrap_or(0);
        if segments > 1 {
            totals.kills_mid_rotation += 1;
        }
        let spawned = Instant::now();
        let (mut child, addr) = start_server(&server, &dir, args)?;
        let client = Client::builder().addr(addr.to_string()).build()?;
        // The first answered request ends the restart.
        runtime.block_on(client.exists("probe"))?;
        let restart = spawned.elapsed();
        totals.max_restart = totals.max_restart.max(restart);
        totals.total_restart += restart;
        let found = runtime.block_on(verify(&client, &mut ledgers, args, &mut totals))?;
        if found > 0 {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "cycle {}: {found} violations (see above); data left in {}",
                totals.cycles,
                dir.display()
            );
        }

        let run_for = Duration::from_millis(rng.below(args.max_run_ms as usize + 1) as u64);
        let shared: Vec<Arc<Mutex<Ledger>>> =
            ledgers.drain(..).map(|l| Arc::new(Mutex::new(l))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = shared
            .iter()
            .enumerate()
            .map(|(w, ledger)| {
                let (ledger, stop, addr) = (ledger.clone(), stop.clone(), addr);
                let (keys, seed) = (args.keys, rng.next_u64());
                runtime.spawn(async move { write(w, keys, seed, addr, ledger, stop).await })
            })
            .collect();
        std::thread::sleep(run_for);
        // SIGKILL: no shutdown code runs in the server.
        child.kill()?;
        child.wait()?;
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            runtime.block_on(writer)?;
        }
        ledgers = shared
            .into_iter()
            .map(|l| {
                Arc::try_unwrap(l)
                    .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
                    .unwrap_or_default()
            })
            .collect();
        let acked: u64 = ledgers.iter().map(|l| l.acked_count).sum();
        totals.acked += acked;
        println!(
            "cycle {:>5}: ran {:>4} ms, {:>6} writes acknowledged, restart {:>5.1} ms, violations 0",
            totals.cycles,
            run_for.as_millis(),
            acked,
            restart.as_secs_f64() * 1000.0
        );
        for ledger in &mut ledgers {
            ledger.acked_count = 0;
        }
    }
    // A last restart to check the writes of the final cycle.
    let (mut child, addr) = start_server(&server, &dir, args)?;
    let client = Client::builder().addr(addr.to_string()).build()?;
    let found = runtime.block_on(verify(&client, &mut ledgers, args, &mut totals))?;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "total: {} cycles in {:.1} s, {} writes acknowledged, lost {}, torn BulkSets {}, unwritten values {}, \
         in-flight writes that landed {}, restart mean {:.1} ms max {:.1} ms, kills during a snapshot {}, \
         kills between a log rotation and its snapshot {}",
        totals.cycles,
        started.elapsed().as_secs_f64(),
        totals.acked,
        totals.lost,
        totals.torn_bulksets,
        totals.foreign_values,
        totals.in_flight_landed,
        totals.total_restart.as_secs_f64() * 1000.0 / totals.cycles.max(1) as f64,
        totals.max_restart.as_secs_f64() * 1000.0,
        totals.kills_mid_snapshot,
        totals.kills_mid_rotation
    );
    anyhow::ensure!(
        found == 0 && totals.violations() == 0,
        "durability violations found"
    );
    Ok(totals)
}

fn start_server(
    server: &PathBuf,
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(server)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("kvstore.db"))
        .arg("--snapshot-after-bytes")
        .arg(args.snapshot_after_bytes.to_string())
        .args(["--engine", args.engine.name()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => Ok((child, addr)),
        None => {
            let status = child.wait()?;
            anyhow::bail!(
                "the server did not start ({status}): it must start without manual repair"
            )
        }
    }
}

/// One writer: random Set/Delete/BulkSet/Txn on its own keys until stopped or
/// the connection dies.
async fn write(
    w: usize,
    keys: usize,
    seed: u64,
    addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(client) = Client::builder()
        .addr(addr.to_string())
        .connections(1)
        .max_attempts(1)
        .request_timeout(Duration::from_secs(5))
        .build()
    else {
        return;
    };
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::SeqCst) {
        let seq = {
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            ledger.next_seq += 1;
            ledger.next_seq
        };
        let v = value(w, seq);
        let (effects, result) = match rng.below(11) {
            0..=5 => {
                let k = key(w, rng.below(keys));
                ledger.lock().unwrap_or_else(|e| e.into_inner()).in_flight =
                    vec![(k.clone(), Some(v.clone()))];
                (vec![(k.clone(), Some(v.clone()))], client.set(k, v).await)
            }
            6..=7 => {
                let k = key(w, rng.below(keys));
                ledger.lock().unwrap_or_else(|e| e.into_inner()).in_flight =
                    vec![(k.clone(), None)];
                (vec![(k.clone(), None)], client.delete(k).await.map(|_| ()))
            }
            8..=9 => {
                let n = 2 + rng.below(6);
                let first = rng.below(keys);
                let items: Vec<_> = (0..n)
                    .map(|i| (key(w, (first + i * 7) % keys), v.clone()))
                    .collect();
                let effects: Vec<_> = items
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect();
                ledger.lock().unwrap_or_else(|e| e.into_inner()).in_flight = effects.clone();
                (effects, client.bulk_set(items).await)
            }
            // A transaction: some keys set, others removed, one record.
            _ => {
                let n = 2 + rng.below(6);
                let first = rng.below(keys);
                let effects: Vec<_> = (0..n)
                    .map(|i| {
                        (
                            key(w, (first + i * 7) % keys),
                            (i % 2 == 0).then(|| v.clone()),
                        )
                    })
                    .collect();
                let txn = (effects.iter()).fold(Transaction::new(), |txn, (key, value)| {
                    txn.then(match value {
                        Some(value) => kvstore_client::Command::Set {
                            key: key.clone(),
                            value: value.clone(),
                        },
                        None => kvstore_client::Command::Delete { key: key.clone() },
                    })
                });
                ledger.lock().unwrap_or_else(|e| e.into_inner()).in_flight = effects.clone();
                (effects, client.txn(txn).await.map(drop))
            }
        };
        if result.is_err() {
            // Killed mid-write: the write stays in flight, landed or not.
            return;
        }
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.acked.extend(effects);
        ledger.in_flight.clear();
        ledger.acked_count += 1;
    }
}

/// Checks the restarted server against the ledgers; resolves each write in
/// flight (landed or not) into the ledger. Returns the violations found.
async fn verify(
    client: &Client,
    ledgers: &mut [Ledger],
    args: &Args,
    totals: &mut Totals,
) -> anyhow::Result<u64> {
    let mut violations = 0;
    for (w, ledger) in ledgers.iter_mut().enumerate() {
        let flight: BTreeMap<Bytes, Option<Bytes>> = ledger.in_flight.iter().cloned().collect();
        let mut landed = 0;
        let mut changing = 0;
        for k in 0..args.keys {
            let key = key(w, k);
            let found = client.get(&key).await?;
            let acked = ledger.acked.get(&key).cloned().flatten();
            let in_flight = flight.get(&key);
            if let Some(v) = &found {
                if !value_is_intact(v) || !v.starts_with(format!("w{w}:").as_bytes()) {
                    totals.foreign_values += 1;
                    violations += 1;
                    println!("VIOLATION key {key:?}: holds a value nobody wrote: {v:?}");
                    continue;
                }
            }
            if let Some(new) = in_flight {
                if *new != acked {
                    changing += 1;
                    if found == *new {
                        landed += 1;
                    }
                }
            }
            if found != acked && in_flight != Some(&found) {
                totals.lost += 1;
                violations += 1;
                println!("VIOLATION key {key:?}: expected {acked:?} (acknowledged) or {in_flight:?} (in flight), found {found:?}");
            }
        }
        if landed != 0 && landed != changing {
            totals.torn_bulksets += 1;
            violations += 1;
            println!("VIOLATION writer {w}: {landed} of {changing} items of the BulkSet or transaction in flight are there");
        }
        if landed > 0 && landed == changing {
            totals.in_flight_landed += 1;
            ledger.acked.extend(ledger.in_flight.drain(..));
        }
        ledger.in_flight.clear();
    }
    Ok(violations)
}
