//! The server's one error type.

use std::path::{Path, PathBuf};

/// What can stop the server or fail a write. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed. Not retried: the caller decides whether it is
    /// fatal (for the log it always is).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file on disk is damaged in a way recovery must not guess about. The
    /// server refuses to start; an operator restores from a backup or removes
    /// the damage knowingly.
    #[error("{path} is damaged at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process holds the data's lock.
    #[error("{0} is in use by another kvstore-server process")]
    Locked(PathBuf),
    /// The log failed earlier; writes are refused until a restart.
    #[error("storage failed and refuses writes until the server is restarted: {0}")]
    StorageFailed(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A write that reads first cannot be carried out on the current value
    /// (`Incr` of a non-number, an overflow, an `Append` past the value
    /// limit). Nothing was written; sending it again fails the same way
    /// until the value changes.
    #[error("{message}")]
    Rejected {
        code: kvstore_client::ErrorCode,
        message: String,
    },
    /// A backup could not be made or go on (see `crate::backup`). Nothing
    /// else is affected; the client may try again once the cause is gone.
    #[error("backup failed: {0}")]
    Backup(String),
    /// Cluster mode: a write was proposed but its outcome is not known
    /// (leadership changed, or the node stopped, before it was committed).
    /// It may or may not be applied; resend only an idempotent write.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A flag or a combination of flags makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}
