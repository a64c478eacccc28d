//! `Get { key }`: the value of a key, or none; `GetWithVersion { key }`:
//! with its revisions.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_key, error_reply, reader};
use crate::db::Db;
use crate::engine::Revisions;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    value(key, db).map(Reply::Value)
}

/// The value of `key`, or the refusal of a key over the limit.
pub fn value(key: &[u8], db: &Db) -> Result<Option<Bytes>, Reply> {
    reader(key, db)?.get(key).map_err(|e| error_reply(&e))
}

pub(super) fn with_version(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    let (value, revisions) = match revised(key, db)? {
        Some((value, revisions)) => (Some(value), revisions),
        None => (None, Revisions::default()),
    };
    Ok(Reply::Versioned {
        value,
        modified: revisions.modified,
        created: revisions.created,
    })
}

/// The value of `key` and its revisions (in cluster mode read between two
/// Raft batches: see `Cluster::read_revised`).
pub fn revised(key: &[u8], db: &Db) -> Result<Option<(Bytes, Revisions)>, Reply> {
    check_key(key, &db.limits)?;
    let read = match db.cluster() {
        Some(cluster) => cluster.read_revised(key),
        None => db.engine().get_revised(key),
    };
    read.map_err(|e| error_reply(&e))
}
