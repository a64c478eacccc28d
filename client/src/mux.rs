//! One multiplexed connection: many requests in flight, matched to replies.
//!
//! A background task owns the socket. Callers hand it a [`Command`] and a
//! oneshot sender; the task gives the request the next id, writes it (several
//! queued requests go out in one flush), and when a response arrives hands it
//! to the caller waiting for that id. The server answers in request order, so
//! the waiting callers form a queue and each response must carry the id at its
//! front; anything else is a protocol error that ends the connection.
//!
//! When the socket breaks, every waiting caller gets `ConnectionLost` and the
//! task ends; the [`Client`](crate::Client) notices and connects again on the
//! next call.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::codec::Framed;

use crate::protocol::DEFAULT_MAX_FRAME;
use crate::{codec, Command, Error, Reply, Request, Response};

/// Requests queued for the socket task before callers wait: enough for deep
/// pipelining, bounded so a stalled server slows callers instead of growing
/// memory.
const QUEUE_DEPTH: usize = 1024;
/// Requests written before one flush, at most.
const MAX_BURST: usize = 256;

/// A request on its way, with the place to put its reply.
struct Call {
    command: Command,
    reply: oneshot::Sender<Result<Reply, Error>>,
}

/// A handle to one connection's task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mux {
    calls: mpsc::Sender<Call>,
    /// Aborts the socket task; used when a request timed out, because a
    /// connection whose server stopped answering cannot be trusted further.
    task: AbortHandle,
}

impl Mux {
    /// Connects to `addr` and starts the socket task.
    pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<Mux, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout {
                what: "connect",
                after: timeout,
            })?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let framed = Framed::new(stream, codec::frame_codec(DEFAULT_MAX_FRAME));
        let (calls, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(drive(framed, rx)).abort_handle();
        Ok(Mux { calls, task })
    }

    /// Whether the socket task still runs.
    pub(crate) fn is_alive(&self) -> bool {
        !self.task.is_finished() && !self.calls.is_closed()
    }

    /// Ends the connection; waiting callers get `ConnectionLost`.
    pub(crate) fn close(&self) {
        self.task.abort();
    }

    /// Sends one command; the receiver resolves with its reply.
    pub(crate) async fn send(
        &self,
        command: Command,
    ) -> Result<oneshot::Receiver<Result<Reply, Error>>, Error> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call { command, reply })
            .await
            .map_err(|_| Error::ConnectionLost("the connection is closed".into()))?;
        Ok(rx)
    }
}

/// The socket task.
async fn drive(
    mut framed: Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    mut calls: mpsc::Receiver<Call>,
) {
    let mut waiting: VecDeque<(u64, oneshot::Sender<Result<Reply, Error>>)> = VecDeque::new();
    let mut next_id: u64 = 1;
    let failure = loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else { break None };
                let mut burst = vec![call];
                while burst.len() < MAX_BURST {
                    match calls.try_recv() {
                        Ok(call) => burst.push(call),
                        Err(_) => break,
                    }
                }
                let mut written = Ok(());
                for call in burst {
                    let id = next_id;
                    next_id += 1;
                    match codec::encode(&Request { id, command: call.command }) {
                        Ok(body) => {
                            if written.is_ok() {
                                written = framed.feed(Bytes::from(body)).await;
                            }
                            waiting.push_back((id, call.reply));
                        }
                        Err(e) => {
                            let _ = call.reply.send(Err(e));
                        }
                    }
                }
                if let Err(e) = written.and(SinkExt::<Bytes>::flush(&mut framed).await) {
                    break Some(format!("write failed: {e}"));
                }
            }
            frame = framed.next() => {
                let body = match frame {
                    Some(Ok(body)) => body,
                    Some(Err(e)) => break Some(format!("read failed: {e}")),
                    None => break Some("the server closed the connection".into()),
                };
                let response: Response = match codec::decode(&body) {
                    Ok(r) => r,
                    Err(e) => break Some(format!("undecodable response: {e}")),
                };
                match waiting.pop_front() {
                    Some((id, reply)) if id == response.id => {
                        let _ = reply.send(Ok(response.reply));
                    }
                    front => {
                        // An error the server sends before closing (id 0:
                        // too many connections, a refused frame) goes to the
                        // first caller; everyone else loses the connection.
                        if let (Some((_, reply)), Reply::Error { code, message }) = (front, response.reply) {
                            let reason = format!("server error {code}: {message}");
                            let _ = reply.send(Err(Error::Server { code, message }));
                            break Some(reason);
                        }
                        break Some(format!("response for request {} out of order", response.id));
                    }
                }
            }
        }
    };
    if let Some(reason) = failure {
        for (_, reply) in waiting.drain(..) {
            let _ = reply.send(Err(Error::ConnectionLost(reason.clone())));
        }
        calls.close();
        while let Ok(call) = calls.try_recv() {
            let _ = call.reply.send(Err(Error::ConnectionLost(reason.clone())));
        }
    }
}
