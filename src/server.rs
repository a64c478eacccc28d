//! The server process: recovery, the listeners, the accept loops, shutdown.
//!
//! Three doors, one server: the native listener (`--listen`) and, when asked
//! for, the Redis-protocol listener (`--resp-listen`, see `crate::resp`) and
//! the gRPC listener (`--grpc-listen`, see `crate::grpc`). They share the
//! store and log, one connection limit, the auth token, TLS, and shutdown.
//!
//! Order of a clean shutdown (SIGINT or SIGTERM): stop accepting; tell every
//! connection to stop reading and finish what it has read; wait for them, at
//! most `--shutdown-grace-ms`; close the log (the commit thread finishes its
//! queue and syncs); write a final snapshot; exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvstore_client::{ErrorCode, Reply, Response};
use socket2::{SockRef, Socket, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpConnectInfo;

use crate::auth::Auth;
use crate::backup::Tees;
use crate::commit::{GroupCommit, Settings};
use crate::config::{Config, EngineKind, SyncMode};
use crate::connection::{Connection, Stream};
use crate::db::Db;
use crate::engine::memory::Memory;
use crate::engine::watched::Watched;
use crate::engine::Engine;
use crate::error::Error;
use crate::feed::Feed;
use crate::grpc;
use crate::log::Log;
use crate::raft::{node, Member};
use crate::resp::{self, ServerInfo, Shared};
use crate::stats::Stats;
use crate::storage::change::Change;
use crate::storage::fs::RealFs;
use crate::storage::store::Store;
use crate::storage::wal;
use crate::{handler, storage};

/// Pending connections the kernel may queue before `accept`.
const BACKLOG: i32 = 1024;
/// Idle time before TCP keepalive probes start: finds peers that vanished.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Longest pause after a failed `accept` (EMFILE and friends), doubling from 1 ms.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Binds the listening socket with an explicit backlog.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let io = |e| Error::io(std::path::Path::new(&addr.to_string()), e);
    let socket = Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&addr.into()).map_err(io)?;
    socket.listen(BACKLOG).map_err(io)?;
    TcpListener::from_std(socket.into()).map_err(io)
}

/// [`bind`], and the address it got (the port, when `addr` asked for 0).
fn bind_bound(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = bind(addr)?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(std::path::Path::new(&addr.to_string()), e))?;
    Ok((listener, bound))
}

/// Where the server listens, once it accepts connections.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub native: SocketAddr,
    /// The RESP listener, if `--resp-listen` was given.
    pub resp: Option<SocketAddr>,
    /// The gRPC listener, if `--grpc-listen` was given.
    pub grpc: Option<SocketAddr>,
    /// The metrics listener, if `--metrics-listen` was given.
    pub metrics: Option<SocketAddr>,
    /// The raft port, in cluster mode.
    pub raft: Option<SocketAddr>,
}

/// Which protocol a listener speaks.
#[derive(Clone)]
enum Door {
    Native,
    Resp(Arc<Shared>),
    /// Hands each connection to the gRPC server (tonic serves it).
    Grpc(mpsc::Sender<grpc::Conn>),
}

/// Runs the server until `shutdown` is cancelled, then shuts down cleanly.
/// `ready` receives the bound addresses once the server accepts connections.
pub async fn run(
    mut config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(Listening),
) -> Result<(), Error> {
    config.load_cluster_file()?;
    config.validate()?;
    let token = config.auth_token()?;
    config.check_protected_mode(token.is_some())?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
        _ => None,
    };
    let grpc_tls = tls.as_ref().map(|tls| crate::tls::with_alpn(tls, &[b"h2"]));
    // Bind first: a busy port fails the start before recovery does any work,
    // and no error path remains between starting the commit thread and
    // closing it.
    let (listener, addr) = bind_bound(config.listen)?;
    let (resp_listener, resp_addr) = config.resp_listen.map(bind_bound).transpose()?.unzip();
    let (grpc_listener, grpc_addr) = config.grpc_listen.map(bind_bound).transpose()?.unzip();
    let (metrics_listener, metrics_addr) =
        config.metrics_listen.map(bind_bound).transpose()?.unzip();
    if let Some(dir) = &config.backup_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::backup::remove_temp_files(dir)?;
    }
    let (raft_listener, raft_addr) = config.raft_listen.map(bind_bound).transpose()?.unzip();
    let tracker = TaskTracker::new();
    // Freed on a thread of its own once everything else has stopped, so that
    // a process exiting after `run` does not wait for millions of frees
    // (10 M keys: seconds).
    let last_store_ref;
    let tees = Arc::new(Tees::default());
    let feed = config.feed();
    let auth = Arc::new(Auth::new(token));
    // The data's lock (single node) is held until the log has closed.
    let (mut db, _data_lock) = match (config.node_id, raft_listener, raft_addr) {
        (Some(id), Some(raft_listener), Some(raft_addr)) => {
            let (engine, store) = open_cluster_engine(&config, config.raft_dir(), &tees).await?;
            last_store_ref = store;
            // The state machine loads its snapshot (a reset) and applies
            // the log after it through the wrapper.
            feed.start_at(engine.applied());
            let engine: Arc<dyn Engine> = Arc::new(Watched::new(engine, feed.clone()));
            let mut peers = std::collections::BTreeMap::new();
            for (peer, client_addr, raft_addr) in config.peers()? {
                peers.insert(
                    peer,
                    Member {
                        raft_addr,
                        client_addr,
                    },
                );
            }
            let settings = node::Settings {
                id,
                dir: config.raft_dir(),
                me: Member {
                    raft_addr: (config.advertise_raft_addr.clone())
                        .unwrap_or_else(|| raft_addr.to_string()),
                    client_addr: (config.advertise_addr.clone())
                        .unwrap_or_else(|| addr.to_string()),
                },
                resp_addr: resp_addr.map(|a| a.to_string()),
                peers,
                heartbeat: Duration::from_millis(config.raft_heartbeat_ms),
                election: Duration::from_millis(config.raft_election_ms),
                snapshot_every: config.raft_snapshot_every,
                snapshot_bytes: config.raft_snapshot_bytes,
                max_frame: config.max_frame,
                tls: config.raft_tls(),
                sessions: node::SessionSettings {
                    idle_ms: config.raft_session_idle_ms,
                    max_sessions: config.raft_max_sessions,
                },
            };
            let cluster = node::Cluster::start(
                settings,
                Arc::new(RealFs),
                engine.clone(),
                group_engines(&config),
                raft_listener,
                shutdown.clone(),
                &tracker,
            )
            .await?;
            let db = Db::new(engine, tees, cluster.clone(), config.limits(), auth);
            (db.in_cluster(cluster), None)
        }
        _ => {
            let recovered = open_single(&config, &tees, &feed).await?;
            last_store_ref = recovered.store;
            let commit = GroupCommit::start(
                recovered.engine.clone(),
                recovered.segment,
                recovered.last_seq,
                Settings {
                    sync: config.sync,
                    sync_interval: config.sync_interval(),
                    snapshot_after_bytes: config.snapshot_after_bytes,
                    data: config.data.clone(),
                    fs: Arc::new(RealFs),
                },
            )?;
            let commit = Arc::new(commit);
            if config.sync == SyncMode::Periodic {
                spawn_sync_ticker(commit.clone(), config.sync_interval(), &shutdown, &tracker);
            }
            spawn_sweep(&recovered.engine, commit.clone(), &shutdown, &tracker);
            let db = Db::new(recovered.engine, tees, commit, config.limits(), auth);
            (db, Some(recovered.lock))
        }
    };
    db.backup_dir = config.backup_dir.clone();
    db.feed = feed;
    let grpc_door = match grpc_listener {
        Some(_) => Some(grpc::Door::new(
            &db,
            config.timeouts().read,
            shutdown.clone(),
        )?),
        None => None,
    };
    tracing::info!(%addr, resp = ?resp_addr, grpc = ?grpc_addr, raft = ?raft_addr, data = %config.data.display(), engine = config.engine.name(), sync = ?config.sync, "kvstore-server listening");
    ready(Listening {
        native: addr,
        resp: resp_addr,
        grpc: grpc_addr,
        metrics: metrics_addr,
        raft: raft_addr,
    });

    if let Some(listener) = metrics_listener {
        tracker.spawn(crate::metrics::serve(
            listener,
            db.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    spawn_rate_ticker(&db, &shutdown, &tracker);
    // One connection limit across all doors.
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let native = accept_loop(
        &listener,
        Door::Native,
        &db,
        &config,
        &permits,
        tls.clone(),
        &shutdown,
        &tracker,
    );
    let grpc = async {
        let (Some(listener), Some((door, conns))) = (&grpc_listener, grpc_door) else {
            return;
        };
        tracker.spawn(door.serve(shutdown.clone()));
        accept_loop(
            listener,
            Door::Grpc(conns),
            &db,
            &config,
            &permits,
            grpc_tls,
            &shutdown,
            &tracker,
        )
        .await;
    };
    let native = async {
        tokio::join!(native, grpc);
    };
    match (&resp_listener, resp_addr) {
        (Some(resp_listener), Some(resp_addr)) => {
            let shared = Arc::new(Shared::new(ServerInfo {
                resp_addr,
                native_addr: addr,
                sync: config.sync,
                sync_interval_ms: config.sync_interval_ms,
                max_connections: config.max_connections,
                idle_timeout_secs: config.idle_timeout_ms / 1000,
                data: config.data.clone(),
            }));
            let resp = accept_loop(
                resp_listener,
                Door::Resp(shared),
                &db,
                &config,
                &permits,
                tls,
                &shutdown,
                &tracker,
            );
            tokio::join!(native, resp);
        }
        _ => native.await,
    }
    drop(listener);
    drop(resp_listener);
    drop(grpc_listener);
    let log = db.log_handle();
    drop(db);

    tracker.close();
    if tokio::time::timeout(config.shutdown_grace(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still busy after the shutdown grace period; closing the log anyway"
        );
    }
    log.close().await?;
    std::thread::spawn(move || drop(last_store_ref));
    tracing::info!("shut down cleanly");
    Ok(())
}

/// A single node's engine, recovered from its data, and its log.
struct Opened {
    engine: Arc<dyn Engine>,
    /// The memory engine's map (freed on a thread of its own at exit).
    store: Option<Arc<Store>>,
    segment: wal::Segment,
    last_seq: u64,
    /// The data's lock, held until the log has closed.
    lock: Box<dyn std::any::Any + Send>,
}

/// Recovers a single node's data with the engine `--engine` names (from
/// `--restore`'s backup first).
async fn open_single(config: &Config, tees: &Arc<Tees>, feed: &Arc<Feed>) -> Result<Opened, Error> {
    let (data, restore, shards) = (config.data.clone(), config.restore.clone(), config.shards);
    let (kind, cache_bytes, tees) = (config.engine, config.cache_mb << 20, tees.clone());
    let feed = feed.clone();
    tokio::task::spawn_blocking(move || {
        let watched = |engine| -> Arc<dyn Engine> { Arc::new(Watched::new(engine, feed.clone())) };
        if kind == EngineKind::Disk {
            let r =
                storage::open_disk(&RealFs, &data, cache_bytes, restore.as_deref(), Some(&feed))?;
            return Ok(Opened {
                engine: watched(r.engine),
                store: None,
                segment: r.segment,
                last_seq: r.last_seq,
                lock: r.lock,
            });
        }
        let r = match restore {
            Some(backup) => {
                let r = storage::restore(&RealFs, &backup, &data, shards)?;
                feed.start_at(r.last_seq);
                r
            }
            None => storage::open_watched(&RealFs, &data, shards, Some(&feed))?,
        };
        Ok(Opened {
            engine: watched(Arc::new(Memory::new(r.store.clone(), tees))),
            store: Some(r.store),
            segment: r.segment,
            last_seq: r.last_seq,
            lock: r.lock,
        })
    })
    .await
    .map_err(|e| Error::Config(format!("recovery task failed: {e}")))?
}

/// A cluster node's engine: an empty memory engine (the state machine
/// loads its snapshot), or the disk engine kept in the raft directory, with
/// the memory engine's map (freed on a thread of its own at exit).
async fn open_cluster_engine(
    config: &Config,
    dir: std::path::PathBuf,
    tees: &Arc<Tees>,
) -> Result<(Arc<dyn Engine>, Option<Arc<Store>>), Error> {
    if config.engine == EngineKind::Memory {
        let store = Arc::new(Store::new(config.shards));
        let engine = Arc::new(Memory::new(store.clone(), tees.clone()));
        return Ok((engine, Some(store)));
    }
    let (path, cache_bytes) = (dir.join("fjall"), config.cache_mb << 20);
    let disk =
        tokio::task::spawn_blocking(move || crate::engine::disk::Disk::open(&path, cache_bytes))
            .await
            .map_err(|e| Error::Config(format!("engine task failed: {e}")))??;
    Ok((Arc::new(disk), None))
}

/// The engines of a node's groups after group 1, as `config` says, each
/// in its group's directory. Backups do not cover them yet: their tees are
/// their own (docs/sharding.md).
fn group_engines(config: &Config) -> node::Engines {
    let config = Arc::new(config.clone());
    Arc::new(move |dir| {
        let config = config.clone();
        Box::pin(async move {
            let tees = Arc::new(Tees::default());
            let (engine, _) = open_cluster_engine(&config, dir, &tees).await?;
            Ok(engine)
        })
    })
}

/// `--sync periodic`: asks the commit thread for an fsync every `interval`.
fn spawn_sync_ticker(
    commit: Arc<GroupCommit>,
    interval: Duration,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let token = shutdown.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while token.run_until_cancelled(tick.tick()).await.is_some() {
            commit.request_sync();
        }
    });
}

/// The single node's expiry sweep, writing through `log`.
fn spawn_sweep(
    engine: &Arc<dyn Engine>,
    log: Arc<dyn Log>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let write: crate::expiry::Write = Arc::new(move |op| {
        let log = log.clone();
        Box::pin(async move { log.submit(Change::from(op)).await?.wait().await })
    });
    let engine = engine.clone();
    let clock = crate::storage::clock::Clock::System;
    tracker.spawn(crate::expiry::every_tick(shutdown.clone(), move || {
        let (engine, clock, write) = (engine.clone(), clock.clone(), write.clone());
        async move {
            crate::expiry::sweep_once(&engine, &clock, &write)
                .await
                .map(drop)
        }
    }));
}

/// Measures the request rate every second (`Stats::tick`).
fn spawn_rate_ticker(db: &Db, shutdown: &CancellationToken, tracker: &TaskTracker) {
    let (stats, token) = (db.stats.clone(), shutdown.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while token.run_until_cancelled(tick.tick()).await.is_some() {
            stats.tick();
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: &TcpListener,
    door: Door,
    db: &Db,
    config: &Config,
    permits: &Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(1);
                pair
            }
            Err(e) => {
                // EMFILE, ENFILE, ECONNABORTED...: back off instead of spinning.
                tracing::warn!("accept failed: {e}; pausing {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        configure(&stream);
        let permit = permits.clone().try_acquire_owned();
        // Only tonic asks for the local address (its connect info).
        let local = matches!(door, Door::Grpc(_))
            .then(|| stream.local_addr().ok())
            .flatten();
        let (db, token, timeouts, tls, max_frame, door) = (
            db.clone(),
            shutdown.clone(),
            config.timeouts(),
            tls.clone(),
            config.max_frame,
            door.clone(),
        );
        tracker.spawn(async move {
            let Ok(permit) = permit else {
                tracing::warn!(%peer, "connection limit reached; refusing");
                db.stats
                    .connections_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A plain client is told why; a TLS client is closed at once,
                // without spending a handshake on a connection that is refused.
                if tls.is_none() {
                    match door {
                        Door::Native => refuse(Connection::new(Box::new(stream), max_frame)).await,
                        Door::Resp(_) => resp::refuse(Box::new(stream)).await,
                        // Closed: an HTTP/2 client sees the connection fail
                        // and may try again.
                        Door::Grpc(_) => {}
                    }
                }
                return;
            };
            // The TLS handshake runs in the connection's own task, bounded by
            // the read timeout, so a slow handshake holds up no one else.
            let Some(stream) = handshake(stream, tls, timeouts.read).await else {
                return;
            };
            let counted = Stats::connected(&db.stats);
            match door {
                Door::Native => {
                    handler::serve(Connection::new(stream, max_frame), db, timeouts, token).await
                }
                Door::Resp(shared) => resp::serve(stream, db, shared, timeouts, token).await,
                Door::Grpc(conns) => {
                    let info = TcpConnectInfo {
                        local_addr: local,
                        remote_addr: Some(peer),
                    };
                    // tonic owns the connection from here; the permit and
                    // the count go with it. Refused only once the server
                    // is stopping.
                    let _ = conns
                        .send(grpc::Conn::new(
                            stream,
                            info,
                            db.auth.required(),
                            permit,
                            counted,
                        ))
                        .await;
                    return;
                }
            }
            drop((permit, counted));
        });
    }
}

fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE));
}

/// The stream a connection runs over: the socket itself, or TLS over it once
/// the handshake is done (`None` if it failed or took too long).
async fn handshake(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    limit: Option<Duration>,
) -> Option<Box<dyn Stream>> {
    let Some(acceptor) = tls else {
        return Some(Box::new(stream));
    };
    let limit = limit.unwrap_or(Duration::from_secs(10));
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Tells a client over the connection limit why it is being closed.
async fn refuse(mut conn: Connection) {
    let response = Response {
        id: 0,
        reply: Reply::error(
            ErrorCode::TooManyConnections,
            "too many connections; try again later",
        ),
    };
    if conn.feed(&response).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
