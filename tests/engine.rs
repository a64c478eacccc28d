//! The engine suite: every storage engine, through one macro
//! ([`engine_suite!`]), against a `BTreeMap` model. Any sequence of writes
//! and reads gives the same answers (point reads, pages of keys and pairs
//! both ways with random bounds over keys with 0x00 and 0xff bytes,
//! batches, `Clear`, the applied position); writes that read first,
//! resolved in batches the way the commit thread does it, give the answers
//! of running them one by one; pages stop at their byte budget. Keys get
//! deadlines and a clock the test sets moves past them: an expired key is
//! gone from every read, and the sweep's `Expire` removes only what is due.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kvstore::backup::{Backup, Tees};
use kvstore::engine::disk::Disk;
use kvstore::engine::memory::Memory;
use kvstore::engine::{Applied, Engine, Revisions, Span};
use kvstore::storage::change::{BatchView, Change, TxnStep};
use kvstore::storage::clock::Clock;
use kvstore::storage::fs::RealFs;
use kvstore::storage::op::WriteOp;
use kvstore::storage::snapshot;
use kvstore::storage::store::Store;
use kvstore_client::{Compare, CompareOp, Condition, ErrorCode, ExpireWhen, Target};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// An engine under test, with the directory it lives in.
struct Fixture {
    engine: Box<dyn Engine>,
    /// The tees the engine feeds, for its backups.
    tees: Arc<Tees>,
    /// The engine's clock, which only the test moves.
    clock: Clock,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Fixture {
    type Target = dyn Engine;
    fn deref(&self) -> &(dyn Engine + 'static) {
        &*self.engine
    }
}

/// Runs the suite against the engines `new(shards)` makes, in a module
/// named `$engine`.
macro_rules! engine_suite {
    ($engine:ident, $new:expr) => {
        mod $engine {
            use super::*;

            fn new(shards: usize) -> Fixture {
                #[allow(clippy::redundant_closure_call)]
                ($new)(shards)
            }

            proptest! {
                #[test]
                fn behaves_like_a_btreemap(
                    shards in 1usize..9,
                    steps in proptest::collection::vec(step(), 1..120),
                ) {
                    let fixture = new(shards);
                    super::behaves_like_a_btreemap(&*fixture, &fixture.clock, steps)?;
                }

                #[test]
                fn batched_changes_answer_like_sequential_ones(
                    batches in proptest::collection::vec(
                        proptest::collection::vec(change(), 1..10),
                        1..12,
                    )
                ) {
                    super::batched_changes_answer_like_sequential_ones(&*new(4), batches)?;
                }
            }

            #[test]
            fn a_backup_copied_while_writes_go_on_is_one_instants_state() {
                super::a_backup_copied_while_writes_go_on_is_one_instants_state(&new(4));
            }

            #[test]
            fn a_keys_page_stops_before_its_byte_budget() {
                super::a_keys_page_stops_before_its_byte_budget(&*new(4));
            }

            #[test]
            fn a_pairs_page_stops_before_its_byte_budget_but_holds_one_pair() {
                super::a_pairs_page_stops_before_its_byte_budget_but_holds_one_pair(&*new(4));
            }
        }
    };
}

engine_suite!(memory, |shards| {
    let tees = Arc::new(Tees::default());
    let clock = Clock::manual(0);
    let store = Store::with_clock(shards, clock.clone());
    Fixture {
        engine: Box::new(Memory::new(Arc::new(store), tees.clone())),
        tees,
        clock,
        _dir: None,
    }
});

engine_suite!(disk, |_shards| {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(0);
    let engine = Disk::open(&dir.path().join("data.fjall"), 1 << 20).unwrap();
    Fixture {
        engine: Box::new(engine.with_clock(clock.clone())),
        tees: Arc::default(),
        clock,
        _dir: Some(dir),
    }
});

/// What the engines should hold: every value, the deadlines of keys that
/// have one, each key's revisions, the time the clock says, and the
/// revision of the writes being applied.
#[derive(Debug, Default, Clone)]
struct Model {
    values: BTreeMap<Bytes, Bytes>,
    deadlines: BTreeMap<Bytes, u64>,
    revisions: BTreeMap<Bytes, Revisions>,
    now: u64,
    revision: u64,
}

impl Model {
    /// Whether readers see `key`: it has a value and no deadline passed.
    fn live(&self, key: &[u8]) -> bool {
        self.values.contains_key(key) && self.deadlines.get(key).is_none_or(|at| *at > self.now)
    }

    /// What readers see.
    fn visible(&self) -> BTreeMap<Bytes, Bytes> {
        (self.values.iter())
            .filter(|(k, _)| self.live(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// What readers see of `key`, with its revisions.
    fn revised(&self, key: &[u8]) -> Option<(Bytes, Revisions)> {
        let revisions = self.revisions.get(key).copied().unwrap_or_default();
        self.live(key)
            .then(|| (self.values[key].clone(), revisions))
    }

    /// Notes a write of `key` at the current revision; it was stored
    /// before if `was_stored`.
    fn revise(&mut self, key: &Bytes, was_stored: bool) {
        let created = match was_stored {
            true => self.revisions.get(key).map_or(0, |r| r.created),
            false => self.revision,
        };
        let revisions = Revisions {
            modified: self.revision,
            created,
        };
        self.revisions.insert(key.clone(), revisions);
    }

    /// Gives a stored `key` the deadline `at` (`None`: none); whether it
    /// was stored.
    fn set_deadline(&mut self, key: &Bytes, at: Option<u64>) -> bool {
        let stored = self.values.contains_key(key);
        if stored {
            match at {
                Some(at) => self.deadlines.insert(key.clone(), at),
                None => self.deadlines.remove(key),
            };
            self.revise(key, true);
        }
        stored
    }

    /// Gives `key` a new value, keeping its deadline.
    fn rewrite(&mut self, key: &Bytes, value: Bytes) {
        let was_stored = self.values.contains_key(key);
        self.revise(key, was_stored);
        self.values.insert(key.clone(), value);
    }

    fn insert(&mut self, key: &Bytes, value: &Bytes, at: Option<u64>) {
        let was_stored = self.values.contains_key(key);
        self.revise(key, was_stored);
        self.values.insert(key.clone(), value.clone());
        match at {
            Some(at) => self.deadlines.insert(key.clone(), at),
            None => self.deadlines.remove(key),
        };
    }

    /// Removes `key`; whether readers saw it.
    fn remove(&mut self, key: &[u8]) -> bool {
        let live = self.live(key);
        self.values.remove(key);
        self.deadlines.remove(key);
        self.revisions.remove(key);
        live
    }
}

/// Applies one write as a batch of its own at `position`, its revision.
fn apply(engine: &dyn Engine, op: &WriteOp, position: u64) -> Applied {
    let mut applied = engine.apply(&[(op, position)], position).expect("apply");
    assert_eq!(applied.len(), 1);
    applied.remove(0)
}

#[derive(Debug, Clone)]
enum Step {
    Write(WriteOp),
    Get(Bytes),
    GetMany(Vec<Bytes>),
    /// The clock moves on this many ms.
    Tick(u64),
    /// A key's deadline is read.
    Deadline(Bytes),
    Keys {
        prefix: Bytes,
        start_after: Option<Bytes>,
        limit: usize,
    },
    /// A Scan (`end` is `None`) or Range page of pairs.
    Pairs {
        /// A Scan's prefix, or a Range's start.
        from: Bytes,
        /// A Scan's start_after.
        after: Option<Bytes>,
        /// `Some` for a Range: its end (`None` inside: no end).
        range_end: Option<Option<Bytes>>,
        reverse: bool,
        limit: usize,
    },
}

/// Keys from a small alphabet so that writes collide and prefixes match.
fn key() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(0u8), Just(0xffu8)],
        0..4,
    )
    .prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(key, value)| Step::Write(WriteOp::Set { key, value })),
        4 => key().prop_map(|key| Step::Write(WriteOp::Delete { key })),
        4 => proptest::collection::vec((key(), value()), 0..6)
            .prop_map(|items| Step::Write(WriteOp::BulkSet { items })),
        4 => proptest::collection::vec(key(), 0..6)
            .prop_map(|keys| Step::Write(WriteOp::DeleteMany { keys })),
        1 => Just(Step::Write(WriteOp::Clear)),
        3 => (key(), value(), 0u64..30).prop_map(|(key, value, at)| Step::Write(WriteOp::SetExpiring { key, value, at })),
        2 => (key(), 0u64..30).prop_map(|(key, at)| Step::Write(WriteOp::ExpireAt { key, at })),
        2 => key().prop_map(|key| Step::Write(WriteOp::Persist { key })),
        2 => proptest::collection::vec((key(), value(), 0u64..30), 0..5)
            .prop_map(|items| Step::Write(WriteOp::SetExpiringMany { items })),
        2 => (proptest::collection::vec(key(), 0..4), 0u64..30).prop_map(|(keys, now)| Step::Write(WriteOp::Expire { keys, now })),
        2 => (key(), key(), value(), proptest::option::of(0u64..30)).prop_filter("two keys", |(from, to, ..)| from != to)
            .prop_map(|(from, to, value, at)| Step::Write(WriteOp::Rename { from, to, value, at })),
        3 => proptest::collection::btree_map(key(), proptest::option::of((value(), proptest::option::of(0u64..30))), 0..5)
            .prop_map(|states| Step::Write(txn_of(states))),
        3 => (0u64..4).prop_map(Step::Tick),
        2 => key().prop_map(Step::Deadline),
        4 => key().prop_map(Step::Get),
        4 => proptest::collection::vec(key(), 0..6).prop_map(Step::GetMany),
        4 => (key(), proptest::option::of(key()), proptest::option::of(proptest::option::of(key())), any::<bool>(), 1usize..6)
            .prop_map(|(from, after, range_end, reverse, limit)| Step::Pairs { from, after, range_end, reverse, limit }),
        4 => (key(), proptest::option::of(key()), 1usize..6).prop_map(|(prefix, start_after, limit)| {
            Step::Keys {
                prefix,
                start_after,
                limit,
            }
        }),
    ]
}

/// The `WriteOp::Txn` that leaves each key of `states` so (`None`: gone).
fn txn_of(states: BTreeMap<Bytes, Option<(Bytes, Option<u64>)>>) -> WriteOp {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    for (key, state) in states {
        match state {
            Some((value, at)) => puts.push((key, value, at)),
            None => deletes.push(key),
        }
    }
    WriteOp::Txn { puts, deletes }
}

fn model_apply(model: &mut Model, op: &WriteOp) -> Applied {
    match op {
        WriteOp::Txn { puts, deletes } => {
            for (key, value, at) in puts {
                model.insert(key, value, *at);
            }
            for key in deletes {
                model.remove(key);
            }
            Applied::Stored
        }
        WriteOp::Set { key, value } => {
            model.insert(key, value, None);
            Applied::Stored
        }
        WriteOp::Delete { key } => Applied::Deleted(model.remove(key)),
        WriteOp::BulkSet { items } => {
            for (k, v) in items {
                model.insert(k, v, None);
            }
            Applied::Stored
        }
        WriteOp::DeleteMany { keys } => {
            Applied::Removed(keys.iter().filter(|k| model.remove(k)).cloned().collect())
        }
        WriteOp::Clear => {
            model.values.clear();
            model.deadlines.clear();
            model.revisions.clear();
            Applied::Stored
        }
        WriteOp::SetExpiring { key, value, at } => {
            model.insert(key, value, Some(*at));
            Applied::Stored
        }
        WriteOp::SetExpiringMany { items } => {
            for (key, value, at) in items {
                model.insert(key, value, Some(*at));
            }
            Applied::Stored
        }
        // Applied to the stored key whatever the clock says (so replay
        // does not depend on it); the commit thread decides on live keys.
        WriteOp::ExpireAt { key, at } => Applied::Bool(model.set_deadline(key, Some(*at))),
        WriteOp::Persist { key } => Applied::Bool(model.set_deadline(key, None)),
        WriteOp::Rename {
            from,
            to,
            value,
            at,
        } => {
            model.remove(from);
            model.insert(to, value, *at);
            Applied::Stored
        }
        WriteOp::Expire { keys, now } => {
            let mut removed = Vec::new();
            for key in keys {
                let due = model.deadlines.get(key).is_some_and(|at| at <= now);
                if due && model.values.contains_key(key) {
                    model.remove(key);
                    removed.push(key.clone());
                }
            }
            Applied::Removed(removed)
        }
    }
}

fn expire_when() -> impl Strategy<Value = ExpireWhen> {
    prop_oneof![
        Just(ExpireWhen::Always),
        Just(ExpireWhen::NoDeadline),
        Just(ExpireWhen::HasDeadline),
        Just(ExpireWhen::Later),
        Just(ExpireWhen::Earlier),
        Just(ExpireWhen::EarlierDeadline),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        Just(Condition::Always),
        Just(Condition::Absent),
        Just(Condition::Present)
    ]
}

/// Values that are sometimes counters, sometimes not.
fn counter_value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        (-3i64..3).prop_map(|n| Bytes::from(n.to_string())),
        Just(Bytes::from(i64::MAX.to_string())),
        value(),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        12 => plain_change(),
        1 => (
            proptest::collection::vec(compare(), 0..3),
            proptest::collection::vec(txn_step(), 0..5),
            proptest::collection::vec(txn_step(), 0..3),
        ).prop_map(|(compare, success, failure)| Change::Txn { compare, success, failure }),
    ]
}

/// Every change but a transaction.
fn plain_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (key(), counter_value()).prop_map(|(key, value)| Change::Write(WriteOp::Set { key, value })),
        4 => key().prop_map(|key| Change::Write(WriteOp::Delete { key })),
        4 => key().prop_map(|key| Change::Delete { key }),
        2 => proptest::collection::vec(key(), 1..4).prop_map(|keys| Change::DeleteMany { keys }),
        1 => Just(Change::Write(WriteOp::Clear)),
        4 => (key(), value(), condition(), any::<bool>()).prop_map(|(key, value, condition, get)| {
            Change::SetIf { key, value, condition, get }
        }),
        4 => key().prop_map(|key| Change::GetDel { key }),
        4 => (key(), prop_oneof![Just(1i64), Just(-1), Just(i64::MAX)]).prop_map(|(key, by)| Change::Incr { key, by }),
        4 => (key(), value()).prop_map(|(key, value)| Change::Append { key, value, max_value: 12 }),
        4 => (key(), value(), condition(), any::<bool>(), proptest::option::of(1u64..30)).prop_map(|(key, value, condition, get, at)| {
            Change::SetExpiring { key, value, condition, get, at }
        }),
        4 => (key(), 0u64..30, expire_when()).prop_map(|(key, at, when)| Change::Expire { key, at, now: 0, when }),
        2 => key().prop_map(|key| Change::Persist { key }),
        3 => (key(), proptest::option::of(proptest::option::of(0u64..30))).prop_map(|(key, at)| Change::GetEx { key, at, now: 0 }),
        3 => (key(), 0u64..14, value()).prop_map(|(key, offset, value)| Change::SetRange { key, offset, value, max_value: 12 }),
        3 => (key(), prop_oneof![Just("1.5"), Just("-2"), Just("x"), Just("1e308"), Just("inf")])
            .prop_map(|(key, by)| Change::IncrByFloat { key, by: Bytes::from(by) }),
        3 => proptest::collection::vec((key(), value()), 1..4).prop_map(|items| Change::BulkSetIfAbsent { items }),
        3 => (key(), key(), any::<bool>()).prop_map(|(from, to, replace)| Change::Copy { from, to, replace }),
        3 => (key(), key(), any::<bool>()).prop_map(|(from, to, replace)| Change::Rename { from, to, replace }),
    ]
}

/// Compares that sometimes hold: revisions near the batch positions the
/// test makes (1 to 12).
fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        counter_value().prop_map(Target::Value),
        any::<bool>().prop_map(Target::Exists),
        (0u64..6).prop_map(Target::ModRevision),
        (0u64..6).prop_map(Target::CreateRevision),
    ];
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Less),
        Just(CompareOp::Greater),
    ];
    (key(), target, op).prop_map(|(key, target, op)| Compare { key, target, op })
}

/// A step of a transaction: any change but `Clear` and a transaction, or
/// a read.
fn txn_step() -> impl Strategy<Value = TxnStep> {
    prop_oneof![
        6 => plain_change()
            .prop_filter("no Clear", |c| !matches!(c, Change::Write(WriteOp::Clear)))
            .prop_map(TxnStep::Write),
        1 => key().prop_map(TxnStep::Get),
        1 => key().prop_map(TxnStep::Exists),
        1 => key().prop_map(TxnStep::Versioned),
    ]
}

/// Whether `compare` holds in the model.
fn model_holds(model: &Model, compare: &Compare) -> bool {
    let key = &compare.key;
    let revisions = model.revised(key).map(|(_, r)| r).unwrap_or_default();
    let ordering = match &compare.target {
        Target::Value(constant) => match model.revised(key) {
            Some((value, _)) => value.cmp(constant),
            None => return false,
        },
        Target::Exists(constant) => model.live(key).cmp(constant),
        Target::ModRevision(constant) => revisions.modified.cmp(constant),
        Target::CreateRevision(constant) => revisions.created.cmp(constant),
    };
    compare.op.holds(ordering)
}

/// A transaction on the model: the branch's steps one by one on a copy,
/// then each key the copy left different written as the engine writes a
/// transaction's record (a key that existed keeps its creation).
fn model_txn(
    model: &mut Model,
    compare: &[Compare],
    success: &[TxnStep],
    failure: &[TxnStep],
) -> Applied {
    let succeeded = compare.iter().all(|c| model_holds(model, c));
    let branch = if succeeded { success } else { failure };
    let mut inner = model.clone();
    let each = (branch.iter())
        .map(|step| match step {
            TxnStep::Get(key) => Applied::Value(inner.revised(key).map(|(v, _)| v)),
            TxnStep::Exists(key) => Applied::Bool(inner.live(key)),
            TxnStep::Versioned(key) => {
                let (value, revisions) = inner.revised(key).unzip();
                Applied::Versioned {
                    value,
                    revisions: revisions.unwrap_or_default(),
                }
            }
            TxnStep::Write(change) => match model_change(&mut inner, change) {
                Ok(applied) => applied,
                Err(code) => refused(ErrorCode::from_code(code).unwrap()),
            },
        })
        .collect();
    let keys: std::collections::BTreeSet<Bytes> = model
        .values
        .keys()
        .chain(inner.values.keys())
        .cloned()
        .collect();
    for key in keys {
        let state = |m: &Model| {
            (
                m.values.get(&key).cloned(),
                m.deadlines.get(&key).copied(),
                m.revisions.get(&key).copied(),
            )
        };
        if state(model) == state(&inner) {
            continue;
        }
        match inner.values.get(&key) {
            Some(value) => model.insert(&key, value, inner.deadlines.get(&key).copied()),
            None if model.live(&key) => drop(model.remove(&key)),
            None => {}
        }
    }
    Applied::Txn { succeeded, each }
}

/// `applied` with the messages of refused transaction operations left out
/// (the model gives none).
fn without_messages(applied: Applied) -> Applied {
    match applied {
        Applied::Txn { succeeded, each } => Applied::Txn {
            succeeded,
            each: each.into_iter().map(without_messages).collect(),
        },
        Applied::Refused { code, .. } => refused(code),
        other => other,
    }
}

/// A refused transaction operation, as the engine answers it (the message
/// is not compared).
fn refused(code: ErrorCode) -> Applied {
    Applied::Refused {
        code,
        message: String::new(),
    }
}

/// `SetIf`, or `SetExpiring` with `Some(at)` (`None`: keep the deadline).
fn model_set_if(
    model: &mut Model,
    key: &Bytes,
    value: &Bytes,
    condition: Condition,
    get: bool,
    deadline: Option<Option<u64>>,
) -> Applied {
    let old = model.values.get(key).cloned();
    let holds = match condition {
        Condition::Always => true,
        Condition::Absent => old.is_none(),
        Condition::Present => old.is_some(),
    };
    if holds {
        let at = deadline.unwrap_or_else(|| model.deadlines.get(key).copied());
        model.insert(key, value, at);
    }
    match get {
        true => Applied::Value(old),
        false => Applied::Bool(holds),
    }
}

/// What a change answers when run alone against the model: `Err` carries the
/// refusal's code.
fn model_change(model: &mut Model, change: &Change) -> Result<Applied, u32> {
    match change {
        Change::Write(op) => Ok(model_apply(model, op)),
        Change::Delete { key } => Ok(Applied::Deleted(model.remove(key))),
        Change::DeleteMany { keys } => {
            let removed = keys.iter().filter(|key| model.remove(key)).count();
            Ok(Applied::Int(removed as i64))
        }
        Change::SetIf {
            key,
            value,
            condition,
            get,
        } => Ok(model_set_if(
            model,
            key,
            value,
            *condition,
            *get,
            Some(None),
        )),
        Change::SetExpiring {
            key,
            value,
            condition,
            get,
            at,
        } => Ok(model_set_if(
            model,
            key,
            value,
            *condition,
            *get,
            at.map(Some),
        )),
        Change::Expire { key, at, now, when } => {
            if !model.live(key) {
                return Ok(Applied::Bool(false));
            }
            let current = model.deadlines.get(key).copied();
            let holds = match when {
                ExpireWhen::Always => true,
                ExpireWhen::NoDeadline => current.is_none(),
                ExpireWhen::HasDeadline => current.is_some(),
                ExpireWhen::Later => current.is_some_and(|c| at > &c),
                ExpireWhen::Earlier => current.is_none_or(|c| at < &c),
                ExpireWhen::EarlierDeadline => current.is_some_and(|c| at < &c),
            };
            match (holds, at <= now) {
                (true, true) => drop(model.remove(key)),
                (true, false) => drop(model.set_deadline(key, Some(*at))),
                (false, _) => {}
            }
            Ok(Applied::Bool(holds))
        }
        Change::Persist { key } => {
            let timed = model.live(key) && model.deadlines.contains_key(key);
            if timed {
                model.set_deadline(key, None);
            }
            Ok(Applied::Bool(timed))
        }
        Change::GetEx { key, at, now } => {
            let Some(value) = model.live(key).then(|| model.values[key].clone()) else {
                return Ok(Applied::Value(None));
            };
            match at {
                None => {}
                Some(at) if *at == model.deadlines.get(key).copied() => {}
                Some(Some(at)) if at <= now => drop(model.remove(key)),
                Some(at) => drop(model.set_deadline(key, *at)),
            }
            Ok(Applied::Value(Some(value)))
        }
        Change::GetDel { key } => {
            let old = model.values.get(key).cloned();
            model.remove(key);
            Ok(Applied::Value(old))
        }
        Change::Incr { key, by } => {
            let current = match model.values.get(key) {
                None => 0,
                // Canonical decimal: it reads back as the same text.
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok().filter(|n| n.to_string() == s))
                    .ok_or(kvstore_client::ErrorCode::NotAnInteger as u32)?,
            };
            let n = current
                .checked_add(*by)
                .ok_or(kvstore_client::ErrorCode::Overflow as u32)?;
            model.rewrite(key, Bytes::from(n.to_string()));
            Ok(Applied::Int(n))
        }
        Change::Append {
            key,
            value,
            max_value,
        } => {
            let mut joined = model
                .values
                .get(key)
                .map(|v| v.to_vec())
                .unwrap_or_default();
            joined.extend_from_slice(value);
            if joined.len() > *max_value {
                return Err(kvstore_client::ErrorCode::ValueTooLarge as u32);
            }
            let len = joined.len() as i64;
            model.rewrite(key, Bytes::from(joined));
            Ok(Applied::Int(len))
        }
        Change::SetRange {
            key,
            offset,
            value,
            max_value,
        } => {
            let old = model.values.get(key).cloned().unwrap_or_default();
            if value.is_empty() {
                return Ok(Applied::Int(old.len() as i64));
            }
            let end = *offset as usize + value.len();
            if end > *max_value {
                return Err(kvstore_client::ErrorCode::ValueTooLarge as u32);
            }
            let mut new = old.to_vec();
            new.resize(new.len().max(end), 0);
            new[*offset as usize..end].copy_from_slice(value);
            let len = new.len() as i64;
            model.rewrite(key, Bytes::from(new));
            Ok(Applied::Int(len))
        }
        Change::IncrByFloat { key, by } => {
            let not_float = kvstore_client::ErrorCode::NotAFloat as u32;
            let by: f64 = std::str::from_utf8(by)
                .unwrap()
                .parse()
                .map_err(|_| not_float)?;
            let current = match model.values.get(key) {
                None => 0.0,
                Some(v) => (std::str::from_utf8(v).ok())
                    .and_then(|t| t.parse::<f64>().ok())
                    .filter(|n| !n.is_nan())
                    .ok_or(not_float)?,
            };
            let sum = current + by;
            if !sum.is_finite() {
                return Err(not_float);
            }
            let text = Bytes::from(sum.to_string());
            model.rewrite(key, text.clone());
            Ok(Applied::Value(Some(text)))
        }
        Change::BulkSetIfAbsent { items } => {
            if items.iter().any(|(key, _)| model.live(key)) {
                return Ok(Applied::Bool(false));
            }
            for (key, value) in items {
                model.insert(key, value, None);
            }
            Ok(Applied::Bool(true))
        }
        Change::Txn {
            compare,
            success,
            failure,
        } => Ok(model_txn(model, compare, success, failure)),
        Change::Rename { from, to, replace } => {
            let Some(value) = model.live(from).then(|| model.values[from].clone()) else {
                return Err(kvstore_client::ErrorCode::NoSuchKey as u32);
            };
            if !replace && model.live(to) {
                return Ok(Applied::Bool(false));
            }
            // Nothing changes, as in Redis (a WATCH of the key holds).
            if from == to {
                return Ok(Applied::Bool(true));
            }
            let at = model.deadlines.get(from).copied();
            model.remove(from);
            model.insert(to, &value, at);
            Ok(Applied::Bool(true))
        }
        Change::Copy { from, to, replace } => {
            let Some(value) = model.live(from).then(|| model.values[from].clone()) else {
                return Ok(Applied::Bool(false));
            };
            if !replace && model.live(to) {
                return Ok(Applied::Bool(false));
            }
            let at = model.deadlines.get(from).copied();
            model.insert(to, &value, at);
            Ok(Applied::Bool(true))
        }
        // Only the Raft state machine serves sessions and groups (not
        // generated here).
        Change::OpenSession { .. } | Change::Once { .. } => {
            Err(kvstore_client::ErrorCode::Malformed as u32)
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
        | Change::Replicas { .. } => Err(kvstore_client::ErrorCode::ClusterFailed as u32),
    }
}

/// Batches resolved against the engine plus an overlay, then applied (as
/// the commit thread does), answer like the changes run one at a time.
fn batched_changes_answer_like_sequential_ones(
    engine: &dyn Engine,
    batches: Vec<Vec<Change>>,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (position, batch) in (1..).zip(batches) {
        model.revision = position;
        let mut view = BatchView::new(engine);
        let mut resolved = Vec::new();
        let mut expected = Vec::new();
        for change in batch {
            expected.push(model_change(&mut model, &change));
            view.resolving_at(position);
            let r = change.resolve(&view);
            if let Some(op) = r.op() {
                view.record(op, position);
            }
            resolved.push(r);
        }
        drop(view);
        let revised: Vec<_> = resolved.iter().map(|r| (r, position)).collect();
        let applied = (engine.apply_resolved(&revised, position, None)).expect("apply");
        for ((r, applied), expected) in resolved.into_iter().zip(applied).zip(expected) {
            let got = match r.outcome(applied) {
                Ok(outcome) => Ok(without_messages(outcome)),
                Err(kvstore::Error::Rejected { code, .. }) => Err(code as u32),
                Err(e) => panic!("unexpected error {e}"),
            };
            prop_assert_eq!(got, expected);
        }
        prop_assert_eq!(engine.applied(), position);
        for key in model.values.keys() {
            prop_assert_eq!(engine.get_revised(key).unwrap(), model.revised(key));
        }
    }
    let all = engine.keys(b"", None, usize::MAX, usize::MAX).unwrap().keys;
    prop_assert_eq!(all.len(), model.values.len());
    for key in all {
        prop_assert_eq!(engine.get(&key).unwrap(), model.values.get(&key).cloned());
        let deadline = model.deadlines.get(&key).copied();
        prop_assert_eq!(engine.deadline(&key).unwrap(), Some(deadline));
    }
    Ok(())
}

/// Any sequence of steps answers as the model does; the applied position
/// is the last batch's.
fn behaves_like_a_btreemap(
    engine: &dyn Engine,
    clock: &Clock,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut position = 0;
    for step in steps {
        let visible = model.visible();
        match step {
            Step::Write(op) => {
                position += 1 + op.approx_len() as u64 % 3;
                model.revision = position;
                prop_assert_eq!(apply(engine, &op, position), model_apply(&mut model, &op));
                prop_assert_eq!(engine.applied(), position);
            }
            Step::Tick(ms) => {
                model.now += ms;
                clock.set(model.now);
            }
            Step::Deadline(key) => {
                let expected = (model.live(&key)).then(|| model.deadlines.get(&key).copied());
                prop_assert_eq!(engine.deadline(&key).unwrap(), expected);
            }
            Step::Get(key) => {
                prop_assert_eq!(engine.get(&key).unwrap(), visible.get(&key).cloned());
                prop_assert_eq!(engine.get_revised(&key).unwrap(), model.revised(&key));
                prop_assert_eq!(engine.contains(&key).unwrap(), visible.contains_key(&key));
            }
            Step::GetMany(keys) => {
                let expected: Vec<_> = keys.iter().map(|k| visible.get(k).cloned()).collect();
                prop_assert_eq!(engine.get_many(&keys).unwrap(), expected);
            }
            Step::Keys {
                prefix,
                start_after,
                limit,
            } => {
                let page = engine
                    .keys(&prefix, start_after.as_deref(), limit, usize::MAX)
                    .unwrap();
                let all: Vec<Bytes> = visible
                    .keys()
                    .filter(|k| {
                        k.starts_with(&prefix) && start_after.as_ref().is_none_or(|a| *k > a)
                    })
                    .cloned()
                    .collect();
                prop_assert_eq!(&page.keys[..], &all[..all.len().min(limit)]);
                prop_assert_eq!(page.more, all.len() > limit);
            }
            Step::Pairs {
                from,
                after,
                range_end,
                reverse,
                limit,
            } => {
                let span = match &range_end {
                    None => Span::prefix(&from, after.as_deref(), reverse),
                    Some(end) => Span::range(&from, end.as_deref(), reverse),
                };
                let (pairs, more) = engine.pairs(&span, limit, usize::MAX).unwrap();
                let wanted = |k: &Bytes| match &range_end {
                    None => {
                        k.starts_with(&from)
                            && after
                                .as_ref()
                                .is_none_or(|a| if reverse { k < a } else { k > a })
                    }
                    Some(end) => *k >= from && end.as_ref().is_none_or(|e| k < e),
                };
                let mut all: Vec<(Bytes, Bytes)> = visible
                    .iter()
                    .filter(|(k, _)| wanted(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if reverse {
                    all.reverse();
                }
                prop_assert_eq!(&pairs[..], &all[..all.len().min(limit)]);
                prop_assert_eq!(more, all.len() > limit);
            }
        }
    }
    prop_assert_eq!(engine.len(), model.visible().len() as u64);
    // Bytes count what is held: expired keys until they are removed.
    let key_bytes = model.values.keys().map(|k| k.len() as u64).sum();
    let value_bytes = model.values.values().map(|v| v.len() as u64).sum();
    prop_assert_eq!(engine.bytes(), (key_bytes, value_bytes));
    Ok(())
}

fn a_keys_page_stops_before_its_byte_budget(engine: &dyn Engine) {
    for i in 0..100u8 {
        let op = WriteOp::Set {
            key: Bytes::from(vec![b'k', i]),
            value: Bytes::new(),
        };
        apply(engine, &op, u64::from(i) + 1);
    }
    // Each 2-byte key costs 10 bytes in a reply (with its length prefix).
    let page = engine.keys(b"k", None, 1000, 105).unwrap();
    assert_eq!(page.keys.len(), 10, "ten 2-byte keys fit in 105 bytes");
    assert!(page.more);
}

fn a_pairs_page_stops_before_its_byte_budget_but_holds_one_pair(engine: &dyn Engine) {
    for i in 0..100u8 {
        let op = WriteOp::Set {
            key: Bytes::from(vec![b'k', i]),
            value: Bytes::from(vec![i; 10]),
        };
        apply(engine, &op, u64::from(i) + 1);
    }
    // Each pair costs 2 + 8 + 10 + 8 = 28 bytes in a reply.
    let (pairs, more) = (engine.pairs(&Span::prefix(b"k", None, false), 1000, 100)).unwrap();
    assert_eq!(pairs.len(), 3, "three 28-byte pairs fit in 100 bytes");
    assert!(more);
    let (pairs, more) = (engine.pairs(&Span::prefix(b"k", None, true), 1000, 1)).unwrap();
    assert_eq!(
        pairs,
        vec![(Bytes::from(vec![b'k', 99]), Bytes::from(vec![99; 10]))]
    );
    assert!(more);
}

/// The key of the `i`th pair of the backup test.
fn numbered(i: usize) -> Bytes {
    Bytes::from(format!("k{i:05}"))
}

/// A backup whose chunks are taken while writes land, on keys it has
/// copied and keys it has not, holds the state at one instant: the model's
/// after some prefix of the writes, never a mix.
fn a_backup_copied_while_writes_go_on_is_one_instants_state(fixture: &Fixture) {
    const KEYS: usize = 3000;
    // Values of 2 KiB, so that the copy closes blocks, and so yields
    // chunks, several times.
    let value = |n: usize| Bytes::from(format!("v{n}:{}", "x".repeat(2048)));
    let items = (0..KEYS).map(|i| (numbered(i), value(0))).collect();
    let mut model = Model::default();
    let write = |op: WriteOp, position: u64, model: &mut Model| {
        apply(&**fixture, &op, position);
        model_apply(model, &op);
        model.values.clone()
    };
    let mut states = vec![write(WriteOp::BulkSet { items }, 1, &mut model)];
    let view = fixture.view().unwrap();
    let mut backup = Backup::start(view, &fixture.tees).unwrap();
    let mut file = Vec::new();
    for n in 1.. {
        let chunk = backup.next_chunk(8 * 1024).unwrap();
        if chunk.is_empty() {
            break;
        }
        file.extend_from_slice(&chunk);
        // An early key and a late one, changed together.
        let items = vec![
            (numbered(n * 7 % KEYS), value(n)),
            (numbered(KEYS - 1 - n % KEYS), value(n)),
        ];
        states.push(write(WriteOp::BulkSet { items }, n as u64 + 1, &mut model));
    }
    backup.succeeded();
    assert!(states.len() > 3, "the copy took several chunks");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup");
    std::fs::write(&path, &file).unwrap();
    let store = Store::new(2);
    snapshot::load(&RealFs, &path, &store).unwrap().unwrap();
    let span = Span::prefix(b"", None, false);
    let loaded: BTreeMap<Bytes, Bytes> = store
        .pairs(&span, usize::MAX, usize::MAX)
        .0
        .into_iter()
        .collect();
    assert!(
        states.contains(&loaded),
        "the backup is no state the writes went through"
    );
}
