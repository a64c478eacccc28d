//! Client sessions: exactly-once writes in cluster mode, as the Raft
//! dissertation's client interaction chapter (6.3) describes and etcd and
//! TiKV do.
//!
//! A client opens a session (an entry of the log: every node hands out the
//! same id) and numbers its writes. The state machine keeps, per session,
//! the outcome of each applied write the client has not yet acknowledged;
//! a write that arrives again (a resend after a lost reply, possibly to
//! another leader) gets the recorded outcome and is not applied twice.
//!
//! Everything here is decided from the log alone, so every node holds the
//! same table: time is the leader's clock as each entry carries it (never
//! a follower's), kept monotonic; the idle limit and the table's bound
//! travel in the entries too. The table is kept with the applied state (the
//! disk engine's note, the snapshots).

use std::collections::BTreeMap;

use kvstore_client::ErrorCode;
use serde::{Deserialize, Serialize};

use super::Outcome;

/// The most outcomes a session keeps for writes the client has not
/// acknowledged: its writes in flight at once (the client library keeps
/// within it).
pub const MAX_PENDING: usize = kvstore_client::protocol::MAX_SESSION_PENDING;

/// What a write in a session carries into its log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub session: u64,
    /// The write's number in its session (from 1).
    pub seq: u64,
    /// Every write of the session numbered up to this one has its answer:
    /// the client will not send them again.
    pub acked: u64,
    /// The leader's clock when it took the write (ms since the epoch).
    pub time_ms: u64,
    /// How long a session may go without a write before it expires.
    pub idle_ms: u64,
}

/// The sessions of the state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// The latest time any entry carried: the clock of expiry.
    now_ms: u64,
    /// Group 1, which opens sessions: the last id handed out. Any other
    /// group: the highest id it has forgotten (expired), below which a
    /// session it does not hold is never taken in again.
    last_id: u64,
    table: BTreeMap<u64, Session>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    acked: u64,
    /// Outcomes of the applied writes after `acked`, by number.
    outcomes: BTreeMap<u64, Outcome>,
    last_active_ms: u64,
}

/// What to do with a write of a session.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Apply it, then [`Sessions::record`] its outcome.
    Apply,
    /// It was applied before: answer with this, apply nothing.
    Replay(Outcome),
    /// Refused (nothing is applied or recorded).
    Refuse(Outcome),
}

fn refused(code: ErrorCode, message: String) -> Outcome {
    Outcome::Rejected {
        code: code as u32,
        message,
    }
}

impl Sessions {
    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn advance(&mut self, time_ms: u64) {
        self.now_ms = self.now_ms.max(time_ms);
    }

    /// Opens a session at `time_ms`; its id, or a refusal when
    /// `max_sessions` are open and none has been idle for `idle_ms`.
    pub fn open(&mut self, time_ms: u64, idle_ms: u64, max_sessions: usize) -> Outcome {
        self.advance(time_ms);
        // Expired sessions go here (a write finds its own): the table holds
        // the sessions active within the idle time, and is that small in
        // the notes and snapshots.
        let now = self.now_ms;
        (self.table).retain(|_, s| s.last_active_ms.saturating_add(idle_ms) >= now);
        if self.table.len() >= max_sessions {
            return refused(
                ErrorCode::TooManySessions,
                format!("{max_sessions} client sessions are open; none has expired yet"),
            );
        }
        self.last_id += 1;
        let session = Session {
            acked: 0,
            outcomes: BTreeMap::new(),
            last_active_ms: self.now_ms,
        };
        self.table.insert(self.last_id, session);
        Outcome::Int(self.last_id as i64)
    }

    /// Decides what to do with the write `stamp` describes. With `adopt`
    /// (a group other than group 1, where sessions are opened), a session
    /// first seen here is taken in, unless its id is at or below the
    /// highest this group has forgotten: a resend after this group expired
    /// its session could otherwise be applied twice.
    pub fn admit(&mut self, stamp: &Stamp, adopt: bool) -> Admit {
        self.advance(stamp.time_ms);
        let now = self.now_ms;
        let id = stamp.session;
        let expired = |s: &Session| s.last_active_ms.saturating_add(stamp.idle_ms) < now;
        if self.table.get(&id).is_none_or(expired) {
            if self.table.remove(&id).is_some() && adopt {
                self.last_id = self.last_id.max(id);
            }
            if !adopt || id <= self.last_id {
                return Admit::Refuse(refused(
                    ErrorCode::SessionExpired,
                    format!("client session {id} is unknown or expired; open a new one"),
                ));
            }
            self.forget_expired(stamp.idle_ms);
        }
        let session = self.table.entry(id).or_insert_with(|| Session {
            acked: 0,
            outcomes: BTreeMap::new(),
            last_active_ms: now,
        });
        session.last_active_ms = now;
        if stamp.acked > session.acked {
            session.acked = stamp.acked;
            session.outcomes = session.outcomes.split_off(&(stamp.acked + 1));
        }
        if stamp.seq <= session.acked {
            return Admit::Refuse(refused(
                ErrorCode::Malformed,
                format!(
                    "write {} of client session {id} was already acknowledged",
                    stamp.seq
                ),
            ));
        }
        if let Some(outcome) = session.outcomes.get(&stamp.seq) {
            return Admit::Replay(outcome.clone());
        }
        if session.outcomes.len() >= MAX_PENDING {
            return Admit::Refuse(refused(
                ErrorCode::TooManySessions,
                format!("client session {id} has {MAX_PENDING} writes not acknowledged"),
            ));
        }
        Admit::Apply
    }

    /// Drops the sessions idle for longer than `idle_ms` (in a group that
    /// takes sessions in), remembering the highest id dropped.
    fn forget_expired(&mut self, idle_ms: u64) {
        let now = self.now_ms;
        let last_id = &mut self.last_id;
        self.table.retain(|id, s| {
            let keep = s.last_active_ms.saturating_add(idle_ms) >= now;
            if !keep {
                *last_id = (*last_id).max(*id);
            }
            keep
        });
    }

    /// Group 1: the last session id handed out (see `last_id`).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Keeps the outcome of an admitted write.
    pub fn record(&mut self, stamp: &Stamp, outcome: Outcome) {
        if let Some(session) = self.table.get_mut(&stamp.session) {
            session.outcomes.insert(stamp.seq, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 60_000;

    fn stamp(session: u64, seq: u64, acked: u64, time_ms: u64) -> Stamp {
        Stamp {
            session,
            seq,
            acked,
            time_ms,
            idle_ms: IDLE,
        }
    }

    fn opened(sessions: &mut Sessions, time_ms: u64) -> u64 {
        match sessions.open(time_ms, IDLE, 10) {
            Outcome::Int(id) => id as u64,
            other => panic!("{other:?}"),
        }
    }

    fn code(admit: Admit) -> u32 {
        match admit {
            Admit::Refuse(Outcome::Rejected { code, .. }) => code,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_write_seen_again_gets_its_first_outcome_and_is_not_applied() {
        let mut sessions = Sessions::default();
        let id = opened(&mut sessions, 1_000);
        let first = stamp(id, 1, 0, 1_000);
        assert_eq!(sessions.admit(&first, false), Admit::Apply);
        sessions.record(&first, Outcome::Deleted(true));
        // The resend, whatever it would do now, answers what the first did.
        assert_eq!(
            sessions.admit(&stamp(id, 1, 0, 2_000), false),
            Admit::Replay(Outcome::Deleted(true))
        );
        // Writes in flight together may arrive in any order.
        let (third, second) = (stamp(id, 3, 0, 2_000), stamp(id, 2, 0, 2_000));
        assert_eq!(sessions.admit(&third, false), Admit::Apply);
        sessions.record(&third, Outcome::Stored);
        assert_eq!(sessions.admit(&second, false), Admit::Apply);
    }

    #[test]
    fn acknowledged_outcomes_are_dropped_and_their_resends_refused() {
        let mut sessions = Sessions::default();
        let id = opened(&mut sessions, 0);
        for seq in 1..=3 {
            let s = stamp(id, seq, 0, 0);
            assert_eq!(sessions.admit(&s, false), Admit::Apply);
            sessions.record(&s, Outcome::Int(seq as i64));
        }
        assert_eq!(sessions.admit(&stamp(id, 4, 2, 0), false), Admit::Apply);
        assert_eq!(sessions.table[&id].outcomes.len(), 1, "only 3 is kept");
        let late = sessions.admit(&stamp(id, 2, 2, 0), false);
        assert_eq!(code(late), ErrorCode::Malformed as u32);
    }

    #[test]
    fn sessions_expire_by_the_time_entries_carry_never_going_back() {
        let mut sessions = Sessions::default();
        let (a, b) = (opened(&mut sessions, 0), opened(&mut sessions, 0));
        assert_eq!(sessions.admit(&stamp(b, 1, 0, IDLE), false), Admit::Apply);
        // A later leader whose clock is behind does not revive a.
        let expired = sessions.admit(&stamp(a, 1, 0, IDLE + 1), false);
        assert_eq!(code(expired), ErrorCode::SessionExpired as u32);
        let behind = sessions.admit(&stamp(a, 1, 0, 5), false);
        assert_eq!(code(behind), ErrorCode::SessionExpired as u32);
        assert_eq!(sessions.admit(&stamp(b, 2, 0, 10), false), Admit::Apply);
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_expired_sessions() {
        let mut sessions = Sessions::default();
        for _ in 0..3 {
            assert!(matches!(sessions.open(0, IDLE, 3), Outcome::Int(_)));
        }
        let full = sessions.open(IDLE, IDLE, 3);
        assert!(
            matches!(full, Outcome::Rejected { code, .. } if code == ErrorCode::TooManySessions as u32)
        );
        assert_eq!(sessions.open(IDLE + 1, IDLE, 3), Outcome::Int(4));
        assert_eq!(sessions.len(), 1);
        let id = 4;
        for seq in 1..=MAX_PENDING as u64 {
            let s = stamp(id, seq, 0, IDLE + 1);
            assert_eq!(sessions.admit(&s, false), Admit::Apply);
            sessions.record(&s, Outcome::Stored);
        }
        let over = sessions.admit(&stamp(id, MAX_PENDING as u64 + 1, 0, IDLE + 1), false);
        assert_eq!(code(over), ErrorCode::TooManySessions as u32);
    }

    #[test]
    fn another_group_takes_in_a_session_once_and_never_after_forgetting_it() {
        let mut group = Sessions::default();
        let first = stamp(7, 1, 0, 0);
        assert_eq!(group.admit(&first, true), Admit::Apply);
        group.record(&first, Outcome::Int(1));
        assert_eq!(
            group.admit(&first, true),
            Admit::Replay(Outcome::Int(1)),
            "a resend is not applied twice"
        );
        // An older session first seen after 7 is taken in too.
        assert_eq!(group.admit(&stamp(5, 1, 0, 0), true), Admit::Apply);
        // Once 7 expires here, its resend is refused, and so is any session
        // not held at or below it.
        let later = IDLE + 1;
        assert_eq!(group.admit(&stamp(9, 1, 0, later), true), Admit::Apply);
        assert_eq!(group.len(), 1, "5 and 7 expired");
        let resend = group.admit(&stamp(7, 1, 0, later), true);
        assert_eq!(code(resend), ErrorCode::SessionExpired as u32);
        let older = group.admit(&stamp(6, 1, 0, later), true);
        assert_eq!(code(older), ErrorCode::SessionExpired as u32);
        assert_eq!(group.admit(&stamp(9, 2, 0, later), true), Admit::Apply);
        // Group 1 takes in nothing: its sessions are opened.
        let unknown = Sessions::default().admit(&stamp(3, 1, 0, 0), false);
        assert_eq!(code(unknown), ErrorCode::SessionExpired as u32);
    }
}
