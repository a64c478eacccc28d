//! `Scan { prefix, start_after, limit, reverse }` and `Range { start, end,
//! limit, reverse }`: one page of key-value pairs in key order, as `Keys`
//! pages keys. Page sizes as for `Keys` ([`page_limit`]), and a page stops before its pairs pass half a
//! frame (a page holds at least one pair, which always fits: a key and a value
//! within their limits fit in a frame). The store holds the read locks of all
//! shards while it fills a page, so a page is one instant's view.

use kvstore_client::Reply;

use super::keys::{check_walk, page_limit};
use super::{check_key, error_reply};
use crate::db::Db;
use crate::engine::Span;

pub(super) fn prefix(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
    reverse: bool,
    db: &Db,
) -> Result<Reply, Reply> {
    check_walk(prefix, start_after, &db.limits)?;
    page(&Span::prefix(prefix, start_after, reverse), limit, db)
}

pub(super) fn range(
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
    reverse: bool,
    db: &Db,
) -> Result<Reply, Reply> {
    // The next ascending page starts at the last key plus one 0x00 byte, so
    // a start may be one byte longer than a key.
    check_key(&start[..start.len().saturating_sub(1)], &db.limits)?;
    if let Some(end) = end {
        check_key(end, &db.limits)?;
    }
    page(&Span::range(start, end, reverse), limit, db)
}

fn page(span: &Span, limit: u32, db: &Db) -> Result<Reply, Reply> {
    let (pairs, more) = (db.engine())
        .pairs(span, page_limit(limit), db.limits.max_reply_bytes)
        .map_err(|e| error_reply(&e))?;
    Ok(Reply::Pairs { pairs, more })
}
