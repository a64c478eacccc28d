//! The disk engine: the applied state in fjall, a log-structured merge tree
//! on disk, so the data may be larger than memory.
//!
//! kvstore's own log stays the durability point: a write is acknowledged
//! after the `fdatasync` of its log record, and its batch goes into fjall
//! afterwards without a sync of fjall's journal. Each batch is one atomic
//! fjall batch holding the data, the batch's log position and the key and
//! byte counts, so they never disagree.
//!
//! A checkpoint ([`Engine::checkpoint`]) makes fjall durable (`persist`)
//! and only then records, durably, the log segment and sequence number a
//! restart replays from ([`Disk::replay_from`]); the log before them may
//! then be dropped. A restart replays kvstore's log from there, not from the
//! last position fjall kept: fjall's journal after a crash may have
//! lost a batch in the middle silently (fjall issue #311), and replaying
//! every batch since the last durable checkpoint puts back whatever it lost
//! (each write is idempotent).
//!
//! fjall refuses an empty key, which kvstore allows, so every key is stored
//! behind one tag byte ([`TAG`]); with it a key may have at most
//! [`MAX_KEY`] bytes (fjall's limit is 65,535).
//!
//! A key's deadline (docs/design/expiry.md) lives in the same keyspace
//! behind two other tags, written in the same batch as the value: the
//! deadline by key ([`DEADLINE`]), read only while the engine holds any
//! (`Counts::timed`), so data without expiry reads as before; and the key
//! by deadline ([`DUE`]), which the sweep walks in deadline order. Keeping
//! them in the data keyspace lets an install's new generation carry them.
//!
//! A key's revisions (docs/transactions.md) are one more item behind a
//! fourth tag ([`REVISIONS`]), written in the same batch as the value; a
//! key stored before revisions were kept has none and reads as revision 0.
//!
//! fjall gives every item of a batch one sequence number, so a batch may
//! name a key only once: [`Disk::apply`] folds the batch's writes into one
//! final state per key first. `Clear` removes every key in the same batch
//! (fjall has no range delete, and its `clear` would not be atomic with the
//! rest of the batch).
//!
//! In cluster mode the Raft state machine keeps its applied log id and
//! membership with each batch ([`Engine::apply_noted`]): Raft entries are
//! not idempotent, so after a restart the state machine must know exactly
//! which entries the data holds. A Raft snapshot's install
//! ([`Engine::replace`]) loads into a new data keyspace (a new
//! generation), then one batch makes it the current one, and the old one is
//! dropped: a crash at any point leaves the old state or the new.
//!
//! ```text
//! <data>-fjall/            the fjall database (cluster mode: <data>.raft/fjall/)
//!   keyspace "data"        TAG key → value (generation N > 0: "data-N")
//!                          DEADLINE key → deadline (u64 big-endian)
//!                          DUE deadline key → empty
//!                          REVISIONS key → modified, created (u64s big-endian)
//!   keyspace "meta"        "applied", "checkpoint", "replay_segment",
//!                          "replay_seq", "keys", "key_bytes",
//!                          "value_bytes", "timed", "generation" → u64
//!                          big-endian;
//!                          "note" → the Raft state machine's note
//!   keyspace "staging-N"   generation N's counts while it is loaded
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use parking_lot::{Mutex, RwLock};

use super::{
    Applied, Checkpoint, Engine, KeysPage, Noter, PairsPage, Revised, Revisions, Span, Stored,
};
use crate::backup::View;
use crate::error::Error;
use crate::storage::clock::Clock;
use crate::storage::fs::Fs;
use crate::storage::op::WriteOp;
use crate::storage::snapshot::{load_into, Encoder, CHUNK_PAIRS};
use crate::storage::store::PageBudget;

/// The byte before every stored key (see the module's doc).
const TAG: u8 = 0;
/// The byte before a key whose value is its deadline.
const DEADLINE: u8 = 1;
/// The byte before a deadline and key, in the sweep's order.
const DUE: u8 = 2;
/// The byte before a key whose value is its revisions.
const REVISIONS: u8 = 3;
/// The longest key the engine stores.
pub const MAX_KEY: usize = u16::MAX as usize - 1;

const APPLIED: &str = "applied";
const CHECKPOINT: &str = "checkpoint";
const REPLAY_SEGMENT: &str = "replay_segment";
const REPLAY_SEQ: &str = "replay_seq";
const KEYS: &str = "keys";
const KEY_BYTES: &str = "key_bytes";
const VALUE_BYTES: &str = "value_bytes";
const TIMED: &str = "timed";
const GENERATION: &str = "generation";
const NOTE: &str = "note";

/// The data keyspace of `generation`.
fn data_name(generation: u64) -> String {
    match generation {
        0 => "data".into(),
        n => format!("data-{n}"),
    }
}

/// Keys and bytes stored, kept exact by every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    keys: u64,
    key_bytes: u64,
    value_bytes: u64,
    /// Keys with a deadline, expired or not.
    timed: u64,
}

impl Counts {
    /// Accounts for `key` going from a value of `old` bytes to `new` bytes
    /// (`None`: absent).
    fn change(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if let Some(old) = old {
            self.keys -= 1;
            self.key_bytes -= key.len() as u64;
            self.value_bytes -= old;
        }
        if let Some(new) = new {
            self.keys += 1;
            self.key_bytes += key.len() as u64;
            self.value_bytes += new;
        }
    }
}

pub struct Disk {
    path: PathBuf,
    db: Database,
    /// The current generation's data: replaced, under the write lock, when
    /// a Raft snapshot is installed.
    data: RwLock<Keyspace>,
    meta: Keyspace,
    generation: AtomicU64,
    /// Taken by `apply` (one writer at a time; the counts follow the data).
    counts: Mutex<Counts>,
    /// The last position applied (also in "meta", in the same batch).
    applied: AtomicU64,
    /// The position of the last durable checkpoint.
    checkpoint: AtomicU64,
    /// `Counts::timed` as of the last batch, for readers (who do not take
    /// `counts`): while it is 0 no read looks for a deadline.
    timed: AtomicU64,
    /// Says when a deadline has passed.
    clock: Clock,
    /// The log segment and sequence number a restart replays from.
    replay_from: Mutex<(u64, u64)>,
}

/// A fjall error, naming the database.
fn failed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::StorageFailed(format!("disk engine at {}: {e}", path.display()))
}

impl Disk {
    /// Opens (or creates) the engine's database at `path`, with a block
    /// cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Disk, Error> {
        let fail = |e: fjall::Error| failed(path, e);
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            .manual_journal_persist(true)
            .open()
            .map_err(fail)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(fail)?;
        let generation = read_u64(path, &meta, GENERATION)?;
        let disk = Disk::with(path, db, &data_name(generation), meta)?;
        disk.drop_keyspaces_but_current()?;
        // fjall made the database's directory, but does not sync the one
        // that names it.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io(parent, e))?;
        Ok(disk)
    }

    /// The engine over the keyspaces `data` and `meta` of `db`.
    fn with(path: &Path, db: Database, data: &str, meta: Keyspace) -> Result<Disk, Error> {
        let fail = |e: fjall::Error| failed(path, e);
        let data = db
            .keyspace(data, KeyspaceCreateOptions::default)
            .map_err(fail)?;
        let read = |name: &str| read_u64(path, &meta, name);
        let counts = Counts {
            keys: read(KEYS)?,
            key_bytes: read(KEY_BYTES)?,
            value_bytes: read(VALUE_BYTES)?,
            timed: read(TIMED)?,
        };
        let replay_from = (read(REPLAY_SEGMENT)?.max(1), read(REPLAY_SEQ)?.max(1));
        Ok(Disk {
            applied: AtomicU64::new(read(APPLIED)?),
            checkpoint: AtomicU64::new(read(CHECKPOINT)?),
            generation: AtomicU64::new(read(GENERATION)?),
            replay_from: Mutex::new(replay_from),
            timed: AtomicU64::new(counts.timed),
            clock: Clock::System,
            counts: Mutex::new(counts),
            path: path.to_path_buf(),
            db,
            data: RwLock::new(data),
            meta,
        })
    }

    /// The engine with deadlines passing by `clock` (tests set one).
    pub fn with_clock(mut self, clock: Clock) -> Disk {
        self.clock = clock;
        self
    }

    /// Drops the keyspaces of an install that a crash or an error cut short
    /// (and the generation an install replaced).
    fn drop_keyspaces_but_current(&self) -> Result<(), Error> {
        let current = data_name(self.generation.load(Ordering::Acquire));
        for name in self.db.list_keyspace_names() {
            if *name != *"meta" && *name != *current.as_str() {
                self.drop_keyspace(&name)?;
            }
        }
        Ok(())
    }

    fn drop_keyspace(&self, name: &str) -> Result<(), Error> {
        let fail = |e: fjall::Error| failed(&self.path, e);
        let keyspace = (self.db)
            .keyspace(name, KeyspaceCreateOptions::default)
            .map_err(fail)?;
        self.db.delete_keyspace(keyspace).map_err(fail)
    }

    /// The position the last durable checkpoint covers (0: none).
    pub fn checkpointed(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// The log segment and the sequence number of its first record that a
    /// restart replays from: every record before them is in fjall durably.
    /// (1, 1) before the first checkpoint.
    pub fn replay_from(&self) -> (u64, u64) {
        *self.replay_from.lock()
    }

    /// The current generation's data keyspace.
    fn data(&self) -> Keyspace {
        self.data.read().clone()
    }

    /// The value length of `key` as the batch so far leaves it.
    fn len_in(&self, folded: &Folded, key: &[u8]) -> Result<Option<u64>, Error> {
        match folded.keys.get(key) {
            Some(value) => Ok(value.as_ref().map(|v| v.len() as u64)),
            None if folded.cleared => Ok(None),
            None => (self.data.read().size_of(stored(key)))
                .map(|n| n.map(u64::from))
                .map_err(|e| failed(&self.path, e)),
        }
    }

    /// The deadline of `key` as the batch so far leaves it.
    fn deadline_in(&self, folded: &Folded, key: &[u8]) -> Result<Option<u64>, Error> {
        match folded.deadlines.get(key) {
            Some(deadline) => Ok(deadline.after),
            None if folded.cleared || folded.counts.timed == 0 => Ok(None),
            None => {
                let found = self.data.read().get(deadline_key(key));
                let found = found.map_err(|e| failed(&self.path, e))?;
                found.map(|at| be_u64(&self.path, &at)).transpose()
            }
        }
    }

    /// The revisions of `key` as the batch so far leaves it (`None`: it has
    /// no value, or none kept).
    fn revisions_in(&self, folded: &Folded, key: &[u8]) -> Result<Option<Revisions>, Error> {
        match folded.revisions.get(key) {
            Some(revisions) => Ok(*revisions),
            None if folded.cleared => Ok(None),
            None => {
                let found = self.data.read().get(revisions_key(key));
                let found = found.map_err(|e| failed(&self.path, e))?;
                found.map(|r| unrevised(&self.path, &r)).transpose()
            }
        }
    }

    /// Whether `key`'s deadline, as the batch so far leaves it, has not
    /// passed (or it has none).
    fn unexpired_in(&self, folded: &Folded, key: &[u8]) -> Result<bool, Error> {
        let now = || self.clock.now_ms();
        Ok(self.deadline_in(folded, key)?.is_none_or(|at| at > now()))
    }

    /// Gives `key` the deadline `at` (`None`: none) in the folded state.
    fn set_deadline(&self, folded: &mut Folded, key: &Bytes, at: Option<u64>) -> Result<(), Error> {
        let old = self.deadline_in(folded, key)?;
        if old == at {
            // Nothing to write: the common case of a key without one.
            return Ok(());
        }
        let stored = if folded.cleared { None } else { old };
        let deadline = (folded.deadlines.entry(key.clone())).or_insert(Deadline {
            stored,
            after: None,
        });
        deadline.after = at;
        folded.counts.timed =
            folded.counts.timed + u64::from(at.is_some()) - u64::from(old.is_some());
        Ok(())
    }

    /// Gives a stored `key` the deadline `at` at `revision`; whether it
    /// was stored.
    fn redeadline(
        &self,
        folded: &mut Folded,
        key: &Bytes,
        at: Option<u64>,
        revision: u64,
    ) -> Result<Applied, Error> {
        let stored = self.len_in(folded, key)?.is_some();
        if stored {
            self.set_deadline(folded, key, at)?;
            self.revise(folded, key, true, revision)?;
        }
        Ok(Applied::Bool(stored))
    }

    /// Notes that `key`, stored before if `was_stored`, was written at
    /// `revision`.
    fn revise(
        &self,
        folded: &mut Folded,
        key: &Bytes,
        was_stored: bool,
        revision: u64,
    ) -> Result<(), Error> {
        let created = match was_stored {
            true => self.revisions_in(folded, key)?.map_or(0, |r| r.created),
            false => revision,
        };
        let revisions = Revisions {
            modified: revision,
            created,
        };
        folded.revisions.insert(key.clone(), Some(revisions));
        Ok(())
    }

    /// Takes one write, made at `revision`, into the batch's folded state.
    fn fold(&self, folded: &mut Folded, (op, revision): Revised) -> Result<Applied, Error> {
        let at = revision;
        Ok(match op {
            WriteOp::Set { key, value } => {
                self.put(folded, key, Some(value), None, at)?;
                Applied::Stored
            }
            WriteOp::Delete { key } => Applied::Deleted(self.put(folded, key, None, None, at)?),
            WriteOp::BulkSet { items } => {
                for (key, value) in items {
                    self.put(folded, key, Some(value), None, at)?;
                }
                Applied::Stored
            }
            WriteOp::DeleteMany { keys } => {
                let mut removed = Vec::new();
                for key in keys {
                    if self.put(folded, key, None, None, at)? {
                        removed.push(key.clone());
                    }
                }
                Applied::Removed(removed)
            }
            WriteOp::Clear => {
                folded.keys.clear();
                folded.deadlines.clear();
                folded.revisions.clear();
                folded.cleared = true;
                folded.counts = Counts::default();
                Applied::Stored
            }
            WriteOp::SetExpiring {
                key,
                value,
                at: deadline,
            } => {
                self.put(folded, key, Some(value), Some(*deadline), at)?;
                Applied::Stored
            }
            WriteOp::SetExpiringMany { items } => {
                for (key, value, deadline) in items {
                    self.put(folded, key, Some(value), Some(*deadline), at)?;
                }
                Applied::Stored
            }
            // Decided by the commit thread on what readers see; applied to
            // the stored key whatever the clock says, so replay agrees.
            WriteOp::ExpireAt { key, at: deadline } => {
                self.redeadline(folded, key, Some(*deadline), at)?
            }
            WriteOp::Persist { key } => self.redeadline(folded, key, None, at)?,
            WriteOp::Rename {
                from,
                to,
                value,
                at: deadline,
            } => {
                self.put(folded, from, None, None, at)?;
                self.put(folded, to, Some(value), *deadline, at)?;
                Applied::Stored
            }
            WriteOp::Txn { puts, deletes } => {
                for (key, value, deadline) in puts {
                    self.put(folded, key, Some(value), *deadline, at)?;
                }
                for key in deletes {
                    self.put(folded, key, None, None, at)?;
                }
                Applied::Stored
            }
            WriteOp::Expire { keys, now } => {
                let mut removed = Vec::new();
                for key in keys {
                    let due = self.deadline_in(folded, key)?.is_some_and(|at| at <= *now);
                    if due && self.len_in(folded, key)?.is_some() {
                        self.put(folded, key, None, None, at)?;
                        removed.push(key.clone());
                    }
                }
                Applied::Removed(removed)
            }
        })
    }

    /// Sets `key` to `value` (`None`: removes it) with deadline `at` at
    /// `revision` in the folded state; whether it had a value readers saw.
    fn put(
        &self,
        folded: &mut Folded,
        key: &Bytes,
        value: Option<&Bytes>,
        at: Option<u64>,
        revision: u64,
    ) -> Result<bool, Error> {
        if key.len() > MAX_KEY {
            return Err(failed(
                &self.path,
                format!(
                    "a key of {} bytes is over the engine's {MAX_KEY}",
                    key.len()
                ),
            ));
        }
        let old = self.len_in(folded, key)?;
        let live = old.is_some() && self.unexpired_in(folded, key)?;
        let new = value.map(|v| v.len() as u64);
        folded.counts.change(key, old, new);
        folded.keys.insert(key.clone(), value.cloned());
        self.set_deadline(folded, key, at)?;
        match value {
            Some(_) => self.revise(folded, key, old.is_some(), revision)?,
            None => drop(folded.revisions.insert(key.clone(), None)),
        }
        Ok(live)
    }

    /// Writes the folded state as one fjall batch at `position`, with
    /// `note` if any.
    fn commit(&self, folded: Folded, position: u64, note: Option<&[u8]>) -> Result<(), Error> {
        let fail = |e: fjall::Error| failed(&self.path, e);
        let data = self.data();
        let mut batch = self.db.batch().durability(None);
        let (puts, removes) = folded.writes();
        if folded.cleared {
            // Every stored item the batch does not name goes (a batch may
            // name an item once).
            let named: HashSet<&[u8]> = (puts.iter().map(|(k, _)| &k[..]))
                .chain(removes.iter().map(|k| &k[..]))
                .collect();
            for item in self.db.snapshot().iter(&data) {
                let key = item.key().map_err(fail)?;
                if !named.contains(&key[..]) {
                    batch.remove(&data, key);
                }
            }
        }
        for (key, value) in puts {
            batch.insert(&data, key, value.as_ref());
        }
        for key in removes {
            batch.remove(&data, key);
        }
        if let Some(note) = note {
            batch.insert(&self.meta, NOTE, note);
        }
        let counts = folded.counts;
        for (name, n) in [
            (APPLIED, position),
            (KEYS, counts.keys),
            (KEY_BYTES, counts.key_bytes),
            (VALUE_BYTES, counts.value_bytes),
            (TIMED, counts.timed),
        ] {
            batch.insert(&self.meta, name, n.to_be_bytes());
        }
        batch.commit().map_err(fail)
    }
}

/// The u64 `name` of `meta` (0 if absent).
fn read_u64(path: &Path, meta: &Keyspace, name: &str) -> Result<u64, Error> {
    Ok(match meta.get(name).map_err(|e| failed(path, e))? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| failed(path, format!("meta {name:?} is {} bytes, not 8", v.len())))?,
        ),
        None => 0,
    })
}

/// A big-endian u64 stored by the engine.
fn be_u64(path: &Path, bytes: &[u8]) -> Result<u64, Error> {
    let bytes = bytes
        .try_into()
        .map_err(|_| failed(path, "a stored deadline is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A batch's writes folded into one final state per key.
struct Folded {
    /// Keys written, with their value after the batch (`None`: removed).
    keys: BTreeMap<Bytes, Option<Bytes>>,
    /// Keys whose deadline the batch wrote.
    deadlines: BTreeMap<Bytes, Deadline>,
    /// Keys whose revisions the batch wrote (`None`: removed).
    revisions: BTreeMap<Bytes, Option<Revisions>>,
    /// A `Clear` in the batch: keys not in `keys` are gone.
    cleared: bool,
    /// The counts after the batch.
    counts: Counts,
}

/// A stored item and its value, as a batch puts it.
type Put = (Vec<u8>, Bytes);

/// A key's deadline before the batch (as stored, so that its `DUE` item
/// can be found) and after it.
struct Deadline {
    stored: Option<u64>,
    after: Option<u64>,
}

impl Folded {
    /// Nothing folded yet, over `counts`.
    fn new(counts: Counts) -> Folded {
        Folded {
            keys: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            revisions: BTreeMap::new(),
            cleared: false,
            counts,
        }
    }

    /// The stored items to put and to remove: each named once.
    fn writes(&self) -> (Vec<Put>, Vec<Vec<u8>>) {
        let (mut puts, mut removes) = (Vec::new(), Vec::new());
        for (key, value) in &self.keys {
            match value {
                Some(value) => puts.push((stored(key), value.clone())),
                None => removes.push(stored(key)),
            }
        }
        for (key, revisions) in &self.revisions {
            match revisions {
                Some(r) => puts.push((revisions_key(key), revised(r))),
                None => removes.push(revisions_key(key)),
            }
        }
        for (key, deadline) in &self.deadlines {
            if deadline.stored == deadline.after {
                continue;
            }
            if let Some(old) = deadline.stored {
                removes.push(due_key(old, key));
            }
            match deadline.after {
                Some(at) => {
                    let at_bytes = Bytes::copy_from_slice(&at.to_be_bytes());
                    puts.push((deadline_key(key), at_bytes));
                    puts.push((due_key(at, key), Bytes::new()));
                }
                None => removes.push(deadline_key(key)),
            }
        }
        (puts, removes)
    }
}

/// `key`'s deadline item.
fn deadline_key(key: &[u8]) -> Vec<u8> {
    let mut item = Vec::with_capacity(key.len() + 1);
    item.push(DEADLINE);
    item.extend_from_slice(key);
    item
}

/// `key`'s revisions item.
fn revisions_key(key: &[u8]) -> Vec<u8> {
    let mut item = Vec::with_capacity(key.len() + 1);
    item.push(REVISIONS);
    item.extend_from_slice(key);
    item
}

/// Revisions as their item holds them.
fn revised(r: &Revisions) -> Bytes {
    let mut item = Vec::with_capacity(16);
    item.extend_from_slice(&r.modified.to_be_bytes());
    item.extend_from_slice(&r.created.to_be_bytes());
    Bytes::from(item)
}

/// Revisions from their item.
fn unrevised(path: &Path, item: &[u8]) -> Result<Revisions, Error> {
    let (modified, created) = item
        .split_at_checked(8)
        .filter(|(_, created)| created.len() == 8)
        .ok_or_else(|| failed(path, "a stored revisions item is not 16 bytes"))?;
    Ok(Revisions {
        modified: be_u64(path, modified)?,
        created: be_u64(path, created)?,
    })
}

/// The sweep's item for `key` due at `at`.
fn due_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut item = Vec::with_capacity(key.len() + 9);
    item.push(DUE);
    item.extend_from_slice(&at.to_be_bytes());
    item.extend_from_slice(key);
    item
}

/// A fjall value as `Bytes`.
fn bytes(slice: fjall::Slice) -> Bytes {
    Bytes::copy_from_slice(&slice)
}

/// `key` as it is stored: behind [`TAG`].
fn stored(key: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(key.len() + 1);
    tagged.push(TAG);
    tagged.extend_from_slice(key);
    tagged
}

/// A stored key as kvstore's.
fn unstored(key: fjall::Slice) -> Bytes {
    Bytes::copy_from_slice(key.get(1..).unwrap_or_default())
}

/// A bound on kvstore's keys as a bound on stored keys.
fn stored_bound(bound: Bound<&[u8]>, lower: bool) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(stored(key)),
        Bound::Excluded(key) => Bound::Excluded(stored(key)),
        // Every stored key starts with TAG (and "meta" is another keyspace);
        // deadlines come after them.
        Bound::Unbounded if lower => Bound::Included(vec![TAG]),
        Bound::Unbounded => Bound::Excluded(vec![DEADLINE]),
    }
}

/// One instant's reads, hiding keys whose deadline has passed.
struct Reader<'d> {
    disk: &'d Disk,
    snapshot: fjall::Snapshot,
    data: Keyspace,
    /// The engine held a deadline when the reader was made: look them up.
    timed: bool,
    now: u64,
}

impl Reader<'_> {
    fn fail(&self, e: fjall::Error) -> Error {
        failed(&self.disk.path, e)
    }

    /// The deadline of `key` (`None`: none).
    fn deadline(&self, key: &[u8]) -> Result<Option<u64>, Error> {
        if !self.timed {
            return Ok(None);
        }
        let found = (self.snapshot.get(&self.data, deadline_key(key))).map_err(|e| self.fail(e))?;
        found.map(|at| be_u64(&self.disk.path, &at)).transpose()
    }

    /// Whether `key`'s deadline has passed (a key without one: no).
    fn expired(&self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.deadline(key)?.is_some_and(|at| at <= self.now))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        let value = (self.snapshot.get(&self.data, stored(key))).map_err(|e| self.fail(e))?;
        match value {
            Some(_) if self.expired(key)? => Ok(None),
            value => Ok(value.map(bytes)),
        }
    }

    /// `key`'s revisions (0 for a key stored before they were kept).
    fn revisions(&self, key: &[u8]) -> Result<Revisions, Error> {
        let found = self.snapshot.get(&self.data, revisions_key(key));
        let found = found.map_err(|e| self.fail(e))?;
        Ok(match found {
            Some(item) => unrevised(&self.disk.path, &item)?,
            None => Revisions::default(),
        })
    }

    /// The entries of `span`, in its order, expired ones left out.
    fn walk<'r>(&'r self, span: &Span) -> impl Iterator<Item = Result<(Bytes, Bytes), Error>> + 'r {
        let range: Box<dyn Iterator<Item = fjall::Guard>> = if span.is_empty() {
            Box::new(std::iter::empty())
        } else {
            let (lower, upper) = span.bounds();
            let bounds = (stored_bound(lower, true), stored_bound(upper, false));
            let range = self.snapshot.range::<Vec<u8>, _>(&self.data, bounds);
            match span.reverse() {
                true => Box::new(range.rev()),
                false => Box::new(range),
            }
        };
        range.filter_map(move |item| {
            let entry = item.into_inner().map_err(|e| self.fail(e));
            let entry = entry.map(|(key, value)| (unstored(key), bytes(value)));
            match entry.and_then(|(key, value)| Ok((self.expired(&key)?, key, value))) {
                Ok((true, _, _)) => None,
                Ok((false, key, value)) => Some(Ok((key, value))),
                Err(e) => Some(Err(e)),
            }
        })
    }
}

impl Disk {
    fn reader(&self) -> Reader<'_> {
        let timed = self.timed.load(Ordering::Acquire) > 0;
        Reader {
            disk: self,
            snapshot: self.db.snapshot(),
            data: self.data(),
            timed,
            now: if timed { self.clock.now_ms() } else { 0 },
        }
    }

    /// Keys whose deadline is at or before `now`, not removed yet.
    fn expired_count(&self, now: u64) -> Result<u64, Error> {
        let end = [&[DUE][..], &now.saturating_add(1).to_be_bytes()].concat();
        let range = (self.data.read()).range::<Vec<u8>, _>(vec![DUE]..end);
        let mut n = 0;
        for item in range {
            item.key().map_err(|e| failed(&self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// [`Engine::due`], earliest first.
    fn due_keys(&self, now: u64, max: usize) -> Result<Vec<Bytes>, Error> {
        let end = [&[DUE][..], &now.saturating_add(1).to_be_bytes()].concat();
        let range = (self.data.read()).range::<Vec<u8>, _>(vec![DUE]..end);
        let mut due = Vec::new();
        for item in range.take(max) {
            let item = item.key().map_err(|e| failed(&self.path, e))?;
            due.push(Bytes::copy_from_slice(item.get(9..).unwrap_or_default()));
        }
        Ok(due)
    }
}

impl Engine for Disk {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error> {
        if self.timed.load(Ordering::Acquire) > 0 {
            return self.reader().get(key);
        }
        (self.data.read().get(stored(key)))
            .map(|v| v.map(bytes))
            .map_err(|e| failed(&self.path, e))
    }

    fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, Error> {
        let reader = self.reader();
        keys.iter().map(|key| reader.get(key)).collect()
    }

    fn get_revised(&self, key: &[u8]) -> Result<Option<(Bytes, Revisions)>, Error> {
        let reader = self.reader();
        match reader.get(key)? {
            Some(value) => Ok(Some((value, reader.revisions(key)?))),
            None => Ok(None),
        }
    }

    fn contains(&self, key: &[u8]) -> Result<bool, Error> {
        if self.timed.load(Ordering::Acquire) > 0 {
            return Ok(self.reader().get(key)?.is_some());
        }
        (self.data.read().contains_key(stored(key))).map_err(|e| failed(&self.path, e))
    }

    fn deadline(&self, key: &[u8]) -> Result<Option<Option<u64>>, Error> {
        let reader = self.reader();
        match reader.get(key)? {
            Some(_) => Ok(Some(reader.deadline(key)?)),
            None => Ok(None),
        }
    }

    fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeysPage, Error> {
        let span = Span::prefix(prefix, start_after, false);
        let mut page = KeysPage::default();
        let mut budget = PageBudget::new(limit, max_bytes);
        let reader = self.reader();
        for item in reader.walk(&span) {
            let (key, _) = item?;
            if !budget.take(key.len(), None) {
                page.more = true;
                break;
            }
            page.keys.push(key);
        }
        Ok(page)
    }

    fn pairs(&self, span: &Span, limit: usize, max_bytes: usize) -> Result<PairsPage, Error> {
        let mut pairs = Vec::new();
        let mut budget = PageBudget::new(limit, max_bytes);
        let reader = self.reader();
        for item in reader.walk(span) {
            let (key, value) = item?;
            if !budget.take(key.len(), Some(value.len())) {
                return Ok((pairs, true));
            }
            pairs.push((key, value));
        }
        Ok((pairs, false))
    }

    fn due(&self, now: u64, max: usize) -> Result<Vec<Bytes>, Error> {
        if self.timed.load(Ordering::Acquire) == 0 {
            return Ok(Vec::new());
        }
        self.due_keys(now, max)
    }

    fn len(&self) -> u64 {
        let keys = self.counts.lock().keys;
        if self.timed.load(Ordering::Acquire) == 0 {
            return keys;
        }
        // A read error counts nothing off: the count is a figure, not a read.
        keys - self.expired_count(self.clock.now_ms()).unwrap_or(0)
    }

    fn expiring(&self) -> u64 {
        let timed = self.counts.lock().timed;
        if timed == 0 {
            return 0;
        }
        timed - self.expired_count(self.clock.now_ms()).unwrap_or(0)
    }

    fn bytes(&self) -> (u64, u64) {
        let counts = self.counts.lock();
        (counts.key_bytes, counts.value_bytes)
    }

    fn apply(&self, ops: &[Revised], position: u64) -> Result<Vec<Applied>, Error> {
        self.apply_with(ops, position, None)
    }

    fn load(&self, stored: &[Stored]) -> Result<(), Error> {
        let mut counts = self.counts.lock();
        let mut folded = Folded::new(*counts);
        for entry in stored {
            let value = Some(&entry.value);
            self.put(&mut folded, &entry.key, value, entry.deadline, 0)?;
            (folded.revisions).insert(entry.key.clone(), Some(entry.revisions));
        }
        let after = folded.counts;
        self.commit(folded, self.applied(), None)?;
        *counts = after;
        self.timed.store(after.timed, Ordering::Release);
        Ok(())
    }

    fn keeps_notes(&self) -> bool {
        true
    }

    fn apply_noted(
        &self,
        ops: &[Revised],
        position: u64,
        note: Noter<'_>,
    ) -> Result<Vec<Applied>, Error> {
        self.apply_with(ops, position, Some(note))
    }

    fn note(&self) -> Result<Option<Bytes>, Error> {
        (self.meta.get(NOTE))
            .map(|v| v.map(bytes))
            .map_err(|e| failed(&self.path, e))
    }

    /// Loads generation N+1 next to the current one (with its own counts
    /// in "staging-N+1"), makes it durable, then switches to it in one
    /// batch and drops the old one.
    fn replace(
        &self,
        fs: &dyn Fs,
        snapshot: &Path,
        position: u64,
        note: &[u8],
    ) -> Result<(), Error> {
        let fail = |e: fjall::Error| failed(&self.path, e);
        let next = self.generation.load(Ordering::Acquire) + 1;
        let staging_name = format!("staging-{next}");
        let staging = (self.db)
            .keyspace(&staging_name, KeyspaceCreateOptions::default)
            .map_err(fail)?;
        let loaded = Disk::with(&self.path, self.db.clone(), &data_name(next), staging)
            .and_then(|staging| load_into(fs, snapshot, &staging).map(|_| staging));
        let staging = match loaded {
            Ok(staging) => staging,
            Err(e) => {
                self.drop_keyspaces_but_current()?;
                return Err(e);
            }
        };
        // The new generation's tables, named durably before it is made
        // the current one.
        self.sync_dirs()?;
        let mut counts = self.counts.lock();
        let loaded = *staging.counts.lock();
        let mut batch = self.db.batch().durability(None);
        for (name, n) in [
            (GENERATION, next),
            (APPLIED, position),
            (KEYS, loaded.keys),
            (KEY_BYTES, loaded.key_bytes),
            (VALUE_BYTES, loaded.value_bytes),
            (TIMED, loaded.timed),
        ] {
            batch.insert(&self.meta, name, n.to_be_bytes());
        }
        batch.insert(&self.meta, NOTE, note);
        batch.commit().map_err(fail)?;
        self.db.persist(PersistMode::SyncData).map_err(fail)?;
        *self.data.write() = staging.data();
        *counts = loaded;
        self.timed.store(loaded.timed, Ordering::Release);
        self.generation.store(next, Ordering::Release);
        self.applied.store(position, Ordering::Release);
        drop(counts);
        drop(staging);
        self.drop_keyspaces_but_current()
    }

    fn persist(&self) -> Result<(), Error> {
        self.persist_and_flush()
    }

    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Persists fjall, then records where a restart replays from, and
    /// persists that. Every record before `at.next_segment` was applied
    /// before this was called, so the first persist covers it; writes
    /// applied meanwhile are covered too and replayed again (idempotent).
    fn checkpoint(&self, at: &Checkpoint) -> Result<(), Error> {
        let fail = |e: fjall::Error| failed(&self.path, e);
        let position = self.applied.load(Ordering::Acquire);
        self.persist_and_flush()?;
        let mut batch = self.db.batch().durability(None);
        for (name, n) in [
            (CHECKPOINT, position),
            (REPLAY_SEGMENT, at.next_segment),
            (REPLAY_SEQ, at.next_seq),
        ] {
            batch.insert(&self.meta, name, n.to_be_bytes());
        }
        batch.commit().map_err(fail)?;
        self.db.persist(PersistMode::SyncData).map_err(fail)?;
        self.checkpoint.store(position, Ordering::Release);
        *self.replay_from.lock() = (at.next_segment, at.next_seq);
        Ok(())
    }

    /// A fjall snapshot: every batch is wholly in it or wholly after it.
    fn view(&self) -> Result<Box<dyn View>, Error> {
        let reader = self.reader();
        Ok(Box::new(DiskView {
            timed: reader.timed,
            snapshot: reader.snapshot,
            data: reader.data,
            path: self.path.clone(),
            after: None,
            done: false,
        }))
    }
}

/// One instant's pairs, copied in key order a chunk at a time. The snapshot
/// keeps the versions it sees from compaction until the copy is dropped.
struct DiskView {
    snapshot: fjall::Snapshot,
    /// The engine held a deadline: each key's is looked up and copied.
    timed: bool,
    data: Keyspace,
    path: PathBuf,
    /// The last stored key copied: the next chunk starts after it.
    after: Option<fjall::Slice>,
    done: bool,
}

impl View for DiskView {
    fn copy_some(&mut self, encoder: &mut Encoder) -> Result<bool, Error> {
        if self.done {
            return Ok(false);
        }
        let lower = match self.after.take() {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Included(vec![TAG]),
        };
        let upper = Bound::Excluded(vec![DEADLINE]);
        let range = (self.snapshot).range::<Vec<u8>, _>(&self.data, (lower, upper));
        let mut taken = 0;
        for item in range.take(CHUNK_PAIRS) {
            let fail = |e| failed(&self.path, e);
            let (key, value) = item.into_inner().map_err(fail)?;
            let at = match self.timed {
                true => self
                    .snapshot
                    .get(&self.data, deadline_key(&key[1..]))
                    .map_err(fail)?,
                false => None,
            };
            let at = at.map(|at| be_u64(&self.path, &at)).transpose()?;
            let revisions = self.snapshot.get(&self.data, revisions_key(&key[1..]));
            let revisions = match revisions.map_err(fail)? {
                Some(item) => unrevised(&self.path, &item)?,
                None => Revisions::default(),
            };
            encoder.push_entry((&key[1..], &value), at, revisions);
            self.after = Some(key);
            taken += 1;
        }
        // A short chunk was the last.
        self.done = taken < CHUNK_PAIRS;
        Ok(!self.done)
    }

    fn fuzzy(&self) -> bool {
        false
    }
}

impl Disk {
    /// [`Engine::apply`], keeping `note` with the batch if there is one.
    fn apply_with(
        &self,
        ops: &[Revised],
        position: u64,
        note: Option<Noter<'_>>,
    ) -> Result<Vec<Applied>, Error> {
        let mut counts = self.counts.lock();
        let mut folded = Folded::new(*counts);
        let applied = (ops.iter())
            .map(|&op| self.fold(&mut folded, op))
            .collect::<Result<Vec<_>, _>>()?;
        let after = folded.counts;
        let note = note.map(|note| note(&applied)).transpose()?;
        self.commit(folded, position, note.as_deref())?;
        if note.is_some() {
            // Durable before the next batch is written: a crash can then
            // cut only the last batch, never one in the middle.
            (self.db.persist(PersistMode::SyncData)).map_err(|e| failed(&self.path, e))?;
        }
        *counts = after;
        self.timed.store(after.timed, Ordering::Release);
        self.applied.store(position, Ordering::Release);
        Ok(applied)
    }

    /// Makes everything applied durable, then writes the memtables out as
    /// tables, so fjall's journals up to here can go: a restart replays
    /// fjall's journal into memory (about 2 s per million 100-byte writes
    /// here) and would otherwise grow with the data written since the last
    /// flush. (`rotate_memtable_and_wait` is a hidden fjall API, hence the
    /// exact version pin.)
    fn persist_and_flush(&self) -> Result<(), Error> {
        let fail = |e: fjall::Error| failed(&self.path, e);
        self.db.persist(PersistMode::SyncData).map_err(fail)?;
        for keyspace in [&self.data(), &self.meta] {
            keyspace.rotate_memtable_and_wait().map_err(fail)?;
        }
        self.sync_dirs()
    }

    /// Fsyncs every directory of the database. fjall syncs the files it
    /// writes but not always the directories that name them (a new
    /// `tables/` directory, the rename of a keyspace's `current`), which a
    /// power cut can then lose on a file system that does not order its
    /// metadata (tests/power_cut); kvstore's log is dropped only after this.
    fn sync_dirs(&self) -> Result<(), Error> {
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let io = |e| Error::io(&dir, e);
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                if entry.file_type().map_err(io)?.is_dir() {
                    dirs.push(entry.path());
                }
            }
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::RealFs;
    use crate::storage::snapshot;
    use crate::storage::store::Store;

    fn set(key: &str, value: &str) -> WriteOp {
        WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[test]
    fn a_reopened_engine_has_its_data_counts_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.fjall");
        {
            let disk = Disk::open(&path, 1 << 20).unwrap();
            disk.apply(&[(&set("a", "1"), 7), (&set("", "empty key"), 7)], 7)
                .unwrap();
            let checkpoint = Checkpoint {
                fs: &crate::storage::fs::RealFs,
                data: &path,
                next_segment: 3,
                next_seq: 8,
                barrier: &|| Ok(()),
            };
            disk.checkpoint(&checkpoint).unwrap();
            disk.apply(&[(&set("b", "22"), 9)], 9).unwrap();
            // Dropped without a checkpoint: fjall keeps what it journaled.
        }
        let disk = Disk::open(&path, 1 << 20).unwrap();
        assert_eq!(disk.checkpointed(), 7);
        assert_eq!(
            disk.replay_from(),
            (3, 8),
            "replay starts at the checkpoint"
        );
        assert_eq!(disk.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
        assert_eq!(disk.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        // The batch after the checkpoint may or may not have been kept, but
        // its data and its position move together.
        let applied = disk.applied();
        assert!(applied == 7 || applied == 9, "{applied}");
        assert_eq!(disk.get(b"b").unwrap().is_some(), applied == 9);
        let keys = disk.keys(b"", None, 10, usize::MAX).unwrap().keys;
        assert_eq!(keys.len() as u64, disk.len());
        let key_bytes = keys.iter().map(|k| k.len() as u64).sum::<u64>();
        assert_eq!(disk.bytes().0, key_bytes);
    }

    fn keyspaces(disk: &Disk) -> Vec<String> {
        let mut names: Vec<String> = (disk.db.list_keyspace_names().iter())
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_replace_is_all_or_nothing_and_outlives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.fjall");
        {
            let disk = Disk::open(&path, 1 << 20).unwrap();
            disk.apply_noted(&[(&set("old", "1"), 3)], 3, &mut |_| Ok(b"three".to_vec()))
                .unwrap();
            let snapshot = dir.path().join("snapshot");
            let store = Store::new(1);
            store.apply(&set("new", "22"));
            snapshot::write(&RealFs, &snapshot, &mut &store, 0, 0, || Ok(())).unwrap();
            // Cut in its footer: the block before it loads, then the load fails.
            let damaged = dir.path().join("damaged");
            let bytes = std::fs::read(&snapshot).unwrap();
            std::fs::write(&damaged, &bytes[..bytes.len() - 3]).unwrap();
            assert!(disk.replace(&RealFs, &damaged, 9, b"nine").is_err());
            assert_eq!(disk.get(b"new").unwrap(), None);
            assert_eq!(disk.get(b"old").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(keyspaces(&disk), ["data", "meta"]);
            assert_eq!(disk.note().unwrap().as_deref(), Some(&b"three"[..]));

            disk.replace(&RealFs, &snapshot, 9, b"nine").unwrap();
            assert_eq!(disk.get(b"old").unwrap(), None);
            assert_eq!((disk.len(), disk.bytes()), (1, (3, 2)));
            // Writes after the install go to the new generation.
            disk.apply_noted(
                &[(&set("after", "3"), 10)],
                10,
                &mut |_| Ok(b"ten".to_vec()),
            )
            .unwrap();
        }
        let disk = Disk::open(&path, 1 << 20).unwrap();
        assert_eq!(keyspaces(&disk), ["data-1", "meta"]);
        assert_eq!(disk.get(b"new").unwrap().as_deref(), Some(&b"22"[..]));
        assert_eq!(disk.get(b"old").unwrap(), None);
        assert_eq!(disk.len(), 2);
        // A noted batch is durable once applied.
        assert_eq!(disk.applied(), 10);
        assert_eq!(disk.note().unwrap().as_deref(), Some(&b"ten"[..]));
    }

    /// Deadlines outlive a reopen, and a copy of the engine installed in
    /// another keeps them (the Raft snapshot path).
    #[test]
    fn deadlines_outlive_a_reopen_and_an_install() {
        let dir = tempfile::tempdir().unwrap();
        let (path, snapshot) = (dir.path().join("a.fjall"), dir.path().join("snap"));
        let clock = Clock::manual(100);
        let timed = |key: &str, at| WriteOp::SetExpiring {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            at,
        };
        {
            let disk = Disk::open(&path, 1 << 20).unwrap();
            disk.apply(
                &[
                    (&timed("gone", 50), 1),
                    (&timed("kept", 500), 1),
                    (&set("plain", "p"), 1),
                ],
                1,
            )
            .unwrap();
            disk.persist().unwrap();
        }
        let disk = Disk::open(&path, 1 << 20)
            .unwrap()
            .with_clock(clock.clone());
        assert_eq!((disk.get(b"gone").unwrap(), disk.len()), (None, 2));
        assert_eq!(disk.deadline(b"kept").unwrap(), Some(Some(500)));
        assert_eq!(disk.due(100, 10).unwrap(), [Bytes::from("gone")]);
        snapshot::write_with_state(&RealFs, &snapshot, &mut *disk.view().unwrap(), b"").unwrap();

        let other = Disk::open(&dir.path().join("b.fjall"), 1 << 20).unwrap();
        let other = other.with_clock(clock.clone());
        other.replace(&RealFs, &snapshot, 7, b"").unwrap();
        assert_eq!(other.deadline(b"kept").unwrap(), Some(Some(500)));
        assert_eq!(other.deadline(b"plain").unwrap(), Some(None));
        assert_eq!((other.get(b"gone").unwrap(), other.len()), (None, 2));
        clock.set(500);
        assert_eq!(other.len(), 1);
        assert_eq!(other.due(500, 10).unwrap().len(), 2);
        let due = other.due(500, 10).unwrap();
        let swept = WriteOp::Expire {
            keys: due.clone(),
            now: 500,
        };
        assert_eq!(
            other.apply(&[(&swept, 8)], 8).unwrap(),
            [Applied::Removed(due)]
        );
        assert_eq!(
            (other.due(u64::MAX, 10).unwrap().len(), other.len()),
            (0, 1)
        );
        assert_eq!(other.bytes(), (5, 1));
    }

    #[test]
    fn a_key_over_the_engine_limit_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(&dir.path().join("data.fjall"), 1 << 20).unwrap();
        let long = WriteOp::Set {
            key: Bytes::from(vec![b'k'; MAX_KEY + 1]),
            value: Bytes::new(),
        };
        assert!(matches!(
            disk.apply(&[(&long, 1)], 1),
            Err(Error::StorageFailed(_))
        ));
        let longest = WriteOp::Set {
            key: Bytes::from(vec![b'k'; MAX_KEY]),
            value: Bytes::new(),
        };
        disk.apply(&[(&longest, 2)], 2).unwrap();
        assert_eq!(disk.len(), 1);
    }
}
