//! A connection's timeouts: the read timeout (a request that takes too long
//! to arrive), the idle timeout (nothing sent and nothing owed), and the
//! login deadline. Pure bookkeeping over instants the loop passes in, so the
//! rules are tested without a socket or a timer.

use tokio::time::Instant;

use crate::auth;
use crate::config::Timeouts;

/// What the loop saw after one turn.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The connection is reading (not shutting down, not full): a request
    /// half arrived is then the client's delay, not the server's.
    pub reading: bool,
    /// Bytes of a request have arrived that do not make a whole one yet.
    pub partial: bool,
    /// Requests read whole so far: when it moves, one completed.
    pub completed: u64,
    /// Requests read and not yet answered.
    pub owed: bool,
    pub logged_in: bool,
}

/// Why a connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    Read,
    Idle,
    Login,
}

pub struct Clock {
    timeouts: Timeouts,
    /// When the request now arriving began to arrive.
    partial_since: Option<Instant>,
    /// `Seen::completed` at the last turn.
    completed: u64,
    /// When the client last sent anything or was owed a reply.
    last_heard: Instant,
    /// By when the client must have logged in.
    login_deadline: Option<Instant>,
}

impl Clock {
    pub fn new(timeouts: Timeouts, now: Instant, logged_in: bool) -> Clock {
        Clock {
            timeouts,
            partial_since: None,
            completed: 0,
            last_heard: now,
            login_deadline: (!logged_in).then(|| now + auth::LOGIN_TIMEOUT),
        }
    }

    /// Records a turn of the loop; says why the connection must close, if
    /// a limit has passed.
    pub fn observe(&mut self, now: Instant, seen: Seen) -> Option<Expired> {
        if !(seen.reading && seen.partial) {
            // Nothing in progress, or the server itself is not reading.
            self.partial_since = None;
        } else if self.partial_since.is_none() || seen.completed != self.completed {
            // A new request started arriving (or one completed and the next
            // has begun): its clock starts now.
            self.partial_since = Some(now);
        }
        self.completed = seen.completed;
        if seen.owed || self.partial_since.is_some() {
            self.last_heard = now;
        }
        if !seen.reading {
            return None;
        }
        if let (Some(limit), Some(since)) = (self.timeouts.read, self.partial_since) {
            if now >= since + limit {
                return Some(Expired::Read);
            }
        }
        if let Some(limit) = self.timeouts.idle {
            if !seen.owed && self.partial_since.is_none() && now >= self.last_heard + limit {
                return Some(Expired::Idle);
            }
        }
        if self
            .login_deadline
            .is_some_and(|deadline| !seen.logged_in && now >= deadline)
        {
            return Some(Expired::Login);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn timeouts(read: u64, idle: u64) -> Timeouts {
        Timeouts {
            read: Some(MS * read as u32),
            idle: Some(MS * idle as u32),
            write: None,
        }
    }

    fn seen(partial: bool, completed: u64, owed: bool) -> Seen {
        Seen {
            reading: true,
            partial,
            completed,
            owed,
            logged_in: true,
        }
    }

    #[test]
    fn a_request_that_keeps_arriving_too_long_is_cut_off() {
        let t0 = Instant::now();
        let mut clock = Clock::new(timeouts(100, 10_000), t0, true);
        assert_eq!(clock.observe(t0 + MS * 10, seen(true, 0, false)), None);
        assert_eq!(clock.observe(t0 + MS * 109, seen(true, 0, false)), None);
        assert_eq!(
            clock.observe(t0 + MS * 110, seen(true, 0, false)),
            Some(Expired::Read)
        );
    }

    #[test]
    fn each_completed_request_restarts_the_read_clock() {
        let t0 = Instant::now();
        let mut clock = Clock::new(timeouts(100, 10_000), t0, true);
        for n in 0..10u32 {
            let now = t0 + MS * (90 * n);
            assert_eq!(clock.observe(now, seen(true, n.into(), true)), None);
        }
    }

    #[test]
    fn a_server_that_is_not_reading_does_not_blame_the_client() {
        let t0 = Instant::now();
        let mut clock = Clock::new(timeouts(100, 100), t0, true);
        let full = Seen {
            reading: false,
            ..seen(true, 0, true)
        };
        assert_eq!(clock.observe(t0 + MS * 500, full), None);
    }

    #[test]
    fn idle_counts_only_when_nothing_is_owed_or_arriving() {
        let t0 = Instant::now();
        let mut clock = Clock::new(timeouts(10_000, 100), t0, true);
        // A slow reply owed to the client keeps it alive.
        assert_eq!(clock.observe(t0 + MS * 150, seen(false, 1, true)), None);
        assert_eq!(clock.observe(t0 + MS * 249, seen(false, 1, false)), None);
        assert_eq!(
            clock.observe(t0 + MS * 250, seen(false, 1, false)),
            Some(Expired::Idle)
        );
    }

    #[test]
    fn a_connection_that_never_logs_in_is_closed() {
        let t0 = Instant::now();
        let none = Timeouts {
            read: None,
            idle: None,
            write: None,
        };
        let mut clock = Clock::new(none, t0, false);
        let waiting = Seen {
            logged_in: false,
            ..seen(false, 3, true)
        };
        let late = t0 + auth::LOGIN_TIMEOUT;
        assert_eq!(clock.observe(late - MS, waiting), None);
        assert_eq!(clock.observe(late, waiting), Some(Expired::Login));
        let in_time = Seen {
            logged_in: true,
            ..waiting
        };
        assert_eq!(clock.observe(late, in_time), None);
    }
}
