//! `Exists { key }`: whether a key has a value.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{error_reply, reader};
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    let found = reader(key, db)?
        .contains(key)
        .map_err(|e| error_reply(&e))?;
    Ok(Reply::Bool(found))
}

/// How many of `keys` have a value (a repeated key counts again: RESP
/// `EXISTS`); refused whole if one is over the key limit.
pub fn count(keys: &[Bytes], db: &Db) -> Result<usize, Reply> {
    let readers = (keys.iter())
        .map(|key| reader(key, db))
        .collect::<Result<Vec<_>, Reply>>()?;
    let mut n = 0;
    for (key, reader) in keys.iter().zip(readers) {
        n += usize::from(reader.contains(key).map_err(|e| error_reply(&e))?);
    }
    Ok(n)
}
