//! `Txn { compare, success, failure }`: a compare-and-swap transaction
//! (docs/transactions.md). The commit thread evaluates the compares and
//! runs the chosen branch on what readers see plus the branch's own
//! writes, and logs the final state of every key written as one record,
//! so it is atomic, durable before the reply, and replayed exactly.

use kvstore_client::{Command, Compare, ErrorCode, Reply, Target};

use super::{check_key, check_limit, check_value, prepare};
use crate::db::Db;
use crate::storage::change::{Change, TxnStep};

pub(super) fn change(
    compare: Vec<Compare>,
    success: Vec<Command>,
    failure: Vec<Command>,
    db: &Db,
) -> Result<Change, Reply> {
    check_ops("compares", compare.len(), db)?;
    for c in &compare {
        check_key(&c.key, &db.limits)?;
        if let Target::Value(value) = &c.target {
            check_value(value, &db.limits)?;
        }
    }
    Ok(Change::Txn {
        compare,
        success: branch(success, db)?,
        failure: branch(failure, db)?,
    })
}

/// A branch's commands as steps, each checked as the command alone is.
fn branch(commands: Vec<Command>, db: &Db) -> Result<Vec<TxnStep>, Reply> {
    check_ops(
        "commands in a branch",
        commands.iter().map(weight).sum(),
        db,
    )?;
    commands.into_iter().map(|c| step(c, db)).collect()
}

/// `n` of `what` in one transaction, within `--max-bulk-items` (the
/// limit of a BulkSet's pairs: a transaction is one record like it).
fn check_ops(what: &str, n: usize, db: &Db) -> Result<(), Reply> {
    let max = db.limits.max_bulk_items;
    check_limit(ErrorCode::TooManyItems, "a transaction", n, max, what)
}

/// What a command counts for against the limit of [`check_ops`].
fn weight(command: &Command) -> usize {
    match command {
        Command::BulkSet { items } | Command::BulkSetIfAbsent { items } => items.len(),
        Command::DeleteMany { keys } => keys.len(),
        _ => 1,
    }
    .max(1)
}

fn step(command: Command, db: &Db) -> Result<TxnStep, Reply> {
    if !command.in_txn() {
        return Err(Reply::error(
            ErrorCode::Malformed,
            format!("{} cannot be part of a transaction", command.name()),
        ));
    }
    match command {
        Command::Get { key } => check_key(&key, &db.limits).map(|()| TxnStep::Get(key)),
        Command::Exists { key } => check_key(&key, &db.limits).map(|()| TxnStep::Exists(key)),
        Command::GetWithVersion { key } => {
            check_key(&key, &db.limits).map(|()| TxnStep::Versioned(key))
        }
        write => prepare(write, db).map(TxnStep::Write),
    }
}
