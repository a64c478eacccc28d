//! `Keys { prefix, start_after, limit }`: one page of keys in ascending byte
//! order. `limit: 0` means [`DEFAULT_KEYS_PAGE`]; larger limits are capped at
//! [`MAX_KEYS_PAGE`], and a page also stops before its keys pass half a frame,
//! so the reply always fits. `more` tells the client to ask again with
//! `start_after` set to the last key.

use kvstore_client::protocol::{DEFAULT_KEYS_PAGE, MAX_KEYS_PAGE};
use kvstore_client::Reply;

use super::check_key;
use crate::db::Db;

pub(super) fn apply(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
    db: &Db,
) -> Result<Reply, Reply> {
    check_key(prefix, &db.limits)?;
    if let Some(after) = start_after {
        check_key(after, &db.limits)?;
    }
    let page = db.store().keys(
        prefix,
        start_after,
        page_limit(limit),
        db.limits.max_reply_bytes,
    );
    Ok(Reply::Keys {
        keys: page.keys,
        more: page.more,
    })
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
