//! `Keys { prefix, start_after, limit }`: one page of keys in ascending byte
//! order. `limit: 0` means [`DEFAULT_KEYS_PAGE`]; larger limits are capped at
//! [`MAX_KEYS_PAGE`], and a page also stops before its keys pass half a frame,
//! so the reply always fits. `more` tells the client to ask again with
//! `start_after` set to the last key.

use kvstore_client::protocol::{DEFAULT_KEYS_PAGE, MAX_KEYS_PAGE};
use kvstore_client::Reply;

use super::{check_key, error_reply};
use crate::config::Limits;
use crate::db::Db;
use crate::engine::Span;
use crate::storage::store::KeysPage;

pub(super) fn apply(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
    db: &Db,
) -> Result<Reply, Reply> {
    let page = page(
        prefix,
        start_after,
        page_limit(limit),
        db.limits.max_reply_bytes,
        db,
    )?;
    Ok(Reply::Keys {
        keys: page.keys,
        more: page.more,
    })
}

/// At most `limit` keys that start with `prefix`, after `start_after`, in
/// ascending order, stopping before they pass `max_bytes` (RESP `KEYS` and
/// `SCAN` set their own page sizes).
pub fn page(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: usize,
    max_bytes: usize,
    db: &Db,
) -> Result<KeysPage, Reply> {
    check_walk(prefix, start_after, &db.limits)?;
    (db.engine())
        .keys(prefix, start_after, limit, max_bytes)
        .map_err(|e| error_reply(&e))
}

/// [`page`] as a Redis Cluster node answers it (RESP `SCAN`, `KEYS`): in a
/// sharded cluster, over the groups `CLUSTER NODES` gives this node
/// ([`crate::raft::node::Cluster::redis_groups`]), whose leaders walk
/// their slots; a cluster client asks every master and joins the answers.
pub async fn node_page(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: usize,
    max_bytes: usize,
    db: &Db,
) -> Result<KeysPage, Reply> {
    let Some(cluster) = db.cluster().filter(|c| c.has_groups()) else {
        return page(prefix, start_after, limit, max_bytes, db);
    };
    check_walk(prefix, start_after, &db.limits)?;
    let groups = cluster.redis_groups().into_iter().collect();
    let span = Span::prefix(prefix, start_after, false);
    let (pairs, more) = (cluster
        .scan_groups(&groups, span, limit, max_bytes, true)
        .await)
        .map_err(|e| error_reply(&e))?;
    let keys = pairs.into_iter().map(|(key, _)| key).collect();
    Ok(KeysPage { keys, more })
}

/// Refuses a walk by prefix whose prefix or resume key is over the key limit
/// (shared by `Keys` and `Scan`).
pub(super) fn check_walk(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limits: &Limits,
) -> Result<(), Reply> {
    check_key(prefix, limits)?;
    start_after.map_or(Ok(()), |after| check_key(after, limits))
}

/// How many keys there are (RESP `DBSIZE`): in a sharded cluster, in the
/// groups of [`node_page`] that run on this node.
pub fn count(db: &Db) -> u64 {
    match db.cluster().filter(|c| c.has_groups()) {
        Some(cluster) => cluster.keys_in(&cluster.redis_groups()),
        None => db.engine().len(),
    }
}

/// How many of [`count`]'s keys have a deadline.
pub fn count_expiring(db: &Db) -> u64 {
    match db.cluster().filter(|c| c.has_groups()) {
        Some(cluster) => cluster.expiring_in(&cluster.redis_groups()),
        None => db.engine().expiring(),
    }
}

/// A request's page size: `0` asks for the default page, and no page is
/// larger than [`MAX_KEYS_PAGE`] (shared by `Keys`, `Scan` and `Range`).
pub(super) fn page_limit(limit: u32) -> usize {
    let limit = match limit {
        0 => DEFAULT_KEYS_PAGE,
        n => n.min(MAX_KEYS_PAGE),
    };
    limit as usize
}
