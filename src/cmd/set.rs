//! `Set { key, value }`: store a value, replacing any previous one.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_key, check_value, WriteOp};
use crate::config::Limits;

pub(super) fn op(key: Bytes, value: Bytes, limits: &Limits) -> Result<WriteOp, Reply> {
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    Ok(WriteOp::Set { key, value })
}
