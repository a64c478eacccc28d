//! `SetIf { key, value, condition, get }`: a Set that happens only if the key
//! is absent (or present), atomically with the check; with `get`, the reply
//! is the old value. Resolved on the commit thread (`crate::storage::change`).

use bytes::Bytes;
use kvstore_client::{Condition, Reply};

use super::{check_key, check_value};
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(
    key: Bytes,
    value: Bytes,
    condition: Condition,
    get: bool,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    Ok(Change::SetIf {
        key,
        value,
        condition,
        get,
    })
}
