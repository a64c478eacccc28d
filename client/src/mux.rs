//! One multiplexed connection: many requests in flight, matched to replies.
//!
//! A background task owns the socket, split into a writing half and a reading
//! half that run concurrently (so a burst of large requests never stops the
//! replies from being read: the server may be waiting for room to write them).
//! Callers hand the task a [`Command`] and a oneshot sender; the writer gives
//! the request the next id, queues the sender, and writes the request (several
//! queued requests go out in one flush). The server answers in request order,
//! so each response must carry the id at the front of the queue; anything
//! else is a protocol error that ends the connection.
//!
//! When the socket breaks, every waiting caller gets `ConnectionLost` and the
//! task ends; the [`Client`](crate::Client) notices and connects again on the
//! next call.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::HARD_MAX_FRAME;
use crate::{codec, Command, Error, Reply, Request, Response};

/// Requests queued for the socket task before callers wait: enough for deep
/// pipelining, bounded so a stalled server slows callers instead of growing
/// memory.
const QUEUE_DEPTH: usize = 1024;
/// Requests written before one flush, at most.
const MAX_BURST: usize = 256;

/// A request on its way, with the place to put its reply, and for a
/// request the server answers more than once (`Watch`), the place for the
/// replies after the first.
struct Call {
    command: Command,
    reply: oneshot::Sender<Result<Reply, Error>>,
    more: Option<More>,
}

/// Where the replies after the first of a streaming request go.
pub(crate) type More = mpsc::Sender<Reply>;

/// A written request: its id, where its reply goes, and its later replies.
type Written = (u64, oneshot::Sender<Result<Reply, Error>>, Option<More>);

/// Callers whose requests were written, oldest first. Shared by the two
/// halves; a std mutex, held only to push or pop.
type Waiting = Mutex<VecDeque<Written>>;

/// A handle to one connection's task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mux {
    calls: mpsc::Sender<Call>,
    /// Aborts the socket task; used when a request timed out, because a
    /// connection whose server stopped answering cannot be trusted further.
    task: AbortHandle,
}

impl Mux {
    /// Connects to `addr` (with TLS if `tls` is given) and starts the socket
    /// task. Requests larger than `max_frame` are refused before they are
    /// written.
    pub(crate) async fn connect(
        addr: &str,
        timeout: Duration,
        max_frame: usize,
        tls: Option<&Tls>,
    ) -> Result<Mux, Error> {
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
        let (calls, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = match tls {
            None => {
                let (read, write) = stream.into_split();
                tokio::spawn(drive(read, write, rx, max_frame)).abort_handle()
            }
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), stream);
                let stream = tokio::time::timeout(timeout, handshake)
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "TLS handshake",
                        after: timeout,
                    })?
                    .map_err(|e| match e.kind() {
                        // rustls reports certificate and protocol trouble as
                        // InvalidData: final. Anything else is the network:
                        // worth a retry.
                        std::io::ErrorKind::InvalidData => {
                            Error::Tls(format!("handshake with {addr} failed: {e}"))
                        }
                        _ => Error::ConnectionLost(format!("TLS handshake with {addr}: {e}")),
                    })?;
                let (read, write) = tokio::io::split(stream);
                tokio::spawn(drive(read, write, rx, max_frame)).abort_handle()
            }
        };
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
        self.send_streaming(command, None).await
    }

    /// Sends a command the server answers more than once: the first reply
    /// comes through the receiver, the later ones (until an error reply, or
    /// the connection's end) into `more`.
    pub(crate) async fn send_streaming(
        &self,
        command: Command,
        more: Option<More>,
    ) -> Result<oneshot::Receiver<Result<Reply, Error>>, Error> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call {
                command,
                reply,
                more,
            })
            .await
            .map_err(|_| Error::ConnectionLost("the connection is closed".into()))?;
        Ok(rx)
    }
}

/// How to speak TLS to the server: the connector (trusted roots) and the
/// name the certificate must carry.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls_pki_types::ServerName<'static>,
}

/// The socket task: both halves until one fails, then every caller still
/// waiting or queued learns why.
async fn drive<R, W>(read: R, write: W, mut calls: mpsc::Receiver<Call>, max_frame: usize)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Replies are read up to the hard limit: the server decides what it sends.
    let mut reader = FramedRead::new(read, codec::frame_codec(HARD_MAX_FRAME));
    let mut writer = FramedWrite::new(write, codec::frame_codec(HARD_MAX_FRAME));
    let waiting: Waiting = Mutex::new(VecDeque::new());
    let reason = tokio::select! {
        reason = write_requests(&mut writer, &mut calls, &waiting, max_frame) => reason,
        reason = read_replies(&mut reader, &waiting) => reason,
    };
    let reason = reason.unwrap_or_else(|| "the client was dropped".into());
    let waiting = std::mem::take(&mut *waiting.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, reply, _) in waiting {
        let _ = reply.send(Err(Error::ConnectionLost(reason.clone())));
    }
    calls.close();
    while let Ok(call) = calls.try_recv() {
        let _ = call.reply.send(Err(Error::ConnectionLost(reason.clone())));
    }
}

/// Writes queued requests; returns why it stopped (`None`: no more callers).
async fn write_requests<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    calls: &mut mpsc::Receiver<Call>,
    waiting: &Waiting,
    max_frame: usize,
) -> Option<String> {
    let mut next_id: u64 = 1;
    while let Some(call) = calls.recv().await {
        let mut burst = vec![call];
        while burst.len() < MAX_BURST {
            match calls.try_recv() {
                Ok(call) => burst.push(call),
                Err(_) => break,
            }
        }
        for call in burst {
            let id = next_id;
            let body = match codec::encode(&Request {
                id,
                command: call.command,
            }) {
                Ok(body) if body.len() <= max_frame => body,
                Ok(body) => {
                    let _ = call.reply.send(Err(Error::Encode(format!(
                        "a request of {} bytes exceeds the frame limit of {max_frame} bytes",
                        body.len()
                    ))));
                    continue;
                }
                Err(e) => {
                    let _ = call.reply.send(Err(e));
                    continue;
                }
            };
            next_id += 1;
            waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((id, call.reply, call.more));
            if let Err(e) = writer.feed(Bytes::from(body)).await {
                return Some(format!("write failed: {e}"));
            }
        }
        if let Err(e) = SinkExt::<Bytes>::flush(writer).await {
            return Some(format!("write failed: {e}"));
        }
    }
    None
}

/// Reads responses and hands each to the caller it answers; returns why it
/// stopped.
async fn read_replies<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    waiting: &Waiting,
) -> Option<String> {
    // Streaming requests answered once, by id.
    let mut streams: std::collections::HashMap<u64, More> = Default::default();
    loop {
        let body = match reader.next().await {
            Some(Ok(body)) => body,
            Some(Err(e)) => return Some(format!("read failed: {e}")),
            None => return Some("the server closed the connection".into()),
        };
        let response: Response = match codec::decode(&body) {
            Ok(r) => r,
            Err(e) => return Some(format!("undecodable response: {e}")),
        };
        if let Some(more) = streams.get(&response.id) {
            let last = matches!(response.reply, Reply::Error { .. });
            // The caller dropped the stream: its replies are dropped too.
            if more.send(response.reply).await.is_err() || last {
                streams.remove(&response.id);
            }
            continue;
        }
        let front = waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        match (front, response.reply) {
            (Some((id, reply, more)), answer) if id == response.id => {
                if let Some(more) = more.filter(|_| !matches!(answer, Reply::Error { .. })) {
                    streams.insert(id, more);
                }
                let _ = reply.send(Ok(answer));
            }
            // An error the server sends before closing (id 0: too many
            // connections, a refused frame) goes to the first caller; the
            // others lose the connection, with the server's words as reason.
            (front, Reply::Error { code, message }) => {
                let reason = format!("server error {code}: {message}");
                if let Some((_, reply, _)) = front {
                    let _ = reply.send(Err(Error::Server { code, message }));
                }
                return Some(reason);
            }
            (_, _) => return Some(format!("response for request {} out of order", response.id)),
        }
    }
}
