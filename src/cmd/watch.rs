//! `Watch`: every change to the keys under a prefix, from a revision on,
//! streamed on the connection that asked (see `crate::feed`). The door
//! sends the first reply at once and the stream's replies as they come.

use std::time::Duration;

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

/// How long a watcher whose keys do not change waits before it is told how
/// far the server has gone (an `Events` reply with no events), so that it
/// resumes from a revision the history still holds.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The watcher's changes as replies of at most `max_bytes`, ending with
/// the error that ended it; a reply with no events when the server went on
/// for [`PROGRESS_EVERY`] without changing the watched keys.
fn changes(watcher: Watcher, max_bytes: usize) -> Pushes<Reply> {
    let replies = stream::unfold(Some(watcher), move |watcher| async move {
        let mut watcher = watcher?;
        let told = watcher.position();
        loop {
            // `Watcher::next` keeps what it took in when cancelled.
            let next = tokio::time::timeout(PROGRESS_EVERY, watcher.next(max_bytes)).await;
            let events = match next {
                Ok(Ok(events)) => events,
                Ok(Err(why)) => return Some((ended(why), None)),
                Err(_) if watcher.position() > told => Vec::new(),
                Err(_) => continue,
            };
            let revision = watcher.position();
            return Some((Reply::Events { revision, events }, Some(watcher)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Feed;
    use kvstore_client::{Event, EventKind};

    fn deleted(revision: u64, key: &str) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Delete,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_watcher_is_told_how_far_the_server_went() {
        let feed = Feed::new(1 << 20, 16);
        let mut replies = changes(
            feed.watch(Bytes::from_static(b"quiet/"), 0).unwrap(),
            1 << 20,
        );
        feed.publish(1, vec![deleted(1, "busy/a")]);
        feed.publish(2, vec![deleted(2, "busy/b")]);
        let progress = tokio::time::timeout(PROGRESS_EVERY * 3, replies.next()).await;
        let told = Reply::Events {
            revision: 2,
            events: Vec::new(),
        };
        assert_eq!(progress, Ok(Some(told)));
        // Nothing more until the server goes on.
        let idle = tokio::time::timeout(PROGRESS_EVERY * 3, replies.next()).await;
        assert!(idle.is_err(), "{idle:?}");
        feed.publish(3, vec![deleted(3, "quiet/x")]);
        let Some(Reply::Events {
            revision: 3,
            events,
        }) = replies.next().await
        else {
            panic!("no change at 3");
        };
        assert_eq!(events, [deleted(3, "quiet/x")]);
    }
}
