//! `DeleteMany { keys }`: remove many keys as one log record; the reply counts
//! those that existed.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_key, check_limit, WriteOp};
use crate::config::Limits;

pub(super) fn op(keys: Vec<Bytes>, limits: &Limits) -> Result<WriteOp, Reply> {
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
    Ok(WriteOp::DeleteMany { keys })
}
