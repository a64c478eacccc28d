//! The async client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::mux::{Mux, Tls};
use crate::once;
use crate::pool::Pools;
use crate::protocol::{ClusterRequest, DEFAULT_MAX_FRAME};
use crate::replicas::{ReplicaLoad, Replicas};
use crate::routes::{redirect_named, Routes};
use crate::slot::{slot_of, GroupId};
use crate::split::{by_slot, Part};
use crate::{
    addr, BackupStream, BackupSummary, Command, Condition, Error, ErrorCode, ExpireWhen, Expiry,
    Reply, ScanQuery, Transaction, TxnDone, WatchStream,
};

/// Default time to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time for one request to be answered.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of attempts for one call, the first included.
pub const DEFAULT_MAX_ATTEMPTS: usize = 4;
/// Default cap on the whole time of one call: every attempt, its connect,
/// its wait for the answer, and the pauses between attempts.
pub const DEFAULT_MAX_CALL_TIME: Duration = Duration::from_secs(20);
/// Default number of connections a client spreads its calls over.
///
/// Measured with 50 tasks sharing one client (`cargo run --release --example
/// loadgen -- -c 50 -n 100000 -t set,get --shared-client N`, 2-core VM, server
/// on the same machine, two rounds): 1 connection 82–118k sets/s and
/// 116–121k gets/s; 2: 93–106k and 124–137k; 4: 77–78k and 120–122k; 8:
/// 68–71k and 84–129k. Two keep reads spread over both server cores while each
/// connection still batches many requests per write; more connections only
/// split the batches.
pub const DEFAULT_CONNECTIONS: usize = 2;

/// A key's value and revisions ([`Client::get_with_version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The key's value.
    pub value: Bytes,
    /// The log position of the key's last write.
    pub modified: u64,
    /// The log position of the write that created it.
    pub created: u64,
}

/// Settings of a [`Client`]; build one with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_attempts: usize,
    /// `max_attempts` was chosen (else a cluster client raises it).
    attempts_set: bool,
    max_call_time: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    connections: usize,
    max_frame: usize,
    auth_token: Option<Bytes>,
    tls: bool,
    tls_ca: Option<PathBuf>,
    reads: Reads,
    exactly_once: bool,
    /// Sends each keyed call to its group's leader in a sharded cluster
    /// (off for the one-node clients of follower reads).
    by_key: bool,
}

/// Which node answers a cluster client's reads, and what they promise
/// (docs/replication.md). Writes always go to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reads {
    /// The leader, once it has confirmed that it still leads: a read sees
    /// every write acknowledged before it began, by any client.
    #[default]
    Linearizable,
    /// The least loaded node of the address list (leader, follower or
    /// learner), from what it has applied: it may be stale. Load is this
    /// client's view: its reads outstanding there and a moving average of
    /// their latency ([`Client::replica_loads`]).
    Follower,
    /// As `Follower`, but the node first waits until it has applied every
    /// write this client had acknowledged and every state it has read
    /// (read-your-writes, monotonic reads). The client carries the log
    /// index it has seen ([`Client::session_index`]) and prefers the nodes
    /// it knows to have applied it.
    Session,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            addr: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            attempts_set: false,
            max_call_time: DEFAULT_MAX_CALL_TIME,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            connections: DEFAULT_CONNECTIONS,
            max_frame: DEFAULT_MAX_FRAME,
            auth_token: None,
            tls: false,
            tls_ca: None,
            reads: Reads::Linearizable,
            exactly_once: true,
            by_key: true,
        }
    }
}

impl ClientBuilder {
    /// The server: `host:port` or `kvstore://host:port`. Without it,
    /// `KVSTORE_ADDR`, else `127.0.0.1:65433`.
    ///
    /// A cluster's nodes, comma-separated (`a:1,b:2,c:3`): the client talks
    /// to one at a time, moves to the leader a `NotLeader` answer names, and
    /// to the next address when a node cannot be reached, within the retry
    /// budget (with several addresses, at least 60 attempts unless
    /// [`ClientBuilder::max_attempts`] says otherwise, no pause before an
    /// address not tried since the last pause, and pauses of at most
    /// 200 ms). In a sharded cluster it learns which node leads the group
    /// of each key's slot from the first redirect on, and sends each keyed
    /// call there (docs/sharding.md).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = Some(addr.into());
        self
    }

    /// Time allowed to get a connection: waiting for the slot and connecting
    /// (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for each request's answer (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Attempts per call, the first included (default 4; 1 turns retries off).
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts.max(1);
        self.attempts_set = true;
        self
    }

    /// Cap on the whole time of one call, all attempts and pauses included
    /// (default 20 s); past it the call fails with [`Error::Timeout`].
    pub fn max_call_time(mut self, time: Duration) -> Self {
        self.max_call_time = time;
        self
    }

    /// The server's auth token: sent as `Auth` first on every connection.
    /// A wrong token fails every call with `AuthFailed`, never retried.
    pub fn auth_token(mut self, token: impl Into<Bytes>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Speak TLS (also chosen by a `kvstores://` address). Needs
    /// [`ClientBuilder::tls_ca_file`]: the server's certificate must chain to it.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// The certificate authority (PEM) that the server's certificate must
    /// chain to; turns TLS on.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self.tls = true;
        self
    }

    /// Largest request this client sends (default 16 MiB, the server's
    /// default frame limit); a larger one fails at once, without retries.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// First and largest pause between attempts (defaults 50 ms and 1 s);
    /// pauses double between them, with jitter (which may add up to the
    /// pause again). With several addresses no pause exceeds 200 ms.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// Which node answers reads (`Get`, `Exists`, `Keys`, `Scan`, `Range`)
    /// and what they promise; [`Reads::Linearizable`] unless set. Follower
    /// and session reads go to the least loaded node of the address list,
    /// the first one while nothing is known, so put the nearest node first.
    /// A server running alone answers them as usual.
    pub fn reads(mut self, reads: Reads) -> Self {
        self.reads = reads;
        self
    }

    /// Whether writes to a cluster go in a client session, so that a write
    /// resent after a lost answer is applied once (default on). Off, a
    /// resent `Set` or `Delete` may be applied twice, and `Incr` or
    /// `Append` are not resent after a lost answer. A server running alone
    /// has no sessions: its writes go plain either way.
    pub fn exactly_once(mut self, on: bool) -> Self {
        self.exactly_once = on;
        self
    }

    /// Connections per server the client spreads its calls over (default
    /// 2). Each is multiplexed: many calls share it, in flight at once.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Builds the client. Connections are opened on first use, so this does
    /// not touch the network; an unreachable server shows on the first call.
    pub fn build(mut self) -> Result<Client, Error> {
        let given = match &self.addr {
            Some(a) => a.clone(),
            None => addr::from_env()?,
        };
        let mut addrs = Vec::new();
        let mut tls_scheme = false;
        for one in given.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (addr, tls) = addr::parse_target(one)?;
            tls_scheme |= tls;
            addrs.push(addr);
        }
        let first = addrs
            .first()
            .cloned()
            .ok_or_else(|| Error::InvalidAddress(given.clone()))?;
        let tls = if self.tls || tls_scheme {
            Some(tls_setup(&first, self.tls_ca.as_deref())?)
        } else {
            None
        };
        if addrs.len() > 1 && !self.attempts_set {
            self.max_attempts = self.max_attempts.max(CLUSTER_MIN_ATTEMPTS);
        }
        // Follower reads choose among all the given nodes, each reached by
        // a client of its own.
        let reader = match self.reads {
            Reads::Linearizable => None,
            Reads::Follower | Reads::Session => Some(Replicas::new(&addrs, |addr| {
                ClientBuilder {
                    addr: Some(addr.to_string()),
                    tls: self.tls || tls_scheme,
                    reads: Reads::Linearizable,
                    max_attempts: 1,
                    attempts_set: true,
                    by_key: false,
                    ..self.clone()
                }
                .build()
            })?),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                target: std::sync::Mutex::new(Target {
                    addr: first,
                    epoch: 0,
                    known: addrs,
                }),
                tls,
                pools: Pools::new(self.connections),
                routes: Default::default(),
                asking: Mutex::new(()),
                reader,
                session: AtomicU64::new(0),
                writes: Mutex::new(once::Slot::None),
                options: self,
            }),
        })
    }
}

/// How long [`Client::backup_on_server`] waits for the server to write and
/// sync the file (about 0.65 s per million 100-byte values on a small VM).
pub const SERVER_BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// An async kvstore client: cheap to clone, safe to share across tasks.
///
/// Calls are spread round-robin over a few multiplexed connections; each
/// call has a timeout and is retried with exponential backoff and jitter on
/// connection failures and timeouts (see [`Error::is_retryable`]). After a
/// server restart the next call reconnects by itself.
///
/// ```no_run
/// # async fn demo() -> Result<(), kvstore_client::Error> {
/// let client = kvstore_client::Client::connect("127.0.0.1:65433")?;
/// client.set("greeting", "hello").await?;
/// assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server talked to now, among the cluster's known addresses.
    target: std::sync::Mutex<Target>,
    /// How to speak TLS, if at all (the server name is each target's host).
    tls: Option<Tls>,
    /// The connections, by server.
    pools: Pools,
    /// In a sharded cluster: each key's group and its leader.
    routes: std::sync::Mutex<Routes>,
    /// Held while the routes are asked for: one request at a time.
    asking: Mutex<()>,
    /// With follower or session reads: the nodes that answer them.
    reader: Option<Replicas>,
    /// The highest log index seen in an `Indexed` reply (session reads
    /// wait for it).
    session: AtomicU64,
    /// The client session of exactly-once writes. A tokio mutex: held
    /// while one is opened.
    writes: Mutex<once::Slot>,
    options: ClientBuilder,
}

impl Client {
    /// Settings for a new client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for `addr` with default settings.
    pub fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        Client::builder().addr(addr).build()
    }

    /// The `host:port` this client talks to now (with several addresses,
    /// the one it last moved to).
    pub fn addr(&self) -> String {
        self.target().0
    }

    /// The current target and its epoch.
    fn target(&self) -> (String, u64) {
        let target = self.inner.target.lock().unwrap_or_else(|e| e.into_inner());
        (target.addr.clone(), target.epoch)
    }

    /// After a failed attempt made in `epoch`: follows a `NotLeader` answer
    /// to the leader it names, or moves to the next known address when the
    /// node could not be reached or named no leader. Does nothing with a
    /// single address, or if another call moved the target already.
    fn steer(&self, error: &Error, epoch: u64) {
        let mut target = self.inner.target.lock().unwrap_or_else(|e| e.into_inner());
        if target.epoch != epoch {
            return;
        }
        let next = match error {
            // A sharded cluster's node that does not run the key's group
            // answers `Moved`, naming a node that does.
            Error::Server { code, message }
                if *code == ErrorCode::NotLeader as u32 || *code == ErrorCode::Moved as u32 =>
            {
                match redirect_named(message) {
                    Some(leader) => Some(leader),
                    None => target.after_current(),
                }
            }
            Error::Connect { .. } | Error::ConnectionLost(_) | Error::Timeout { .. } => {
                target.after_current()
            }
            Error::Server { code, .. } if *code == ErrorCode::Lagging as u32 => {
                target.after_current()
            }
            _ => None,
        };
        if let Some(next) = next.filter(|n| *n != target.addr) {
            if !target.known.contains(&next) {
                target.known.push(next.clone());
            }
            target.addr = next;
            target.epoch += 1;
        }
    }

    /// Stores `value` under `key`.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// client.set("user:1", "ann").await?;
    /// client.set(b"\x00binary", [0u8, 159, 146, 150]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let command = Command::Set {
            key: bytes(key),
            value: bytes(value),
        };
        expect_ok(self.call(command).await?)
    }

    /// The value of `key`, or `None`.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// if let Some(value) = client.get("user:1").await? {
    ///     println!("{}", String::from_utf8_lossy(&value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, Error> {
        match self.call(Command::Get { key: bytes(key) }).await? {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected("Value", &other)),
        }
    }

    /// The value of `key` with its revisions, or `None`: the log
    /// positions of its last write and of its creation (the server's
    /// docs/transactions.md). A key whose `modified` is the same in two
    /// reads was not written between them.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// if let Some(found) = client.get_with_version("config").await? {
    ///     println!("revision {}", found.modified);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_with_version(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Versioned>, Error> {
        match self
            .call(Command::GetWithVersion { key: bytes(key) })
            .await?
        {
            Reply::Versioned {
                value,
                modified,
                created,
            } => Ok(value.map(|value| Versioned {
                value,
                modified,
                created,
            })),
            other => Err(unexpected("Versioned", &other)),
        }
    }

    /// Runs a compare-and-swap transaction ([`Transaction`]): atomic and
    /// durable as one write. Not resent after a lost reply (it may have
    /// run), like `Incr`.
    pub async fn txn(&self, txn: Transaction) -> Result<TxnDone, Error> {
        match self.call(txn.command()).await? {
            Reply::Txn { succeeded, replies } => Ok(TxnDone { succeeded, replies }),
            other => Err(unexpected("Txn", &other)),
        }
    }

    /// Removes `key`; `true` if it existed.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// let existed = client.delete("user:1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        expect_bool(self.call(Command::Delete { key: bytes(key) }).await?)
    }

    /// Whether `key` exists.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// if !client.exists("config").await? {
    ///     client.set("config", "{}").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        expect_bool(self.call(Command::Exists { key: bytes(key) }).await?)
    }

    /// Stores every pair atomically: all or none, also across a crash.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// let rows = (0..1000).map(|i| (format!("row:{i}"), format!("value {i}")));
    /// client.bulk_set(rows).await?;
    /// # Ok(()) }
    /// ```
    pub async fn bulk_set<K, V>(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<(), Error>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let items = items
            .into_iter()
            .map(|(k, v)| (bytes(k), bytes(v)))
            .collect();
        expect_ok(self.call(Command::BulkSet { items }).await?)
    }

    /// Stores the pairs in one atomic `BulkSet` per slot of a sharded
    /// cluster, which refuses a `BulkSet` over several slots with
    /// `CrossSlot`: each part is stored whole or not at all, the whole is
    /// not atomic, and each part's result comes back with its slot and
    /// group (see [`Part`]). On a single server or an unsharded cluster it
    /// is one part, as [`Client::bulk_set`]. The parts are sent at once,
    /// each to its group's leader where the client knows it.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) {
    /// let rows = (0..1000).map(|i| (format!("row:{i}"), format!("value {i}")));
    /// for part in client.bulk_set_split(rows).await {
    ///     if let Err(e) = part.result {
    ///         eprintln!("{} rows of group {:?} not stored: {e}", part.keys, part.group);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn bulk_set_split<K, V>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Vec<Part<()>>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let items = (items.into_iter())
            .map(|(k, v)| (bytes(k), bytes(v)))
            .collect();
        let command = |items| Command::BulkSet { items };
        self.split_write(items, |(key, _)| key, command, expect_ok)
            .await
    }

    /// Removes `keys` in one atomic `DeleteMany` per slot of a sharded
    /// cluster, as [`Client::bulk_set_split`] stores pairs; each part's
    /// result is how many of its keys existed.
    pub async fn delete_many_split<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Vec<Part<u64>> {
        let keys = keys.into_iter().map(bytes).collect();
        let command = |keys| Command::DeleteMany { keys };
        let count = |reply| expect_int(reply).map(|n| n.max(0) as u64);
        self.split_write(keys, |key| key, command, count).await
    }

    /// Sends `items` as one `command` while the client knows of one group
    /// at most, and by slot ([`by_slot`]) if that is refused with
    /// `CrossSlot` or the routes know of several.
    async fn split_write<T: Clone, R>(
        &self,
        items: Vec<T>,
        key: fn(&T) -> &[u8],
        command: fn(Vec<T>) -> Command,
        answer: fn(Reply) -> Result<R, Error>,
    ) -> Vec<Part<R>> {
        if items.is_empty() {
            return Vec::new();
        }
        if !self.routes().sharded() {
            let keys = items.len();
            match self.call(command(items.clone())).await.and_then(answer) {
                Err(e) if e.code() == Some(ErrorCode::CrossSlot) => {
                    // Its slots' groups, for the parts' reports and routes.
                    self.routes().outdated();
                    self.learn_routes().await;
                }
                result => {
                    let (slot, group) = (None, None);
                    return vec![Part {
                        slot,
                        group,
                        keys,
                        result,
                    }];
                }
            }
        }
        let sent = by_slot(items, key).into_iter().map(|(slot, items)| {
            let keys = items.len();
            let group = self.routes().group_of(slot);
            let command = command(items);
            async move {
                let result = self.call(command).await.and_then(answer);
                let slot = Some(slot);
                Part {
                    slot,
                    group,
                    keys,
                    result,
                }
            }
        });
        futures_util::future::join_all(sent).await
    }

    /// Stores `value` as JSON.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// #[derive(serde::Serialize)]
    /// struct User { name: String, age: u32 }
    /// client.set_json("user:1", &User { name: "ann".into(), age: 41 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), Error> {
        self.set(key, serde_json::to_vec(value)?).await
    }

    /// Reads a value stored as JSON.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// let tags: Option<Vec<String>> = client.get_json("tags:1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, Error> {
        match self.get(key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// One page of keys starting with `prefix`, after `start_after`; `limit` 0
    /// means the server's default page. Returns the keys and whether more may
    /// follow.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// let (first, more) = client.keys_page("user:", None, 100).await?;
    /// if more {
    ///     let (next, _) = client.keys_page("user:", first.last().map(|k| &k[..]), 100).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn keys_page(
        &self,
        prefix: impl AsRef<[u8]>,
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<Bytes>, bool), Error> {
        let command = Command::Keys {
            prefix: bytes(prefix),
            start_after: start_after.map(Bytes::copy_from_slice),
            limit,
        };
        match self.call(command).await? {
            Reply::Keys { keys, more } => Ok((keys, more)),
            other => Err(unexpected("Keys", &other)),
        }
    }

    /// Every key starting with `prefix`, ascending, fetched page by page as
    /// the stream is read.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use futures_util::TryStreamExt;
    /// let users: Vec<_> = client.keys("user:").try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn keys(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let client = self.clone();
        let prefix = bytes(prefix);
        // State: the keys of the current page not yet yielded, the last key
        // seen, and whether the server said more may follow.
        let start = (Vec::<Bytes>::new().into_iter(), None::<Bytes>, true);
        futures_util::stream::try_unfold(start, move |(mut page, mut after, mut more)| {
            let client = client.clone();
            let prefix = prefix.clone();
            async move {
                loop {
                    if let Some(key) = page.next() {
                        after = Some(key.clone());
                        return Ok(Some((key, (page, after, more))));
                    }
                    if !more {
                        return Ok(None);
                    }
                    let (keys, next_more) = client.keys_page(&prefix, after.as_deref(), 0).await?;
                    more = next_more && !keys.is_empty();
                    page = keys.into_iter();
                }
            }
        })
    }

    /// A cluster command ([`crate::ClusterRequest`]); the answering node's
    /// view of the cluster afterwards. A server that runs alone answers
    /// `ClusterFailed`.
    ///
    /// `AddLearner` answers once the learner has caught up, which with a
    /// large store takes a while, `AddGroup` once the new group has a
    /// leader, and `MoveSlots`, `Rebalance` and `MoveReplica` once done:
    /// they wait up to [`SERVER_BACKUP_TIMEOUT`].
    pub async fn cluster(
        &self,
        request: crate::ClusterRequest,
    ) -> Result<crate::ClusterStatus, Error> {
        let command = Command::Cluster(request);
        let reply = match &command {
            Command::Cluster(
                crate::ClusterRequest::AddLearner { .. }
                | crate::ClusterRequest::AddGroup { .. }
                | crate::ClusterRequest::MoveSlots { .. }
                | crate::ClusterRequest::AbortMove
                | crate::ClusterRequest::Rebalance
                | crate::ClusterRequest::MoveReplica { .. },
            ) => self.patient()?.call_once_more(command).await?,
            _ => self.call(command).await?,
        };
        match reply {
            Reply::Cluster(status) => Ok(*status),
            other => Err(unexpected("Cluster", &other)),
        }
    }

    /// The server's figures (keys, bytes, commands, errors, connections, the
    /// log, fsync latency, snapshots, uptime, version) as (name, value)
    /// pairs; names are Prometheus series (see [`Reply::Stats`]).
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// let figures = client.stats().await?;
    /// let keys = figures.iter().find(|(name, _)| name == "keys").map(|(_, v)| *v);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<Vec<(String, i64)>, Error> {
        match self.call(Command::Stats).await? {
            Reply::Stats(figures) => Ok(figures),
            other => Err(unexpected("Stats", &other)),
        }
    }

    /// One page of the pairs `query` selects (`limit` 0: the server's default
    /// page), and whether more may follow. Move `query` past the page with
    /// [`ScanQuery::advance`] to ask for the next one; [`Client::scan`] does
    /// that for you.
    pub async fn scan_page(
        &self,
        query: &ScanQuery,
        limit: u32,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), Error> {
        match self.call(query.command(limit)).await? {
            Reply::Pairs { pairs, more } => Ok((pairs, more)),
            other => Err(unexpected("Pairs", &other)),
        }
    }

    /// Every pair `query` selects, in its key order, fetched page by page as
    /// the stream is read. Each page is one instant's view of the store;
    /// between pages, a key present throughout is returned exactly once, and
    /// keys written meanwhile may or may not appear.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use futures_util::TryStreamExt;
    /// use kvstore_client::ScanQuery;
    /// let users: Vec<(bytes::Bytes, bytes::Bytes)> =
    ///     client.scan(ScanQuery::prefix("user:")).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn scan(
        &self,
        query: ScanQuery,
    ) -> impl Stream<Item = Result<(Bytes, Bytes), Error>> + Send + 'static {
        let client = self.clone();
        // State: the pairs of the current page not yet yielded, the query
        // for the next page, and whether the server said more may follow.
        let start = (Vec::new().into_iter(), query, true);
        futures_util::stream::try_unfold(start, move |(mut page, mut query, mut more)| {
            let client = client.clone();
            async move {
                loop {
                    if let Some(pair) = page.next() {
                        return Ok(Some((pair, (page, query, more))));
                    }
                    if !more {
                        return Ok(None);
                    }
                    let (pairs, next_more) = client.scan_page(&query, 0).await?;
                    if let Some((last, _)) = pairs.last() {
                        query.advance(last);
                    }
                    more = next_more && !pairs.is_empty();
                    page = pairs.into_iter();
                }
            }
        })
    }

    /// Stores `value` under `key` only if `condition` holds; returns whether
    /// it stored. `Condition::Absent` is Redis's `SETNX`.
    pub async fn set_if(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        condition: Condition,
    ) -> Result<bool, Error> {
        expect_bool(
            self.call(Command::SetIf {
                key: bytes(key),
                value: bytes(value),
                condition,
                get: false,
            })
            .await?,
        )
    }

    /// Stores `value` under `key` until `expiry` passes (docs/expiry.md),
    /// if `condition` holds; whether it stored.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use kvstore_client::{Condition, Expiry};
    /// client.set_expiring("session:9", "ann", Condition::Always, Expiry::In(30_000)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_expiring(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        condition: Condition,
        expiry: Expiry,
    ) -> Result<bool, Error> {
        let command = Command::SetExpiring {
            key: bytes(key),
            value: bytes(value),
            condition,
            get: false,
            expiry,
        };
        expect_bool(self.call(command).await?)
    }

    /// Gives `key` the deadline `expiry` if `when` holds (a deadline already
    /// passed removes it); whether it changed. `false` for a missing key.
    pub async fn expire(
        &self,
        key: impl AsRef<[u8]>,
        expiry: Expiry,
        when: ExpireWhen,
    ) -> Result<bool, Error> {
        let key = bytes(key);
        expect_bool(self.call(Command::Expire { key, expiry, when }).await?)
    }

    /// `key`'s value, giving it the deadline `expiry` at once (`Never`
    /// removes its deadline; a time already passed removes the key).
    pub async fn get_ex(
        &self,
        key: impl AsRef<[u8]>,
        expiry: Expiry,
    ) -> Result<Option<Bytes>, Error> {
        let key = bytes(key);
        expect_value(self.call(Command::GetEx { key, expiry }).await?)
    }

    /// Removes `key`'s deadline; whether it had one.
    pub async fn persist(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        expect_bool(self.call(Command::Persist { key: bytes(key) }).await?)
    }

    /// The milliseconds left before `key`'s deadline (with `absolute`, the
    /// deadline in ms since the epoch): -1 for a key without one, -2 for a
    /// missing key, as Redis's `PTTL` and `PEXPIRETIME` answer.
    pub async fn ttl(&self, key: impl AsRef<[u8]>, absolute: bool) -> Result<i64, Error> {
        let key = bytes(key);
        expect_int(self.call(Command::Ttl { key, absolute }).await?)
    }

    /// Stores `value` under `key` and returns the value it replaced.
    pub async fn get_set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Bytes>, Error> {
        expect_value(
            self.call(Command::SetIf {
                key: bytes(key),
                value: bytes(value),
                condition: Condition::Always,
                get: true,
            })
            .await?,
        )
    }

    /// Removes `key` and returns the value it had.
    pub async fn get_del(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, Error> {
        expect_value(self.call(Command::GetDel { key: bytes(key) }).await?)
    }

    /// Adds `by` to the integer stored at `key` (0 if missing) and returns the
    /// result. To a cluster it goes in the client session, so it is resent
    /// after a lost reply and applied once ([`ClientBuilder::exactly_once`]).
    /// Otherwise it is never resent after a lost reply: on
    /// [`Error::ConnectionLost`] or a timeout the increment may or may not
    /// have happened.
    pub async fn incr(&self, key: impl AsRef<[u8]>, by: i64) -> Result<i64, Error> {
        expect_int(
            self.call(Command::Incr {
                key: bytes(key),
                by,
            })
            .await?,
        )
    }

    /// Overwrites the value at `key` from byte `offset` on with `value`
    /// (zero-padded past its end); the new length.
    pub async fn set_range(
        &self,
        key: impl AsRef<[u8]>,
        offset: u64,
        value: impl AsRef<[u8]>,
    ) -> Result<u64, Error> {
        let (key, value) = (bytes(key), bytes(value));
        let n = expect_int(self.call(Command::SetRange { key, offset, value }).await?)?;
        Ok(n as u64)
    }

    /// Adds `by` to the number at `key` in 64-bit floating point; the new
    /// value as stored. Resent after a lost reply only in a client session,
    /// like [`Client::incr`].
    pub async fn incr_by_float(&self, key: impl AsRef<[u8]>, by: f64) -> Result<f64, Error> {
        let by = Bytes::from(by.to_string());
        let reply = self
            .call(Command::IncrByFloat {
                key: bytes(key),
                by,
            })
            .await?;
        let text = expect_value(reply)?.unwrap_or_default();
        std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("IncrByFloat answered {text:?}")))
    }

    /// Stores every pair as one write only if none of the keys exists;
    /// whether it stored (Redis's `MSETNX`).
    pub async fn bulk_set_if_absent<K, V>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<bool, Error>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let items = items
            .into_iter()
            .map(|(k, v)| (bytes(k), bytes(v)))
            .collect();
        expect_bool(self.call(Command::BulkSetIfAbsent { items }).await?)
    }

    /// Copies `from`'s value and deadline to `to` (with `replace`, over a
    /// value it has); whether it copied.
    pub async fn copy(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        replace: bool,
    ) -> Result<bool, Error> {
        let (from, to) = (bytes(from), bytes(to));
        expect_bool(self.call(Command::Copy { from, to, replace }).await?)
    }

    /// Moves `from`'s value and deadline to `to` in one write (with
    /// `replace`, over a value it has); whether it renamed. A missing
    /// `from` is an error with [`ErrorCode::NoSuchKey`].
    pub async fn rename(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        replace: bool,
    ) -> Result<bool, Error> {
        let (from, to) = (bytes(from), bytes(to));
        expect_bool(self.call(Command::Rename { from, to, replace }).await?)
    }

    /// Appends `value` to the value at `key` and returns the new length.
    /// Resent after a lost reply only in a client session, like
    /// [`Client::incr`].
    pub async fn append(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<u64, Error> {
        let n = expect_int(
            self.call(Command::Append {
                key: bytes(key),
                value: bytes(value),
            })
            .await?,
        )?;
        Ok(n.max(0) as u64)
    }

    /// Removes all of `keys` in one log record; returns how many existed.
    pub async fn delete_many<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        let keys = keys.into_iter().map(bytes).collect();
        let n = expect_int(self.call(Command::DeleteMany { keys }).await?)?;
        Ok(n.max(0) as u64)
    }

    /// Removes every key, durably, as one log record.
    pub async fn flush(&self) -> Result<(), Error> {
        expect_ok(self.call(Command::Flush).await?)
    }

    /// Sends one command with timeouts and retries, and turns an error reply
    /// into [`Error::Server`]: the general form of the methods above.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
    /// use kvstore_client::{Command, Reply};
    /// let reply = client.call(Command::Exists { key: "k".into() }).await?;
    /// assert!(matches!(reply, Reply::Bool(_)));
    /// # Ok(()) }
    /// ```
    pub async fn call(&self, command: Command) -> Result<Reply, Error> {
        let reads = self.inner.options.reads;
        match (&self.inner.reader, reads) {
            (Some(reader), _) if command.is_data_read() => {
                let after = match reads {
                    Reads::Session => self.session_index(),
                    _ => 0,
                };
                let reply = self.read(reader, after, command).await?;
                self.unwrap_indexed(reply)
            }
            _ if command.is_data_write() => self.write(command, reads).await,
            _ => self.call_once_more(command).await,
        }
    }

    /// A follower or session read of a node that has applied `after`, from
    /// the node `reader` chooses, within the retry budget.
    async fn read(&self, reader: &Replicas, after: u64, command: Command) -> Result<Reply, Error> {
        let options = &self.inner.options;
        let pauses = ExponentialBuilder::default()
            .with_min_delay(options.min_backoff)
            .with_max_delay(options.max_backoff.min(CLUSTER_MAX_PAUSE))
            .with_jitter()
            .without_max_times()
            .build();
        let command = indexed(after, true, command);
        let read = reader.read(command, after, options.max_attempts, pauses);
        tokio::time::timeout(options.max_call_time, read)
            .await
            .unwrap_or(Err(Error::Timeout {
                what: "call (all attempts)",
                after: options.max_call_time,
            }))
    }

    /// Each node's load as this client sees it, in address order: what
    /// follower and session reads choose by. Empty with linearizable reads.
    pub fn replica_loads(&self) -> Vec<ReplicaLoad> {
        self.inner
            .reader
            .as_ref()
            .map_or(Vec::new(), Replicas::report)
    }

    /// A write: in the client session when there is one (exactly once),
    /// else plain (with session reads, wrapped to learn its index).
    async fn write(&self, command: Command, reads: Reads) -> Result<Reply, Error> {
        if self.inner.options.exactly_once {
            if let Some(session) = self.write_session().await? {
                return self.write_once(session, command).await;
            }
        }
        if reads == Reads::Session {
            let reply = self.call_once_more(indexed(0, false, command)).await?;
            return self.unwrap_write(reply);
        }
        self.call_once_more(command).await
    }

    /// A write in `session`, resent as the retry policy allows: the cluster
    /// applies it at most once. If the session expired and no attempt may
    /// have been carried out (each earlier one was refused before anything
    /// was done: a redirect, say), once more in a new session.
    async fn write_once(
        &self,
        mut session: Arc<once::Session>,
        command: Command,
    ) -> Result<Reply, Error> {
        loop {
            let (seq, acked) = session.number().await;
            let once = Command::Once {
                session: session.id,
                seq,
                acked,
                command: Box::new(command.clone()),
            };
            let maybe_done = std::sync::atomic::AtomicBool::new(false);
            let result = self.call_counting(once, &maybe_done).await;
            session.done(seq);
            let expired = matches!(&result, Err(Error::Server { code, .. }) if *code == ErrorCode::SessionExpired as u32);
            if !expired {
                return self.unwrap_write(result?);
            }
            self.forget_session(&session).await;
            if maybe_done.load(Ordering::Relaxed) {
                return result;
            }
            match self.write_session().await? {
                Some(new) if !Arc::ptr_eq(&new, &session) => session = new,
                _ => return result,
            }
        }
    }

    /// The client session, opened if there is none; `None` if the server
    /// has no sessions (a server running alone, or an older one).
    async fn write_session(&self) -> Result<Option<Arc<once::Session>>, Error> {
        let mut slot = self.inner.writes.lock().await;
        match &*slot {
            once::Slot::Open(session) => return Ok(Some(session.clone())),
            once::Slot::Unsupported => return Ok(None),
            once::Slot::None => {}
        }
        match self.call_once_more(Command::OpenSession).await {
            Ok(Reply::Int(id)) => {
                let session = Arc::new(once::Session::new(id as u64));
                *slot = once::Slot::Open(session.clone());
                Ok(Some(session))
            }
            Ok(other) => Err(unexpected("Int", &other)),
            Err(Error::Server { code, .. })
                if code == ErrorCode::ClusterFailed as u32
                    || code == ErrorCode::Malformed as u32 =>
            {
                *slot = once::Slot::Unsupported;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Drops `session` if it is still the client's (it expired).
    async fn forget_session(&self, session: &Arc<once::Session>) {
        let mut slot = self.inner.writes.lock().await;
        if matches!(&*slot, once::Slot::Open(s) if Arc::ptr_eq(s, session)) {
            *slot = once::Slot::None;
        }
    }

    /// The highest log index this client has seen in a reply: a session
    /// read waits until its node has applied it. Hand it to another client
    /// ([`Client::observe_index`]) to carry the session over.
    pub fn session_index(&self) -> u64 {
        self.inner.session.load(Ordering::Relaxed)
    }

    /// Makes this client's session reads see at least log index `index`
    /// (from another client's [`Client::session_index`]).
    pub fn observe_index(&self, index: u64) {
        self.inner.session.fetch_max(index, Ordering::Relaxed);
    }

    /// The inner reply of an `Indexed` reply, its index noted.
    fn unwrap_indexed(&self, reply: Reply) -> Result<Reply, Error> {
        match reply {
            Reply::Indexed { index, reply } => {
                self.observe_index(index);
                Ok(*reply)
            }
            other => Err(unexpected("Indexed", &other)),
        }
    }

    /// [`Client::unwrap_indexed`] for a write's reply: the leader that
    /// answered has applied its index, which follower reads may use.
    fn unwrap_write(&self, reply: Reply) -> Result<Reply, Error> {
        if let (Some(reader), Reply::Indexed { index, .. }) = (&self.inner.reader, &reply) {
            reader.applied_at(&self.addr(), *index);
        }
        self.unwrap_indexed(reply)
    }

    /// [`Client::call`] without the choice of reads: the command as given,
    /// with timeouts and retries.
    pub(crate) async fn call_once_more(&self, command: Command) -> Result<Reply, Error> {
        self.call_counting(command, &std::sync::atomic::AtomicBool::new(false))
            .await
    }

    /// [`Client::call_once_more`], setting `maybe_done` once an attempt
    /// failed in a way that leaves it maybe carried out.
    async fn call_counting(
        &self,
        command: Command,
        maybe_done: &std::sync::atomic::AtomicBool,
    ) -> Result<Reply, Error> {
        let options = &self.inner.options;
        let policy = self.attempts();
        // An `Incr` or `Append` whose reply was lost may have been applied:
        // it is resent only after errors that prove it never arrived.
        let idempotent = command.is_idempotent();
        let several = self.inner.target.lock().map_or(1, |t| t.known.len()) > 1;
        // The addresses tried since the last pause.
        let tried = std::sync::Mutex::new(Vec::new());
        let attempts = (|| {
            let (addr, _, _) = self.destination(&command);
            if let Ok(mut tried) = tried.lock() {
                tried.push(addr);
            }
            self.call_once(command.clone())
        })
        .retry(policy)
        .when(|e| e.is_retryable() && (idempotent || e.never_arrived()))
        .notify(|e, _| {
            if !e.never_arrived() {
                maybe_done.store(true, Ordering::Relaxed);
            }
        })
        .adjust(|_, pause| {
            let mut tried = tried.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = !tried.contains(&self.destination(&command).0);
            let pause = pause_before_retry(several, fresh, pause);
            if pause != Some(Duration::ZERO) {
                tried.clear();
            }
            pause
        });
        let result = tokio::time::timeout(options.max_call_time, attempts)
            .await
            .unwrap_or(Err(Error::Timeout {
                what: "call (all attempts)",
                after: options.max_call_time,
            }));
        match result {
            // The last attempt never arrived, but an earlier one may have
            // been carried out: the call's outcome is unknown.
            Err(e) if e.never_arrived() && maybe_done.load(Ordering::Relaxed) => {
                Err(Error::Server {
                    code: ErrorCode::OutcomeUnknown as u32,
                    message: format!(
                        "an earlier attempt may have been carried out; the last failed: {e}"
                    ),
                })
            }
            result => result,
        }
    }

    /// One attempt: a connection within the connect timeout, then the
    /// request (queueing, writing, answer) within the request timeout; to
    /// the leader of the key's group where known, else to the target.
    async fn call_once(&self, command: Command) -> Result<Reply, Error> {
        self.learn_routes().await;
        let slot = command.first_key().map(slot_of);
        let (addr, epoch, group) = self.destination(&command);
        let result = self.exchange_with(&addr, command).await;
        if let Err(e) = &result {
            if let (Some(slot), true) = (slot, self.inner.options.by_key) {
                self.routes().failed(slot, group, e);
            }
            if group.is_none() {
                self.steer(e, epoch);
            }
        }
        result
    }

    /// `command` sent to `addr` and answered, within the timeouts.
    async fn exchange_with(&self, addr: &str, command: Command) -> Result<Reply, Error> {
        let mux = self.connect_within(self.connection(addr)).await?;
        exchange(&mux, command, self.inner.options.request_timeout).await
    }

    /// Where `command` goes: the leader of its key's group if the client
    /// knows it (with the group), else the target (with its epoch).
    fn destination(&self, command: &Command) -> (String, u64, Option<GroupId>) {
        let routed = (command.first_key())
            .filter(|_| self.inner.options.by_key)
            .and_then(|key| self.routes().leader_of(slot_of(key)));
        match routed {
            Some((group, leader)) => (leader, 0, Some(group)),
            None => {
                let (addr, epoch) = self.target();
                (addr, epoch, None)
            }
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.inner.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the target for the cluster's routes, if a redirect made them
    /// due and no other call is asking already. A failure leaves them as
    /// they were, to be asked again after a pause.
    async fn learn_routes(&self) {
        if !self.routes().due(Instant::now()) {
            return;
        }
        let Ok(_asking) = self.inner.asking.try_lock() else {
            return;
        };
        if !self.routes().due(Instant::now()) {
            return;
        }
        self.routes().asking(Instant::now());
        let (addr, _) = self.target();
        let status = Command::Cluster(ClusterRequest::Status);
        if let Ok(Reply::Cluster(status)) = self.exchange_with(&addr, status).await {
            self.routes().learn(&status);
        }
    }

    /// `connect` (opening or reusing a connection), within the connect timeout.
    async fn connect_within(
        &self,
        connect: impl std::future::Future<Output = Result<Mux, Error>>,
    ) -> Result<Mux, Error> {
        let limit = self.inner.options.connect_timeout;
        tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| Error::Timeout {
                what: "connect",
                after: limit,
            })?
    }

    /// The next connection to `addr` in turn, opened if needed.
    async fn connection(&self, addr: &str) -> Result<Mux, Error> {
        self.inner.pools.get(addr, || self.open(addr)).await
    }

    /// A new connection to `addr`, logged in if the client has a token.
    async fn open(&self, addr: &str) -> Result<Mux, Error> {
        let inner = &self.inner;
        let tls = match &inner.tls {
            Some(tls) => Some(Tls {
                connector: tls.connector.clone(),
                server_name: server_name(addr)?,
            }),
            None => None,
        };
        let mux = Mux::connect(
            addr,
            inner.options.connect_timeout,
            inner.options.max_frame,
            tls.as_ref(),
        )
        .await?;
        if let Some(token) = &inner.options.auth_token {
            authenticate(&mux, token.clone()).await?;
        }
        Ok(mux)
    }

    /// Streams a point-in-time copy of the whole store, made while writes
    /// go on, on a connection of its own (a streamed backup belongs to the
    /// connection that started it). Read it with
    /// [`BackupStream::next_chunk`]; [`Client::backup`] writes it out for you.
    /// Not retried: if anything fails, start again.
    pub async fn backup_stream(&self) -> Result<BackupStream, Error> {
        let mux = self.connect_within(self.open(&self.target().0)).await?;
        Ok(BackupStream::new(mux, self.inner.options.request_timeout))
    }

    /// Writes a point-in-time backup of the whole store into `out` (the
    /// snapshot format: `kvstore-server --restore FILE` starts from it), and
    /// returns what it holds. The backup is one instant's state: each key
    /// has the value it had when the server finished copying.
    ///
    /// `out` is any `AsyncWrite`: a `tokio::fs::File`, a socket, a `Vec<u8>`.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut copy = Vec::new();
    /// let summary = client.backup(&mut copy).await?;
    /// assert_eq!(copy.len() as u64, summary.bytes);
    /// # Ok(()) }
    /// ```
    pub async fn backup<W: AsyncWrite + Unpin>(&self, out: &mut W) -> Result<BackupSummary, Error> {
        let mut stream = self.backup_stream().await?;
        while let Some(chunk) = stream.next_chunk().await? {
            out.write_all(&chunk).await.map_err(Error::Output)?;
        }
        out.flush().await.map_err(Error::Output)?;
        stream.summary()
    }

    /// Watches the keys that start with `prefix`: every change from
    /// `from_revision` on (0: from now), in log order, on a connection of
    /// its own (docs/watch.md). [`WatchStream::next`] goes on after a lost
    /// connection or a restart by watching again from where it was.
    ///
    /// ```no_run
    /// # async fn demo(client: kvstore_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut watch = client.watch("config/", 0).await?;
    /// for event in watch.next().await? {
    ///     println!("{} {:?} at {}", String::from_utf8_lossy(&event.key), event.kind, event.revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(
        &self,
        prefix: impl AsRef<[u8]>,
        from_revision: u64,
    ) -> Result<WatchStream, Error> {
        WatchStream::start(self.clone(), bytes(prefix), from_revision).await
    }

    /// A new connection of its own to the current target.
    pub(crate) async fn open_own(&self) -> Result<Mux, Error> {
        self.connect_within(self.open(&self.target().0)).await
    }

    /// Moves to the next node after `error`, as a failed call does.
    pub(crate) fn steer_after(&self, error: &Error) {
        self.steer(error, self.target().1);
    }

    /// The pauses between attempts in a row at something, as the client's
    /// backoff and `max_attempts` say.
    pub(crate) fn pauses(&self) -> impl Iterator<Item = Duration> {
        self.attempts().build()
    }

    /// The backoff between a call's attempts, or a watch's: `max_attempts`
    /// in all, pausing from `min_backoff` to `max_backoff` with jitter.
    fn attempts(&self) -> ExponentialBuilder {
        let options = &self.inner.options;
        ExponentialBuilder::default()
            .with_min_delay(options.min_backoff)
            .with_max_delay(options.max_backoff)
            .with_max_times(options.max_attempts.saturating_sub(1))
            .with_jitter()
    }

    /// Has the server write a backup into its `--backup-dir` under `name`
    /// (letters, digits, `.`, `_`, `-`; an existing name is refused), and
    /// returns what it holds once the file is durable. On a connection of
    /// its own, waiting up to [`SERVER_BACKUP_TIMEOUT`] (or the request
    /// timeout, if longer), never resent: if the wait ends first, the server
    /// still finishes the file.
    pub async fn backup_on_server(&self, name: impl Into<String>) -> Result<BackupSummary, Error> {
        let mux = self.connect_within(self.open(&self.target().0)).await?;
        let wait = self
            .inner
            .options
            .request_timeout
            .max(SERVER_BACKUP_TIMEOUT);
        let name = Some(name.into());
        let reply = exchange(&mux, Command::Backup { name }, wait).await;
        mux.close();
        match reply? {
            Reply::BackupDone { keys, ops, bytes } => Ok(BackupSummary { keys, ops, bytes }),
            other => Err(unexpected("BackupDone", &other)),
        }
    }

    /// A client like this one that waits up to [`SERVER_BACKUP_TIMEOUT`] for
    /// each answer, for commands that take long on the server.
    fn patient(&self) -> Result<Client, Error> {
        let options = &self.inner.options;
        ClientBuilder {
            request_timeout: options.request_timeout.max(SERVER_BACKUP_TIMEOUT),
            max_call_time: options.max_call_time.max(SERVER_BACKUP_TIMEOUT),
            reads: Reads::Linearizable,
            ..options.clone()
        }
        .build()
    }

    /// Has the server load the backup `name` from its `--backup-dir` into
    /// its store, which must be empty, through its log (in cluster mode,
    /// through Raft, on the leader, which must have the file). Waits up to
    /// [`SERVER_BACKUP_TIMEOUT`]; resent only if it cannot have started
    /// (`NotLeader`: to the leader). The summary counts what was restored.
    pub async fn restore_on_server(&self, name: impl Into<String>) -> Result<BackupSummary, Error> {
        let command = Command::Restore { name: name.into() };
        match self.patient()?.call_once_more(command).await? {
            Reply::BackupDone { keys, ops, bytes } => Ok(BackupSummary { keys, ops, bytes }),
            other => Err(unexpected("BackupDone", &other)),
        }
    }
}

/// One request and its reply on `mux`, within `timeout`; an error reply
/// becomes [`Error::Server`].
pub(crate) async fn exchange(
    mux: &Mux,
    command: Command,
    timeout: Duration,
) -> Result<Reply, Error> {
    let exchange = async {
        let reply = mux.send(command).await?;
        reply
            .await
            .unwrap_or_else(|_| Err(Error::ConnectionLost("the connection closed".into())))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            // The server stopped answering: drop the connection so the
            // retry starts afresh instead of queueing behind it.
            mux.close();
            Err(Error::Timeout {
                what: "request",
                after: timeout,
            })
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(Reply::Error { code, message })) => Err(Error::Server { code, message }),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// The TLS connector for `addr` (`host:port`), trusting the CA in `ca`.
fn tls_setup(addr: &str, ca: Option<&Path>) -> Result<Tls, Error> {
    let ca = ca.ok_or_else(|| {
        Error::Tls("TLS needs the server's certificate authority (tls_ca_file)".into())
    })?;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("cannot read {}: {e}", ca.display())))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("bad certificate in {}: {e}", ca.display())))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name: server_name(addr)?,
    })
}

/// The name a server at `addr` must have in its certificate: its host.
fn server_name(addr: &str) -> Result<ServerName<'static>, Error> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("{host} is not a valid server name: {e}")))
}

/// Where a client of several servers talks now.
struct Target {
    /// The current server.
    addr: String,
    /// Moves each time `addr` changes: an attempt made before does not
    /// move it again.
    epoch: u64,
    /// Every address given or learned from a `NotLeader` answer, in order.
    known: Vec<String>,
}

impl Target {
    /// The known address after the current one (wrapping), if there are
    /// others.
    fn after_current(&self) -> Option<String> {
        let at = self.known.iter().position(|a| *a == self.addr)?;
        Some(self.known[(at + 1) % self.known.len()].clone())
    }
}

/// With several addresses, attempts per call unless set: enough pauses
/// (50 ms doubling to [`CLUSTER_MAX_PAUSE`]) to outlast an election of a
/// few seconds.
const CLUSTER_MIN_ATTEMPTS: usize = 60;

/// With several addresses, the longest pause between attempts: a new
/// leader is found within a pause of being elected (a pause of up to 1 s
/// cost the CLI up to 2 s after the election in benches/failover.sh).
const CLUSTER_MAX_PAUSE: Duration = Duration::from_millis(200);

/// The pause before the next attempt, given the backoff's `pause`. With
/// several addresses: none when the failed attempt moved the client to an
/// address not tried since the last pause (a dead node or a `NotLeader`
/// naming the leader must not cost a pause while other addresses remain),
/// and at most [`CLUSTER_MAX_PAUSE`] otherwise.
fn pause_before_retry(several: bool, fresh: bool, pause: Option<Duration>) -> Option<Duration> {
    match (several, pause) {
        (true, Some(_)) if fresh => Some(Duration::ZERO),
        (true, Some(pause)) => Some(pause.min(CLUSTER_MAX_PAUSE)),
        (_, pause) => pause,
    }
}

/// Sends `Auth` as the first request of a new connection.
async fn authenticate(mux: &Mux, token: Bytes) -> Result<(), Error> {
    let reply = mux.send(Command::Auth { token }).await?;
    let outcome = match reply.await {
        Ok(Ok(Reply::Ok)) => return Ok(()),
        Ok(Ok(Reply::Error { code, message })) => Error::Server { code, message },
        Ok(Ok(other)) => unexpected("Ok", &other),
        Ok(Err(e)) => e,
        Err(_) => Error::ConnectionLost("the connection closed during Auth".into()),
    };
    mux.close();
    Err(outcome)
}

fn bytes(b: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(b.as_ref())
}

fn expect_ok(reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(unexpected("Ok", &other)),
    }
}

fn expect_bool(reply: Reply) -> Result<bool, Error> {
    match reply {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected("Bool", &other)),
    }
}

fn expect_value(reply: Reply) -> Result<Option<Bytes>, Error> {
    match reply {
        Reply::Value(v) => Ok(v),
        other => Err(unexpected("Value", &other)),
    }
}

fn expect_int(reply: Reply) -> Result<i64, Error> {
    match reply {
        Reply::Int(n) => Ok(n),
        other => Err(unexpected("Int", &other)),
    }
}

/// `command` wrapped in `Indexed`, so that its reply carries a log index.
fn indexed(after: u64, any_node: bool, command: Command) -> Command {
    Command::Indexed {
        after,
        any_node,
        command: Box::new(command),
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Reply) -> Error {
    Error::Protocol(format!("expected a {wanted} reply, got {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_cluster_client_moves_on_at_once_and_pauses_briefly() {
        // Moved to an address not tried since the last pause: no pause.
        assert_eq!(
            pause_before_retry(true, true, Some(MS * 800)),
            Some(Duration::ZERO)
        );
        // Every address tried: the backoff's pause, capped.
        assert_eq!(
            pause_before_retry(true, false, Some(MS * 50)),
            Some(MS * 50)
        );
        assert_eq!(
            pause_before_retry(true, false, Some(MS * 800)),
            Some(CLUSTER_MAX_PAUSE)
        );
        // The budget is spent: no more attempts, whatever else holds.
        assert_eq!(pause_before_retry(true, true, None), None);
    }

    #[test]
    fn a_single_server_client_keeps_the_full_backoff() {
        for fresh in [false, true] {
            assert_eq!(
                pause_before_retry(false, fresh, Some(MS * 800)),
                Some(MS * 800)
            );
        }
    }
}
