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

/// How many keys there are (RESP `DBSIZE`).
pub fn count(db: &Db) -> u64 {
    db.engine().len()
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
