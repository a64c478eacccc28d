//! `IncrByFloat { key, by }`: add a decimal number to a value, in f64.
//! The increment is parsed here; the commit thread reads the value, adds,
//! and logs the result as a Set (keeping the deadline), so replay never
//! adds twice.

use bytes::Bytes;
use kvstore_client::{ErrorCode, Reply};

use super::check_key;
use crate::config::Limits;
use crate::storage::change::{parse_f64, Change};

pub(super) fn change(key: Bytes, by: Bytes, limits: &Limits) -> Result<Change, Reply> {
    check_key(&key, limits)?;
    match parse_f64(&by) {
        Some(_) => Ok(Change::IncrByFloat { key, by }),
        None => Err(Reply::error(
            ErrorCode::NotAFloat,
            "value is not a valid float",
        )),
    }
}
