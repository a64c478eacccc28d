//! The load: `-c` connections, each sending batches of `-P` requests and
//! reading their replies, until `-n` requests are done or `--duration` has
//! passed. A request's latency runs from the write of its batch to the
//! arrival of its own reply (as redis-benchmark measures it), recorded in
//! microseconds in an HDR histogram per connection, merged at the end.
//!
//! With `--grpc` a connection is a gRPC channel (one HTTP/2 connection) to
//! the server's `--grpc-listen` port, and a batch is `-P` concurrent calls on
//! it (see [`crate::grpc`]); the same requests are made as gRPC methods.
//! With `--library` the `-c` connections share one client of the client
//! library, `-P` concurrent calls each (see [`crate::library`]).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvstore_client::{codec, Command, Compare, CompareOp, Condition, Expiry, Request, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Args, Test};

/// Where a connection's requests go.
enum Link {
    /// The native protocol or RESP, written by hand over the socket.
    Tcp(TcpStream),
    /// The gRPC service, through the generated tonic client.
    Grpc(crate::grpc::KeyValueClient),
    /// The native protocol through the client library (shared).
    Library(kvstore_client::Client),
}

/// What one test measured.
pub struct Outcome {
    pub test: Test,
    /// Requests answered (a bulkset counts once).
    pub requests: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Requests answered with an error.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Shared by the connections of one test.
pub(crate) struct Shared {
    /// Requests handed out so far (with -n).
    claimed: AtomicU64,
    /// Requests answered so far (for the progress line).
    pub(crate) answered: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
}

impl Shared {
    /// The number of the next batch's first request and how many it may
    /// send; `None` when the test is over.
    pub(crate) fn claim(&self, pipeline: u64) -> Option<(u64, u64)> {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return None;
        }
        let start = self.claimed.fetch_add(pipeline, Ordering::Relaxed);
        let count = match self.deadline {
            Some(_) => pipeline,
            None => self.limit.saturating_sub(start).min(pipeline),
        };
        (count > 0).then_some((start, count))
    }
}

/// One connection's results.
pub(crate) struct Tally {
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
            first_error: None,
        })
    }
}

/// Runs one test with all connections.
pub async fn run(args: &Args, test: Test) -> anyhow::Result<Outcome> {
    let deadline_after = args.duration();
    // Connect everyone first, so the clock does not include connecting.
    let mut links = Vec::with_capacity(args.connections);
    let library = if args.library {
        Some(crate::library::connect(&args.addr)?)
    } else {
        None
    };
    for _ in 0..args.connections {
        if let Some(client) = &library {
            links.push(Link::Library(client.clone()));
            continue;
        }
        if args.grpc {
            links.push(Link::Grpc(crate::grpc::connect(&args.addr).await?));
            continue;
        }
        let stream = TcpStream::connect(&args.addr)
            .await
            .with_context(|| format!("connect to {}", args.addr))?;
        stream.set_nodelay(true)?;
        links.push(Link::Tcp(stream));
    }
    let shared = Arc::new(Shared {
        claimed: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        limit: args.requests,
        deadline: deadline_after.map(|d| Instant::now() + d),
    });
    let progress = progress_bar(args, test, deadline_after);
    let started = Instant::now();
    let tasks: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(i, link)| {
            let (args, shared) = (args.clone(), shared.clone());
            tokio::spawn(async move {
                let seed = i as u64;
                match link {
                    Link::Tcp(stream) => connection(stream, seed, &args, test, &shared).await,
                    Link::Grpc(client) => {
                        crate::grpc::connection(client, seed, &args, test, &shared).await
                    }
                    Link::Library(client) => {
                        crate::library::connection(client, seed, &args, test, &shared).await
                    }
                }
            })
        })
        .collect();
    let ticker = {
        let (shared, progress) = (shared.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.answered.load(Ordering::Relaxed);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                match deadline_after {
                    Some(_) => progress.set_position(started.elapsed().as_secs()),
                    None => progress.set_position(done),
                }
                progress.set_message(format!("{done} requests, {rate:.0} req/s"));
            }
        })
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        let tally = task.await??;
        latency.add(&tally.latency)?;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    Ok(Outcome {
        test,
        requests: latency.len(),
        elapsed,
        latency,
        errors,
        first_error,
    })
}

fn progress_bar(args: &Args, test: Test, duration: Option<Duration>) -> ProgressBar {
    let length = duration.map_or(args.requests, |d| d.as_secs().max(1));
    let bar = ProgressBar::new(length);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(&format!(
        "{:>8} {{bar:30}} {{msg}}",
        test.name().to_uppercase()
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// One connection's loop.
async fn connection(
    mut stream: TcpStream,
    seed: u64,
    args: &Args,
    test: Test,
    shared: &Shared,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut requests = Requests::new(seed, args);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut input = BytesMut::with_capacity(64 * 1024);
    loop {
        let Some((first, batch)) = shared.claim(args.pipeline as u64) else {
            return Ok(tally);
        };
        requests.start_batch(first, test);
        out.clear();
        for _ in 0..batch {
            requests.encode(test, &mut out)?;
        }
        let sent = Instant::now();
        stream.write_all(&out).await?;
        let mut answered = 0;
        while answered < batch {
            match reply(&input, args.resp)? {
                Some((len, error)) => {
                    if let Some(message) = error {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(message);
                    }
                    input.advance(len);
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    tally.latency.saturating_record(micros);
                    answered += 1;
                }
                None => {
                    if stream.read_buf(&mut input).await? == 0 {
                        anyhow::bail!("the server closed the connection");
                    }
                }
            }
        }
        shared.answered.fetch_add(batch, Ordering::Relaxed);
    }
}

/// The loop of a connection whose batch is `-P` concurrent calls (the
/// gRPC and library loads): `call` makes one; an error is its message.
pub(crate) async fn concurrent_batches<F, Fut>(
    seed: u64,
    args: &Args,
    test: Test,
    shared: &Shared,
    call: F,
) -> anyhow::Result<Tally>
where
    F: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut tally = Tally::new()?;
    let mut requests = Requests::new(seed, args);
    loop {
        let Some((first, batch)) = shared.claim(args.pipeline as u64) else {
            return Ok(tally);
        };
        requests.start_batch(first, test);
        let sent = Instant::now();
        let calls: Vec<_> = (0..batch)
            .map(|_| {
                let answer = call(requests.command(test));
                async move { (answer.await, sent.elapsed()) }
            })
            .collect();
        for (answer, took) in futures_util::future::join_all(calls).await {
            if let Err(message) = answer {
                tally.errors += 1;
                tally.first_error.get_or_insert(message);
            }
            let micros = took.as_micros().max(1) as u64;
            tally.latency.saturating_record(micros);
        }
        shared.answered.fetch_add(batch, Ordering::Relaxed);
    }
}

/// Builds the requests of one connection.
pub(crate) struct Requests<'a> {
    rng: fastrand::Rng,
    /// `-d` bytes, shared by every request.
    value: Bytes,
    next_id: u64,
    /// With --sequential: the number of the next key.
    next_key: u64,
    args: &'a Args,
}

impl<'a> Requests<'a> {
    pub(crate) fn new(seed: u64, args: &'a Args) -> Requests<'a> {
        Requests {
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 1),
            value: Bytes::from(vec![b'x'; args.size]),
            next_id: 0,
            next_key: 0,
            args,
        }
    }

    /// Starts a batch whose first request is number `first` of the test.
    /// With --sequential, request n uses keys n·k .. n·k+k-1 (k keys per
    /// request), so a run writes each key of the key space once.
    pub(crate) fn start_batch(&mut self, first: u64, test: Test) {
        self.next_key = first * self.keys_per_request(test);
    }

    /// A key `key:NNNNNNNNNNNN` (16 bytes) out of `-r`: random, or the next
    /// one with --sequential.
    fn key(&mut self) -> Bytes {
        let n = if self.args.sequential {
            self.next_key += 1;
            (self.next_key - 1) % self.args.keyspace
        } else {
            self.rng.u64(0..self.args.keyspace)
        };
        Bytes::from(format!("key:{n:012}"))
    }

    /// Keys one request of `test` uses.
    fn keys_per_request(&self, test: Test) -> u64 {
        match test {
            Test::Bulkset => self.args.bulk as u64,
            _ => 1,
        }
    }

    /// Appends one request of `test` to `out`.
    fn encode(&mut self, test: Test, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let command = self.command(test);
        if self.args.resp {
            resp_request(&command, out);
            return Ok(());
        }
        self.next_id += 1;
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        codec::encode_into(
            &Request {
                id: self.next_id,
                command,
            },
            out,
        )?;
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The next request of `test`, as a native command.
    pub(crate) fn command(&mut self, test: Test) -> Command {
        let test = match test {
            Test::Mixed if self.rng.f64() < self.args.read_ratio => Test::Get,
            Test::Mixed => Test::Set,
            other => other,
        };
        let key = self.key();
        match test {
            Test::Set => match self.args.ttl_ms {
                None => Command::Set {
                    key,
                    value: self.value.clone(),
                },
                Some(ms) => Command::SetExpiring {
                    key,
                    value: self.value.clone(),
                    condition: Condition::Always,
                    get: false,
                    expiry: Expiry::In(ms),
                },
            },
            Test::Get => Command::Get { key },
            Test::Del => Command::Delete { key },
            Test::Exists => Command::Exists { key },
            Test::Txn => Command::Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    target: Target::ModRevision(u64::MAX),
                    op: CompareOp::Less,
                }],
                success: vec![Command::Set {
                    key,
                    value: self.value.clone(),
                }],
                failure: Vec::new(),
            },
            Test::Bulkset | Test::Mixed => {
                let mut items = vec![(key, self.value.clone())];
                items.extend((1..self.args.bulk).map(|_| (self.key(), self.value.clone())));
                Command::BulkSet { items }
            }
        }
    }
}

/// The command as a RESP array of bulk strings.
fn resp_request(command: &Command, out: &mut Vec<u8>) {
    let args: Vec<&[u8]> = match command {
        Command::Set { key, value } => vec![b"SET", key, value],
        Command::SetExpiring {
            key,
            value,
            expiry: Expiry::In(ms),
            ..
        } => {
            let ms = ms.to_string();
            return resp_words(&[b"SET", key, value, b"PX", ms.as_bytes()], out);
        }
        Command::Get { key } => vec![b"GET", key],
        Command::Delete { key } => vec![b"DEL", key],
        Command::Exists { key } => vec![b"EXISTS", key],
        Command::BulkSet { items } => std::iter::once(&b"MSET"[..])
            .chain(items.iter().flat_map(|(k, v)| [&k[..], &v[..]]))
            .collect(),
        other => unreachable!("the bench sends no {other:?}"),
    };
    resp_words(&args, out);
}

fn resp_words(args: &[&[u8]], out: &mut Vec<u8>) {
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The length of the first whole reply in `input`, and its error message if
/// it is an error; `None` if it has not all arrived.
fn reply(input: &[u8], resp: bool) -> anyhow::Result<Option<(usize, Option<String>)>> {
    if resp {
        return resp_reply(input, 0);
    }
    let Some(len) = input.get(..4) else {
        return Ok(None);
    };
    let len = 4 + u32::from_be_bytes(len.try_into()?) as usize;
    let Some(body) = input.get(4..len) else {
        return Ok(None);
    };
    // Response = id (8 bytes), then the Reply's tag; tag 4 is Error.
    let tag = body
        .get(8..12)
        .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()));
    let error = (tag == Some(4)).then(|| {
        codec::decode::<kvstore_client::Response>(body)
            .map(|r| format!("{:?}", r.reply))
            .unwrap_or_else(|e| e.to_string())
    });
    Ok(Some((len, error)))
}

/// A RESP reply starting at `at`: its end and its error text, if whole.
fn resp_reply(input: &[u8], at: usize) -> anyhow::Result<Option<(usize, Option<String>)>> {
    let Some(&kind) = input.get(at) else {
        return Ok(None);
    };
    let Some(eol) = input[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &input[at + 1..at + eol];
    let after = at + eol + 2;
    let number = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(line)?.parse()?) };
    match kind {
        b'+' | b':' | b'_' => Ok(Some((after - at, None))),
        b'-' => Ok(Some((
            after - at,
            Some(String::from_utf8_lossy(line).into_owned()),
        ))),
        b'$' => {
            let n = number()?;
            let end = if n < 0 { after } else { after + n as usize + 2 };
            Ok((input.len() >= end).then_some((end - at, None)))
        }
        b'*' => {
            let mut end = after;
            for _ in 0..number()?.max(0) {
                match resp_reply(input, end)? {
                    Some((len, _)) => end += len,
                    None => return Ok(None),
                }
            }
            Ok(Some((end - at, None)))
        }
        other => anyhow::bail!("unexpected RESP reply byte {:?}", other as char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_are_found_whole_or_not_at_all() {
        let wire = b"+OK\r\n$3\r\nabc\r\n$-1\r\n:12\r\n-ERR no\r\n*2\r\n$1\r\na\r\n:1\r\n";
        let mut at = 0;
        let mut errors = Vec::new();
        while at < wire.len() {
            let (len, error) = resp_reply(wire, at).unwrap().unwrap();
            errors.push(error);
            at += len;
        }
        assert_eq!(at, wire.len());
        assert_eq!(errors.iter().filter(|e| e.is_some()).count(), 1);
        for cut in 0..wire.len() {
            if let Some((len, _)) = resp_reply(&wire[..cut], 0).unwrap() {
                assert!(len <= cut);
            }
        }
        assert!(resp_reply(b"$5\r\nab", 0).unwrap().is_none());
    }
}
