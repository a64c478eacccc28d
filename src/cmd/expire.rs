//! Deadlines (docs/expiry.md): `SetExpiring`, `Expire`, `Persist`, `Ttl`.
//!
//! A relative time (`Expiry::In`) becomes an absolute one here, by the
//! clock of the node that takes the command, so the log (and a Raft
//! entry) holds only absolute times and applying stays deterministic.
//! The writes are resolved on the commit thread like `SetIf`
//! (`crate::storage::change`).

use bytes::Bytes;
use kvstore_client::{Condition, ErrorCode, ExpireWhen, Expiry, Reply};

use super::{check_key, check_value, error_reply, reader};
use crate::config::Limits;
use crate::db::Db;
use crate::storage::change::Change;
use crate::storage::clock::system_ms;

/// `expiry` as a deadline in ms since the epoch, given the time `now`
/// (`None`: keep the key's).
fn deadline(expiry: Expiry, now: u64) -> Option<u64> {
    match expiry {
        Expiry::In(ms) => Some(now.saturating_add(ms)),
        Expiry::At(at) => Some(at),
        Expiry::Keep => None,
    }
}

pub(super) fn set(
    key: Bytes,
    value: Bytes,
    condition: Condition,
    get: bool,
    expiry: Expiry,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    let at = deadline(expiry, system_ms());
    Ok(Change::SetExpiring {
        key,
        value,
        condition,
        get,
        at,
    })
}

pub(super) fn expire(
    key: Bytes,
    expiry: Expiry,
    when: ExpireWhen,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    let now = system_ms();
    let Some(at) = deadline(expiry, now) else {
        return Err(Reply::error(
            ErrorCode::Malformed,
            "Expire needs a time: Keep is for SetExpiring",
        ));
    };
    Ok(Change::Expire { key, at, now, when })
}

pub(super) fn persist(key: Bytes, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    Ok(Change::Persist { key })
}

/// The time left to `key`'s deadline in ms (or with `absolute` the
/// deadline), -1 for a key without one, -2 for a missing key.
pub(super) fn ttl(key: &[u8], absolute: bool, db: &Db) -> Result<Reply, Reply> {
    let deadline = reader(key, db)?
        .deadline(key)
        .map_err(|e| error_reply(&e))?;
    let n = match deadline {
        None => -2,
        Some(None) => -1,
        Some(Some(at)) if absolute => at as i64,
        Some(Some(at)) => at.saturating_sub(system_ms()) as i64,
    };
    Ok(Reply::Int(n))
}
