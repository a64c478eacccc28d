//! `GetDel { key }`: remove a key and return its value. Logged only if the
//! key existed when the commit thread resolved it.

use bytes::Bytes;
use kvstore_client::Reply;

use super::check_key;
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(key: Bytes, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    Ok(Change::GetDel { key })
}
