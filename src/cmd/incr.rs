//! `Incr { key, by }`: add to a decimal counter. The commit thread reads the
//! current value and logs the result as a plain Set, so replay never adds
//! twice; a value that is not an integer, or an overflow, changes nothing.

use bytes::Bytes;
use kvstore_client::Reply;

use super::check_key;
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(key: Bytes, by: i64, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    Ok(Change::Incr { key, by })
}
