//! The one error type of this crate, classified by whether a retry can help.

use std::time::Duration;

use crate::ErrorCode;

/// Everything that can go wrong talking to a kvstore server.
///
/// `#[non_exhaustive]`: new variants may be added. Use [`Error::is_retryable`]
/// rather than matching exhaustively to decide whether to try again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is not a valid bincode encoding of the expected type (unknown
    /// variant tag, a length beyond the body's end, invalid UTF-8, ...).
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body decoded, but bytes were left over after it.
    #[error("malformed body: {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke while a request was outstanding; the request may
    /// or may not have been carried out.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No answer within the time limit; the request may or may not have been
    /// carried out.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out: "connect", "request", or "call (all attempts)".
        what: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// The server answered with an error ([`ErrorCode`] names the known codes).
    #[error("server error {code}: {message}")]
    Server {
        /// The [`ErrorCode`] number ([`Error::code`] decodes it).
        code: u32,
        /// The server's explanation.
        message: String,
    },
    /// The server answered something this client did not expect (a reply of
    /// the wrong kind, or for another request).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// TLS could not be set up (a certificate file, the handshake).
    #[error("TLS: {0}")]
    Tls(String),
    /// The address is not `host:port` or `kvstore://host:port`.
    #[error("invalid address {0:?}: expected host:port or kvstore://host:port")]
    InvalidAddress(String),
    /// Writing a backup's bytes to their destination failed.
    #[error("cannot write the backup: {0}")]
    Output(#[source] std::io::Error),
    /// A value could not be converted to or from JSON (`set_json`, `get_json`).
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Whether trying the same request again may succeed: connection
    /// failures, lost connections and timeouts, and the server errors meant to
    /// be retried (`TooManyConnections`, `ShuttingDown`). Limits, malformed
    /// requests and `StorageFailed` fail the same way every time, so they are
    /// never retried. The idempotent commands are retried on any of these (a
    /// retried `Delete` may answer "did not exist" if the first attempt
    /// removed the key); `Incr` and `Append` only when [`Error::never_arrived`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectionLost(_) | Error::Timeout { .. } => true,
            Error::Server { code, .. } => {
                ErrorCode::from_code(*code).is_some_and(ErrorCode::is_retryable)
            }
            _ => false,
        }
    }

    /// Whether the failed request certainly was not carried out: no
    /// connection could be made, or the server refused it before doing
    /// anything (`TooManyConnections`, `ShuttingDown`, `NotLeader`,
    /// `Lagging`, and a sharded cluster's `Moved` and `TryAgain`). A lost
    /// connection, a timeout or `OutcomeUnknown` leaves it unknown.
    pub fn never_arrived(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Timeout {
                what: "connect", ..
            } => true,
            // Listed one by one: a retryable code added later is not
            // "never arrived" until someone decides it is.
            Error::Server { code, .. } => matches!(
                ErrorCode::from_code(*code),
                Some(
                    ErrorCode::TooManyConnections
                        | ErrorCode::ShuttingDown
                        | ErrorCode::NotLeader
                        | ErrorCode::Lagging
                        | ErrorCode::Moved
                        | ErrorCode::TryAgain
                )
            ),
            _ => false,
        }
    }

    /// The server's error code, if this is a server error this version knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }
}
