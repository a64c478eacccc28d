//! The results: a table on the terminal and rows of a CSV file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::load::Outcome;
use crate::Args;

/// One row of the CSV: one test of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `--label`: the system measured.
    pub system: String,
    /// `native`, `resp` or `grpc`.
    pub protocol: String,
    pub test: String,
    pub connections: usize,
    pub pipeline: usize,
    pub value_size: usize,
    /// Pairs per bulkset request.
    pub bulk: usize,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

impl Row {
    pub fn new(args: &Args, outcome: &Outcome) -> Row {
        let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
        let seconds = outcome.elapsed.as_secs_f64();
        Row {
            system: args.label(),
            protocol: if args.resp {
                "resp"
            } else if args.grpc {
                "grpc"
            } else {
                "native"
            }
            .into(),
            test: outcome.test.name().into(),
            connections: args.connections,
            pipeline: args.pipeline,
            value_size: args.size,
            bulk: args.bulk,
            requests: outcome.requests,
            seconds,
            requests_per_sec: outcome.requests as f64 / seconds.max(1e-9),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: outcome.latency.max() as f64 / 1000.0,
            errors: outcome.errors,
        }
    }
}

/// The run's settings, then the table's header.
pub fn header(args: &Args) {
    let amount = match args.duration {
        Some(secs) => format!("{secs} s per test"),
        None => format!("{} requests per test", args.requests),
    };
    println!(
        "{} ({}) at {}: {} connections, pipeline {}, {}-byte values, {} keys, {amount}",
        args.label(),
        if args.resp { "RESP" } else { "native" },
        args.addr,
        args.connections,
        args.pipeline,
        args.size,
        args.keyspace,
    );
    println!(
        "{:<8} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "test", "requests", "requests/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "errors"
    );
}

pub fn row(args: &Args, outcome: &Outcome) {
    let r = Row::new(args, outcome);
    println!(
        "{:<8} {:>10} {:>12.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}",
        r.test,
        r.requests,
        r.requests_per_sec,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.errors
    );
}

/// Appends the row, with a header if the file is new or empty.
pub fn append_csv(path: &Path, args: &Args, outcome: &Outcome) -> anyhow::Result<()> {
    let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut writer = csv::WriterBuilder::new()
        .has_headers(fresh)
        .from_writer(file);
    writer.serialize(Row::new(args, outcome))?;
    writer.flush()?;
    Ok(())
}

/// Every row of a CSV file written by [`append_csv`].
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut reader = csv::Reader::from_path(path)?;
    Ok(reader.deserialize().collect::<Result<_, _>>()?)
}
