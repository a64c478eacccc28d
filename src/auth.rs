//! Authentication: the shared token, its constant-time check, and the
//! throttling of failed attempts.
//!
//! With a token configured (`--auth-token-file` or `KVSTORE_AUTH_TOKEN`), a
//! connection must send `Auth { token }` before anything else; until then the
//! server accepts frames of at most [`PRE_AUTH_MAX_FRAME`] bytes and answers
//! every other command with `Unauthenticated`. A wrong token is answered only
//! after a pause that doubles with each failure on the connection (from
//! [`FIRST_FAILURE_DELAY`]), failures across all connections are spaced at
//! least [`FAILURE_SPACING`] apart, and a connection is closed after
//! [`MAX_FAILURES`] failures. The token is compared in constant time (its
//! length is not secret: use a long random token).

use std::time::Duration;

use bytes::Bytes;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The largest frame a connection may send before it has authenticated: room
/// for a token, not for a payload.
pub const PRE_AUTH_MAX_FRAME: usize = 4096;
/// The pause before answering a connection's first failed attempt; it doubles
/// with each further failure.
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(100);
/// Failed attempts a connection may make before it is closed.
pub const MAX_FAILURES: u32 = 5;
/// How long a new connection has to log in before it is closed, so
/// connections that never authenticate cannot sit on connection slots.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands other than `Auth` a connection may send before logging in; the
/// last one's reply is followed by the close.
pub const MAX_UNAUTHENTICATED_COMMANDS: u32 = 16;
/// The least time between two failed attempts anywhere on the server, so many
/// connections together guess no faster than 100 times a second.
pub const FAILURE_SPACING: Duration = Duration::from_millis(10);

/// The server's authentication state: shared by all connections.
pub struct Auth {
    /// `None`: no token configured, every connection is trusted.
    token: Option<Bytes>,
    /// When the next failed attempt may be answered (server-wide).
    next_failure: Mutex<Instant>,
}

impl Auth {
    pub fn new(token: Option<Bytes>) -> Auth {
        Auth {
            token,
            next_failure: Mutex::new(Instant::now()),
        }
    }

    /// Whether connections must authenticate.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `presented` is the token (always true without one).
    pub fn check(&self, presented: &[u8]) -> bool {
        match &self.token {
            Some(token) => {
                token.len() == presented.len() && bool::from(token.as_ref().ct_eq(presented))
            }
            None => true,
        }
    }

    /// Waits before a failed attempt is answered: `failures` (this
    /// connection's count, this one included) sets the doubling pause, and
    /// the server-wide spacing applies on top.
    pub async fn throttle_failure(&self, failures: u32) {
        let pause = FIRST_FAILURE_DELAY * 2u32.saturating_pow(failures.saturating_sub(1).min(10));
        let slot = {
            let mut next = self.next_failure.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + FAILURE_SPACING;
            slot
        };
        tokio::time::sleep_until(slot.max(Instant::now() + pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let auth = Auth::new(Some(Bytes::from_static(b"s3cret-token")));
        assert!(auth.required());
        assert!(auth.check(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-token!", b"S3cret-token"] {
            assert!(!auth.check(wrong), "{wrong:?}");
        }
        let open = Auth::new(None);
        assert!(!open.required());
        assert!(open.check(b"anything"));
    }
}
