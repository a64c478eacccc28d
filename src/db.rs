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
use crate::raft::node::Cluster;
use crate::stats::Stats;
use crate::storage::change::Change;
use crate::storage::store::Store;

/// Where writes go.
#[derive(Clone)]
enum Writer {
    /// Single-node mode: the group-commit thread.
    Local(Committer),
    /// Cluster mode (`--node-id`): proposed through Raft.
    Cluster(Arc<Cluster>),
}

/// Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Db {
    /// Read directly: every value in it is already durable (in cluster
    /// mode: committed by a majority).
    store: Arc<Store>,
    /// Writes go through the group-commit thread or the cluster, never
    /// straight to the store.
    writer: Writer,
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
            writer: Writer::Local(committer),
            limits,
            auth,
            stats: Arc::new(Stats::default()),
            backup_dir: None,
        }
    }

    /// A database whose writes go through the cluster `cluster` (whose
    /// state machine applies them to `store`).
    pub fn clustered(
        store: Arc<Store>,
        cluster: Arc<Cluster>,
        limits: Limits,
        auth: Arc<Auth>,
    ) -> Db {
        Db {
            store,
            writer: Writer::Cluster(cluster),
            limits,
            auth,
            stats: Arc::new(Stats::default()),
            backup_dir: None,
        }
    }

    /// The cluster this node belongs to, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.writer {
            Writer::Local(_) => None,
            Writer::Cluster(cluster) => Some(cluster),
        }
    }

    /// What the log has done since start (single-node mode; zeros in
    /// cluster mode).
    pub fn log(&self) -> &LogFigures {
        match &self.writer {
            Writer::Local(committer) => committer.figures(),
            Writer::Cluster(cluster) => cluster.figures(),
        }
    }

    /// Whether the log has failed (writes are refused until a restart).
    pub fn log_failed(&self) -> bool {
        match &self.writer {
            Writer::Local(committer) => committer.is_poisoned(),
            Writer::Cluster(_) => false,
        }
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
        match &self.writer {
            Writer::Local(committer) => committer.tees(),
            Writer::Cluster(cluster) => cluster.tees(),
        }
    }

    /// Queues a write for the log; the returned [`PendingWrite`] resolves once
    /// it is durable and visible.
    pub async fn write(&self, change: impl Into<Change>) -> Result<PendingWrite, Error> {
        match &self.writer {
            Writer::Local(committer) => committer.submit(change).await,
            Writer::Cluster(cluster) => {
                let mut pending = cluster.proposer().submit_all(vec![change.into()]).await?;
                pending.pop().ok_or(Error::ShuttingDown)
            }
        }
    }

    /// Queues several writes as one message, so they land in one log batch.
    pub async fn write_all(&self, changes: Vec<Change>) -> Result<Vec<PendingWrite>, Error> {
        match &self.writer {
            Writer::Local(committer) => committer.submit_all(changes).await,
            Writer::Cluster(cluster) => cluster.proposer().submit_all(changes).await,
        }
    }
}
