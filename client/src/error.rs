//! The one error type of this crate.

/// What can go wrong between bytes and typed messages.
///
/// `#[non_exhaustive]`: the client library adds connection-level variants.
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
    /// A message could not be encoded (it is larger than the frame limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl Error {
    /// Protocol errors are never worth retrying: the same bytes fail the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
