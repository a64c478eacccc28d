//! `Indexed`: a data command with the log index that goes with it, for
//! follower reads and session guarantees (docs/replication.md).
//!
//! A read with `any_node` waits until this node has applied `after`, then
//! reads what this node holds, without asking the leader: it may be stale,
//! but it reflects every write up to `after`. Without `any_node` the read
//! takes the usual linearizable path. Either way the reply carries the index
//! this node had applied when it answered; a client that sends that index as
//! its next `after` gets monotonic reads, and with the index of its own
//! writes' replies, read-your-writes.
//!
//! A write inside `Indexed` is unwrapped by the connection handler, so it
//! joins the log batches like any write, and its reply is wrapped when it is
//! sent (`wrap`): the index then covers the write, which was applied before
//! it was acknowledged.
//!
//! The index a reply carries is the state machine's `store_index`, set
//! before an entry changes the store, not openraft's applied index, which is
//! published later: a reply must never carry an index below what it
//! reflects. A follower read waits on the applied index, which is the
//! conservative side.

use std::time::Duration;

use kvstore_client::{Command, ErrorCode, Reply};

use crate::db::Db;

/// How long a follower read waits for its node to apply `after`.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// An index covering what the store holds now (0 for a server running
/// alone): taken after the read, or after the write was applied, it covers
/// what the reply reflects (`Cluster::reply_index`).
pub fn reply_index(db: &Db) -> u64 {
    db.cluster().map_or(0, |cluster| cluster.reply_index())
}

/// `reply` with the index that covers it; errors go back unwrapped, so that
/// clients classify them as usual.
pub fn wrap(reply: Reply, db: &Db) -> Reply {
    match reply {
        Reply::Error { .. } => reply,
        reply => Reply::Indexed {
            index: reply_index(db),
            reply: Box::new(reply),
        },
    }
}

/// Answers an `Indexed` read (or, from another path than the connection
/// handler, a write).
pub async fn apply(after: u64, any_node: bool, command: Command, db: &Db) -> Reply {
    if super::is_write(&command) {
        let reply = match super::start(command, db).await {
            super::Started::Done(reply) => reply,
            super::Started::Pending(mut pending) => super::reply_for(pending.wait().await),
        };
        return wrap(reply, db);
    }
    if !super::reads_data(&command) {
        return Reply::error(
            ErrorCode::Malformed,
            format!(
                "Indexed wraps a read of data or a write, not {}",
                command.name()
            ),
        );
    }
    let reply = match db.cluster() {
        Some(cluster) if any_node => {
            if let Err(e) = cluster.wait_applied(after, MAX_WAIT).await {
                return super::error_reply(&e);
            }
            super::read_here(command, db)
        }
        _ => match super::start(command, db).await {
            super::Started::Done(reply) => reply,
            super::Started::Pending(_) => unreachable!("a read is answered at once"),
        },
    };
    wrap(reply, db)
}
