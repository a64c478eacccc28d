//! One node of a cluster: the Raft groups it holds a replica of
//! ([`Group`]), the raft port they share, and what the doors ask of the
//! cluster (writes, read barriers, `Cluster` commands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvstore_client::slot::GroupId;
use kvstore_client::{ClusterRequest, ClusterStatus};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::group::{self, Group};
use super::network::{self, Rafts};
use super::peer_tls::{PeerTls, PeerTlsFiles};
use super::{Member, FIRST_GROUP};
use crate::commit::LogFigures;
use crate::engine::Engine;
use crate::error::Error;
use crate::log::{Log, Queued};
use crate::storage::fs::Fs;
use futures_util::future::BoxFuture;

/// What a node is started with (from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: u64,
    /// Where the raft log, votes and snapshots live.
    pub dir: PathBuf,
    /// This node's addresses.
    pub me: Member,
    /// The other voters of the first membership (`--peers`), for `Init`.
    pub peers: BTreeMap<u64, Member>,
    pub heartbeat: Duration,
    /// The shortest election timeout; the longest is 1.5 times it.
    pub election: Duration,
    /// Entries between two snapshots.
    pub snapshot_every: u64,
    /// Bytes of entries (roughly) after which a snapshot is taken anyway.
    pub snapshot_bytes: u64,
    /// The largest client frame, to size the raft port's frames.
    pub max_frame: usize,
    /// Mutual TLS on the raft port (`--raft-tls-*`).
    pub tls: Option<PeerTlsFiles>,
    /// Client sessions (`--raft-session-idle-ms`, `--raft-max-sessions`).
    pub sessions: SessionSettings,
}

/// What this node stamps on the client sessions it takes.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session that has not written for this long expires.
    pub idle_ms: u64,
    /// The most sessions the cluster keeps.
    pub max_sessions: u64,
}

/// A running node: the Raft groups it holds a replica of, and the raft
/// port they share.
pub struct Cluster {
    settings: Settings,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// See [`Log::budget`].
    budget: Arc<tokio::sync::Semaphore>,
    /// Held while the node runs: a second process on the same directory is
    /// refused.
    _lock: parking_lot::Mutex<Box<dyn std::any::Any + Send>>,
}

impl Cluster {
    /// Locks the node's directory, opens group 1 over `engine` (a memory
    /// engine empty) and serves the raft port on `listener`.
    pub async fn start(
        settings: Settings,
        fs: Arc<dyn Fs>,
        engine: Arc<dyn Engine>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Cluster>, Error> {
        let lock = {
            let (fs, dir) = (fs.clone(), settings.dir.clone());
            tokio::task::spawn_blocking(move || lock_dir(&*fs, &dir))
                .await
                .map_err(|e| Error::Config(format!("raft storage task failed: {e}")))??
        };
        let tls = (settings.tls.as_ref())
            .map(|files| PeerTls::load(files, settings.id).map(Arc::new))
            .transpose()?;
        let network = group::first_network(&settings, FIRST_GROUP, tls.clone());
        let first = Group::start(
            FIRST_GROUP,
            &settings,
            network,
            fs,
            engine,
            shutdown.clone(),
            tracker,
        )
        .await?;
        let rafts = Arc::new(Rafts::default());
        rafts.insert(FIRST_GROUP, first.raft().clone());
        tracker.spawn(network::serve(
            listener,
            rafts,
            tls,
            group::network_frame(&settings),
            shutdown,
            tracker.clone(),
        ));
        Ok(Arc::new(Cluster {
            settings,
            groups: RwLock::new(BTreeMap::from([(FIRST_GROUP, Arc::new(first))])),
            budget: crate::log::budget(),
            _lock: parking_lot::Mutex::new(lock),
        }))
    }

    /// Group 1: until the cluster is sharded, every slot's.
    pub fn first(&self) -> Arc<Group> {
        self.groups.read()[&FIRST_GROUP].clone()
    }

    /// Every group this node runs.
    fn all(&self) -> Vec<Arc<Group>> {
        self.groups.read().values().cloned().collect()
    }

    /// The settings of client sessions opened or written through this node.
    pub fn sessions(&self) -> SessionSettings {
        self.settings.sessions
    }

    /// See [`Group::reply_index`].
    pub fn reply_index(&self) -> u64 {
        self.first().reply_index()
    }

    /// See [`Group::wait_applied`].
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), Error> {
        self.first().wait_applied(index, limit).await
    }

    /// See [`Group::read_barrier`].
    pub async fn read_barrier(&self) -> Result<(), Error> {
        self.first().read_barrier().await
    }

    /// Carries out a `Cluster` command.
    pub async fn command(&self, request: ClusterRequest) -> Result<ClusterStatus, Error> {
        let first = self.first();
        match request {
            ClusterRequest::Status => {}
            ClusterRequest::Init => {
                let mut members = self.settings.peers.clone();
                members.insert(self.settings.id, self.settings.me.clone());
                first.initialize(members).await?;
            }
            ClusterRequest::AddLearner {
                id,
                addr,
                raft_addr,
            } => {
                let member = Member {
                    raft_addr,
                    client_addr: addr,
                };
                first.add_learner(id, member).await?;
            }
            ClusterRequest::Promote { id } => first.promote(id).await?,
            ClusterRequest::Remove { id } => first.remove(id).await?,
        }
        Ok(self.status())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let group = self.first().status();
        ClusterStatus {
            node_id: self.settings.id,
            role: group.role.to_string(),
            term: group.term,
            leader: group.leader,
            last_log_index: group.last_log_index,
            applied_index: group.applied_index,
            pid: std::process::id(),
            members: group.members,
        }
    }

    /// Stops every group (after the doors have closed).
    pub async fn shutdown(&self) {
        for group in self.all() {
            group.shutdown().await;
        }
    }
}

/// Cluster mode's write side: each write goes to the group that serves its
/// key (today group 1, which serves every key).
impl Log for Cluster {
    fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.first().queue(writes).await })
    }

    /// A group whose openraft stopped on a failure of its log or state
    /// machine (an `fdatasync` error included) fails every write from then
    /// on, and `log_failed` says so.
    fn failure(&self) -> Option<String> {
        self.all().iter().find_map(|group| group.failure())
    }

    fn figures(&self) -> Option<&LogFigures> {
        None
    }

    fn budget(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.budget
    }

    fn lost_may_apply(&self) -> bool {
        true
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.shutdown().await;
            Ok(())
        })
    }
}

/// Creates the node's directory and takes its lock.
fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<Box<dyn std::any::Any + Send>, Error> {
    fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join("LOCK");
    fs.lock(&lock_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked(dir.to_path_buf()),
        _ => Error::io(&lock_path, e),
    })
}
