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

/// `expiry` as a deadline in ms since the epoch, given the time `now`:
/// `None` keeps the key's, `Some(None)` removes it.
fn deadline(expiry: Expiry, now: u64) -> Option<Option<u64>> {
    match expiry {
        Expiry::In(ms) => Some(Some(now.saturating_add(ms))),
        Expiry::At(at) => Some(Some(at)),
        Expiry::Keep => None,
        Expiry::Never => Some(None),
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
    Ok(match deadline(expiry, system_ms()) {
        Some(None) => Change::SetIf {
            key,
            value,
            condition,
            get,
        },
        at => Change::SetExpiring {
            key,
            value,
            condition,
            get,
            at: at.flatten(),
        },
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
    let Some(Some(at)) = deadline(expiry, now) else {
        return Err(Reply::error(
            ErrorCode::Malformed,
            "Expire needs a time: Keep and Never are for SetExpiring and GetEx",
        ));
    };
    Ok(Change::Expire { key, at, now, when })
}

pub(super) fn get_ex(key: Bytes, expiry: Expiry, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    let now = system_ms();
    let at = deadline(expiry, now);
    Ok(Change::GetEx { key, at, now })
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
