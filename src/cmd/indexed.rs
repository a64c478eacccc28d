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

/// `reply` with the index that covers it: taken after the read, or after
/// the write was applied (`Cluster::reply_index`; 0 for a server running
/// alone). Errors go back unwrapped, so that clients classify them as usual.
pub fn wrap(reply: Reply, db: &Db) -> Reply {
    match reply {
        Reply::Error { .. } => reply,
        reply => Reply::Indexed {
            index: db.cluster().map_or(0, |cluster| cluster.reply_index()),
            reply: Box::new(reply),
        },
    }
}

/// Answers an `Indexed` read (the connection handler has taken writes out).
pub async fn apply(after: u64, any_node: bool, command: Command, db: &Db) -> Reply {
    if !command.is_data_read() {
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
            super::read(command, db)
        }
        _ => match super::start(command, db).await {
            super::Started::Done(reply) => reply,
            super::Started::Pending(_) => unreachable!("a read is answered at once"),
        },
    };
    wrap(reply, db)
}
