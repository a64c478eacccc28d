//! Commands: what each request does, one file per command.
//!
//! Reads ([`get`], [`get_many`], [`exists`], [`keys`], [`scan`]) answer at
//! once from the store, after [`read_barrier`]; this is the only code that
//! reads data, for every door, so key checks are the same on all of them.
//! [`backup`] copies the whole store while writes go on; `restore` loads a
//! backup into an empty store through the log.
//! Writes ([`set`], [`delete`], [`bulk_set`], [`delete_many`], `Flush`) check
//! their limits, queue a [`WriteOp`] for the group-commit thread, and answer
//! once it is durable. Writes that read first ([`set_if`], [`get_del`],
//! [`incr`], [`append`]) queue a [`Change`] that the commit thread resolves
//! against the current value (see `crate::storage::change`).
//! The connection handler keeps replies in request order (see
//! `crate::handler`).

mod append;
mod auth;
pub mod backup;
mod bulk_set;
mod cluster;
mod copy;
mod delete;
mod delete_many;
pub mod exists;
pub mod expire;
pub mod get;
mod get_del;
pub mod get_many;
mod incr;
mod incr_by_float;
pub mod indexed;
pub mod keys;
mod restore;
mod scan;
mod session;
mod set;
mod set_if;
mod set_range;
pub mod txn;
pub mod watch;

use std::sync::Arc;

use kvstore_client::{Command, ErrorCode, Reply};

use crate::config::Limits;
use crate::db::Db;
use crate::engine::Engine;
use crate::error::Error;
use crate::log::PendingWrite;
use crate::storage::change::Change;
use crate::storage::op::WriteOp;
use crate::storage::store::Applied;

/// A command that has been started.
pub enum Started {
    /// Its reply is known now.
    Done(Reply),
    /// A write waiting for the log; [`reply_for`] turns its outcome into a reply.
    Pending(PendingWrite),
}

/// Roughly the bytes a command holds in memory.
pub fn size(command: &Command) -> usize {
    match command {
        Command::Set { key, value } => key.len() + value.len(),
        Command::Get { key }
        | Command::GetWithVersion { key }
        | Command::Delete { key }
        | Command::Exists { key }
        | Command::GetDel { key }
        | Command::Incr { key, .. } => key.len(),
        Command::SetIf { key, value, .. }
        | Command::Append { key, value }
        | Command::SetExpiring { key, value, .. } => key.len() + value.len(),
        Command::Expire { key, .. }
        | Command::Persist { key }
        | Command::Ttl { key, .. }
        | Command::GetEx { key, .. } => key.len(),
        Command::SetRange { key, value, .. } | Command::IncrByFloat { key, by: value } => {
            key.len() + value.len()
        }
        Command::Copy { from, to, .. } | Command::Rename { from, to, .. } => from.len() + to.len(),
        Command::BulkSetIfAbsent { items } => items.iter().map(|(k, v)| k.len() + v.len()).sum(),
        Command::Txn {
            compare,
            success,
            failure,
        } => {
            let compared = compare.iter().map(|c| 32 + c.key.len()).sum::<usize>();
            compared + success.iter().chain(failure).map(size).sum::<usize>()
        }
        Command::DeleteMany { keys } => keys.iter().map(|k| k.len()).sum(),
        Command::Flush | Command::Stats | Command::BackupNext => 0,
        Command::Backup { name } => name.as_ref().map_or(0, |n| n.len()),
        Command::Restore { name } => name.len(),
        Command::Watch { prefix, .. } => 8 + prefix.len(),
        Command::BulkSet { items } => items.iter().map(|(k, v)| k.len() + v.len()).sum(),
        Command::Keys {
            prefix,
            start_after,
            ..
        }
        | Command::Scan {
            prefix,
            start_after,
            ..
        } => prefix.len() + start_after.as_ref().map_or(0, |a| a.len()),
        Command::Range { start, end, .. } => start.len() + end.as_ref().map_or(0, |e| e.len()),
        Command::Auth { token } => token.len(),
        Command::Cluster(_) => 64,
        Command::Indexed { command, .. } => 16 + size(command),
        Command::OpenSession => 16,
        Command::Once { command, .. } => 32 + size(command),
    }
}

/// Starts any command: a read is answered, a write is queued.
///
/// In cluster mode a read of data first waits for [`Cluster::read_barrier`]
/// (this node is the leader and has applied everything committed), so it is
/// linearizable; a node that is not the leader answers `NotLeader`.
///
/// [`Cluster::read_barrier`]: crate::raft::node::Cluster::read_barrier
pub async fn start(command: Command, db: &Db) -> Started {
    match command {
        Command::Cluster(request) => return Started::Done(cluster::apply(request, db).await),
        Command::Restore { name } => return Started::Done(restore::apply(name, db).await),
        _ => {}
    }
    // The scans of a cluster with several groups ask every group.
    if let Some(cluster) = db.cluster().filter(|c| c.has_groups()) {
        if let Some(reply) = scan::sharded(&command, cluster, db).await {
            return Started::Done(reply);
        }
    }
    if command.is_data_read() {
        if let Err(e) = read_barrier(db, read_key(&command)).await {
            return Started::Done(error_reply(&e));
        }
    }
    match prepare(command, db) {
        Ok(change) => match db.write(change).await {
            Ok(pending) => Started::Pending(pending),
            Err(e) => Started::Done(error_reply(&e)),
        },
        Err(reply) => Started::Done(reply),
    }
}

/// Waits until this node may answer a linearizable read of data: in
/// cluster mode, [`Cluster::read_barrier`] of `key`'s group (group 1's for
/// a read that names no key); at once on a single node. Every door's reads
/// of data pass here before they read.
///
/// [`Cluster::read_barrier`]: crate::raft::node::Cluster::read_barrier
pub async fn read_barrier(db: &Db, key: Option<&[u8]>) -> Result<(), Error> {
    match db.cluster() {
        Some(cluster) => cluster.read_barrier(key).await,
        None => Ok(()),
    }
}

/// [`read_barrier`] as a Redis Cluster node takes it: in a sharded
/// cluster a read that names no key answers for the groups `CLUSTER NODES`
/// gives this node ([`keys::node_page`]), so it waits for theirs.
pub async fn node_read_barrier(db: &Db, key: Option<&[u8]>) -> Result<(), Error> {
    match (db.cluster().filter(|c| c.has_groups()), key) {
        (Some(cluster), None) => cluster.redis_read_barrier().await,
        _ => read_barrier(db, key).await,
    }
}

/// The key a read of data names, if it names one: its group answers it.
pub fn read_key(command: &Command) -> Option<&[u8]> {
    match command {
        Command::Get { key }
        | Command::GetWithVersion { key }
        | Command::Exists { key }
        | Command::Ttl { key, .. } => Some(key),
        _ => None,
    }
}

/// Starts several commands, in order, with their writes handed to the log in
/// one message, so they share one log batch (a pipelined burst).
pub async fn start_all(commands: Vec<Command>, db: &Db) -> Vec<Started> {
    if commands.is_empty() {
        return Vec::new();
    }
    let prepared: Vec<Result<Change, Reply>> =
        commands.into_iter().map(|c| prepare(c, db)).collect();
    let changes: Vec<Change> = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut pending = match db.write_all(changes).await {
        Ok(pending) => pending.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) => prepared.iter().map(|_| Err(error_reply(&e))).collect(),
    }
    .into_iter();
    prepared
        .into_iter()
        .map(|p| match p {
            Err(reply) => Started::Done(reply),
            Ok(_) => match pending.next() {
                Some(Ok(write)) => Started::Pending(write),
                Some(Err(reply)) => Started::Done(reply),
                None => Started::Done(lost_write()),
            },
        })
        .collect()
}

/// The reply for a write the log did not answer (a broken invariant, not
/// a client's error).
pub fn lost_write() -> Reply {
    Reply::error(
        ErrorCode::StorageFailed,
        "the log answered fewer writes than it was given",
    )
}

/// Checks a command's limits: `Ok` is a write's [`Change`] to log; `Err` is
/// the reply to give at once (a read's answer, or a refused write's error).
fn prepare(command: Command, db: &Db) -> Result<Change, Reply> {
    let limits = &db.limits;
    match command {
        Command::Set { key, value } => set::op(key, value, limits).map(Change::from),
        Command::Delete { key } => delete::change(key, limits),
        Command::BulkSet { items } => bulk_set::op(items, limits).map(Change::from),
        Command::DeleteMany { keys } => delete_many::change(keys, limits),
        Command::Flush => Ok(Change::from(WriteOp::Clear)),
        Command::SetIf {
            key,
            value,
            condition,
            get,
        } => set_if::change(key, value, condition, get, limits),
        Command::GetDel { key } => get_del::change(key, limits),
        Command::Incr { key, by } => incr::change(key, by, limits),
        Command::Append { key, value } => append::change(key, value, limits),
        Command::SetExpiring {
            key,
            value,
            condition,
            get,
            expiry,
        } => expire::set(key, value, condition, get, expiry, limits),
        Command::Expire { key, expiry, when } => expire::expire(key, expiry, when, limits),
        Command::Persist { key } => expire::persist(key, limits),
        Command::GetEx { key, expiry } => expire::get_ex(key, expiry, limits),
        Command::SetRange { key, offset, value } => set_range::change(key, offset, value, limits),
        Command::IncrByFloat { key, by } => incr_by_float::change(key, by, limits),
        Command::BulkSetIfAbsent { items } => bulk_set::if_absent(items, limits),
        Command::Copy { from, to, replace } => copy::change(from, to, replace, limits),
        Command::Rename { from, to, replace } => copy::rename(from, to, replace, limits),
        Command::Txn {
            compare,
            success,
            failure,
        } => txn::change(compare, success, failure, db),
        Command::OpenSession => session::open(db),
        Command::Once {
            session,
            seq,
            acked,
            command,
        } => session::once(session, seq, acked, *command, db),
        read => Err(self::read(read, db)),
    }
}

/// Whether `db` answers scans by asking every group's leader
/// ([`scan::sharded`]): a sharded cluster, whose group leaders each pass
/// a read barrier for their page, so the caller waits for none of its own.
pub fn scans_every_group(command: &Command, db: &Db) -> bool {
    let scan = matches!(
        command,
        Command::Keys { .. } | Command::Scan { .. } | Command::Range { .. }
    );
    scan && db.cluster().is_some_and(|c| c.has_groups())
}

/// [`read`], except that a scan in a sharded cluster asks every group
/// ([`scans_every_group`]): the reads of a door that waits for its own
/// barrier (gRPC, for its follower reads).
pub async fn read_anywhere(command: Command, db: &Db) -> Reply {
    if let Some(cluster) = db.cluster().filter(|_| scans_every_group(&command, db)) {
        if let Some(reply) = scan::sharded(&command, cluster, db).await {
            return reply;
        }
    }
    read(command, db)
}

/// Answers a read. Called directly for reads that waited behind writes of
/// the same connection.
pub fn read(command: Command, db: &Db) -> Reply {
    let result = match command {
        Command::Get { key } => get::apply(&key, db),
        Command::GetWithVersion { key } => get::with_version(&key, db),
        Command::Exists { key } => exists::apply(&key, db),
        Command::Ttl { key, absolute } => expire::ttl(&key, absolute, db),
        Command::Keys {
            prefix,
            start_after,
            limit,
        } => keys::apply(&prefix, start_after.as_deref(), limit, db),
        Command::Scan {
            prefix,
            start_after,
            limit,
            reverse,
        } => scan::prefix(&prefix, start_after.as_deref(), limit, reverse, db),
        Command::Range {
            start,
            end,
            limit,
            reverse,
        } => scan::range(&start, end.as_deref(), limit, reverse, db),
        Command::Auth { token } => Ok(auth::apply(&token, db)),
        // The connection handler serves these: a streaming backup belongs
        // to its connection (see `backup`).
        Command::Backup { .. } | Command::BackupNext => Err(Reply::error(
            ErrorCode::BackupFailed,
            "Backup is served only on a native connection",
        )),
        Command::Cluster(_) => Err(Reply::error(
            ErrorCode::ClusterFailed,
            "Cluster is served only as a command of its own",
        )),
        // A stream that belongs to its connection (see `watch`).
        Command::Watch { .. } => Err(Reply::error(
            ErrorCode::Malformed,
            "Watch is served only on a native connection",
        )),
        // The connection handler unwraps it (see `indexed`).
        Command::Indexed { .. } => Err(Reply::error(
            ErrorCode::Malformed,
            "Indexed is served only on a native connection",
        )),
        Command::Stats => Ok(Reply::Stats(crate::figures::named(
            &crate::figures::collect(db),
        ))),
        write => {
            debug_assert!(write.is_data_write());
            Err(Reply::error(
                ErrorCode::Malformed,
                "a write was routed as a read",
            ))
        }
    };
    result.unwrap_or_else(|reply| reply)
}

/// The reply for a write's outcome.
pub fn reply_for(outcome: Result<Applied, Error>) -> Reply {
    match outcome {
        Ok(Applied::Stored) => Reply::Ok,
        Ok(Applied::Deleted(b) | Applied::Bool(b)) => Reply::Bool(b),
        Ok(Applied::Value(value)) => Reply::Value(value),
        Ok(Applied::Int(n)) => Reply::Int(n),
        Ok(Applied::Removed(keys)) => Reply::Int(keys.len() as i64),
        Ok(Applied::Txn { succeeded, each }) => Reply::Txn {
            succeeded,
            replies: each.into_iter().map(|a| reply_for(Ok(a))).collect(),
        },
        Ok(Applied::Refused { code, message }) => Reply::error(code, message),
        Ok(Applied::Versioned { value, revisions }) => Reply::Versioned {
            value,
            modified: revisions.modified,
            created: revisions.created,
        },
        Err(e) => error_reply(&e),
    }
}

/// The wire error for a server error.
pub fn error_reply(e: &Error) -> Reply {
    Reply::error(error_code(e), e.to_string())
}

/// The wire error code for a server error.
pub fn error_code(e: &Error) -> ErrorCode {
    match e {
        Error::ShuttingDown => ErrorCode::ShuttingDown,
        Error::Rejected { code, .. } => *code,
        Error::Backup(_) => ErrorCode::BackupFailed,
        Error::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
        _ => ErrorCode::StorageFailed,
    }
}

/// Refuses a count or size over its limit: "`what` of `n` `unit` exceeds the
/// limit of `max` `unit`", with `code`.
fn check_limit(code: ErrorCode, what: &str, n: usize, max: usize, unit: &str) -> Result<(), Reply> {
    if n > max {
        return Err(Reply::error(
            code,
            format!("{what} of {n} {unit} exceeds the limit of {max} {unit}"),
        ));
    }
    Ok(())
}

/// The data to read `key` from, once the key is within the limit: in
/// cluster mode its group's (`Cluster::reader`: `Moved` or `TryAgain` if
/// its slot's data is not here), else the node's.
fn reader(key: &[u8], db: &Db) -> Result<Arc<dyn Engine>, Reply> {
    check_key(key, &db.limits)?;
    match db.cluster() {
        Some(cluster) => cluster.reader(key).map_err(|e| error_reply(&e)),
        None => Ok(db.engine_handle()),
    }
}

fn check_key(key: &[u8], limits: &Limits) -> Result<(), Reply> {
    check_limit(
        ErrorCode::KeyTooLarge,
        "key",
        key.len(),
        limits.max_key,
        "bytes",
    )
}

/// Refuses a value over the limit.
fn check_value(value: &[u8], limits: &Limits) -> Result<(), Reply> {
    check_limit(
        ErrorCode::ValueTooLarge,
        "value",
        value.len(),
        limits.max_value,
        "bytes",
    )
}
