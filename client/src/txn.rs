//! Compare-and-swap transactions ([`Command::Txn`]), built a step at a
//! time: [`Transaction::new`], then [`Transaction::when`] for each test,
//! [`Transaction::then`] and [`Transaction::otherwise`] for each branch's
//! operations, and [`Client::txn`](crate::Client::txn) to run it.

use bytes::Bytes;

use crate::{Command, Compare, CompareOp, Reply, Target};

/// A transaction being built.
///
/// ```no_run
/// # async fn demo(client: kvstore_client::Client) -> Result<(), kvstore_client::Error> {
/// use kvstore_client::{Command, CompareOp, Target, Transaction};
/// let seen = client.get_with_version("config").await?.map_or(0, |v| v.modified);
/// let txn = Transaction::new()
///     .when("config", Target::ModRevision(seen), CompareOp::Equal)
///     .then(Command::Set { key: "config".into(), value: "v2".into() });
/// let done = client.txn(txn).await?;
/// println!("stored: {}", done.succeeded);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    compare: Vec<Compare>,
    success: Vec<Command>,
    failure: Vec<Command>,
}

impl Transaction {
    /// A transaction with no tests (it always succeeds) and no operations.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Adds a test: `key`'s `target` compared with `op`.
    pub fn when(mut self, key: impl AsRef<[u8]>, target: Target, op: CompareOp) -> Transaction {
        let key = Bytes::copy_from_slice(key.as_ref());
        self.compare.push(Compare { key, target, op });
        self
    }

    /// Adds a command to run if every test holds (a write of data, or a
    /// `Get`, `Exists` or `GetWithVersion`: [`Command::in_txn`]).
    pub fn then(mut self, command: Command) -> Transaction {
        self.success.push(command);
        self
    }

    /// Adds a command to run if a test does not hold.
    pub fn otherwise(mut self, command: Command) -> Transaction {
        self.failure.push(command);
        self
    }

    pub(crate) fn command(self) -> Command {
        Command::Txn {
            compare: self.compare,
            success: self.success,
            failure: self.failure,
        }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDone {
    /// Every test held, so the `then` operations ran (else the
    /// `otherwise` ones).
    pub succeeded: bool,
    /// The reply of each command that ran, in order, as the command alone
    /// would answer (an `Error` for one that wrote nothing).
    pub replies: Vec<Reply>,
}
