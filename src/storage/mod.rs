//! Storage: the in-memory [`store::Store`], the write-ahead log ([`wal`]), the
//! snapshot file ([`snapshot`]), and [`open`], which recovers all three at
//! start.
//!
//! Files for the data path `kvstore.db`:
//! - `kvstore.db`: the latest snapshot (absent until the first one).
//! - `kvstore.db-wal/NNNNNNNNNNNNNNNNNNNN.wal`: log segments, oldest first.
//! - `kvstore.db-wal/LOCK`: held (flock) while a server uses the data, so two
//!   servers never write the same log.
//!
//! Nothing here is async: these are blocking file operations, run at start or
//! on the group-commit and snapshot threads, never on the tokio workers.

pub mod change;
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

use crate::error::Error;
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
        return Err(Error::Config(format!(
            "--restore: {} already holds data; restore only into an empty data path (move the old data away, or drop --restore to start from it)",
            data.display()
        )));
    }
    let loaded = snapshot::load(fs, backup, &recovered.store)?
        .ok_or_else(|| Error::io(backup, std::io::ErrorKind::NotFound.into()))?;
    let written = snapshot::write(
        fs,
        data,
        &recovered.store,
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

/// Opens the data at `data`: takes its lock, loads the snapshot, replays the
/// log after it, and drops files a finished snapshot made obsolete.
pub fn open(fs: &dyn Fs, data: &Path, shards: usize) -> Result<Recovered, Error> {
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
    let tmp = snapshot::temp_path(data);
    if fs.exists(&tmp) {
        tracing::info!(path = %tmp.display(), "removing an unfinished snapshot");
        fs.remove(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }

    let store = Arc::new(Store::new(shards));
    let snapshot = snapshot::load(fs, data, &store)?;
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
    let mut replay = wal::replay(fs, &dir, first, first_seq, |op| {
        store.apply(&op);
    })?;
    // The records just replayed may have come from the page cache of a
    // process that died before syncing them: make them durable before new
    // records claim (in their `durable` field) that they are.
    let newest = dir.join(format!("{:020}.wal", replay.segment.id()));
    replay
        .segment
        .sync_data()
        .map_err(|e| Error::io(&newest, e))?;
    tracing::info!(
        data = %data.display(),
        snapshot_entries = snapshot.map(|s| s.entries),
        log_records = replay.records,
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
