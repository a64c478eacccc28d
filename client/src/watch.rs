//! Watches: [`WatchStream`] reads the changes the server streams for one
//! `Watch` on a connection of its own (docs/watch.md).

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::client::unexpected;
use crate::mux::Mux;
use crate::{Command, Error, Event, Reply};

/// Replies the connection reads ahead of the caller; past them it stops
/// reading, and the server, once far enough behind, ends the watch with
/// `SlowWatcher`.
const READ_AHEAD: usize = 64;

/// The changes to the keys under a prefix, in log order, as the server
/// applies them ([`crate::Client::watch`]). Dropping it ends the watch.
pub struct WatchStream {
    /// The watch's own connection: the server streams on it.
    _mux: Mux,
    replies: mpsc::Receiver<Reply>,
    revision: u64,
}

impl WatchStream {
    /// Sends `Watch` on `mux` (a connection of its own) and waits for the
    /// server to put it in place.
    pub(crate) async fn start(mux: Mux, prefix: Bytes, from_revision: u64) -> Result<Self, Error> {
        let (more, replies) = mpsc::channel(READ_AHEAD);
        let command = Command::Watch {
            prefix,
            from_revision,
        };
        let first = mux.send_streaming(command, Some(more)).await?;
        let first = first
            .await
            .map_err(|_| Error::ConnectionLost("the connection closed during Watch".into()))??;
        let revision = match first {
            Reply::Events { revision, .. } => revision,
            Reply::Error { code, message } => return Err(Error::Server { code, message }),
            other => return Err(unexpected("Events", &other)),
        };
        Ok(WatchStream {
            _mux: mux,
            replies,
            revision,
        })
    }

    /// The next changes: at least one, in log order. An error ends the
    /// watch: `Compacted` (the revision asked for is gone), `SlowWatcher`
    /// (watch again from [`WatchStream::revision`] + 1), or the connection.
    pub async fn next(&mut self) -> Result<Vec<Event>, Error> {
        loop {
            let reply = self
                .replies
                .recv()
                .await
                .ok_or_else(|| Error::ConnectionLost("the watch's connection closed".into()))?;
            match reply {
                Reply::Events { revision, events } => {
                    self.revision = revision;
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Reply::Error { code, message } => return Err(Error::Server { code, message }),
                other => return Err(unexpected("Events", &other)),
            }
        }
    }

    /// Every change up to this revision has been delivered: a new watch
    /// from one past it misses nothing.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}
