//! The database handle a connection works with: the store for reads, the
//! committer for writes, the limits every command checks, and the counters
//! all doors share.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Auth;
use crate::backup::Tees;
use crate::commit::{Committer, LogFigures, PendingWrite};
use crate::config::Limits;
use crate::error::Error;
use crate::stats::Stats;
use crate::storage::change::Change;
use crate::storage::store::Store;

/// Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Db {
    /// Read directly: every value in it is already durable.
    store: Arc<Store>,
    /// Writes go through the group-commit thread, never straight to the store.
    committer: Committer,
    pub limits: Limits,
    /// The token check, shared by all connections.
    pub auth: Arc<Auth>,
    /// Connections and commands, counted by all doors.
    pub stats: Arc<Stats>,
    /// Where `Backup { name }` writes (`--backup-dir`); `None`: only
    /// streamed backups.
    pub backup_dir: Option<PathBuf>,
}

impl Db {
    pub fn new(store: Arc<Store>, committer: Committer, limits: Limits, auth: Arc<Auth>) -> Db {
        Db {
            store,
            committer,
            limits,
            auth,
            stats: Arc::new(Stats::default()),
            backup_dir: None,
        }
    }

    /// What the log has done since start.
    pub fn log(&self) -> &LogFigures {
        self.committer.figures()
    }

    /// Whether the log has failed (writes are refused until a restart).
    pub fn log_failed(&self) -> bool {
        self.committer.is_poisoned()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for a backup that outlives one call.
    pub fn store_handle(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The tees running backups see applied writes through.
    pub fn tees(&self) -> &Arc<Tees> {
        self.committer.tees()
    }

    /// Queues a write for the log; the returned [`PendingWrite`] resolves once
    /// it is durable and visible.
    pub async fn write(&self, change: impl Into<Change>) -> Result<PendingWrite, Error> {
        self.committer.submit(change).await
    }

    /// Queues several writes as one message, so they land in one log batch.
    pub async fn write_all(&self, changes: Vec<Change>) -> Result<Vec<PendingWrite>, Error> {
        self.committer.submit_all(changes).await
    }
}
