//! The messages: [`Request`], [`Response`], [`Command`], [`Reply`], [`ErrorCode`],
//! and the default limits both sides agree on.
//!
//! Compatibility rule: enum variants are only ever appended. A variant's position
//! is its tag on the wire (a little-endian `u32`), so reordering one breaks every
//! client in the field.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire_bytes;

/// Largest frame body either side accepts by default (16 MiB). The server's
/// `--max-frame` changes it; a body larger than the limit is refused before it
/// is buffered.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest key by default (64 KiB): keys are held in memory twice during a
/// `Keys` page and copied into every snapshot, so they are kept small.
pub const DEFAULT_MAX_KEY: usize = 64 * 1024;
/// Largest value by default (15 MiB): it must fit, with its key and the reply's
/// framing, inside one default frame.
pub const DEFAULT_MAX_VALUE: usize = 15 * 1024 * 1024;

/// The most writes of a client session a cluster keeps outcomes for at
/// once: those from the oldest the client has not had answered to the
/// newest. A write past them is refused; the client library waits instead.
pub const MAX_SESSION_PENDING: usize = 1024;
/// Most items in one `BulkSet` by default: one log record and one lock pass each.
pub const DEFAULT_MAX_BULK_ITEMS: usize = 100_000;
/// The page size `Keys` uses when the request says `limit: 0`.
pub const DEFAULT_KEYS_PAGE: u32 = 1_000;
/// The most keys one `Keys` page ever holds, whatever the request asks for.
pub const MAX_KEYS_PAGE: u32 = 10_000;

/// One request: the client's id for it (echoed in the [`Response`]) and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; the server never interprets it, only echoes it.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// One response: the id of the request it answers and the reply.
///
/// Responses on a connection come back in the order of the requests, so a
/// client may pipeline and match by order or by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request this answers (0 for an error about a frame whose
    /// id could not be read, or about the connection itself).
    pub id: u64,
    /// The outcome.
    pub reply: Reply,
}

/// What a client asks. Keys and values are arbitrary bytes.
///
/// Every command but `Incr` and `Append` is idempotent: sending it twice leaves
/// the same state (see [`Command::is_idempotent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Tag 0. Store `value` under `key`, replacing any previous value. Reply: `Ok`.
    Set {
        /// The key, any bytes.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The value, any bytes.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
    },
    /// Tag 1. Read one key. Reply: `Value(Some(..))` or `Value(None)`.
    Get {
        /// The key to read.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 2. Remove one key. Reply: `Bool(true)` if it existed.
    Delete {
        /// The key to remove.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 3. Store every pair atomically: after a crash either all of them are
    /// there or none. A key that appears twice takes its last value. Reply: `Ok`.
    BulkSet {
        /// `(key, value)` pairs, applied in order.
        #[serde(deserialize_with = "wire_bytes::pairs")]
        items: Vec<(Bytes, Bytes)>,
    },
    /// Tag 4. Reply: `Bool(true)` if the key exists.
    Exists {
        /// The key to look for.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 5. One page of the keys that start with `prefix` and sort after
    /// `start_after` (bytewise), ascending. `limit: 0` asks for the server's
    /// default page size; the server caps larger limits. Reply: `Keys`; ask for
    /// the next page with `start_after` set to the last key while `more` is true.
    Keys {
        /// Only keys that start with these bytes (empty: all keys).
        #[serde(deserialize_with = "wire_bytes::bytes")]
        prefix: Bytes,
        /// Only keys after this one: the last key of the previous page.
        #[serde(deserialize_with = "wire_bytes::option")]
        start_after: Option<Bytes>,
        /// Keys wanted; 0 for the server's default page.
        limit: u32,
    },
    /// Tag 6. Authenticates the connection with the server's token
    /// (`--auth-token-file`). Until it succeeds, a server with a token accepts
    /// nothing else, and only small frames. Reply: `Ok`, or `AuthFailed`.
    Auth {
        /// The shared secret.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        token: Bytes,
    },
    /// Tag 7. Store `value` under `key` if `condition` holds, atomically with
    /// the check. Reply: `Bool(stored)`; with `get: true`, `Value(old)` (the
    /// value before, whether or not the new one was stored). Redis's `SET` with
    /// `NX`, `XX` and `GET`, and `SETNX`.
    SetIf {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The value to store if the condition holds.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
        /// When to store.
        condition: Condition,
        /// Reply with the old value instead of whether it stored.
        get: bool,
    },
    /// Tag 8. Remove one key and return the value it had. Reply: `Value`.
    GetDel {
        /// The key to remove.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 9. Add `by` to the value of `key`, read as a signed 64-bit decimal
    /// integer (a missing key counts as 0), and store the result in decimal.
    /// Reply: `Int(new value)`; `NotAnInteger` or `Overflow` leave it unchanged.
    /// Not idempotent: the client library never resends it after a lost reply.
    Incr {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The amount to add (negative to subtract).
        by: i64,
    },
    /// Tag 10. Append `value` to the value of `key` (a missing key counts as
    /// empty). Reply: `Int(new length)`; `ValueTooLarge` if the result would
    /// pass the value limit. Not idempotent, like `Incr`.
    Append {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The bytes to append.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
    },
    /// Tag 11. Remove every key in `keys` as one log record: after a crash
    /// either all are gone or none. Reply: `Int(keys that existed)`.
    DeleteMany {
        /// The keys to remove (at most the BulkSet item limit).
        #[serde(deserialize_with = "wire_bytes::list")]
        keys: Vec<Bytes>,
    },
    /// Tag 12. Remove every key, as one log record. Reply: `Ok`.
    Flush,
    /// Tag 13. One page of the key-value pairs whose keys start with `prefix`,
    /// in key order: ascending after `start_after`, or with `reverse`
    /// descending before it. `limit` as for `Keys` (0: the default page; capped
    /// at [`MAX_KEYS_PAGE`]); a page also stops before it passes half a frame,
    /// and always holds at least one pair if any is left. Reply: `Pairs`; ask
    /// for the next page with `start_after` set to the last key while `more`
    /// is true. A page is one instant's view of the whole store.
    Scan {
        /// Only keys that start with these bytes (empty: all keys).
        #[serde(deserialize_with = "wire_bytes::bytes")]
        prefix: Bytes,
        /// Only keys after this one (before it with `reverse`): the last key
        /// of the previous page.
        #[serde(deserialize_with = "wire_bytes::option")]
        start_after: Option<Bytes>,
        /// Pairs wanted; 0 for the server's default page.
        limit: u32,
        /// Descending key order.
        reverse: bool,
    },
    /// Tag 14. One page of the pairs whose keys lie in the half-open range
    /// `[start, end)` (`end: None`: no upper end), ascending, or with
    /// `reverse` descending from the end. Limits and reply as for `Scan`. Next
    /// page: ascending, `start` = the last key followed by one 0x00 byte (the
    /// smallest key after it); descending, `end` = the last key.
    Range {
        /// The first key of the range (included).
        #[serde(deserialize_with = "wire_bytes::bytes")]
        start: Bytes,
        /// The end of the range (excluded); `None` for no end.
        #[serde(deserialize_with = "wire_bytes::option")]
        end: Option<Bytes>,
        /// Pairs wanted; 0 for the server's default page.
        limit: u32,
        /// Descending key order.
        reverse: bool,
    },
    /// Tag 15. The server's figures: keys, bytes, commands and errors by
    /// kind, connections, the log and its fsync latency, snapshots, uptime,
    /// version. Reply: `Stats`.
    Stats,
    /// Tag 16. A point-in-time copy of the whole store, made while writes go
    /// on, in the checksummed snapshot format (docs/protocol.md, "Backup").
    /// With `name: None` the copy streams over this connection: the reply
    /// is the first `Chunk`, and each `BackupNext` brings the next, until
    /// `BackupDone`; the file is the chunks' bytes in order. With
    /// `name: Some(..)` the server writes the file into its `--backup-dir`
    /// under that name (letters, digits, `.`, `_`, `-`; a name that exists
    /// is refused) and replies `BackupDone`. Not idempotent. Errors:
    /// `BackupFailed`.
    Backup {
        /// A file name in the server's backup directory, or `None` to stream.
        #[serde(deserialize_with = "wire_bytes::option_string")]
        name: Option<String>,
    },
    /// Tag 17. The next `Chunk` of the backup streaming on this connection,
    /// or `BackupDone` once all of it has been sent. `BackupFailed` if no
    /// backup is streaming here. Not idempotent (each call moves on).
    BackupNext,
    /// Tag 18. Cluster administration (servers started with `--node-id`;
    /// others answer `ClusterFailed`). Reply: `Cluster`, this node's view.
    Cluster(ClusterRequest),
    /// Tag 19. `command` (a data command, not itself `Indexed`) with the
    /// log index that goes with it, for follower reads and session
    /// guarantees (docs/replication.md). Reply: `Indexed`, with `command`'s
    /// reply and the newest log index whose writes that reply may reflect.
    ///
    /// A read with `any_node` is answered by whichever node gets it, from
    /// what that node has applied, once it has applied index `after`
    /// (waiting up to 2 s, else `Lagging`): it may be stale, but never older
    /// than `after`. Without `any_node` it is a linearizable read (leader
    /// only). A write goes through the leader as usual; `after` and
    /// `any_node` do not apply to it. A server running alone answers with
    /// index 0.
    Indexed {
        /// The log index the answering node must have applied first.
        after: u64,
        /// Whether a follower or learner may answer a read.
        any_node: bool,
        /// The command itself.
        #[serde(deserialize_with = "wire_bytes::inner_command")]
        command: Box<Command>,
    },
    /// Tag 20. Cluster mode: opens a client session for exactly-once writes
    /// (`Once`). Reply: `Int(session id)`; `TooManySessions` when the
    /// cluster holds the most sessions it keeps; `ClusterFailed` from a
    /// server running alone. Safe to resend: a session opened twice only
    /// leaves one unused until it expires.
    OpenSession,
    /// Tag 21. Cluster mode: `command` (a write) as write number `seq` of
    /// client session `session`, applied at most once: sent again, to this
    /// node or another, it is answered with the outcome of its first apply
    /// and not applied again. `acked` says every write of the session up to
    /// that number has its answer (the cluster then forgets their
    /// outcomes). Reply: `Indexed`, with `command`'s reply; `SessionExpired`
    /// if the session is unknown or has been idle too long.
    Once {
        /// The session's id, from `OpenSession`.
        session: u64,
        /// The write's number in the session, from 1, never reused.
        seq: u64,
        /// Every write numbered up to this has been answered.
        acked: u64,
        /// The write itself.
        #[serde(deserialize_with = "wire_bytes::inner_command")]
        command: Box<Command>,
    },
    /// Tag 22. Loads the backup `name` from the server's `--backup-dir`
    /// into its store, which must be empty, as ordinary writes through the
    /// log (in cluster mode, through Raft to every node; on the leader).
    /// Reply: `BackupDone` with the pairs and writes restored and the
    /// file's size; `RestoreFailed` otherwise. Not idempotent: a second
    /// attempt finds the store not empty.
    Restore {
        /// The backup's file name in `--backup-dir`.
        #[serde(deserialize_with = "wire_bytes::string")]
        name: String,
    },
    /// Tag 23. [`Command::SetIf`] with a deadline: the key is gone once
    /// `expiry` passes (docs/expiry.md). `Expiry::Keep` keeps the deadline
    /// the key has (Redis's `KEEPTTL`); a plain `Set` removes it. Reply as
    /// for `SetIf`.
    SetExpiring {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The value to store if the condition holds.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
        /// When to store.
        condition: Condition,
        /// Reply with the old value instead of whether it stored.
        get: bool,
        /// When the key is gone.
        expiry: Expiry,
    },
    /// Tag 24. Gives an existing key the deadline `expiry` (not `Keep`) if
    /// `when` holds; a deadline already passed removes the key. Reply:
    /// `Bool(changed)`, false for a missing key. Redis's `EXPIRE` family.
    Expire {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The new deadline.
        expiry: Expiry,
        /// When to change it.
        when: ExpireWhen,
    },
    /// Tag 25. Removes a key's deadline. Reply: `Bool(it had one)`.
    Persist {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 26. A key's deadline. Reply: `Int`: the milliseconds left (with
    /// `absolute`, the deadline in milliseconds since the Unix epoch), -1 for
    /// a key without one, -2 for a missing key.
    Ttl {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// Answer the deadline itself rather than the time left.
        absolute: bool,
    },
    /// Tag 27. A key's value, giving the key the deadline `expiry` at the
    /// same time (`Never` removes its deadline, `Keep` leaves it; a
    /// deadline already passed removes the key). Reply: `Value`. Redis's
    /// `GETEX`.
    GetEx {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The key's deadline from now on.
        expiry: Expiry,
    },
    /// Tag 28. Overwrites the value at `key` from byte `offset` on with
    /// `value`, padding with zero bytes past its end (a missing key is
    /// empty; an empty `value` changes nothing). Reply: `Int`, the new
    /// length. Redis's `SETRANGE`.
    SetRange {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// Where `value` goes.
        offset: u64,
        /// The bytes written there.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
    },
    /// Tag 29. Adds the decimal number `by` (as text: `1.5`, `-2e3`) to the
    /// number stored at `key` (0 if missing), in 64-bit floating point.
    /// Reply: `Value`, the new value as stored. Redis's `INCRBYFLOAT`.
    IncrByFloat {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
        /// The increment, as decimal text.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        by: Bytes,
    },
    /// Tag 30. Stores every pair, as one write, only if none of the keys
    /// exists. Reply: `Bool(stored)`. Redis's `MSETNX`.
    BulkSetIfAbsent {
        /// Key-value pairs; a key given twice keeps its last value.
        #[serde(deserialize_with = "wire_bytes::pairs")]
        items: Vec<(Bytes, Bytes)>,
    },
    /// Tag 31. Copies the value and deadline of `from` to `to` (with
    /// `replace`, over a value `to` has). Reply: `Bool(copied)`, false if
    /// `from` is missing or `to` exists without `replace`. Redis's `COPY`.
    Copy {
        /// The source key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        from: Bytes,
        /// The destination key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        to: Bytes,
        /// Overwrite `to` if it exists.
        replace: bool,
    },
    /// Tag 32. Moves the value and deadline of `from` to `to` (with
    /// `replace`, over a value `to` has), as one write. Reply:
    /// `Bool(renamed)`, false if `to` exists without `replace`;
    /// `NoSuchKey` if `from` is missing. Redis's `RENAME` and `RENAMENX`.
    Rename {
        /// The key to rename.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        from: Bytes,
        /// Its new name.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        to: Bytes,
        /// Overwrite `to` if it exists.
        replace: bool,
    },
    /// Tag 33. A key's value with its revisions: the log positions of its
    /// last write and of its creation (docs/transactions.md). Reply:
    /// `Versioned`, with no value and revisions 0 for a missing key.
    GetWithVersion {
        /// The key.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        key: Bytes,
    },
    /// Tag 34. A transaction: if every one of `compare` holds, the
    /// commands of `success` run, else those of `failure`, in order, each
    /// seeing the writes of the ones before it, all decided and written as
    /// one atomic, durable write. A branch holds writes of data and `Get`,
    /// `Exists` and `GetWithVersion` ([`Command::in_txn`]). Reply: `Txn {
    /// succeeded, replies }`, one reply per command of the branch that ran
    /// (docs/transactions.md).
    Txn {
        /// The tests, all of which must hold.
        #[serde(deserialize_with = "wire_bytes::seq")]
        compare: Vec<Compare>,
        /// What runs if they hold.
        #[serde(deserialize_with = "wire_bytes::txn_commands")]
        success: Vec<Command>,
        /// What runs if one does not.
        #[serde(deserialize_with = "wire_bytes::txn_commands")]
        failure: Vec<Command>,
    },
    /// Tag 35. Every change to the keys that start with `prefix`, in log
    /// order, from `from_revision` on (0: from now), streamed on this
    /// connection as `Events` replies with this request's id: the first at
    /// once (no events: the watch is in place), then one per applied batch
    /// that touched the prefix. Changes older than the server's history
    /// end the watch with `Compacted`; a watcher too far behind is ended
    /// with `SlowWatcher` (docs/watch.md). One watch per connection: a
    /// second replaces the first.
    Watch {
        /// The keys watched: those that start with it (empty: all).
        #[serde(deserialize_with = "wire_bytes::bytes")]
        prefix: Bytes,
        /// The oldest revision wanted; 0 for changes after the watch starts.
        from_revision: u64,
    },
}

/// One change a watch delivers ([`Reply::Events`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The log position of the write that made it (several changes of one
    /// write, or of one Raft entry, share it).
    pub revision: u64,
    /// The key changed (empty for `Clear`).
    #[serde(deserialize_with = "wire_bytes::bytes")]
    pub key: Bytes,
    /// What happened to it.
    pub kind: EventKind,
}

/// What an [`Event`] did to its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Tag 0. The key holds `value`, gone at `deadline` (ms since the
    /// epoch) if it has one.
    Put {
        /// The new value.
        #[serde(deserialize_with = "wire_bytes::bytes")]
        value: Bytes,
        /// When it is gone, if ever.
        deadline: Option<u64>,
    },
    /// Tag 1. The key was removed by a command.
    Delete,
    /// Tag 2. The key was removed because its deadline passed.
    Expired,
    /// Tag 3. The key keeps its value with a new deadline (`None`: none).
    Deadline(Option<u64>),
    /// Tag 4. Every key was removed (Flush); its `key` is empty.
    Clear,
}

/// When a key with a deadline is gone ([`Command::SetExpiring`],
/// [`Command::Expire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Tag 0. This many milliseconds after the server takes the command.
    In(u64),
    /// Tag 1. At this time, in milliseconds since the Unix epoch.
    At(u64),
    /// Tag 2. The deadline the key has now, if any (not for `Expire`).
    Keep,
    /// Tag 3. No deadline (not for `Expire`: that is `Persist`).
    Never,
}

/// When [`Command::Expire`] changes a deadline (Redis 7's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireWhen {
    /// Tag 0. Always.
    Always,
    /// Tag 1. Only if the key has no deadline (`NX`).
    NoDeadline,
    /// Tag 2. Only if it has one (`XX`).
    HasDeadline,
    /// Tag 3. Only if the new one is later (`GT`; none counts as never).
    Later,
    /// Tag 4. Only if the new one is earlier (`LT`; none counts as never).
    Earlier,
    /// Tag 5. Only if it has one and the new one is earlier (`XX LT`).
    EarlierDeadline,
}

/// One test of a transaction ([`Command::Txn`]): `key`'s `target`
/// compared with `op` (the key's side on the left: `Less` holds when the
/// key's is less than the constant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    #[serde(deserialize_with = "wire_bytes::bytes")]
    pub key: Bytes,
    /// What of the key is compared, and the constant.
    pub target: Target,
    /// How.
    pub op: CompareOp,
}

/// What a [`Compare`] looks at, with the constant it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Tag 0. The value, bytewise; never holds for a missing key.
    Value(#[serde(deserialize_with = "wire_bytes::bytes")] Bytes),
    /// Tag 1. Whether the key exists (`false` < `true`).
    Exists(bool),
    /// Tag 2. The log position of its last write (0 for a missing key).
    ModRevision(u64),
    /// Tag 3. The log position of its creation (0 for a missing key).
    CreateRevision(u64),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Tag 0.
    Equal,
    /// Tag 1.
    NotEqual,
    /// Tag 2.
    Less,
    /// Tag 3.
    Greater,
}

impl CompareOp {
    /// Whether it holds when the key's side compares to the constant as
    /// `ordering` says.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CompareOp::Equal => ordering == Equal,
            CompareOp::NotEqual => ordering != Equal,
            CompareOp::Less => ordering == Less,
            CompareOp::Greater => ordering == Greater,
        }
    }
}

/// What [`Command::Cluster`] asks (docs/replication.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// Tag 0. Bootstraps a new cluster whose voters are this node and its
    /// `--peers`. Only once per cluster; on any one node.
    Init,
    /// Tag 1. This node's view of the cluster; changes nothing.
    Status,
    /// Tag 2. Adds a node that receives the log without voting (on the
    /// leader), and waits until it has caught up.
    AddLearner {
        /// The new node's `--node-id`.
        id: u64,
        /// Its native address, for clients.
        #[serde(deserialize_with = "wire_bytes::string")]
        addr: String,
        /// Its raft address, for the other nodes.
        #[serde(deserialize_with = "wire_bytes::string")]
        raft_addr: String,
    },
    /// Tag 3. Makes a learner a voter (joint consensus; on the leader).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Tag 4. Removes a voter or learner from the cluster (on the leader).
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Tag 5. Creates a Raft group on these nodes, serving no slot yet
    /// (on group 1's leader; docs/sharding.md). Empty: the three voters
    /// of group 1 that run the fewest groups. Answered once the new group
    /// has a leader.
    AddGroup {
        /// The nodes' ids.
        nodes: Vec<u64>,
    },
    /// Tag 6. Sets what group `group` does with slots `first..=last` (on
    /// any node: it goes to the group's leader). An operator's tool, as
    /// Redis's `CLUSTER SETSLOT`; the slot move uses the same steps.
    SetSlots {
        /// The group.
        group: u64,
        /// The first slot.
        first: u16,
        /// The last slot, included.
        last: u16,
        /// From now on.
        state: crate::slot::SlotState,
    },
    /// Tag 7. Moves slots `first..=last`, all served by one group, to group
    /// `to`, with their keys, while clients go on (docs/sharding.md); on
    /// group 1's leader. Answered when the move is done.
    MoveSlots {
        /// The first slot.
        first: u16,
        /// The last slot, included.
        last: u16,
        /// The group that serves them afterwards.
        to: u64,
    },
    /// Tag 8. Undoes the slot move under way, if its source has not
    /// released the slots yet (on group 1's leader). Answered once undone.
    AbortMove,
    /// Tag 9. Moves slots between groups, one move at a time, until each
    /// group holds an even share of the keys, bytes and slots, within 2 %
    /// where slots allow (on group 1's leader; docs/sharding.md). Answered
    /// when the last move is done.
    Rebalance,
    /// Tag 10. Moves group `group`'s replica on node `from` to node `to`,
    /// a member of the cluster that does not run the group: `to` joins as
    /// a learner, catches up, votes in `from`'s place, and `from` drops its
    /// copy (on group 1's leader; docs/sharding.md). Answered when done;
    /// sent again, it finishes a move that stopped part-way.
    MoveReplica {
        /// The group (not group 1, whose members are the cluster's).
        group: u64,
        /// The node that leaves it.
        from: u64,
        /// The node that joins it.
        to: u64,
    },
}

/// One node's view of the cluster ([`Reply::Cluster`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    #[serde(deserialize_with = "wire_bytes::string")]
    pub role: String,
    /// The Raft term this node is in.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The last index in this node's log (`None`: empty).
    pub last_log_index: Option<u64>,
    /// The last index applied to this node's store.
    pub applied_index: Option<u64>,
    /// The server's process id.
    pub pid: u32,
    /// The members, by id, as this node's latest membership has them.
    pub members: Vec<ClusterMember>,
    /// Every Raft group this node runs (group 1 first), as it sees it.
    pub groups: Vec<GroupView>,
    /// The slot move under way, as this node's copy of group 1's table
    /// has it.
    pub moving: Option<MoveView>,
}

/// A slot move under way ([`ClusterStatus::moving`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveView {
    /// The first slot moving.
    pub first: u16,
    /// The last slot moving, included.
    pub last: u16,
    /// The group they leave.
    pub from: u64,
    /// The group they go to.
    pub to: u64,
    /// The last step done: `Begun`, `Importing`, `Frozen`, `Copied`,
    /// `Released`, `Published` or `Serving` (docs/sharding.md).
    #[serde(deserialize_with = "wire_bytes::string")]
    pub step: String,
}

/// One Raft group as a node running it sees it ([`ClusterStatus::groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The group's id; group 1 is the cluster's first.
    pub id: u64,
    /// This node's role in it, as [`ClusterStatus::role`].
    #[serde(deserialize_with = "wire_bytes::string")]
    pub role: String,
    /// The group's Raft term on this node.
    pub term: u64,
    /// The group's leader this node knows of.
    pub leader: Option<u64>,
    /// The last index of the group's log applied here.
    pub applied_index: Option<u64>,
    /// The last index removed from the group's log here (a snapshot covers
    /// it): a replica behind it catches up from a snapshot.
    pub purged_index: Option<u64>,
    /// The group's voters.
    pub voters: Vec<u64>,
    /// The keys in this node's copy of the group's data.
    pub keys: u64,
    /// The slots the group serves, as inclusive ranges, as this node's
    /// copy of the sharding table has them.
    pub slots: Vec<(u16, u16)>,
}

/// A member of the cluster in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Its `--node-id`.
    pub id: u64,
    /// Native address.
    #[serde(deserialize_with = "wire_bytes::string")]
    pub addr: String,
    /// Raft address.
    #[serde(deserialize_with = "wire_bytes::string")]
    pub raft_addr: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// On the leader: the last index known replicated to it.
    pub matched_index: Option<u64>,
    /// Its RESP address (`--resp-listen`), once it has recorded it in the
    /// cluster's table.
    #[serde(deserialize_with = "wire_bytes::option_string")]
    pub resp_addr: Option<String>,
}

/// The names of the commands, by tag (see [`Command::name`]).
pub const COMMAND_NAMES: [&str; 36] = [
    "Set",
    "Get",
    "Delete",
    "BulkSet",
    "Exists",
    "Keys",
    "Auth",
    "SetIf",
    "GetDel",
    "Incr",
    "Append",
    "DeleteMany",
    "Flush",
    "Scan",
    "Range",
    "Stats",
    "Backup",
    "BackupNext",
    "Cluster",
    "Indexed",
    "OpenSession",
    "Once",
    "Restore",
    "SetExpiring",
    "Expire",
    "Persist",
    "Ttl",
    "GetEx",
    "SetRange",
    "IncrByFloat",
    "BulkSetIfAbsent",
    "Copy",
    "Rename",
    "GetWithVersion",
    "Txn",
    "Watch",
];

impl Command {
    /// The command's tag on the wire.
    pub fn tag(&self) -> u32 {
        match self {
            Command::Set { .. } => 0,
            Command::Get { .. } => 1,
            Command::Delete { .. } => 2,
            Command::BulkSet { .. } => 3,
            Command::Exists { .. } => 4,
            Command::Keys { .. } => 5,
            Command::Auth { .. } => 6,
            Command::SetIf { .. } => 7,
            Command::GetDel { .. } => 8,
            Command::Incr { .. } => 9,
            Command::Append { .. } => 10,
            Command::DeleteMany { .. } => 11,
            Command::Flush => 12,
            Command::Scan { .. } => 13,
            Command::Range { .. } => 14,
            Command::Stats => 15,
            Command::Backup { .. } => 16,
            Command::BackupNext => 17,
            Command::Cluster(_) => 18,
            Command::Indexed { .. } => 19,
            Command::OpenSession => 20,
            Command::Once { .. } => 21,
            Command::Restore { .. } => 22,
            Command::SetExpiring { .. } => 23,
            Command::Expire { .. } => 24,
            Command::Persist { .. } => 25,
            Command::Ttl { .. } => 26,
            Command::GetEx { .. } => 27,
            Command::SetRange { .. } => 28,
            Command::IncrByFloat { .. } => 29,
            Command::BulkSetIfAbsent { .. } => 30,
            Command::Copy { .. } => 31,
            Command::Rename { .. } => 32,
            Command::GetWithVersion { .. } => 33,
            Command::Txn { .. } => 34,
            Command::Watch { .. } => 35,
        }
    }

    /// The variant's name, as in this documentation (`"BulkSet"`).
    pub fn name(&self) -> &'static str {
        COMMAND_NAMES[self.tag() as usize]
    }

    /// Whether the command reads data: what a cluster's read barrier, and
    /// follower and session reads, cover.
    pub fn is_data_read(&self) -> bool {
        matches!(
            self,
            Command::Get { .. }
                | Command::Exists { .. }
                | Command::Keys { .. }
                | Command::Scan { .. }
                | Command::Range { .. }
                | Command::Ttl { .. }
                | Command::GetWithVersion { .. }
        )
    }

    /// Whether the command changes data (and so goes through the log). An
    /// `Indexed` or `Once` command is not: its inner command may be.
    pub fn is_data_write(&self) -> bool {
        match self {
            Command::Set { .. }
            | Command::Delete { .. }
            | Command::BulkSet { .. }
            | Command::SetIf { .. }
            | Command::GetDel { .. }
            | Command::Incr { .. }
            | Command::Append { .. }
            | Command::DeleteMany { .. }
            | Command::Flush
            | Command::SetExpiring { .. }
            | Command::Expire { .. }
            | Command::Persist { .. }
            | Command::GetEx { .. }
            | Command::SetRange { .. }
            | Command::IncrByFloat { .. }
            | Command::BulkSetIfAbsent { .. }
            | Command::Copy { .. }
            | Command::Rename { .. }
            | Command::Txn { .. } => true,
            Command::Get { .. }
            | Command::Ttl { .. }
            | Command::GetWithVersion { .. }
            | Command::Exists { .. }
            | Command::Keys { .. }
            | Command::Scan { .. }
            | Command::Range { .. }
            | Command::Stats
            | Command::Backup { .. }
            | Command::BackupNext
            | Command::Watch { .. }
            | Command::Auth { .. }
            | Command::Cluster(_)
            | Command::Indexed { .. }
            | Command::OpenSession
            | Command::Once { .. }
            | Command::Restore { .. } => false,
        }
    }

    /// Whether the command may be one of a transaction's ([`Command::Txn`]):
    /// a write of data other than `Flush` and `Txn`, or a read of one key.
    pub fn in_txn(&self) -> bool {
        match self {
            Command::Flush | Command::Txn { .. } => false,
            Command::Get { .. } | Command::Exists { .. } | Command::GetWithVersion { .. } => true,
            other => other.is_data_write(),
        }
    }

    /// The key whose slot decides which group of a sharded cluster the
    /// command goes to: its only or first key (the server refuses a
    /// command whose keys lie in several slots with `CrossSlot`). `None`
    /// for a command of no key or of every group (a scan).
    pub fn first_key(&self) -> Option<&[u8]> {
        match self {
            Command::Set { key, .. }
            | Command::Get { key }
            | Command::GetWithVersion { key }
            | Command::Delete { key }
            | Command::Exists { key }
            | Command::SetIf { key, .. }
            | Command::GetDel { key }
            | Command::Incr { key, .. }
            | Command::Append { key, .. }
            | Command::SetExpiring { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key }
            | Command::Ttl { key, .. }
            | Command::GetEx { key, .. }
            | Command::SetRange { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Copy { from: key, .. }
            | Command::Rename { from: key, .. } => Some(key),
            Command::BulkSet { items } | Command::BulkSetIfAbsent { items } => {
                items.first().map(|(key, _)| &key[..])
            }
            Command::DeleteMany { keys } => keys.first().map(|key| &key[..]),
            Command::Txn {
                compare,
                success,
                failure,
            } => (compare.first().map(|c| &c.key[..]))
                .or_else(|| success.iter().chain(failure).find_map(Command::first_key)),
            Command::Indexed { command, .. } | Command::Once { command, .. } => command.first_key(),
            Command::Keys { .. }
            | Command::Auth { .. }
            | Command::Flush
            | Command::Scan { .. }
            | Command::Range { .. }
            | Command::Stats
            | Command::Backup { .. }
            | Command::BackupNext
            | Command::Cluster(_)
            | Command::OpenSession
            | Command::Watch { .. }
            | Command::Restore { .. } => None,
        }
    }

    /// Whether sending the command twice has the effect of sending it
    /// once. A client may resend an idempotent command whose reply was lost;
    /// `Incr`, `Append`, `Backup` and `BackupNext` it may resend only when the
    /// first attempt cannot have reached the server.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Command::Indexed { command, .. } => command.is_idempotent(),
            // What sessions are for; a second session is harmless.
            Command::Once { .. } | Command::OpenSession => true,
            _ => !matches!(
                self,
                Command::Incr { .. }
                    | Command::Append { .. }
                    | Command::IncrByFloat { .. }
                    | Command::Txn { .. }
                    | Command::Backup { .. }
                    | Command::BackupNext
                    | Command::Watch { .. }
                    | Command::Cluster(_)
                    | Command::Restore { .. }
            ),
        }
    }
}

/// When [`Command::SetIf`] stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Tag 0. Always (with `get`, a plain Set that returns the old value).
    Always,
    /// Tag 1. Only if the key does not exist (`SET NX`, `SETNX`).
    Absent,
    /// Tag 2. Only if the key exists (`SET XX`).
    Present,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Tag 0. The command succeeded and has nothing to return (Set, BulkSet).
    Ok,
    /// Tag 1. The value of a key, or `None` if it does not exist (Get).
    Value(#[serde(deserialize_with = "wire_bytes::option")] Option<Bytes>),
    /// Tag 2. A yes/no answer (Exists; Delete says whether the key existed).
    Bool(bool),
    /// Tag 3. A page of keys in ascending byte order; `more` is true when keys
    /// after the last one may remain.
    Keys {
        /// The keys, ascending.
        #[serde(deserialize_with = "wire_bytes::list")]
        keys: Vec<Bytes>,
        /// Whether keys after the last one may remain.
        more: bool,
    },
    /// Tag 4. The command failed. `code` is stable ([`ErrorCode`]); `message` is
    /// for humans and may change.
    Error {
        /// An [`ErrorCode`] number.
        code: u32,
        /// A human-readable explanation.
        #[serde(deserialize_with = "wire_bytes::string")]
        message: String,
    },
    /// Tag 5. A number: a counter's new value (Incr), a length (Append), a
    /// count of keys (DeleteMany).
    Int(i64),
    /// Tag 6. A page of key-value pairs in the order asked for (Scan,
    /// Range); `more` is true when pairs after the last one may remain.
    Pairs {
        /// `(key, value)` pairs.
        #[serde(deserialize_with = "wire_bytes::pairs")]
        pairs: Vec<(Bytes, Bytes)>,
        /// Whether pairs after the last one may remain.
        more: bool,
    },
    /// Tag 7. Named figures (Stats), each a signed 64-bit number. A name is
    /// a Prometheus series without the `kvstore_` prefix, labels included,
    /// such as `keys` or `commands_total{door="native",command="Set"}`; the
    /// server's version is the label of `build_info{version="..."}` (value
    /// 1). docs/operations.md lists them all.
    Stats(#[serde(deserialize_with = "wire_bytes::figures")] Vec<(String, i64)>),
    /// Tag 8. The next bytes of a streaming backup (at most 1 MiB, or half
    /// the server's frame limit if that is smaller).
    Chunk(#[serde(deserialize_with = "wire_bytes::bytes")] Bytes),
    /// Tag 9. A backup is complete: the pairs it holds, the writes made
    /// during the copy that it replays after them, and its size in bytes.
    BackupDone {
        /// Key-value pairs copied.
        keys: u64,
        /// Writes applied during the copy, stored after the pairs.
        ops: u64,
        /// The file's size.
        bytes: u64,
    },
    /// Tag 10. A node's view of the cluster (Cluster). Boxed: it is the
    /// largest reply, and every reply would be its size.
    Cluster(Box<ClusterStatus>),
    /// Tag 11. The reply to an `Indexed` command: the inner command's reply
    /// and the newest log index whose writes it may reflect (0 when the
    /// server runs alone).
    Indexed {
        /// A later `Indexed` read with `after` at least this sees everything
        /// this reply reflects.
        index: u64,
        /// The inner command's reply.
        #[serde(deserialize_with = "wire_bytes::inner_reply")]
        reply: Box<Reply>,
    },
    /// Tag 12. A key's value and revisions (GetWithVersion): no value and
    /// both revisions 0 for a missing key.
    Versioned {
        /// The value, if the key exists.
        #[serde(deserialize_with = "wire_bytes::option")]
        value: Option<Bytes>,
        /// The log position of the key's last write.
        modified: u64,
        /// The log position of the write that created it.
        created: u64,
    },
    /// Tag 13. What a transaction did (Txn): whether its compares held
    /// (so the success branch ran), and the reply of each operation of the
    /// branch that ran, in order. An operation that failed (an error
    /// reply) wrote nothing; the others still did.
    Txn {
        /// The compares held.
        succeeded: bool,
        /// One per operation; never a `Txn` reply.
        #[serde(deserialize_with = "wire_bytes::txn_replies")]
        replies: Vec<Reply>,
    },
    /// Tag 14. Changes a `Watch` delivers, in log order, with the watch's
    /// request id.
    Events {
        /// Every change up to this log position has been delivered (resume
        /// with `from_revision` one past it, or one past the last event's).
        revision: u64,
        /// The changes (none in the first reply, or in a progress report).
        #[serde(deserialize_with = "wire_bytes::seq")]
        events: Vec<Event>,
    },
}

impl Reply {
    /// An error reply with its code and message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code: code as u32,
            message: message.into(),
        }
    }
}

/// The stable numeric codes of [`Reply::Error`]. New codes are only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame body did not decode. The server closes the connection after it.
    Malformed = 1,
    /// The frame's length prefix exceeds the server's frame limit. The server
    /// closes the connection after it.
    FrameTooLarge = 2,
    /// A key is longer than the server's key limit.
    KeyTooLarge = 3,
    /// A value is longer than the server's value limit.
    ValueTooLarge = 4,
    /// A `BulkSet` has more items than the server's limit.
    TooManyItems = 5,
    /// The write-ahead log failed (a write or an `fdatasync` returned an error).
    /// The server refuses every write until it is restarted; reads go on.
    StorageFailed = 6,
    /// The server is at its connection limit; it closes the connection.
    TooManyConnections = 7,
    /// The server is shutting down and takes no new work.
    ShuttingDown = 8,
    /// The server requires `Auth` before any other command on a connection.
    Unauthenticated = 9,
    /// `Auth` presented a wrong token. The server answers failures slowly and
    /// closes the connection after a few.
    AuthFailed = 10,
    /// `Incr` found a value that is not a signed 64-bit decimal integer.
    NotAnInteger = 11,
    /// `Incr` would take the value past the range of a signed 64-bit integer.
    Overflow = 12,
    /// A backup could not be made or go on: no `--backup-dir`, a bad or
    /// taken name, too many backups at once, more writes during the copy
    /// than the server keeps for one, no backup streaming on the connection,
    /// or an I/O error in the backup directory. The message says which.
    BackupFailed = 13,
    /// Cluster mode: this node is not the leader, so it cannot take the
    /// write (or serve a linearizable read). Nothing was done. The message
    /// is `not the leader; leader at HOST:PORT` when the node knows the
    /// leader (its native address), else `not the leader; no leader known
    /// yet`. Send the request to the leader.
    NotLeader = 14,
    /// A cluster command could not be carried out (the server is not in
    /// cluster mode, the cluster is already initialized, a membership change
    /// was refused); the message says why.
    ClusterFailed = 15,
    /// Cluster mode: the write was proposed, but leadership changed or the
    /// node stopped before its outcome was known. It may or may not have been
    /// applied. Safe to resend only if the command is idempotent.
    OutcomeUnknown = 16,
    /// Cluster mode: an `Indexed` read's node had not applied the index it
    /// asked for within 2 s (it is behind, or cut off from the leader).
    /// Nothing was done; ask another node.
    Lagging = 17,
    /// Cluster mode: a write of a client session (`Once`) names a session
    /// that is unknown or expired (idle too long). Nothing was done. Open a
    /// new session; if the write was a resend, whether an earlier attempt
    /// was applied is unknown.
    SessionExpired = 18,
    /// Cluster mode: `OpenSession` found the most client sessions open and
    /// none expired, or a session has the most writes not yet acknowledged
    /// (`Once`'s `acked`). Nothing was done.
    TooManySessions = 19,
    /// `Restore` could not load its backup: no `--backup-dir`, a bad name,
    /// no such file, a store that is not empty, a restore already running,
    /// or a damaged file (the message gives the offset). What was written
    /// before a failure stays: flush the store before trying again.
    RestoreFailed = 20,
    /// Sharded cluster: the key's slot is served by another group (the map
    /// changed, or the request went to the wrong group). Nothing was done.
    /// Refresh the map and send it to the slot's group.
    Moved = 21,
    /// Sharded cluster: the key's slot is moving between groups. Nothing
    /// was done; send it again shortly.
    TryAgain = 22,
    /// Sharded cluster: a command's keys are in different slots. Nothing
    /// was done; hash tags (`{user:1}:a`, `{user:1}:b`) keep keys in one.
    CrossSlot = 23,
    /// `IncrByFloat`: the increment or the stored value is not a decimal
    /// number, or the result would not be finite. Nothing was done.
    NotAFloat = 24,
    /// `Rename`: the key to rename does not exist. Nothing was done.
    NoSuchKey = 25,
    /// `Watch`: the history no longer holds the revision asked for (the
    /// message names the oldest it holds); read the current state and
    /// watch from now.
    Compacted = 26,
    /// `Watch`: the watcher fell too far behind the writes and was ended.
    /// Watch again from one past the last revision received.
    SlowWatcher = 27,
}

impl ErrorCode {
    /// The code for a number read from the wire, if this version knows it.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            Malformed,
            FrameTooLarge,
            KeyTooLarge,
            ValueTooLarge,
            TooManyItems,
            StorageFailed,
            TooManyConnections,
            ShuttingDown,
            Unauthenticated,
            AuthFailed,
            NotAnInteger,
            Overflow,
            BackupFailed,
            NotLeader,
            ClusterFailed,
            OutcomeUnknown,
            Lagging,
            SessionExpired,
            TooManySessions,
            RestoreFailed,
            Moved,
            TryAgain,
            CrossSlot,
            NotAFloat,
            NoSuchKey,
            Compacted,
            SlowWatcher,
        ]
        .into_iter()
        .find(|c| *c as u32 == code)
    }

    /// Whether sending the same request again, later or to a restarted server,
    /// can succeed. Limits and malformed input fail the same way every time;
    /// `StorageFailed` needs an operator to restart the server, so a client must
    /// not loop on it.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::TooManyConnections
                | ErrorCode::ShuttingDown
                | ErrorCode::NotLeader
                | ErrorCode::OutcomeUnknown
                | ErrorCode::Lagging
                | ErrorCode::Moved
                | ErrorCode::TryAgain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One command of every variant, in tag order.
    fn one_of_each() -> Vec<Command> {
        let b = || Bytes::from_static(b"k");
        vec![
            Command::Set {
                key: b(),
                value: b(),
            },
            Command::Get { key: b() },
            Command::Delete { key: b() },
            Command::BulkSet { items: vec![] },
            Command::Exists { key: b() },
            Command::Keys {
                prefix: b(),
                start_after: None,
                limit: 0,
            },
            Command::Auth { token: b() },
            Command::SetIf {
                key: b(),
                value: b(),
                condition: Condition::Always,
                get: false,
            },
            Command::GetDel { key: b() },
            Command::Incr { key: b(), by: 1 },
            Command::Append {
                key: b(),
                value: b(),
            },
            Command::DeleteMany { keys: vec![] },
            Command::Flush,
            Command::Scan {
                prefix: b(),
                start_after: None,
                limit: 0,
                reverse: false,
            },
            Command::Range {
                start: b(),
                end: None,
                limit: 0,
                reverse: false,
            },
            Command::Stats,
            Command::Backup { name: None },
            Command::BackupNext,
            Command::Cluster(ClusterRequest::Status),
            Command::Indexed {
                after: 0,
                any_node: false,
                command: Box::new(Command::Get { key: b() }),
            },
            Command::OpenSession,
            Command::Once {
                session: 1,
                seq: 1,
                acked: 0,
                command: Box::new(Command::Incr { key: b(), by: 1 }),
            },
            Command::Restore { name: "n".into() },
            Command::SetExpiring {
                key: b(),
                value: b(),
                condition: Condition::Always,
                get: false,
                expiry: Expiry::In(1),
            },
            Command::Expire {
                key: b(),
                expiry: Expiry::At(1),
                when: ExpireWhen::Later,
            },
            Command::Persist { key: b() },
            Command::Ttl {
                key: b(),
                absolute: true,
            },
            Command::GetEx {
                key: b(),
                expiry: Expiry::Never,
            },
            Command::SetRange {
                key: b(),
                offset: 1,
                value: b(),
            },
            Command::IncrByFloat { key: b(), by: b() },
            Command::BulkSetIfAbsent {
                items: vec![(b(), b())],
            },
            Command::Copy {
                from: b(),
                to: b(),
                replace: true,
            },
            Command::Rename {
                from: b(),
                to: b(),
                replace: false,
            },
            Command::GetWithVersion { key: b() },
            Command::Txn {
                compare: vec![Compare {
                    key: b(),
                    target: Target::ModRevision(1),
                    op: CompareOp::Equal,
                }],
                success: vec![Command::Incr { key: b(), by: 1 }],
                failure: vec![Command::Get { key: b() }],
            },
            Command::Watch {
                prefix: b(),
                from_revision: 7,
            },
        ]
    }

    /// A `Txn` reply holds no `Txn` reply (its decoding would recurse as
    /// deep as a frame allows), but may come inside an `Indexed` one.
    #[test]
    fn a_txn_reply_inside_a_txn_reply_is_refused_when_decoded() {
        let txn = |replies| Reply::Txn {
            succeeded: true,
            replies,
        };
        let indexed = |reply| Reply::Indexed {
            index: 1,
            reply: Box::new(reply),
        };
        let decoded = |reply: &Reply| {
            let encoded = crate::codec::encode(reply).unwrap();
            crate::codec::decode::<Reply>(&encoded)
        };
        let flat = txn(vec![Reply::Ok, Reply::Int(2)]);
        assert_eq!(decoded(&flat).unwrap(), flat);
        let wrapped = indexed(txn(vec![Reply::Ok]));
        assert_eq!(decoded(&wrapped).unwrap(), wrapped);
        assert!(decoded(&txn(vec![txn(Vec::new())])).is_err());
        // The guard is left after a failed decode.
        assert_eq!(decoded(&flat).unwrap(), flat);
    }

    #[test]
    fn an_indexed_command_inside_an_indexed_command_is_refused_when_decoded() {
        let get = Command::Get { key: "k".into() };
        let wrap = |command| Command::Indexed {
            after: 1,
            any_node: true,
            command: Box::new(command),
        };
        let once = crate::codec::encode(&wrap(get.clone())).unwrap();
        assert_eq!(
            crate::codec::decode::<Command>(&once).unwrap(),
            wrap(get.clone())
        );
        let twice = crate::codec::encode(&wrap(wrap(get.clone()))).unwrap();
        assert!(crate::codec::decode::<Command>(&twice).is_err());
        // Deep nesting is refused at the second level, without recursing.
        let mut deep = Vec::new();
        for _ in 0..1_000_000 {
            deep.extend_from_slice(&19u32.to_le_bytes());
            deep.extend_from_slice(&[0; 8]);
            deep.push(1);
        }
        assert!(crate::codec::decode::<Command>(&deep).is_err());
        // A decode that failed does not leave the guard set.
        assert_eq!(crate::codec::decode::<Command>(&once).unwrap(), wrap(get));
    }

    #[test]
    fn a_commands_tag_and_name_are_the_ones_on_the_wire() {
        let all = one_of_each();
        assert_eq!(all.len(), COMMAND_NAMES.len());
        for (i, command) in all.iter().enumerate() {
            let body = crate::codec::encode(command).unwrap();
            let wire_tag = u32::from_le_bytes(body[..4].try_into().unwrap());
            assert_eq!(command.tag(), wire_tag, "{command:?}");
            assert_eq!(command.tag() as usize, i);
            assert!(format!("{command:?}").starts_with(command.name()));
        }
    }
}
