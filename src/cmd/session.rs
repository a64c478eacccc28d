//! `OpenSession` and `Once`: client sessions for exactly-once writes in
//! cluster mode (`crate::raft::sessions`). The node that takes them stamps
//! them with its clock and its session settings; the log entry carries
//! both, so every node decides alike.

use kvstore_client::{Command, ErrorCode, Reply};

use crate::db::Db;
use crate::raft::node::Cluster;
use crate::raft::sessions::Stamp;
use crate::storage::change::Change;

fn cluster(db: &Db) -> Result<&Cluster, Reply> {
    db.cluster().map(|c| &**c).ok_or_else(|| {
        Reply::error(
            ErrorCode::ClusterFailed,
            "client sessions are for cluster mode (--node-id); a server running alone has none",
        )
    })
}

/// The wall clock in milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| d.as_millis() as u64)
}

/// `OpenSession`, as the log takes it.
pub fn open(db: &Db) -> Result<Change, Reply> {
    let settings = cluster(db)?.sessions();
    Ok(Change::OpenSession {
        time_ms: now_ms(),
        idle_ms: settings.idle_ms,
        max_sessions: settings.max_sessions,
    })
}

/// `Once`, as the log takes it: the write's own change, stamped.
pub fn once(
    session: u64,
    seq: u64,
    acked: u64,
    command: Command,
    db: &Db,
) -> Result<Change, Reply> {
    let settings = cluster(db)?.sessions();
    if !command.is_data_write() {
        return Err(Reply::error(
            ErrorCode::Malformed,
            format!("Once wraps a write, not {}", command.name()),
        ));
    }
    if seq <= acked {
        return Err(Reply::error(
            ErrorCode::Malformed,
            format!("Once: write {seq} is not after the acknowledged {acked}"),
        ));
    }
    let change = super::prepare(command, db)?;
    let stamp = Stamp {
        session,
        seq,
        acked,
        time_ms: now_ms(),
        idle_ms: settings.idle_ms,
    };
    Ok(Change::Once {
        stamp,
        change: Box::new(change),
    })
}
