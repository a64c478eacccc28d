//! Writes that read first (`Incr`, `Append`, `SetIf`, `GetDel`), and how they
//! become plain [`WriteOp`]s.
//!
//! Such a write must read and write in one atomic step, and the log must hold
//! only absolute values, so that replay stays idempotent. Both follow from
//! resolving it on the group-commit thread, the store's only writer: at the
//! moment a batch is assembled, the thread reads the key through a
//! [`BatchView`] (the store as the previous batches left it, plus the writes
//! earlier in this batch), computes the outcome, and logs the result as a
//! `Set` or `Delete`. An `Incr` of `41` is logged as `Set 42`.
//!
//! The outcome is sent only after the batch is durable, like every other
//! write's, so no client learns of a value before it is in the log.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use kvstore_client::{Compare, Condition, ErrorCode, ExpireWhen, Target};
use serde::{Deserialize, Serialize};

use super::op::WriteOp;
use super::store::{Applied, Revisions};
use crate::engine::Engine;
use crate::error::Error;

/// A write as a connection submits it. In cluster mode it is also what a
/// Raft log entry holds (`crate::raft::Batch`), resolved when the entry is
/// applied, so variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Written as it is; its outcome comes from applying it.
    Write(WriteOp),
    /// Store `value` if `condition` holds for the current value.
    SetIf {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        /// Answer with the old value instead of whether it stored.
        get: bool,
    },
    /// Remove the key, answering with its value.
    GetDel { key: Bytes },
    /// Add `by` to the decimal integer stored at `key`.
    Incr { key: Bytes, by: i64 },
    /// Append to the value at `key`.
    Append {
        key: Bytes,
        value: Bytes,
        /// The value limit the result must respect.
        max_value: usize,
    },
    /// Cluster mode: open a client session (`crate::raft::sessions`); its
    /// outcome is the session's id.
    OpenSession {
        /// The leader's clock (ms since the epoch).
        time_ms: u64,
        idle_ms: u64,
        max_sessions: u64,
    },
    /// Cluster mode: `change` as write `stamp.seq` of a client session,
    /// applied at most once.
    Once {
        stamp: crate::raft::sessions::Stamp,
        change: Box<Change>,
    },
    /// Cluster mode, group 1: record a new Raft group on these nodes
    /// (`crate::raft::shards`); its outcome is the group's id.
    AddGroup {
        members: std::collections::BTreeMap<u64, crate::raft::Member>,
    },
    /// Cluster mode: what this group does with slots `first..=last` from
    /// this entry on (`crate::raft::shards`).
    SetSlots {
        first: u16,
        last: u16,
        state: crate::raft::shards::SlotState,
    },
    /// Cluster mode, group 1: slots `first..=last` are group `group`'s in
    /// the slot map from now on.
    Assign { first: u16, last: u16, group: u64 },
    /// Cluster mode: a slot move's copy into its target, whose slots are
    /// `Importing`.
    Import { items: Vec<(Bytes, Bytes)> },
    /// Cluster mode: a slot move's clean-up at its source, whose slots are
    /// `Elsewhere` by then.
    Purge { keys: Vec<Bytes> },
    /// Cluster mode, group 1: the slot move under way and its last step
    /// done, or none.
    Moving(Option<crate::raft::shards::Move>),
    /// Cluster mode, group 1: node `node`'s RESP address, or none.
    Doors { node: u64, resp: Option<String> },
    /// Cluster mode, group 1: the nodes that run group `group` from now on,
    /// if they are still `expected` (`crate::raft::shards`).
    Replicas {
        group: u64,
        expected: std::collections::BTreeMap<u64, crate::raft::Member>,
        members: std::collections::BTreeMap<u64, crate::raft::Member>,
    },
    /// Cluster mode: a slot move's copy of keys with a deadline, which
    /// they keep, into its target.
    ImportTimed { items: Vec<(Bytes, Bytes, u64)> },
    /// [`Change::SetIf`] whose key is gone at `at` (ms since the epoch);
    /// `None` keeps the deadline the key has, if any.
    SetExpiring {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        get: bool,
        at: Option<u64>,
    },
    /// Gives an existing key the deadline `at` if `when` holds; `at` at or
    /// before `now` (the time the command was taken) removes the key.
    Expire {
        key: Bytes,
        at: u64,
        now: u64,
        when: ExpireWhen,
    },
    /// Drops the deadline of a live key that has one.
    Persist { key: Bytes },
    /// A live key's value, giving it the deadline `at` (`None`: keep its
    /// own; `Some(None)`: none); a deadline at or before `now` removes it.
    GetEx {
        key: Bytes,
        at: Option<Option<u64>>,
        now: u64,
    },
    /// Overwrite the value at `key` from `offset` on, zero-padded.
    SetRange {
        key: Bytes,
        offset: u64,
        value: Bytes,
        /// The value limit the result must respect.
        max_value: usize,
    },
    /// Add the decimal number `by` (text, checked by the door) to the
    /// number stored at `key`, in f64.
    IncrByFloat { key: Bytes, by: Bytes },
    /// Store every pair only if none of the keys exists.
    BulkSetIfAbsent { items: Vec<(Bytes, Bytes)> },
    /// Copy `from`'s value and deadline to `to`.
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// Move `from`'s value and deadline to `to` (unless `to` exists and
    /// not `replace`).
    Rename {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// A transaction: `success` if every one of `compare` holds, else
    /// `failure`, logged as one `WriteOp::Txn`.
    Txn {
        compare: Vec<Compare>,
        success: Vec<TxnStep>,
        failure: Vec<TxnStep>,
    },
    /// Removes `key` if it has a value. A delete of a missing key logs
    /// nothing, so every delete the log holds removed a key: what a watch
    /// replayed from the log after a restart relies on (docs/watch.md).
    Delete { key: Bytes },
    /// Removes those of `keys` that have a value, as one record.
    DeleteMany { keys: Vec<Bytes> },
    /// Cluster mode: a slot move's step, [`Change::SetSlots`] only if
    /// slots `first..=last` are all `expected` (or already `state`) here,
    /// so that a step sent late, by a coordinator since deposed or over a
    /// stalled link, cannot undo a newer one (`crate::raft::shards`).
    SetSlotsIf {
        first: u16,
        last: u16,
        expected: crate::raft::shards::SlotState,
        state: crate::raft::shards::SlotState,
    },
}

/// One step of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStep {
    /// A write (any client write but `Flush` and `Txn`).
    Write(Change),
    /// The value of a key.
    Get(Bytes),
    /// Whether a key exists.
    Exists(Bytes),
    /// A key's value and revisions.
    Versioned(Bytes),
}

impl TxnStep {
    fn first_key(&self) -> Option<&[u8]> {
        match self {
            TxnStep::Write(change) => change.first_key(),
            TxnStep::Get(key) | TxnStep::Exists(key) | TxnStep::Versioned(key) => Some(key),
        }
    }

    fn keys(&self) -> Vec<&[u8]> {
        match self {
            TxnStep::Write(change) => change.keys(),
            TxnStep::Get(key) | TxnStep::Exists(key) | TxnStep::Versioned(key) => vec![key],
        }
    }

    fn approx_len(&self) -> usize {
        match self {
            TxnStep::Write(change) => change.approx_len(),
            TxnStep::Get(key) | TxnStep::Exists(key) | TxnStep::Versioned(key) => 16 + key.len(),
        }
    }
}

impl From<WriteOp> for Change {
    fn from(op: WriteOp) -> Change {
        Change::Write(op)
    }
}

/// What the commit thread does with a [`Change`].
#[derive(Debug)]
pub enum Resolved {
    /// Log the op; applying it gives the outcome.
    Apply(WriteOp),
    /// Log the op; the outcome is already known.
    Log(WriteOp, Applied),
    /// Nothing to log (a condition did not hold, or the change was refused);
    /// answer once the batch is durable.
    Answer(Result<Applied, Error>),
}

impl Resolved {
    /// The op to log, if any.
    pub fn op(&self) -> Option<&WriteOp> {
        match self {
            Resolved::Apply(op) | Resolved::Log(op, _) => Some(op),
            Resolved::Answer(_) => None,
        }
    }

    /// The write's outcome, given what applying its op returned (`None`
    /// for a change that logged nothing).
    pub fn outcome(self, applied: Option<Applied>) -> Result<Applied, Error> {
        match (self, applied) {
            (Resolved::Apply(_), Some(applied)) => Ok(applied),
            (Resolved::Log(_, outcome), _) => Ok(outcome),
            (Resolved::Answer(outcome), _) => outcome,
            (Resolved::Apply(_), None) => Err(Error::StorageFailed(
                "a write was answered without being applied".into(),
            )),
        }
    }
}

impl Change {
    /// Whether resolving it reads the store.
    pub fn reads(&self) -> bool {
        !matches!(self, Change::Write(_))
    }

    /// The keys it writes: what decides its slot in a sharded cluster.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Change::Write(op) => op.keys(),
            Change::SetIf { key, .. }
            | Change::GetDel { key }
            | Change::Incr { key, .. }
            | Change::Append { key, .. }
            | Change::SetExpiring { key, .. }
            | Change::Expire { key, .. }
            | Change::Persist { key }
            | Change::GetEx { key, .. }
            | Change::SetRange { key, .. }
            | Change::IncrByFloat { key, .. } => vec![key],
            Change::Copy { from, to, .. } | Change::Rename { from, to, .. } => vec![from, to],
            Change::BulkSetIfAbsent { items } => items.iter().map(|(key, _)| &key[..]).collect(),
            Change::Txn {
                compare,
                success,
                failure,
            } => (compare.iter().map(|c| &c.key[..]))
                .chain(success.iter().chain(failure).flat_map(TxnStep::keys))
                .collect(),
            Change::Once { change, .. } => change.keys(),
            Change::Delete { key } => vec![key],
            Change::DeleteMany { keys } => keys.iter().map(|key| &key[..]).collect(),
            Change::Import { items } => items.iter().map(|(key, _)| &key[..]).collect(),
            Change::ImportTimed { items } => items.iter().map(|(key, ..)| &key[..]).collect(),
            Change::Purge { keys } => keys.iter().map(|key| &key[..]).collect(),
            Change::OpenSession { .. }
            | Change::AddGroup { .. }
            | Change::SetSlots { .. }
            | Change::SetSlotsIf { .. }
            | Change::Assign { .. }
            | Change::Moving(_)
            | Change::Doors { .. }
            | Change::Replicas { .. } => Vec::new(),
        }
    }

    /// Its first key (what routes it to a group), without collecting the
    /// others.
    pub fn first_key(&self) -> Option<&[u8]> {
        match self {
            Change::Write(op) => op.first_key(),
            Change::SetIf { key, .. }
            | Change::GetDel { key }
            | Change::Incr { key, .. }
            | Change::Append { key, .. }
            | Change::SetExpiring { key, .. }
            | Change::Expire { key, .. }
            | Change::Persist { key }
            | Change::GetEx { key, .. }
            | Change::SetRange { key, .. }
            | Change::IncrByFloat { key, .. }
            | Change::Copy { from: key, .. }
            | Change::Rename { from: key, .. } => Some(key),
            Change::BulkSetIfAbsent { items } => items.first().map(|(key, _)| &key[..]),
            Change::Txn {
                compare,
                success,
                failure,
            } => (compare.first().map(|c| &c.key[..]))
                .or_else(|| success.iter().chain(failure).find_map(TxnStep::first_key)),
            Change::Once { change, .. } => change.first_key(),
            Change::Delete { key } => Some(key),
            Change::DeleteMany { keys } => keys.first().map(|key| &key[..]),
            Change::Import { items } => items.first().map(|(key, _)| &key[..]),
            Change::ImportTimed { items } => items.first().map(|(key, ..)| &key[..]),
            Change::Purge { keys } => keys.first().map(|key| &key[..]),
            Change::OpenSession { .. }
            | Change::AddGroup { .. }
            | Change::SetSlots { .. }
            | Change::SetSlotsIf { .. }
            | Change::Assign { .. }
            | Change::Moving(_)
            | Change::Doors { .. }
            | Change::Replicas { .. } => None,
        }
    }

    /// Roughly how many bytes it takes in the log, for batching decisions.
    pub fn approx_len(&self) -> usize {
        match self {
            Change::Write(op) => op.approx_len(),
            Change::SetIf { key, value, .. }
            | Change::Append { key, value, .. }
            | Change::SetExpiring { key, value, .. } => 48 + key.len() + value.len(),
            Change::Expire { key, .. }
            | Change::Persist { key }
            | Change::GetEx { key, .. }
            | Change::IncrByFloat { key, .. } => 48 + key.len(),
            Change::SetRange { key, value, .. } => 48 + key.len() + value.len(),
            Change::Copy { from, to, .. } | Change::Rename { from, to, .. } => {
                48 + from.len() + to.len()
            }
            Change::BulkSetIfAbsent { items } => {
                24 + items
                    .iter()
                    .map(|(k, v)| 16 + k.len() + v.len())
                    .sum::<usize>()
            }
            Change::GetDel { key } | Change::Incr { key, .. } | Change::Delete { key } => {
                32 + key.len()
            }
            Change::DeleteMany { keys } => 16 + keys.iter().map(|k| 8 + k.len()).sum::<usize>(),
            Change::OpenSession { .. } => 32,
            Change::AddGroup { members } | Change::Replicas { members, .. } => {
                32 + 64 * members.len()
            }
            Change::SetSlots { .. }
            | Change::SetSlotsIf { .. }
            | Change::Assign { .. }
            | Change::Moving(_) => 32,
            Change::Doors { resp, .. } => 32 + resp.as_ref().map_or(0, String::len),
            Change::Import { items } => {
                16 + (items.iter().map(|(k, v)| 16 + k.len() + v.len())).sum::<usize>()
            }
            Change::ImportTimed { items } => {
                16 + (items.iter().map(|(k, v, _)| 24 + k.len() + v.len())).sum::<usize>()
            }
            Change::Purge { keys } => 16 + keys.iter().map(|k| 8 + k.len()).sum::<usize>(),
            Change::Once { change, .. } => 48 + change.approx_len(),
            Change::Txn {
                compare,
                success,
                failure,
            } => {
                let compared = compare
                    .iter()
                    .map(|c| 32 + c.key.len() + target_len(&c.target));
                let ops = success.iter().chain(failure).map(TxnStep::approx_len);
                48 + compared.sum::<usize>() + ops.sum::<usize>()
            }
        }
    }

    /// Decides what to log and answer. `view` sees the writes resolved before
    /// this one; it is needed only for a change that [`Change::reads`]. A
    /// read that fails is the change's answer.
    pub fn resolve(self, view: &BatchView) -> Resolved {
        self.resolve_reading(view)
            .unwrap_or_else(|e| Resolved::Answer(Err(e)))
    }

    fn resolve_reading(self, view: &BatchView) -> Result<Resolved, Error> {
        Ok(match self {
            Change::Write(op) => Resolved::Apply(op),
            Change::SetIf {
                key,
                value,
                condition,
                get,
            } => set_if(view, key, value, condition, get, Some(None))?,
            Change::SetExpiring {
                key,
                value,
                condition,
                get,
                at,
            } => set_if(view, key, value, condition, get, at.map(Some))?,
            Change::Expire { key, at, now, when } => expire(view, key, at, now, when)?,
            Change::Persist { key } => match view.deadline(&key)? {
                Some(Some(_)) => Resolved::Log(WriteOp::Persist { key }, Applied::Bool(true)),
                _ => Resolved::Answer(Ok(Applied::Bool(false))),
            },
            Change::GetEx { key, at, now } => get_ex(view, key, at, now)?,
            Change::SetRange {
                key,
                offset,
                value,
                max_value,
            } => set_range(view, key, offset, value, max_value)?,
            Change::IncrByFloat { key, by } => incr_by_float(view, key, by)?,
            Change::BulkSetIfAbsent { items } => {
                for (key, _) in &items {
                    if view.get(key)?.is_some() {
                        return Ok(Resolved::Answer(Ok(Applied::Bool(false))));
                    }
                }
                Resolved::Log(WriteOp::BulkSet { items }, Applied::Bool(true))
            }
            Change::Rename { from, to, replace } => rename(view, from, to, replace)?,
            Change::Delete { key } => match view.get(&key)? {
                Some(_) => Resolved::Log(WriteOp::Delete { key }, Applied::Deleted(true)),
                None => Resolved::Answer(Ok(Applied::Deleted(false))),
            },
            Change::DeleteMany { keys } => delete_many(view, keys)?,
            Change::Txn {
                compare,
                success,
                failure,
            } => txn(view, &compare, success, failure)?,
            Change::Copy { from, to, replace } => {
                let Some(value) = view.get(&from)? else {
                    return Ok(Resolved::Answer(Ok(Applied::Bool(false))));
                };
                if !replace && view.get(&to)?.is_some() {
                    return Ok(Resolved::Answer(Ok(Applied::Bool(false))));
                }
                let at = view.kept(&from)?;
                Resolved::Log(WriteOp::set_with(to, value, at), Applied::Bool(true))
            }
            Change::GetDel { key } => match view.get(&key)? {
                Some(old) => Resolved::Log(WriteOp::Delete { key }, Applied::Value(Some(old))),
                None => Resolved::Answer(Ok(Applied::Value(None))),
            },
            Change::Incr { key, by } => {
                let current = match view.get(&key)? {
                    None => 0,
                    Some(value) => match parse_i64(&value) {
                        Some(n) => n,
                        None => {
                            return Ok(Resolved::Answer(Err(Error::Rejected {
                                code: ErrorCode::NotAnInteger,
                                message: "value is not an integer or out of range".into(),
                            })))
                        }
                    },
                };
                match current.checked_add(by) {
                    Some(n) => {
                        let kept = view.kept(&key)?;
                        let op = WriteOp::set_with(key, Bytes::from(n.to_string()), kept);
                        Resolved::Log(op, Applied::Int(n))
                    }
                    None => Resolved::Answer(Err(Error::Rejected {
                        code: ErrorCode::Overflow,
                        message: "increment or decrement would overflow".into(),
                    })),
                }
            }
            Change::Append {
                key,
                value,
                max_value,
            } => {
                let old = view.get(&key)?.unwrap_or_default();
                let len = old.len() + value.len();
                if len > max_value {
                    return Ok(Resolved::Answer(Err(Error::Rejected {
                        code: ErrorCode::ValueTooLarge,
                        message: format!(
                            "value of {len} bytes after APPEND exceeds the limit of {max_value} bytes"
                        ),
                    })));
                }
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(&old);
                joined.extend_from_slice(&value);
                let kept = view.kept(&key)?;
                Resolved::Log(
                    WriteOp::set_with(key, joined.freeze(), kept),
                    Applied::Int(len as i64),
                )
            }
            // The Raft state machine serves these before resolving; the
            // single node's log has no sessions.
            Change::OpenSession { .. } | Change::Once { .. } => {
                Resolved::Answer(Err(Error::Rejected {
                    code: ErrorCode::Malformed,
                    message: "client sessions are served in cluster mode only".into(),
                }))
            }
            Change::AddGroup { .. }
            | Change::SetSlots { .. }
            | Change::SetSlotsIf { .. }
            | Change::Assign { .. }
            | Change::Import { .. }
            | Change::ImportTimed { .. }
            | Change::Purge { .. }
            | Change::Moving(_)
            | Change::Doors { .. }
            | Change::Replicas { .. } => Resolved::Answer(Err(Error::Rejected {
                code: ErrorCode::ClusterFailed,
                message: "groups are for cluster mode only".into(),
            })),
        })
    }
}

/// The store as a batch sees it while it is being assembled: the store holds
/// the previous batches (the commit thread applies a batch before it starts
/// the next), the overlay the writes earlier in this one. A transaction's
/// steps see another view over the batch's, with their own writes.
pub struct BatchView<'a> {
    base: Base<'a>,
    /// Keys written earlier in the batch, with their value after those
    /// writes (`None`: removed).
    overlay: HashMap<Bytes, Option<Bytes>>,
    /// Keys whose deadline changed earlier in the batch, with it.
    deadlines: HashMap<Bytes, Option<u64>>,
    /// Keys written earlier in the batch, with what those writes did to
    /// their revisions (read against the base only when asked).
    written: HashMap<Bytes, Written>,
    /// A `Clear` earlier in the batch: a key not in the overlay is gone.
    cleared: bool,
    /// The revision the write being resolved gets if it logs one (what a
    /// transaction's own writes read as their revision).
    next: u64,
}

/// What a batch's writes did to one key's revisions.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// The revision of the last write to it.
    modified: u64,
    /// The revision of the first write that gave it a value since it was
    /// last removed in the batch (or since the batch began).
    first: Option<u64>,
    /// The batch removed it before that: it was created in the batch.
    removed: bool,
}

/// What a [`BatchView`]'s overlay lies over.
#[derive(Clone, Copy)]
enum Base<'a> {
    Engine(&'a dyn Engine),
    View(&'a BatchView<'a>),
}

impl Base<'_> {
    fn get(self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        match self {
            Base::Engine(engine) => engine.get(key),
            Base::View(view) => view.get(key),
        }
    }

    fn deadline(self, key: &[u8]) -> Result<Option<Option<u64>>, Error> {
        match self {
            Base::Engine(engine) => engine.deadline(key),
            Base::View(view) => view.deadline(key),
        }
    }

    fn revisions(self, key: &[u8]) -> Result<Option<Revisions>, Error> {
        match self {
            Base::Engine(engine) => Ok(engine.get_revised(key)?.map(|(_, r)| r)),
            Base::View(view) => view.revisions(key),
        }
    }
}

impl<'a> BatchView<'a> {
    pub fn new(engine: &'a dyn Engine) -> BatchView<'a> {
        BatchView::with_base(Base::Engine(engine))
    }

    /// A view of `view` plus writes of its own (a transaction's steps).
    pub fn over(view: &'a BatchView<'a>) -> BatchView<'a> {
        BatchView::with_base(Base::View(view))
    }

    fn with_base(base: Base<'a>) -> BatchView<'a> {
        BatchView {
            base,
            overlay: HashMap::new(),
            deadlines: HashMap::new(),
            written: HashMap::new(),
            cleared: false,
            next: 0,
        }
    }

    /// Notes the revision the next write resolved will get if it logs one:
    /// the next record's sequence number, or the Raft entry's index.
    pub fn resolving_at(&mut self, revision: u64) {
        self.next = revision;
    }

    /// The revisions of `key` after everything resolved so far, or `None`
    /// if it has no value.
    pub fn revisions(&self, key: &[u8]) -> Result<Option<Revisions>, Error> {
        if self.get(key)?.is_none() {
            return Ok(None);
        }
        let Some(written) = self.written.get(key) else {
            return self.base.revisions(key);
        };
        let created = match (written.removed || self.cleared, written.first) {
            (true, Some(first)) => first,
            (_, first) => match self.base.revisions(key)? {
                Some(base) => base.created,
                None => first.unwrap_or(written.modified),
            },
        };
        Ok(Some(Revisions {
            modified: written.modified,
            created,
        }))
    }

    /// The value of `key` after everything resolved so far.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        match self.overlay.get(key) {
            Some(value) => Ok(value.clone()),
            None if self.cleared => Ok(None),
            None => self.base.get(key),
        }
    }

    /// The deadline of `key` after everything resolved so far (`Some(None)`:
    /// none), or `None` if it has no value.
    pub fn deadline(&self, key: &[u8]) -> Result<Option<Option<u64>>, Error> {
        if self.get(key)?.is_none() {
            return Ok(None);
        }
        self.kept(key).map(Some)
    }

    /// The deadline a write of `key` keeps: its own, or none for a key
    /// without a value. For a caller that has just read the value, so
    /// [`BatchView::deadline`]'s second read of it is not needed.
    pub fn kept(&self, key: &[u8]) -> Result<Option<u64>, Error> {
        Ok(match self.deadlines.get(key) {
            Some(at) => *at,
            None if self.cleared => None,
            None => self.base.deadline(key)?.flatten(),
        })
    }

    /// What this view's own writes leave, over its base, as one record:
    /// each key written with its value and deadline, or removed if its base
    /// had it; `None` if nothing changed. Not for a view that saw a `Clear`
    /// (a transaction holds none).
    fn final_states(&self) -> Result<Option<WriteOp>, Error> {
        let mut keys: Vec<&Bytes> = self.overlay.keys().chain(self.deadlines.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for key in keys {
            match self.get(key)? {
                Some(value) => puts.push((key.clone(), value, self.kept(key)?)),
                None if self.base.get(key)?.is_some() => deletes.push(key.clone()),
                None => {}
            }
        }
        let changed = !(puts.is_empty() && deletes.is_empty());
        Ok(changed.then_some(WriteOp::Txn { puts, deletes }))
    }

    /// Takes in a write, made at `revision`, that will be applied after the
    /// ones before it.
    pub fn record(&mut self, op: &WriteOp, revision: u64) {
        self.record_revisions(op, revision);
        for key in op.keys() {
            let at = match op {
                WriteOp::SetExpiring { at, .. } | WriteOp::ExpireAt { at, .. } => Some(*at),
                WriteOp::SetExpiringMany { items } => {
                    items.iter().rev().find(|i| i.0 == key).map(|i| i.2)
                }
                WriteOp::Rename { to, at, .. } if &to[..] == key => *at,
                WriteOp::Txn { puts, .. } => puts.iter().find(|p| p.0 == key).and_then(|p| p.2),
                _ => None,
            };
            self.deadlines.insert(Bytes::copy_from_slice(key), at);
        }
        self.record_value(op);
    }

    fn record_value(&mut self, op: &WriteOp) {
        match op {
            WriteOp::Set { key, value } | WriteOp::SetExpiring { key, value, .. } => {
                self.overlay.insert(key.clone(), Some(value.clone()));
            }
            // Deadlines do not change values; a key the sweep removes was
            // hidden already.
            WriteOp::ExpireAt { .. } | WriteOp::Persist { .. } | WriteOp::Expire { .. } => {}
            WriteOp::Delete { key } => {
                self.overlay.insert(key.clone(), None);
            }
            WriteOp::BulkSet { items } => {
                for (key, value) in items {
                    self.overlay.insert(key.clone(), Some(value.clone()));
                }
            }
            WriteOp::SetExpiringMany { items } => {
                for (key, value, _) in items {
                    self.overlay.insert(key.clone(), Some(value.clone()));
                }
            }
            WriteOp::DeleteMany { keys } => {
                for key in keys {
                    self.overlay.insert(key.clone(), None);
                }
            }
            WriteOp::Rename {
                from, to, value, ..
            } => {
                self.overlay.insert(from.clone(), None);
                self.overlay.insert(to.clone(), Some(value.clone()));
            }
            WriteOp::Txn { puts, deletes } => {
                for (key, value, _) in puts {
                    self.overlay.insert(key.clone(), Some(value.clone()));
                }
                for key in deletes {
                    self.overlay.insert(key.clone(), None);
                }
            }
            WriteOp::Clear => {
                self.overlay.clear();
                self.deadlines.clear();
                self.written.clear();
                self.cleared = true;
            }
        }
    }

    /// Notes what `op`, made at `revision`, does to its keys' revisions;
    /// reads nothing (`BatchView::revisions` reads the base when asked).
    fn record_revisions(&mut self, op: &WriteOp, revision: u64) {
        // The sweep removes only keys readers no longer see.
        if matches!(op, WriteOp::Expire { .. }) {
            return;
        }
        let removes = |key: &[u8]| match op {
            WriteOp::Delete { .. } | WriteOp::DeleteMany { .. } => true,
            WriteOp::Rename { from, .. } => &from[..] == key,
            WriteOp::Txn { deletes, .. } => deletes.iter().any(|d| d == key),
            _ => false,
        };
        for key in op.keys() {
            let written = (self.written.entry(Bytes::copy_from_slice(key))).or_insert(Written {
                modified: revision,
                first: None,
                removed: false,
            });
            written.modified = revision;
            if removes(key) {
                (written.first, written.removed) = (None, true);
            } else if writes_value(op) && written.first.is_none() {
                written.first = Some(revision);
            }
        }
    }
}

/// Whether `op` gives its keys values (not only deadlines).
fn writes_value(op: &WriteOp) -> bool {
    !matches!(op, WriteOp::ExpireAt { .. } | WriteOp::Persist { .. })
}

/// The bytes of a compare's constant.
fn target_len(target: &Target) -> usize {
    match target {
        Target::Value(value) => value.len(),
        _ => 8,
    }
}

/// Whether `compare` holds in `view`.
fn holds(view: &BatchView, compare: &Compare) -> Result<bool, Error> {
    let key = &compare.key;
    let ordering = match &compare.target {
        Target::Value(constant) => match view.get(key)? {
            Some(value) => value.as_ref().cmp(constant.as_ref()),
            None => return Ok(false),
        },
        Target::Exists(constant) => view.get(key)?.is_some().cmp(constant),
        Target::ModRevision(constant) => {
            let revisions = view.revisions(key)?.unwrap_or_default();
            revisions.modified.cmp(constant)
        }
        Target::CreateRevision(constant) => {
            let revisions = view.revisions(key)?.unwrap_or_default();
            revisions.created.cmp(constant)
        }
    };
    Ok(compare.op.holds(ordering))
}

/// What a plain write (one the commit thread logs as it is) does on `view`,
/// as applying it would answer.
fn applied_on(view: &BatchView, op: &WriteOp) -> Result<Applied, Error> {
    Ok(match op {
        WriteOp::Delete { key } => Applied::Deleted(view.get(key)?.is_some()),
        WriteOp::DeleteMany { keys } => {
            let mut seen = std::collections::HashSet::new();
            let mut existed = 0;
            for key in keys {
                if seen.insert(key) && view.get(key)?.is_some() {
                    existed += 1;
                }
            }
            Applied::Int(existed)
        }
        _ => Applied::Stored,
    })
}

/// Runs one step of a transaction's branch on `inner` (the batch's view
/// plus the branch's earlier writes), which takes in its write.
fn run_step(inner: &mut BatchView, step: TxnStep) -> Result<Applied, Error> {
    let change = match step {
        TxnStep::Get(key) => return Ok(Applied::Value(inner.get(&key)?)),
        TxnStep::Exists(key) => return Ok(Applied::Bool(inner.get(&key)?.is_some())),
        TxnStep::Versioned(key) => {
            let value = inner.get(&key)?;
            let revisions = inner.revisions(&key)?.filter(|_| value.is_some());
            return Ok(Applied::Versioned {
                value,
                revisions: revisions.unwrap_or_default(),
            });
        }
        TxnStep::Write(change) => change,
    };
    // The door lets neither in (`Command::in_txn`): one record could not
    // hold their result.
    if matches!(change, Change::Txn { .. } | Change::Write(WriteOp::Clear)) {
        return Ok(Applied::Refused {
            code: ErrorCode::Malformed,
            message: "a transaction cannot hold a Flush or a Txn".into(),
        });
    }
    let resolved = change.resolve(inner);
    let op = resolved.op().cloned();
    let applied = match resolved {
        Resolved::Apply(op) => applied_on(inner, &op)?,
        Resolved::Log(_, applied) | Resolved::Answer(Ok(applied)) => applied,
        Resolved::Answer(Err(Error::Rejected { code, message })) => {
            Applied::Refused { code, message }
        }
        Resolved::Answer(Err(e)) => return Err(e),
    };
    if let Some(op) = op {
        // The transaction's record gets the revision the batch gives it.
        let revision = inner.next;
        inner.record(&op, revision);
    }
    Ok(applied)
}

/// `Txn`: the compares decide the branch; its steps run in order on the
/// batch's view plus their own writes, and their writes are logged as one
/// record of each key's final state.
fn txn(
    view: &BatchView,
    compare: &[Compare],
    success: Vec<TxnStep>,
    failure: Vec<TxnStep>,
) -> Result<Resolved, Error> {
    let mut succeeded = true;
    for c in compare {
        succeeded &= holds(view, c)?;
    }
    let branch = if succeeded { success } else { failure };
    let mut inner = BatchView::over(view);
    inner.resolving_at(view.next);
    let each = (branch.into_iter())
        .map(|step| run_step(&mut inner, step))
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = Applied::Txn { succeeded, each };
    Ok(match inner.final_states()? {
        Some(op) => Resolved::Log(op, outcome),
        None => Resolved::Answer(Ok(outcome)),
    })
}

fn refused(code: ErrorCode, message: impl Into<String>) -> Resolved {
    Resolved::Answer(Err(Error::Rejected {
        code,
        message: message.into(),
    }))
}

/// `SetRange`: the new value, or a refusal if it would pass `max_value`
/// (checked before anything is allocated: `offset` is the client's).
fn set_range(
    view: &BatchView,
    key: Bytes,
    offset: u64,
    value: Bytes,
    max_value: usize,
) -> Result<Resolved, Error> {
    let old = view.get(&key)?;
    if value.is_empty() {
        let len = old.map_or(0, |v| v.len());
        return Ok(Resolved::Answer(Ok(Applied::Int(len as i64))));
    }
    let end = offset.saturating_add(value.len() as u64);
    if end > max_value as u64 {
        let message = format!(
            "string exceeds maximum allowed size (a value of {end} bytes passes the limit of {max_value})"
        );
        return Ok(refused(ErrorCode::ValueTooLarge, message));
    }
    let old = old.unwrap_or_default();
    let (offset, end) = (offset as usize, end as usize);
    let mut new = BytesMut::zeroed(old.len().max(end));
    new[..old.len()].copy_from_slice(&old);
    new[offset..end].copy_from_slice(&value);
    let kept = view.kept(&key)?;
    let len = new.len() as i64;
    Ok(Resolved::Log(
        WriteOp::set_with(key, new.freeze(), kept),
        Applied::Int(len),
    ))
}

/// `Rename`: `from`'s value and deadline moved to `to`; `NoSuchKey` for a
/// missing `from`. Renaming a key to itself changes nothing.
/// Logs the removal of those of `keys` that have a value, each once; the
/// reply counts them.
fn delete_many(view: &BatchView, keys: Vec<Bytes>) -> Result<Resolved, Error> {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    let mut existing = Vec::new();
    for key in keys {
        if view.get(&key)?.is_some() && seen.insert(key.clone()) {
            existing.push(key);
        }
    }
    let count = Applied::Int(existing.len() as i64);
    Ok(match existing.is_empty() {
        true => Resolved::Answer(Ok(count)),
        false => Resolved::Log(WriteOp::DeleteMany { keys: existing }, count),
    })
}

fn rename(view: &BatchView, from: Bytes, to: Bytes, replace: bool) -> Result<Resolved, Error> {
    let Some(value) = view.get(&from)? else {
        return Ok(refused(ErrorCode::NoSuchKey, "no such key"));
    };
    if !replace && view.get(&to)?.is_some() {
        return Ok(Resolved::Answer(Ok(Applied::Bool(false))));
    }
    if from == to {
        return Ok(Resolved::Answer(Ok(Applied::Bool(true))));
    }
    let at = view.kept(&from)?;
    let op = WriteOp::Rename {
        from,
        to,
        value,
        at,
    };
    Ok(Resolved::Log(op, Applied::Bool(true)))
}

/// `IncrByFloat`: the sum, stored as its shortest decimal text.
fn incr_by_float(view: &BatchView, key: Bytes, by: Bytes) -> Result<Resolved, Error> {
    let Some(by) = parse_f64(&by) else {
        return Ok(refused(ErrorCode::NotAFloat, "value is not a valid float"));
    };
    let current = match view.get(&key)? {
        None => 0.0,
        Some(value) => match parse_f64(&value) {
            Some(n) => n,
            None => return Ok(refused(ErrorCode::NotAFloat, "value is not a valid float")),
        },
    };
    let sum = current + by;
    if !sum.is_finite() {
        let message = "increment would produce NaN or Infinity";
        return Ok(refused(ErrorCode::NotAFloat, message));
    }
    // Display never uses an exponent, and gives the shortest text that
    // reads back as the same f64 ("0.30000000000000004", "10.6").
    let text = Bytes::from(format!("{sum}"));
    let kept = view.kept(&key)?;
    let op = WriteOp::set_with(key, text.clone(), kept);
    Ok(Resolved::Log(op, Applied::Value(Some(text))))
}

/// A decimal number as `IncrByFloat` reads one: what Rust's f64 parser
/// takes (`1.5`, `-2e3`, `.5`), no spaces, and not NaN (infinity parses,
/// and then fails the sum's check).
pub fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let n: f64 = std::str::from_utf8(bytes).ok()?.parse().ok()?;
    (!n.is_nan()).then_some(n)
}

/// `SetIf`, and `SetExpiring` with its deadline: `Some(at)` sets `at` (none
/// with `Some(None)`), `None` keeps the key's.
fn set_if(
    view: &BatchView,
    key: Bytes,
    value: Bytes,
    condition: Condition,
    get: bool,
    deadline: Option<Option<u64>>,
) -> Result<Resolved, Error> {
    let old = view.get(&key)?;
    let holds = match condition {
        Condition::Always => true,
        Condition::Absent => old.is_none(),
        Condition::Present => old.is_some(),
    };
    let outcome = if get {
        Applied::Value(old)
    } else {
        Applied::Bool(holds)
    };
    if !holds {
        return Ok(Resolved::Answer(Ok(outcome)));
    }
    let at = match deadline {
        Some(at) => at,
        None => view.kept(&key)?,
    };
    Ok(Resolved::Log(WriteOp::set_with(key, value, at), outcome))
}

/// `Expire`: the key's new deadline, or its removal if `at` has passed, if
/// the key exists and `when` holds.
fn expire(
    view: &BatchView,
    key: Bytes,
    at: u64,
    now: u64,
    when: ExpireWhen,
) -> Result<Resolved, Error> {
    let Some(current) = view.deadline(&key)? else {
        return Ok(Resolved::Answer(Ok(Applied::Bool(false))));
    };
    let holds = match when {
        ExpireWhen::Always => true,
        ExpireWhen::NoDeadline => current.is_none(),
        ExpireWhen::HasDeadline => current.is_some(),
        // No deadline is later than any.
        ExpireWhen::Later => current.is_some_and(|c| at > c),
        ExpireWhen::Earlier => current.is_none_or(|c| at < c),
        ExpireWhen::EarlierDeadline => current.is_some_and(|c| at < c),
    };
    Ok(match (holds, at <= now) {
        (false, _) => Resolved::Answer(Ok(Applied::Bool(false))),
        (true, true) => Resolved::Log(WriteOp::Delete { key }, Applied::Bool(true)),
        (true, false) => Resolved::Log(WriteOp::ExpireAt { key, at }, Applied::Bool(true)),
    })
}

/// `GetEx`: the value, and the write that gives the key its new deadline
/// (none if the deadline stays as it is).
fn get_ex(
    view: &BatchView,
    key: Bytes,
    at: Option<Option<u64>>,
    now: u64,
) -> Result<Resolved, Error> {
    let Some(value) = view.get(&key)? else {
        return Ok(Resolved::Answer(Ok(Applied::Value(None))));
    };
    let current = view.kept(&key)?;
    let outcome = Applied::Value(Some(value));
    let op = match at {
        None => None,
        Some(at) if at == current => None,
        Some(None) => Some(WriteOp::Persist { key }),
        Some(Some(at)) if at <= now => Some(WriteOp::Delete { key }),
        Some(Some(at)) => Some(WriteOp::ExpireAt { key, at }),
    };
    Ok(match op {
        Some(op) => Resolved::Log(op, outcome),
        None => Resolved::Answer(Ok(outcome)),
    })
}

/// A signed 64-bit integer in canonical decimal, as Redis reads one: an
/// optional `-`, digits without leading zeros, nothing else (no `+`, no
/// spaces, no `-0`).
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == bytes.len(),
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::memory::Memory;
    use crate::storage::store::Store;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn integers_are_read_only_in_canonical_decimal() {
        for (text, n) in [
            ("0", 0),
            ("42", 42),
            ("-7", -7),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), Some(n), "{text}");
        }
        for text in [
            "",
            "-",
            "+1",
            "01",
            "-0",
            " 1",
            "1 ",
            "1.5",
            "9223372036854775808",
            "abc",
        ] {
            assert_eq!(parse_i64(text.as_bytes()), None, "{text:?}");
        }
    }

    /// A transaction compares the revisions the batch's earlier writes
    /// gave their keys, and its own writes are seen by its later
    /// operations and logged as each key's final state.
    #[test]
    fn a_transaction_sees_the_batch_and_its_own_writes() {
        let store = Arc::new(Store::new(4));
        store.apply_at(&WriteOp::set("n", "1"), 3);
        let engine = Memory::new(store.clone(), Arc::default());
        let mut view = BatchView::new(&engine);
        view.record(&WriteOp::set("n", "2"), 7);
        let at = |key: &str, target| Compare {
            key: b(key),
            target,
            op: kvstore_client::CompareOp::Equal,
        };
        let change = Change::Txn {
            compare: vec![
                at("n", Target::ModRevision(7)),
                at("n", Target::CreateRevision(3)),
                at("gone", Target::CreateRevision(0)),
            ],
            success: vec![
                TxnStep::Write(Change::Incr { key: b("n"), by: 1 }),
                TxnStep::Write(Change::Incr { key: b("n"), by: 1 }),
                TxnStep::Write(Change::Write(WriteOp::set("t", "x"))),
                TxnStep::Write(Change::Write(WriteOp::Delete { key: b("t") })),
                TxnStep::Get(b("n")),
            ],
            failure: vec![],
        };
        let Resolved::Log(op, Applied::Txn { succeeded, each }) = change.resolve(&view) else {
            panic!("not a logged transaction");
        };
        assert!(succeeded);
        let value = |v: &str| Applied::Value(Some(b(v)));
        let expected = [Applied::Int(3), Applied::Int(4), Applied::Stored];
        assert_eq!(each[..3], expected);
        assert_eq!(each[3..], [Applied::Deleted(true), value("4")]);
        let puts = vec![(b("n"), b("4"), None)];
        assert_eq!(
            op,
            WriteOp::Txn {
                puts,
                deletes: vec![]
            }
        );
        view.record(&op, 8);
        let revisions = view.revisions(b"n").unwrap();
        let (modified, created) = (8, 3);
        assert_eq!(revisions, Some(Revisions { modified, created }));
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes() {
        let store = Arc::new(Store::new(4));
        store.apply(&WriteOp::Set {
            key: b("n"),
            value: b("10"),
        });
        let engine = Memory::new(store.clone(), Arc::default());
        let mut view = BatchView::new(&engine);
        let resolved = Change::Incr { key: b("n"), by: 5 }.resolve(&view);
        assert!(matches!(&resolved, Resolved::Log(_, Applied::Int(15))));
        view.record(resolved.op().unwrap(), 1);
        // Not yet in the store, but the next change in the batch sees it.
        assert_eq!(store.get(b"n"), Some(b("10")));
        let resolved = Change::Incr { key: b("n"), by: 1 }.resolve(&view);
        assert!(matches!(&resolved, Resolved::Log(_, Applied::Int(16))));
        view.record(&WriteOp::Clear, 2);
        let resolved = Change::SetIf {
            key: b("n"),
            value: b("x"),
            condition: Condition::Absent,
            get: false,
        }
        .resolve(&view);
        assert!(matches!(&resolved, Resolved::Log(_, Applied::Bool(true))));
    }

    #[test]
    fn refused_changes_log_nothing() {
        let store = Arc::new(Store::new(1));
        store.apply(&WriteOp::Set {
            key: b("s"),
            value: b("abc"),
        });
        store.apply(&WriteOp::Set {
            key: b("max"),
            value: Bytes::from(i64::MAX.to_string()),
        });
        let engine = Memory::new(store, Arc::default());
        let view = BatchView::new(&engine);
        for (change, code) in [
            (Change::Incr { key: b("s"), by: 1 }, ErrorCode::NotAnInteger),
            (
                Change::Incr {
                    key: b("max"),
                    by: 1,
                },
                ErrorCode::Overflow,
            ),
            (
                Change::Append {
                    key: b("s"),
                    value: b("de"),
                    max_value: 4,
                },
                ErrorCode::ValueTooLarge,
            ),
        ] {
            match change.resolve(&view) {
                Resolved::Answer(Err(Error::Rejected { code: c, .. })) => assert_eq!(c, code),
                other => panic!("expected a refusal with {code:?}, got {other:?}"),
            }
        }
        let absent = Change::SetIf {
            key: b("s"),
            value: b("new"),
            condition: Condition::Absent,
            get: true,
        }
        .resolve(&view);
        assert!(matches!(
            absent,
            Resolved::Answer(Ok(Applied::Value(Some(ref old)))) if old == "abc"
        ));
    }
}
