//! One connection's request loop, with pipelining.
//!
//! A client may send many requests without waiting. Writes are queued for the
//! group commit as soon as they are read, so a pipelined burst shares one
//! `fdatasync`. Replies still leave in request order, and a read waits for the
//! writes sent before it on the same connection, so a client always reads its
//! own writes.

use std::collections::VecDeque;

use kvstore_client::{Command, ErrorCode, Reply, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::cmd::{self, Started};
use crate::commit::PendingWrite;
use crate::config::Timeouts;
use crate::connection::{Connection, Incoming};
use crate::db::Db;

/// Requests one connection may have in flight; past this the handler stops
/// reading until replies go out (TCP backpressure does the rest).
const MAX_IN_FLIGHT: usize = 1024;
/// Bytes of requests one connection may have waiting for their turn (reads
/// and writes queued behind a read); past this it stops reading, so a client
/// pipelining large values cannot make the server hold more than this for it.
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;

/// A request waiting for its turn to be answered.
struct Slot {
    /// The request's id, echoed in its response.
    id: u64,
    /// How far the request has got.
    state: State,
}

enum State {
    Ready(Reply),
    /// Queued for the log; resolves once durable and applied.
    Write(PendingWrite),
    /// Not started yet: a read waits for the writes before it to be applied,
    /// and a write behind such a read waits for the read, so that every read
    /// sees exactly the writes sent before it on this connection.
    Waiting(Command),
}

/// Serves one client until it leaves, breaks the protocol, or the server shuts
/// down (then requests already read are finished and answered first).
pub async fn serve(mut conn: Connection, db: Db, timeouts: Timeouts, shutdown: CancellationToken) {
    let mut queue: VecDeque<Slot> = VecDeque::new();
    let mut reading = true;
    // Until the client logs in with `Auth` (when the server has a token),
    // only small frames and only `Auth` are accepted.
    let mut authenticated = !db.auth.required();
    let mut auth_failures = 0;
    if !authenticated {
        conn.set_max_frame(auth::PRE_AUTH_MAX_FRAME);
    }
    // When a partly received frame was first seen (for the read timeout),
    // and when the client last sent anything (for the idle timeout).
    let mut partial_since: Option<Instant> = None;
    let mut last_heard = Instant::now();
    loop {
        let wake_at = next_check(
            &timeouts,
            reading,
            queue.is_empty(),
            partial_since,
            last_heard,
        );
        let front_is_write = matches!(
            queue.front(),
            Some(Slot {
                state: State::Write(_),
                ..
            })
        );
        let waiting_bytes: usize = queue
            .iter()
            .map(|s| match &s.state {
                State::Waiting(command) => cmd::size(command),
                _ => 0,
            })
            .sum();
        let may_read = reading && queue.len() < MAX_IN_FLIGHT && waiting_bytes < MAX_WAITING_BYTES;
        tokio::select! {
            biased;
            _ = wait_front(&mut queue), if front_is_write => {}
            incoming = conn.read(), if may_read => match incoming {
                Incoming::Request(request) if !authenticated => {
                    let reply = match &request.command {
                        Command::Auth { token } if db.auth.check(token) => {
                            authenticated = true;
                            conn.set_max_frame(db.limits.max_frame);
                            Reply::Ok
                        }
                        Command::Auth { .. } => {
                            auth_failures += 1;
                            db.auth.throttle_failure(auth_failures).await;
                            if auth_failures >= auth::MAX_FAILURES {
                                reading = false;
                            }
                            Reply::error(ErrorCode::AuthFailed, "wrong auth token")
                        }
                        _ => Reply::error(ErrorCode::Unauthenticated, "authenticate with Auth first"),
                    };
                    queue.push_back(Slot { id: request.id, state: State::Ready(reply) });
                }
                Incoming::Request(request) => {
                    let must_wait = queue.iter().any(|s| match s.state {
                        State::Waiting(_) => true,
                        State::Write(_) => !cmd::is_write(&request.command),
                        State::Ready(_) => false,
                    });
                    let state = if must_wait {
                        State::Waiting(request.command)
                    } else {
                        start(request.command, &db).await
                    };
                    queue.push_back(Slot { id: request.id, state });
                }
                Incoming::Closed => reading = false,
                Incoming::Refused { id, reply } => {
                    tracing::debug!(?reply, "refusing a frame and closing the connection");
                    queue.push_back(Slot { id, state: State::Ready(reply) });
                    reading = false;
                }
            },
            _ = shutdown.cancelled(), if reading => reading = false,
            // Wakes the loop to check the timeouts: bytes that arrive inside
            // a pending read do not.
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
        }
        let now = Instant::now();
        if conn.has_partial_frame() {
            partial_since.get_or_insert(now);
        } else {
            partial_since = None;
        }
        if !queue.is_empty() || partial_since.is_some() {
            last_heard = now;
        }
        if reading {
            if let (Some(limit), Some(since)) = (timeouts.read, partial_since) {
                if now >= since + limit {
                    tracing::debug!("a frame took longer than the read timeout; closing");
                    return;
                }
            }
            if let Some(limit) = timeouts.idle {
                if queue.is_empty() && partial_since.is_none() && now >= last_heard + limit {
                    tracing::debug!("idle timeout; closing");
                    return;
                }
            }
        }
        let answered = match timeouts.write {
            Some(limit) => tokio::time::timeout(limit, answer_ready(&mut conn, &mut queue, &db))
                .await
                .unwrap_or_else(|_| {
                    tracing::debug!(
                        "the client has not read its replies within the write timeout; closing"
                    );
                    Err(std::io::ErrorKind::TimedOut.into())
                }),
            None => answer_ready(&mut conn, &mut queue, &db).await,
        };
        if answered.is_err() {
            return;
        }
        if !reading && queue.is_empty() {
            return;
        }
    }
}

/// When the loop must wake to check the timeouts, if ever. A partial frame
/// is noticed at a check, so the read timeout closes a slow frame between one
/// and one and a half timeouts after its first byte.
fn next_check(
    timeouts: &Timeouts,
    reading: bool,
    idle: bool,
    partial_since: Option<Instant>,
    last_heard: Instant,
) -> Option<Instant> {
    if !reading {
        return None;
    }
    let read = timeouts.read.map(|limit| match partial_since {
        Some(since) => since + limit,
        None => Instant::now() + limit / 2,
    });
    let idle = timeouts
        .idle
        .filter(|_| idle && partial_since.is_none())
        .map(|limit| last_heard + limit);
    match (read, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn start(command: Command, db: &Db) -> State {
    match cmd::start(command, db).await {
        Started::Done(reply) => State::Ready(reply),
        Started::Pending(pending) => State::Write(pending),
    }
}

/// Waits until the write at the front of the queue has its outcome.
async fn wait_front(queue: &mut VecDeque<Slot>) {
    if let Some(slot) = queue.front_mut() {
        if let State::Write(pending) = &mut slot.state {
            let reply = cmd::reply_for(pending.wait().await);
            slot.state = State::Ready(reply);
        }
    }
}

/// Sends every reply at the front of the queue that is ready, in order, and
/// starts the waiting commands whose turn has come; then flushes once.
async fn answer_ready(
    conn: &mut Connection,
    queue: &mut VecDeque<Slot>,
    db: &Db,
) -> std::io::Result<()> {
    let mut sent = false;
    while let Some(slot) = queue.front_mut() {
        match &mut slot.state {
            State::Ready(_) => {}
            State::Write(pending) => match pending.try_take() {
                Some(outcome) => slot.state = State::Ready(cmd::reply_for(outcome)),
                None => break,
            },
            State::Waiting(_) => {
                // Everything before it is answered: start it, and if it is a
                // write, the waiting writes right behind it too, so they share
                // a log batch. A read behind them waits again.
                let mut i = 0;
                while let Some(slot) = queue.get_mut(i) {
                    let is_write = match &slot.state {
                        State::Waiting(command) => cmd::is_write(command),
                        _ => break,
                    };
                    if i > 0 && !is_write {
                        break;
                    }
                    if let State::Waiting(command) =
                        std::mem::replace(&mut slot.state, State::Ready(Reply::Ok))
                    {
                        slot.state = start(command, db).await;
                    }
                    if !is_write {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
        }
        if let Some(Slot {
            id,
            state: State::Ready(reply),
        }) = queue.pop_front()
        {
            conn.feed(&Response { id, reply }).await?;
            sent = true;
        }
    }
    if sent {
        conn.flush().await?;
    }
    Ok(())
}
