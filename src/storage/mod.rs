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

pub mod op;
pub mod record;
pub mod snapshot;
pub mod store;
pub mod wal;

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use snapshot::SnapshotInfo;
use store::Store;

/// `fsync` of a directory: makes the creation, rename or removal of the
/// entries in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
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
    pub lock: File,
}

/// Opens the data at `data`: takes its lock, loads the snapshot, replays the
/// log after it, and drops files a finished snapshot made obsolete.
pub fn open(data: &Path, shards: usize) -> Result<Recovered, Error> {
    let dir = wal::dir_for(data);
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(
            dir.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
    }
    let lock_path = dir.join("LOCK");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(Error::Locked(data.to_path_buf()));
    }
    remove_stale_temp_files(data);

    let store = Arc::new(Store::new(shards));
    let snapshot = snapshot::load(data, &store)?;
    let segments = wal::list_segments(&dir)?;
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
        wal::remove_segment(&dir, old)?;
    }
    let replay = wal::replay(&dir, first, first_seq, |op| {
        store.apply(&op);
    })?;
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

/// Removes temp files of snapshots that a crash interrupted before their rename.
fn remove_stale_temp_files(data: &Path) {
    let dir = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".kvstore-snapshot-")
        {
            tracing::info!(path = %entry.path().display(), "removing an unfinished snapshot");
            let _ = fs::remove_file(entry.path());
        }
    }
}
