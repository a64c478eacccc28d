//! Streamed backups: [`BackupStream`] reads one chunk per request on a
//! connection of its own; [`BackupSummary`] is what a finished backup holds.
//!
//! The bytes are a file in kvstore's snapshot format (docs/protocol.md,
//! "Backup"), ready for `kvstore-server --restore FILE`.

use std::time::Duration;

use bytes::Bytes;

use crate::client::{exchange, unexpected};
use crate::mux::Mux;
use crate::{Command, Error, Reply};

/// What a finished backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Key-value pairs copied.
    pub keys: u64,
    /// Writes made during the copy, stored after the pairs and replayed
    /// over them when the backup is loaded.
    pub ops: u64,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// A backup streaming from the server ([`crate::Client::backup_stream`]).
/// Dropping it before the end abandons the backup (the server frees it when
/// the connection closes).
pub struct BackupStream {
    /// The backup's own connection: the server keeps the backup's state on it.
    mux: Mux,
    /// For each chunk's request.
    timeout: Duration,
    /// The next request: `Backup` first, then `BackupNext`.
    started: bool,
    /// Set by the server's `BackupDone`.
    summary: Option<BackupSummary>,
}

impl BackupStream {
    pub(crate) fn new(mux: Mux, timeout: Duration) -> BackupStream {
        BackupStream {
            mux,
            timeout,
            started: false,
            summary: None,
        }
    }

    /// The next bytes of the backup file, or `None` once it is complete
    /// (then [`BackupStream::summary`] says what it holds).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        if self.summary.is_some() {
            return Ok(None);
        }
        let command = if self.started {
            Command::BackupNext
        } else {
            Command::Backup { name: None }
        };
        self.started = true;
        match exchange(&self.mux, command, self.timeout).await? {
            Reply::Chunk(chunk) => Ok(Some(chunk)),
            Reply::BackupDone { keys, ops, bytes } => {
                self.summary = Some(BackupSummary { keys, ops, bytes });
                Ok(None)
            }
            other => Err(unexpected("Chunk", &other)),
        }
    }

    /// What the backup holds, once [`BackupStream::next_chunk`] returned
    /// `None`; an error before.
    pub fn summary(&self) -> Result<BackupSummary, Error> {
        self.summary
            .ok_or_else(|| Error::Protocol("the backup has not ended yet".into()))
    }
}

impl Drop for BackupStream {
    fn drop(&mut self) {
        self.mux.close();
    }
}
