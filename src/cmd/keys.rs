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
    let limit = match limit {
        0 => DEFAULT_KEYS_PAGE,
        n => n.min(MAX_KEYS_PAGE),
    };
    let page = db.store().keys(
        prefix,
        start_after,
        limit as usize,
        db.limits.max_reply_bytes,
    );
    Ok(Reply::Keys {
        keys: page.keys,
        more: page.more,
    })
}
