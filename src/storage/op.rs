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
    /// Every key removed in one record, all or none after a crash.
    DeleteMany {
        keys: Vec<Bytes>,
    },
    /// The whole store emptied (FLUSHDB). Replaying it over a fuzzy snapshot
    /// is still exact: it removes every key the snapshot holds, and the
    /// records after it put back what was written later.
    Clear,
    /// `key` holds `value` until `at` (ms since the epoch), then is gone
    /// (docs/design/expiry.md). Absolute, so replay stays idempotent.
    SetExpiring {
        key: Bytes,
        value: Bytes,
        at: u64,
    },
    /// `key`, if it has a value, is gone at `at`.
    ExpireAt {
        key: Bytes,
        at: u64,
    },
    /// `key`, if it has a value, keeps it with no deadline.
    Persist {
        key: Bytes,
    },
    /// The sweep: each of `keys` whose deadline is at or before `now` is
    /// removed. A key written again after the sweep chose it has a later
    /// deadline or none and stays, so replay is idempotent too.
    Expire {
        keys: Vec<Bytes>,
        now: u64,
    },
    /// Several `SetExpiring`s in one record, all or none after a crash (a
    /// slot move's copy, a snapshot's block).
    SetExpiringMany {
        items: Vec<(Bytes, Bytes, u64)>,
    },
    /// `from` removed and `to` set to `value`, with the deadline `at` if
    /// any, in one record (RENAME). The commit thread read `from`; the
    /// record holds the result, so replay stays idempotent.
    Rename {
        from: Bytes,
        to: Bytes,
        value: Bytes,
        at: Option<u64>,
    },
    /// A transaction's writes as the final state of each key it wrote: each
    /// of `puts` holds its value, with its deadline if any, and each of
    /// `deletes` is gone, all in one record and, for readers, at one
    /// instant (docs/transactions.md). A key is named once.
    Txn {
        puts: Vec<(Bytes, Bytes, Option<u64>)>,
        deletes: Vec<Bytes>,
    },
}

impl WriteOp {
    /// The keys it writes (none for `Clear`).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Set { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::SetExpiring { key, .. }
            | WriteOp::ExpireAt { key, .. }
            | WriteOp::Persist { key } => vec![key],
            WriteOp::BulkSet { items } => items.iter().map(|(key, _)| &key[..]).collect(),
            WriteOp::SetExpiringMany { items } => items.iter().map(|(key, ..)| &key[..]).collect(),
            WriteOp::DeleteMany { keys } | WriteOp::Expire { keys, .. } => {
                keys.iter().map(|key| &key[..]).collect()
            }
            WriteOp::Rename { from, to, .. } => vec![from, to],
            WriteOp::Txn { puts, deletes } => (puts.iter().map(|(key, ..)| &key[..]))
                .chain(deletes.iter().map(|key| &key[..]))
                .collect(),
            WriteOp::Clear => Vec::new(),
        }
    }

    /// Its first key, without collecting the others.
    pub fn first_key(&self) -> Option<&[u8]> {
        match self {
            WriteOp::Set { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::SetExpiring { key, .. }
            | WriteOp::ExpireAt { key, .. }
            | WriteOp::Persist { key } => Some(key),
            WriteOp::BulkSet { items } => items.first().map(|(key, _)| &key[..]),
            WriteOp::SetExpiringMany { items } => items.first().map(|(key, ..)| &key[..]),
            WriteOp::DeleteMany { keys } | WriteOp::Expire { keys, .. } => {
                keys.first().map(|key| &key[..])
            }
            WriteOp::Rename { from, .. } => Some(from),
            WriteOp::Txn { puts, deletes } => (puts.first().map(|(key, ..)| &key[..]))
                .or_else(|| deletes.first().map(|key| &key[..])),
            WriteOp::Clear => None,
        }
    }

    /// `key` set to `value`, with the deadline `at` if any.
    pub fn set_with(key: Bytes, value: Bytes, at: Option<u64>) -> WriteOp {
        match at {
            Some(at) => WriteOp::SetExpiring { key, value, at },
            None => WriteOp::Set { key, value },
        }
    }

    /// A `Set` of text, for tests.
    #[cfg(test)]
    pub(crate) fn set(key: &str, value: &str) -> WriteOp {
        WriteOp::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// Roughly how many bytes the op takes in the log, for batching decisions.
    pub fn approx_len(&self) -> usize {
        match self {
            WriteOp::Set { key, value } => 32 + key.len() + value.len(),
            WriteOp::SetExpiring { key, value, .. } => 40 + key.len() + value.len(),
            WriteOp::Delete { key } | WriteOp::Persist { key } => 24 + key.len(),
            WriteOp::ExpireAt { key, .. } => 32 + key.len(),
            WriteOp::BulkSet { items } => {
                24 + items
                    .iter()
                    .map(|(k, v)| 16 + k.len() + v.len())
                    .sum::<usize>()
            }
            WriteOp::DeleteMany { keys } => 24 + keys.iter().map(|k| 8 + k.len()).sum::<usize>(),
            WriteOp::Expire { keys, .. } => 32 + keys.iter().map(|k| 8 + k.len()).sum::<usize>(),
            WriteOp::SetExpiringMany { items } => {
                24 + items
                    .iter()
                    .map(|(k, v, _)| 24 + k.len() + v.len())
                    .sum::<usize>()
            }
            WriteOp::Rename {
                from, to, value, ..
            } => 48 + from.len() + to.len() + value.len(),
            WriteOp::Txn { puts, deletes } => {
                32 + (puts.iter().map(|(k, v, _)| 25 + k.len() + v.len())).sum::<usize>()
                    + deletes.iter().map(|k| 8 + k.len()).sum::<usize>()
            }
            WriteOp::Clear => 16,
        }
    }
}
