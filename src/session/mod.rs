//! One connection's session, the same for every door: login and its
//! throttling ([`login`]), the read, idle, write and login timeouts
//! ([`clock`]), pipelining, reply order and backpressure ([`pipeline`]).
//! A door ([`Door`]) brings only its codec and how its requests map onto
//! `crate::cmd`: the native door (`crate::handler`) and the RESP door
//! (`crate::resp`) both run [`serve`]. The gRPC door's calls are HTTP/2
//! streams that hyper multiplexes; it shares [`login::Login`] and the limits,
//! and each call is one request (`crate::grpc::gate`).

pub mod clock;
pub mod login;
pub mod pipeline;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kvstore_client::{Command, Reply};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Timeouts;
use crate::db::Db;
use clock::{Clock, Seen};
use pipeline::Pipeline;

/// What reading the next request gave.
pub enum Incoming<R, P> {
    Request(R),
    /// The client closed the connection (or it broke).
    Closed,
    /// The request was unacceptable: answer this and close, because the
    /// stream can no longer be trusted to be in step.
    Refused(P),
}

/// What a request became once its turn came.
pub enum Step<D: Door> {
    /// Answered now (a read, a connection command, an error).
    Answer(D::Reply),
    /// A data write for the log; its reply is made from the outcome and the
    /// tag by [`Door::finish`].
    Write(Command, D::Tag),
}

/// A door's codec and its requests' meaning; everything else about a
/// connection is the session's.
pub trait Door: Sized + Send {
    /// A request as the codec decodes it.
    type Request: Send;
    /// A reply as the codec encodes it.
    type Reply: Send;
    /// What a write's reply needs besides the native reply.
    type Tag: Send;

    /// Reads the next request. Must be cancel-safe.
    fn read(&mut self) -> impl Future<Output = Incoming<Self::Request, Self::Reply>> + Send;
    /// Whether a whole request is already buffered (reading it will not
    /// wait for the client).
    fn whole_buffered(&mut self) -> bool;
    /// Whether bytes of a request have arrived that do not make a whole one.
    fn partial(&self) -> bool;
    /// Requests read whole so far.
    fn completed(&self) -> u64;
    /// Whether the request is a data write: it joins the log's batches, and
    /// a read behind it waits for it.
    fn is_write(&self, request: &Self::Request) -> bool;
    /// Roughly the bytes a waiting request holds.
    fn size(request: &Self::Request) -> usize;
    /// Runs a request whose turn has come.
    fn start(&mut self, request: Self::Request) -> impl Future<Output = Step<Self>> + Send;
    /// A write's reply, from its outcome.
    fn finish(&self, tag: Self::Tag, reply: Reply) -> Self::Reply;
    /// Queues a reply without flushing.
    fn feed(&mut self, reply: Self::Reply) -> impl Future<Output = std::io::Result<()>> + Send;
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    fn logged_in(&self) -> bool;
    /// The door decided to close once the replies so far are sent (QUIT,
    /// too many failed logins).
    fn closing(&self) -> bool;
    /// Replies a request started that the door sends unasked (a watch's
    /// changes), taken once: they follow the replies before them, and
    /// replace any the connection had.
    fn pushes(&mut self) -> Option<Pushes<Self::Reply>> {
        None
    }
}

/// Replies sent unasked, until the stream ends.
pub type Pushes<R> = futures_util::stream::BoxStream<'static, R>;

/// The next of `pushes`, if any; never ready without them.
async fn next_push<R>(pushes: &mut Option<Pushes<R>>) -> Option<R> {
    match pushes {
        Some(pushes) => pushes.next().await,
        None => std::future::pending().await,
    }
}

/// Serves one client until it leaves, breaks the protocol, times out, or the
/// server shuts down (then requests already read are answered first).
pub async fn serve<D: Door>(mut door: D, db: Db, timeouts: Timeouts, shutdown: CancellationToken) {
    let mut pipeline = Pipeline::<D>::default();
    let mut pushes = None;
    let mut reading = true;
    let mut clock = Clock::new(timeouts, Instant::now(), door.logged_in());
    let mut ticker = timeouts.ticker(!door.logged_in());
    // One future for the whole connection: a new one per turn registered
    // with, and left, the token's waiter list at every request.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let may_read = reading && pipeline.has_room();
        tokio::select! {
            biased;
            _ = pipeline.wait_front(), if pipeline.front_is_write() => {}
            incoming = door.read(), if may_read => match incoming {
                Incoming::Request(request) => {
                    let burst = door.whole_buffered();
                    pipeline.push(&mut door, request, burst, &db).await;
                }
                Incoming::Closed => reading = false,
                Incoming::Refused(reply) => {
                    pipeline.push_ready(reply);
                    reading = false;
                }
            },
            // One pushed reply at a time: the rest wait in the feed, which
            // ends a watcher that falls too far behind.
            pushed = next_push(&mut pushes), if pipeline.is_empty() => match pushed {
                Some(reply) => pipeline.push_ready(reply),
                None => pushes = None,
            },
            _ = &mut cancelled, if reading => reading = false,
            // Wakes the loop to check the timeouts: bytes that arrive inside
            // a pending read do not.
            _ = ticker.tick(), if may_read => {}
        }
        if door.closing() {
            reading = false;
        }
        let seen = Seen {
            reading: reading && pipeline.has_room(),
            partial: door.partial(),
            completed: door.completed(),
            // A watching connection is not idle.
            owed: !pipeline.is_empty() || pushes.is_some(),
            logged_in: door.logged_in(),
        };
        if let Some(expired) = clock.observe(Instant::now(), seen) {
            tracing::debug!(?expired, "a connection timed out; closing");
            return;
        }
        // While another whole request is already buffered, replies wait in
        // the output buffer and writes wait to join it: a pipelined burst is
        // one log message and one socket write.
        let more_coming = reading && pipeline.has_room() && door.whole_buffered();
        if !more_coming {
            pipeline.start_deferred(&db).await;
        }
        if answer_ready(&mut door, &mut pipeline, &db, timeouts.write, more_coming)
            .await
            .is_err()
        {
            return;
        }
        if door.closing() {
            reading = false;
        }
        if let Some(started) = door.pushes() {
            pushes = Some(started);
        }
        if !reading && pipeline.is_empty() {
            return;
        }
    }
}

/// Sends every reply at the front that is ready, in order; then flushes
/// once, unless `more_coming`.
async fn answer_ready<D: Door>(
    door: &mut D,
    pipeline: &mut Pipeline<D>,
    db: &Db,
    write_timeout: Option<Duration>,
    more_coming: bool,
) -> std::io::Result<()> {
    let mut sent = false;
    while let Some(reply) = pipeline.next_ready(door, db).await {
        stalled_at_most(write_timeout, door.feed(reply)).await?;
        sent = true;
    }
    if sent && !more_coming {
        stalled_at_most(write_timeout, door.flush()).await?;
    }
    Ok(())
}

/// Runs one write to the client, which can only wait when the client's
/// buffers are full; fails if it waits longer than `limit` (the client is not
/// reading its replies).
pub(crate) async fn stalled_at_most(
    limit: Option<Duration>,
    write: impl Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let mut write = std::pin::pin!(write);
    // Nearly every write finds room at once: no clock read and no timer
    // for it.
    if let Some(result) = write.as_mut().now_or_never() {
        return result;
    }
    match limit {
        None => write.await,
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(
                    "the client has not read its replies within the write timeout; closing"
                );
                Err(std::io::ErrorKind::TimedOut.into())
            }),
    }
}
