//! The state machine of one node: openraft's `RaftStateMachine` over the
//! server's engine (`crate::engine`), with snapshots in the server's own
//! snapshot format (`storage::snapshot`).
//!
//! ```text
//! <raft dir>/snap-<id>.meta   bincode(SnapshotMeta), in a checksummed record
//! <raft dir>/snap-<id>.db     the store, as `storage::snapshot` writes it
//! <raft dir>/receiving.snap   a snapshot arriving from the leader
//! ```
//!
//! Snapshots travel as files (openraft's `SnapshotData` is a file): the
//! leader sends chunks read from its `.db` file, a follower writes them into
//! `receiving.snap`, so neither side holds a whole snapshot in memory.
//!
//! Applying an entry does not sync anything: after a crash, openraft applies
//! the log again from what the state machine says it has applied. The
//! memory engine keeps nothing, so that is the last snapshot: at start the
//! newest `.db` with its `.meta` is loaded. The disk engine keeps its data,
//! and with each entry's writes, in the same atomic step, a [`Note`] of the
//! applied log id and membership (Raft entries are not idempotent: the
//! state machine must know exactly which ones the data holds); it loads a
//! snapshot only if the snapshot is newer than its note.
//!
//! So a snapshot must be durable before openraft is told about it (it then
//! purges the log it covers): the engine is persisted, and both files are
//! written to a temp name, fsynced, renamed, and the directory fsynced,
//! `.meta` first. Other snapshot files are removed.
//!
//! While the memory engine is copied, applies wait (one lock): the copy is
//! then exactly the state at `last_applied`. That stalls writes for the time
//! of the copy (see docs/replication.md). The disk engine's view is one
//! instant's, so applies go on while it is copied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;

use super::log::Covered;
use super::sessions::{Admit, Sessions, Stamp};
use super::shards::{Decided, Shards, ShardsWithoutChanges, ShardsWithoutDoors};
use super::{Member, Outcome, Outcomes, TypeConfig};
use crate::engine::Engine;
use crate::error::Error;
use crate::storage::change::{BatchView, Change, Resolved};
use crate::storage::fs::Fs;
use crate::storage::store::Applied as Done;
use crate::storage::{record, snapshot, sync_dir, write_synced};
use kvstore_client::slot::GroupId;

/// What an engine that keeps its data keeps with each entry's writes.
#[derive(Debug, Serialize)]
struct Note<'a> {
    last_applied: &'a Option<LogId<u64>>,
    membership: &'a StoredMembership<u64, Member>,
    sessions: &'a Sessions,
    shards: &'a Shards,
}

/// A [`Note`] as read back.
#[derive(Debug, Deserialize)]
struct KeptNote {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    sessions: Sessions,
    shards: Shards,
}

/// A note written before groups could change nodes.
#[derive(Debug, Deserialize)]
struct NoteWithoutChanges {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    sessions: Sessions,
    shards: ShardsWithoutChanges,
}

/// A note written before the table kept the nodes' RESP addresses.
#[derive(Debug, Deserialize)]
struct NoteWithoutDoors {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    sessions: Sessions,
    shards: ShardsWithoutDoors,
}

/// A note written before the sharding table existed.
#[derive(Debug, Deserialize)]
struct NoteWithoutShards {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    sessions: Sessions,
}

/// A note written before client sessions existed.
#[derive(Debug, Deserialize)]
struct NoteWithoutSessions {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
}

impl Note<'_> {
    fn of(applied: &Applied) -> Note<'_> {
        Note {
            last_applied: &applied.last_applied,
            membership: &applied.membership,
            sessions: &applied.sessions,
            shards: &applied.shards,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, Error> {
        kvstore_client::codec::encode(self)
            .map_err(|e| Error::StorageFailed(format!("state machine note: {e}")))
    }
}

impl KeptNote {
    /// The note in `bytes`, in this format or an older one.
    fn decode(bytes: &[u8]) -> Result<KeptNote, Error> {
        use kvstore_client::codec::decode;
        if let Ok(note) = decode(bytes) {
            return Ok(note);
        }
        if let Ok(old) = decode::<NoteWithoutChanges>(bytes) {
            return Ok(KeptNote {
                last_applied: old.last_applied,
                membership: old.membership,
                sessions: old.sessions,
                shards: old.shards.into(),
            });
        }
        if let Ok(old) = decode::<NoteWithoutDoors>(bytes) {
            return Ok(KeptNote {
                last_applied: old.last_applied,
                membership: old.membership,
                sessions: old.sessions,
                shards: old.shards.into(),
            });
        }
        if let Ok(old) = decode::<NoteWithoutShards>(bytes) {
            return Ok(KeptNote {
                last_applied: old.last_applied,
                membership: old.membership,
                sessions: old.sessions,
                shards: Shards::default(),
            });
        }
        let old: NoteWithoutSessions =
            decode(bytes).map_err(|e| Error::StorageFailed(format!("state machine note: {e}")))?;
        Ok(KeptNote {
            last_applied: old.last_applied,
            membership: old.membership,
            sessions: Sessions::default(),
            shards: Shards::default(),
        })
    }
}

/// What the state machine has taken in, guarded by the apply lock.
#[derive(Debug, Default)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    /// Client sessions, as the entries up to `last_applied` left them.
    sessions: Sessions,
    /// The sharding table (group 1; other groups keep the default).
    shards: Shards,
    /// The durable snapshot, if any.
    current: Option<SnapshotMeta<u64, Member>>,
    /// Makes snapshot ids unique within the process.
    built: u64,
}

/// The state machine. Cheap to clone: the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachine {
    /// Group 1 opens client sessions; the others take them in (`Sessions`).
    group: GroupId,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// The engine the doors read: applying an entry makes its writes
    /// visible.
    engine: Arc<dyn Engine>,
    /// Held for each apply, and for a copy of the memory engine.
    applied: Arc<Mutex<Applied>>,
    /// Held while a snapshot's files are written or replaced, so that a
    /// build and an install never remove each other's files. Taken before
    /// `applied`, never after.
    files: Arc<Mutex<()>>,
    /// The index of the newest entry (or snapshot) whose writes may be in
    /// the store: set before it changes the store, so a reader that loads
    /// it after reading the store gets an index that covers what it read.
    /// openraft's metrics publish the applied index later than that, so
    /// replies carry this one (session reads, `cmd::indexed`).
    store_index: Arc<AtomicU64>,
    /// Roughly the bytes of the entries applied since the newest snapshot:
    /// what the size trigger of snapshots watches (`node`).
    since_snapshot: Arc<AtomicU64>,
    /// Group 1: the last client session id handed out as applied, so that
    /// a node sends another group no session id that was never opened.
    last_session: Arc<AtomicU64>,
    /// The sharding table as applied, for the node to start the groups it
    /// is placed in.
    shards: Arc<tokio::sync::watch::Sender<Arc<Shards>>>,
    /// Written while an apply or an install changes the engine and then
    /// publishes the slot states, read while a scan page walks the engine
    /// (`network::read_page`): a page never sees data newer than the slot
    /// states it checks, such as a slot purged but still shown as served.
    pages: Arc<RwLock<()>>,
    /// Raised to the newest snapshot once its files are durable (and, for
    /// an install, loaded): the log's file purges no further.
    covered: Covered,
}

fn storage_io(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine in `dir` over `engine`: what the engine
    /// kept (its note), or the newest snapshot if that is newer (the memory
    /// engine keeps nothing).
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        group: GroupId,
        engine: Arc<dyn Engine>,
        covered: Covered,
    ) -> Result<StateMachine, Error> {
        fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut applied = Applied {
            shards: Shards::of_group(group),
            ..Applied::default()
        };
        if let Some(note) = engine.note()? {
            let note = KeptNote::decode(&note)?;
            applied.last_applied = note.last_applied;
            applied.membership = note.membership;
            applied.sessions = note.sessions;
            applied.shards = note.shards;
        }
        if let Some((meta, id)) = newest_snapshot(&*fs, dir)? {
            if meta.last_log_id > applied.last_applied {
                let path = dir.join(format!("snap-{id}.db"));
                (applied.sessions, applied.shards) = load_snapshot(&*fs, &*engine, &path, &meta)?;
                applied.last_applied = meta.last_log_id;
                applied.membership = meta.last_membership.clone();
            }
            covered.raise(meta.last_log_id);
            applied.current = Some(meta);
        }
        let store_index = applied.last_applied.map_or(0, |id| id.index);
        let last_session = applied.sessions.last_id();
        let shards = tokio::sync::watch::Sender::new(Arc::new(applied.shards.clone()));
        let machine = StateMachine {
            group,
            fs,
            dir: dir.to_path_buf(),
            engine,
            applied: Arc::new(Mutex::new(applied)),
            files: Arc::default(),
            store_index: Arc::new(AtomicU64::new(store_index)),
            since_snapshot: Arc::default(),
            last_session: Arc::new(AtomicU64::new(last_session)),
            shards: Arc::new(shards),
            pages: Arc::default(),
            covered,
        };
        let keep = machine
            .applied
            .lock()
            .current
            .as_ref()
            .map(|m| m.snapshot_id.clone());
        machine.remove_other_snapshots(keep.as_deref())?;
        // A snapshot whose arrival a crash cut short.
        let receiving = machine.receiving();
        match machine.fs.remove(&receiving) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&receiving, e));
            }
            _ => {}
        }
        Ok(machine)
    }

    /// See the `store_index` field; shared with the node.
    pub fn store_index(&self) -> Arc<AtomicU64> {
        self.store_index.clone()
    }

    /// See the `since_snapshot` field; shared with the node.
    pub fn since_snapshot(&self) -> Arc<AtomicU64> {
        self.since_snapshot.clone()
    }

    /// See the `last_session` field; shared with the node.
    pub fn last_session(&self) -> Arc<AtomicU64> {
        self.last_session.clone()
    }

    /// The sharding table as applied, from now on.
    pub fn shards(&self) -> tokio::sync::watch::Receiver<Arc<Shards>> {
        self.shards.subscribe()
    }

    /// See the `pages` field; shared with the raft port.
    pub fn pages(&self) -> Arc<RwLock<()>> {
        self.pages.clone()
    }

    /// Tells the node the table changed.
    fn publish_shards(&self, shards: &Shards) {
        self.shards.send_replace(Arc::new(shards.clone()));
    }

    /// Where a snapshot from the leader is written as it arrives (not named
    /// `snap-*`, so a build's clean-up never removes it).
    fn receiving(&self) -> PathBuf {
        self.dir.join("receiving.snap")
    }

    fn paths(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("snap-{id}.meta")),
            self.dir.join(format!("snap-{id}.db")),
        )
    }

    /// Removes snapshot files other than `keep`'s, and temp files. Called
    /// with the apply lock held (or before the machine is shared), so no
    /// build or install is writing meanwhile.
    fn remove_other_snapshots(&self, keep: Option<&str>) -> Result<(), Error> {
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let mut removed = false;
        for name in &names {
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix("snap-") else {
                continue;
            };
            let id = rest
                .trim_end_matches(".tmp")
                .trim_end_matches(".db")
                .trim_end_matches(".meta");
            if Some(id) != keep || rest.ends_with(".tmp") {
                let path = self.dir.join(name);
                match self.fs.remove(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&path, e)),
                }
            }
        }
        if removed {
            sync_dir(&*self.fs, &self.dir)?;
        }
        Ok(())
    }

    /// Writes `meta` and then the snapshot bytes, durably, under `meta`'s id.
    fn write_files(
        &self,
        meta: &SnapshotMeta<u64, Member>,
        data: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (meta_path, db_path) = self.paths(&meta.snapshot_id);
        let mut buf = Vec::new();
        let body = kvstore_client::codec::encode(meta)
            .map_err(|e| Error::corrupt(&meta_path, 0, e.to_string()))?;
        record::append(&mut buf, &body);
        let tmp = snapshot::temp_path(&meta_path);
        write_synced(&*self.fs, &tmp, &buf)?;
        self.fs
            .rename(&tmp, &meta_path)
            .map_err(|e| Error::io(&meta_path, e))?;
        data(&db_path)?;
        sync_dir(&*self.fs, &self.dir)
    }

    /// Applies `entries` as one batch, noted with the last one's log id:
    /// each write resolved against the state the writes before it leave
    /// (an overlay, as the commit thread resolves a batch). One batch, so
    /// the engine holds all of them or none, and the note says which (a
    /// batch per entry, unsynced, could lose one in the middle of fjall's
    /// journal: its issue #311). The note also holds the client sessions
    /// with the outcomes of this batch's session writes, and the sharding
    /// table. One outcome per entry; only normal entries carry writes.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<Vec<Outcomes>, Error> {
        let mut applied = self.applied.lock();
        let mut view = BatchView::new(&*self.engine);
        let mut steps: Vec<Vec<Step>> = Vec::new();
        // Each entry's index: the revision of its writes.
        let mut indexes = Vec::new();
        // Where in this batch each session write was first seen.
        let mut seen = std::collections::HashMap::new();
        let mut position = 0;
        let mut reshaped = false;
        for entry in entries {
            self.store_index
                .fetch_max(entry.log_id.index, Ordering::Release);
            (self.since_snapshot).fetch_add(super::entry_size(&entry) as u64, Ordering::Relaxed);
            applied.last_applied = Some(entry.log_id);
            let changes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => batch.0,
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            let mut entry_steps = Vec::with_capacity(changes.len());
            for change in changes {
                let step = match applied.shards.decide(change) {
                    Decided::Changed(outcome) => {
                        reshaped = true;
                        Step::Answer(outcome)
                    }
                    Decided::Refused(refusal) => Step::Answer(refusal),
                    Decided::Apply(change) => step(
                        change,
                        (&mut applied.sessions, self.group != super::FIRST_GROUP),
                        &mut view,
                        &mut seen,
                        (position, entry.log_id.index),
                    ),
                };
                entry_steps.push(step);
                position += 1;
            }
            steps.push(entry_steps);
            indexes.push(entry.log_id.index);
        }
        drop(view);
        (self.last_session).store(applied.sessions.last_id(), Ordering::Release);
        let Some(last) = applied.last_applied.filter(|_| !steps.is_empty()) else {
            return Ok(Vec::new());
        };
        let all: Vec<(&Resolved, u64)> = (steps.iter().zip(indexes))
            .flat_map(|(entry, index)| {
                entry.iter().filter_map(move |step| match step {
                    Step::Resolve(resolved, _) => Some((resolved, index)),
                    _ => None,
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        let keeps_notes = self.engine.keeps_notes();
        let mut note = |done: &[Option<Done>]| {
            outcomes = settle(&steps, done, &mut applied.sessions);
            match keeps_notes {
                true => Note::of(&applied).encode(),
                false => Ok(Vec::new()),
            }
        };
        {
            let _pages = self.pages.write();
            (self.engine).apply_resolved(&all, last.index, Some(&mut note))?;
            if reshaped {
                self.publish_shards(&applied.shards);
            }
        }
        let mut outcomes = outcomes.into_iter();
        Ok((steps.iter())
            .map(|entry| Outcomes(outcomes.by_ref().take(entry.len()).collect()))
            .collect())
    }
}

/// What applying does with one write of an entry.
enum Step {
    /// Resolved against the batch's view; a session write's stamp, to
    /// record its outcome.
    Resolve(Resolved, Option<Stamp>),
    /// Answered without a write to the store: a session opened, a replay,
    /// a refusal.
    Answer(Outcome),
    /// The session write at this position of the batch, again.
    Again(usize),
}

/// The step of `change`, at `position` in the batch, in the entry of
/// `index` (its writes' revision); `adopt` as
/// [`Sessions::admit`] takes it.
fn step(
    change: Change,
    (sessions, adopt): (&mut Sessions, bool),
    view: &mut BatchView,
    seen: &mut std::collections::HashMap<(u64, u64), usize>,
    (position, index): (usize, u64),
) -> Step {
    let mut resolve = |change: Change, stamp| {
        view.resolving_at(index);
        let resolved = change.resolve(view);
        if let Some(op) = resolved.op() {
            view.record(op, index);
        }
        Step::Resolve(resolved, stamp)
    };
    match change {
        Change::OpenSession {
            time_ms,
            idle_ms,
            max_sessions,
        } => Step::Answer(sessions.open(time_ms, idle_ms, max_sessions as usize)),
        Change::Once { stamp, change } => {
            if let Some(first) = seen.get(&(stamp.session, stamp.seq)) {
                return Step::Again(*first);
            }
            match sessions.admit(&stamp, adopt) {
                Admit::Apply => {
                    seen.insert((stamp.session, stamp.seq), position);
                    resolve(*change, Some(stamp))
                }
                Admit::Replay(outcome) | Admit::Refuse(outcome) => Step::Answer(outcome),
            }
        }
        change => resolve(change, None),
    }
}

/// Every step's outcome, in order, from what the engine did for each
/// resolved write (`done`); each session write's outcome is recorded.
fn settle(steps: &[Vec<Step>], done: &[Option<Done>], sessions: &mut Sessions) -> Vec<Outcome> {
    let mut done = done.iter();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for step in steps.iter().flatten() {
        let outcome = match step {
            Step::Resolve(resolved, stamp) => {
                let outcome = Outcome::of(resolved, done.next().and_then(Option::as_ref));
                if let Some(stamp) = stamp {
                    sessions.record(stamp, outcome.clone());
                }
                outcome
            }
            Step::Answer(outcome) => outcome.clone(),
            Step::Again(first) => outcomes[*first].clone(),
        };
        outcomes.push(outcome);
    }
    outcomes
}

type Meta = SnapshotMeta<u64, Member>;

/// The newest snapshot in `dir`: its meta and its id.
fn newest_snapshot(fs: &dyn Fs, dir: &Path) -> Result<Option<(Meta, String)>, Error> {
    let mut newest: Option<(Meta, String)> = None;
    for name in &fs.list(dir).map_err(|e| Error::io(dir, e))? {
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("snap-"))
            .and_then(|n| n.strip_suffix(".db"))
        else {
            continue;
        };
        let Some(meta) = read_meta(fs, &dir.join(format!("snap-{id}.meta")))? else {
            continue;
        };
        if newest
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id < meta.last_log_id)
        {
            newest = Some((meta, id.to_string()));
        }
    }
    Ok(newest)
}

/// What a snapshot keeps beside the data (its state record): the client
/// sessions and the sharding table. Not written while both are empty.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tables {
    sessions: Sessions,
    shards: Shards,
}

/// [`Tables`] as written before groups could change nodes.
#[derive(Debug, Deserialize)]
struct TablesWithoutChanges {
    sessions: Sessions,
    shards: ShardsWithoutChanges,
}

/// [`Tables`] as written before the table kept the nodes' RESP addresses.
#[derive(Debug, Deserialize)]
struct TablesWithoutDoors {
    sessions: Sessions,
    shards: ShardsWithoutDoors,
}

impl Tables {
    /// The state record in `bytes`, in this format, as written before the
    /// nodes' RESP addresses, or before the sharding table (the sessions
    /// alone).
    fn decode(bytes: &[u8], path: &Path) -> Result<Tables, Error> {
        use kvstore_client::codec::decode;
        let without_doors = |bytes| {
            decode::<TablesWithoutDoors>(bytes).map(|old| Tables {
                sessions: old.sessions,
                shards: old.shards.into(),
            })
        };
        let without_changes = |bytes| {
            decode::<TablesWithoutChanges>(bytes).map(|old| Tables {
                sessions: old.sessions,
                shards: old.shards.into(),
            })
        };
        decode(bytes)
            .or_else(|_| without_changes(bytes))
            .or_else(|_| without_doors(bytes))
            .or_else(|_| {
                let sessions = decode(bytes)
                    .map_err(|e| Error::corrupt(path, 0, format!("client sessions: {e}")))?;
                Ok(Tables {
                    sessions,
                    shards: Shards::default(),
                })
            })
    }
}

/// Replaces `engine`'s state by the snapshot file at `path`, described by
/// `meta`; returns the client sessions and sharding table it holds.
fn load_snapshot(
    fs: &dyn Fs,
    engine: &dyn Engine,
    path: &Path,
    meta: &Meta,
) -> Result<(Sessions, Shards), Error> {
    let tables = match snapshot::read_state(fs, path)? {
        None => Tables::default(),
        Some(state) => Tables::decode(&state, path)?,
    };
    let note = Note {
        last_applied: &meta.last_log_id,
        membership: &meta.last_membership,
        sessions: &tables.sessions,
        shards: &tables.shards,
    };
    let index = meta.last_log_id.map_or(0, |id| id.index);
    engine.replace(fs, path, index, &note.encode()?)?;
    Ok((tables.sessions, tables.shards))
}

/// Whether `file` is the file named `path`.
async fn is_file_at(file: &tokio::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// A snapshot's file, opened to be sent in chunks. A newer snapshot may
/// remove its name meanwhile; the open file stays readable.
fn open_file(path: &Path) -> Result<Box<tokio::fs::File>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

fn read_meta(fs: &dyn Fs, path: &Path) -> Result<Option<SnapshotMeta<u64, Member>>, Error> {
    let data = match fs.read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    match record::read(&data, 0) {
        record::Read::Valid { body, .. } => kvstore_client::codec::decode(body)
            .map(Some)
            .map_err(|e| Error::corrupt(path, 0, e.to_string())),
        _ => Err(Error::corrupt(path, 0, "bad snapshot meta record")),
    }
}

impl StateMachine {
    /// Builds a snapshot of the state at `last_applied`, durable before it
    /// returns (see the module's doc).
    fn build(&self) -> Result<Snapshot<TypeConfig>, Error> {
        let _files = self.files.lock();
        let mut applied = self.applied.lock();
        applied.built += 1;
        let last = applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                std::process::id(),
                applied.built
            ),
        };
        let mut view = self.engine.view()?;
        // What the snapshot covers; entries applied during the copy count
        // towards the next one.
        let covered = self.since_snapshot.load(Ordering::Relaxed);
        let tables = match applied.sessions.is_empty() && applied.shards == Shards::default() {
            true => Vec::new(),
            false => kvstore_client::codec::encode(&Tables {
                sessions: applied.sessions.clone(),
                shards: applied.shards.clone(),
            })
            .map_err(|e| Error::StorageFailed(format!("client sessions: {e}")))?,
        };
        // A fuzzy copy (the memory engine's) is exact only while applies
        // wait; one instant's view needs no lock.
        let held = if view.fuzzy() {
            Some(applied)
        } else {
            drop(applied);
            None
        };
        // The engine holds at least what the view holds from here on, so
        // openraft may purge the log the snapshot covers.
        self.engine.persist()?;
        self.write_files(&meta, |path| {
            snapshot::write_with_state(&*self.fs, path, &mut *view, &tables).map(|_| ())
        })?;
        let (_, db_path) = self.paths(&meta.snapshot_id);
        let file = open_file(&db_path)?;
        self.since_snapshot.fetch_sub(covered, Ordering::Relaxed);
        let mut applied = held.unwrap_or_else(|| self.applied.lock());
        // An install (newer, or a snapshot openraft already has) may have
        // come in while the view was copied.
        let newer = (applied.current.as_ref()).is_none_or(|c| c.last_log_id < meta.last_log_id);
        if newer {
            applied.current = Some(meta.clone());
            self.covered.raise(meta.last_log_id);
        }
        let keep = applied.current.as_ref().map(|c| c.snapshot_id.clone());
        // Our files go too if they are not the newest; the open file stays
        // readable.
        self.remove_other_snapshots(keep.as_deref())?;
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }

    /// Renames the received snapshot at `received` into place, then loads
    /// it into the engine (readers see it whole or not at all); a snapshot
    /// that fails to load is removed again.
    fn install(&self, meta: &SnapshotMeta<u64, Member>, received: &Path) -> Result<(), Error> {
        let _files = self.files.lock();
        let mut applied = self.applied.lock();
        // Before readers may see the new state (an index that covers what
        // they read); a failed install stops the node.
        if let Some(last) = meta.last_log_id {
            self.store_index.fetch_max(last.index, Ordering::Release);
        }
        // Files first: a node killed while the engine loads it then loads
        // it again at start (it is newer than what the engine kept).
        self.write_files(meta, |path| {
            (self.fs.rename(received, path)).map_err(|e| Error::io(path, e))
        })?;
        let (_, db_path) = self.paths(&meta.snapshot_id);
        let pages = self.pages.clone();
        let pages = pages.write();
        let (sessions, shards) = match load_snapshot(&*self.fs, &*self.engine, &db_path, meta) {
            Ok(loaded) => loaded,
            Err(e) => {
                let keep = applied.current.as_ref().map(|c| c.snapshot_id.clone());
                self.remove_other_snapshots(keep.as_deref())?;
                return Err(e);
            }
        };
        self.covered.raise(meta.last_log_id);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.sessions = sessions;
        (self.last_session).store(applied.sessions.last_id(), Ordering::Release);
        self.publish_shards(&shards);
        drop(pages);
        applied.shards = shards;
        applied.current = Some(meta.clone());
        self.since_snapshot.store(0, Ordering::Relaxed);
        self.remove_other_snapshots(Some(&meta.snapshot_id))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        tokio::task::block_in_place(|| self.build()).map_err(storage_io)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        let applied = self.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    /// One outcome per entry; only normal entries carry writes. (Off the
    /// runtime's async threads: it may wait for a snapshot's copy.)
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        tokio::task::block_in_place(|| self.apply_entries(entries)).map_err(storage_io)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    /// A new, empty `receiving.snap` (one arrives at a time).
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let path = self.receiving();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| storage_io(Error::io(&path, e)))?;
        Ok(Box::new(file))
    }

    /// Makes the received file durable, loads it into the engine, and
    /// renames it into place. A bad snapshot fails the load and leaves the
    /// engine and the files as they were.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let received_path = self.receiving();
        if !is_file_at(&snapshot, &received_path).await {
            // Data that did not arrive through `begin_receiving_snapshot`.
            let mut copy = self.begin_receiving_snapshot().await?;
            let copied = async {
                snapshot.seek(std::io::SeekFrom::Start(0)).await?;
                tokio::io::copy(&mut snapshot, &mut copy).await
            };
            (copied.await).map_err(|e| storage_io(Error::io(&received_path, e)))?;
            snapshot = copy;
        }
        let synced = snapshot.sync_all().await;
        synced.map_err(|e| storage_io(Error::io(&received_path, e)))?;
        drop(snapshot);
        tokio::task::block_in_place(|| self.install(meta, &received_path)).map_err(storage_io)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        tokio::task::block_in_place(|| {
            // Under the lock: no build or install replaces the file meanwhile.
            let applied = self.applied.lock();
            let Some(meta) = applied.current.clone() else {
                return Ok::<_, Error>(None);
            };
            let (_, db_path) = self.paths(&meta.snapshot_id);
            let snapshot = open_file(&db_path)?;
            Ok(Some(Snapshot { meta, snapshot }))
        })
        .map_err(storage_io)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::engine::disk::Disk;
    use crate::engine::memory::Memory;
    use crate::raft::shards::SlotState;
    use crate::raft::Batch;
    use crate::storage::change::Change;
    use crate::storage::fs::RealFs;
    use crate::storage::op::WriteOp;
    use crate::storage::store::Store;
    use kvstore_client::ErrorCode;

    fn disk(dir: &Path) -> Arc<dyn Engine> {
        Arc::new(Disk::open(&dir.join("fjall"), 1 << 20).unwrap())
    }

    fn memory() -> Arc<dyn Engine> {
        Arc::new(Memory::new(Arc::new(Store::new(4)), Arc::default()))
    }

    fn open(dir: &Path, engine: Arc<dyn Engine>) -> StateMachine {
        open_group(dir, crate::raft::FIRST_GROUP, engine)
    }

    fn open_group(dir: &Path, group: GroupId, engine: Arc<dyn Engine>) -> StateMachine {
        StateMachine::open(Arc::new(RealFs), dir, group, engine, Covered::default()).unwrap()
    }

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64, changes: Vec<Change>) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Batch(changes)),
        }
    }

    fn incr(key: &'static str) -> Change {
        Change::Incr {
            key: Bytes::from_static(key.as_bytes()),
            by: 1,
        }
    }

    fn set(key: &'static str, value: &'static str) -> Change {
        Change::Write(WriteOp::Set {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        })
    }

    fn get(machine: &StateMachine, key: &str) -> Option<String> {
        let value = machine.engine.get(key.as_bytes()).unwrap();
        value.map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    fn last_applied(machine: &StateMachine) -> Option<u64> {
        machine.applied.lock().last_applied.map(|id| id.index)
    }

    #[test]
    fn the_disk_engine_keeps_each_entry_applied_exactly_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let members = Membership::<u64, Member>::new(vec![[1].into()], None);
        {
            let machine = open(dir.path(), disk(dir.path()));
            let entries = vec![
                entry(1, vec![incr("n")]),
                Entry {
                    log_id: log_id(2),
                    payload: EntryPayload::Membership(members.clone()),
                },
                entry(3, vec![incr("n"), incr("n")]),
            ];
            machine.apply_entries(entries).unwrap();
        }
        let machine = open(dir.path(), disk(dir.path()));
        // openraft applies again only what follows this: `Incr` is not
        // idempotent, so the note must be exactly the data's.
        assert_eq!(last_applied(&machine), Some(3));
        assert_eq!(get(&machine, "n").as_deref(), Some("3"));
        let membership = machine.applied.lock().membership.clone();
        assert_eq!(membership.log_id(), &Some(log_id(2)));
        assert_eq!(membership.membership(), &members);
    }

    #[test]
    fn a_snapshot_newer_than_the_disk_engine_s_note_is_loaded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let machine = open(dir.path(), memory());
            let entries = vec![entry(1, vec![set("a", "1")]), entry(2, vec![incr("n")])];
            machine.apply_entries(entries).unwrap();
            machine.build().unwrap();
        }
        // A node that ran with the memory engine restarts with the disk
        // engine: it starts from the snapshot, which it now keeps.
        for _ in 0..2 {
            let machine = open(dir.path(), disk(dir.path()));
            assert_eq!(last_applied(&machine), Some(2));
            assert_eq!(get(&machine, "a").as_deref(), Some("1"));
            assert_eq!(get(&machine, "n").as_deref(), Some("1"));
        }
    }

    #[test]
    fn an_installed_snapshot_replaces_the_disk_engine_s_data_whole_and_for_good() {
        let (leader_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = open(leader_dir.path(), memory());
        let entries = vec![entry(1, vec![set("x", "1")]), entry(2, vec![set("y", "2")])];
        leader.apply_entries(entries).unwrap();
        let built = leader.build().unwrap();
        {
            let machine = open(dir.path(), disk(dir.path()));
            machine
                .apply_entries(vec![entry(1, vec![set("z", "9")])])
                .unwrap();
            let received = machine.receiving();
            std::fs::copy(leader.paths(&built.meta.snapshot_id).1, &received).unwrap();
            machine.install(&built.meta, &received).unwrap();
            assert_eq!(get(&machine, "z"), None);
            assert_eq!(get(&machine, "y").as_deref(), Some("2"));
            assert_eq!(machine.engine.len(), 2);
        }
        let machine = open(dir.path(), disk(dir.path()));
        assert_eq!(last_applied(&machine), Some(2));
        assert_eq!(get(&machine, "x").as_deref(), Some("1"));
        assert_eq!(get(&machine, "z"), None);
        assert_eq!(machine.engine.len(), 2);
    }

    fn open_session() -> Change {
        Change::OpenSession {
            time_ms: 1_000,
            idle_ms: 60_000,
            max_sessions: 10,
        }
    }

    fn once(session: u64, seq: u64, change: Change) -> Change {
        let stamp = Stamp {
            session,
            seq,
            acked: 0,
            time_ms: 2_000,
            idle_ms: 60_000,
        };
        let change = Box::new(change);
        Change::Once { stamp, change }
    }

    fn outcomes(machine: &StateMachine, entries: Vec<Entry<TypeConfig>>) -> Vec<Outcome> {
        let applied = machine.apply_entries(entries).unwrap();
        applied.into_iter().flat_map(|o| o.0).collect()
    }

    #[test]
    fn a_session_write_seen_again_is_applied_once_across_restarts_and_snapshots() {
        for on_disk in [false, true] {
            let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let make = |dir: &Path| if on_disk { disk(dir) } else { memory() };
            let machine = open(dir.path(), make(dir.path()));
            assert_eq!(
                outcomes(&machine, vec![entry(1, vec![open_session()])]),
                [Outcome::Int(1)]
            );
            // Twice in one entry, then resent in a later one (as to a new
            // leader), beside a write outside any session.
            let entries = vec![
                entry(2, vec![once(1, 1, incr("n")), once(1, 1, incr("n"))]),
                entry(3, vec![once(1, 1, incr("n")), incr("n")]),
            ];
            let answers = [1, 1, 1, 2].map(Outcome::Int);
            assert_eq!(outcomes(&machine, entries), answers);
            assert_eq!(get(&machine, "n").as_deref(), Some("2"));

            // A follower that installs the snapshot knows the session.
            let built = machine.build().unwrap();
            let follower = open(other.path(), make(other.path()));
            let received = follower.receiving();
            std::fs::copy(machine.paths(&built.meta.snapshot_id).1, &received).unwrap();
            follower.install(&built.meta, &received).unwrap();
            let resent = vec![entry(4, vec![once(1, 1, incr("n"))])];
            assert_eq!(outcomes(&follower, resent), [Outcome::Int(1)]);
            assert_eq!(get(&follower, "n").as_deref(), Some("2"));

            // So does the node itself after a restart (its snapshot, or the
            // disk engine's note).
            drop(machine);
            let machine = open(dir.path(), make(dir.path()));
            let resent = vec![entry(4, vec![once(1, 1, incr("n"))])];
            assert_eq!(outcomes(&machine, resent), [Outcome::Int(1)]);
            assert_eq!(get(&machine, "n").as_deref(), Some("2"));
        }
    }
    fn add_group(nodes: &[u64]) -> Change {
        let members = nodes.iter().map(|id| (*id, Member::default()));
        Change::AddGroup {
            members: members.collect(),
        }
    }

    fn groups(machine: &StateMachine) -> Vec<u64> {
        machine.shards().borrow().groups().keys().copied().collect()
    }

    #[test]
    fn the_sharding_table_survives_restarts_and_travels_in_snapshots() {
        for on_disk in [false, true] {
            let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let make = |dir: &Path| if on_disk { disk(dir) } else { memory() };
            let machine = open(dir.path(), make(dir.path()));
            let shards = machine.shards();
            let entries = vec![entry(1, vec![add_group(&[1, 2, 3]), add_group(&[2])])];
            assert_eq!(outcomes(&machine, entries), [2, 3].map(Outcome::Int));
            assert!(shards.has_changed().unwrap(), "the node is told");
            assert_eq!(groups(&machine), [2, 3]);

            let built = machine.build().unwrap();
            let follower = open(other.path(), make(other.path()));
            let received = follower.receiving();
            std::fs::copy(machine.paths(&built.meta.snapshot_id).1, &received).unwrap();
            follower.install(&built.meta, &received).unwrap();
            assert_eq!(groups(&follower), [2, 3]);

            drop(machine);
            let machine = open(dir.path(), make(dir.path()));
            assert_eq!(groups(&machine), [2, 3]);
            let next = vec![entry(2, vec![add_group(&[1])])];
            assert_eq!(outcomes(&machine, next), [Outcome::Int(4)]);
        }
    }
    #[test]
    fn notes_and_snapshot_tables_written_before_the_sharding_table_still_load() {
        #[derive(Serialize)]
        struct OldNote {
            last_applied: Option<LogId<u64>>,
            membership: StoredMembership<u64, Member>,
            sessions: Sessions,
        }
        let mut sessions = Sessions::default();
        sessions.open(1_000, 60_000, 10);
        let old = OldNote {
            last_applied: Some(log_id(7)),
            membership: StoredMembership::default(),
            sessions: sessions.clone(),
        };
        let note = KeptNote::decode(&kvstore_client::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(
            (note.last_applied, &note.sessions),
            (Some(log_id(7)), &sessions)
        );
        assert_eq!(note.shards, Shards::default());

        let state = kvstore_client::codec::encode(&sessions).unwrap();
        let tables = Tables::decode(&state, Path::new("snap")).unwrap();
        assert_eq!(
            (tables.sessions, tables.shards),
            (sessions, Shards::default())
        );
    }

    /// Checks that a note and a snapshot's tables holding `shards`, less
    /// their last `cut` bytes (an older layout), load as `shards`.
    fn loads_from_old_layout(shards: &Shards, cut: usize) {
        let old = |new: Vec<u8>| new[..new.len() - cut].to_vec();
        let applied = Applied {
            last_applied: Some(log_id(9)),
            shards: shards.clone(),
            ..Applied::default()
        };
        let note = old(Note::of(&applied).encode().unwrap());
        assert_eq!(&KeptNote::decode(&note).unwrap().shards, shards);
        let tables = Tables {
            sessions: Sessions::default(),
            shards: shards.clone(),
        };
        let state = old(kvstore_client::codec::encode(&tables).unwrap());
        let decoded = Tables::decode(&state, Path::new("snap")).unwrap();
        assert_eq!(&decoded.shards, shards);
    }

    #[test]
    fn notes_and_snapshot_tables_written_before_the_nodes_doors_still_load() {
        let mut shards = Shards::default();
        let Decided::Changed(Outcome::Int(2)) = shards.decide(add_group(&[1, 2])) else {
            panic!("group 2 not added");
        };
        // The old layout is the new one less the doors and the changed
        // groups: an empty map's and set's lengths, 16 bytes, at the end.
        loads_from_old_layout(&shards, 16);

        // And a table with doors keeps them.
        let door = Change::Doors {
            node: 2,
            resp: Some("127.0.0.1:6379".into()),
        };
        assert!(matches!(
            shards.decide(door),
            Decided::Changed(Outcome::Stored)
        ));
        let applied = Applied {
            shards: shards.clone(),
            ..Applied::default()
        };
        let note = KeptNote::decode(&Note::of(&applied).encode().unwrap()).unwrap();
        assert_eq!(note.shards.door(2), Some("127.0.0.1:6379"));
    }

    #[test]
    fn notes_and_snapshot_tables_written_before_groups_changed_nodes_still_load() {
        let mut shards = Shards::default();
        for change in [
            add_group(&[1, 2]),
            Change::Doors {
                node: 2,
                resp: Some("127.0.0.1:6379".into()),
            },
        ] {
            assert!(matches!(shards.decide(change), Decided::Changed(_)));
        }
        // The old layout is the new one less the changed groups: an empty
        // set's length, 8 bytes, at the very end.
        loads_from_old_layout(&shards, 8);
        assert!(shards.first_voters(2).is_some());

        // A group whose nodes changed keeps that through a note.
        let change = Change::Replicas {
            group: 2,
            expected: [(1, Member::default()), (2, Member::default())].into(),
            members: [(3, Member::default())].into(),
        };
        assert!(matches!(
            shards.decide(change),
            Decided::Changed(Outcome::Stored)
        ));
        let applied = Applied {
            shards,
            ..Applied::default()
        };
        let note = KeptNote::decode(&Note::of(&applied).encode().unwrap()).unwrap();
        assert_eq!(note.shards.first_voters(2), None);
        let on: Vec<_> = note.shards.groups_of(3).map(|(id, _)| id).collect();
        assert_eq!(on, [2]);
    }

    fn set_slots(first: u16, last: u16, state: SlotState) -> Change {
        Change::SetSlots { first, last, state }
    }

    fn code(outcome: &Outcome) -> Option<ErrorCode> {
        match outcome {
            Outcome::Rejected { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }

    #[test]
    fn a_group_writes_only_the_slots_its_log_gave_it_across_restarts() {
        for on_disk in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let make = |dir: &Path| if on_disk { disk(dir) } else { memory() };
            let machine = open_group(dir.path(), 2, make(dir.path()));
            let slot = kvstore_client::slot::slot_of(b"n");
            let entries = || {
                vec![
                    entry(1, vec![incr("n")]),
                    entry(
                        2,
                        vec![set_slots(slot, slot, SlotState::Serving), incr("n")],
                    ),
                    entry(3, vec![set_slots(slot, slot, SlotState::Frozen), incr("n")]),
                ]
            };
            let answers: Vec<_> = outcomes(&machine, entries()).iter().map(code).collect();
            let (moved, tried) = (Some(ErrorCode::Moved), Some(ErrorCode::TryAgain));
            assert_eq!(answers, [moved, None, None, None, tried]);
            assert_eq!(get(&machine, "n").as_deref(), Some("1"));
            // After a restart the disk engine's note has the slot frozen;
            // the memory engine gets there as openraft applies the log again.
            drop(machine);
            let machine = open_group(dir.path(), 2, make(dir.path()));
            if !on_disk {
                outcomes(&machine, entries());
            }
            let again = outcomes(&machine, vec![entry(4, vec![incr("n")])]);
            assert_eq!(code(&again[0]), tried, "on disk: {on_disk}");
            assert_eq!(get(&machine, "n").as_deref(), Some("1"));
        }
    }
}
