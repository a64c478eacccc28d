//! The client's side of exactly-once writes (`OpenSession`, `Once`): one
//! session per client, opened on the first write, and the numbering of its
//! writes. docs/replication.md says what it promises.

use std::collections::BTreeSet;
use std::sync::Arc;

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
        Session {
            id,
            numbers: Default::default(),
        }
    }

    /// The next write's number, and the number up to which every write has
    /// its answer (so the cluster may forget their outcomes).
    pub(crate) fn number(&self) -> (u64, u64) {
        let mut numbers = self.numbers.lock().unwrap_or_else(|e| e.into_inner());
        numbers.last += 1;
        let seq = numbers.last;
        numbers.outstanding.insert(seq);
        let oldest = numbers.outstanding.first().copied().unwrap_or(seq);
        (seq, oldest - 1)
    }

    /// Write `seq` is answered, or the client has stopped trying: it will
    /// never be sent again.
    pub(crate) fn done(&self, seq: u64) {
        let mut numbers = self.numbers.lock().unwrap_or_else(|e| e.into_inner());
        numbers.outstanding.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_stays_below_the_oldest_write_in_flight() {
        let session = Session::new(7);
        assert_eq!(session.number(), (1, 0));
        assert_eq!(session.number(), (2, 0));
        session.done(2);
        assert_eq!(session.number(), (3, 0), "1 is still in flight");
        session.done(1);
        assert_eq!(session.number(), (4, 2));
        session.done(3);
        session.done(4);
        assert_eq!(session.number(), (5, 4));
    }
}
