//! One node of a cluster: starts openraft on the node's log and state
//! machine, serves the raft port, and carries out what the doors ask of the
//! cluster (writes, read barriers, `Cluster` commands).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvstore_client::{ClusterMember, ClusterRequest, ClusterStatus, ErrorCode};
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::log::LogStore;
use super::network::{self, Network, Rafts};
use super::peer_tls::{PeerTls, PeerTlsFiles};
use super::propose::{not_leader, Proposer};
use super::state::StateMachine;
use super::{Member, Raft, FIRST_GROUP};
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

/// Entries a learner may be behind when `AddLearner` answers (openraft's
/// `replication_lag_threshold`). Its default of 5,000 let the command
/// answer at once after a restore: our entries hold up to 1 MiB of writes
/// each. A learner keeping up lags by the proposals in flight, a few.
const LEARNER_LAG: u64 = 8;

/// A running node.
pub struct Cluster {
    settings: Settings,
    raft: Raft,
    proposer: Proposer,
    /// See [`Log::budget`].
    budget: Arc<tokio::sync::Semaphore>,
    /// The state machine's `store_index`: the index replies report.
    store_index: Arc<std::sync::atomic::AtomicU64>,
    /// Held while the node runs: a second process on the same directory is
    /// refused.
    _lock: parking_lot::Mutex<Box<dyn std::any::Any + Send>>,
}

/// How often the size trigger of snapshots looks.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(250);

/// Asks openraft for a snapshot whenever the entries applied since the
/// last one pass `limit` bytes (openraft's own policy counts entries only:
/// 10,000 entries of large values would be a large log). Until `shutdown`.
async fn snapshot_by_size(
    raft: Raft,
    since_snapshot: Arc<std::sync::atomic::AtomicU64>,
    limit: u64,
    shutdown: CancellationToken,
) {
    let mut asked_at = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SNAPSHOT_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
        let bytes = since_snapshot.load(std::sync::atomic::Ordering::Relaxed);
        // One request at a time: the counter drops once it is built.
        if bytes < limit
            || asked_at
                .is_some_and(|at: tokio::time::Instant| at.elapsed() < Duration::from_secs(10))
        {
            continue;
        }
        tracing::info!(
            bytes,
            limit,
            "asking for a snapshot: the log since the last one passed --raft-snapshot-bytes"
        );
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        asked_at = Some(tokio::time::Instant::now());
    }
}

fn cluster_failed(message: impl Into<String>) -> Error {
    Error::Rejected {
        code: ErrorCode::ClusterFailed,
        message: message.into(),
    }
}

fn write_failed(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
    if let Some(forward) = e.forward_to_leader::<Member>() {
        return not_leader(forward.leader_node.as_ref());
    }
    cluster_failed(e.to_string())
}

impl Cluster {
    /// Opens the node's storage over `engine` (a memory engine empty),
    /// starts openraft, and serves the raft port on `listener`.
    pub async fn start(
        settings: Settings,
        fs: Arc<dyn Fs>,
        engine: Arc<dyn Engine>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Cluster>, Error> {
        let dir = settings.dir.clone();
        let (lock, log, machine) = {
            let fs = fs.clone();
            tokio::task::spawn_blocking(move || open_storage(fs, &dir, engine))
                .await
                .map_err(|e| Error::Config(format!("raft storage task failed: {e}")))??
        };
        let store_index = machine.store_index();
        let since_snapshot = machine.since_snapshot();
        let config = openraft::Config {
            cluster_name: "kvstore".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election.as_millis() as u64,
            // openraft 0.9 makes a follower that knew a leader wait this
            // (the leader lease) on top of its random timeout: 1.5x, not 2x,
            // keeps the wait short and the random range wide enough.
            election_timeout_max: settings.election.as_millis() as u64 * 3 / 2,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every.min(1000),
            replication_lag_threshold: LEARNER_LAG,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(format!("raft settings: {e}")))?;
        let max_frame = network::BASE_MAX_FRAME + 2 * settings.max_frame;
        let tls = (settings.tls.as_ref())
            .map(|files| PeerTls::load(files, settings.id).map(Arc::new))
            .transpose()?;
        let raft = Raft::new(
            settings.id,
            Arc::new(config),
            Network::new(
                FIRST_GROUP,
                max_frame,
                (settings.peers.iter())
                    .map(|(id, member)| (*id, member.raft_addr.clone()))
                    .collect(),
                tls.clone(),
            ),
            log,
            machine,
        )
        .await
        .map_err(|e| Error::Config(format!("raft did not start: {e}")))?;
        tracker.spawn(snapshot_by_size(
            raft.clone(),
            since_snapshot,
            settings.snapshot_bytes,
            shutdown.clone(),
        ));
        let rafts = Arc::new(Rafts::default());
        rafts.insert(FIRST_GROUP, raft.clone());
        tracker.spawn(network::serve(
            listener,
            rafts,
            tls,
            max_frame,
            shutdown,
            tracker.clone(),
        ));
        Ok(Arc::new(Cluster {
            store_index,
            proposer: Proposer::start(raft.clone()),
            budget: crate::log::budget(),
            settings,
            raft,
            _lock: parking_lot::Mutex::new(lock),
        }))
    }

    /// The settings of client sessions opened or written through this node.
    pub fn sessions(&self) -> SessionSettings {
        self.settings.sessions
    }

    /// An index that covers every write the store may hold now, for a
    /// reply to carry: read it after reading the store (and for a write's
    /// reply, after the write was applied). It may run ahead of
    /// [`Cluster::applied_index`] while an entry is being applied.
    pub fn reply_index(&self) -> u64 {
        self.store_index.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The last log index this node has applied in full (0 before any).
    fn applied_index(&self) -> u64 {
        (self.raft.metrics().borrow().last_applied).map_or(0, |log_id| log_id.index)
    }

    /// Waits (at most `limit`) until this node has applied log index
    /// `index`: a follower read of a session that has seen `index` then sees
    /// everything it saw. `Lagging` if it does not get there in time.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> Result<(), Error> {
        if self.applied_index() >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(limit))
            .applied_index_at_least(Some(index), "follower read")
            .await
            .map(|_| ())
            .map_err(|e| Error::Rejected {
                code: ErrorCode::Lagging,
                message: format!(
                    "node {} has applied index {}, not {index} ({e}); ask another node",
                    self.settings.id,
                    self.applied_index()
                ),
            })
    }

    /// Waits until this node may answer a linearizable read: it is the
    /// leader, a quorum confirmed it after the read arrived, and it has
    /// applied everything committed before that.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(not_leader(forward.leader_node.as_ref()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                tracing::debug!("read refused: {e}");
                Err(not_leader(None))
            }
            Err(RaftError::Fatal(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Carries out a `Cluster` command.
    pub async fn command(&self, request: ClusterRequest) -> Result<ClusterStatus, Error> {
        match request {
            ClusterRequest::Status => {}
            ClusterRequest::Init => {
                let mut members = self.settings.peers.clone();
                members.insert(self.settings.id, self.settings.me.clone());
                self.raft.initialize(members).await.map_err(|e| match e {
                    RaftError::APIError(InitializeError::NotAllowed(_)) => {
                        cluster_failed("the cluster is already initialized")
                    }
                    other => cluster_failed(other.to_string()),
                })?;
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
                self.raft
                    .add_learner(id, member, true)
                    .await
                    .map_err(write_failed)?;
            }
            ClusterRequest::Promote { id } => {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_failed)?;
            }
            ClusterRequest::Remove { id } => {
                let voter = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .voter_ids()
                    .any(|v| v == id);
                let change = if voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(write_failed)?;
            }
        }
        Ok(self.status())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| ClusterMember {
                id: *id,
                addr: member.client_addr.clone(),
                raft_addr: member.raft_addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if !voters.contains(&self.settings.id) => "learner",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            node_id: self.settings.id,
            role: role.to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|l| l.index),
            pid: std::process::id(),
            members,
        }
    }

    /// Stops openraft (after the doors have closed).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft did not stop cleanly: {e}");
        }
    }
}

/// Cluster mode's write side: writes are proposed through Raft in batches
/// (see `propose`).
impl Log for Cluster {
    fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.proposer.queue(writes))
    }

    /// openraft stops the node when its log or state machine fails (an
    /// `fdatasync` error of the raft log included): from then on every
    /// write is refused up front, and `log_failed` says so.
    fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) | Err(Fatal::Stopped) => None,
            Err(fatal) => Some(format!("the raft node has stopped: {fatal}")),
        }
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

type Opened = (Box<dyn std::any::Any + Send>, LogStore, StateMachine);

fn open_storage(fs: Arc<dyn Fs>, dir: &Path, engine: Arc<dyn Engine>) -> Result<Opened, Error> {
    fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join("LOCK");
    let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked(dir.to_path_buf()),
        _ => Error::io(&lock_path, e),
    })?;
    let log = LogStore::open(fs.clone(), dir)?;
    let machine = StateMachine::open(fs, dir, engine)?;
    Ok((lock, log, machine))
}
