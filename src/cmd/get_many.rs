//! The values of several keys at one instant (RESP `MGET`): the store holds
//! the read locks of the keys' shards together.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::{check_limit, error_reply, reader};
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
    let Some(first) = keys.first() else {
        return Ok(Vec::new());
    };
    let engine = reader(first, db)?;
    for key in &keys[1..] {
        if !std::sync::Arc::ptr_eq(&reader(key, db)?, &engine) {
            return Err(Reply::error(
                ErrorCode::CrossSlot,
                "MGET keys are served by different groups",
            ));
        }
    }
    engine.get_many(keys).map_err(|e| error_reply(&e))
}
