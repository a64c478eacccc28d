//! Watches: [`WatchStream`] reads the changes the server streams for one
//! `Watch` on a connection of its own, and watches again from where it was
//! when the connection, or the server, goes away (docs/watch.md).

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::client::unexpected;
use crate::mux::Mux;
use crate::{Client, Command, Error, ErrorCode, Event, Reply};

/// Replies the connection reads ahead of the caller; past them it stops
/// reading, and the server, once far enough behind, ends the watch with
/// `SlowWatcher`.
const READ_AHEAD: usize = 64;

/// The changes to the keys under a prefix, in log order, as the server
/// applies them ([`Client::watch`]). Dropping it ends the watch.
pub struct WatchStream {
    client: Client,
    prefix: Bytes,
    /// The watch's own connection (the server streams on it) and the
    /// replies read from it.
    connection: (Mux, mpsc::Receiver<Reply>),
    revision: u64,
}

impl WatchStream {
    /// Watches `prefix` from `from_revision` (0: from now) at the client's
    /// current server.
    pub(crate) async fn start(
        client: Client,
        prefix: Bytes,
        from_revision: u64,
    ) -> Result<Self, Error> {
        let (connection, revision) = open(&client, &prefix, from_revision).await?;
        Ok(WatchStream {
            client,
            prefix,
            connection,
            revision,
        })
    }

    /// The next changes: at least one, in log order, each once. When the
    /// connection breaks, the server stops, or the watcher fell behind
    /// (`SlowWatcher`), it watches again from [`WatchStream::revision`] + 1,
    /// at the next node of a cluster if the server cannot be reached, up to
    /// the client's `max_attempts` times in a row. Other errors end the
    /// watch: `Compacted` (the server's history no longer holds the
    /// revision to go on from: read the keys and watch from now).
    pub async fn next(&mut self) -> Result<Vec<Event>, Error> {
        let mut pauses = self.client.pauses();
        let mut error = match self.receive().await {
            Err(error) if resumable(&error) => error,
            done => return done,
        };
        loop {
            let Some(pause) = pauses.next() else {
                return Err(error);
            };
            self.client.steer_after(&error);
            tokio::time::sleep(pause).await;
            error = match open(&self.client, &self.prefix, self.revision + 1).await {
                Ok((connection, _)) => {
                    self.connection = connection;
                    match self.receive().await {
                        Err(error) if resumable(&error) => error,
                        done => return done,
                    }
                }
                Err(error) if resumable(&error) => error,
                Err(error) => return Err(error),
            };
        }
    }

    /// The next changes on the current connection.
    async fn receive(&mut self) -> Result<Vec<Event>, Error> {
        loop {
            let reply = self
                .connection
                .1
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

/// Whether watching again from the last revision may go on: the
/// connection or the server went away, or the watcher fell behind.
fn resumable(error: &Error) -> bool {
    match error {
        Error::Connect { .. } | Error::ConnectionLost(_) | Error::Timeout { .. } => true,
        Error::Server { code, .. } => [ErrorCode::SlowWatcher, ErrorCode::ShuttingDown]
            .iter()
            .any(|c| *c as u32 == *code),
        _ => false,
    }
}

/// Sends `Watch` on a connection of its own and waits for the server to
/// put it in place: the connection, and the revision it starts at.
async fn open(
    client: &Client,
    prefix: &Bytes,
    from_revision: u64,
) -> Result<((Mux, mpsc::Receiver<Reply>), u64), Error> {
    let mux = client.open_own().await?;
    let (more, replies) = mpsc::channel(READ_AHEAD);
    let command = Command::Watch {
        prefix: prefix.clone(),
        from_revision,
    };
    let first = mux.send_streaming(command, Some(more)).await?;
    let first = first
        .await
        .map_err(|_| Error::ConnectionLost("the connection closed during Watch".into()))??;
    match first {
        Reply::Events { revision, .. } => Ok(((mux, replies), revision)),
        Reply::Error { code, message } => Err(Error::Server { code, message }),
        other => Err(unexpected("Events", &other)),
    }
}
