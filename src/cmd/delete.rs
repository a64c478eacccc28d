//! `Delete { key }`: remove a key; the reply says whether it existed.
//!
//! Logged even when the key is absent: whether it exists is only known once
//! the writes queued before it are applied.

use bytes::Bytes;
use kvstore_client::Reply;

use super::{check_key, WriteOp};
use crate::config::Limits;

pub(super) fn op(key: Bytes, limits: &Limits) -> Result<WriteOp, Reply> {
    check_key(&key, limits)?;
    Ok(WriteOp::Delete { key })
}
