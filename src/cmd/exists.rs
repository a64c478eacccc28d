//! `Exists { key }`: whether a key has a value.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_read, error_reply};
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    check_read(key, db)?;
    let found = db.engine().contains(key).map_err(|e| error_reply(&e))?;
    Ok(Reply::Bool(found))
}

/// How many of `keys` have a value (a repeated key counts again: RESP
/// `EXISTS`); refused whole if one is over the key limit.
pub fn count(keys: &[Bytes], db: &Db) -> Result<usize, Reply> {
    for key in keys {
        check_read(key, db)?;
    }
    let mut n = 0;
    for key in keys {
        n += usize::from(db.engine().contains(key).map_err(|e| error_reply(&e))?);
    }
    Ok(n)
}
