//! Server configuration: every flag, its environment variable and its default.
//!
//! The binary parses this with clap; tests and embedders build it with
//! [`Config::parse_from`] or by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use kvstore_client::protocol::{
    DEFAULT_MAX_BULK_ITEMS, DEFAULT_MAX_FRAME, DEFAULT_MAX_KEY, DEFAULT_MAX_VALUE,
};

use crate::error::Error;
use crate::feed::Feed;

/// When the write-ahead log is forced to disk, and so what an acknowledgement
/// promises. `docs/durability.md` states each promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// `fdatasync` before every acknowledgement (concurrent writes share one).
    /// An acknowledged write survives a crash of the process or the machine.
    Always,
    /// Acknowledge after `write`; `fdatasync` at most every `--sync-interval-ms`.
    /// Survives a crash of the process; a power cut may lose the last interval.
    Periodic,
    /// Acknowledge after `write`; the OS decides when data reaches the disk
    /// (the log is synced only at rotation, snapshots and shutdown).
    Never,
}

/// Which storage engine holds the applied state (`crate::engine`). On a
/// single node the choice is recorded in the data directory: a later start
/// with the other engine is refused. A cluster node may change engines: it
/// rebuilds from its newest snapshot and its raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// Every key and value in memory; the log and snapshot files on disk.
    Memory,
    /// The data on disk (fjall, in `<data>-fjall/`; in cluster mode
    /// `<data>.raft/fjall/`), cached in memory
    /// (`--cache-mb`): for data larger than memory. Keys are at most
    /// 65,534 bytes.
    Disk,
}

impl EngineKind {
    /// The name recorded in the data directory.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Disk => "disk",
        }
    }
}

/// kvstore-server: a durable key-value server.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvstore-server", version, about)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "KVSTORE_LISTEN", default_value = "127.0.0.1:65433")]
    pub listen: SocketAddr,

    /// Also serve the Redis protocol (RESP2/RESP3) on this address, e.g.
    /// `127.0.0.1:6379`; off by default. Port 0 picks a free port. Shares
    /// the store, log, limits, auth token, TLS and connection limit.
    #[arg(long, env = "KVSTORE_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,

    /// Also serve the gRPC service `kvstore.v1.KeyValue`
    /// (`proto/keyvalue.proto`, with reflection and health checking) on this
    /// address, e.g. `127.0.0.1:50051`; off by default. Port 0 picks a free
    /// port. Shares the store, log, limits, auth token (metadata
    /// `authorization: Bearer TOKEN`), TLS and connection limit.
    #[arg(long, env = "KVSTORE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    /// Serve the server's figures in the Prometheus text format at
    /// `http://ADDR/metrics`; off by default. No token is asked: it shows
    /// counts and sizes, never keys or values.
    #[arg(long, env = "KVSTORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Snapshot file (memory engine); the log lives beside it in
    /// `<data>-wal/`, the disk engine's tree in `<data>-fjall/`.
    #[arg(long, env = "KVSTORE_DATA", default_value = "kvstore.db")]
    pub data: PathBuf,

    /// Start from this backup (a file made by `kvstore backup`): every
    /// checksum is verified, a damaged file is refused, and its contents
    /// become the data at --data, which must hold nothing yet; then the
    /// server starts as usual. Drop the flag for later starts.
    #[arg(long)]
    pub restore: Option<PathBuf>,

    /// A directory for backups the server writes itself (`kvstore backup
    /// --server NAME`); created if missing. Clients choose only a file name
    /// in it. Without it, backups are streamed to clients only.
    #[arg(long, env = "KVSTORE_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// The storage engine: `memory` (everything in RAM) or `disk` (data
    /// larger than memory). Recorded with a single node's data; a later
    /// start must name the same one.
    #[arg(long, env = "KVSTORE_ENGINE", value_enum, default_value_t = EngineKind::Memory)]
    pub engine: EngineKind,

    /// With `--engine disk`: the block cache, in MiB.
    #[arg(long, env = "KVSTORE_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,

    /// When the log is fsynced before acknowledging a write.
    #[arg(long, env = "KVSTORE_SYNC", value_enum, default_value_t = SyncMode::Always)]
    pub sync: SyncMode,

    /// With `--sync periodic`: the longest time between two fsyncs of the log.
    #[arg(long, env = "KVSTORE_SYNC_INTERVAL_MS", default_value_t = 1000)]
    pub sync_interval_ms: u64,

    /// Write a snapshot (and start a new log segment) once the log passes this
    /// many bytes.
    #[arg(long, env = "KVSTORE_SNAPSHOT_AFTER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub snapshot_after_bytes: u64,

    /// MiB of recent changes kept for watches that resume from a revision
    /// (docs/watch.md); 0 keeps none (watches from now only).
    #[arg(long, env = "KVSTORE_WATCH_HISTORY_MB", default_value_t = 4)]
    pub watch_history_mb: u64,

    /// Batches of writes a watcher may fall behind before it is cancelled.
    #[arg(long, env = "KVSTORE_WATCH_LAG", default_value_t = 4096)]
    pub watch_lag: usize,

    /// Largest frame body accepted, in bytes.
    #[arg(long, env = "KVSTORE_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Largest key, in bytes.
    #[arg(long, env = "KVSTORE_MAX_KEY", default_value_t = DEFAULT_MAX_KEY)]
    pub max_key: usize,

    /// Largest value, in bytes. Key plus value must fit in a frame.
    #[arg(long, env = "KVSTORE_MAX_VALUE", default_value_t = DEFAULT_MAX_VALUE)]
    pub max_value: usize,

    /// Most items in one BulkSet.
    #[arg(long, env = "KVSTORE_MAX_BULK_ITEMS", default_value_t = DEFAULT_MAX_BULK_ITEMS)]
    pub max_bulk_items: usize,

    /// Most client connections at once; the next one gets an error and is closed.
    #[arg(long, env = "KVSTORE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Number of shards of the in-memory map (see docs/architecture.md for the
    /// measurement behind the default).
    #[arg(long, env = "KVSTORE_SHARDS", default_value_t = 64)]
    pub shards: usize,

    /// Once the first byte of a frame has arrived, the time the rest may
    /// take; a slower client (slowloris) is disconnected. 0 turns it off.
    #[arg(long, env = "KVSTORE_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub read_timeout_ms: u64,

    /// Disconnect a client that sends nothing for this long while nothing of
    /// it is pending. 0 (the default, like Redis) turns it off.
    #[arg(long, env = "KVSTORE_IDLE_TIMEOUT_MS", default_value_t = 0)]
    pub idle_timeout_ms: u64,

    /// Disconnect a client that does not read its replies: once its pending
    /// output (the socket's buffer and the server's, about 128 KiB, plus one
    /// reply) stays full this long. 0 turns it off.
    #[arg(long, env = "KVSTORE_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// A file holding the token clients must send in `Auth` before anything
    /// else (trailing newlines are ignored). `KVSTORE_AUTH_TOKEN` may hold
    /// the token itself instead. Without either, clients need no token, and
    /// the server listens on loopback addresses only (protected mode).
    #[arg(long, env = "KVSTORE_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "KVSTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "KVSTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Allow listening on a non-loopback address without a token.
    #[arg(long, env = "KVSTORE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish
    /// before the log is closed anyway.
    #[arg(long, env = "KVSTORE_SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,

    /// Cluster mode: this node's id (a number of your choice, unique in the
    /// cluster). Without it the server runs alone. docs/replication.md.
    #[arg(long, env = "KVSTORE_NODE_ID")]
    pub node_id: Option<u64>,

    /// Cluster mode: the address the other nodes send Raft messages to.
    /// Without --raft-tls-cert it has no authentication, and must be a
    /// loopback address unless --allow-insecure-raft.
    #[arg(long, env = "KVSTORE_RAFT_LISTEN", requires = "node_id")]
    pub raft_listen: Option<SocketAddr>,

    /// Cluster mode: the address other nodes and clients reach this node's
    /// --listen at (behind NAT, in a container), as HOST:PORT: what the
    /// membership records and a NotLeader answer names. Default: --listen.
    /// With it --listen may be 0.0.0.0.
    #[arg(long, env = "KVSTORE_ADVERTISE_ADDR", requires = "node_id")]
    pub advertise_addr: Option<String>,

    /// Cluster mode: the same for --raft-listen. Default: --raft-listen.
    #[arg(long, env = "KVSTORE_ADVERTISE_RAFT_ADDR", requires = "node_id")]
    pub advertise_raft_addr: Option<String>,

    /// Cluster mode: mutual TLS on the raft port with this node's
    /// certificate (PEM), signed by --raft-tls-ca and naming the node as the
    /// DNS name `node-ID`. Needs --raft-tls-key and --raft-tls-ca.
    #[arg(
        long,
        env = "KVSTORE_RAFT_TLS_CERT",
        requires_all = ["node_id", "raft_tls_key", "raft_tls_ca"]
    )]
    pub raft_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --raft-tls-cert.
    #[arg(long, env = "KVSTORE_RAFT_TLS_KEY", requires = "raft_tls_cert")]
    pub raft_tls_key: Option<PathBuf>,

    /// The cluster's CA (PEM): a peer must present a certificate it signed.
    #[arg(long, env = "KVSTORE_RAFT_TLS_CA", requires = "raft_tls_cert")]
    pub raft_tls_ca: Option<PathBuf>,

    /// Serve the raft port on a non-loopback address without
    /// --raft-tls-cert: anyone who reaches it can rewrite the data.
    #[arg(long, env = "KVSTORE_ALLOW_INSECURE_RAFT")]
    pub allow_insecure_raft: bool,

    /// Cluster mode: the other first voters, for `kvstore cluster init`, as
    /// `ID=ADDR/RAFT_ADDR` (native address, raft address), comma-separated.
    #[arg(
        long,
        env = "KVSTORE_PEERS",
        value_delimiter = ',',
        requires = "node_id"
    )]
    pub peers: Vec<String>,

    /// Cluster mode: a JSON file naming the first voters, this node among
    /// them, instead of --peers: `{"nodes": [{"id": 1, "addr":
    /// "10.0.0.1:65433", "raft_addr": "10.0.0.1:65533"}, ...]}`. This node's
    /// entry gives --listen and --raft-listen when they are not given (and
    /// must match them when they are). The same file serves every node.
    #[arg(
        long,
        env = "KVSTORE_CLUSTER_FILE",
        requires = "node_id",
        conflicts_with = "peers"
    )]
    pub cluster_file: Option<PathBuf>,

    /// Whether --listen was left at its default, so that a cluster file may
    /// set it (the binary fills this in from clap).
    #[arg(skip)]
    pub listen_defaulted: bool,

    /// Cluster mode: how often the leader sends heartbeats (and how long a
    /// follower may take to answer one).
    #[arg(long, env = "KVSTORE_RAFT_HEARTBEAT_MS", default_value_t = 100)]
    pub raft_heartbeat_ms: u64,

    /// Cluster mode: the shortest election timeout (the longest is 1.5
    /// times it). A follower that has heard a leader stands for election
    /// after the leader lease (the longest timeout) plus a random timeout:
    /// 1.25 to 1.5 s after the last heartbeat with the default.
    #[arg(long, env = "KVSTORE_RAFT_ELECTION_MS", default_value_t = 500)]
    pub raft_election_ms: u64,

    /// Cluster mode: entries between two snapshots of the state machine
    /// (after which the log before them is dropped).
    #[arg(long, env = "KVSTORE_RAFT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub raft_snapshot_every: u64,

    /// Cluster mode: also take a snapshot once the entries applied since
    /// the last one pass this many bytes (large values make a long log in
    /// few entries).
    #[arg(long, env = "KVSTORE_RAFT_SNAPSHOT_BYTES", default_value_t = 256 << 20)]
    pub raft_snapshot_bytes: u64,

    /// Cluster mode: a client session (exactly-once writes) that has not
    /// written for this long expires. Keep it well above a client's longest
    /// call with its retries.
    #[arg(long, env = "KVSTORE_RAFT_SESSION_IDLE_MS", default_value_t = 300_000)]
    pub raft_session_idle_ms: u64,

    /// Cluster mode: the most client sessions the cluster keeps; one more
    /// is refused (TooManySessions) until one expires.
    #[arg(long, env = "KVSTORE_RAFT_MAX_SESSIONS", default_value_t = 10_000)]
    pub raft_max_sessions: u64,
}

/// The environment variable that may hold the auth token itself.
pub const AUTH_TOKEN_ENV: &str = "KVSTORE_AUTH_TOKEN";

/// Bytes of a reply's framing beyond its key and value: the response id, the
/// enum tags, the option tag and the length prefixes.
const REPLY_OVERHEAD: usize = 64;

/// The most batches `--watch-lag` allows (the feed's ring holds a slot per
/// batch).
const MAX_WATCH_LAG: usize = 1 << 20;

impl Config {
    /// The token clients must present: from `--auth-token-file`, else the
    /// `KVSTORE_AUTH_TOKEN` environment variable, else none.
    pub fn auth_token(&self) -> Result<Option<Bytes>, Error> {
        let token = match &self.auth_token_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| Error::io(path, e))?),
            None => std::env::var_os(AUTH_TOKEN_ENV).map(|t| t.into_encoded_bytes()),
        };
        match token {
            None => Ok(None),
            Some(mut token) => {
                while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    token.pop();
                }
                if token.is_empty() {
                    return Err(Error::Config("the auth token is empty".into()));
                }
                Ok(Some(Bytes::from(token)))
            }
        }
    }

    /// Protected mode: without a token, only loopback addresses, unless
    /// `--allow-unauthenticated` says otherwise (then it warns).
    pub fn check_protected_mode(&self, has_token: bool) -> Result<(), Error> {
        for addr in std::iter::once(self.listen)
            .chain(self.resp_listen)
            .chain(self.grpc_listen)
        {
            if has_token || addr.ip().is_loopback() {
                continue;
            }
            if !self.allow_unauthenticated {
                return Err(Error::Config(format!(
                    "refusing to listen on {addr} without an auth token (protected mode): set --auth-token-file \
                     or KVSTORE_AUTH_TOKEN, or pass --allow-unauthenticated to accept anyone who can reach it"
                )));
            }
            tracing::warn!(listen = %addr, "listening on a non-loopback address without an auth token: anyone who can reach it can read and write");
        }
        Ok(())
    }

    /// The raft port's protected mode: a non-loopback raft address needs
    /// peer authentication (mutual TLS) or `--allow-insecure-raft`.
    fn check_raft_protected(&self) -> Result<(), Error> {
        let Some(addr) = self.raft_listen else {
            return Ok(());
        };
        if addr.ip().is_loopback() || self.raft_tls_cert.is_some() {
            return Ok(());
        }
        if !self.allow_insecure_raft {
            return Err(Error::Config(format!(
                "refusing to serve the raft port on {addr} without peer authentication: give \
                 --raft-tls-cert, --raft-tls-key and --raft-tls-ca (docs/security.md), or pass \
                 --allow-insecure-raft if only the cluster's nodes can reach that address"
            )));
        }
        tracing::warn!(raft_listen = %addr, "raft port on a non-loopback address without TLS: anyone who can reach it can rewrite the data");
        Ok(())
    }

    /// The raft port's TLS files, when given.
    pub fn raft_tls(&self) -> Option<crate::raft::peer_tls::PeerTlsFiles> {
        Some(crate::raft::peer_tls::PeerTlsFiles {
            cert: self.raft_tls_cert.clone()?,
            key: self.raft_tls_key.clone()?,
            ca: self.raft_tls_ca.clone()?,
        })
    }

    /// Reads `--cluster-file`, if given, into `peers`, `listen` and
    /// `raft_listen`.
    pub fn load_cluster_file(&mut self) -> Result<(), Error> {
        /// The file: every first voter.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ClusterFile {
            nodes: Vec<FileNode>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileNode {
            id: u64,
            addr: SocketAddr,
            raft_addr: SocketAddr,
        }
        let (Some(path), Some(me)) = (&self.cluster_file, self.node_id) else {
            return Ok(());
        };
        let bad = |why: String| Error::Config(format!("cluster file {}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: ClusterFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut ids = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for node in &file.nodes {
            if !ids.insert(node.id) {
                return Err(bad(format!("node {} is listed twice", node.id)));
            }
            for addr in [node.addr, node.raft_addr] {
                if !addrs.insert(addr) {
                    return Err(bad(format!("address {addr} is listed twice")));
                }
            }
        }
        let own = (file.nodes.iter())
            .find(|n| n.id == me)
            .ok_or_else(|| bad(format!("no node {me} (this node's --node-id)")))?;
        // With advertised addresses the file lists those, and the node
        // binds what --listen and --raft-listen say.
        let advertised = |given: &Option<String>, listed: SocketAddr, flag: &str| match given {
            Some(a) if a.parse() != Ok(listed) => {
                Err(bad(format!("node {me} has {listed}, but --{flag} is {a}")))
            }
            _ => Ok(given.is_some()),
        };
        let (own_addr, own_raft) = (
            advertised(&self.advertise_addr, own.addr, "advertise-addr")?,
            advertised(
                &self.advertise_raft_addr,
                own.raft_addr,
                "advertise-raft-addr",
            )?,
        );
        if own_addr {
            // --listen is what the node binds.
        } else if self.listen_defaulted {
            self.listen = own.addr;
        } else if self.listen != own.addr {
            return Err(bad(format!(
                "node {me} has addr {}, but --listen is {}",
                own.addr, self.listen
            )));
        }
        match self.raft_listen {
            _ if own_raft => {}
            None => self.raft_listen = Some(own.raft_addr),
            Some(given) if given != own.raft_addr => {
                return Err(bad(format!(
                    "node {me} has raft_addr {}, but --raft-listen is {given}",
                    own.raft_addr
                )))
            }
            Some(_) => {}
        }
        self.peers = (file.nodes.iter())
            .filter(|n| n.id != me)
            .map(|n| format!("{}={}/{}", n.id, n.addr, n.raft_addr))
            .collect();
        Ok(())
    }

    /// Checks the flags against each other.
    pub fn validate(&self) -> Result<(), Error> {
        if self.node_id.is_some() && self.raft_listen.is_none() {
            return Err(Error::Config(
                "--node-id needs --raft-listen (or a --cluster-file that lists the node)".into(),
            ));
        }
        if self.max_key + self.max_value + REPLY_OVERHEAD > self.max_frame {
            return Err(Error::Config(format!(
                "--max-key ({}) plus --max-value ({}) must fit in --max-frame ({}) with {REPLY_OVERHEAD} bytes to spare",
                self.max_key, self.max_value, self.max_frame
            )));
        }
        if self.max_frame > kvstore_client::codec::HARD_MAX_FRAME {
            return Err(Error::Config(format!(
                "--max-frame may be at most {}",
                kvstore_client::codec::HARD_MAX_FRAME
            )));
        }
        if self.node_id.is_some() && (self.sync != SyncMode::Always || self.restore.is_some()) {
            return Err(Error::Config(
                "cluster mode (--node-id) always syncs its log before a write counts, and is restored by catching up from the other nodes: --sync and --restore do not apply".into(),
            ));
        }
        let unspecified = |a: Option<SocketAddr>, advertised: &Option<String>| {
            advertised.is_none() && a.is_some_and(|a| a.ip().is_unspecified())
        };
        if self.node_id.is_some()
            && (unspecified(Some(self.listen), &self.advertise_addr)
                || unspecified(self.raft_listen, &self.advertise_raft_addr))
        {
            return Err(Error::Config(
                "in cluster mode --listen and --raft-listen are the addresses the other nodes and clients are told: give the node's own address, not 0.0.0.0 or ::, or say the address to tell with --advertise-addr and --advertise-raft-addr".into(),
            ));
        }
        for advertised in [&self.advertise_addr, &self.advertise_raft_addr]
            .into_iter()
            .flatten()
        {
            let port = advertised.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok().filter(|p| *p != 0)
            });
            if port.is_none() {
                return Err(Error::Config(format!(
                    "an advertised address is HOST:PORT with a port above 0, not {advertised:?}"
                )));
            }
        }
        self.check_raft_protected()?;
        if self.node_id.is_some() && self.raft_heartbeat_ms * 3 > self.raft_election_ms {
            return Err(Error::Config(
                "--raft-election-ms must be at least 3 times --raft-heartbeat-ms".into(),
            ));
        }
        if !(1..=MAX_WATCH_LAG).contains(&self.watch_lag) {
            return Err(Error::Config(format!(
                "--watch-lag must be between 1 and {MAX_WATCH_LAG}"
            )));
        }
        if self.shards == 0 || self.max_connections == 0 || self.max_bulk_items == 0 {
            return Err(Error::Config(
                "--shards, --max-connections and --max-bulk-items must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The other first voters from `--peers`: id to (native, raft) address.
    pub fn peers(&self) -> Result<Vec<(u64, String, String)>, Error> {
        self.peers
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|peer| {
                let bad = || {
                    Error::Config(format!(
                        "--peers entry {peer:?} is not ID=ADDR/RAFT_ADDR (such as 2=10.0.0.2:65433/10.0.0.2:65533)"
                    ))
                };
                let (id, addrs) = peer.trim().split_once('=').ok_or_else(bad)?;
                let (addr, raft) = addrs.split_once('/').ok_or_else(bad)?;
                let id = id.parse::<u64>().map_err(|_| bad())?;
                if addr.is_empty() || raft.is_empty() {
                    return Err(bad());
                }
                Ok((id, addr.to_string(), raft.to_string()))
            })
            .collect()
    }

    /// Where cluster mode keeps its raft log and snapshots: `DATA.raft/`.
    pub fn raft_dir(&self) -> PathBuf {
        let mut name = self.data.clone().into_os_string();
        name.push(".raft");
        PathBuf::from(name)
    }

    /// The change feed watches read (docs/watch.md).
    pub fn feed(&self) -> Arc<Feed> {
        let history = usize::try_from(self.watch_history_mb << 20).unwrap_or(usize::MAX);
        Arc::new(Feed::new(history, self.watch_lag))
    }

    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The per-connection timeouts.
    pub fn timeouts(&self) -> Timeouts {
        let of = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Timeouts {
            read: of(self.read_timeout_ms),
            idle: of(self.idle_timeout_ms),
            write: of(self.write_timeout_ms),
        }
    }

    /// The limits every command checks.
    /// The request limits. With the disk engine a key may not be longer
    /// than the engine stores (65,534 bytes): a larger `--max-key`, such as
    /// the default 65,536, is lowered to that.
    pub fn limits(&self) -> Limits {
        let max_key = match self.engine {
            EngineKind::Memory => self.max_key,
            EngineKind::Disk => self.max_key.min(crate::engine::disk::MAX_KEY),
        };
        Limits {
            max_key,
            max_value: self.max_value,
            max_bulk_items: self.max_bulk_items,
            max_reply_bytes: self.max_frame / 2,
            max_frame: self.max_frame,
        }
    }
}

/// The request limits, copied into each connection's [`crate::db::Db`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key: usize,
    pub max_value: usize,
    pub max_bulk_items: usize,
    /// A `Keys` page stops once its keys pass this many bytes, so its reply
    /// always fits in a frame.
    pub max_reply_bytes: usize,
    /// The frame limit, restored once a connection has authenticated.
    pub max_frame: usize,
}

/// How long a connection may stall, each `None` when off. These are what
/// keep slow or absent clients from holding server resources for ever.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// A partly received frame must be complete within this (slowloris).
    pub read: Option<Duration>,
    /// A connection with nothing pending may be silent this long.
    pub idle: Option<Duration>,
    /// Replies that cannot be written for this long end the connection.
    pub write: Option<Duration>,
}

/// How often a connection that has not logged in checks its login deadline.
const LOGIN_CHECK: Duration = Duration::from_secs(1);

impl Timeouts {
    /// The steady tick on which a connection loop checks its read and idle
    /// timeouts (and its login deadline while `login_pending`): half the
    /// shortest of them, so a slow frame or a silent client is noticed
    /// between one timeout and one and a half. A timer re-armed for every
    /// request instead cost a timer-wheel update (and clock reads) per
    /// request.
    pub fn ticker(&self, login_pending: bool) -> Ticker {
        let period = [self.read, self.idle]
            .into_iter()
            .flatten()
            .map(|limit| limit / 2)
            .chain(login_pending.then_some(LOGIN_CHECK))
            .min();
        Ticker(period.map(|period| {
            let start = tokio::time::Instant::now() + period;
            let mut interval = tokio::time::interval_at(start, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        }))
    }
}

/// See [`Timeouts::ticker`]; without any timeout it never ticks.
pub struct Ticker(Option<tokio::time::Interval>);

impl Ticker {
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn validated(args: &[&str]) -> Result<(), Error> {
        let args = std::iter::once("kvstore-server").chain(args.iter().copied());
        Config::try_parse_from(args).unwrap().validate()
    }

    #[test]
    fn a_node_may_bind_every_address_only_when_it_advertises_one() {
        let bind_all = [
            "--node-id",
            "1",
            "--listen",
            "0.0.0.0:7000",
            "--raft-listen",
            "0.0.0.0:7100",
            "--allow-insecure-raft",
        ];
        let refused = validated(&bind_all).unwrap_err().to_string();
        assert!(refused.contains("--advertise-addr"), "{refused}");
        let advertised = [
            "--advertise-addr",
            "db1.example:7000",
            "--advertise-raft-addr",
            "10.0.0.1:7100",
        ];
        validated(&[&bind_all[..], &advertised[..]].concat()).unwrap();
        let no_port = [
            "--advertise-addr",
            "db1.example",
            "--advertise-raft-addr",
            "h:1",
        ];
        let refused = validated(&[&bind_all[..], &no_port[..]].concat()).unwrap_err();
        assert!(refused.to_string().contains("HOST:PORT"), "{refused}");
    }
}
