//! One connection's request loop, with pipelining.
//!
//! A client may send many requests without waiting. Writes are queued for the
//! group commit as soon as they are read, so a pipelined burst shares one
//! `fdatasync`. Replies still leave in request order, and a read waits for the
//! writes sent before it on the same connection, so a client always reads its
//! own writes.

use std::collections::VecDeque;

use kvstore_client::{Command, ErrorCode, Reply, Response};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::cmd::{self, backup, Started};
use crate::config::Timeouts;
use crate::connection::{Connection, Incoming};
use crate::db::Db;
use crate::log::PendingWrite;

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
    /// An `Indexed` write, unwrapped so it joins log batches like any
    /// write: its reply is wrapped with the applied index when it is sent.
    indexed: bool,
}

impl Slot {
    /// A request answered at once.
    fn ready(id: u64, reply: Reply) -> Slot {
        Slot {
            id,
            state: State::Ready(reply),
            indexed: false,
        }
    }
}

enum State {
    Ready(Reply),
    /// Queued for the log; resolves once durable and applied.
    Write(PendingWrite),
    /// Not started yet: a read waits for the writes before it to be applied,
    /// and a write behind such a read waits for the read, so that every read
    /// sees exactly the writes sent before it on this connection.
    Waiting(Command),
    /// A write read while more whole requests were already buffered: it is
    /// queued for the log together with the writes right behind it, once the
    /// buffer holds no more, so a pipelined burst shares one log batch
    /// instead of waking the log writer with its first write alone.
    Deferred(Command),
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
    // When the frame now arriving began to arrive, how many bytes of whole
    // frames had been read then (a change means a frame completed), when the
    // client last sent anything, and by when it must have logged in.
    let mut partial_since: Option<Instant> = None;
    let mut consumed_mark = 0;
    let mut last_heard = Instant::now();
    let login_deadline = (!authenticated).then(|| Instant::now() + auth::LOGIN_TIMEOUT);
    let mut unauthenticated_commands = 0;
    let mut ticker = timeouts.ticker(login_deadline.is_some());
    // The backup streaming on this connection; it ends with the connection.
    let mut backup: backup::Session = None;
    loop {
        let may_read = reading && has_room(&queue);
        let front_is_write = matches!(
            queue.front(),
            Some(Slot {
                state: State::Write(_),
                ..
            })
        );
        tokio::select! {
            biased;
            _ = wait_front(&mut queue), if front_is_write => {}
            incoming = conn.read(), if may_read => match incoming {
                Incoming::Request(request) if !authenticated => {
                    db.stats.native_command(&request.command);
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
                        _ => {
                            unauthenticated_commands += 1;
                            if unauthenticated_commands >= auth::MAX_UNAUTHENTICATED_COMMANDS {
                                reading = false;
                            }
                            Reply::error(ErrorCode::Unauthenticated, "authenticate with Auth first")
                        }
                    };
                    queue.push_back(Slot::ready(request.id, reply));
                }
                Incoming::Request(request) => {
                    db.stats.native_command(&request.command);
                    let (command, indexed) = match request.command {
                        Command::Indexed { command, .. } if command.is_data_write() => {
                            (*command, true)
                        }
                        command => (command, false),
                    };
                    let is_write = command.is_data_write();
                    let must_wait = queue.iter().any(|s| match s.state {
                        State::Waiting(_) => true,
                        State::Write(_) | State::Deferred(_) => !is_write,
                        State::Ready(_) => false,
                    });
                    // A write behind a deferred one is deferred too: the log
                    // must get them in request order.
                    let burst = conn.has_whole_frame()
                        || queue.iter().any(|s| matches!(s.state, State::Deferred(_)));
                    let state = if must_wait {
                        State::Waiting(command)
                    } else if is_write && burst {
                        State::Deferred(command)
                    } else {
                        start(command, &db, &mut backup).await
                    };
                    queue.push_back(Slot {
                        id: request.id,
                        state,
                        indexed,
                    });
                }
                Incoming::Closed => reading = false,
                Incoming::Refused { id, reply } => {
                    tracing::debug!(?reply, "refusing a frame and closing the connection");
                    queue.push_back(Slot::ready(id, reply));
                    reading = false;
                }
            },
            _ = shutdown.cancelled(), if reading => reading = false,
            // Wakes the loop to check the timeouts: bytes that arrive inside
            // a pending read do not.
            _ = ticker.tick(), if may_read => {}
        }
        let now = Instant::now();
        let consumed = conn.frames_consumed();
        if !(reading && has_room(&queue) && conn.has_partial_frame()) {
            // Nothing in progress, or the server itself is not reading: the
            // client is not the one being slow.
            partial_since = None;
        } else if partial_since.is_none() || consumed != consumed_mark {
            // A new frame started arriving (or one completed and the next
            // has begun): its clock starts now.
            partial_since = Some(now);
        }
        consumed_mark = consumed;
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
            if login_deadline.is_some_and(|deadline| !authenticated && now >= deadline) {
                tracing::debug!("no login within the login timeout; closing");
                return;
            }
        }
        // While another whole request is already buffered, replies wait in
        // the output buffer: a pipelined burst is answered with one write,
        // not one per request.
        let more_coming = reading && has_room(&queue) && conn.has_whole_frame();
        if !more_coming {
            start_deferred(&mut queue, &db).await;
        }
        if answer_ready(
            &mut conn,
            &mut queue,
            &db,
            &mut backup,
            timeouts.write,
            more_coming,
        )
        .await
        .is_err()
        {
            return;
        }
        if !reading && queue.is_empty() {
            return;
        }
    }
}

/// Whether the connection may read more requests: fewer than
/// [`MAX_IN_FLIGHT`] in flight and less than [`MAX_WAITING_BYTES`] waiting.
fn has_room(queue: &VecDeque<Slot>) -> bool {
    let waiting: usize = queue
        .iter()
        .map(|s| match &s.state {
            State::Waiting(command) | State::Deferred(command) => cmd::size(command),
            _ => 0,
        })
        .sum();
    queue.len() < MAX_IN_FLIGHT && waiting < MAX_WAITING_BYTES
}

/// Starts a command whose turn has come. Backups are served here, with the
/// connection's backup session; everything else by [`cmd::start`].
async fn start(command: Command, db: &Db, backup: &mut backup::Session) -> State {
    match command {
        Command::Backup { name } => State::Ready(backup::start(name, db, backup).await),
        Command::BackupNext => State::Ready(backup::next(backup, db)),
        Command::Indexed {
            after,
            any_node,
            command,
        } => State::Ready(cmd::indexed::apply(after, any_node, *command, db).await),
        command => State::from(cmd::start(command, db).await),
    }
}

impl From<Started> for State {
    fn from(started: Started) -> State {
        match started {
            Started::Done(reply) => State::Ready(reply),
            Started::Pending(pending) => State::Write(pending),
        }
    }
}

/// Queues every deferred write for the log, in order, as one message, so
/// the burst lands in one log batch.
async fn start_deferred(queue: &mut VecDeque<Slot>, db: &Db) {
    let mut slots = Vec::new();
    let mut commands = Vec::new();
    for slot in queue.iter_mut() {
        if let State::Deferred(_) = slot.state {
            if let State::Deferred(command) =
                std::mem::replace(&mut slot.state, State::Ready(Reply::Ok))
            {
                commands.push(command);
                slots.push(slot);
            }
        }
    }
    if commands.is_empty() {
        return;
    }
    for (slot, started) in slots.into_iter().zip(cmd::start_all(commands, db).await) {
        slot.state = State::from(started);
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
/// starts the waiting commands whose turn has come; then flushes once, unless
/// `more_coming` (a whole request is already buffered: its turn comes first).
async fn answer_ready(
    conn: &mut Connection,
    queue: &mut VecDeque<Slot>,
    db: &Db,
    backup: &mut backup::Session,
    write_timeout: Option<Duration>,
    more_coming: bool,
) -> std::io::Result<()> {
    let mut sent = false;
    while let Some(slot) = queue.front_mut() {
        match &mut slot.state {
            State::Ready(_) => {}
            State::Write(pending) => match pending.try_take() {
                Some(outcome) => slot.state = State::Ready(cmd::reply_for(outcome)),
                None => break,
            },
            // Started with the rest of its burst (`start_deferred`).
            State::Deferred(_) => break,
            State::Waiting(_) => {
                // Everything before it is answered: start it, and if it is a
                // write, the waiting writes right behind it too, so they share
                // a log batch. A read behind them waits again.
                let mut i = 0;
                while let Some(slot) = queue.get_mut(i) {
                    let is_write = match &slot.state {
                        State::Waiting(command) => command.is_data_write(),
                        _ => break,
                    };
                    if i > 0 && !is_write {
                        break;
                    }
                    if let State::Waiting(command) =
                        std::mem::replace(&mut slot.state, State::Ready(Reply::Ok))
                    {
                        slot.state = start(command, db, backup).await;
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
            indexed,
        }) = queue.pop_front()
        {
            let reply = if indexed {
                cmd::indexed::wrap(reply, db)
            } else {
                reply
            };
            db.stats.reply(&reply);
            stalled_at_most(write_timeout, conn.feed(&Response { id, reply })).await?;
            sent = true;
        }
    }
    if sent && !more_coming {
        stalled_at_most(write_timeout, conn.flush()).await?;
    }
    Ok(())
}

/// Runs one write to the client, which can only wait when the client's
/// buffers are full; fails if it waits longer than `limit` (the client is not
/// reading its replies).
pub(crate) async fn stalled_at_most(
    limit: Option<Duration>,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match limit {
        None => write.await,
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(
                    "the client has not read its replies within the write timeout; closing"
                );
                Err(std::io::ErrorKind::TimedOut.into())
            }),
    }
}
