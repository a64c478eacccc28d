//! The writes the log records: what a log record's body means.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One write, as the log stores it and the store applies it. The variant's
/// position is its tag in the log: variants are only ever appended.
///
/// Each is idempotent (it sets or removes absolute values), which is what lets
/// recovery replay a log segment over a snapshot that already holds some of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Set {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// All items in one record: after a crash either the record is whole and
    /// every item is applied, or it is torn and none is.
    BulkSet {
        items: Vec<(Bytes, Bytes)>,
    },
}

impl WriteOp {
    /// Roughly how many bytes the op takes in the log, for batching decisions.
    pub fn approx_len(&self) -> usize {
        match self {
            WriteOp::Set { key, value } => 32 + key.len() + value.len(),
            WriteOp::Delete { key } => 24 + key.len(),
            WriteOp::BulkSet { items } => {
                24 + items
                    .iter()
                    .map(|(k, v)| 16 + k.len() + v.len())
                    .sum::<usize>()
            }
        }
    }
}
