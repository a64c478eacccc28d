//! The database handle a connection works with: the store for reads, the
//! committer for writes, and the limits every command checks.

use std::sync::Arc;

use crate::auth::Auth;
use crate::commit::{Committer, PendingWrite};
use crate::config::Limits;
use crate::error::Error;
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
}

impl Db {
    pub fn new(store: Arc<Store>, committer: Committer, limits: Limits, auth: Arc<Auth>) -> Db {
        Db {
            store,
            committer,
            limits,
            auth,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queues a write for the log; the returned [`PendingWrite`] resolves once
    /// it is durable and visible.
    pub async fn write(&self, change: impl Into<Change>) -> Result<PendingWrite, Error> {
        self.committer.submit(change).await
    }
}
