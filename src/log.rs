//! The write side's seam: where every write goes on its way to the store.
//!
//! A [`Log`] takes [`Queued`] writes and answers each once it is durable
//! and applied. Two implement it: the single-node group commit
//! (`crate::commit::GroupCommit`: one `fdatasync` per batch) and cluster
//! mode (`crate::raft::node::Cluster`: one Raft proposal per batch). What
//! every log must do the same way lives here: refuse writes at once after a
//! failure, and bound the bytes of writes queued or in a batch
//! ([`MAX_QUEUED_BYTES`]), so a flood of large writes waits for room
//! instead of growing memory.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::commit::LogFigures;
use crate::error::Error;
use crate::storage::change::Change;
use crate::storage::store::Applied;

/// Bytes of writes queued or in a batch, across all connections. A queue's
/// depth counts writes, this counts their size: 4,096 queued writes of
/// 16 MiB would otherwise be 64 GiB.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// Where a write's outcome is sent.
pub type Done = oneshot::Sender<Result<Applied, Error>>;

/// A write handed to a log.
pub struct Queued {
    pub change: Change,
    pub done: Done,
    /// The write's share of [`MAX_QUEUED_BYTES`], given back when it is
    /// answered (dropped with the write).
    pub budget: OwnedSemaphorePermit,
}

/// The write side. Writes queued together, in order, stay together: they
/// land in one batch (a pipelined burst shares one `fdatasync`).
pub trait Log: Send + Sync {
    /// Hands writes to the log, in order, as one unit. Fails only if the
    /// log no longer takes writes (its senders are then dropped unanswered).
    fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>>;

    /// Why the log refuses every write until a restart, once it has failed.
    fn failure(&self) -> Option<String>;

    /// What the log has done since start, if it keeps these figures (the
    /// single-node log; cluster mode has its own in openraft's metrics).
    fn figures(&self) -> Option<&LogFigures>;

    /// The byte budget writes take before they are queued.
    fn budget(&self) -> &Arc<Semaphore>;

    /// Whether a write that was queued but whose outcome never came may
    /// still have been applied (cluster mode: it may have been proposed).
    /// The single-node log answers every write it may have written, even
    /// when it panics (see `crate::commit`), so a lost outcome there means
    /// the write never arrived.
    fn lost_may_apply(&self) -> bool;

    /// Stops taking writes, finishes those queued, and closes the log
    /// (single node: the final snapshot).
    fn close(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Queues writes, in order, as one unit: each waits for its share of the
    /// byte budget first. Fails at once if the log has failed or is closed.
    fn submit_all(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<PendingWrite>, Error>> {
        Box::pin(async move {
            if let Some(reason) = self.failure() {
                return Err(Error::StorageFailed(reason));
            }
            let mut queued = Vec::with_capacity(changes.len());
            let mut pending = Vec::with_capacity(changes.len());
            for change in changes {
                let bytes = change.approx_len().min(MAX_QUEUED_BYTES) as u32;
                let budget = (self.budget().clone())
                    .acquire_many_owned(bytes)
                    .await
                    .map_err(|_| Error::ShuttingDown)?;
                let (done, rx) = oneshot::channel();
                queued.push(Queued {
                    change,
                    done,
                    budget,
                });
                pending.push(PendingWrite {
                    rx,
                    lost_may_apply: self.lost_may_apply(),
                });
            }
            self.queue(queued).await?;
            Ok(pending)
        })
    }

    /// Queues one write.
    fn submit(&self, change: Change) -> BoxFuture<'_, Result<PendingWrite, Error>> {
        Box::pin(async move {
            let mut pending = self.submit_all(vec![change]).await?;
            pending.pop().ok_or(Error::ShuttingDown)
        })
    }
}

/// The budget of a new log: [`MAX_QUEUED_BYTES`] as permits of one byte.
pub fn budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_QUEUED_BYTES))
}

/// A write that was queued; resolves once it is durable and applied.
pub struct PendingWrite {
    rx: oneshot::Receiver<Result<Applied, Error>>,
    /// See [`Log::lost_may_apply`].
    lost_may_apply: bool,
}

impl PendingWrite {
    /// What a sender that went away without an outcome means.
    fn lost(&self) -> Error {
        match self.lost_may_apply {
            true => Error::OutcomeUnknown("the write's outcome was lost".into()),
            false => Error::ShuttingDown,
        }
    }

    /// Waits for the outcome.
    pub async fn wait(&mut self) -> Result<Applied, Error> {
        match (&mut self.rx).await {
            Ok(result) => result,
            Err(_) => Err(self.lost()),
        }
    }

    /// The outcome if it is already there.
    pub fn try_take(&mut self) -> Option<Result<Applied, Error>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(self.lost())),
        }
    }
}

/// A log for tests that holds each message it is given, unanswered, until
/// told to answer.
#[cfg(test)]
pub(crate) mod testing {
    use parking_lot::Mutex;

    use super::*;

    pub(crate) struct Held {
        /// Each `queue` call's writes, in order.
        pub messages: Mutex<Vec<Vec<Queued>>>,
        pub budget: Arc<Semaphore>,
        failure: Option<String>,
    }

    impl Held {
        /// A log with `budget` bytes of room that fails with `failure`.
        pub fn new(budget: usize, failure: Option<&str>) -> Held {
            Held {
                messages: Mutex::default(),
                budget: Arc::new(Semaphore::new(budget)),
                failure: failure.map(String::from),
            }
        }

        /// How many writes each message held.
        pub fn sizes(&self) -> Vec<usize> {
            self.messages.lock().iter().map(Vec::len).collect()
        }

        /// Answers every write of message `n` as stored.
        pub fn answer(&self, n: usize) {
            for queued in std::mem::take(&mut self.messages.lock()[n]) {
                let _ = queued.done.send(Ok(Applied::Stored));
            }
        }
    }

    impl Log for Held {
        fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>> {
            self.messages.lock().push(writes);
            Box::pin(async { Ok(()) })
        }
        fn failure(&self) -> Option<String> {
            self.failure.clone()
        }
        fn figures(&self) -> Option<&LogFigures> {
            None
        }
        fn budget(&self) -> &Arc<Semaphore> {
            &self.budget
        }
        fn lost_may_apply(&self) -> bool {
            false
        }
        fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::time::timeout;

    use super::testing::Held;
    use super::*;

    /// About 70 bytes of budget.
    fn change() -> Change {
        Change::SetIf {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![b'v'; 37]),
            condition: kvstore_client::Condition::Always,
            get: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waits_for_room_until_an_earlier_one_is_answered() {
        let log = Held::new(100, None);
        let _first = log.submit(change()).await.unwrap();
        let second = log.submit(change());
        tokio::pin!(second);
        assert!(
            timeout(Duration::from_secs(10), &mut second).await.is_err(),
            "the budget has no room for a second write"
        );
        // Answering (dropping) the first gives its bytes back.
        log.messages.lock().clear();
        let mut second = timeout(Duration::from_secs(10), second)
            .await
            .expect("room once the first is answered")
            .unwrap();
        log.messages.lock().clear();
        assert!(matches!(second.wait().await, Err(Error::ShuttingDown)));
    }

    #[tokio::test]
    async fn a_failed_log_refuses_writes_before_queueing_them() {
        let log = Held::new(100, Some("fdatasync failed"));
        let refused = log.submit_all(vec![change(), change()]).await.err();
        assert!(matches!(refused, Some(Error::StorageFailed(m)) if m == "fdatasync failed"));
        assert!(log.messages.lock().is_empty());
        assert_eq!(log.budget.available_permits(), 100);
    }
}
