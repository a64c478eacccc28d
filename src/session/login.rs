//! A connection's login: one state machine for every door.
//!
//! With a token configured, a connection is refused everything but a login
//! until it presents the token. A wrong token is answered only after the
//! throttle of `crate::auth` (a doubling pause per connection, spaced
//! server-wide); the connection is closed after [`auth::MAX_FAILURES`]
//! failures, or after [`auth::MAX_UNAUTHENTICATED_COMMANDS`] other commands.
//! The door decides what a login looks like on its wire (`Auth`, `AUTH` or
//! `HELLO ... AUTH`, a bearer token in the call's metadata).

use crate::auth::{self, Auth};

/// One connection's login state; `default()` is not logged in.
#[derive(Debug, Default)]
pub struct Login {
    authenticated: bool,
    /// Failed attempts so far: they set the pause and the close.
    failures: u32,
    /// Commands refused before login.
    refused: u32,
}

/// What became of a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Passed,
    /// Answered after the throttle; `close`: the connection must be closed
    /// after this answer.
    Failed {
        close: bool,
    },
}

impl Login {
    /// A connection's login; already logged in when the server has no token.
    pub fn new(auth: &Auth) -> Login {
        Login {
            authenticated: !auth.required(),
            failures: 0,
            refused: 0,
        }
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Marks the connection logged in by a door that checked the token
    /// itself (gRPC, with every call).
    pub fn admit(&mut self) {
        self.authenticated = true;
    }

    /// A login attempt that `passed` the token check (or not): a failure
    /// returns only after the throttle.
    pub async fn attempt(&mut self, auth: &Auth, passed: bool) -> Attempt {
        if passed {
            self.authenticated = true;
            return Attempt::Passed;
        }
        self.failures += 1;
        auth.throttle_failure(self.failures).await;
        Attempt::Failed {
            close: self.failures >= auth::MAX_FAILURES,
        }
    }

    /// Counts a command refused before login; true when the connection must
    /// be closed after its answer.
    pub fn refuse(&mut self) -> bool {
        self.refused += 1;
        self.refused >= auth::MAX_UNAUTHENTICATED_COMMANDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::time::Instant;

    fn server_with_token() -> Auth {
        Auth::new(Some(Bytes::from_static(b"t")))
    }

    #[test]
    fn without_a_token_a_connection_starts_logged_in() {
        assert!(Login::new(&Auth::new(None)).authenticated());
        assert!(!Login::new(&server_with_token()).authenticated());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_wait_longer_each_time_and_close_at_the_limit() {
        let auth = server_with_token();
        let mut login = Login::new(&auth);
        let mut pauses = Vec::new();
        for n in 1..=auth::MAX_FAILURES {
            let start = Instant::now();
            let attempt = login.attempt(&auth, false).await;
            pauses.push(start.elapsed());
            let close = n == auth::MAX_FAILURES;
            assert_eq!(attempt, Attempt::Failed { close }, "failure {n}");
        }
        for pair in pauses.windows(2) {
            assert_eq!(pair[1], pair[0] * 2, "{pauses:?}");
        }
        assert_eq!(pauses[0], auth::FIRST_FAILURE_DELAY);
        assert!(!login.authenticated());
    }

    #[tokio::test(start_paused = true)]
    async fn a_right_token_passes_at_once() {
        let auth = server_with_token();
        let mut login = Login::new(&auth);
        login.attempt(&auth, false).await;
        let start = Instant::now();
        assert_eq!(login.attempt(&auth, true).await, Attempt::Passed);
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert!(login.authenticated());
    }

    #[test]
    fn refused_commands_close_at_the_limit() {
        let mut login = Login::new(&server_with_token());
        for n in 1..auth::MAX_UNAUTHENTICATED_COMMANDS {
            assert!(!login.refuse(), "command {n}");
        }
        assert!(login.refuse());
    }
}
