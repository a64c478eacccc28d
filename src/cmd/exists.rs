//! `Exists { key }`: whether a key has a value.

use bytes::Bytes;
use kvstore_client::Reply;

use super::check_key;
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    check_key(key, &db.limits)?;
    Ok(Reply::Bool(db.store().contains(key)))
}

/// How many of `keys` have a value (a repeated key counts again: RESP
/// `EXISTS`); refused whole if one is over the key limit.
pub fn count(keys: &[Bytes], db: &Db) -> Result<usize, Reply> {
    for key in keys {
        check_key(key, &db.limits)?;
    }
    let store = db.store();
    Ok(keys.iter().filter(|key| store.contains(key)).count())
}
