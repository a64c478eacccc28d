//! The Redis-protocol door: a second listener (`--resp-listen`) that speaks
//! RESP2, and RESP3 after `HELLO 3`, so that `redis-cli`, `redis-benchmark`
//! and any Redis client library work against kvstore.
//!
//! It shares everything behind the native door: the store, the group-commit
//! log (a write through RESP is acknowledged only once it is durable, like a
//! native one), the limits, the connection limit and counters, the auth token
//! (`AUTH`), TLS and shutdown. Most commands are translated into native
//! [`kvstore_client::Command`]s and run through `crate::cmd`, so both doors
//! have the same semantics; the rest (MGET, KEYS, SCAN, INFO, ...) read the
//! store directly.
//!
//! The path of a request: [`codec`] (bytes to arguments) → `crate::session`
//! (the loop every door shares: login, pipelining, order of replies,
//! timeouts) →
//! [`commands`] (what each command does) → `crate::cmd` / the store.
//! `docs/resp.md` lists the commands and where they differ from Redis.

pub mod codec;
pub mod commands;
pub mod cursor;
pub mod glob;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use kvstore_client::Reply;
use tokio_util::codec::{Encoder, Framed};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::config::{SyncMode, Timeouts};
use crate::connection::Stream;
use crate::db::Db;
use crate::session::login::Login;
use crate::session::{self, Door, Incoming, Step};
use codec::{DecodeError, RequestLimits, RespCodec, Value};
use commands::{Outcome, Session, Shape};

/// State shared by every RESP connection.
pub struct Shared {
    /// `SCAN` cursors: any connection may continue a scan.
    pub cursors: cursor::Cursors,
    /// Settings that `INFO` and `CONFIG GET` report.
    pub info: ServerInfo,
    /// `notify-keyspace-events`, as flags (`CONFIG SET`; none at start, as
    /// in Redis).
    pub notify: Arc<AtomicU32>,
}

/// The server's settings as Redis clients ask for them.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The RESP listener's address.
    pub resp_addr: SocketAddr,
    /// The native listener's address.
    pub native_addr: SocketAddr,
    pub sync: SyncMode,
    pub sync_interval_ms: u64,
    pub max_connections: usize,
    /// `--idle-timeout-ms` in whole seconds (Redis's `timeout`).
    pub idle_timeout_secs: u64,
    /// The snapshot file.
    pub data: PathBuf,
}

impl Shared {
    pub fn new(info: ServerInfo) -> Shared {
        Shared {
            cursors: cursor::Cursors::default(),
            info,
            notify: Arc::default(),
        }
    }
}

/// The request limits of a connection: before login only small requests.
fn request_limits(db: &Db, authenticated: bool) -> RequestLimits {
    let max_request = if authenticated {
        db.limits.max_frame
    } else {
        auth::PRE_AUTH_MAX_FRAME
    };
    RequestLimits {
        max_bulk: db.limits.max_key.max(db.limits.max_value).min(max_request),
        max_request,
    }
}

/// A reply with the protocol version it is to be written in (a pipelined
/// `HELLO 3` changes the version for the replies after its own).
pub struct Versioned(u8, Value);

impl Encoder<Versioned> for RespCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Versioned, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        item.1.encode(item.0, dst);
        Ok(())
    }
}

/// Serves one RESP client (see [`session::serve`]).
pub async fn serve(
    stream: Box<dyn Stream>,
    db: Db,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let session = Session::new(db.stats.next_client_id(), Login::new(&db.auth));
    let logged_in = session.login.authenticated();
    let door = Resp {
        framed: Framed::new(stream, RespCodec::new(request_limits(&db, logged_in))),
        db: db.clone(),
        shared,
        session,
        limits_for_login: logged_in,
        peeked: None,
    };
    session::serve(door, db, timeouts, shutdown).await
}

/// What reading the codec gave: a request, a protocol error, or the end.
type Decoded = Option<Result<Vec<Bytes>, DecodeError>>;

/// One RESP connection.
struct Resp {
    framed: Framed<Box<dyn Stream>, RespCodec>,
    db: Db,
    shared: Arc<Shared>,
    session: Session,
    /// The login state the codec's limits were set for.
    limits_for_login: bool,
    /// A request decoded early, to learn whether a whole one was buffered.
    peeked: Option<Decoded>,
}

impl Resp {
    fn incoming(&mut self, decoded: Decoded) -> Incoming<Vec<Bytes>, Versioned> {
        match decoded {
            None | Some(Err(DecodeError::Io(_))) => Incoming::Closed,
            Some(Err(DecodeError::Protocol(message))) => {
                tracing::debug!(%message, "RESP protocol error; closing");
                let reply = Value::error(format!("ERR Protocol error: {message}"));
                Incoming::Refused(Versioned(self.session.proto, reply))
            }
            Some(Ok(args)) => {
                self.db.stats.command();
                Incoming::Request(args)
            }
        }
    }
}

impl Door for Resp {
    type Request = Vec<Bytes>;
    type Reply = Versioned;
    /// The protocol version when the write ran, and its reply's shape.
    type Tag = (u8, Shape);

    async fn read(&mut self) -> Incoming<Vec<Bytes>, Versioned> {
        let decoded = match self.peeked.take() {
            Some(decoded) => decoded,
            None => self.framed.next().await,
        };
        self.incoming(decoded)
    }

    fn whole_buffered(&mut self) -> bool {
        if self.peeked.is_some() {
            return true;
        }
        // Only what has already arrived: polling an empty socket again
        // would cost a system call per request.
        if self.framed.read_buffer().is_empty() {
            return false;
        }
        self.peeked = self.framed.next().now_or_never();
        self.peeked.is_some()
    }

    fn partial(&self) -> bool {
        self.framed.codec().in_request() || !self.framed.read_buffer().is_empty()
    }

    fn completed(&self) -> u64 {
        self.framed.codec().requests_decoded()
    }

    fn is_write(&self, args: &Vec<Bytes>) -> bool {
        self.session.login.authenticated() && commands::writes(args)
    }

    fn size(args: &Vec<Bytes>) -> usize {
        args.iter().map(Bytes::len).sum()
    }

    async fn start(&mut self, args: Vec<Bytes>) -> Step<Self> {
        let ctx = commands::Ctx {
            db: &self.db,
            shared: &self.shared,
        };
        let outcome = commands::execute(args, &mut self.session, &ctx).await;
        // A login lifts the small pre-login limit for the requests decoded
        // from now on.
        let logged_in = self.session.login.authenticated();
        if logged_in != self.limits_for_login {
            self.limits_for_login = logged_in;
            let limits = request_limits(&self.db, logged_in);
            self.framed.codec_mut().set_limits(limits);
        }
        let proto = self.session.proto;
        match outcome {
            Outcome::Ready(value) => Step::Answer(Versioned(proto, value)),
            Outcome::Write(command, shape) => Step::Write(command, (proto, shape)),
        }
    }

    fn finish(&self, (proto, shape): (u8, Shape), reply: Reply) -> Versioned {
        Versioned(proto, shape.reply(reply))
    }

    async fn feed(&mut self, reply: Versioned) -> std::io::Result<()> {
        self.framed.feed(reply).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<Versioned>::flush(&mut self.framed).await
    }

    fn logged_in(&self) -> bool {
        self.session.login.authenticated()
    }

    fn closing(&self) -> bool {
        self.session.closing || self.session.unsubscribed_by_server()
    }

    fn pushes(&mut self) -> Option<session::Pushes<Versioned>> {
        let proto = self.session.proto;
        let pushes = self.session.pushes()?;
        Some(pushes.map(move |value| Versioned(proto, value)).boxed())
    }
}

/// Tells a RESP client over the connection limit why it is being closed.
pub async fn refuse(stream: Box<dyn Stream>) {
    let mut framed = Framed::new(
        stream,
        RespCodec::new(RequestLimits {
            max_bulk: 0,
            max_request: 0,
        }),
    );
    let reply = Value::error("ERR max number of clients reached");
    if framed.feed(Versioned(2, reply)).await.is_ok() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            SinkExt::<Versioned>::flush(&mut framed),
        )
        .await;
    }
}

/// The argument as text for messages (lossy).
fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}
