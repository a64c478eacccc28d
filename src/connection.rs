//! One client's byte stream as typed frames: [`Request`]s in, [`Response`]s out.
//!
//! Framing is tokio-util's length-delimited codec (4-byte big-endian length),
//! bodies go through `kvstore_client::codec`. A frame whose length exceeds the
//! limit is refused before its body is buffered.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kvstore_client::{codec, ErrorCode, Reply, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A byte stream a connection runs over: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What reading the next frame gave.
pub enum Incoming {
    Request(Request),
    /// The client closed the connection (or it broke).
    Closed,
    /// The frame was unacceptable. The reply says why, under the request id if
    /// one could be read (else 0); the connection must be closed after it,
    /// because the stream can no longer be trusted to be in step.
    Refused {
        id: u64,
        reply: Reply,
    },
}

pub struct Connection {
    /// Boxed, so plain and TLS connections share one handler (one virtual
    /// call per read or write, next to a system call); counted, so the read
    /// timeout can tell a frame in progress from a finished one.
    framed: Framed<Counted, LengthDelimitedCodec>,
    /// Bytes of the frames read whole so far (length prefixes included).
    consumed: u64,
}

/// A stream that counts the bytes read from it.
pub struct Counted {
    inner: Box<dyn Stream>,
    /// Bytes read from the socket so far.
    read: u64,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection {
    pub fn new(stream: Box<dyn Stream>, max_frame: usize) -> Connection {
        Connection {
            framed: Framed::new(
                Counted {
                    inner: stream,
                    read: 0,
                },
                codec::frame_codec(max_frame),
            ),
            consumed: 0,
        }
    }

    /// Reads the next request. Cancel-safe: a partly read frame stays buffered.
    pub async fn read(&mut self) -> Incoming {
        match self.framed.next().await {
            None => Incoming::Closed,
            Some(Ok(body)) => {
                self.consumed += 4 + body.len() as u64;
                match codec::decode::<Request>(&body) {
                    Ok(request) => Incoming::Request(request),
                    Err(e) => Incoming::Refused {
                        id: codec::peek_id(&body).unwrap_or(0),
                        reply: Reply::error(ErrorCode::Malformed, e.to_string()),
                    },
                }
            }
            // The codec reports an over-long length prefix as InvalidData.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Incoming::Refused {
                id: 0,
                reply: Reply::error(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "{e}: the frame limit is {} bytes",
                        self.framed.codec().max_frame_length()
                    ),
                ),
            },
            Some(Err(_)) => Incoming::Closed,
        }
    }

    /// Changes the largest frame accepted from now on (smaller before the
    /// client has authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.framed.codec_mut().set_max_frame_length(max_frame);
    }

    /// Whether bytes of a frame have arrived that do not make a whole frame
    /// yet (counted from the socket, so a length prefix alone counts too).
    pub fn has_partial_frame(&self) -> bool {
        self.framed.get_ref().read > self.consumed
    }

    /// Whether a whole frame is already buffered (so reading it will not
    /// wait for the client).
    pub fn has_whole_frame(&self) -> bool {
        let buffered = self.framed.read_buffer();
        buffered.get(..4).is_some_and(|prefix| {
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            buffered.len() >= 4 + len
        })
    }

    /// Bytes of whole frames read so far: when it moves, a frame completed.
    pub fn frames_consumed(&self) -> u64 {
        self.consumed
    }

    /// Queues a response without flushing, so a burst goes out in one write.
    pub async fn feed(&mut self, response: &Response) -> std::io::Result<()> {
        let body = codec::encode(response).map_err(std::io::Error::other)?;
        self.framed.feed(Bytes::from(body)).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<Bytes>::flush(&mut self.framed).await
    }
}
