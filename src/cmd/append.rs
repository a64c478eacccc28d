//! `Append { key, value }`: extend a value. Logged as a Set of the whole new
//! value; refused if the result would pass the value limit.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_key, check_value};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(key: Bytes, value: Bytes, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    Ok(Change::Append {
        key,
        value,
        max_value: limits.max_value,
    })
}
