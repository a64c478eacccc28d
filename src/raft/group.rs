//! One Raft group on this node: an openraft instance over the group's own
//! log, state machine and engine, and the batcher that proposes its writes.
//! A node runs one group per shard it holds a replica of (docs/sharding.md);
//! a cluster that is not sharded is group 1 alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvstore_client::slot::GroupId;
use kvstore_client::{ClusterMember, ErrorCode};
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::log::LogStore;
use super::network::{self, Network};
use super::node::Settings;
use super::propose::{not_leader, Proposer};
use super::shards::Shards;
use super::state::StateMachine;
use super::{Member, Raft};
use crate::engine::Engine;
use crate::error::Error;
use crate::log::Queued;
use crate::storage::fs::Fs;

/// Entries a learner may be behind when `AddLearner` answers (openraft's
/// `replication_lag_threshold`). Its default of 5,000 let the command
/// answer at once after a restore: our entries hold up to 1 MiB of writes
/// each. A learner keeping up lags by the proposals in flight, a few.
const LEARNER_LAG: u64 = 8;

/// How often the size trigger of snapshots looks.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(250);

/// A running group.
pub struct Group {
    id: GroupId,
    /// This node's id, for messages.
    node: u64,
    raft: Raft,
    proposer: Proposer,
    /// The state machine's `store_index`: the index replies report.
    store_index: Arc<AtomicU64>,
    /// The sharding table its state machine keeps (group 1's is the
    /// cluster's).
    shards: watch::Receiver<Arc<Shards>>,
    /// See [`Group::is_fresh`] (read from the storage: openraft's metrics
    /// are not loaded yet right after it starts).
    fresh: bool,
    /// The group's data on this node, for its figures.
    engine: Arc<dyn Engine>,
    /// See [`Group::last_session`].
    last_session: Arc<AtomicU64>,
    /// See [`Group::pages`].
    pages: Arc<parking_lot::RwLock<()>>,
}

/// One group's role, term and members as this node sees them.
pub struct GroupStatus {
    pub id: GroupId,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<ClusterMember>,
    pub keys: u64,
}

pub(super) fn cluster_failed(message: impl Into<String>) -> Error {
    Error::Rejected {
        code: ErrorCode::ClusterFailed,
        message: message.into(),
    }
}

/// Whether this node leads the group without being one of its voters: a
/// leader that a change took out of the voters leads until that change
/// commits, and openraft 0.9 must not be asked for another change
/// meanwhile (it asserts that the leader is a voter: a debug build's group
/// panicked). Such a change is refused as if by a follower.
pub fn leads_outside_voters(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let id = metrics.id;
    metrics.current_leader == Some(id)
        && !(metrics.membership_config.membership().voter_ids()).any(|v| v == id)
}

fn write_failed(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
    if let Some(forward) = e.forward_to_leader::<Member>() {
        return not_leader(forward.leader_node.as_ref());
    }
    cluster_failed(e.to_string())
}

/// openraft's settings for a group of a node started with `settings`.
fn raft_config(settings: &Settings) -> Result<Arc<openraft::Config>, Error> {
    let config = openraft::Config {
        cluster_name: "kvstore".into(),
        heartbeat_interval: settings.heartbeat.as_millis() as u64,
        election_timeout_min: settings.election.as_millis() as u64,
        // openraft 0.9 makes a follower that knew a leader wait this (the
        // leader lease) on top of its random timeout: 1.5x, not 2x, keeps
        // the wait short and the random range wide enough.
        election_timeout_max: settings.election.as_millis() as u64 * 3 / 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.snapshot_every.min(1000),
        replication_lag_threshold: LEARNER_LAG,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| Error::Config(format!("raft settings: {e}")))
}

impl Group {
    /// Opens group `id`'s storage ([`dir`]) over `engine` (a memory engine
    /// empty) and starts its openraft on `network`. The caller holds the
    /// node directory's lock.
    pub async fn start(
        id: GroupId,
        settings: &Settings,
        network: Network,
        fs: Arc<dyn Fs>,
        engine: Arc<dyn Engine>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Group, Error> {
        let (mut log, machine) = {
            let (dir, engine) = (dir(settings, id), engine.clone());
            tokio::task::spawn_blocking(move || open_storage(fs, &dir, id, engine))
                .await
                .map_err(|e| Error::Config(format!("raft storage task failed: {e}")))??
        };
        let fresh = is_empty(&mut log).await?;
        let store_index = machine.store_index();
        let shards = machine.shards();
        let since_snapshot = machine.since_snapshot();
        let last_session = machine.last_session();
        let pages = machine.pages();
        let raft = Raft::new(settings.id, raft_config(settings)?, network, log, machine)
            .await
            .map_err(|e| Error::Config(format!("raft group {id} did not start: {e}")))?;
        tracker.spawn(snapshot_by_size(
            raft.clone(),
            since_snapshot,
            settings.snapshot_bytes,
            shutdown,
        ));
        Ok(Group {
            id,
            node: settings.id,
            proposer: Proposer::start(raft.clone()),
            raft,
            store_index,
            shards,
            fresh,
            engine,
            last_session,
            pages,
        })
    }

    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The group's leader as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The group's openraft, for the raft port to hand messages to.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The group's data on this node.
    pub fn engine(&self) -> Arc<dyn Engine> {
        self.engine.clone()
    }

    /// The last client session id this replica of group 1 has seen
    /// handed out.
    pub fn last_session(&self) -> u64 {
        self.last_session.load(Ordering::Acquire)
    }

    /// The sharding table as this group's state machine has applied it.
    pub fn shards(&self) -> watch::Receiver<Arc<Shards>> {
        self.shards.clone()
    }

    /// The state machine's lock that keeps a scan page's walk and its
    /// slot states consistent (`StateMachine::pages`).
    pub fn pages(&self) -> Arc<parking_lot::RwLock<()>> {
        self.pages.clone()
    }

    /// Whether this replica had never had a log entry or a vote when it
    /// started: a group just created here, which its first voters
    /// initialise.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// An index that covers every write the store may hold now, for a
    /// reply to carry: read it after reading the store (and for a write's
    /// reply, after the write was applied). It may run ahead of
    /// [`Group::applied_index`] while an entry is being applied.
    pub fn reply_index(&self) -> u64 {
        self.store_index.load(Ordering::Acquire)
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
                    "node {} has applied index {} of group {}, not {index} ({e}); ask another node",
                    self.node,
                    self.applied_index(),
                    self.id,
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
                tracing::debug!(group = self.id, "read refused: {e}");
                Err(not_leader(None))
            }
            Err(RaftError::Fatal(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Makes `members` the group's first voters (once).
    pub async fn initialize(&self, members: BTreeMap<u64, Member>) -> Result<(), Error> {
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(InitializeError::NotAllowed(_)) => {
                cluster_failed("the cluster is already initialized")
            }
            other => cluster_failed(other.to_string()),
        })
    }

    /// Adds node `id` as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: u64, member: Member) -> Result<(), Error> {
        if leads_outside_voters(&self.raft) {
            return Err(not_leader(None));
        }
        self.raft
            .add_learner(id, member, true)
            .await
            .map(|_| ())
            .map_err(write_failed)
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<(), Error> {
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.change_membership(change).await
    }

    /// Takes node `id` out of the group, voter or learner.
    pub async fn remove(&self, id: u64) -> Result<(), Error> {
        let voter = (self.raft.metrics().borrow().membership_config)
            .voter_ids()
            .any(|v| v == id);
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.change_membership(change).await
    }

    async fn change_membership(&self, change: ChangeMembers<u64, Member>) -> Result<(), Error> {
        if leads_outside_voters(&self.raft) {
            return Err(not_leader(None));
        }
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(write_failed)
    }

    /// This node's view of the group.
    pub fn status(&self) -> GroupStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = |id: &u64| {
            (metrics.replication.as_ref())
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
        };
        let members = membership
            .nodes()
            .map(|(id, member)| ClusterMember {
                id: *id,
                addr: member.client_addr.clone(),
                raft_addr: member.raft_addr.clone(),
                voter: voters.contains(id),
                matched_index: matched(id),
                // The node fills it in from group 1's table.
                resp_addr: None,
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if !voters.contains(&self.node) => "learner",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        GroupStatus {
            id: self.id,
            role,
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            members,
            keys: self.engine.len(),
        }
    }

    /// Hands writes to the group's batcher, in order, as one unit.
    pub async fn queue(&self, writes: Vec<Queued>) -> Result<(), Error> {
        self.proposer.queue(writes).await
    }

    /// openraft stops the group when its log or state machine fails (an
    /// `fdatasync` error of the raft log included): from then on every
    /// write is refused up front, and `log_failed` says so.
    pub fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) | Err(Fatal::Stopped) => None,
            Err(fatal) => Some(format!("raft group {} has stopped: {fatal}", self.id)),
        }
    }

    /// Stops the group's openraft (after the doors have closed).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = self.id, "raft did not stop cleanly: {e}");
        }
    }
}

/// Asks openraft for a snapshot whenever the entries applied since the
/// last one pass `limit` bytes (openraft's own policy counts entries only:
/// 10,000 entries of large values would be a large log). Until `shutdown`.
async fn snapshot_by_size(
    raft: Raft,
    since_snapshot: Arc<AtomicU64>,
    limit: u64,
    shutdown: CancellationToken,
) {
    let mut asked_at = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SNAPSHOT_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
        let bytes = since_snapshot.load(Ordering::Relaxed);
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

/// Where group `id` of a node keeps its log, snapshots and (disk engine)
/// data: group 1, the only one before sharding, in the node's directory,
/// the others in `g<id>/` within it.
pub fn dir(settings: &Settings, id: GroupId) -> PathBuf {
    match id {
        super::FIRST_GROUP => settings.dir.clone(),
        id => settings.dir.join(format!("g{id}")),
    }
}

/// Where a node sets group `id`'s directory aside when the group leaves it
/// (`kvstore cluster move-replica`), and takes it back from if the group
/// comes back: a node whose copy of the table lags may be asked back
/// while it still runs the group, and must not lose what it had.
pub fn left_dir(settings: &Settings, id: GroupId) -> PathBuf {
    settings.dir.join(format!("g{id}.left"))
}

/// Whether `log` holds no entry and no vote.
async fn is_empty(log: &mut LogStore) -> Result<bool, Error> {
    let failed = |e: openraft::StorageError<u64>| Error::StorageFailed(e.to_string());
    let state = log.get_log_state().await.map_err(failed)?;
    let vote = log.read_vote().await.map_err(failed)?;
    Ok(state.last_log_id.is_none() && vote.is_none())
}

fn open_storage(
    fs: Arc<dyn Fs>,
    dir: &Path,
    group: GroupId,
    engine: Arc<dyn Engine>,
) -> Result<(LogStore, StateMachine), Error> {
    fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let covered = super::log::Covered::default();
    let log = LogStore::open(fs.clone(), dir, covered.clone())?;
    let machine = StateMachine::open(fs, dir, group, engine, covered)?;
    Ok((log, machine))
}

/// The network of a node's group 1, from which the others' are made.
pub fn first_network(settings: &Settings, tls: Option<Arc<super::peer_tls::PeerTls>>) -> Network {
    let dial = (settings.peers.iter())
        .map(|(id, member)| (*id, member.raft_addr.clone()))
        .collect();
    Network::new(super::FIRST_GROUP, network_frame(settings), dial, tls)
}

/// The largest raft-port frame of a node started with `settings`.
pub fn network_frame(settings: &Settings) -> usize {
    network::BASE_MAX_FRAME + 2 * settings.max_frame
}
