//! `Scan { prefix, start_after, limit, reverse }` and `Range { start, end,
//! limit, reverse }`: one page of key-value pairs in key order, as `Keys`
//! pages keys. Page sizes as for `Keys` ([`page_limit`]), and a page stops before its pairs pass half a
//! frame (a page holds at least one pair, which always fits: a key and a value
//! within their limits fit in a frame). The store holds the read locks of all
//! shards while it fills a page, so a page is one instant's view.

use kvstore_client::{Command, Reply};

use super::keys::{check_walk, page_limit};
use super::{check_key, error_reply};
use crate::db::Db;
use crate::engine::Span;
use crate::raft::node::Cluster;

pub(super) fn prefix(
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
    reverse: bool,
    db: &Db,
) -> Result<Reply, Reply> {
    page(&walk(prefix, start_after, reverse, db)?, limit, db)
}

pub(super) fn range(
    start: &[u8],
    end: Option<&[u8]>,
    limit: u32,
    reverse: bool,
    db: &Db,
) -> Result<Reply, Reply> {
    page(&bounded(start, end, reverse, db)?, limit, db)
}

/// `Keys`, `Scan` and `Range` in a sharded cluster: one page over every
/// group (`Cluster::scan`); `None` for any other command.
pub(super) async fn sharded(command: &Command, cluster: &Cluster, db: &Db) -> Option<Reply> {
    let (span, limit, keys_only) = match command {
        Command::Keys {
            prefix,
            start_after,
            limit,
        } => (walk(prefix, start_after.as_deref(), false, db), limit, true),
        Command::Scan {
            prefix,
            start_after,
            limit,
            reverse,
        } => (
            walk(prefix, start_after.as_deref(), *reverse, db),
            limit,
            false,
        ),
        Command::Range {
            start,
            end,
            limit,
            reverse,
        } => (bounded(start, end.as_deref(), *reverse, db), limit, false),
        _ => return None,
    };
    let span = match span {
        Ok(span) => span,
        Err(refusal) => return Some(refusal),
    };
    let max_bytes = db.limits.max_reply_bytes;
    Some(
        match cluster
            .scan(span, page_limit(*limit), max_bytes, keys_only)
            .await
        {
            Ok((pairs, more)) if keys_only => Reply::Keys {
                keys: pairs.into_iter().map(|(key, _)| key).collect(),
                more,
            },
            Ok((pairs, more)) => Reply::Pairs { pairs, more },
            Err(e) => error_reply(&e),
        },
    )
}

/// The span of a walk by prefix, once its keys are within the limit.
fn walk(prefix: &[u8], start_after: Option<&[u8]>, reverse: bool, db: &Db) -> Result<Span, Reply> {
    check_walk(prefix, start_after, &db.limits)?;
    Ok(Span::prefix(prefix, start_after, reverse))
}

/// The span of a range, once its keys are within the limit.
fn bounded(start: &[u8], end: Option<&[u8]>, reverse: bool, db: &Db) -> Result<Span, Reply> {
    // The next ascending page starts at the last key plus one 0x00 byte, so
    // a start may be one byte longer than a key.
    check_key(&start[..start.len().saturating_sub(1)], &db.limits)?;
    if let Some(end) = end {
        check_key(end, &db.limits)?;
    }
    Ok(Span::range(start, end, reverse))
}

fn page(span: &Span, limit: u32, db: &Db) -> Result<Reply, Reply> {
    let (pairs, more) = (db.engine())
        .pairs(span, page_limit(limit), db.limits.max_reply_bytes)
        .map_err(|e| error_reply(&e))?;
    Ok(Reply::Pairs { pairs, more })
}
