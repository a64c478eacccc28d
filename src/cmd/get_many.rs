//! The values of several keys at one instant (RESP `MGET`): the store holds
//! the read locks of the keys' shards together.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_limit, check_read, error_reply};
use crate::db::Db;

/// One value (or none) per key, in order; refused whole if there are more
/// keys than a bulk command may name or one is over the key limit.
pub fn apply(keys: &[Bytes], db: &Db) -> Result<Vec<Option<Bytes>>, Reply> {
    check_limit(
        ErrorCode::TooManyItems,
        "MGET",
        keys.len(),
        db.limits.max_bulk_items,
        "keys",
    )?;
    for key in keys {
        check_read(key, db)?;
    }
    db.engine().get_many(keys).map_err(|e| error_reply(&e))
}
