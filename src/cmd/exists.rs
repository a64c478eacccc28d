//! `Exists { key }`: whether a key has a value.

use kvstore_client::Reply;

use super::check_key;
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    check_key(key, &db.limits)?;
    Ok(Reply::Bool(db.store().contains(key)))
}
