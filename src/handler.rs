//! One connection's request loop, with pipelining.
//!
//! A client may send many requests without waiting. Writes are queued for the
//! group commit as soon as they are read, so a pipelined burst shares one
//! `fdatasync`. Replies still leave in request order, and a read waits for the
//! writes sent before it on the same connection, so a client always reads its
//! own writes.

use std::collections::VecDeque;

use kvstore_client::{Command, Reply, Response};
use tokio_util::sync::CancellationToken;

use crate::cmd::{self, Started};
use crate::commit::PendingWrite;
use crate::connection::{Connection, Incoming};
use crate::db::Db;

/// Requests one connection may have in flight; past this the handler stops
/// reading until replies go out (TCP backpressure does the rest).
const MAX_IN_FLIGHT: usize = 1024;

/// A request waiting for its turn to be answered.
struct Slot {
    id: u64,
    state: State,
}

enum State {
    Ready(Reply),
    /// A read that must wait for the writes queued before it.
    Read(Command),
    Write(PendingWrite),
}

/// Serves one client until it leaves, breaks the protocol, or the server shuts
/// down (then requests already read are finished and answered first).
pub async fn serve(mut conn: Connection, db: Db, shutdown: CancellationToken) {
    let mut queue: VecDeque<Slot> = VecDeque::new();
    let mut reading = true;
    loop {
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
            incoming = conn.read(), if reading && queue.len() < MAX_IN_FLIGHT => match incoming {
                Incoming::Request(request) => {
                    let state = if cmd::is_write(&request.command) || queue.is_empty() {
                        match cmd::start(request.command, &db).await {
                            Started::Done(reply) => State::Ready(reply),
                            Started::Pending(pending) => State::Write(pending),
                        }
                    } else {
                        State::Read(request.command)
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
        }
        if answer_ready(&mut conn, &mut queue, &db).await.is_err() {
            return;
        }
        if !reading && queue.is_empty() {
            return;
        }
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

/// Sends every reply at the front of the queue that is ready, in order, then
/// flushes once.
async fn answer_ready(
    conn: &mut Connection,
    queue: &mut VecDeque<Slot>,
    db: &Db,
) -> std::io::Result<()> {
    let mut sent = false;
    while let Some(slot) = queue.front_mut() {
        let reply = match &mut slot.state {
            State::Ready(_) | State::Read(_) => match queue.pop_front().map(|s| (s.id, s.state)) {
                Some((id, State::Ready(reply))) => (id, reply),
                Some((id, State::Read(command))) => (id, cmd::read(command, db)),
                _ => break,
            },
            State::Write(pending) => match pending.try_take() {
                Some(outcome) => {
                    let id = slot.id;
                    queue.pop_front();
                    (id, cmd::reply_for(outcome))
                }
                None => break,
            },
        };
        conn.feed(&Response {
            id: reply.0,
            reply: reply.1,
        })
        .await?;
        sent = true;
    }
    if sent {
        conn.flush().await?;
    }
    Ok(())
}
