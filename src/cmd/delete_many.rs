//! `DeleteMany { keys }`: remove many keys as one log record; the reply counts
//! those that existed (the record names only them: `Change::DeleteMany`).

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_key, check_limit};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(keys: Vec<Bytes>, limits: &Limits) -> Result<Change, Reply> {
    check_limit(
        ErrorCode::TooManyItems,
        "DeleteMany",
        keys.len(),
        limits.max_bulk_items,
        "keys",
    )?;
    for key in &keys {
        check_key(key, limits)?;
    }
    Ok(Change::DeleteMany { keys })
}
