//! Storage: the in-memory [`store::Store`], the write-ahead log ([`wal`]), the
//! snapshot file ([`snapshot`]), and [`open`], which recovers all three at
//! start.
//!
//! Files for the data path `kvstore.db`:
//! - `kvstore.db`: the latest snapshot (absent until the first one).
//! - `kvstore.db-wal/NNNNNNNNNNNNNNNNNNNN.wal`: log segments, oldest first.
//! - `kvstore.db-wal/LOCK`: held (flock) while a server uses the data, so two
//!   servers never write the same log.
//! - `kvstore.db-wal/ENGINE`: the engine the data belongs to (`memory` or
//!   `disk`); data from before the file existed is the memory engine's.
//! - `kvstore.db-fjall/`: the disk engine's database (`--engine disk`; no
//!   snapshot file then).
//!
//! Nothing here is async: these are blocking file operations, run at start or
//! on the group-commit and snapshot threads, never on the tokio workers.

pub mod appender;
pub mod change;
pub mod clock;
pub mod entry;
pub mod fs;
pub mod op;
pub mod record;
pub mod simfs;
pub mod snapshot;
pub mod store;
pub mod wal;

use std::any::Any;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::config::EngineKind;
use crate::engine::disk::Disk;
use crate::engine::{Checkpoint, Engine, Revised};
use crate::error::Error;
use crate::feed::{self, Feed};
use fs::Fs;
use snapshot::SnapshotInfo;
use store::Store;

/// `fsync` of a directory: makes the creation, rename or removal of the
/// entries in it durable.
pub fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<(), Error> {
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Creates `path` holding `bytes`, synced (`fsync`) before this returns. Not
/// yet durable by name: rename it into place and [`sync_dir`].
pub fn write_synced(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e| Error::io(path, e);
    let mut file = fs.create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Opens the data at `data` like [`open`], after filling it from the backup
/// (or snapshot) file at `backup`: every record's checksum and the footer
/// are checked while it loads, so a damaged or cut file is refused, naming
/// the file and the offset. The data must hold nothing yet: no snapshot and
/// no log record. The restored contents are written as the data's snapshot
/// (synced, renamed, directory synced) before this returns, so a crash
/// after it keeps them.
pub fn restore(fs: &dyn Fs, backup: &Path, data: &Path, shards: usize) -> Result<Recovered, Error> {
    let started = std::time::Instant::now();
    let mut recovered = open(fs, data, shards)?;
    if recovered.snapshot.is_some() || recovered.last_seq > 0 || !recovered.store.is_empty() {
        return Err(not_empty(data));
    }
    let loaded = snapshot::load(fs, backup, &recovered.store)?
        .ok_or_else(|| Error::io(backup, std::io::ErrorKind::NotFound.into()))?;
    let written = snapshot::write(
        fs,
        data,
        &mut &*recovered.store,
        recovered.segment.id(),
        recovered.last_seq + 1,
        || Ok(()),
    )?;
    tracing::info!(
        backup = %backup.display(),
        keys = written.entries,
        ops_replayed = loaded.ops,
        ms = started.elapsed().as_millis() as u64,
        "restored"
    );
    recovered.snapshot = Some(written);
    Ok(recovered)
}

/// `--restore`'s error for data that is not empty.
fn not_empty(data: &Path) -> Error {
    Error::Config(format!(
        "--restore: {} already holds data; restore only into an empty data path (move the old data away, or drop --restore to start from it)",
        data.display()
    ))
}

/// Everything recovery found.
pub struct Recovered {
    pub store: Arc<Store>,
    /// The log segment to append to, after its last valid record.
    pub segment: wal::Segment,
    /// The last sequence number in the log (0 if it is empty).
    pub last_seq: u64,
    /// The snapshot that was loaded, if any.
    pub snapshot: Option<SnapshotInfo>,
    /// Log records replayed on top of it.
    pub replayed: u64,
    /// Held for as long as the server runs: the lock on the data.
    pub lock: Box<dyn Any + Send>,
}

/// Takes the lock on the data at `data` (creating its log directory if
/// need be) and checks that the data belongs to `engine`, recording that
/// it does if the data is new.
fn lock_data(fs: &dyn Fs, data: &Path, engine: EngineKind) -> Result<Box<dyn Any + Send>, Error> {
    let dir = wal::dir_for(data);
    if !fs.exists(&dir) {
        fs.create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(fs, snapshot::parent_dir(data))?;
    }
    let lock_path = dir.join("LOCK");
    let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked(data.to_path_buf()),
        _ => Error::io(&lock_path, e),
    })?;
    let marker = dir.join("ENGINE");
    let recorded = match fs.read(&marker) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&marker, e)),
    };
    // No name: data made before the file existed, if any, is the memory
    // engine's.
    let made_by = match recorded.as_str() {
        "" if fs.exists(data) || !wal::list_segments(fs, &dir)?.is_empty() => Some("memory"),
        "" => None,
        name => Some(name),
    };
    if let Some(name) = made_by.filter(|&name| name != engine.name()) {
        return Err(Error::Config(format!(
            "the data at {} belongs to the {name} engine: start with --engine {name}, or move the data away to start afresh with --engine {}",
            data.display(),
            engine.name()
        )));
    }
    if recorded.is_empty() {
        // By rename, so that a crash leaves the whole name or none.
        let tmp = dir.join("ENGINE.tmp");
        write_synced(fs, &tmp, format!("{}\n", engine.name()).as_bytes())?;
        fs.rename(&tmp, &marker)
            .map_err(|e| Error::io(&marker, e))?;
        sync_dir(fs, &dir)?;
    }
    Ok(lock)
}

/// Opens the data at `data`: takes its lock, loads the snapshot, replays the
/// log after it, and drops files a finished snapshot made obsolete.
pub fn open(fs: &dyn Fs, data: &Path, shards: usize) -> Result<Recovered, Error> {
    open_watched(fs, data, shards, None)
}

/// [`open`], publishing what the log replays to `feed` (it starts where the
/// snapshot ends): watches resume across a restart.
pub fn open_watched(
    fs: &dyn Fs,
    data: &Path,
    shards: usize,
    feed: Option<&Feed>,
) -> Result<Recovered, Error> {
    let dir = wal::dir_for(data);
    let lock = lock_data(fs, data, EngineKind::Memory)?;
    let tmp = snapshot::temp_path(data);
    if fs.exists(&tmp) {
        tracing::info!(path = %tmp.display(), "removing an unfinished snapshot");
        fs.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }

    let started = std::time::Instant::now();
    let store = Arc::new(Store::new(shards));
    let snapshot = snapshot::load(fs, data, &store)?;
    let snapshot_ms = started.elapsed().as_millis() as u64;
    let segments = wal::list_segments(fs, &dir)?;
    let (first, first_seq) = match snapshot {
        Some(info) => (info.next_segment, info.next_seq),
        None => match segments.first() {
            Some(&oldest) if oldest > 1 => {
                return Err(Error::corrupt(
                    data,
                    0,
                    format!("the snapshot is missing, but the log starts at segment {oldest}: writes before it would be lost"),
                ));
            }
            _ => (1, 1),
        },
    };
    for &old in segments.iter().filter(|&&id| id < first) {
        wal::remove_segment(fs, &dir, old)?;
    }
    if let Some(feed) = feed {
        feed.start_at(first_seq - 1);
    }
    let mut sorted = SortedReplay::new(&store, feed.filter(|f| f.keeps_history()));
    let mut replay = wal::replay(fs, &dir, first, first_seq, |op, seq| sorted.push(op, seq))?;
    sorted.flush();
    if let Some(feed) = feed {
        feed.replayed_to(replay.last_seq.unwrap_or(0));
    }
    sync_replayed(&dir, &mut replay)?;
    tracing::info!(
        data = %data.display(),
        snapshot_entries = snapshot.map(|s| s.entries),
        snapshot_ms,
        log_records = replay.records,
        log_ms = started.elapsed().as_millis() as u64 - snapshot_ms,
        keys = store.len(),
        "recovered"
    );
    Ok(Recovered {
        store,
        segment: replay.segment,
        last_seq: replay.last_seq.unwrap_or(0),
        snapshot,
        replayed: replay.records,
        lock,
    })
}

/// Bytes of keys and values a replay into the memory engine holds before
/// it applies them (the default `--snapshot-after-bytes` of log fits).
const REPLAY_SORT_BYTES: usize = 256 << 20;

/// Replays log records into the memory engine's map in shard and key order
/// rather than log order: inserts that walk each shard's tree in order miss
/// the cache far less than inserts at random keys (at 10 M keys, 64 MB of
/// log replays in half the time; docs/perf/restart.md). Each write is split
/// into one write per key; a key's writes keep their log order (the sort is
/// stable), and writes to different keys commute. A `Clear` applies what
/// came before it first. Nothing reads the map until recovery is done.
/// With a feed, what each write changed is published in log order once
/// its part of the log is applied.
struct SortedReplay<'s> {
    store: &'s Store,
    feed: Option<&'s Feed>,
    /// Single-key writes with their key's shard, their place in the log
    /// and their revision, in log order.
    pending: Vec<(usize, usize, op::WriteOp, u64)>,
    bytes: usize,
    /// Bytes held past which the next record is not taken before the held
    /// ones are applied.
    limit: usize,
}

impl<'s> SortedReplay<'s> {
    fn new(store: &'s Store, feed: Option<&'s Feed>) -> SortedReplay<'s> {
        SortedReplay {
            store,
            feed,
            pending: Vec::new(),
            bytes: 0,
            limit: REPLAY_SORT_BYTES,
        }
    }

    /// Takes the write of the record `seq`.
    fn push(&mut self, op: op::WriteOp, seq: u64) {
        use op::WriteOp::*;
        // Between records only: a record's changes share its revision, and
        // a watcher told a revision is done must have all of them.
        if self.bytes >= self.limit {
            self.flush();
        }
        match op {
            BulkSet { items } => {
                for (key, value) in items {
                    self.hold(Set { key, value }, seq);
                }
            }
            DeleteMany { keys } => {
                for key in keys {
                    self.hold(Delete { key }, seq);
                }
            }
            SetExpiringMany { items } => {
                for (key, value, at) in items {
                    self.hold(SetExpiring { key, value, at }, seq);
                }
            }
            Expire { keys, now } => {
                for key in keys {
                    self.hold(
                        Expire {
                            keys: vec![key],
                            now,
                        },
                        seq,
                    );
                }
            }
            // Two single-key writes: each keeps its place among its key's.
            Rename {
                from,
                to,
                value,
                at,
            } => {
                self.hold(Delete { key: from }, seq);
                self.hold(op::WriteOp::set_with(to, value, at), seq);
            }
            // One write per key: a transaction names each key once.
            Txn { puts, deletes } => {
                for (key, value, at) in puts {
                    self.hold(op::WriteOp::set_with(key, value, at), seq);
                }
                for key in deletes {
                    self.hold(Delete { key }, seq);
                }
            }
            Clear => {
                self.flush();
                let applied = self.store.apply_at(&Clear, seq);
                if let Some(feed) = self.feed {
                    let mut events = Vec::new();
                    feed::changes(&Clear, &applied, seq, &mut events);
                    feed.publish(seq, events);
                }
            }
            single => self.hold(single, seq),
        }
    }

    fn hold(&mut self, op: op::WriteOp, seq: u64) {
        self.bytes += op.approx_len();
        let shard = op.first_key().map_or(0, |key| self.store.shard_index(key));
        self.pending.push((shard, self.pending.len(), op, seq));
    }

    /// Applies what is held, in shard and key order, and publishes what it
    /// changed in log order.
    fn flush(&mut self) {
        (self.pending).sort_by(|(shard, _, op, _), (other_shard, _, other, _)| {
            (shard.cmp(other_shard)).then_with(|| op.first_key().cmp(&other.first_key()))
        });
        let mut changed = Vec::new();
        for (_, place, op, seq) in self.pending.drain(..) {
            let applied = feed::replayed(&op, self.store.apply_at(&op, seq));
            if self.feed.is_some() {
                let mut events = Vec::new();
                feed::changes(&op, &applied, seq, &mut events);
                changed.extend(events.into_iter().map(|event| (place, event)));
            }
        }
        self.bytes = 0;
        if let Some(feed) = self.feed {
            changed.sort_by_key(|(place, _)| *place);
            publish_by_revision(feed, changed.into_iter().map(|(_, event)| event));
        }
    }
}

/// Publishes `events`, in log order, as one batch per revision.
fn publish_by_revision(feed: &Feed, events: impl IntoIterator<Item = kvstore_client::Event>) {
    let mut batch: Vec<kvstore_client::Event> = Vec::new();
    for event in events {
        if batch
            .last()
            .is_some_and(|last| last.revision != event.revision)
        {
            let position = batch[0].revision;
            feed.publish(position, std::mem::take(&mut batch));
        }
        batch.push(event);
    }
    if let Some(first) = batch.first() {
        feed.publish(first.revision, batch);
    }
}

/// Syncs the newest log segment after a replay: the records just replayed
/// may have come from the page cache of a process that died before syncing
/// them, so they are made durable before new records claim (in their
/// `durable` field) that they are.
fn sync_replayed(dir: &Path, replay: &mut wal::Replayed) -> Result<(), Error> {
    let newest = dir.join(format!("{:020}.wal", replay.segment.id()));
    (replay.segment.sync_data()).map_err(|e| Error::io(&newest, e))
}

/// Everything recovery found for the disk engine.
pub struct DiskRecovered {
    pub engine: Arc<Disk>,
    /// The log segment to append to, after its last valid record.
    pub segment: wal::Segment,
    /// The last sequence number in the log (0 if it is empty).
    pub last_seq: u64,
    /// Held for as long as the server runs: the lock on the data.
    pub lock: Box<dyn Any + Send>,
}

/// Log records applied to the disk engine per batch while replaying.
const REPLAY_BATCH: usize = 1024;

/// Opens the disk engine's data at `data` (its database in
/// `<data>-fjall/`, with a block cache of `cache_bytes`): takes the lock,
/// fills the data from the backup `restore` if given, opens the database,
/// and replays the log from the engine's last checkpoint (records it
/// already holds are applied again: each is idempotent), publishing what
/// it replays to `feed` if given.
pub fn open_disk(
    fs: &dyn Fs,
    data: &Path,
    cache_bytes: u64,
    restore: Option<&Path>,
    feed: Option<&Feed>,
) -> Result<DiskRecovered, Error> {
    let dir = wal::dir_for(data);
    let lock = lock_data(fs, data, EngineKind::Disk)?;
    if let Some(backup) = restore {
        restore_disk(fs, backup, data, cache_bytes)?;
    }
    let engine = Arc::new(Disk::open(&disk_dir_for(data), cache_bytes)?);
    let (first, first_seq) = engine.replay_from();
    let segments = wal::list_segments(fs, &dir)?;
    if let Some(&oldest) = segments.first().filter(|&&oldest| oldest > first) {
        return Err(Error::corrupt(
            &dir,
            0,
            format!("the disk engine replays from log segment {first}, but the log starts at segment {oldest}: writes between would be lost"),
        ));
    }
    for &old in segments.iter().filter(|&&id| id < first) {
        wal::remove_segment(fs, &dir, old)?;
    }
    if let Some(feed) = feed {
        feed.start_at(first_seq - 1);
    }
    let publishing = feed.filter(|f| f.keeps_history());
    let mut batch = Vec::with_capacity(REPLAY_BATCH);
    let mut next_seq = first_seq;
    let mut failed = None;
    let mut flush = |batch: &mut Vec<(op::WriteOp, u64)>, next_seq: u64| {
        if failed.is_none() && !batch.is_empty() {
            let ops: Vec<Revised> = batch.iter().map(|(op, seq)| (op, *seq)).collect();
            match (engine.apply(&ops, next_seq - 1), publishing) {
                (Ok(applied), Some(feed)) => {
                    let mut events = Vec::new();
                    for ((op, seq), applied) in ops.iter().zip(applied) {
                        feed::changes(op, &feed::replayed(op, applied), *seq, &mut events);
                    }
                    publish_by_revision(feed, events);
                }
                (Ok(_), None) => {}
                (Err(e), _) => failed = Some(e),
            }
        }
        batch.clear();
    };
    let mut replay = wal::replay(fs, &dir, first, first_seq, |op, seq| {
        batch.push((op, seq));
        next_seq += 1;
        if batch.len() == REPLAY_BATCH {
            flush(&mut batch, next_seq);
        }
    })?;
    flush(&mut batch, next_seq);
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(feed) = feed {
        feed.replayed_to(next_seq - 1);
    }
    sync_replayed(&dir, &mut replay)?;
    tracing::info!(
        data = %data.display(),
        log_records = replay.records,
        keys = engine.len(),
        "recovered (disk engine)"
    );
    Ok(DiskRecovered {
        engine,
        segment: replay.segment,
        last_seq: replay.last_seq.unwrap_or(0),
        lock,
    })
}

/// Fills the disk engine's database for `data` from the backup (or
/// snapshot) at `backup`, as [`restore`] does for the memory engine. The
/// backup is loaded into a directory beside the database's, checkpointed,
/// and only then renamed into place (and the directory synced): a damaged
/// backup, or a crash midway, leaves no data behind. The data must hold
/// nothing yet: no database and no log.
fn restore_disk(fs: &dyn Fs, backup: &Path, data: &Path, cache_bytes: u64) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let target = disk_dir_for(data);
    if fs.exists(&target) || !wal::list_segments(fs, &wal::dir_for(data))?.is_empty() {
        return Err(not_empty(data));
    }
    let mut name = target.as_os_str().to_os_string();
    name.push(".restoring");
    let staging = std::path::PathBuf::from(name);
    let remove = || match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&staging, e)),
        _ => Ok(()),
    };
    // An earlier restore's, cut short.
    remove()?;
    let loaded = load_staging(fs, backup, data, &staging, cache_bytes);
    let Ok(info) = loaded else {
        remove()?;
        return loaded.map(|_| ());
    };
    fs.rename(&staging, &target)
        .map_err(|e| Error::io(&target, e))?;
    sync_dir(fs, snapshot::parent_dir(data))?;
    tracing::info!(
        backup = %backup.display(),
        keys = info.entries,
        ops_replayed = info.ops,
        ms = started.elapsed().as_millis() as u64,
        "restored (disk engine)"
    );
    Ok(())
}

/// Loads the backup at `backup` into a new database at `staging` and makes
/// it durable, with the log to replay after it starting afresh.
fn load_staging(
    fs: &dyn Fs,
    backup: &Path,
    data: &Path,
    staging: &Path,
    cache_bytes: u64,
) -> Result<SnapshotInfo, Error> {
    let engine = Disk::open(staging, cache_bytes)?;
    let info = snapshot::load_into(fs, backup, &engine)?;
    engine.checkpoint(&Checkpoint {
        fs,
        data,
        next_segment: 1,
        next_seq: 1,
        barrier: &|| Ok(()),
    })?;
    Ok(info)
}

/// The disk engine's database directory for the data path `data`.
pub fn disk_dir_for(data: &Path) -> std::path::PathBuf {
    let mut name = data.as_os_str().to_os_string();
    name.push("-fjall");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use op::WriteOp;

    /// Every kind of write, to few keys, many times each: replayed sorted,
    /// the map ends as replaying in log order leaves it.
    #[test]
    fn a_sorted_replay_ends_where_the_log_order_does() {
        let key = |i: u64| Bytes::from(format!("k{}", i % 7));
        let value = |i: u64| Bytes::from(i.to_string());
        let ops: Vec<WriteOp> = (1..3000u64)
            .map(|i| match i % 11 {
                // Written once, before a Clear: it must be gone.
                _ if i == 500 => WriteOp::Set {
                    key: Bytes::from("before the clear"),
                    value: value(i),
                },
                0 => WriteOp::Delete { key: key(i) },
                1 => WriteOp::BulkSet {
                    items: vec![(key(i), value(i)), (key(i + 1), value(i))],
                },
                2 => WriteOp::DeleteMany {
                    keys: vec![key(i + 2), key(i + 3)],
                },
                3 => WriteOp::SetExpiring {
                    key: key(i),
                    value: value(i),
                    at: i,
                },
                4 => WriteOp::ExpireAt {
                    key: key(i + 1),
                    at: i + 5,
                },
                5 => WriteOp::Persist { key: key(i + 2) },
                6 => WriteOp::Expire {
                    keys: vec![key(i), key(i + 3)],
                    now: i,
                },
                7 => WriteOp::Rename {
                    from: key(i),
                    to: key(i + 4),
                    value: value(i),
                    at: (i % 2 == 0).then_some(i + 9),
                },
                _ if i % 997 == 0 => WriteOp::Clear,
                _ => WriteOp::Set {
                    key: key(i),
                    value: value(i),
                },
            })
            .collect();
        // A key written, then renamed: only its new name stays.
        let (from, to) = (Bytes::from("renamed from"), Bytes::from("renamed to"));
        let mut ops = ops;
        ops.push(WriteOp::Set {
            key: from.clone(),
            value: value(1),
        });
        ops.push(WriteOp::Rename {
            from,
            to,
            value: value(1),
            at: None,
        });
        // Still at the epoch: no deadline has passed for readers; `Expire`
        // removes what its own `now` says is due.
        // Each op at its record's sequence number.
        let in_order = Store::with_clock(3, clock::Clock::manual(0));
        let mut changed = Vec::new();
        (ops.iter()).zip(1..).for_each(|(op, seq)| {
            let applied = feed::replayed(op, in_order.apply_at(op, seq));
            feed::changes(op, &applied, seq, &mut changed);
        });
        let sorted = Store::with_clock(3, clock::Clock::manual(0));
        let feed = Feed::new(usize::MAX, 1);
        let mut replay = SortedReplay::new(&sorted, Some(&feed));
        (ops.into_iter())
            .zip(1..)
            .for_each(|(op, seq)| replay.push(op, seq));
        replay.flush();
        // The feed has the changes in log order, as applying in order made.
        assert_eq!(feed.kept(), changed);
        let everything = store::Span::prefix(b"", None, false);
        let pairs = |store: &Store| store.pairs(&everything, usize::MAX, usize::MAX).0;
        assert_eq!(pairs(&sorted), pairs(&in_order));
        assert_eq!(sorted.bytes(), in_order.bytes());
        for i in 0..7 {
            assert_eq!(sorted.deadline(&key(i)), in_order.deadline(&key(i)));
        }
        for (key, _) in pairs(&in_order) {
            assert_eq!(sorted.get_revised(&key), in_order.get_revised(&key));
        }
        assert!((0..7).any(|i| matches!(in_order.deadline(&key(i)), Some(Some(_)))));
    }

    /// A watcher told a revision is done must have all its changes: the
    /// replay applies, and publishes, between records only.
    #[test]
    fn a_replay_publishes_each_record_whole() {
        let store = Store::with_clock(3, clock::Clock::manual(0));
        let feed = Feed::new(usize::MAX, 1);
        let mut replay = SortedReplay::new(&store, Some(&feed));
        replay.limit = 1;
        let items = (0..3)
            .map(|i| (Bytes::from(format!("k{i}")), Bytes::from("v")))
            .collect();
        replay.push(WriteOp::BulkSet { items }, 1);
        replay.push(WriteOp::set("k", "v"), 2);
        replay.flush();
        assert_eq!(feed.positions(), [1, 2]);
    }
}
