//! `BulkSet { items }`: store many pairs as one log record, all or nothing;
//! and `BulkSetIfAbsent`, the same only if none of the keys exists.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_key, check_limit, check_value, WriteOp};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn op(items: Vec<(Bytes, Bytes)>, limits: &Limits) -> Result<WriteOp, Reply> {
    checked(items, limits).map(|items| WriteOp::BulkSet { items })
}

/// `BulkSetIfAbsent { items }`: stored only if no key exists (decided on
/// the commit thread).
pub(super) fn if_absent(items: Vec<(Bytes, Bytes)>, limits: &Limits) -> Result<Change, Reply> {
    checked(items, limits).map(|items| Change::BulkSetIfAbsent { items })
}

/// `items` if their count and every key and value are within the limits.
fn checked(items: Vec<(Bytes, Bytes)>, limits: &Limits) -> Result<Vec<(Bytes, Bytes)>, Reply> {
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
    Ok(items)
}
