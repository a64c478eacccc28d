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
//! durable; the auth token is checked by [`auth`] before a request's body is
//! read; shutdown stops accepting and lets running calls finish.
//!
//! The path of a request: [`Conn`] (a connection the accept loop handed
//! over) → tonic (HTTP/2, message framing, the size limits) → [`auth`] →
//! [`service`] (what each method does) → `crate::cmd` / the store.
//! Besides `KeyValue` it serves the standard reflection service (v1 and
//! v1alpha: `grpcurl list` needs no .proto file) and health checking
//! (`grpc.health.v1.Health`), both without a token. `docs/grpc.md` is the
//! user's description.

pub mod auth;
pub mod service;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kvstore_proto::v1::key_value_server::KeyValueServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::server::HealthReporter;

use crate::connection::Stream;
use crate::db::Db;
use crate::error::Error;
use crate::stats;
use service::KeyValueService;

/// HTTP/2 pings on an idle connection this often find peers that vanished.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls one connection may have open at once (HTTP/2 streams).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Connections accepted and handshaken but not yet taken by tonic.
const QUEUE: usize = 64;

/// A connection the accept loop has accepted (and, with TLS, handshaken),
/// handed to tonic. It holds its place under the connection limit and in the
/// connection count until tonic drops it.
pub struct Conn {
    stream: Box<dyn Stream>,
    /// For tonic's `remote_addr()` (logs).
    info: TcpConnectInfo,
    /// The connection's slot under `--max-connections`.
    _permit: OwnedSemaphorePermit,
    /// Counts it in `connections` until it closes.
    _counted: stats::Connected,
}

impl Conn {
    pub fn new(
        stream: Box<dyn Stream>,
        info: TcpConnectInfo,
        permit: OwnedSemaphorePermit,
        counted: stats::Connected,
    ) -> Conn {
        Conn {
            stream,
            info,
            _permit: permit,
            _counted: counted,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
    /// Where the accept loop hands connections over.
    pub conns: mpsc::Sender<Conn>,
    /// What tonic takes them from.
    incoming: mpsc::Receiver<Conn>,
    /// KeyValue, health and reflection.
    routes: Routes,
    /// Says "serving" until shutdown starts.
    health: HealthReporter,
    /// The auth token check in front of KeyValue.
    auth: auth::AuthLayer,
}

impl Door {
    pub fn new(db: &Db) -> Result<Door, Error> {
        let (conns, incoming) = mpsc::channel(QUEUE);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kvstore_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let bad = |e| Error::Config(format!("the gRPC reflection service: {e}"));
        let (health, health_service) = tonic_health::server::health_reporter();
        let max_message = db.limits.max_frame;
        let key_value = KeyValueServer::new(KeyValueService::new(db.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let routes = Routes::new(key_value)
            .add_service(health_service)
            .add_service(reflection().build_v1().map_err(bad)?)
            .add_service(reflection().build_v1alpha().map_err(bad)?);
        Ok(Door {
            conns,
            incoming,
            routes,
            health,
            auth: auth::AuthLayer::new(db.auth.clone()),
        })
    }

    /// Serves the connections the accept loop hands over until `shutdown`,
    /// then lets the calls in progress finish (bounded by the server's
    /// shutdown grace, like the other doors).
    pub async fn serve(self, shutdown: CancellationToken) {
        let Door {
            conns,
            incoming,
            routes,
            health,
            auth,
        } = self;
        // The accept loop holds its own sender; this one would keep the
        // stream of connections open after the loop has stopped.
        drop(conns);
        health
            .set_serving::<KeyValueServer<KeyValueService>>()
            .await;
        let incoming = futures_util::stream::unfold(incoming, |mut incoming| async move {
            let conn = incoming.recv().await?;
            Some((Ok::<_, std::io::Error>(conn), incoming))
        });
        let stopping = async {
            shutdown.cancelled().await;
            // Load balancers polling health stop sending new calls.
            health
                .set_not_serving::<KeyValueServer<KeyValueService>>()
                .await;
        };
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .layer(auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopping)
            .await;
        if let Err(e) = served {
            tracing::error!("the gRPC server stopped: {e}");
        }
    }
}
