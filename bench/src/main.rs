//! `kvstore-bench`: a load generator in the manner of redis-benchmark.
//!
//! It speaks kvstore's native protocol, or with `--resp` the Redis protocol
//! (to kvstore's `--resp-listen` port or to Redis itself), or with `--grpc`
//! kvstore's gRPC service (`--grpc-listen`), so that kvstore's doors and
//! Redis are measured by the same tool:
//!
//! ```sh
//! kvstore-bench --addr 127.0.0.1:65433 -c 50 -n 200000 -d 100 -t set,get
//! kvstore-bench --resp --addr 127.0.0.1:6379 --label redis -t set,get -P 16 --csv out.csv
//! kvstore-bench --grpc --addr 127.0.0.1:50051 -c 50 -t set,get
//! kvstore-bench --library --addr 127.0.0.1:7001,127.0.0.1:7002 -c 50 -t set
//! kvstore-bench --plot charts/ --csv out.csv     # after several runs into out.csv
//! ```
//!
//! Modules: [`load`] (the connections and their request loops), [`grpc`]
//! (the gRPC connections' loop), [`library`] (the client library's
//! loop), [`expiry`] (what deadlines cost), [`watch`] (what watches
//! cost), [`report`]
//! (the table, the CSV), [`plot`] (PNG charts from the CSV), [`summary`] (a
//! Markdown table of ratios between systems, from the CSV), [`probe`] (the
//! disk's `fdatasync` latency, with no server).

mod expiry;
mod grpc;
mod library;
mod load;
mod plot;
mod probe;
mod report;
mod summary;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What one test sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Test {
    Set,
    Get,
    Del,
    Exists,
    /// `BulkSet` of `--bulk` pairs (RESP: `MSET`).
    Bulkset,
    /// Gets and sets on the same keys, `--read-ratio` of them gets.
    Mixed,
    /// A transaction of one compare that holds (the key's revision below
    /// the largest) and one Set: the native door only.
    Txn,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::Set => "set",
            Test::Get => "get",
            Test::Del => "del",
            Test::Exists => "exists",
            Test::Bulkset => "bulkset",
            Test::Mixed => "mixed",
            Test::Txn => "txn",
        }
    }
}

/// kvstore-bench: requests/s and latency percentiles of kvstore or Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-bench", version, about)]
pub struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:65433")]
    pub addr: String,
    /// Concurrent connections.
    #[arg(short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Requests per test, across all connections (ignored with --duration).
    #[arg(short = 'n', default_value_t = 100_000)]
    pub requests: u64,
    /// Run each test for this many seconds instead of -n requests.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Value size in bytes.
    #[arg(short = 'd', default_value_t = 100)]
    pub size: usize,
    /// Requests each connection sends before reading the replies.
    #[arg(short = 'P', default_value_t = 1)]
    pub pipeline: usize,
    /// Key space: random keys `key:NNNNNNNNNNNN` below this.
    #[arg(short = 'r', default_value_t = 100_000)]
    pub keyspace: u64,
    /// Tests to run, in order.
    #[arg(
        short = 't',
        value_enum,
        value_delimiter = ',',
        default_value = "set,get"
    )]
    pub tests: Vec<Test>,
    /// Pairs per bulkset request.
    #[arg(long, default_value_t = 100)]
    pub bulk: usize,
    /// Keys in order instead of at random: each key of -r once (then again
    /// from the start), e.g. to load exactly -r keys with -t bulkset.
    #[arg(long)]
    pub sequential: bool,
    /// The set test's keys expire this many milliseconds after they are
    /// set (native SetExpiring, RESP SET ... PX, gRPC Put's ttl_ms).
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Share of gets in the mixed test.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Speak RESP (Redis's protocol) instead of kvstore's native protocol.
    #[arg(long, conflicts_with = "grpc")]
    pub resp: bool,
    /// Call kvstore's gRPC service (the server's --grpc-listen address)
    /// instead of the native protocol; -P is concurrent calls per connection.
    #[arg(long)]
    pub grpc: bool,
    /// Go through the kvstore_client library: one client shared by the -c
    /// tasks, -P concurrent calls each; --addr may list a cluster's nodes,
    /// comma-separated (a sharded cluster's keys go to their groups'
    /// leaders).
    #[arg(long, conflicts_with_all = ["grpc", "resp"])]
    pub library: bool,
    /// The system's name in the table, the CSV and the charts (default:
    /// `kvstore`, `kvstore-resp` with --resp, `kvstore-grpc` with --grpc).
    #[arg(long)]
    pub label: Option<String>,
    /// Append one row per test to this CSV file (written with a header if new).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write PNG charts of every row in --csv into this directory (with
    /// -n 0, nothing is measured: only the charts and --markdown are made).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// With --markdown: compare system A with system B (the --label names),
    /// as `A:B`; repeatable.
    #[arg(long)]
    pub compare: Vec<String>,
    /// Write a Markdown table of the --compare ratios of every row in --csv.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Measure write + fdatasync of 128-byte records in a new file in this
    /// directory (removed after), over zeros written ahead and appended,
    /// and print their latency; no server needed.
    #[arg(long, value_name = "DIR")]
    pub fsync_probe: Option<PathBuf>,
    /// Measure expiry instead of running tests: -r keys with random times
    /// to live, then -r keys due at once under a GET load of -c tasks
    /// (the `expiry` module; benches/expiry.sh).
    #[arg(long)]
    pub expiry: bool,
    /// With --expiry: the server's process id, to report its CPU time;
    /// with --watchers, its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Measure watches instead of running tests: for each count, that many
    /// watches of one prefix, then -n writes to it one at a time (the
    /// `watch` module; benches/watch.sh).
    #[arg(long, value_delimiter = ',')]
    pub watchers: Vec<usize>,
}

impl Args {
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            if self.resp {
                "kvstore-resp".into()
            } else if self.grpc {
                "kvstore-grpc".into()
            } else if self.library {
                "kvstore-library".into()
            } else {
                "kvstore".into()
            }
        })
    }

    pub fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs_f64)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "-c must be at least 1");
    anyhow::ensure!(args.pipeline > 0, "-P must be at least 1");
    anyhow::ensure!(args.keyspace > 0, "-r must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.read_ratio),
        "--read-ratio is between 0 and 1"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(dir) = &args.fsync_probe {
        // The first is the floor under a durable write; the second for comparison.
        let lines: Vec<String> = [probe::Mode::Overwrite, probe::Mode::Append]
            .into_iter()
            .map(|mode| Ok(probe::describe(&probe::fsync_latency(dir, mode)?, mode)))
            .collect::<anyhow::Result<_>>()?;
        println!("{}", lines.join("; "));
        return Ok(());
    }
    if args.expiry {
        return runtime.block_on(expiry::run(&args));
    }
    if !args.watchers.is_empty() {
        return runtime.block_on(watch::run(&args));
    }
    anyhow::ensure!(
        !args.tests.contains(&Test::Txn) || !(args.resp || args.grpc || args.library),
        "-t txn sends native transactions: not with --resp, --grpc or --library"
    );
    let report_only = args.requests == 0 && args.duration.is_none();
    if !report_only {
        report::header(&args);
        for &test in &args.tests {
            let result = runtime.block_on(load::run(&args, test))?;
            report::row(&args, &result);
            if let Some(path) = &args.csv {
                report::append_csv(path, &args, &result)?;
            }
            anyhow::ensure!(
                result.errors == 0,
                "{}: the server answered {} requests with an error (first: {})",
                test.name(),
                result.errors,
                result.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    if let Some(dir) = &args.plot {
        let csv = args
            .csv
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--plot draws the rows of --csv FILE: give both"))?;
        let written = plot::charts(csv, dir)?;
        for path in written {
            println!("wrote {}", path.display());
        }
    }
    if let Some(path) = &args.markdown {
        let csv = args.csv.as_ref().ok_or_else(|| {
            anyhow::anyhow!("--markdown compares the rows of --csv FILE: give both")
        })?;
        std::fs::write(path, summary::markdown(csv, &args.compare)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
