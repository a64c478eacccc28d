//! `Txn { compare, success, failure }`: a compare-and-swap transaction
//! (docs/transactions.md). The commit thread evaluates the compares and
//! runs the chosen branch on what readers see plus the branch's own
//! writes, and logs the final state of every key written as one record,
//! so it is atomic, durable before the reply, and replayed exactly.

use kvstore_client::{Compare, ErrorCode, Reply, Target, TxnOp};

use super::{check_key, check_limit, check_value};
use crate::config::Limits;
use crate::storage::change::Change;

/// The most compares, and the most operations in a branch (a
/// `DeleteMany` counts its keys): etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

pub(super) fn change(
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
    limits: &Limits,
) -> Result<Change, Reply> {
    check_ops("compares", compare.len())?;
    for c in &compare {
        check_key(&c.key, limits)?;
        if let Target::Value(value) = &c.target {
            check_value(value, limits)?;
        }
    }
    for branch in [&success, &failure] {
        check_ops("operations in a branch", branch.iter().map(weight).sum())?;
        for op in branch.iter() {
            check(op, limits)?;
        }
    }
    Ok(Change::Txn {
        compare,
        success,
        failure,
    })
}

/// `n` of `what` in one transaction, within [`MAX_TXN_OPS`].
fn check_ops(what: &str, n: usize) -> Result<(), Reply> {
    check_limit(
        ErrorCode::TooManyItems,
        "a transaction",
        n,
        MAX_TXN_OPS,
        what,
    )
}

/// What an operation counts for against [`MAX_TXN_OPS`].
fn weight(op: &TxnOp) -> usize {
    op.keys().len().max(1)
}

fn check(op: &TxnOp, limits: &Limits) -> Result<(), Reply> {
    for key in op.keys() {
        check_key(key, limits)?;
    }
    match op {
        TxnOp::Set { value, .. } => check_value(value, limits),
        _ => Ok(()),
    }
}
