//! The change feed: every applied write's changes, in log order, kept in a
//! bounded history and sent to live watchers (docs/watch.md).
//!
//! Whatever applies writes publishes them: the engine wrapper
//! [`crate::engine::watched::Watched`] for the commit thread and the Raft
//! state machine, recovery for the log it replays. A [`Watcher`] reads the
//! history from the revision it asks for, then the live batches; both come
//! from one lock, so it sees every change once and in order. Publishing
//! never waits for a watcher: one that falls [`Feed::new`]'s `lag` batches
//! behind is ended ([`Ended::Slow`]).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use kvstore_client::{Event, EventKind};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::storage::op::WriteOp;
use crate::storage::store::Applied;

/// Bytes an event costs beyond its key and value (its fields, its place in
/// a batch), for the history's limit.
const EVENT_OVERHEAD: usize = 64;

/// The changes of one applied batch of writes.
#[derive(Debug)]
pub struct Batch {
    /// The log position the batch ends at: no later change is in it.
    pub position: u64,
    pub events: Vec<Event>,
    /// A snapshot replaced the whole state here: no change list leads to
    /// it, so watchers end.
    reset: bool,
    bytes: usize,
}

/// Why a watch cannot start, or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The history no longer holds the revision asked for; `oldest` is the
    /// first it can serve.
    Compacted { oldest: u64 },
    /// The watcher fell more than the feed's lag behind.
    Slow { behind: u64 },
    /// A snapshot replaced the state at `position` (a Raft install).
    Reset { position: u64 },
    /// The server is shutting down.
    Closed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Compacted { oldest } => write!(
                f,
                "the history starts at revision {oldest}: older changes are compacted; read the keys and watch from now"
            ),
            Ended::Slow { behind } => write!(
                f,
                "the watcher fell {behind} batches behind the writes and was cancelled; watch again from one past the last revision received"
            ),
            Ended::Reset { position } => write!(
                f,
                "a snapshot replaced the state at revision {position}: older changes are compacted; read the keys and watch from now"
            ),
            Ended::Closed => f.write_str("the server is shutting down"),
        }
    }
}

struct History {
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
    /// Every change after this revision is in `batches` or still to come.
    horizon: u64,
    /// The position of the last batch published.
    position: u64,
}

impl History {
    /// Forgets every change: those up to `position` are not known.
    fn restart(&mut self, position: u64) {
        self.batches.clear();
        self.bytes = 0;
        (self.horizon, self.position) = (position, position);
    }
}

/// The feed of one engine's changes.
pub struct Feed {
    history: Mutex<History>,
    live: broadcast::Sender<Arc<Batch>>,
    /// Most bytes of changes the history keeps.
    limit: usize,
}

impl Feed {
    /// A feed keeping up to `history_bytes` of changes, whose watchers may
    /// fall `lag` batches behind.
    pub fn new(history_bytes: usize, lag: usize) -> Feed {
        Feed {
            history: Mutex::new(History {
                batches: VecDeque::new(),
                bytes: 0,
                horizon: 0,
                position: 0,
            }),
            live: broadcast::channel(lag.max(1)).0,
            limit: history_bytes,
        }
    }

    /// Whether the feed keeps a history (recovery publishes what it
    /// replays only then: nobody watches yet).
    pub fn keeps_history(&self) -> bool {
        self.limit > 0
    }

    /// Passes over the batch ending at `position` without its changes when
    /// nobody would see them (no history is kept and nobody watches): they
    /// count as compacted. False when they are wanted: publish them.
    pub fn skip(&self, position: u64) -> bool {
        let mut history = self.history.lock();
        // Under the lock: a watcher starting now is counted here, or starts
        // after `position`.
        if self.limit > 0 || self.live.receiver_count() > 0 {
            return false;
        }
        (history.horizon, history.position) = (position, position);
        true
    }

    /// Starts the feed at `position`: the changes before it are not known
    /// (what a snapshot holds), those after it will be published.
    pub fn start_at(&self, position: u64) {
        self.history.lock().restart(position);
    }

    /// Recovery replayed the log up to `position`, publishing what it
    /// replayed if the feed wanted it.
    pub fn replayed_to(&self, position: u64) {
        if !self.skip(position) {
            self.publish(position, Vec::new());
        }
    }

    /// Publishes the changes of the batch ending at `position`.
    pub fn publish(&self, position: u64, events: Vec<Event>) {
        if events.is_empty() {
            self.history.lock().position = position;
            return;
        }
        let bytes = events.iter().map(event_bytes).sum();
        self.send(Batch {
            position,
            events,
            reset: false,
            bytes,
        });
    }

    /// The state was replaced at `position` by a snapshot: the history is
    /// dropped and watchers end.
    pub fn reset(&self, position: u64) {
        let mut history = self.history.lock();
        history.restart(position);
        // Under the lock: a watcher starting now starts after the reset.
        let _ = self.live.send(Arc::new(Batch {
            position,
            events: Vec::new(),
            reset: true,
            bytes: 0,
        }));
    }

    fn send(&self, batch: Batch) {
        let batch = Arc::new(batch);
        let mut history = self.history.lock();
        history.position = batch.position;
        if self.limit > 0 {
            history.bytes += batch.bytes;
            history.batches.push_back(batch.clone());
            while history.bytes > self.limit {
                let Some(old) = history.batches.pop_front() else {
                    break;
                };
                history.bytes -= old.bytes;
                history.horizon = old.position;
            }
        } else {
            history.horizon = batch.position;
        }
        // Under the lock: a watcher starting now sees the batch in the
        // history or live, never both, never neither.
        let _ = self.live.send(batch);
    }

    /// The position of each batch the history holds, oldest first.
    #[cfg(test)]
    pub fn positions(&self) -> Vec<u64> {
        self.history
            .lock()
            .batches
            .iter()
            .map(|b| b.position)
            .collect()
    }

    /// Every change the history holds, oldest first.
    #[cfg(test)]
    pub fn kept(&self) -> Vec<Event> {
        let history = self.history.lock();
        let batches = history.batches.iter();
        batches.flat_map(|b| b.events.iter().cloned()).collect()
    }

    /// The oldest revision a watch can start from, and the position of the
    /// last batch published.
    pub fn span(&self) -> (u64, u64) {
        let history = self.history.lock();
        (history.horizon + 1, history.position)
    }

    /// Watches the keys that start with `prefix` from revision `from` (0:
    /// from the next change on).
    pub fn watch(&self, prefix: Bytes, from: u64) -> Result<Watcher, Ended> {
        let history = self.history.lock();
        let from = match from {
            0 => history.position + 1,
            from if from <= history.horizon => {
                return Err(Ended::Compacted {
                    oldest: history.horizon + 1,
                })
            }
            from => from,
        };
        // Positions grow along the history: no walk of it under the lock.
        let first = history
            .batches
            .partition_point(|batch| batch.position < from);
        let backlog = history.batches.range(first..).cloned().collect();
        Ok(Watcher {
            prefix,
            from,
            // Not the head: the backlog before it is still to deliver.
            position: from - 1,
            backlog,
            live: self.live.subscribe(),
            pending: VecDeque::new(),
            pending_bytes: 0,
        })
    }
}

/// One watch: the history it asked for, then the live changes.
pub struct Watcher {
    prefix: Bytes,
    /// Changes before this revision are not delivered.
    from: u64,
    /// The position of the last batch taken in.
    position: u64,
    backlog: VecDeque<Arc<Batch>>,
    live: broadcast::Receiver<Arc<Batch>>,
    /// Changes taken in, not delivered yet.
    pending: VecDeque<Event>,
    pending_bytes: usize,
}

/// Most events one [`Watcher::next`] gathers from batches already waiting.
const GATHER_EVENTS: usize = 1024;

impl Watcher {
    /// Every matching change up to this revision has been delivered.
    pub fn position(&self) -> u64 {
        match self.pending.front() {
            Some(next) => next.revision - 1,
            None => self.position,
        }
    }

    /// The next changes to the watched keys: at least one, whatever more is
    /// already waiting, in whole revisions of at most `max_bytes` (a single
    /// revision larger than that is split).
    pub async fn next(&mut self, max_bytes: usize) -> Result<Vec<Event>, Ended> {
        while self.pending.is_empty() {
            let batch = match self.backlog.pop_front() {
                Some(batch) => batch,
                None => self.receive().await?,
            };
            self.take(&batch)?;
        }
        while self.pending_bytes < max_bytes && self.pending.len() < GATHER_EVENTS {
            let batch = match self.backlog.pop_front() {
                Some(batch) => batch,
                None => match self.live.try_recv() {
                    Ok(batch) => batch,
                    Err(broadcast::error::TryRecvError::Lagged(behind)) => {
                        return Err(Ended::Slow { behind })
                    }
                    Err(_) => break,
                },
            };
            self.take(&batch)?;
        }
        Ok(self.deliver(max_bytes))
    }

    /// Takes whole revisions off the pending changes while they fit in
    /// `max_bytes`, or part of the first if it alone does not.
    fn deliver(&mut self, max_bytes: usize) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        let (mut bytes, mut whole) = (0, 0);
        for (i, event) in self.pending.iter().enumerate() {
            bytes += event_bytes(event);
            if bytes > max_bytes && i > 0 {
                break;
            }
            let next = self.pending.get(i + 1);
            if next.is_none_or(|next| next.revision != event.revision) {
                whole = i + 1;
            }
        }
        let count = match whole {
            0 => 1.max(self.fitting(max_bytes)),
            whole => whole,
        };
        out.extend(self.pending.drain(..count));
        self.pending_bytes -= out.iter().map(event_bytes).sum::<usize>();
        out
    }

    /// How many of the pending changes fit in `max_bytes`.
    fn fitting(&self, max_bytes: usize) -> usize {
        let mut bytes = 0;
        (self.pending.iter())
            .take_while(|e| {
                bytes += event_bytes(e);
                bytes <= max_bytes
            })
            .count()
    }

    async fn receive(&mut self) -> Result<Arc<Batch>, Ended> {
        match self.live.recv().await {
            Ok(batch) => Ok(batch),
            Err(broadcast::error::RecvError::Lagged(behind)) => Err(Ended::Slow { behind }),
            Err(broadcast::error::RecvError::Closed) => Err(Ended::Closed),
        }
    }

    /// Takes in `batch`'s changes to the watched keys.
    fn take(&mut self, batch: &Batch) -> Result<(), Ended> {
        if batch.reset {
            return Err(Ended::Reset {
                position: batch.position,
            });
        }
        let wanted = |e: &&Event| {
            e.revision >= self.from
                && (e.key.starts_with(&self.prefix) || e.kind == EventKind::Clear)
        };
        for event in batch.events.iter().filter(wanted) {
            self.pending_bytes += event_bytes(event);
            self.pending.push_back(event.clone());
        }
        self.position = self.position.max(batch.position);
        Ok(())
    }
}

fn event_bytes(event: &Event) -> usize {
    let value = match &event.kind {
        EventKind::Put { value, .. } => value.len(),
        _ => 0,
    };
    EVENT_OVERHEAD + event.key.len() + value
}

/// What replaying `op` from the log publishes, given what applying it again
/// did (`applied`), which over a fuzzy snapshot may be nothing: the log
/// holds a delete, a deadline or a `Persist` only when it changed the key,
/// so each counts as it did. The sweep's `Expire` names the keys it found
/// due, and only re-applying it says which were still there.
pub fn replayed(op: &WriteOp, applied: Applied) -> Applied {
    match op {
        WriteOp::Delete { .. } => Applied::Deleted(true),
        WriteOp::DeleteMany { keys } => Applied::Removed(keys.clone()),
        WriteOp::ExpireAt { .. } | WriteOp::Persist { .. } => Applied::Bool(true),
        _ => applied,
    }
}

/// Appends the changes `op`, made at `revision`, made (as `applied` says)
/// to `out`. Keys and values are copied: a log record's or a request's
/// buffer is not kept alive by the history.
pub fn changes(op: &WriteOp, applied: &Applied, revision: u64, out: &mut Vec<Event>) {
    let event = |key: &Bytes, kind| Event {
        revision,
        key: Bytes::copy_from_slice(key),
        kind,
    };
    let put = |key: &Bytes, value: &Bytes, deadline| {
        let value = Bytes::copy_from_slice(value);
        event(key, EventKind::Put { value, deadline })
    };
    match (op, applied) {
        (WriteOp::Set { key, value }, _) => out.push(put(key, value, None)),
        (WriteOp::SetExpiring { key, value, at }, _) => out.push(put(key, value, Some(*at))),
        (WriteOp::BulkSet { items }, _) => {
            out.extend(items.iter().map(|(key, value)| put(key, value, None)))
        }
        (WriteOp::SetExpiringMany { items }, _) => out.extend(
            items
                .iter()
                .map(|(key, value, at)| put(key, value, Some(*at))),
        ),
        (WriteOp::Delete { key }, Applied::Deleted(true)) => {
            out.push(event(key, EventKind::Delete))
        }
        (WriteOp::DeleteMany { .. }, Applied::Removed(keys)) => {
            out.extend(keys.iter().map(|key| event(key, EventKind::Delete)))
        }
        (WriteOp::Expire { .. }, Applied::Removed(keys)) => {
            out.extend(keys.iter().map(|key| event(key, EventKind::Expired)))
        }
        (WriteOp::ExpireAt { key, at }, Applied::Bool(true)) => {
            out.push(event(key, EventKind::Deadline(Some(*at))))
        }
        (WriteOp::Persist { key }, Applied::Bool(true)) => {
            out.push(event(key, EventKind::Deadline(None)))
        }
        (WriteOp::Clear, _) => out.push(event(&Bytes::new(), EventKind::Clear)),
        (
            WriteOp::Rename {
                from,
                to,
                value,
                at,
            },
            _,
        ) => {
            out.push(event(from, EventKind::Delete));
            out.push(put(to, value, *at));
        }
        (WriteOp::Txn { puts, deletes }, _) => {
            out.extend(puts.iter().map(|(key, value, at)| put(key, value, *at)));
            out.extend(deletes.iter().map(|key| event(key, EventKind::Delete)));
        }
        // A delete of a missing key, a deadline on one: nothing changed.
        _ => {}
    }
}

#[cfg(test)]
mod tests;
