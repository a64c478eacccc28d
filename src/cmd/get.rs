//! `Get { key }`: the value of a key, or none.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{error_reply, reader};
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    value(key, db).map(Reply::Value)
}

/// The value of `key`, or the refusal of a key over the limit.
pub fn value(key: &[u8], db: &Db) -> Result<Option<Bytes>, Reply> {
    reader(key, db)?.get(key).map_err(|e| error_reply(&e))
}
