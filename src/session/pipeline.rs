//! One connection's requests between reading and answering: the ordering
//! rules of every door.
//!
//! - Replies leave in request order.
//! - A write is handed to the log as soon as it is read, so the writes of a
//!   pipelined burst share one log batch (and one `fdatasync`): while more
//!   whole requests are buffered, writes are held back (`Deferred`) and then
//!   handed over together in one message.
//! - A read (or any command that is not a data write) runs only once the
//!   writes before it on the connection are applied, so a client reads its
//!   own writes; a write behind such a waiting read waits for it, so the
//!   read sees exactly the writes sent before it.
//! - Backpressure: at most [`MAX_IN_FLIGHT`] requests and
//!   [`MAX_WAITING_BYTES`] bytes of waiting requests; past either the loop
//!   stops reading (TCP backpressure does the rest).

use std::collections::VecDeque;

use kvstore_client::{Command, Reply};

use super::{Door, Step};
use crate::cmd::{self, Started};
use crate::db::Db;
use crate::error::Error;
use crate::log::PendingWrite;
use crate::storage::store::Applied;

/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Bytes of requests one connection may have waiting for their turn, so a
/// client pipelining large values cannot make the server hold more for it.
pub const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;

/// How far a request has got.
enum State<D: Door> {
    /// Its reply, ready to send.
    Ready(D::Reply),
    /// A write the log has; resolves once durable and applied.
    Write(PendingWrite, D::Tag),
    /// A write's outcome, to be put in the door's words when sent.
    Done(Reply, D::Tag),
    /// Not started yet: it waits for the requests before it (see the rules).
    Waiting(D::Request),
    /// A write held back to join the burst behind it in one log message.
    Deferred(Command, D::Tag),
}

/// The requests of one connection, in order.
pub struct Pipeline<D: Door> {
    queue: VecDeque<State<D>>,
    /// Bytes held by `Waiting` and `Deferred` requests.
    waiting_bytes: usize,
    /// `Waiting` requests in the queue.
    waiting: usize,
    /// `Deferred` writes in the queue.
    deferred: usize,
}

impl<D: Door> Default for Pipeline<D> {
    fn default() -> Self {
        Pipeline {
            queue: VecDeque::new(),
            waiting_bytes: 0,
            waiting: 0,
            deferred: 0,
        }
    }
}

impl<D: Door> Pipeline<D> {
    /// Whether the connection may read more requests.
    pub fn has_room(&self) -> bool {
        self.queue.len() < MAX_IN_FLIGHT && self.waiting_bytes < MAX_WAITING_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the oldest request is a write waiting for the log.
    pub fn front_is_write(&self) -> bool {
        matches!(self.queue.front(), Some(State::Write(..)))
    }

    /// Queues a reply known without running anything (a refused frame).
    pub fn push_ready(&mut self, reply: D::Reply) {
        self.queue.push_back(State::Ready(reply));
    }

    /// Takes a request just read. `burst`: more whole requests are already
    /// buffered behind it.
    pub async fn push(&mut self, door: &mut D, request: D::Request, burst: bool, db: &Db) {
        let is_write = door.is_write(&request);
        // Anything behind a waiting request waits; a read also waits for
        // the writes before it.
        let unapplied_writes = self.queue.len() > self.settled();
        if self.waiting > 0 || (!is_write && unapplied_writes) {
            self.hold(State::Waiting(request));
            return;
        }
        match door.start(request).await {
            Step::Answer(reply) => self.queue.push_back(State::Ready(reply)),
            // A write behind a deferred one is deferred too: the log must get
            // them in request order.
            Step::Write(command, tag) if burst || self.deferred > 0 => {
                self.hold(State::Deferred(command, tag))
            }
            Step::Write(command, tag) => {
                let state = started(cmd::start(command, db).await, tag);
                self.queue.push_back(state);
            }
        }
    }

    /// How many requests at the front need nothing more from the log: the
    /// loop keeps this cheap by looking only until the first that does.
    fn settled(&self) -> usize {
        self.queue
            .iter()
            .position(|s| !matches!(s, State::Ready(_) | State::Done(..)))
            .unwrap_or(self.queue.len())
    }

    fn hold(&mut self, state: State<D>) {
        match &state {
            State::Waiting(request) => {
                self.waiting += 1;
                self.waiting_bytes += D::size(request);
            }
            State::Deferred(command, _) => {
                self.deferred += 1;
                self.waiting_bytes += cmd::size(command);
            }
            _ => {}
        }
        self.queue.push_back(state);
    }

    /// Hands every deferred write to the log, in order, as one message.
    pub async fn start_deferred(&mut self, db: &Db) {
        if self.deferred == 0 {
            return;
        }
        self.deferred = 0;
        // In order: a state kept as it is, or the tag of a deferred write
        // whose command is in `commands`.
        let mut commands = Vec::new();
        let turns: Vec<Result<State<D>, D::Tag>> = (self.queue.drain(..))
            .map(|state| match state {
                State::Deferred(command, tag) => {
                    self.waiting_bytes -= cmd::size(&command);
                    commands.push(command);
                    Err(tag)
                }
                other => Ok(other),
            })
            .collect();
        let mut outcomes = cmd::start_all(commands, db).await.into_iter();
        self.queue = turns
            .into_iter()
            .map(|turn| match turn {
                Ok(state) => state,
                Err(tag) => {
                    let outcome = outcomes.next();
                    started(outcome.unwrap_or(Started::Done(cmd::lost_write())), tag)
                }
            })
            .collect();
    }

    /// Waits until the write at the front has its outcome (cancel-safe).
    pub async fn wait_front(&mut self) {
        if let Some(State::Write(pending, _)) = self.queue.front_mut() {
            let outcome = pending.wait().await;
            self.settle_front(outcome);
        }
    }

    /// Turns the write at the front into its outcome.
    fn settle_front(&mut self, outcome: Result<Applied, Error>) {
        if let Some(State::Write(_, tag)) = self.queue.pop_front() {
            let reply = cmd::reply_for(outcome);
            self.queue.push_front(State::Done(reply, tag));
        }
    }

    /// Takes the replies at the front that are ready, in order, and starts
    /// the waiting requests whose turn has come.
    pub async fn next_ready(&mut self, door: &mut D, db: &Db) -> Option<D::Reply> {
        loop {
            match self.queue.front_mut()? {
                State::Ready(_) | State::Done(..) => break,
                State::Write(pending, _) => match pending.try_take() {
                    Some(outcome) => self.settle_front(outcome),
                    None => return None,
                },
                // Started with the rest of its burst (`start_deferred`).
                State::Deferred(..) => return None,
                State::Waiting(_) => self.start_waiting(door, db).await,
            }
        }
        match self.queue.pop_front()? {
            State::Ready(reply) => Some(reply),
            State::Done(reply, tag) => Some(door.finish(tag, reply)),
            _ => unreachable!("the loop above stops at a reply"),
        }
    }

    /// Everything before the first waiting request is answered: starts it,
    /// and if it is a write, the waiting writes right behind it too, handed
    /// to the log as one burst. A read behind them waits again.
    async fn start_waiting(&mut self, door: &mut D, db: &Db) {
        let mut turns = Vec::new();
        while let Some(State::Waiting(request)) = self.queue.front() {
            let is_write = door.is_write(request);
            if !turns.is_empty() && !is_write {
                break;
            }
            let Some(State::Waiting(request)) = self.queue.pop_front() else {
                break;
            };
            self.waiting -= 1;
            self.waiting_bytes -= D::size(&request);
            turns.push(match door.start(request).await {
                Step::Answer(reply) => State::Ready(reply),
                Step::Write(command, tag) => {
                    self.deferred += 1;
                    self.waiting_bytes += cmd::size(&command);
                    State::Deferred(command, tag)
                }
            });
            if !is_write {
                break;
            }
        }
        // Nothing after a waiting request is ever deferred, so the burst
        // is exactly these writes.
        for state in turns.into_iter().rev() {
            self.queue.push_front(state);
        }
        self.start_deferred(db).await;
    }
}

/// The state of a write the log has taken (or refused at once).
fn started<D: Door>(started: Started, tag: D::Tag) -> State<D> {
    match started {
        Started::Pending(pending) => State::Write(pending, tag),
        Started::Done(reply) => State::Done(reply, tag),
    }
}
