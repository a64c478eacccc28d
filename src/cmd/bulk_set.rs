//! `BulkSet { items }`: store many pairs as one log record, all or nothing.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_key, check_limit, check_value, WriteOp};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn op(items: Vec<(Bytes, Bytes)>, limits: &Limits) -> Result<WriteOp, Reply> {
    check_limit(
        ErrorCode::TooManyItems,
        "BulkSet",
        items.len(),
        limits.max_bulk_items,
        "items",
    )?;
    for (key, value) in &items {
        check_key(key, limits)?;
        check_value(value, limits)?;
    }
    Ok(WriteOp::BulkSet { items })
}

/// `BulkSetIfAbsent { items }`: the same checks, then stored only if no
/// key exists (decided on the commit thread).
pub(super) fn if_absent(items: Vec<(Bytes, Bytes)>, limits: &Limits) -> Result<Change, Reply> {
    match op(items, limits)? {
        WriteOp::BulkSet { items } => Ok(Change::BulkSetIfAbsent { items }),
        _ => unreachable!("op makes a BulkSet"),
    }
}
