//! The `kvstore.v1.KeyValue` methods: each call becomes the native
//! [`Command`] with the same meaning and runs through `crate::cmd`, so the
//! limits, the log, the durability of an answered write and the errors are
//! those of the native door. Streaming methods (`Scan`, `Range`, `Backup`)
//! produce one message per native page or chunk, read when tonic is ready to
//! send it, so a slow reader holds back the reading of the store instead of
//! a queue growing in memory. `Watch` sends the native watch's replies
//! (`super::watch`); a reader too slow for the writes is ended by the feed.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use kvstore_client::protocol::DEFAULT_KEYS_PAGE;
use kvstore_client::{Command, Condition, ErrorCode, Expiry, Reply};
use kvstore_proto::v1::backup_response::Item;
use kvstore_proto::v1::key_value_server::KeyValue;
use kvstore_proto::v1::*;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::cmd::{self, backup, Started};
use crate::db::Db;
use crate::figures;
use crate::storage::clock::system_ms;

/// The methods, by their counters' slots.
#[derive(Debug, Clone, Copy)]
enum Method {
    Put,
    Get,
    Delete,
    BulkPut,
    Exists,
    ListKeys,
    Scan,
    Range,
    Stat,
    Backup,
    Expire,
    Persist,
    Ttl,
    Txn,
    Watch,
}

/// The methods' names, in the order of [`Method`] (the `command` label of
/// `commands_total{door="grpc"}`).
pub const METHODS: [&str; 15] = [
    "Put", "Get", "Delete", "BulkPut", "Exists", "ListKeys", "Scan", "Range", "Stat", "Backup",
    "Expire", "Persist", "Ttl", "Txn", "Watch",
];

/// The trailer that carries the native error code of a failed call.
pub const ERROR_CODE_METADATA: &str = "kvstore-error-code";

/// Request metadata, cluster mode: `follower` serves the call's reads from
/// this node's applied state (maybe stale) instead of the leader's.
pub const READ_METADATA: &str = "kvstore-read";

/// Request metadata, cluster mode: a follower read waits until this node
/// has applied this log index (a session token from `INDEX_METADATA`).
pub const AFTER_INDEX_METADATA: &str = "kvstore-after-index";

/// Response metadata of a unary call in cluster mode: the log index its
/// answer reflects, to send back as `AFTER_INDEX_METADATA`.
pub const INDEX_METADATA: &str = "kvstore-index";

/// How a call's reads are served, from its metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reads {
    follower: bool,
    after: u64,
}

impl Reads {
    fn of(metadata: &MetadataMap) -> Result<Reads, Status> {
        let text = |name| {
            (metadata.get(name))
                .map(|v| v.to_str().map_err(|_| bad_metadata(name)))
                .transpose()
        };
        let follower = match text(READ_METADATA)? {
            None | Some("leader") => false,
            Some("follower") => true,
            Some(_) => return Err(bad_metadata(READ_METADATA)),
        };
        let after = match text(AFTER_INDEX_METADATA)? {
            None => 0,
            Some(n) => n.parse().map_err(|_| bad_metadata(AFTER_INDEX_METADATA))?,
        };
        Ok(Reads { follower, after })
    }

    /// Waits until this node may serve the read `command`: the leader's
    /// barrier, or for a follower read the session's index; a sharded
    /// cluster's scan waits for none here (its groups' leaders do).
    async fn ready(&self, db: &Db, command: &Command) -> Result<(), crate::error::Error> {
        let key = cmd::read_key(command);
        match db.cluster() {
            _ if cmd::scans_every_group(command, db) => Ok(()),
            Some(cluster) if self.follower => {
                cluster
                    .wait_applied(self.after, cmd::indexed::MAX_WAIT)
                    .await
            }
            _ => cmd::read_barrier(db, key).await,
        }
    }
}

fn bad_metadata(name: &str) -> Status {
    Status::invalid_argument(format!(
        "metadata {name}: {READ_METADATA} takes leader or follower, {AFTER_INDEX_METADATA} a log index"
    ))
}

/// A unary answer, with the log index it reflects in cluster mode.
fn respond<T>(body: T, index: Option<u64>) -> Response<T> {
    let mut response = Response::new(body);
    if let Some(index) = index {
        (response.metadata_mut()).insert(INDEX_METADATA, MetadataValue::from(index));
    }
    response
}

/// The gRPC status for a native error: its class as a gRPC code, and the
/// native code in the message (`KeyTooLarge (3): ...`) and in the
/// [`ERROR_CODE_METADATA`] trailer.
pub fn status(code: ErrorCode, message: impl std::fmt::Display) -> Status {
    use ErrorCode::*;
    let class = match code {
        Malformed | FrameTooLarge | KeyTooLarge | ValueTooLarge | TooManyItems | NotAnInteger
        | CrossSlot | NotAFloat => Code::InvalidArgument,
        NoSuchKey => Code::NotFound,
        // Compacted: a watch's revision is older than the history (etcd
        // answers a compacted revision so too).
        Overflow | Compacted => Code::OutOfRange,
        // The log failed (the server refuses writes until restarted; another
        // node, or this one after a restart, can serve) or the server is
        // going away: the call did not happen, or for a write it may have
        // been logged without being acknowledged.
        StorageFailed | ShuttingDown => Code::Unavailable,
        TooManyConnections | TooManySessions | SlowWatcher => Code::ResourceExhausted,
        Unauthenticated | AuthFailed => Code::Unauthenticated,
        BackupFailed | ClusterFailed | SessionExpired => Code::FailedPrecondition,
        // Cluster mode: this node cannot serve it, another can (or this
        // one shortly); nothing was done.
        NotLeader | Lagging | Moved | TryAgain => Code::Unavailable,
        // Cluster mode: a write whose outcome is not known.
        OutcomeUnknown => Code::Unknown,
        // A code added to the protocol after this mapping was written.
        _ => Code::Unknown,
    };
    let number = code as u32;
    let mut metadata = MetadataMap::new();
    metadata.insert(ERROR_CODE_METADATA, MetadataValue::from(number));
    Status::with_metadata(class, format!("{code:?} ({number}): {message}"), metadata)
}

/// A reply of an unexpected shape: a bug, not the client's fault.
pub(super) fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("unexpected reply from the store: {reply:?}"))
}

/// The service, cloned per call.
#[derive(Clone)]
pub struct KeyValueService {
    /// The store and log every door shares.
    db: Db,
    /// Cancelled at shutdown: streaming calls end at their next message.
    shutdown: CancellationToken,
}

impl KeyValueService {
    pub fn new(db: Db, shutdown: CancellationToken) -> KeyValueService {
        KeyValueService { db, shutdown }
    }

    /// Counts a call of `method`.
    fn count(&self, method: Method) {
        self.db.stats.grpc_call(method as usize);
    }

    /// Runs a command to its reply (a write's once it is durable and
    /// applied), a read as `metadata` asks; with the log index the reply
    /// reflects, in cluster mode.
    async fn run(
        &self,
        method: Method,
        metadata: &MetadataMap,
        command: Command,
    ) -> Result<(Reply, Option<u64>), Status> {
        self.count(method);
        let db = &self.db;
        let reply = if command.is_data_read() {
            match Reads::of(metadata)?.ready(db, &command).await {
                Ok(()) => cmd::read_anywhere(command, db).await,
                Err(e) => cmd::error_reply(&e),
            }
        } else {
            match cmd::start(command, db).await {
                Started::Done(reply) => reply,
                Started::Pending(mut pending) => cmd::reply_for(pending.wait().await),
            }
        };
        db.stats.reply(&reply);
        let index = db.cluster().map(|cluster| cluster.reply_index());
        Ok((into_result(reply)?, index))
    }
}

/// Put's native command: a Set, or with `ttl_ms` a SetExpiring.
pub fn put_command(put: PutRequest) -> Command {
    let PutRequest { key, value, ttl_ms } = put;
    match ttl_ms {
        0 => Command::Set { key, value },
        ms => Command::SetExpiring {
            key,
            value,
            condition: Condition::Always,
            get: false,
            expiry: Expiry::In(ms),
        },
    }
}

/// The native form of Expire's condition.
fn expire_when(when: ExpireWhen) -> kvstore_client::ExpireWhen {
    use kvstore_client::ExpireWhen as Native;
    match when {
        ExpireWhen::Always => Native::Always,
        ExpireWhen::NoDeadline => Native::NoDeadline,
        ExpireWhen::HasDeadline => Native::HasDeadline,
        ExpireWhen::Later => Native::Later,
        ExpireWhen::Earlier => Native::Earlier,
        ExpireWhen::EarlierDeadline => Native::EarlierDeadline,
    }
}

/// A native error reply as a status; any other reply as it is.
pub(super) fn into_result(reply: Reply) -> Result<Reply, Status> {
    match reply {
        Reply::Error { code, message } => Err(match ErrorCode::from_code(code) {
            Some(code) => status(code, message),
            None => Status::unknown(format!("error {code}: {message}")),
        }),
        reply => Ok(reply),
    }
}

#[tonic::async_trait]
impl KeyValue for KeyValueService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (metadata, _, put) = request.into_parts();
        match self.run(Method::Put, &metadata, put_command(put)).await? {
            (Reply::Ok | Reply::Bool(true), index) => Ok(respond(PutResponse {}, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn expire(
        &self,
        request: Request<ExpireRequest>,
    ) -> Result<Response<ExpireResponse>, Status> {
        let (
            metadata,
            _,
            ExpireRequest {
                key,
                deadline,
                when,
            },
        ) = request.into_parts();
        let expiry = match deadline {
            Some(expire_request::Deadline::TtlMs(ms)) => Expiry::In(ms),
            Some(expire_request::Deadline::AtMs(at)) => Expiry::At(at),
            None => return Err(Status::invalid_argument("Expire needs ttl_ms or at_ms")),
        };
        let when = match ExpireWhen::try_from(when) {
            Ok(when) => expire_when(when),
            Err(_) => return Err(Status::invalid_argument(format!("no ExpireWhen {when}"))),
        };
        let command = Command::Expire { key, expiry, when };
        match self.run(Method::Expire, &metadata, command).await? {
            (Reply::Bool(changed), index) => Ok(respond(ExpireResponse { changed }, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn persist(
        &self,
        request: Request<PersistRequest>,
    ) -> Result<Response<PersistResponse>, Status> {
        let (metadata, _, PersistRequest { key }) = request.into_parts();
        match self
            .run(Method::Persist, &metadata, Command::Persist { key })
            .await?
        {
            (Reply::Bool(persisted), index) => Ok(respond(PersistResponse { persisted }, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn ttl(&self, request: Request<TtlRequest>) -> Result<Response<TtlResponse>, Status> {
        let (metadata, _, TtlRequest { key }) = request.into_parts();
        let command = Command::Ttl {
            key,
            absolute: true,
        };
        let (at, index) = match self.run(Method::Ttl, &metadata, command).await? {
            (Reply::Int(at), index) => (at, index),
            (other, _) => return Err(unexpected(&other)),
        };
        let at_ms = u64::try_from(at).ok();
        let answer = TtlResponse {
            found: at != -2,
            at_ms,
            ttl_ms: at_ms.map(|at| at.saturating_sub(system_ms())),
        };
        Ok(respond(answer, index))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (metadata, _, GetRequest { key, with_version }) = request.into_parts();
        let command = match with_version {
            true => Command::GetWithVersion { key },
            false => Command::Get { key },
        };
        let (value, (mod_revision, create_revision), index) =
            match self.run(Method::Get, &metadata, command).await? {
                (Reply::Value(value), index) => (value, (0, 0), index),
                (
                    Reply::Versioned {
                        value,
                        modified,
                        created,
                    },
                    index,
                ) => (value, (modified, created), index),
                (other, _) => return Err(unexpected(&other)),
            };
        let answer = GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            mod_revision,
            create_revision,
        };
        Ok(respond(answer, index))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let (command, [success, failure]) = super::txn::native(body)?;
        match self.run(Method::Txn, &metadata, command).await? {
            (Reply::Txn { succeeded, replies }, index) => {
                let kinds = if succeeded { &success } else { &failure };
                let answer = super::txn::response(succeeded, replies, kinds);
                Ok(respond(answer, index))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (metadata, _, DeleteRequest { key }) = request.into_parts();
        match self
            .run(Method::Delete, &metadata, Command::Delete { key })
            .await?
        {
            (Reply::Bool(deleted), index) => Ok(respond(DeleteResponse { deleted }, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn bulk_put(
        &self,
        request: Request<BulkPutRequest>,
    ) -> Result<Response<BulkPutResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let items = body.pairs.into_iter().map(|p| (p.key, p.value)).collect();
        let command = Command::BulkSet { items };
        match self.run(Method::BulkPut, &metadata, command).await? {
            (Reply::Ok, index) => Ok(respond(BulkPutResponse {}, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn exists(
        &self,
        request: Request<ExistsRequest>,
    ) -> Result<Response<ExistsResponse>, Status> {
        let (metadata, _, ExistsRequest { key }) = request.into_parts();
        match self
            .run(Method::Exists, &metadata, Command::Exists { key })
            .await?
        {
            (Reply::Bool(exists), index) => Ok(respond(ExistsResponse { exists }, index)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let (metadata, _, body) = request.into_parts();
        let ListKeysRequest {
            prefix,
            start_after,
            limit,
        } = body;
        let command = Command::Keys {
            prefix,
            start_after,
            limit,
        };
        match self.run(Method::ListKeys, &metadata, command).await? {
            (Reply::Keys { keys, more }, index) => {
                Ok(respond(ListKeysResponse { keys, more }, index))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    type ScanStream = BoxStream<'static, Result<ScanResponse, Status>>;

    async fn scan(
        &self,
        request: Request<ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let reads = Reads::of(request.metadata())?;
        let ScanRequest {
            prefix,
            start_after,
            limit,
            reverse,
        } = request.into_inner();
        self.count(Method::Scan);
        let walk = Walk::Prefix {
            prefix,
            start_after,
            reverse,
        };
        Ok(Response::new(self.pages(walk, limit, reads)))
    }

    type RangeStream = BoxStream<'static, Result<ScanResponse, Status>>;

    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStream>, Status> {
        let reads = Reads::of(request.metadata())?;
        let RangeRequest {
            start,
            end,
            limit,
            reverse,
        } = request.into_inner();
        self.count(Method::Range);
        let walk = Walk::Range {
            start,
            end,
            reverse,
        };
        Ok(Response::new(self.pages(walk, limit, reads)))
    }

    async fn stat(&self, _request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        self.count(Method::Stat);
        let figures = figures::collect(&self.db)
            .into_iter()
            .map(|f| Figure {
                name: f.name.to_string(),
                labels: f
                    .labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                value: f.value,
            })
            .collect();
        Ok(Response::new(StatResponse { figures }))
    }

    type BackupStream = BoxStream<'static, Result<BackupResponse, Status>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let BackupRequest { name } = request.into_inner();
        self.count(Method::Backup);
        let (db, shutdown) = (self.db.clone(), self.shutdown.clone());
        let mut session: backup::Session = None;
        // Starts the copy (its point in time) now; with a name, writes the
        // whole file before answering.
        let first = backup::start(name, &db, &mut session).await;
        db.stats.reply(&first);
        let first = into_result(first)?;
        let state = Some((Some(first), session, db, shutdown));
        let chunks = stream::unfold(state, |state| async move {
            let (first, mut session, db, shutdown) = state?;
            let reply = first.unwrap_or_else(|| {
                if shutdown.is_cancelled() {
                    // Dropping the session ends the backup (counted as
                    // failed).
                    session = None;
                    return Reply::error(ErrorCode::ShuttingDown, "the server is shutting down");
                }
                let reply = backup::next(&mut session, &db);
                db.stats.reply(&reply);
                reply
            });
            let (item, more) = match into_result(reply) {
                Ok(Reply::Chunk(chunk)) => (Ok(Item::Chunk(chunk)), true),
                Ok(Reply::BackupDone { keys, ops, bytes }) => {
                    (Ok(Item::Done(BackupSummary { keys, ops, bytes })), false)
                }
                Ok(other) => (Err(unexpected(&other)), false),
                Err(status) => (Err(status), false),
            };
            let item = item.map(|item| BackupResponse { item: Some(item) });
            Some((item, more.then_some((None, session, db, shutdown))))
        });
        Ok(Response::new(chunks.boxed()))
    }

    type WatchStream = super::watch::Messages;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.count(Method::Watch);
        let shutdown = self.shutdown.clone();
        let messages = super::watch::start(request.into_inner(), &self.db, shutdown)?;
        Ok(Response::new(messages))
    }
}

/// Which pairs a streaming scan walks, and where its next page starts: the
/// fields of the native `Scan` and `Range` commands, moved past each page.
#[derive(Debug, Clone, PartialEq)]
enum Walk {
    Prefix {
        prefix: Bytes,
        /// The last key sent (or the caller's `start_after`).
        start_after: Option<Bytes>,
        reverse: bool,
    },
    Range {
        /// Ascending: the least key not yet sent.
        start: Bytes,
        /// Descending: the last key sent (exclusive), or the caller's end.
        end: Option<Bytes>,
        reverse: bool,
    },
}

impl Walk {
    /// The native command for the next page of at most `limit` pairs.
    fn command(&self, limit: u32) -> Command {
        match self {
            Walk::Prefix {
                prefix,
                start_after,
                reverse,
            } => Command::Scan {
                prefix: prefix.clone(),
                start_after: start_after.clone(),
                limit,
                reverse: *reverse,
            },
            Walk::Range {
                start,
                end,
                reverse,
            } => Command::Range {
                start: start.clone(),
                end: end.clone(),
                limit,
                reverse: *reverse,
            },
        }
    }

    /// Moves past `last`, the last key of a page (as the native client does).
    fn past(&mut self, last: &Bytes) {
        match self {
            Walk::Prefix { start_after, .. } => *start_after = Some(last.clone()),
            Walk::Range {
                start,
                reverse: false,
                ..
            } => {
                // The least key above `last`.
                let mut next = Vec::with_capacity(last.len() + 1);
                next.extend_from_slice(last);
                next.push(0);
                *start = Bytes::from(next);
            }
            Walk::Range {
                end, reverse: true, ..
            } => *end = Some(last.clone()),
        }
    }
}

impl KeyValueService {
    /// The pages of a walk as a stream, each read when the previous one has
    /// been taken; `limit` pairs in all (0: no limit).
    fn pages(
        &self,
        walk: Walk,
        limit: u64,
        reads: Reads,
    ) -> BoxStream<'static, Result<ScanResponse, Status>> {
        let (db, shutdown) = (self.db.clone(), self.shutdown.clone());
        let remaining = (limit > 0).then_some(limit);
        stream::unfold(Some((walk, remaining)), move |state| {
            let (db, shutdown) = (db.clone(), shutdown.clone());
            async move {
                let (walk, remaining) = state?;
                if shutdown.is_cancelled() {
                    let status = status(ErrorCode::ShuttingDown, "the server is shutting down");
                    return Some((Err(status), None));
                }
                // Cluster mode: each page is a linearizable read, or a
                // follower read of this node's state.
                let command = walk.command(page_size(remaining)?);
                if let Err(e) = reads.ready(&db, &command).await {
                    return Some((Err(status(cmd::error_code(&e), e)), None));
                }
                next_page(&db, walk, command, remaining).await
            }
        })
        .boxed()
    }
}

/// A page of a walk, and the walk past it if more may follow.
type Page = (Result<ScanResponse, Status>, Option<(Walk, Option<u64>)>);

/// The size of the next page of a walk with `remaining` pairs to go;
/// `None` when there are none.
fn page_size(remaining: Option<u64>) -> Option<u32> {
    let page = remaining.map_or(DEFAULT_KEYS_PAGE as u64, |r| {
        r.min(DEFAULT_KEYS_PAGE as u64)
    });
    (page > 0).then_some(page as u32)
}

/// The next page of `walk`, read by `command` (at most `remaining`
/// pairs), as the stream's next item; `None` when the walk is over.
async fn next_page(
    db: &Db,
    mut walk: Walk,
    command: Command,
    remaining: Option<u64>,
) -> Option<Page> {
    let reply = cmd::read_anywhere(command, db).await;
    db.stats.reply(&reply);
    match into_result(reply) {
        Ok(Reply::Pairs { pairs, more }) => {
            let remaining = remaining.map(|r| r - pairs.len() as u64);
            let next = match pairs.last() {
                Some((last, _)) if more => {
                    walk.past(last);
                    Some((walk, remaining))
                }
                _ => None,
            };
            if pairs.is_empty() {
                return None;
            }
            let pairs = pairs
                .into_iter()
                .map(|(key, value)| KeyValuePair { key, value })
                .collect();
            Some((Ok(ScanResponse { pairs }), next))
        }
        Ok(other) => Some((Err(unexpected(&other)), None)),
        Err(status) => Some((Err(status), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_moves_past_the_last_key_in_its_direction() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut prefix = Walk::Prefix {
            prefix: b("u"),
            start_after: None,
            reverse: true,
        };
        prefix.past(&b("u5"));
        assert!(matches!(prefix, Walk::Prefix { start_after: Some(ref a), .. } if a == "u5"));

        let mut up = Walk::Range {
            start: b("a"),
            end: Some(b("m")),
            reverse: false,
        };
        up.past(&b("c"));
        // The least key above "c" is "c\0": nothing between is skipped.
        assert_eq!(
            up,
            Walk::Range {
                start: Bytes::from_static(b"c\0"),
                end: Some(b("m")),
                reverse: false
            }
        );

        let mut down = Walk::Range {
            start: b("a"),
            end: Some(b("m")),
            reverse: true,
        };
        down.past(&b("k"));
        assert_eq!(
            down,
            Walk::Range {
                start: b("a"),
                end: Some(b("k")),
                reverse: true
            }
        );
    }
}
