//! The Redis-protocol door: a second listener (`--resp-listen`) that speaks
//! RESP2, and RESP3 after `HELLO 3`, so that `redis-cli`, `redis-benchmark`
//! and any Redis client library work against kvstore.
//!
//! It shares everything behind the native door: the store, the group-commit
//! log (a write through RESP is acknowledged only once it is durable, like a
//! native one), the limits, the connection limit and counters, the auth token
//! (`AUTH`), TLS and shutdown. Most commands are translated into native
//! [`kvstore_client::Command`]s and run through `crate::cmd`, so both doors
//! have the same semantics; the rest (MGET, KEYS, SCAN, INFO, ...) read the
//! store directly.
//!
//! The path of a request: [`codec`] (bytes to arguments) → [`serve`] (this
//! connection's loop: pipelining, order of replies, timeouts) →
//! [`commands`] (what each command does) → `crate::cmd` / the store.
//! `docs/resp.md` lists the commands and where they differ from Redis.

pub mod codec;
pub mod commands;
pub mod cursor;
pub mod glob;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, Framed};
use tokio_util::sync::CancellationToken;

use crate::config::{SyncMode, Timeouts};
use crate::connection::Stream;
use crate::db::Db;
use crate::{auth, handler};
use codec::{DecodeError, RequestLimits, RespCodec, Value};
use commands::{Outcome, Session};

/// Requests one connection may have read and not yet answered; past this it
/// answers before reading more.
const MAX_PIPELINE: usize = 1024;

/// State shared by every RESP connection.
pub struct Shared {
    /// `SCAN` cursors: any connection may continue a scan.
    pub cursors: cursor::Cursors,
    /// Settings that `INFO` and `CONFIG GET` report.
    pub info: ServerInfo,
}

/// The server's settings as Redis clients ask for them.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The RESP listener's address.
    pub resp_addr: SocketAddr,
    /// The native listener's address.
    pub native_addr: SocketAddr,
    pub sync: SyncMode,
    pub sync_interval_ms: u64,
    pub max_connections: usize,
    /// `--idle-timeout-ms` in whole seconds (Redis's `timeout`).
    pub idle_timeout_secs: u64,
    /// The snapshot file.
    pub data: PathBuf,
}

impl Shared {
    pub fn new(info: ServerInfo) -> Shared {
        Shared {
            cursors: cursor::Cursors::default(),
            info,
        }
    }
}

/// The request limits of a connection: before login only small requests.
fn request_limits(db: &Db, authenticated: bool) -> RequestLimits {
    let max_request = if authenticated {
        db.limits.max_frame
    } else {
        auth::PRE_AUTH_MAX_FRAME
    };
    RequestLimits {
        max_bulk: db.limits.max_key.max(db.limits.max_value).min(max_request),
        max_request,
    }
}

/// A reply with the protocol version it is to be written in (a pipelined
/// `HELLO 3` changes the version for the replies after its own).
struct Versioned(u8, Value);

impl Encoder<Versioned> for RespCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Versioned, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        item.1.encode(item.0, dst);
        Ok(())
    }
}

/// Serves one RESP client until it leaves, sends `QUIT`, breaks the
/// protocol, times out, or the server shuts down.
pub async fn serve(
    stream: Box<dyn Stream>,
    db: Db,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let mut session = Session::new(db.stats.next_client_id(), !db.auth.required());
    let mut framed = Framed::new(
        stream,
        RespCodec::new(request_limits(&db, session.authenticated)),
    );
    let mut limits_for_login = session.authenticated;
    let login_deadline = (!session.authenticated).then(|| Instant::now() + auth::LOGIN_TIMEOUT);
    // As in the native handler: when the request now arriving began to
    // arrive, how many requests had been decoded then, and when the client
    // last sent anything.
    let mut partial_since: Option<Instant> = None;
    let mut decoded_mark = 0;
    let mut last_heard = Instant::now();
    let ctx = commands::Ctx {
        db: &db,
        shared: &shared,
    };
    let mut ticker = timeouts.ticker(login_deadline.is_some());
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            first = framed.next() => Some(first),
            _ = ticker.tick() => None,
        };
        let now = Instant::now();
        let partial = framed.codec().in_request() || !framed.read_buffer().is_empty();
        let decoded = framed.codec().requests_decoded();
        if !partial {
            partial_since = None;
        } else if partial_since.is_none() || decoded != decoded_mark {
            partial_since = Some(now);
        }
        decoded_mark = decoded;
        if partial || first.is_some() {
            last_heard = now;
        }
        let Some(first) = first else {
            if let (Some(limit), Some(since)) = (timeouts.read, partial_since) {
                if now >= since + limit {
                    tracing::debug!("a RESP request took longer than the read timeout; closing");
                    return;
                }
            }
            if let Some(limit) = timeouts.idle {
                if partial_since.is_none() && now >= last_heard + limit {
                    tracing::debug!("idle timeout; closing");
                    return;
                }
            }
            if login_deadline.is_some_and(|deadline| !session.authenticated && now >= deadline) {
                tracing::debug!("no login within the login timeout; closing");
                return;
            }
            continue;
        };
        // This request, and every one already buffered behind it.
        let mut queue: VecDeque<(u8, Outcome)> = VecDeque::new();
        // Outcomes before this index are all ready: a long pipeline of reads
        // does not scan the queue again for each one.
        let mut settled = 0;
        let mut next = first;
        loop {
            match next {
                None => {
                    session.closing = true;
                    break;
                }
                Some(Err(DecodeError::Protocol(message))) => {
                    tracing::debug!(%message, "RESP protocol error; closing");
                    let reply = Value::error(format!("ERR Protocol error: {message}"));
                    queue.push_back((session.proto, Outcome::Ready(reply)));
                    session.closing = true;
                    break;
                }
                Some(Err(DecodeError::Io(_))) => return,
                Some(Ok(args)) => {
                    db.stats.command();
                    if !commands::writes(&args) {
                        // A read sees the writes sent before it.
                        settle(&mut queue, &mut settled).await;
                    }
                    let outcome = commands::execute(args, &mut session, &ctx).await;
                    queue.push_back((session.proto, outcome));
                    // A login lifts the small pre-login limit for the
                    // requests decoded from now on.
                    if session.authenticated != limits_for_login {
                        limits_for_login = session.authenticated;
                        framed
                            .codec_mut()
                            .set_limits(request_limits(&db, session.authenticated));
                    }
                }
            }
            if session.closing || queue.len() >= MAX_PIPELINE {
                break;
            }
            // Only what has already arrived: polling an empty socket again
            // would cost a system call per request.
            if framed.read_buffer().is_empty() {
                break;
            }
            match framed.next().now_or_never() {
                Some(item) => next = item,
                None => break,
            }
        }
        if answer(&mut framed, queue, timeouts.write).await.is_err() || session.closing {
            return;
        }
    }
}

/// Waits for every queued write's outcome, so a read after them sees them.
/// `settled` is how many outcomes at the front are known to be ready.
async fn settle(queue: &mut VecDeque<(u8, Outcome)>, settled: &mut usize) {
    for (_, outcome) in queue.iter_mut().skip(*settled) {
        if let Outcome::Pending(..) = outcome {
            let pending = std::mem::replace(outcome, Outcome::Ready(Value::Nil));
            *outcome = Outcome::Ready(pending.reply().await);
        }
    }
    *settled = queue.len();
}

/// Writes the replies in request order (writes once they are durable), then
/// flushes once.
async fn answer(
    framed: &mut Framed<Box<dyn Stream>, RespCodec>,
    queue: VecDeque<(u8, Outcome)>,
    write_timeout: Option<std::time::Duration>,
) -> std::io::Result<()> {
    for (proto, outcome) in queue {
        let value = outcome.reply().await;
        handler::stalled_at_most(write_timeout, framed.feed(Versioned(proto, value))).await?;
    }
    handler::stalled_at_most(write_timeout, SinkExt::<Versioned>::flush(framed)).await
}

/// Tells a RESP client over the connection limit why it is being closed.
pub async fn refuse(stream: Box<dyn Stream>) {
    let mut framed = Framed::new(
        stream,
        RespCodec::new(RequestLimits {
            max_bulk: 0,
            max_request: 0,
        }),
    );
    let reply = Value::error("ERR max number of clients reached");
    if framed.feed(Versioned(2, reply)).await.is_ok() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            SinkExt::<Versioned>::flush(&mut framed),
        )
        .await;
    }
}

/// The argument as text for messages (lossy).
fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}
