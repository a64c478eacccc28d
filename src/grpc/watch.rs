//! The gRPC `Watch` method: the native watch (`crate::cmd::watch`), its
//! `Events` replies as `WatchResponse` messages and the error that ends it
//! as the stream's status.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use kvstore_client::{ErrorCode, Event, EventKind, Reply};
use kvstore_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::service::{into_result, unexpected};
use crate::cmd::watch;
use crate::db::Db;
use crate::session::Pushes;

/// The messages of a watch.
pub type Messages = BoxStream<'static, Result<pb::WatchResponse, Status>>;

/// Starts a watch: its messages, the first (no events: the watch is in
/// place) at once; or the status it is refused with.
pub fn start(
    request: pb::WatchRequest,
    db: &Db,
    shutdown: CancellationToken,
) -> Result<Messages, Status> {
    let pb::WatchRequest {
        prefix,
        from_revision,
    } = request;
    let (first, changes) = match watch::start(prefix, from_revision, db) {
        Ok(started) => started,
        // The refusal (a sharded cluster, a compacted revision) fails the
        // call itself, as its first reply.
        Err(refused) => (refused, stream::empty().boxed()),
    };
    let stats = db.stats.clone();
    let message = move |reply: Reply| {
        stats.reply(&reply);
        response(reply)
    };
    let first = message(first)?;
    let rest = until_shutdown(changes, shutdown).map(message);
    Ok(stream::once(async { Ok(first) }).chain(rest).boxed())
}

/// `replies` until the server begins to shut down, then `ShuttingDown`: a
/// watch waits for changes that may never come, so it must not hold up the
/// graceful shutdown.
fn until_shutdown(replies: Pushes<Reply>, shutdown: CancellationToken) -> Pushes<Reply> {
    let replies = stream::unfold(Some(replies), move |replies| {
        let shutdown = shutdown.clone();
        async move {
            let mut replies = replies?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let closing = Reply::error(ErrorCode::ShuttingDown, "the server is shutting down");
                    Some((closing, None))
                }
                reply = replies.next() => Some((reply?, Some(replies))),
            }
        }
    });
    replies.boxed()
}

/// A native watch reply as the next message; an error reply as the status
/// that ends the stream.
fn response(reply: Reply) -> Result<pb::WatchResponse, Status> {
    match into_result(reply)? {
        Reply::Events { revision, events } => Ok(pb::WatchResponse {
            revision,
            events: events.into_iter().map(event).collect(),
        }),
        other => Err(unexpected(&other)),
    }
}

fn event(event: Event) -> pb::Event {
    use pb::EventKind as Kind;
    let (kind, value, deadline_ms) = match event.kind {
        EventKind::Put { value, deadline } => (Kind::Put, value, deadline),
        EventKind::Delete => (Kind::Delete, Bytes::new(), None),
        EventKind::Expired => (Kind::Expired, Bytes::new(), None),
        EventKind::Deadline(at) => (Kind::Deadline, Bytes::new(), at),
        EventKind::Clear => (Kind::Clear, Bytes::new(), None),
    };
    pb::Event {
        revision: event.revision,
        key: event.key,
        kind: kind as i32,
        value,
        deadline_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_change_keeps_its_value_and_deadline() {
        let native = |kind| Event {
            revision: 7,
            key: Bytes::from_static(b"k"),
            kind,
        };
        let put = EventKind::Put {
            value: Bytes::from_static(b"v"),
            deadline: Some(9),
        };
        let cases = [
            (put, pb::EventKind::Put, &b"v"[..], Some(9)),
            (EventKind::Delete, pb::EventKind::Delete, b"", None),
            (EventKind::Expired, pb::EventKind::Expired, b"", None),
            (
                EventKind::Deadline(Some(5)),
                pb::EventKind::Deadline,
                b"",
                Some(5),
            ),
            (
                EventKind::Deadline(None),
                pb::EventKind::Deadline,
                b"",
                None,
            ),
            (EventKind::Clear, pb::EventKind::Clear, b"", None),
        ];
        for (kind, expected, value, deadline_ms) in cases {
            let got = event(native(kind.clone()));
            assert_eq!(
                (
                    got.revision,
                    &got.key[..],
                    got.kind(),
                    &got.value[..],
                    got.deadline_ms
                ),
                (7, &b"k"[..], expected, value, deadline_ms),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn the_error_that_ends_a_watch_is_its_status() {
        let ended = |code| response(Reply::error(code, "why")).unwrap_err().code();
        assert_eq!(ended(ErrorCode::Compacted), tonic::Code::OutOfRange);
        assert_eq!(
            ended(ErrorCode::SlowWatcher),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(ended(ErrorCode::ShuttingDown), tonic::Code::Unavailable);
    }
}
