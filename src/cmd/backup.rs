//! `Backup` and `BackupNext`: a point-in-time copy of the store, streamed
//! over the connection or written into `--backup-dir` (see `crate::backup`).
//!
//! A streaming backup belongs to the connection that started it: the
//! handler keeps it in a [`Session`] and drops it (ending its tee) when the
//! connection ends. Starting another backup on the same connection
//! abandons the one in progress.

use kvstore_client::Reply;

use super::error_reply;
use crate::backup::{self, Backup, Summary, CHUNK_BYTES};
use crate::db::Db;
use crate::error::Error;

/// Why a sharded cluster is not backed up: a backup is one engine's
/// point-in-time view, and the node's is group 1's, which lacks the other
/// groups' slots.
pub const SHARDED: &str = "a backup of a sharded cluster would hold group 1's slots only; \
     backups of several groups are not built yet (docs/sharding.md)";

/// The backup streaming on one connection, if any.
pub type Session = Option<Backup>;

/// `Backup { name }`: starts a streaming backup and answers its first
/// chunk, or writes one into the backup directory and answers its summary.
pub async fn start(name: Option<String>, db: &Db, session: &mut Session) -> Reply {
    // Ends the tee of one in progress before counting running backups.
    *session = None;
    if db.cluster().is_some_and(|c| c.is_sharded()) {
        return error_reply(&Error::Backup(SHARDED.into()));
    }
    let result = match name {
        None => db.start_backup().and_then(|mut backup| {
            let first = backup.next_chunk(chunk_bytes(db))?;
            *session = Some(backup);
            Ok(Reply::Chunk(first))
        }),
        Some(name) => into_dir(name, db).await.map(done),
    };
    result.unwrap_or_else(|e| error_reply(&e))
}

/// `BackupNext`: the next chunk of this connection's backup, or its summary
/// once every byte has been sent (the session ends then).
pub fn next(session: &mut Session, db: &Db) -> Reply {
    let Some(backup) = session else {
        return error_reply(&Error::Backup(
            "no backup is streaming on this connection; send Backup first".into(),
        ));
    };
    match backup.next_chunk(chunk_bytes(db)) {
        Ok(chunk) if chunk.is_empty() => {
            backup.succeeded();
            let summary = backup.summary();
            *session = None;
            done(summary)
        }
        Ok(chunk) => Reply::Chunk(chunk),
        Err(e) => {
            *session = None;
            error_reply(&e)
        }
    }
}

async fn into_dir(name: String, db: &Db) -> Result<Summary, Error> {
    let dir = db.backup_dir.clone().ok_or_else(|| {
        Error::Backup("the server has no backup directory (start it with --backup-dir)".into())
    })?;
    backup::check_name(&name)?;
    let backup = db.start_backup()?;
    tokio::task::spawn_blocking(move || backup::write_to_dir(backup, &dir, &name))
        .await
        .map_err(|e| Error::Backup(format!("the backup task failed: {e}")))?
}

/// A chunk's size: 1 MiB, or less if a reply may not be that large (a
/// server with a small `--max-frame`).
fn chunk_bytes(db: &Db) -> usize {
    CHUNK_BYTES.min(db.limits.max_reply_bytes)
}

fn done(summary: Summary) -> Reply {
    Reply::BackupDone {
        keys: summary.keys,
        ops: summary.ops,
        bytes: summary.bytes,
    }
}
