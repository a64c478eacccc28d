//! `Get { key }`: the value of a key, or none.

use kvstore_client::Reply;

use super::check_key;
use crate::db::Db;

pub(super) fn apply(key: &[u8], db: &Db) -> Result<Reply, Reply> {
    check_key(key, &db.limits)?;
    Ok(Reply::Value(db.store().get(key)))
}
