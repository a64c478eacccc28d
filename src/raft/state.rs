//! The state machine of one node: openraft's `RaftStateMachine` over the
//! server's memory engine (`crate::engine::memory`), with snapshots in the server's own snapshot format
//! (`storage::snapshot`).
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
//! the log again from the last snapshot. So a snapshot must be durable before
//! openraft is told about it (it then purges the log it covers): both files
//! are written to a temp name, fsynced, renamed, and the directory fsynced,
//! `.meta` first. At start the newest `.db` with its `.meta` is loaded;
//! anything else is removed.
//!
//! While a snapshot is copied, applies wait (one lock): the copy is then
//! exactly the state at `last_applied`. That stalls writes for the time of the
//! copy; a large store would want the backup tee instead (see
//! docs/replication.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use tokio::io::AsyncSeekExt;

use super::{Member, Outcome, Outcomes, TypeConfig};
use crate::engine::memory::Memory;
use crate::engine::Engine;
use crate::error::Error;
use crate::storage::change::{BatchView, Change, Resolved};
use crate::storage::fs::Fs;
use crate::storage::store::Store;
use crate::storage::{record, snapshot, sync_dir, write_synced};

/// What the state machine has taken in, guarded by the apply lock.
#[derive(Debug, Default)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    /// The durable snapshot, if any.
    current: Option<SnapshotMeta<u64, Member>>,
    /// Makes snapshot ids unique within the process.
    built: u64,
}

/// The state machine. Cheap to clone: the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachine {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// The engine the doors read: applying an entry makes its writes
    /// visible.
    engine: Arc<Memory>,
    /// Held for each apply and for a snapshot's copy.
    applied: Arc<Mutex<Applied>>,
    /// The index of the newest entry (or snapshot) whose writes may be in
    /// the store: set before it changes the store, so a reader that loads
    /// it after reading the store gets an index that covers what it read.
    /// openraft's metrics publish the applied index later than that, so
    /// replies carry this one (session reads, `cmd::indexed`).
    store_index: Arc<AtomicU64>,
}

fn storage_io(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine in `dir`, loading the newest snapshot into
    /// `engine` (which must be empty).
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, engine: Arc<Memory>) -> Result<StateMachine, Error> {
        fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut applied = Applied::default();
        let names = fs.list(dir).map_err(|e| Error::io(dir, e))?;
        let mut newest: Option<(SnapshotMeta<u64, Member>, String)> = None;
        for name in &names {
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("snap-"))
                .and_then(|n| n.strip_suffix(".db"))
            else {
                continue;
            };
            let Some(meta) = read_meta(&*fs, &dir.join(format!("snap-{id}.meta")))? else {
                continue;
            };
            if newest
                .as_ref()
                .is_none_or(|(m, _)| m.last_log_id < meta.last_log_id)
            {
                newest = Some((meta, id.to_string()));
            }
        }
        if let Some((meta, id)) = newest {
            snapshot::load(&*fs, &dir.join(format!("snap-{id}.db")), engine.store())?;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.current = Some(meta);
        }
        let store_index = applied.last_applied.map_or(0, |id| id.index);
        let machine = StateMachine {
            fs,
            dir: dir.to_path_buf(),
            engine,
            applied: Arc::new(Mutex::new(applied)),
            store_index: Arc::new(AtomicU64::new(store_index)),
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

    /// Applies one entry's writes at its `index`: each resolved against the
    /// state the writes before it leave (an overlay, as the commit thread
    /// resolves a batch), then all applied to the engine as one batch.
    fn apply_batch(&self, changes: Vec<Change>, index: u64) -> Result<Outcomes, Error> {
        let mut view = BatchView::new(&*self.engine);
        let resolved: Vec<Resolved> = changes
            .into_iter()
            .map(|change| {
                let resolved = change.resolve(&view);
                if let Some(op) = resolved.op() {
                    view.record(op);
                }
                resolved
            })
            .collect();
        drop(view);
        let applied =
            self.engine
                .apply_resolved(&resolved.iter().collect::<Vec<_>>(), index, None)?;
        Ok(Outcomes(
            resolved
                .into_iter()
                .zip(applied)
                .map(|(resolved, applied)| Outcome::from_result(resolved.outcome(applied)))
                .collect(),
        ))
    }
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

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Copies the store while applies wait; durable before it returns.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (meta, snapshot) = tokio::task::block_in_place(|| {
            // Held to the end: installs, reads of the current snapshot and
            // removals of old ones wait for this one to be complete.
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
            // The memory engine's view is a fuzzy copy: exact here because
            // applies wait for the apply lock held meanwhile.
            let mut view = self.engine.view()?;
            self.write_files(&meta, |path| {
                snapshot::write(&*self.fs, path, &mut *view, 0, 0, || Ok(())).map(|_| ())
            })?;
            applied.current = Some(meta.clone());
            let (_, db_path) = self.paths(&meta.snapshot_id);
            let file = open_file(&db_path)?;
            self.remove_other_snapshots(Some(&meta.snapshot_id))?;
            Ok::<_, Error>((meta, file))
        })
        .map_err(storage_io)?;
        Ok(Snapshot { meta, snapshot })
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
        tokio::task::block_in_place(|| {
            let mut out = Vec::new();
            let mut applied = self.applied.lock();
            for entry in entries {
                self.store_index
                    .fetch_max(entry.log_id.index, Ordering::Release);
                applied.last_applied = Some(entry.log_id);
                out.push(match entry.payload {
                    EntryPayload::Blank => Outcomes::default(),
                    EntryPayload::Normal(batch) => self.apply_batch(batch.0, entry.log_id.index)?,
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Outcomes::default()
                    }
                });
            }
            Ok::<_, Error>(out)
        })
        .map_err(storage_io)
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

    /// Makes the received file durable, checks it by loading it into a
    /// scratch store, renames it into place, then swaps the scratch store
    /// in. A bad snapshot fails here and leaves the store and the files as
    /// they were.
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
        tokio::task::block_in_place(|| {
            let mut applied = self.applied.lock();
            let received = Store::new(self.engine.store().shard_count());
            snapshot::load(&*self.fs, &received_path, &received)?
                .ok_or_else(|| Error::io(&received_path, std::io::ErrorKind::NotFound.into()))?;
            self.write_files(meta, |path| {
                (self.fs.rename(&received_path, path)).map_err(|e| Error::io(path, e))
            })?;
            // In one step: a follower read never sees the store half
            // replaced, or empty.
            if let Some(last) = meta.last_log_id {
                self.store_index.fetch_max(last.index, Ordering::Release);
            }
            self.engine.store().replace_with(received);
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.current = Some(meta.clone());
            self.remove_other_snapshots(Some(&meta.snapshot_id))
        })
        .map_err(storage_io)
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
