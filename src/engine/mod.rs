//! The storage engine seam: the applied state every read sees.
//!
//! An [`Engine`] holds what the log has made durable and applied: point
//! reads, ordered pages of keys or pairs (one instant's view each, in
//! either direction), and the one `apply` both write paths use (the
//! single-node commit thread and the Raft state machine), which takes a
//! durable batch of resolved writes with the log position it came from.
//! Nothing else reads or changes the data: `cmd/` reads through `Db`,
//! writes come from a `crate::log::Log`.
//!
//! [`memory::Memory`] is the sharded in-memory map, made durable by the log
//! and snapshot files; its recovery still uses the map itself
//! (`Memory::store`). [`disk::Disk`] keeps the data in fjall, and with it
//! what the Raft state machine notes ([`Engine::apply_noted`]). Backups,
//! snapshot files and Raft snapshots copy an engine through
//! [`Engine::view`].

pub mod disk;
pub mod memory;
pub mod watched;

use std::path::Path;

use bytes::Bytes;

use crate::backup::View;
use crate::error::Error;
use crate::storage::change::Resolved;
use crate::storage::fs::Fs;
use crate::storage::op::WriteOp;
pub use crate::storage::store::{Applied, KeysPage, Revisions, Span, Stored};

/// A write and its revision: the log position it was made at (the single
/// node's record sequence number, or the Raft entry's index).
pub type Revised<'a> = (&'a WriteOp, u64);

/// A page of key-value pairs, and whether more may follow.
pub type PairsPage = (Vec<(Bytes, Bytes)>, bool);

/// What a checkpoint must cover: every record before the log segment
/// `next_segment` (whose first record is `next_seq`) has been applied, and
/// once the checkpoint returns those segments may be removed.
pub struct Checkpoint<'a> {
    pub fs: &'a dyn Fs,
    /// The data path (`--data`).
    pub data: &'a Path,
    pub next_segment: u64,
    pub next_seq: u64,
    /// Waits until every write applied so far is durable in the log (see
    /// `crate::commit`); called before a checkpoint that may hold writes
    /// applied after the rotation is made the one a restart starts from.
    pub barrier: &'a dyn Fn() -> Result<(), Error>,
}

/// Makes the note a batch is kept with from what each of its ops did.
pub type Noter<'a> = &'a mut dyn FnMut(&[Applied]) -> Result<Vec<u8>, Error>;

/// [`Noter`] for [`Engine::apply_resolved`]: what each resolved write's op
/// did (`None`: it logged nothing).
pub type ResolvedNoter<'a> = &'a mut dyn FnMut(&[Option<Applied>]) -> Result<Vec<u8>, Error>;

/// The applied state. Reads may fail (a disk engine's I/O); the memory
/// engine's never do.
pub trait Engine: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, Error>;

    /// The values of `keys`, read at one instant.
    fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, Error>;

    /// The value of `key` and its revisions, read at one instant.
    fn get_revised(&self, key: &[u8]) -> Result<Option<(Bytes, Revisions)>, Error>;

    /// Whether `key` has a value.
    fn contains(&self, key: &[u8]) -> Result<bool, Error>;

    /// When `key` is gone (ms since the epoch): `Some(None)` if it has no
    /// deadline, `None` if it has no value.
    fn deadline(&self, key: &[u8]) -> Result<Option<Option<u64>>, Error>;

    /// Up to `limit` keys that start with `prefix` and sort after
    /// `start_after`, ascending, stopping before their encoded size (each key
    /// plus an 8-byte length) passes `max_bytes`.
    fn keys(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<KeysPage, Error>;

    /// Up to `limit` pairs whose keys lie in `span`, in its order, stopping
    /// before their encoded size (key, value and two 8-byte lengths) passes
    /// `max_bytes`; a page holds at least one pair.
    fn pairs(&self, span: &Span, limit: usize, max_bytes: usize) -> Result<PairsPage, Error>;

    /// How many keys there are (not one instant's count while writes run).
    fn len(&self) -> u64;

    /// How many of them have a deadline (Redis's `expires` figure).
    fn expiring(&self) -> u64;

    /// Up to `max` keys whose deadline is at or before `now`, not removed
    /// yet: what the sweep (`crate::expiry`) removes next.
    fn due(&self, now: u64, max: usize) -> Result<Vec<Bytes>, Error>;

    /// Whether there are no keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all keys and of all values.
    fn bytes(&self) -> (u64, u64);

    /// Applies a durable batch of writes, in order, each at its revision,
    /// and returns what each did. `position` is the log position the batch
    /// ends at (the single node's record sequence number, or the Raft log
    /// index); positions and revisions only grow. Each write is atomic for readers; the batch as a whole need
    /// not be. A failure leaves the engine unusable for writes: the caller
    /// poisons its log (the batch is durable, and a restart replays it).
    fn apply(&self, ops: &[Revised], position: u64) -> Result<Vec<Applied>, Error>;

    /// Puts each of `stored` in as a copy holds it, revisions and all (a
    /// snapshot's install, a restore): one atomic step, like a batch of
    /// [`Engine::apply`].
    fn load(&self, stored: &[Stored]) -> Result<(), Error>;

    /// Applies like [`Engine::apply`], and keeps the note `note` makes from
    /// what the ops did (what the Raft state machine must find after a
    /// restart: its applied log id, membership and client sessions) in the
    /// same atomic step, for [`Engine::note`]; the batch is durable when
    /// this returns. `note` is called once, before the batch is final. An
    /// engine whose data does not outlive the process keeps no note.
    fn apply_noted(
        &self,
        ops: &[Revised],
        position: u64,
        note: Noter<'_>,
    ) -> Result<Vec<Applied>, Error> {
        let applied = self.apply(ops, position)?;
        note(&applied)?;
        Ok(applied)
    }

    /// Whether the engine keeps the notes of [`Engine::apply_noted`] (its
    /// data outlives the process); if not, a note need not be made.
    fn keeps_notes(&self) -> bool {
        false
    }

    /// The note kept with the last batch applied with one, if the engine
    /// kept its data from before the process started (the memory engine
    /// keeps none: `None`).
    fn note(&self) -> Result<Option<Bytes>, Error> {
        Ok(None)
    }

    /// Replaces the whole state by the snapshot file at `snapshot` (a Raft
    /// snapshot's install), with `note` at `position`. Readers see the old
    /// state or the new, never a mix; a damaged file leaves the old state.
    /// With an engine whose data outlives the process the new state is
    /// durable when this returns.
    fn replace(
        &self,
        fs: &dyn Fs,
        snapshot: &Path,
        position: u64,
        note: &[u8],
    ) -> Result<(), Error>;

    /// Makes every batch applied so far durable in the engine itself, if
    /// its data outlives the process (the memory engine's durability is the
    /// log and the snapshot files: nothing to do).
    fn persist(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The position of the last batch applied (0: none since start, or what
    /// the engine kept from before).
    fn applied(&self) -> u64;

    /// Makes the state durable as far as `at` asks (the memory engine writes
    /// its snapshot file, the disk engine persists its tree), so that a
    /// restart needs the log from `at.next_segment` on only.
    fn checkpoint(&self, at: &Checkpoint) -> Result<(), Error>;

    /// The state for a copy made while writes go on (a backup, a snapshot
    /// file, a Raft snapshot): one instant's view, or a fuzzy copy that a
    /// backup's tee, the log replayed after it, or the apply lock makes
    /// exact (see `crate::backup`).
    fn view(&self) -> Result<Box<dyn View>, Error>;

    /// Applies the ops of resolved writes, each with its revision, as one
    /// batch (see [`Engine::apply`]) and returns, for each write, what its
    /// op did (`None`: it logged nothing). The one apply of both write paths; each
    /// write's answer is then [`Resolved::outcome`].
    /// `note`, if any, is kept as [`Engine::apply_noted`] keeps it, and is
    /// given what each write's op did.
    fn apply_resolved(
        &self,
        resolved: &[(&Resolved, u64)],
        position: u64,
        note: Option<ResolvedNoter<'_>>,
    ) -> Result<Vec<Option<Applied>>, Error> {
        let ops: Vec<Revised> = (resolved.iter())
            .filter_map(|(r, revision)| r.op().map(|op| (op, *revision)))
            .collect();
        let per_write = |applied: &[Applied]| -> Vec<Option<Applied>> {
            let mut applied = applied.iter();
            (resolved.iter())
                .map(|(r, _)| r.op().and_then(|_| applied.next().cloned()))
                .collect()
        };
        let applied = match note {
            Some(note) => self.apply_noted(&ops, position, &mut |a| note(&per_write(a)))?,
            None => self.apply(&ops, position)?,
        };
        Ok(per_write(&applied))
    }
}
