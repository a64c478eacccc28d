//! `Watch`: every change to the keys under a prefix, from a revision on,
//! streamed on the connection that asked (see `crate::feed`). The door
//! sends the first reply at once and the stream's replies as they come.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use kvstore_client::{ErrorCode, Reply};

use crate::db::Db;
use crate::feed::{Ended, Watcher};
use crate::session::Pushes;

/// Why a sharded cluster refuses watches: each group has its own log
/// positions, and a node's feed is group 1's.
pub const SHARDED: &str = "a watch of a sharded cluster would see group 1's slots only; \
     watches across groups are not built yet (docs/watch.md)";

/// Starts a watch: the first reply (no events: the watch is in place, at
/// this revision) and the replies that follow, or an error reply.
pub fn start(prefix: Bytes, from_revision: u64, db: &Db) -> Result<(Reply, Pushes<Reply>), Reply> {
    if db.cluster().is_some_and(|c| c.is_sharded()) {
        return Err(Reply::error(ErrorCode::Malformed, SHARDED));
    }
    let watcher = db.feed.watch(prefix, from_revision).map_err(ended)?;
    let first = Reply::Events {
        revision: watcher.position(),
        events: Vec::new(),
    };
    Ok((first, changes(watcher, db.limits.max_reply_bytes)))
}

/// The watcher's changes as replies of at most `max_bytes`, ending with
/// the error that ended it.
fn changes(watcher: Watcher, max_bytes: usize) -> Pushes<Reply> {
    let replies = stream::unfold(Some(watcher), move |watcher| async move {
        let mut watcher = watcher?;
        match watcher.next(max_bytes).await {
            Ok(events) => {
                let revision = watcher.position();
                Some((Reply::Events { revision, events }, Some(watcher)))
            }
            Err(why) => Some((ended(why), None)),
        }
    });
    replies.boxed()
}

/// The error reply for a watch that cannot go on.
fn ended(why: Ended) -> Reply {
    let code = match why {
        Ended::Compacted { .. } | Ended::Reset { .. } => ErrorCode::Compacted,
        Ended::Slow { .. } => ErrorCode::SlowWatcher,
        Ended::Closed => ErrorCode::ShuttingDown,
    };
    Reply::error(code, why.to_string())
}
