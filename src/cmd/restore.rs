//! `Restore { name }`: loads a backup from `--backup-dir` into an empty
//! store as ordinary writes through the log, so that in cluster mode every
//! node gets it through Raft (docs/operations.md, "Restore into a running
//! server or cluster").
//!
//! The file is read twice on a blocking thread: once to check every record
//! (a damaged file writes nothing), then to write it, a block (~1 MiB, one
//! `BulkSet`) at a time, each acknowledged before the next is read, so
//! memory stays at a few blocks whatever the file's size.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use kvstore_client::{ErrorCode, Reply};
use tokio::sync::mpsc;

use crate::db::Db;
use crate::error::Error;
use crate::storage::change::Change;
use crate::storage::fs::RealFs;
use crate::storage::op::WriteOp;
use crate::storage::snapshot::{self, SnapshotInfo};

/// A restore is running in this process (one server per process).
static RUNNING: AtomicBool = AtomicBool::new(false);

pub async fn apply(name: String, db: &Db) -> Reply {
    match restore(name, db).await {
        Ok(info) => Reply::BackupDone {
            keys: info.entries,
            ops: info.ops,
            bytes: info.bytes,
        },
        Err(e) => super::error_reply(&e),
    }
}

fn failed(message: impl Into<String>) -> Error {
    Error::Rejected {
        code: ErrorCode::RestoreFailed,
        message: message.into(),
    }
}

async fn restore(name: String, db: &Db) -> Result<SnapshotInfo, Error> {
    if db.cluster().is_some_and(|c| c.is_sharded()) {
        // Its emptiness check and its writes would see group 1 alone.
        return Err(failed(
            "a restore into a sharded cluster is not built yet (docs/sharding.md): \
             restore into a cluster of one group, then move slots",
        ));
    }
    let path = backup_path(&name, db)?;
    let _running = Running::claim()?;
    // On a follower: NotLeader, which sends the client to the leader.
    super::read_barrier(db, None).await?;
    let keys = db.engine().len();
    if keys > 0 {
        return Err(failed(format!(
            "the store holds {keys} keys; a restore needs an empty store (flush it first)"
        )));
    }
    let checked = path.clone();
    let check = move || snapshot::read_batches(&RealFs, &checked, &mut |_| Ok(()));
    joined(tokio::task::spawn_blocking(check)).await?;
    let (batches, mut queue) = mpsc::channel::<Vec<WriteOp>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        snapshot::read_batches(&RealFs, &path, &mut |part| {
            let batch = part.writes();
            batches
                .blocking_send(batch)
                .map_err(|_| failed("the restore stopped"))
        })
    });
    let mut written = 0u64;
    while let Some(batch) = queue.recv().await {
        if let Err(e) = write(db, batch).await {
            drop(queue);
            let _ = reader.await;
            return Err(match written {
                0 => e,
                _ => failed(format!(
                    "{e}; {written} blocks were written before it and stay: flush the store before trying again"
                )),
            });
        }
        written += 1;
    }
    joined(reader).await
}

/// The backup `name` in `--backup-dir`, if it is a file there.
fn backup_path(name: &str, db: &Db) -> Result<PathBuf, Error> {
    let dir = (db.backup_dir.as_ref())
        .ok_or_else(|| failed("the server has no backup directory (start it with --backup-dir)"))?;
    crate::backup::check_name(name).map_err(|e| failed(e.to_string()))?;
    let path = dir.join(name);
    match path.is_file() {
        true => Ok(path),
        false => Err(failed(format!(
            "no backup named {name} in {}",
            dir.display()
        ))),
    }
}

/// The outcome of a read of the file on a blocking thread; its error is
/// the restore's.
async fn joined(
    read: tokio::task::JoinHandle<Result<SnapshotInfo, Error>>,
) -> Result<SnapshotInfo, Error> {
    match read.await {
        Ok(result) => result.map_err(|e| failed(e.to_string())),
        Err(e) => Err(failed(format!("the restore task failed: {e}"))),
    }
}

/// Writes `batch` through the log and waits until all of it is applied.
async fn write(db: &Db, batch: Vec<WriteOp>) -> Result<(), Error> {
    let pending = db
        .write_all(batch.into_iter().map(Change::from).collect())
        .await?;
    for mut write in pending {
        write.wait().await?;
    }
    Ok(())
}

/// The one restore running; released when dropped.
struct Running;

impl Running {
    fn claim() -> Result<Running, Error> {
        match RUNNING.swap(true, Ordering::AcqRel) {
            false => Ok(Running),
            true => Err(failed("a restore is already running")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}
