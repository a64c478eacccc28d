//! `Delete { key }`: remove a key; the reply says whether it existed.
//!
//! Decided by the log's writer, on the writes queued before it: a delete
//! of a missing key logs nothing (see `Change::Delete`).

use bytes::Bytes;
use kvstore_client::Reply;

use super::check_key;
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(key: Bytes, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    Ok(Change::Delete { key })
}
