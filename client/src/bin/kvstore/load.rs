//! `kvstore load FILE`: the bulk loader.
//!
//! A reader thread parses CSV (`key,value`), TSV or JSON Lines
//! (`{"key": "...", "value": ...}`; a value that is not a string is stored as
//! its JSON text) and cuts the rows into batches by count and by bytes. The
//! async side sends each batch as one BulkSet, several in flight; to a
//! sharded cluster, as one BulkSet per group (`Client::bulk_set_split`,
//! since a BulkSet over several slots is refused there). A BulkSet is
//! atomic and idempotent, so loading the same file twice gives the same
//! state; a failed part stops the load, and the rows of the parts stored
//! count as acknowledged.
//!
//! A malformed line stops the load (after sending the rows before it) with its
//! line number and the reason, and reports how many rows were acknowledged;
//! `--skip-bad` counts and skips such lines instead.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use kvstore_client::{Client, Error, Part};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::{print_json, say, Output};
use crate::Exit;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The file to load, or "-" for standard input.
    file: PathBuf,
    /// Input format; by default taken from the file's extension (.csv, .tsv,
    /// .jsonl/.ndjson), CSV for standard input.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The first CSV/TSV line is a header, not data.
    #[arg(long)]
    header: bool,
    /// Rows per BulkSet, at most.
    #[arg(long, default_value_t = 1000)]
    batch_rows: usize,
    /// Bytes of keys and values per BulkSet, at most (a single larger row
    /// goes alone).
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// BulkSets in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Skip and count malformed lines instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Tsv,
    Jsonl,
}

/// What the reader thread sends.
enum Item {
    /// Rows to store, their bytes, and how far into the input they end.
    Batch(Vec<(Bytes, Bytes)>, u64),
    /// A malformed line: the load stops (the rows before it were sent).
    Bad { line: u64, reason: String },
    /// The input is exhausted; `skipped` malformed lines were passed over.
    End { skipped: u64 },
}

/// Totals of a load.
#[derive(Default)]
struct Totals {
    rows: u64,
    bytes: u64,
}

pub async fn run(client: &Client, args: &LoadArgs, out: Output) -> Exit {
    let format = args.format.unwrap_or_else(|| format_of(&args.file));
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if args.file == Path::new("-") {
        (Box::new(std::io::stdin()), None)
    } else {
        match File::open(&args.file) {
            Ok(f) => {
                let size = f.metadata().ok().map(|m| m.len());
                (Box::new(f), size)
            }
            Err(e) => {
                eprintln!("kvstore: cannot open {}: {e}", args.file.display());
                return Exit::Usage;
            }
        }
    };
    let progress = progress_bar(size);
    let started = Instant::now();
    let read_bytes = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::channel(args.in_flight.max(1));
    let reader = {
        let (batch_rows, batch_bytes, header, skip_bad) = (
            args.batch_rows.max(1),
            args.batch_bytes,
            args.header,
            args.skip_bad,
        );
        let read_bytes = read_bytes.clone();
        std::thread::spawn(move || {
            let mut batcher = Batcher {
                tx,
                rows: Vec::new(),
                bytes: 0,
                batch_rows,
                batch_bytes,
                read_bytes,
            };
            let result = match format {
                Format::Csv => read_delimited(input, b',', true, header, skip_bad, &mut batcher),
                Format::Tsv => read_delimited(input, b'\t', false, header, skip_bad, &mut batcher),
                Format::Jsonl => read_jsonl(input, skip_bad, &mut batcher),
            };
            let item = match result {
                Ok(skipped) => Item::End { skipped },
                Err((line, reason)) => Item::Bad { line, reason },
            };
            if batcher.flush() {
                let _ = batcher.tx.blocking_send(item);
            }
        })
    };

    let mut acked = Totals::default();
    let mut sending: JoinSet<Stored> = JoinSet::new();
    let mut failure: Option<Error> = None;
    let mut ending = None;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Batch(rows, pos) => {
                while sending.len() >= args.in_flight.max(1) {
                    collect(sending.join_next().await, &mut acked, &mut failure);
                }
                if failure.is_some() {
                    break;
                }
                let client = client.clone();
                let (n, bytes) = (
                    rows.len() as u64,
                    rows.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
                );
                sending.spawn(async move { stored(client.bulk_set_split(rows).await, n, bytes) });
                progress.set_position(pos);
                progress.set_message(format!("{} rows", acked.rows));
            }
            end => {
                ending = Some(end);
                break;
            }
        }
    }
    while let Some(done) = sending.join_next().await {
        collect(Some(done), &mut acked, &mut failure);
    }
    drop(rx);
    let _ = reader.join();
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = acked.rows as f64 / secs.max(1e-9);

    if let Some(e) = failure {
        eprintln!(
            "kvstore: load failed: {e}; {} rows were acknowledged before it",
            acked.rows
        );
        return Exit::of(&e);
    }
    match ending {
        Some(Item::Bad { line, reason }) => {
            eprintln!(
                "kvstore: line {line}: {reason}; stopped after {} acknowledged rows (--skip-bad skips such lines)",
                acked.rows
            );
            Exit::NotFound
        }
        Some(Item::End { skipped }) => {
            match out {
                Output::Text => say(&format!(
                    "loaded {} rows ({} bytes) in {secs:.2} s: {rate:.0} rows/s{}",
                    acked.rows,
                    acked.bytes,
                    if skipped > 0 {
                        format!(", {skipped} malformed lines skipped")
                    } else {
                        String::new()
                    }
                )),
                Output::Json => print_json(&serde_json::json!({
                    "rows": acked.rows, "bytes": acked.bytes, "seconds": secs, "rows_per_second": rate, "skipped": skipped
                })),
            }
            Exit::Ok
        }
        _ => {
            eprintln!("kvstore: the input reader stopped unexpectedly");
            Exit::Server
        }
    }
}

/// What one batch's task gives back: the rows and bytes it stored, and
/// the first error of a part not stored.
type Stored = (Totals, Option<Error>);

/// What a batch of `rows` rows and `bytes` bytes split into `parts` stored:
/// every row of the parts stored, the bytes once all are.
fn stored(parts: Vec<Part<()>>, rows: u64, bytes: u64) -> Stored {
    let mut done = Totals::default();
    let mut failure = None;
    for part in parts {
        match part.result {
            Ok(()) => done.rows += part.keys as u64,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if done.rows == rows {
        done.bytes = bytes;
    }
    (done, failure)
}

type Sent = Result<Stored, tokio::task::JoinError>;

fn collect(done: Option<Sent>, acked: &mut Totals, failure: &mut Option<Error>) {
    match done {
        Some(Ok((stored, error))) => {
            acked.rows += stored.rows;
            acked.bytes += stored.bytes;
            if let Some(e) = error {
                failure.get_or_insert(e);
            }
        }
        Some(Err(e)) => {
            failure.get_or_insert(Error::ConnectionLost(format!("a load task failed: {e}")));
        }
        None => {}
    }
}

fn format_of(path: &Path) -> Format {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("tsv" | "tab") => Format::Tsv,
        Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
        _ => Format::Csv,
    }
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}

/// Cuts rows into batches and hands them to the async side.
struct Batcher {
    tx: mpsc::Sender<Item>,
    rows: Vec<(Bytes, Bytes)>,
    bytes: usize,
    batch_rows: usize,
    batch_bytes: usize,
    /// How far into the input the reader is, for the progress bar.
    read_bytes: Arc<AtomicU64>,
}

impl Batcher {
    /// Adds a row; a batch goes out before the row that would take it past
    /// `batch_bytes`, or once it holds `batch_rows`. Returns false once the
    /// async side has stopped (a BulkSet failed): the reader stops too.
    fn push(&mut self, key: Bytes, value: Bytes, input_pos: u64) -> bool {
        let size = key.len() + value.len();
        if !self.rows.is_empty() && self.bytes + size > self.batch_bytes && !self.flush() {
            return false;
        }
        self.bytes += size;
        self.rows.push((key, value));
        self.read_bytes.store(input_pos, Ordering::Relaxed);
        self.rows.len() < self.batch_rows || self.flush()
    }

    /// Sends the rows gathered so far; false if nobody receives any more.
    fn flush(&mut self) -> bool {
        if self.rows.is_empty() {
            return !self.tx.is_closed();
        }
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        self.tx
            .blocking_send(Item::Batch(rows, self.read_bytes.load(Ordering::Relaxed)))
            .is_ok()
    }
}

/// Reads CSV or TSV rows of exactly two fields. Returns the number of
/// skipped lines, or the first malformed line and why.
fn read_delimited(
    input: Box<dyn Read + Send>,
    delimiter: u8,
    quoting: bool,
    header: bool,
    skip_bad: bool,
    batcher: &mut Batcher,
) -> Result<u64, (u64, String)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(header)
        .delimiter(delimiter)
        .quoting(quoting)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut skipped = 0;
    loop {
        let bad = match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(skipped),
            Ok(true) if record.len() == 2 => {
                let pos = record.position().map_or(0, |p| p.byte());
                let (key, value) = (
                    Bytes::copy_from_slice(&record[0]),
                    Bytes::copy_from_slice(&record[1]),
                );
                if !batcher.push(key, value, pos) {
                    return Ok(skipped);
                }
                continue;
            }
            Ok(true) => (
                record.position().map_or(0, |p| p.line()),
                format!("expected 2 fields (key, value), found {}", record.len()),
            ),
            // A failing input is no malformed line: never skipped.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                let line = reader.position().line();
                return Err((line, e.to_string()));
            }
            Err(e) => (e.position().map_or(0, |p| p.line()), e.to_string()),
        };
        if !skip_bad {
            return Err(bad);
        }
        skipped += 1;
    }
}

/// Reads JSON Lines: one object per line with a string `key` and a `value`.
fn read_jsonl(
    input: Box<dyn Read + Send>,
    skip_bad: bool,
    batcher: &mut Batcher,
) -> Result<u64, (u64, String)> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    let (mut number, mut pos, mut skipped) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(skipped),
            Ok(n) => {
                number += 1;
                pos += n as u64;
            }
            Err(e) => return Err((number + 1, format!("read failed: {e}"))),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_json_row(&line) {
            Ok((key, value)) => {
                if !batcher.push(key, value, pos) {
                    return Ok(skipped);
                }
            }
            Err(reason) if !skip_bad => return Err((number, reason)),
            Err(_) => skipped += 1,
        }
    }
}

fn parse_json_row(line: &[u8]) -> Result<(Bytes, Bytes), String> {
    let row: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut row) = row else {
        return Err("expected an object with \"key\" and \"value\"".into());
    };
    let key = match row.remove("key") {
        Some(Value::String(k)) => Bytes::from(k),
        Some(_) => return Err("\"key\" must be a string".into()),
        None => return Err("missing \"key\"".into()),
    };
    let value = match row.remove("value") {
        Some(Value::String(v)) => Bytes::from(v),
        Some(other) => Bytes::from(other.to_string()),
        None => return Err("missing \"value\"".into()),
    };
    Ok((key, value))
}
