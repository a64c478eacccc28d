//! `SetRange { key, offset, value }`: overwrite part of a value. Resolved
//! on the commit thread and logged as a Set of the whole new value, which
//! keeps the key's deadline; refused before anything is allocated if the
//! result would pass the value limit.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_key, check_value};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(
    key: Bytes,
    offset: u64,
    value: Bytes,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    Ok(Change::SetRange {
        key,
        offset,
        value,
        max_value: limits.max_value,
    })
}
