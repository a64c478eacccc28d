//! `Copy { from, to, replace }`: the value and deadline of one key under
//! another, resolved on the commit thread and logged as a Set of `to`; and
//! `Rename`, which also removes `from`, in the same record.

use bytes::Bytes;
use kvstore_client::Reply;

use super::check_key;
use crate::config::Limits;
use crate::storage::change::Change;

pub(super) fn change(
    from: Bytes,
    to: Bytes,
    replace: bool,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&from, limits)?;
    check_key(&to, limits)?;
    Ok(Change::Copy { from, to, replace })
}

pub(super) fn rename(
    from: Bytes,
    to: Bytes,
    replace: bool,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_key(&from, limits)?;
    check_key(&to, limits)?;
    Ok(Change::Rename { from, to, replace })
}
