//! The client's side of exactly-once writes (`OpenSession`, `Once`): one
//! session per client, opened on the first write, and the numbering of its
//! writes. docs/replication.md says what it promises.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::protocol::MAX_SESSION_PENDING;

/// A client's session, as far as it got.
#[derive(Default)]
pub(crate) enum Slot {
    /// None opened yet (or the last one expired).
    #[default]
    None,
    Open(Arc<Session>),
    /// The server has no sessions (a server running alone): writes go
    /// plain, at least once.
    Unsupported,
}

/// An open session and the numbers of its writes.
pub(crate) struct Session {
    pub(crate) id: u64,
    numbers: std::sync::Mutex<Numbers>,
    /// The most writes from the oldest one in flight to the newest
    /// ([`MAX_SESSION_PENDING`]: the cluster refuses more).
    window: u64,
    /// Told when a write is done, for those waiting for the window.
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Numbers {
    /// The last number handed out.
    last: u64,
    /// Writes numbered but not yet answered (or given up on).
    outstanding: BTreeSet<u64>,
}

impl Session {
    pub(crate) fn new(id: u64) -> Session {
        Session::with_window(id, MAX_SESSION_PENDING as u64)
    }

    fn with_window(id: u64, window: u64) -> Session {
        Session {
            id,
            numbers: Default::default(),
            window,
            freed: Default::default(),
        }
    }

    /// The next write's number, and the number up to which every write has
    /// its answer (so the cluster may forget their outcomes). Waits while
    /// the window is full: the cluster keeps the outcomes of the writes
    /// from the oldest in flight on, and refuses a write past
    /// [`MAX_SESSION_PENDING`] of them.
    pub(crate) async fn number(&self) -> (u64, u64) {
        loop {
            // Made before looking, so that a write done meanwhile wakes it.
            let freed = self.freed.notified();
            if let Some(numbers) = self.next() {
                return numbers;
            }
            freed.await;
        }
    }

    /// [`Session::number`] if the window has room.
    fn next(&self) -> Option<(u64, u64)> {
        let mut numbers = self.numbers.lock().unwrap_or_else(|e| e.into_inner());
        let seq = numbers.last + 1;
        let oldest = numbers.outstanding.first().copied().unwrap_or(seq);
        if seq - (oldest - 1) > self.window {
            return None;
        }
        numbers.last = seq;
        numbers.outstanding.insert(seq);
        Some((seq, oldest - 1))
    }

    /// Write `seq` is answered, or the client has stopped trying: it will
    /// never be sent again.
    pub(crate) fn done(&self, seq: u64) {
        let mut numbers = self.numbers.lock().unwrap_or_else(|e| e.into_inner());
        numbers.outstanding.remove(&seq);
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acked_stays_below_the_oldest_write_in_flight() {
        let session = Session::new(7);
        assert_eq!(session.number().await, (1, 0));
        assert_eq!(session.number().await, (2, 0));
        session.done(2);
        assert_eq!(session.number().await, (3, 0), "1 is still in flight");
        session.done(1);
        assert_eq!(session.number().await, (4, 2));
        session.done(3);
        session.done(4);
        assert_eq!(session.number().await, (5, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waits_while_the_window_from_the_oldest_is_full() {
        let session = std::sync::Arc::new(Session::with_window(7, 3));
        assert_eq!(session.number().await, (1, 0));
        assert_eq!(session.number().await, (2, 0));
        assert_eq!(session.number().await, (3, 0));
        session.done(2);
        session.done(3);
        // 1 is still in flight: a fourth write would make 4 from it.
        let wait = std::time::Duration::from_secs(60);
        let full = tokio::time::timeout(wait, session.number()).await;
        assert!(full.is_err(), "numbered past the window: {full:?}");
        let waiting = tokio::spawn({
            let session = session.clone();
            async move { session.number().await }
        });
        tokio::task::yield_now().await;
        session.done(1);
        assert_eq!(waiting.await.unwrap(), (4, 3));
    }
}
