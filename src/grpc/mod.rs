//! The gRPC door: a third listener (`--grpc-listen`) that serves the
//! `kvstore.v1.KeyValue` service of `proto/keyvalue.proto` with tonic, so
//! that clients generated in any language (and `grpcurl`) use the store.
//!
//! It shares everything behind the other doors. Connections come from the
//! server's own accept loop (`crate::server`), so they count against the one
//! connection limit and get the same TLS handshake (with ALPN `h2`, which
//! gRPC clients ask for); each RPC becomes a native
//! [`kvstore_client::Command`] run by `crate::cmd`, so a write through gRPC
//! goes through the same group-commit log and is answered only once it is
//! durable; the auth token is checked by [`gate`] before a request's body is
//! read, and the body is read whole (as far as it really arrives, within the
//! limits) before tonic decodes it; shutdown stops accepting and lets
//! running calls finish.
//!
//! The path of a request: [`Conn`] (a connection the accept loop handed
//! over) → tonic (HTTP/2) → [`gate`] (token, the whole request message) →
//! tonic (decoding) → [`service`] (what each method does) → `crate::cmd` / the store.
//! Besides `KeyValue` it serves the standard reflection service (v1 and
//! v1alpha: `grpcurl list` needs no .proto file) and health checking
//! (`grpc.health.v1.Health`), both without a token. `docs/grpc.md` is the
//! user's description.

pub mod gate;
pub mod service;
mod txn;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::StreamExt;

use kvstore_proto::v1::key_value_server::KeyValueServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::connection::Stream;
use crate::db::Db;
use crate::error::Error;
use crate::session::login::Login;
use crate::stats;
use service::KeyValueService;

/// HTTP/2 pings on an idle connection this often find peers that vanished.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls one connection may have open at once (HTTP/2 streams): the value
/// gRPC recommends; it bounds the requests one connection can make the
/// server hold at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Connections accepted and handshaken but not yet taken by tonic: the
/// accept loop waits when tonic falls this far behind.
const QUEUE: usize = 64;
/// The largest request health checking and reflection take: they are open
/// to clients without the token, so they get no more than a native
/// connection before it logs in.
const OPEN_SERVICE_MAX_MESSAGE: usize = crate::auth::PRE_AUTH_MAX_FRAME;

/// What the [`gate`] learns about a connection and the connection acts on:
/// tonic hands it to each call in the request's extensions.
#[derive(Default)]
pub struct ConnState {
    /// A call has passed the gate with the token: the login deadline is over.
    admitted: AtomicBool,
    /// Failed token attempts and calls refused without a token, counted as
    /// on every door. Behind an async lock, so that one connection's failures
    /// are answered one after another, each after a longer pause.
    login: tokio::sync::Mutex<Login>,
    /// The gate has decided the connection must close.
    closing: AtomicBool,
    /// The connection's reader, woken to notice `closing`.
    reader: AtomicWaker,
}

impl ConnState {
    /// Closes the connection: its next read fails and tonic drops it.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.reader.wake();
    }
}

/// A connection's addresses and shared state, as calls see it.
#[derive(Clone)]
pub struct ConnInfo {
    /// For tonic's `remote_addr()` (logs).
    pub tcp: TcpConnectInfo,
    /// Shared by the connection and the gate's view of each of its calls.
    pub state: Arc<ConnState>,
}

/// A connection the accept loop has accepted (and, with TLS, handshaken),
/// handed to tonic. It holds its place under the connection limit and in the
/// connection count until tonic drops it.
pub struct Conn {
    stream: Box<dyn Stream>,
    info: ConnInfo,
    /// With a token configured: when the connection is closed unless a call
    /// has passed the gate with it by then ([`crate::auth::LOGIN_TIMEOUT`]),
    /// so connections that never log in cannot sit on connection slots.
    login: Option<Pin<Box<Sleep>>>,
    /// The connection's slot under `--max-connections`.
    _permit: OwnedSemaphorePermit,
    /// Counts it in `connections` until it closes.
    _counted: stats::Connected,
}

impl Conn {
    /// `login`: whether the connection must log in (the server has a token).
    pub fn new(
        stream: Box<dyn Stream>,
        tcp: TcpConnectInfo,
        login: bool,
        permit: OwnedSemaphorePermit,
        counted: stats::Connected,
    ) -> Conn {
        Conn {
            stream,
            info: ConnInfo {
                tcp,
                state: Arc::default(),
            },
            login: login.then(|| Box::pin(tokio::time::sleep(crate::auth::LOGIN_TIMEOUT))),
            _permit: permit,
            _counted: counted,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let state = &this.info.state;
        state.reader.register(cx.waker());
        if state.closing.load(Ordering::Acquire) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed after too many calls without the right token",
            )));
        }
        if let Some(login) = &mut this.login {
            if state.admitted.load(Ordering::Acquire) {
                this.login = None;
            } else if login.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no call with the token within the login timeout",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The gRPC door, built before the server listens (so a bad descriptor set
/// fails the start), served by [`Door::serve`].
pub struct Door {
    /// What tonic takes connections from.
    incoming: mpsc::Receiver<Conn>,
    /// KeyValue, health and reflection.
    routes: Routes,
    /// Says "serving" until shutdown starts.
    health: HealthReporter,
    /// The token check and request reading in front of KeyValue.
    gate: gate::Gate,
}

impl Door {
    /// `read_timeout`: how long a request's message may take to arrive
    /// (`--read-timeout-ms`); `shutdown` ends streaming calls at their next
    /// message. Returns the door and where the accept loop hands it
    /// connections.
    pub fn new(
        db: &Db,
        read_timeout: Option<Duration>,
        shutdown: CancellationToken,
    ) -> Result<(Door, mpsc::Sender<Conn>), Error> {
        let (conns, incoming) = mpsc::channel(QUEUE);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kvstore_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let bad = |e| Error::Config(format!("the gRPC reflection service: {e}"));
        let (health, health_service) = tonic_health::server::health_reporter();
        let max_message = db.limits.max_frame;
        let key_value = KeyValueServer::new(KeyValueService::new(db.clone(), shutdown))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let routes = Routes::new(key_value)
            .add_service(health_service.max_decoding_message_size(OPEN_SERVICE_MAX_MESSAGE))
            .add_service(
                reflection()
                    .build_v1()
                    .map_err(bad)?
                    .max_decoding_message_size(OPEN_SERVICE_MAX_MESSAGE),
            )
            .add_service(
                reflection()
                    .build_v1alpha()
                    .map_err(bad)?
                    .max_decoding_message_size(OPEN_SERVICE_MAX_MESSAGE),
            );
        let door = Door {
            incoming,
            routes,
            health,
            gate: gate::Gate::new(
                db.auth.clone(),
                max_message,
                db.limits.max_bulk_items,
                read_timeout,
            ),
        };
        Ok((door, conns))
    }

    /// Serves the connections the accept loop hands over until `shutdown`,
    /// then lets the calls in progress finish (bounded by the server's
    /// shutdown grace, like the other doors).
    pub async fn serve(self, shutdown: CancellationToken) {
        const KEY_VALUE: &str =
            <KeyValueServer<KeyValueService> as tonic::server::NamedService>::NAME;
        let Door {
            incoming,
            routes,
            mut health,
            gate,
        } = self;
        health
            .set_serving::<KeyValueServer<KeyValueService>>()
            .await;
        // The connections, and then nothing: the stream must not end when
        // the accept loop stops, or tonic would begin its graceful shutdown
        // at once, without running `stopping` first.
        let incoming = futures_util::stream::unfold(incoming, |mut incoming| async move {
            let conn = incoming.recv().await?;
            Some((Ok::<_, std::io::Error>(conn), incoming))
        })
        .chain(futures_util::stream::pending());
        let stopping = async {
            shutdown.cancelled().await;
            // Load balancers polling health stop sending new calls; then
            // the statuses go, which ends the health `Watch` streams, so
            // that they do not hold the graceful shutdown up.
            health
                .set_not_serving::<KeyValueServer<KeyValueService>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health.clear_service_status(KEY_VALUE).await;
            health.clear_service_status("").await;
        };
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .layer(gate)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopping)
            .await;
        if let Err(e) = served {
            tracing::error!("the gRPC server stopped: {e}");
        }
    }
}
