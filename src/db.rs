//! The database handle a connection works with: the store for reads, the
//! log for writes, the limits every command checks, and the counters
//! all doors share.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Auth;
use crate::backup::{Backup, Tees};
use crate::config::Limits;
use crate::engine::Engine;
use crate::error::Error;
use crate::feed::Feed;
use crate::log::{Log, PendingWrite};
use crate::raft::node::Cluster;
use crate::stats::Stats;
use crate::storage::change::Change;

/// Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Db {
    /// Read directly: every value in it is already durable (in cluster
    /// mode: committed by a majority).
    engine: Arc<dyn Engine>,
    /// Running backups' tees and counters (the engine feeds the tees).
    tees: Arc<Tees>,
    /// Writes go through the log (the group-commit thread or the cluster),
    /// never straight to the store.
    log: Arc<dyn Log>,
    /// The node's cluster, in cluster mode: its read barrier and `Cluster`
    /// commands.
    cluster: Option<Arc<Cluster>>,
    pub limits: Limits,
    /// The token check, shared by all connections.
    pub auth: Arc<Auth>,
    /// Connections and commands, counted by all doors.
    pub stats: Arc<Stats>,
    /// Where `Backup { name }` writes (`--backup-dir`); `None`: only
    /// streamed backups.
    pub backup_dir: Option<PathBuf>,
    /// The engine's changes, for watches; a fresh one (no history) unless
    /// the server sets the one its engine publishes to.
    pub feed: Arc<Feed>,
}

impl Db {
    /// A database whose writes go through `log`, which applies them to
    /// `engine` (which sends them on to `tees`).
    pub fn new(
        engine: Arc<dyn Engine>,
        tees: Arc<Tees>,
        log: Arc<dyn Log>,
        limits: Limits,
        auth: Arc<Auth>,
    ) -> Db {
        Db {
            engine,
            tees,
            log,
            cluster: None,
            limits,
            auth,
            stats: Arc::new(Stats::default()),
            backup_dir: None,
            feed: Arc::new(Feed::new(0, 1)),
        }
    }

    /// The same database, as a node of `cluster` (whose log it must be).
    pub fn in_cluster(self, cluster: Arc<Cluster>) -> Db {
        Db {
            cluster: Some(cluster),
            ..self
        }
    }

    /// The cluster this node belongs to, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The write side.
    pub fn log(&self) -> &dyn Log {
        &*self.log
    }

    /// The write side, for shutdown to close once every connection is gone.
    pub fn log_handle(&self) -> Arc<dyn Log> {
        self.log.clone()
    }

    /// The applied state, for `cmd/` to read.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// [`Db::engine`], shared.
    pub fn engine_handle(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// Starts a backup: the engine's state at one instant, copied while
    /// writes go on.
    pub fn start_backup(&self) -> Result<Backup, Error> {
        Backup::start(self.engine.view()?, &self.tees)
    }

    /// The tees running backups see applied writes through.
    pub fn tees(&self) -> &Arc<Tees> {
        &self.tees
    }

    /// Queues a write for the log; the returned [`PendingWrite`] resolves once
    /// it is durable and visible.
    pub async fn write(&self, change: impl Into<Change>) -> Result<PendingWrite, Error> {
        self.log.submit(change.into()).await
    }

    /// Queues several writes as one message, so they land in one log batch.
    pub async fn write_all(&self, changes: Vec<Change>) -> Result<Vec<PendingWrite>, Error> {
        self.log.submit_all(changes).await
    }
}
