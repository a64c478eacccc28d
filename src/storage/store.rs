//! The in-memory map: ordered sets of entries cut into shards, each behind its
//! own lock.
//!
//! A key's shard is `crc32c(key) % shards` (crc32c is hardware-accelerated and
//! already needed for the log). Readers of different shards never meet; a
//! reader and the single writer (the group-commit thread) meet only on one
//! shard, for the length of one map operation. No lock is ever held across an
//! `.await` or any I/O.
//!
//! Each key and its value live together in one heap allocation (an
//! [`Entry`]); the B-tree holds only the 8-byte pointer to it, and a shard's
//! deadline index the entry's address, not a copy of its key (see
//! `super::entry`). That is one
//! allocation per key instead of two, and reads copy the value out under the
//! read lock (a 100-byte copy costs about what the reference-count increment of
//! a shared buffer did). See docs/performance.md for the memory figures.
//!
//! The store knows nothing of durability: the group-commit thread applies a
//! write here only after the log says it is durable (see `crate::commit`).

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::ops::Bound;

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use parking_lot::RwLock;

use super::clock::Clock;
use super::entry::Address;
use super::op::WriteOp;

pub use super::entry::{Entry, Revisions};

/// One shard: an ordered set of entries, so `Keys` can walk a prefix in order.
/// A `parking_lot` read-write lock: many readers share a shard, the one writer
/// takes it briefly; it never blocks an async task for long because nothing
/// inside it awaits or does I/O. (`cargo bench --bench store`, `lock/*`: two
/// readers on one map take 23 ms with the read-write lock, 43 ms with a mutex.)
type Shard = RwLock<Map>;

/// A shard's entries, and the deadlines of those that have one in deadline
/// order (the sweep takes the earliest; with no expiring key the set is
/// empty and a key costs no more than before expiry existed).
///
/// The index holds each entry's [`Address`], not a copy of its key: every
/// address in `deadlines` is that of an entry in `entries` with that
/// deadline. Only `Map`'s methods change either set, and they keep that
/// true, which is what makes reading a key through the index sound.
#[derive(Default)]
struct Map {
    entries: BTreeSet<Entry>,
    deadlines: BTreeSet<(u64, Address)>,
}

impl Map {
    fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn range<'a>(
        &'a self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> std::collections::btree_set::Range<'a, Entry> {
        self.entries.range::<[u8], _>(bounds)
    }

    /// Stores `entry`, and returns the one it replaced.
    fn put(&mut self, entry: Entry) -> Option<Entry> {
        let indexed = entry.deadline().map(|at| (at, entry.address()));
        let old = self.entries.replace(entry);
        if let Some(old) = &old {
            self.unindex(old);
        }
        if let Some(indexed) = indexed {
            self.deadlines.insert(indexed);
        }
        old
    }

    fn take(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.entries.take(key)?;
        self.unindex(&old);
        Some(old)
    }

    fn unindex(&mut self, entry: &Entry) {
        if let Some(at) = entry.deadline() {
            self.deadlines.remove(&(at, entry.address()));
        }
    }

    /// Moves `built`'s entries in (keys this map does not hold).
    fn append(&mut self, built: &mut BTreeSet<Entry>) {
        for entry in built.iter() {
            if let Some(at) = entry.deadline() {
                self.deadlines.insert((at, entry.address()));
            }
        }
        self.entries.append(built);
    }

    /// Entries whose deadline is at or before `now`, not removed yet.
    fn expired(&self, now: u64) -> usize {
        self.deadlines.range(..due_end(now)).count()
    }

    /// The keys of up to `max` entries whose deadline is at or before
    /// `now`, earliest first.
    fn due(&self, now: u64, max: usize) -> impl Iterator<Item = Bytes> + '_ {
        let due = self.deadlines.range(..due_end(now)).take(max);
        // SAFETY: every indexed address is an entry of `self.entries`
        // (see `Map`), which the borrow of `self` keeps alive.
        due.map(|(_, address)| Bytes::copy_from_slice(unsafe { address.key() }))
    }
}

/// Where the index's entries due at `now` end.
fn due_end(now: u64) -> (u64, Address) {
    (now.saturating_add(1), Address::LOWEST)
}

/// The whole data set.
pub struct Store {
    /// Fixed at start; a key's shard depends on the count, so it never changes
    /// while the process runs (it is not part of any file format).
    shards: Box<[Shard]>,
    /// Bytes of all keys and of all values, for `Stats`. Changed only by the
    /// one writer (the commit thread, or recovery), under the shard locks.
    key_bytes: AtomicU64,
    value_bytes: AtomicU64,
    /// Says when a deadline has passed: an expired entry is hidden from
    /// every read until the sweep removes it.
    clock: Clock,
}

/// A key as a copy holds it (a snapshot's or backup's entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: Bytes,
    pub value: Bytes,
    pub deadline: Option<u64>,
    pub revisions: Revisions,
}

/// What a write did, for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A Set, BulkSet or Clear did what it was told.
    Stored,
    /// A Delete ran; `true` if the key existed.
    Deleted(bool),
    /// A conditional write says whether it stored.
    Bool(bool),
    /// A value that the write replaced or removed (SetIf with `get`, GetDel).
    Value(Option<Bytes>),
    /// A number: Incr's result, Append's new length.
    Int(i64),
    /// The keys a DeleteMany or the sweep removed (the reply is their
    /// count; a change feed publishes each).
    Removed(Vec<Bytes>),
    /// A transaction ran the branch its compares chose (`succeeded`: the
    /// success branch), with what each of its operations did.
    Txn { succeeded: bool, each: Vec<Applied> },
    /// A key's value and revisions, read in a transaction (zero revisions
    /// for a missing key).
    Versioned {
        value: Option<Bytes>,
        revisions: Revisions,
    },
    /// One operation of a transaction was refused (and wrote nothing).
    Refused {
        code: kvstore_client::ErrorCode,
        message: String,
    },
}

/// Bytes a key costs in a reply beyond its own: its u64 length prefix.
const KEY_OVERHEAD: usize = 8;

/// How much a page may still take: at most `limit` entries, and no entry
/// that would take the encoded size past `max_bytes` unless the page is
/// still empty (a page holds at least one entry).
pub struct PageBudget {
    limit: usize,
    max_bytes: usize,
    taken: usize,
    bytes: usize,
}

impl PageBudget {
    pub fn new(limit: usize, max_bytes: usize) -> PageBudget {
        PageBudget {
            limit,
            max_bytes,
            taken: 0,
            bytes: 0,
        }
    }

    /// Whether the page takes an entry of this key and (with `value`) value
    /// length; `false` means the page is full and more entries are left.
    pub fn take(&mut self, key: usize, value: Option<usize>) -> bool {
        let encoded = key + KEY_OVERHEAD + value.map_or(0, |v| v + KEY_OVERHEAD);
        if self.taken == self.limit || (self.bytes > 0 && self.bytes + encoded > self.max_bytes) {
            return false;
        }
        self.bytes += encoded;
        self.taken += 1;
        true
    }
}

/// Which keys a page walk covers, and in which direction.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Span {
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    /// Descending instead of ascending.
    reverse: bool,
}

impl Span {
    /// The keys that start with `prefix`; ascending, after `start_after`, or
    /// with `reverse` descending, before it.
    pub fn prefix(prefix: &[u8], start_after: Option<&[u8]>, reverse: bool) -> Span {
        let mut span = Span {
            lower: Bound::Included(prefix.to_vec()),
            upper: prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
            reverse,
        };
        if let Some(after) = start_after {
            if !reverse && after >= prefix {
                span.lower = Bound::Excluded(after.to_vec());
            }
            if reverse && below(&span.upper, after) {
                span.upper = Bound::Excluded(after.to_vec());
            }
        }
        span
    }

    /// The keys in `[start, end)` (`end` `None`: no upper end); ascending, or
    /// with `reverse` descending from the end.
    pub fn range(start: &[u8], end: Option<&[u8]>, reverse: bool) -> Span {
        Span {
            lower: Bound::Included(start.to_vec()),
            upper: end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())),
            reverse,
        }
    }

    /// Whether no key can lie in the span (`BTreeSet::range` panics on such
    /// bounds, so a walk checks first).
    pub fn is_empty(&self) -> bool {
        match (&self.lower, &self.upper) {
            (Bound::Included(l), Bound::Included(u)) => l > u,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
                l >= u
            }
            _ => false,
        }
    }

    /// The rest of the span once the walk has passed `key`.
    pub fn after(&self, key: &[u8]) -> Span {
        let mut rest = self.clone();
        match self.reverse {
            false => rest.lower = Bound::Excluded(key.to_vec()),
            true => rest.upper = Bound::Excluded(key.to_vec()),
        }
        rest
    }

    /// Whether the walk goes down from the upper end.
    pub fn reverse(&self) -> bool {
        self.reverse
    }

    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (
            self.lower.as_ref().map(Vec::as_slice),
            self.upper.as_ref().map(Vec::as_slice),
        )
    }
}

/// Whether `key` is below `upper` (so that it tightens it).
fn below(upper: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    match upper {
        Bound::Excluded(u) | Bound::Included(u) => key < u.as_slice(),
        Bound::Unbounded => true,
    }
}

/// The smallest key above every key that starts with `prefix`, if any: the
/// prefix with its trailing 0xff bytes dropped and its last byte incremented
/// (none for an empty or all-0xff prefix).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let keep = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=keep].to_vec();
    end[keep] += 1;
    Some(end)
}

/// A shard's next entry in a page walk; the heap pops the one to take next.
struct Head<'a> {
    entry: &'a Entry,
    shard: usize,
    reverse: bool,
}

impl<'a> Head<'a> {
    fn new(entry: &'a Entry, shard: usize, reverse: bool) -> Head<'a> {
        Head {
            entry,
            shard,
            reverse,
        }
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head<'_> {}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head<'_> {
    /// `BinaryHeap` pops the greatest: ascending walks pop the smallest key,
    /// descending ones the largest. (Keys are distinct across shards.)
    fn cmp(&self, other: &Self) -> Ordering {
        let by_key = self.entry.key().cmp(other.entry.key());
        if self.reverse {
            by_key
        } else {
            by_key.reverse()
        }
    }
}

/// One page of keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<Bytes>,
    pub more: bool,
}

impl Store {
    /// An empty store with `shards` shards (at least one).
    pub fn new(shards: usize) -> Store {
        Store::with_clock(shards, Clock::System)
    }

    /// An empty store whose deadlines pass by `clock`.
    pub fn with_clock(shards: usize, clock: Clock) -> Store {
        Store {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            key_bytes: AtomicU64::new(0),
            value_bytes: AtomicU64::new(0),
            clock,
        }
    }

    /// Whether `entry` is there for readers: it has no deadline, or its
    /// deadline has not passed (the clock is read only for the former).
    fn live(&self, entry: &Entry) -> bool {
        entry.deadline().is_none_or(|at| at > self.clock.now_ms())
    }

    /// The live entry of `key` in `map`.
    fn found<'m>(&self, map: &'m Map, key: &[u8]) -> Option<&'m Entry> {
        map.get(key).filter(|e| self.live(e))
    }

    pub fn shard_index(&self, key: &[u8]) -> usize {
        crc32c::crc32c(key) as usize % self.shards.len()
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        &self.shards[self.shard_index(key)]
    }

    /// The value of `key`, copied out under the shard's read lock.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let map = self.shard(key).read();
        let found = self.found(&map, key);
        found.map(|e| Bytes::copy_from_slice(e.value()))
    }

    /// The value of `key` and its revisions, read together.
    pub fn get_revised(&self, key: &[u8]) -> Option<(Bytes, Revisions)> {
        let map = self.shard(key).read();
        let found = self.found(&map, key);
        found.map(|e| (Bytes::copy_from_slice(e.value()), e.revisions()))
    }

    /// The deadline of `key` (`Some(None)`: it has none; `None`: no key).
    pub fn deadline(&self, key: &[u8]) -> Option<Option<u64>> {
        let map = self.shard(key).read();
        self.found(&map, key).map(Entry::deadline)
    }

    /// The values of `keys`, read at one instant: the read locks of all
    /// their shards are held together (taken in shard order, as writers take
    /// them, so the two cannot deadlock).
    pub fn get_many(&self, keys: &[Bytes]) -> Vec<Option<Bytes>> {
        let (slots, shards) = self.lock_plan(keys.iter());
        let guards: Vec<_> = shards.iter().map(|&i| self.shards[i].read()).collect();
        keys.iter()
            .zip(slots)
            .map(|(key, slot)| {
                let found = self.found(&guards[slot], key);
                found.map(|e| Bytes::copy_from_slice(e.value()))
            })
            .collect()
    }

    /// How to lock the shards of several keys: the distinct shards in
    /// ascending order (the one order every multi-shard lock follows), and
    /// for each key the position of its shard in that list.
    fn lock_plan<'k>(&self, keys: impl Iterator<Item = &'k Bytes>) -> (Vec<usize>, Vec<usize>) {
        let of_key: Vec<usize> = keys.map(|k| self.shard_index(k)).collect();
        let mut shards = of_key.clone();
        shards.sort_unstable();
        shards.dedup();
        let slots = of_key
            .iter()
            .map(|s| shards.binary_search(s).unwrap_or_default())
            .collect();
        (slots, shards)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.found(&self.shard(key).read(), key).is_some()
    }

    /// Number of live keys (each shard counted under its own lock, so the
    /// total is not one instant's count while writes run). Expired keys not
    /// swept yet are counted off through the deadline index.
    pub fn len(&self) -> usize {
        let now = self.clock.now_ms();
        let live = |map: &Map| map.entries.len() - map.expired(now);
        self.shards.iter().map(|s| live(&s.read())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many live keys have a deadline.
    pub fn expiring(&self) -> usize {
        let now = self.clock.now_ms();
        let live = |map: &Map| map.deadlines.len() - map.expired(now);
        self.shards.iter().map(|s| live(&s.read())).sum()
    }

    /// Bytes of all keys and of all values stored.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.key_bytes.load(AtomicOrdering::Relaxed),
            self.value_bytes.load(AtomicOrdering::Relaxed),
        )
    }

    /// Keeps the byte counts right as `entry` comes in or goes out.
    fn count(&self, entry: &Entry, coming_in: bool) {
        let (k, v) = (entry.key().len() as u64, entry.value().len() as u64);
        if coming_in {
            self.key_bytes.fetch_add(k, AtomicOrdering::Relaxed);
            self.value_bytes.fetch_add(v, AtomicOrdering::Relaxed);
        } else {
            self.key_bytes.fetch_sub(k, AtomicOrdering::Relaxed);
            self.value_bytes.fetch_sub(v, AtomicOrdering::Relaxed);
        }
    }

    /// Stores `key` with `value` and `deadline` in `map`, written at
    /// `revision`, replacing (and uncounting) the old entry.
    fn put(
        &self,
        map: &mut Map,
        (key, value): (&[u8], &[u8]),
        deadline: Option<u64>,
        revision: u64,
    ) {
        let revisions = Revisions::written(map.get(key), revision);
        self.put_entry(map, Entry::new(key, value, deadline, revisions));
    }

    /// Stores `entry` in `map`, replacing (and uncounting) the old one.
    fn put_entry(&self, map: &mut Map, entry: Entry) {
        self.count(&entry, true);
        if let Some(old) = map.put(entry) {
            self.count(&old, false);
        }
    }

    /// Removes `key` from `map`; whether it was there for readers (an
    /// expired entry goes, but did not count as a key).
    fn take(&self, map: &mut Map, key: &[u8]) -> bool {
        match map.take(key) {
            Some(old) => {
                self.count(&old, false);
                self.live(&old)
            }
            None => false,
        }
    }

    /// Gives `key`'s entry in `map` the deadline `at` (`None`: no
    /// deadline) at `revision`; whether there was one to change. The
    /// entry's own deadline is not looked at: the commit thread decided
    /// the write on what readers see, and replay must not depend on the
    /// clock.
    fn set_deadline(&self, map: &mut Map, key: &[u8], at: Option<u64>, revision: u64) -> bool {
        let Some(old) = map.get(key) else {
            return false;
        };
        let revisions = Revisions::written(Some(old), revision);
        let entry = Entry::new(key, old.value(), at, revisions);
        self.put_entry(map, entry);
        true
    }

    /// Applies one write, made at `revision` (its log position). A
    /// BulkSet, DeleteMany or Clear takes the write locks of all its
    /// shards, in shard order, before it changes anything, so no reader
    /// sees half of it.
    pub fn apply_at(&self, op: &WriteOp, revision: u64) -> Applied {
        let at = revision;
        match op {
            WriteOp::Set { key, value } => {
                self.put(&mut self.shard(key).write(), (key, value), None, at);
                Applied::Stored
            }
            WriteOp::Delete { key } => {
                Applied::Deleted(self.take(&mut self.shard(key).write(), key))
            }
            WriteOp::BulkSet { items } => {
                self.with_shards_of(items.iter().map(|(k, _)| k), |i, map| {
                    let (key, value) = &items[i];
                    self.put(map, (key, value), None, at);
                });
                Applied::Stored
            }
            WriteOp::DeleteMany { keys } => {
                // Visited shard by shard; answered in the op's order.
                let mut removed = Vec::new();
                self.with_shards_of(keys.iter(), |i, map| {
                    if self.take(map, &keys[i]) {
                        removed.push(i);
                    }
                });
                removed.sort_unstable();
                Applied::Removed(removed.into_iter().map(|i| keys[i].clone()).collect())
            }
            WriteOp::Clear => {
                self.swap_all((0..self.shards.len()).map(|_| Map::default()), (0, 0));
                Applied::Stored
            }
            WriteOp::SetExpiring {
                key,
                value,
                at: deadline,
            } => {
                let map = &mut self.shard(key).write();
                self.put(map, (key, value), Some(*deadline), at);
                Applied::Stored
            }
            WriteOp::SetExpiringMany { items } => {
                self.with_shards_of(items.iter().map(|(k, ..)| k), |i, map| {
                    let (key, value, deadline) = &items[i];
                    self.put(map, (key, value), Some(*deadline), at);
                });
                Applied::Stored
            }
            WriteOp::ExpireAt { key, at: deadline } => {
                let map = &mut self.shard(key).write();
                Applied::Bool(self.set_deadline(map, key, Some(*deadline), at))
            }
            WriteOp::Persist { key } => {
                Applied::Bool(self.set_deadline(&mut self.shard(key).write(), key, None, at))
            }
            WriteOp::Rename {
                from,
                to,
                value,
                at: deadline,
            } => {
                let keys = [from.clone(), to.clone()];
                self.with_shards_of(keys.iter(), |i, map| match i {
                    0 => drop(self.take(map, from)),
                    _ => self.put(map, (to, value), *deadline, at),
                });
                Applied::Stored
            }
            WriteOp::Txn { puts, deletes } => {
                let keys = (puts.iter().map(|(key, ..)| key)).chain(deletes);
                self.with_shards_of(keys, |i, map| match puts.get(i) {
                    Some((key, value, deadline)) => self.put(map, (key, value), *deadline, at),
                    None => drop(self.take(map, &deletes[i - puts.len()])),
                });
                Applied::Stored
            }
            // Key by key, each under its own shard's lock: readers saw
            // these keys gone already, so nothing needs them to go at one
            // instant, and a 1,000-key batch never blocks a shard for long.
            WriteOp::Expire { keys, now } => {
                let mut removed = Vec::new();
                for key in keys {
                    let mut map = self.shard(key).write();
                    if !map.get(key).is_some_and(|e| e.expired(*now)) {
                        continue;
                    }
                    if let Some(old) = map.take(key) {
                        self.count(&old, false);
                        removed.push(key.clone());
                    }
                }
                Applied::Removed(removed)
            }
        }
    }

    /// Puts each of `stored` in as a copy holds it, revisions and all.
    pub fn insert(&self, stored: &[Stored]) {
        self.with_shards_of(stored.iter().map(|s| &s.key), |i, map| {
            let Stored {
                key,
                value,
                deadline,
                revisions,
            } = &stored[i];
            self.put_entry(map, Entry::new(key, value, *deadline, *revisions));
        });
    }

    /// [`Store::apply_at`] at revision 0, for tests that do not look at
    /// revisions.
    #[cfg(test)]
    pub(crate) fn apply(&self, op: &WriteOp) -> Applied {
        self.apply_at(op, 0)
    }

    /// Up to `max` keys whose deadline is at or before `now`, earliest
    /// first within each shard: what the sweep removes next.
    pub fn due(&self, now: u64, max: usize) -> Vec<Bytes> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.read();
            let left = max - due.len();
            due.extend(map.due(now, left));
            if due.len() == max {
                break;
            }
        }
        due
    }

    /// Replaces the whole content with `other`'s (built with the same shard
    /// count), all shards at once: every write lock is taken, in shard
    /// order, before any shard changes, so a reader sees each key either as
    /// it was or as it is in `other`, never missing in between (a snapshot
    /// install on a node that serves follower reads).
    pub fn replace_with(&self, other: Store) {
        assert_eq!(self.shards.len(), other.shards.len(), "shard counts differ");
        let bytes = other.bytes();
        let maps = other.shards.into_vec().into_iter().map(RwLock::into_inner);
        self.swap_all(maps, bytes);
    }

    /// Puts `maps` (one per shard, in order) in place of the shards' maps,
    /// with every write lock held for the whole swap, and sets the byte
    /// counts (keys, values).
    fn swap_all(&self, maps: impl Iterator<Item = Map>, (keys, values): (u64, u64)) {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        // Dropped after the locks, so readers wait only for the swap.
        let old: Vec<Map> = (guards.iter_mut())
            .zip(maps)
            .map(|(guard, new)| std::mem::replace(&mut **guard, new))
            .collect();
        self.key_bytes.store(keys, AtomicOrdering::Relaxed);
        self.value_bytes.store(values, AtomicOrdering::Relaxed);
        drop(guards);
        drop(old);
    }

    /// Write-locks the shards of all `keys` at once, in shard order (so two
    /// multi-key writes, or a multi-key write and a `Keys` page, cannot
    /// deadlock), then calls `change(i, shard)` for the `i`-th key, in order.
    fn with_shards_of<'k>(
        &self,
        keys: impl Iterator<Item = &'k Bytes>,
        mut change: impl FnMut(usize, &mut Map),
    ) {
        let (slots, shards) = self.lock_plan(keys);
        let mut guards: Vec<_> = shards.iter().map(|&i| self.shards[i].write()).collect();
        for (i, slot) in slots.into_iter().enumerate() {
            change(i, &mut guards[slot]);
        }
    }

    /// A loader that sorts entries by shard; several can fill in parallel,
    /// then [`Store::finish_load`] builds the shards from them.
    pub fn loader(&self) -> Loader<'_> {
        Loader {
            store: self,
            by_shard: (0..self.shards.len()).map(|_| Vec::new()).collect(),
            key_bytes: 0,
            value_bytes: 0,
        }
    }

    /// Adds what `loaders` gathered to the shards, building each shard's tree
    /// from sorted entries at once (far cheaper than inserting one by one),
    /// on up to `threads` threads. A key gathered twice keeps one of its
    /// values; callers load sets of distinct keys (a snapshot) into an empty
    /// store.
    pub fn finish_load(&self, loaders: Vec<Loader<'_>>, threads: usize) {
        let mut per_shard: Vec<Vec<Vec<Entry>>> =
            (0..self.shards.len()).map(|_| Vec::new()).collect();
        for loader in loaders {
            self.key_bytes
                .fetch_add(loader.key_bytes, AtomicOrdering::Relaxed);
            self.value_bytes
                .fetch_add(loader.value_bytes, AtomicOrdering::Relaxed);
            for (shard, entries) in loader.by_shard.into_iter().enumerate() {
                per_shard[shard].push(entries);
            }
        }
        let threads = threads.clamp(1, self.shards.len());
        let mut work: Vec<Vec<(usize, Vec<Vec<Entry>>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (shard, parts) in per_shard.into_iter().enumerate() {
            work[shard % threads].push((shard, parts));
        }
        std::thread::scope(|scope| {
            for share in work {
                scope.spawn(move || {
                    for (shard, parts) in share {
                        // Each part is in key order already (a snapshot lists
                        // a shard's keys in order), so the sort inside
                        // `from_iter` only merges runs.
                        let mut built: BTreeSet<Entry> = parts.into_iter().flatten().collect();
                        self.shards[shard].write().append(&mut built);
                    }
                });
            }
        });
    }

    /// Up to `limit` keys that start with `prefix` and sort after `start_after`,
    /// ascending, stopping early before their encoded size (each key plus its
    /// 8-byte length prefix) passes `max_bytes`.
    pub fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> KeysPage {
        let span = Span::prefix(prefix, start_after, false);
        let mut keys = Vec::new();
        let more = self.walk(&span, limit, max_bytes, false, |e| {
            keys.push(Bytes::copy_from_slice(e.key()))
        });
        KeysPage { keys, more }
    }

    /// Up to `limit` pairs whose keys lie in `span`, in its order, stopping
    /// early before their encoded size (key, value and their two 8-byte length
    /// prefixes) passes `max_bytes`; a page holds at least one pair. Returns
    /// the pairs and whether more may follow.
    pub fn pairs(
        &self,
        span: &Span,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<(Bytes, Bytes)>, bool) {
        let mut pairs = Vec::new();
        let more = self.walk(span, limit, max_bytes, true, |e| {
            pairs.push((
                Bytes::copy_from_slice(e.key()),
                Bytes::copy_from_slice(e.value()),
            ))
        });
        (pairs, more)
    }

    /// Shows `take` the entries in `span`, in its order, until `limit` or
    /// `max_bytes` (as [`Store::pairs`] counts them, values only if
    /// `with_values`) would be passed; returns whether entries were left.
    ///
    /// The read locks of all shards are held together (taken in shard order,
    /// like a BulkSet's write locks, so the two cannot deadlock) while the
    /// shards' ranges are merged, so a page is one instant's view of the store
    /// and costs O(limit · log shards), not O(limit · shards).
    fn walk(
        &self,
        span: &Span,
        limit: usize,
        max_bytes: usize,
        with_values: bool,
        mut take: impl FnMut(&Entry),
    ) -> bool {
        if span.is_empty() {
            return false;
        }
        let guards: Vec<_> = self.shards.iter().map(|s| s.read()).collect();
        let mut ranges: Vec<Box<dyn Iterator<Item = &Entry>>> = guards
            .iter()
            .map(|map| {
                let range = map.range(span.bounds()).filter(|e| self.live(e));
                if span.reverse {
                    Box::new(range.rev()) as Box<dyn Iterator<Item = &Entry>>
                } else {
                    Box::new(range)
                }
            })
            .collect();
        // The next entry of each shard, the one to take first on top.
        let mut heads: BinaryHeap<Head<'_>> = ranges
            .iter_mut()
            .enumerate()
            .filter_map(|(shard, r)| r.next().map(|entry| Head::new(entry, shard, span.reverse)))
            .collect();
        let mut budget = PageBudget::new(limit, max_bytes);
        while let Some(head) = heads.pop() {
            let value = with_values.then(|| head.entry.value().len());
            if !budget.take(head.entry.key().len(), value) {
                return true;
            }
            take(head.entry);
            if let Some(next) = ranges[head.shard].next() {
                heads.push(Head::new(next, head.shard, span.reverse));
            }
        }
        false
    }

    /// Shows `visit` up to `n` entries of shard `shard` after `after`, in key
    /// order (expired ones too: a copy keeps them, with their deadline),
    /// under the shard's read lock, and returns the last key shown
    /// (`None` once the shard has no more): the snapshot writer copies the
    /// store in such short steps so that it never holds a lock for long.
    pub fn visit(
        &self,
        shard: usize,
        after: Option<&[u8]>,
        n: usize,
        mut visit: impl FnMut(&Entry),
    ) -> Option<Vec<u8>> {
        let map = self.shards[shard].read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for entry in map.range((lower, Bound::Unbounded)).take(n) {
            visit(entry);
            last = Some(entry);
        }
        last.map(|e| e.key().to_vec())
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

/// Entries gathered for [`Store::finish_load`], by shard.
pub struct Loader<'s> {
    /// For the shard of each key.
    store: &'s Store,
    /// In arrival order, one list per shard.
    by_shard: Vec<Vec<Entry>>,
    /// Bytes of the keys and values pushed, counted here (on the decoding
    /// threads) so that the load needs no second pass over the entries.
    key_bytes: u64,
    value_bytes: u64,
}

impl Loader<'_> {
    /// Adds a key, with the deadline it has if any.
    pub fn push(
        &mut self,
        (key, value): (&[u8], &[u8]),
        deadline: Option<u64>,
        revisions: Revisions,
    ) {
        self.key_bytes += key.len() as u64;
        self.value_bytes += value.len() as u64;
        let shard = self.store.shard_index(key);
        self.by_shard[shard].push(Entry::new(key, value, deadline, revisions));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(pairs: &[(&str, &str)]) -> Store {
        let store = Store::new(4);
        for (key, value) in pairs {
            store.apply(&WriteOp::Set {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
            });
        }
        store
    }

    /// A write sets the modified revision; the created one stays while the
    /// key lives and starts again after a delete.
    #[test]
    fn writes_move_the_modified_revision_and_creation_keeps_its_own() {
        let store = Store::with_clock(2, Clock::manual(0));
        let revisions = |key: &str| store.get_revised(key.as_bytes()).map(|(_, r)| r);
        let at = |modified, created| Some(Revisions { modified, created });
        store.apply_at(&WriteOp::set("k", "1"), 3);
        assert_eq!(revisions("k"), at(3, 3));
        store.apply_at(&WriteOp::set("k", "2"), 5);
        assert_eq!(revisions("k"), at(5, 3));
        store.apply_at(
            &WriteOp::ExpireAt {
                key: b("k"),
                at: 99,
            },
            6,
        );
        assert_eq!(revisions("k"), at(6, 3));
        store.apply_at(&WriteOp::Persist { key: b("k") }, 7);
        assert_eq!(revisions("k"), at(7, 3));
        let rename = WriteOp::Rename {
            from: b("k"),
            to: b("j"),
            value: b("2"),
            at: None,
        };
        store.apply_at(&rename, 8);
        assert_eq!((revisions("k"), revisions("j")), (None, at(8, 8)));
        store.apply_at(&WriteOp::Delete { key: b("j") }, 9);
        store.apply_at(&WriteOp::set("j", "3"), 10);
        assert_eq!(revisions("j"), at(10, 10));
        let items = vec![(b("j"), b("4")), (b("i"), b("1"))];
        store.apply_at(&WriteOp::BulkSet { items }, 11);
        assert_eq!((revisions("j"), revisions("i")), (at(11, 10), at(11, 11)));
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A key whose deadline has passed is gone for every read at once,
    /// before anything removes it; `Expire` removes only what is due.
    #[test]
    fn an_expired_key_is_hidden_from_every_read_until_swept() {
        let clock = Clock::manual(1_000);
        let store = Store::with_clock(4, clock.clone());
        store.apply(&WriteOp::set("plain", "p"));
        for (key, at) in [("soon", 1_500), ("later", 3_000)] {
            let (key, value) = (b(key), b("v"));
            store.apply(&WriteOp::SetExpiring { key, value, at });
        }
        assert_eq!(store.get(b"soon").as_deref(), Some(&b"v"[..]));
        assert_eq!(store.deadline(b"soon"), Some(Some(1_500)));
        assert_eq!(store.deadline(b"plain"), Some(None));
        assert_eq!(store.len(), 3);

        clock.set(1_500);
        assert_eq!(store.get(b"soon"), None);
        assert!(!store.contains(b"soon"));
        assert_eq!(store.deadline(b"soon"), None);
        assert_eq!(store.get_many(&[b("soon"), b("later")])[0], None);
        assert_eq!(store.len(), 2);
        let all = Span::prefix(b"", None, false);
        let keys = |store: &Store| store.pairs(&all, 10, usize::MAX).0;
        let names: Vec<_> = keys(&store).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, [b("later"), b("plain")]);
        assert_eq!(store.keys(b"", None, 10, usize::MAX).keys, names);
        // Hidden, but still held: the sweep finds it, and only it.
        assert_eq!(store.due(1_500, 10), [b("soon")]);
        assert_eq!(store.bytes(), (4 + 5 + 5, 3));

        // Set again in between, a key is not the sweep's any more.
        store.apply(&WriteOp::set("later", "kept"));
        let due = [b("soon"), b("later"), b("plain")].to_vec();
        let removed = store.apply(&WriteOp::Expire {
            keys: due,
            now: 5_000,
        });
        assert_eq!(removed, Applied::Removed(vec![b("soon")]));
        assert_eq!(store.due(u64::MAX, 10), Vec::<Bytes>::new());
        assert_eq!(store.bytes(), (5 + 5, 1 + 4));
        assert_eq!(store.get(b"later").as_deref(), Some(&b"kept"[..]));
    }

    /// `ExpireAt` and `Persist` change a stored key's deadline and keep its
    /// value, whatever the clock says: the commit thread decided them on
    /// what readers saw, and a replay long after must do the same.
    #[test]
    fn deadlines_are_given_and_taken_away() {
        let clock = Clock::manual(0);
        let store = Store::with_clock(2, clock.clone());
        store.apply(&WriteOp::set("k", "v"));
        let expire = |key: &str, at| WriteOp::ExpireAt { key: b(key), at };
        let persist = |key: &str| WriteOp::Persist { key: b(key) };
        assert_eq!(store.apply(&expire("k", 100)), Applied::Bool(true));
        assert_eq!(store.apply(&expire("missing", 100)), Applied::Bool(false));
        assert_eq!(store.deadline(b"k"), Some(Some(100)));
        assert_eq!(store.apply(&expire("k", 50)), Applied::Bool(true));
        assert_eq!(store.due(60, 10), [b("k")]);
        assert_eq!(store.apply(&persist("k")), Applied::Bool(true));
        assert_eq!(store.apply(&persist("missing")), Applied::Bool(false));
        assert_eq!(store.due(u64::MAX, 10), Vec::<Bytes>::new());
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));

        store.apply(&expire("k", 10));
        clock.set(20);
        assert_eq!(store.get(b"k"), None);
        assert_eq!(store.apply(&persist("k")), Applied::Bool(true));
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));
        store.apply(&expire("k", 10));
        // A delete of a hidden key removes it but says it was not there.
        let deleted = store.apply(&WriteOp::Delete { key: b("k") });
        assert_eq!(deleted, Applied::Deleted(false));
        assert_eq!((store.due(u64::MAX, 10).len(), store.bytes()), (0, (0, 0)));
    }

    #[test]
    fn replace_with_swaps_every_key_and_the_byte_counts() {
        let store = store_of(&[("a", "1"), ("b", "2")]);
        store.replace_with(store_of(&[("b", "22"), ("c", "333")]));
        assert_eq!(store.get(b"a"), None);
        assert_eq!(store.get(b"b").as_deref(), Some(&b"22"[..]));
        assert_eq!(store.get(b"c").as_deref(), Some(&b"333"[..]));
        assert_eq!(store.len(), 2);
        assert_eq!(store.bytes(), (2, 5));
    }

    #[test]
    fn a_key_in_both_stores_is_never_missing_while_they_are_swapped() {
        let store = std::sync::Arc::new(store_of(&[("k", "old")]));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done, started) = (store.clone(), done.clone(), started.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(store.get(b"k").is_some(), "k was missing mid-swap");
                    started.store(true, std::sync::atomic::Ordering::Relaxed);
                    reads += 1;
                }
                reads
            })
        };
        // Not before the reader runs: on a busy machine it was once first
        // scheduled after every swap.
        while !started.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::yield_now();
        }
        for i in 0..2000 {
            store.replace_with(store_of(&[("k", if i % 2 == 0 { "new" } else { "old" })]));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
