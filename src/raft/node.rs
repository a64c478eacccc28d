//! One node of a cluster: the Raft groups it holds a replica of
//! ([`Group`]), the raft port they share, and what the doors ask of the
//! cluster (writes, read barriers, `Cluster` commands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvstore_client::slot::{GroupId, SLOTS};
use kvstore_client::{ClusterMember, ClusterRequest, ClusterStatus, GroupView, MoveView};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::group::{self, cluster_failed, Group, GroupStatus};
use super::network::{
    self, MembersChange, Network, Rafts, Refusal, Rpc, RpcReply, ScanPage, SlotPage,
};
use super::peer_tls::{PeerTls, PeerTlsFiles};
use super::rebalance::{self, Planned, SlotLoad};
use super::shards::{Move, MoveStep, Shards, SlotState};
use super::{Batch, Member, Outcome, FIRST_GROUP};
use crate::commit::LogFigures;
use crate::engine::Engine;
use crate::error::Error;
use crate::log::{Log, Queued};
use crate::storage::change::Change;
use crate::storage::fs::Fs;
use crate::storage::op::WriteOp;
use crate::storage::store::{Applied, Span};
use bytes::Bytes;
use futures_util::future::BoxFuture;

/// A group as Redis Cluster's commands show a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisShard {
    pub group: GroupId,
    pub slots: Vec<(u16, u16)>,
    /// Its nodes and their RESP addresses, its leader first.
    pub nodes: Vec<(u64, String)>,
}

/// What a node is started with (from `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: u64,
    /// Where the raft log, votes and snapshots live.
    pub dir: PathBuf,
    /// This node's addresses.
    pub me: Member,
    /// Its RESP address (`--resp-listen`), which it records in the
    /// sharding table for Redis Cluster's redirects.
    pub resp_addr: Option<String>,
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

/// Opens the engine of a group other than group 1, in the group's
/// directory (a memory engine: empty).
pub type Engines =
    Arc<dyn Fn(PathBuf) -> BoxFuture<'static, Result<Arc<dyn Engine>, Error>> + Send + Sync>;

/// A running node: the Raft groups it holds a replica of, and the raft
/// port they share.
pub struct Cluster {
    settings: Settings,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// The leaders of groups this node does not run, as their nodes last
    /// said ([`learn_leaders`]).
    leaders_elsewhere: RwLock<BTreeMap<GroupId, u64>>,
    /// What starting another group takes.
    starter: Starter,
    /// Held while this node moves slots.
    moving: tokio::sync::Mutex<()>,
    /// See [`Log::budget`].
    budget: Arc<tokio::sync::Semaphore>,
    /// Held while the node runs: a second process on the same directory is
    /// refused.
    _lock: parking_lot::Mutex<Box<dyn std::any::Any + Send>>,
}

/// What a node starts its groups after group 1 with.
struct Starter {
    fs: Arc<dyn Fs>,
    engines: Engines,
    /// Group 1's, whose connections every group shares.
    network: Network,
    /// Where the raft port finds each group.
    rafts: Arc<Rafts>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// How long a request for a group's leader goes on asking the group's
/// nodes while it elects one (a new group's first election may take a few
/// rounds: all its nodes stand at once).
const LEADER_PATIENCE: Duration = Duration::from_secs(10);

/// Nodes a group is created on unless the command names them.
const GROUP_REPLICAS: usize = 3;

/// How long `AddGroup` waits for the new group to elect a leader.
const NEW_GROUP_LEADER_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Locks the node's directory, opens group 1 over `engine` (a memory
    /// engine empty) and serves the raft port on `listener`; then starts
    /// the other groups the sharding table places here, over engines from
    /// `engines`, as the table names them.
    pub async fn start(
        settings: Settings,
        fs: Arc<dyn Fs>,
        engine: Arc<dyn Engine>,
        engines: Engines,
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
        let network = group::first_network(&settings, tls.clone());
        let first = Group::start(
            FIRST_GROUP,
            &settings,
            network.clone(),
            fs.clone(),
            engine,
            shutdown.clone(),
            tracker,
        )
        .await?;
        let rafts = Arc::new(Rafts::default());
        rafts.insert(
            FIRST_GROUP,
            first.raft().clone(),
            first.engine(),
            first.shards(),
            first.pages(),
        );
        tracker.spawn(network::serve(
            listener,
            rafts.clone(),
            tls,
            group::network_frame(&settings),
            shutdown.clone(),
            tracker.clone(),
        ));
        let shards = first.shards();
        let cluster = Arc::new(Cluster {
            settings,
            groups: RwLock::new(BTreeMap::from([(FIRST_GROUP, Arc::new(first))])),
            leaders_elsewhere: RwLock::default(),
            starter: Starter {
                fs,
                engines,
                network,
                rafts,
                shutdown,
                tracker: tracker.clone(),
            },
            moving: tokio::sync::Mutex::default(),
            budget: crate::log::budget(),
            _lock: parking_lot::Mutex::new(lock),
        });
        tracker.spawn(run_placed_groups(cluster.clone(), shards));
        tracker.spawn(finish_moves(cluster.clone()));
        tracker.spawn(record_doors(cluster.clone()));
        tracker.spawn(learn_leaders(cluster.clone()));
        tracker.spawn(sweep_led_groups(cluster.clone()));
        Ok(cluster)
    }

    /// Starts group `id`, placed on this node, and makes its raft messages
    /// reach it. A replica never started before initialises the group with
    /// its first voters (`first_voters`), as each of them does; one that
    /// joined later waits for the leader's log.
    async fn start_group(
        &self,
        id: GroupId,
        first_voters: Option<BTreeMap<u64, Member>>,
    ) -> Result<(), Error> {
        let starter = &self.starter;
        let (dir, left) = (
            group::dir(&self.settings, id),
            group::left_dir(&self.settings, id),
        );
        blocking_fs(&dir, move |dir| match !dir.exists() && left.exists() {
            true => std::fs::rename(&left, dir),
            false => Ok(()),
        })
        .await?;
        let engine = (starter.engines)(dir).await?;
        let group = Group::start(
            id,
            &self.settings,
            starter.network.for_group(id),
            starter.fs.clone(),
            engine,
            starter.shutdown.clone(),
            &starter.tracker,
        )
        .await?;
        if let (true, Some(first_voters)) = (group.is_fresh(), first_voters) {
            if let Err(e) = group.initialize(first_voters).await {
                // Not registered: stop it before another try opens its files.
                group.shutdown().await;
                return Err(e);
            }
        }
        starter.rafts.insert(
            id,
            group.raft().clone(),
            group.engine(),
            group.shards(),
            group.pages(),
        );
        self.groups.write().insert(id, Arc::new(group));
        tracing::info!(group = id, "raft group started");
        Ok(())
    }

    /// Stops group `id`, which the table no longer places on this node, and
    /// sets its directory aside ([`group::left_dir`], replacing an older
    /// one there).
    async fn stop_group(&self, id: GroupId) -> Result<(), Error> {
        let Some(group) = self.groups.write().remove(&id) else {
            return Ok(());
        };
        self.starter.rafts.remove(id);
        group.shutdown().await;
        drop(group);
        let (dir, left) = (
            group::dir(&self.settings, id),
            group::left_dir(&self.settings, id),
        );
        blocking_fs(&dir, move |dir| {
            if left.exists() {
                std::fs::remove_dir_all(&left)?;
            }
            std::fs::rename(dir, &left)
        })
        .await?;
        tracing::info!(
            group = id,
            "raft group stopped and its directory set aside: it left this node"
        );
        Ok(())
    }

    /// Group 1: until the cluster is sharded, every slot's.
    pub fn first(&self) -> Arc<Group> {
        self.groups.read()[&FIRST_GROUP].clone()
    }

    /// The sharding table as this node's replica of group 1 has applied it.
    fn table(&self) -> Arc<Shards> {
        self.first().shards().borrow().clone()
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

    /// The group that serves `key`'s slot, as group 1's map at this node
    /// says, if this node runs it; else `Moved`, naming the group and its
    /// leader as last learned (else one of its nodes).
    pub fn route(&self, key: &[u8]) -> Result<Arc<Group>, Error> {
        let slot = kvstore_client::slot::slot_of(key);
        let shards = self.table();
        let id = shards.map().group_of(slot);
        if let Some(group) = self.groups.read().get(&id) {
            return Ok(group.clone());
        }
        let leader = self.leaders_elsewhere.read().get(&id).copied();
        let node = (shards.groups().get(&id)).and_then(|p| {
            (leader.and_then(|l| p.members.get(&l))).or_else(|| p.members.values().next())
        });
        Err(Error::Rejected {
            code: kvstore_client::ErrorCode::Moved,
            message: match node {
                Some(member) => format!(
                    "slot {slot} is served by group {id}, not run here; served at {}",
                    member.client_addr
                ),
                None => format!("slot {slot} is served by group {id}, not run here"),
            },
        })
    }

    /// The data this node reads `key` from: its group's ([`Cluster::route`]),
    /// if the group serves the slot (a frozen slot is still read there);
    /// `Moved` if the slot has left it, `TryAgain` while it imports it.
    pub fn reader(&self, key: &[u8]) -> Result<Arc<dyn Engine>, Error> {
        self.serving(key).map(|group| group.engine())
    }

    /// `key`'s value and revisions from its group ([`Cluster::reader`]),
    /// read between two of the state machine's batches: the writes of one
    /// Raft entry share its index as their revision, so a read between two
    /// of them could see a key's revision stay while its value changes.
    pub fn read_revised(
        &self,
        key: &[u8],
    ) -> Result<Option<(bytes::Bytes, crate::engine::Revisions)>, Error> {
        let group = self.serving(key)?;
        let pages = group.pages();
        let _between_batches = pages.read();
        group.engine().get_revised(key)
    }

    /// `key`'s group ([`Cluster::route`]) if it serves the slot (a frozen
    /// slot is still read there).
    fn serving(&self, key: &[u8]) -> Result<Arc<Group>, Error> {
        let group = self.route(key)?;
        let slot = kvstore_client::slot::slot_of(key);
        let refuse = |code, message| Err(Error::Rejected { code, message });
        let state = group.shards().borrow().state(slot);
        match state {
            SlotState::Serving | SlotState::Frozen => Ok(group),
            SlotState::Elsewhere => refuse(
                kvstore_client::ErrorCode::Moved,
                format!("slot {slot} is served by another group"),
            ),
            SlotState::Importing => refuse(
                kvstore_client::ErrorCode::TryAgain,
                format!("slot {slot} is moving between groups"),
            ),
        }
    }

    /// [`Group::read_barrier`] of `key`'s group ([`Cluster::route`]), or of
    /// group 1 for a read that names no key (a scan: group 1's data only,
    /// for now).
    pub async fn read_barrier(&self, key: Option<&[u8]>) -> Result<(), Error> {
        let group = match key {
            Some(key) => self.route(key)?,
            None => self.first(),
        };
        group.read_barrier().await
    }

    /// Where a Redis Cluster client of `key` is sent (`-MOVED`), if not
    /// served here: the slot, and the RESP address of its group's leader
    /// (for a group this node does not run, the leader it last learned
    /// of, else one of its nodes). `None`
    /// if this node leads the group, or runs it and `reads_here` (a
    /// `READONLY` connection's read), or knows no address to send it to.
    pub fn redirect(&self, key: &[u8], reads_here: bool) -> Option<(u16, String)> {
        let slot = kvstore_client::slot::slot_of(key);
        let shards = self.table();
        let id = shards.map().group_of(slot);
        let group = self.groups.read().get(&id).cloned();
        let target = match group {
            Some(group) => match group.leader() {
                Some(leader) if leader != self.settings.id && !reads_here => leader,
                _ => return None,
            },
            None => match self.leaders_elsewhere.read().get(&id) {
                Some(leader) => *leader,
                None => *shards.groups().get(&id)?.members.keys().next()?,
            },
        };
        shards.door(target).map(|addr| (slot, addr.to_string()))
    }

    /// Every group that serves slots, as Redis Cluster's `CLUSTER SLOTS`
    /// shows a shard: its slot ranges and its nodes with their RESP
    /// addresses, its leader first where this node knows it (else its
    /// nodes in id order); nodes that recorded no RESP address are left
    /// out.
    pub fn redis_shards(&self) -> Vec<RedisShard> {
        let shards = self.table();
        let mut slots: BTreeMap<GroupId, Vec<(u16, u16)>> = BTreeMap::new();
        for range in shards.map().ranges() {
            (slots.entry(range.value).or_default()).push((range.first, range.last));
        }
        let leader_of = |id: GroupId| match self.groups.read().get(&id) {
            Some(group) => group.leader(),
            None => self.leaders_elsewhere.read().get(&id).copied(),
        };
        (slots.into_iter())
            .map(|(id, slots)| {
                let mut nodes: Vec<u64> = match (id, shards.groups().get(&id)) {
                    (FIRST_GROUP, _) => (self.first().status().members.iter())
                        .filter(|m| m.voter)
                        .map(|m| m.id)
                        .collect(),
                    (_, Some(placement)) => placement.members.keys().copied().collect(),
                    (_, None) => Vec::new(),
                };
                if let Some(leader) = leader_of(id) {
                    nodes.sort_by_key(|n| *n != leader);
                }
                let nodes = (nodes.into_iter())
                    .filter_map(|n| shards.door(n).map(|addr| (n, addr.to_string())))
                    .collect();
                RedisShard {
                    group: id,
                    slots,
                    nodes,
                }
            })
            .collect()
    }

    /// The groups whose slots `CLUSTER NODES` gives this node, which RESP
    /// `SCAN`, `KEYS` and `DBSIZE` answer for (a cluster client sends them
    /// to every master and joins the answers): the groups it leads, or if
    /// it leads none, those its master leads (the leader of the first
    /// group it is listed in).
    pub fn redis_groups(&self) -> Vec<GroupId> {
        answered_by(&self.redis_shards(), self.settings.id)
    }

    /// [`Cluster::read_barrier`] of each of [`Cluster::redis_groups`] this
    /// node runs: a RESP read that names no key in a sharded cluster
    /// (`DBSIZE`, `KEYS`, `SCAN`) answers for them, not for group 1.
    pub async fn redis_read_barrier(&self) -> Result<(), Error> {
        for id in self.redis_groups() {
            let group = self.groups.read().get(&id).cloned();
            if let Some(group) = group {
                group.read_barrier().await?;
            }
        }
        Ok(())
    }

    /// How many keys of `slot` this node holds (RESP `CLUSTER
    /// COUNTKEYSINSLOT`, which asks a node for its own data, as on Redis
    /// Cluster): its replica of the group the map gives the slot, or none
    /// if it does not run that group. A walk of the whole replica, off the
    /// async workers, until a per-slot index exists.
    pub async fn keys_in_slot(&self, slot: u16) -> Result<u64, Error> {
        let id = self.table().map().group_of(slot);
        let Some(group) = self.groups.read().get(&id).cloned() else {
            return Ok(0);
        };
        let engine = group.engine();
        tokio::task::spawn_blocking(move || count_slot(&*engine, slot))
            .await
            .map_err(|e| Error::StorageFailed(format!("counting slot {slot}: {e}")))?
    }

    /// The keys stored in those of `groups` this node runs (RESP `DBSIZE`;
    /// during a slot move, a moving slot's keys count in both groups).
    pub fn keys_in(&self, groups: &[GroupId]) -> u64 {
        self.sum_over(groups, |group| group.status().keys)
    }

    /// How many of those keys have a deadline (RESP `INFO keyspace`).
    pub fn expiring_in(&self, groups: &[GroupId]) -> u64 {
        self.sum_over(groups, |group| group.engine().expiring())
    }

    /// `figure` summed over those of `groups` this node runs.
    fn sum_over(&self, groups: &[GroupId], figure: impl Fn(&Group) -> u64) -> u64 {
        let local = self.groups.read();
        groups
            .iter()
            .filter_map(|id| local.get(id))
            .map(|g| figure(g))
            .sum()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.settings.id
    }

    /// The group a write goes to: its first key's ([`Cluster::route`]; the
    /// group checks the others when it applies it), or group 1 for one that
    /// names no key. A session write for another group must name a session
    /// group 1 has opened, which that group then takes in.
    fn group_for(&self, change: &Change) -> Result<Arc<Group>, Error> {
        let Some(key) = change.first_key() else {
            return Ok(self.first());
        };
        let group = self.route(key)?;
        if let Change::Once { stamp, .. } = change {
            if group.id() != FIRST_GROUP && stamp.session > self.first().last_session() {
                return Err(Error::Rejected {
                    code: kvstore_client::ErrorCode::TryAgain,
                    message: format!("client session {} is not known here yet", stamp.session),
                });
            }
        }
        Ok(group)
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
            ClusterRequest::AddGroup { nodes } => self.add_group(&first, nodes).await?,
            ClusterRequest::SetSlots {
                group,
                first,
                last,
                state,
            } => self.set_slots(group, first, last, state).await?,
            ClusterRequest::MoveSlots { first, last, to } => {
                self.move_slots(first, last, to).await?;
            }
            ClusterRequest::AbortMove => self.abort_move().await?,
            ClusterRequest::Rebalance => self.rebalance().await?,
            ClusterRequest::MoveReplica { group, from, to } => {
                self.move_replica(group, from, to).await?
            }
        }
        Ok(self.status())
    }

    /// Records a new group in group 1's sharding table, on `nodes` (or the
    /// three voters running the fewest groups), and waits (a while) until
    /// it has a leader if this node is one of them.
    async fn add_group(&self, first: &Group, nodes: Vec<u64>) -> Result<(), Error> {
        let shards = first.shards().borrow().clone();
        let status = first.status();
        let members = placement_for(&shards, &status.members, nodes)?;
        let mut write = self.submit(Change::AddGroup { members }).await?;
        let id = match write.wait().await? {
            Applied::Int(id) => id as GroupId,
            other => return Err(cluster_failed(format!("AddGroup answered {other:?}"))),
        };
        let placed_here =
            (first.shards().borrow().groups_of(self.settings.id)).any(|(g, _)| g == id);
        if !placed_here {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + NEW_GROUP_LEADER_WAIT;
        while tokio::time::Instant::now() < deadline {
            let group = self.groups.read().get(&id).cloned();
            if group.is_some_and(|g| g.status().leader.is_some()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(cluster_failed(format!(
            "group {id} was created but has no leader after {NEW_GROUP_LEADER_WAIT:?}"
        )))
    }

    /// Has group `group`'s leader answer `rpc` (a `Propose` or a
    /// `ReadSlots`): here if this node leads it, else over the raft port,
    /// trying the group's nodes until one leads or names the leader, for up
    /// to [`LEADER_PATIENCE`] while the group elects one. For requests that may be
    /// carried out twice: one whose answer was lost is sent again.
    async fn at_leader(&self, group: GroupId, rpc: impl Fn() -> Rpc) -> Result<RpcReply, Error> {
        let local = self.groups.read().get(&group).cloned();
        let mut next = local.as_ref().and_then(|g| g.status().leader);
        let mut last_error = String::from("no node answered");
        let deadline = tokio::time::Instant::now() + LEADER_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            // Again each round: the membership may have changed.
            let nodes = self.nodes_of(group)?;
            let order = next.take().into_iter().chain(nodes.keys().copied());
            for id in order.collect::<Vec<_>>() {
                let reply = match (local.is_some() && id == self.settings.id, nodes.get(&id)) {
                    (true, _) => Ok(self.starter.rafts.answer(group, rpc()).await),
                    (false, Some(member)) => self.ask(group, id, member, rpc()).await,
                    // A leader named before its membership reached this node.
                    (false, None) => Err(format!("node {id} is not known here yet")),
                };
                match reply.as_ref().map(RpcReply::refusal) {
                    Ok(None) => return reply.map_err(cluster_failed),
                    Ok(Some(Refusal::NotLeader(Some(leader)))) if *leader != id => {
                        next = Some(*leader);
                        break;
                    }
                    Ok(Some(Refusal::NotLeader(_))) => {
                        last_error = format!("node {id} does not lead it")
                    }
                    Ok(Some(Refusal::Failed(e))) => last_error = e.clone(),
                    Err(e) => last_error = e.clone(),
                }
            }
            let pause = if next.is_some() { 20 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(cluster_failed(format!(
            "group {group} did not answer: {last_error}"
        )))
    }

    /// The leader of group `group` as the first of `members` that knows
    /// one says.
    async fn ask_leader(&self, group: GroupId, members: &BTreeMap<u64, Member>) -> Option<u64> {
        let from = self.settings.id;
        for (id, member) in members {
            let rpc = Rpc::Leader { from };
            if let Ok(RpcReply::Leader(Some(leader))) = self.ask(group, *id, member, rpc).await {
                return Some(leader);
            }
        }
        None
    }

    /// Sends node `id` (`member`) `rpc` for group `group`.
    async fn ask(
        &self,
        group: GroupId,
        id: u64,
        member: &Member,
        rpc: Rpc,
    ) -> Result<RpcReply, String> {
        let network = self.starter.network.for_group(group);
        let addr = network.address_of(id, &member.raft_addr);
        network
            .ask(id, addr, rpc)
            .await
            .map_err(|e| format!("node {id}: {e}"))
    }

    /// Writes `changes` in group `group`'s log, wherever its leader is
    /// ([`Cluster::at_leader`]); each change's outcome.
    async fn propose(&self, group: GroupId, changes: Vec<Change>) -> Result<Vec<Outcome>, Error> {
        let from = self.settings.id;
        let rpc = || Rpc::Propose {
            from,
            batch: Batch(changes.clone()),
        };
        match self.at_leader(group, rpc).await? {
            RpcReply::Proposed(Ok(outcomes)) => Ok(outcomes.0),
            other => Err(cluster_failed(format!("group {group} answered {other:?}"))),
        }
    }

    /// Writes one change in group `group`'s log; its outcome as a result.
    async fn propose_one(&self, group: GroupId, change: Change) -> Result<Applied, Error> {
        let outcomes = self.propose(group, vec![change]).await?;
        match outcomes.into_iter().next() {
            Some(outcome) => outcome.into_result(),
            None => Err(cluster_failed(format!("group {group} gave no outcome"))),
        }
    }

    /// A flush (`Clear`) in a sharded cluster empties every group that
    /// serves slots, not group 1 alone: a `Clear` is queued in order with
    /// the burst into each group this node leads (group 1's keeps the
    /// write's session), and written in each other group at its leader
    /// once the burst is queued. Not atomic across groups.
    fn fan_out_flush(&self, write: Queued, runs: &mut Vec<(Arc<Group>, Vec<Queued>)>) -> Flush {
        let mut groups: std::collections::BTreeSet<GroupId> = (self.table().map().ranges().iter())
            .map(|range| range.value)
            .collect();
        groups.insert(FIRST_GROUP);
        let mut flush = Flush {
            here: Vec::new(),
            elsewhere: Vec::new(),
            write,
        };
        for id in groups {
            let change = match id {
                FIRST_GROUP => flush.write.change.clone(),
                _ => Change::from(WriteOp::Clear),
            };
            let led = (self.groups.read().get(&id).cloned())
                .filter(|group| group.leader() == Some(self.settings.id));
            let permit = self.budget.clone().try_acquire_many_owned(0);
            match (led, permit) {
                (Some(group), Ok(budget)) => {
                    let (done, answer) = oneshot::channel();
                    flush.here.push(answer);
                    let clear = Queued {
                        change,
                        done,
                        budget,
                    };
                    match runs.last_mut() {
                        Some((last, run)) if last.id() == id => run.push(clear),
                        _ => runs.push((group, vec![clear])),
                    }
                }
                _ => flush.elsewhere.push((id, change)),
            }
        }
        flush
    }

    /// Whether some slot is served by a group other than group 1.
    pub fn is_sharded(&self) -> bool {
        let shards = self.table();
        shards.map().ranges().iter().any(|r| r.value != FIRST_GROUP)
    }

    /// Whether the cluster has a group besides group 1: scans must then
    /// ask the groups' leaders, which read under their slot states. Not
    /// [`Cluster::is_sharded`]: a map that names group 1 alone may be
    /// older than the group's own data (a move's purge applied since).
    pub fn has_groups(&self) -> bool {
        !self.table().groups().is_empty()
    }

    /// A page of a scan of `span` over every group that serves slots: each
    /// group's leader walks up to `limit` pairs of it ([`Rpc::ReadPage`],
    /// keeping those of the slots it serves), and [`merge`] joins the
    /// pages. At most `limit` pairs, about `max_bytes`; `true` if there may
    /// be more (after the last pair). With `keys_only` the values come back
    /// empty (not sent between nodes).
    pub async fn scan(
        &self,
        span: Span,
        limit: usize,
        max_bytes: usize,
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), Error> {
        self.walk(None, span, (limit, max_bytes), keys_only).await
    }

    /// [`Cluster::scan`] over `groups` only (the slots a node answers for
    /// as a Redis Cluster master), with no check that every slot was seen.
    pub async fn scan_groups(
        &self,
        groups: &std::collections::BTreeSet<GroupId>,
        span: Span,
        limit: usize,
        max_bytes: usize,
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), Error> {
        self.walk(Some(groups), span, (limit, max_bytes), keys_only)
            .await
    }

    /// A page over `only`, or over every group that serves slots (as the
    /// map says each time) only once their pages have answered for every
    /// slot exactly once between them: a slot that moved between two
    /// groups' pages (answered by both, or by neither) has the page read
    /// again, for up to [`SCAN_MOVE_WAIT`].
    async fn walk(
        &self,
        only: Option<&std::collections::BTreeSet<GroupId>>,
        mut span: Span,
        (limit, max_bytes): (usize, usize),
        keys_only: bool,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), Error> {
        let deadline = tokio::time::Instant::now() + SCAN_MOVE_WAIT;
        loop {
            let groups = match only {
                Some(groups) => groups.clone(),
                None => (self.table().map().ranges().iter())
                    .map(|range| range.value)
                    .collect(),
            };
            let pages = groups
                .iter()
                .map(|g| self.read_page(*g, span.clone(), limit, keys_only));
            let pages = futures_util::future::try_join_all(pages).await?;
            if only.is_none() && !answer_every_slot_once(&pages) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Rejected {
                        code: kvstore_client::ErrorCode::TryAgain,
                        message: "slots are moving between groups: the scan page could not see each slot once".into(),
                    });
                }
                tokio::time::sleep(SCAN_MOVE_PAUSE).await;
                continue;
            }
            let (pairs, stopped_at) = merge(pages, span.reverse(), limit, max_bytes);
            match stopped_at {
                // Every pair walked was of a slot its group does not serve:
                // walk on rather than answer an empty page that says "more".
                Some(key) if pairs.is_empty() => span = span.after(&key),
                stopped_at => return Ok((pairs, stopped_at.is_some())),
            }
        }
    }

    /// A page of a scan at group `group`'s leader.
    async fn read_page(
        &self,
        group: GroupId,
        span: Span,
        limit: usize,
        keys_only: bool,
    ) -> Result<ScanPage, Error> {
        let from = self.settings.id;
        let rpc = || Rpc::ReadPage {
            from,
            span: span.clone(),
            limit,
            keys_only,
        };
        match self.at_leader(group, rpc).await? {
            RpcReply::Page(Ok(page)) => Ok(page),
            other => Err(cluster_failed(format!("group {group} answered {other:?}"))),
        }
    }

    /// A page of the pairs of `slots` at group `group`'s leader, after
    /// `after`.
    async fn read_slots(
        &self,
        group: GroupId,
        slots: (u16, u16),
        after: Option<Bytes>,
    ) -> Result<SlotPage, Error> {
        let from = self.settings.id;
        let rpc = || Rpc::ReadSlots {
            from,
            slots,
            after: after.clone(),
        };
        match self.at_leader(group, rpc).await? {
            RpcReply::SlotPage(Ok(page)) => Ok(page),
            other => Err(cluster_failed(format!("group {group} answered {other:?}"))),
        }
    }

    /// The nodes of group `group` with their addresses: group 1's
    /// membership, or where the sharding table placed another group.
    fn nodes_of(&self, group: GroupId) -> Result<BTreeMap<u64, Member>, Error> {
        if group == FIRST_GROUP {
            let members = self.first().status().members.into_iter();
            return Ok(members
                .map(|m| {
                    let member = Member {
                        raft_addr: m.raft_addr,
                        client_addr: m.addr,
                    };
                    (m.id, member)
                })
                .collect());
        }
        let shards = self.table();
        (shards.groups().get(&group))
            .map(|placement| placement.members.clone())
            .ok_or_else(|| cluster_failed(format!("there is no group {group}")))
    }

    /// `SetSlots`: what group `group` does with slots `first..=last`.
    async fn set_slots(
        &self,
        group: GroupId,
        first: u16,
        last: u16,
        state: SlotState,
    ) -> Result<(), Error> {
        let change = Change::SetSlots { first, last, state };
        self.propose_one(group, change).await.map(|_| ())
    }

    /// A slot move's step: group `group`'s slots `first..=last` go from
    /// `expected` to `state` ([`Change::SetSlotsIf`]).
    async fn step_slots(
        &self,
        group: GroupId,
        (first, last): (u16, u16),
        expected: SlotState,
        state: SlotState,
    ) -> Result<(), Error> {
        let change = Change::SetSlotsIf {
            first,
            last,
            expected,
            state,
        };
        self.propose_one(group, change).await.map(|_| ())
    }

    /// Moves slots `first..=last` from the group that serves them to group
    /// `to` (docs/sharding.md): records the move in group 1, then carries
    /// out its steps ([`Cluster::run_move`]). Returns the pairs copied.
    async fn move_slots(&self, first: u16, last: u16, to: GroupId) -> Result<u64, Error> {
        // One move at a time, coordinated by group 1's leader from its
        // current map.
        let _moving = self.moving.lock().await;
        self.first().read_barrier().await?;
        let map = self.first().shards().borrow().map().clone();
        let from = map.group_of(first);
        let one_source = (map.ranges().iter())
            .filter(|r| r.last >= first && r.first <= last)
            .all(|r| r.value == from);
        if first > last || last >= kvstore_client::slot::SLOTS || !one_source || from == to {
            return Err(cluster_failed(format!(
                "slots {first}-{last} must be a range served by one group other than {to}"
            )));
        }
        self.nodes_of(to)?;
        let record = Move {
            first,
            last,
            from,
            to,
            step: MoveStep::Begun,
            abort: false,
        };
        self.record_move(Some(record.clone())).await?;
        self.run_move(record).await
    }

    /// `Rebalance`: the moves [`rebalance::plan`] gives for what each slot
    /// holds now, carried out one after another. A failed move stops it;
    /// the moves done stay done, and running it again plans afresh.
    async fn rebalance(&self) -> Result<(), Error> {
        self.first().read_barrier().await?;
        let shards = self.table();
        if let Some(current) = shards.moving() {
            return Err(cluster_failed(format!(
                "the move of slots {}-{} is under way: let it finish or abort it first",
                current.first, current.last
            )));
        }
        // Group 1 runs on the cluster's voters, not from a placement.
        let mut groups: Vec<GroupId> = shards.groups().keys().copied().collect();
        if !groups.contains(&FIRST_GROUP) {
            groups.insert(0, FIRST_GROUP);
        }
        let owner: Vec<GroupId> = (0..SLOTS).map(|s| shards.map().group_of(s)).collect();
        let mut loads = vec![SlotLoad::default(); SLOTS as usize];
        for &group in &groups {
            self.read_loads(group, &owner, &mut loads).await?;
            let of_group = (0..SLOTS as usize).filter(|&s| owner[s] == group);
            let (slots, keys) = of_group.fold((0, 0), |(n, k), s| (n + 1, k + loads[s].keys));
            tracing::info!(group, slots, keys, "load before the rebalance");
        }
        let moves = rebalance::plan(&owner, &loads, &groups);
        tracing::info!(moves = moves.len(), "rebalancing");
        for Planned {
            first,
            last,
            from,
            to,
        } in moves
        {
            tracing::info!(first, last, from, to, "rebalance moves slots");
            self.move_slots(first, last, to).await?;
        }
        Ok(())
    }

    /// Adds what each slot group `group` serves (by `owner`) holds, as its
    /// leader walks it, to `loads`.
    async fn read_loads(
        &self,
        group: GroupId,
        owner: &[GroupId],
        loads: &mut [SlotLoad],
    ) -> Result<(), Error> {
        if !owner.contains(&group) {
            return Ok(());
        }
        let from = self.settings.id;
        let mut after = None;
        loop {
            let rpc = || Rpc::ReadLoads {
                from,
                after: after.clone(),
            };
            let page = match self.at_leader(group, rpc).await? {
                RpcReply::Loads(Ok(page)) => page,
                other => return Err(cluster_failed(format!("group {group} answered {other:?}"))),
            };
            for (slot, load) in page.slots {
                if owner[slot as usize] == group {
                    loads[slot as usize] = load;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// `MoveReplica`: group `group` runs on node `to` instead of `from`.
    /// Each step is skipped or done again when the command is sent again:
    /// the joiner is recorded in the table (it starts the group empty),
    /// catches up as a learner at the group's leader, becomes a voter in
    /// `from`'s place, and the leaver is taken out of the table (it stops
    /// the group and removes its data). Only group 1's leader coordinates:
    /// a deposed one stops at its next step, and the table takes a change
    /// of the nodes only from the nodes it has.
    async fn move_replica(&self, group: GroupId, from: u64, to: u64) -> Result<(), Error> {
        let _moving = self.moving.lock().await;
        self.first().read_barrier().await?;
        if group == FIRST_GROUP {
            return Err(cluster_failed(
                "group 1 runs on the cluster's voters: use add-learner, promote and remove",
            ));
        }
        let mut members = self.nodes_of(group)?;
        let joiner = (self.nodes_of(FIRST_GROUP)?.remove(&to))
            .ok_or_else(|| cluster_failed(format!("node {to} is not a member of the cluster")))?;
        if !members.contains_key(&to) {
            if !members.contains_key(&from) || from == to {
                return Err(cluster_failed(format!(
                    "node {from} does not run group {group}, or node {to} already does"
                )));
            }
            let expected = members.clone();
            members.insert(to, joiner.clone());
            self.record_replicas(group, expected, members.clone())
                .await?;
        }
        let learner = MembersChange::Learner {
            id: to,
            member: joiner,
        };
        self.first().read_barrier().await?;
        self.change_members(group, learner).await?;
        let expected = members.clone();
        members.remove(&from);
        let voters = members.keys().copied().collect();
        self.first().read_barrier().await?;
        self.change_members(group, MembersChange::Voters(voters))
            .await?;
        self.record_replicas(group, expected, members).await?;
        tracing::info!(group, from, to, "replica moved");
        Ok(())
    }

    /// Records in group 1 that group `group` runs on `members`, if it still
    /// runs on `expected`.
    async fn record_replicas(
        &self,
        group: GroupId,
        expected: BTreeMap<u64, Member>,
        members: BTreeMap<u64, Member>,
    ) -> Result<(), Error> {
        let change = Change::Replicas {
            group,
            expected,
            members,
        };
        (self.propose_one(FIRST_GROUP, change).await).map(|_| ())
    }

    /// Has group `group`'s leader make `change` to its members.
    async fn change_members(&self, group: GroupId, change: MembersChange) -> Result<(), Error> {
        let from = self.settings.id;
        let rpc = || Rpc::Members {
            from,
            change: change.clone(),
        };
        match self.at_leader(group, rpc).await? {
            RpcReply::Members(Ok(())) => Ok(()),
            other => Err(cluster_failed(format!("group {group} answered {other:?}"))),
        }
    }

    /// Writes the move under way, or none, in group 1's log.
    async fn record_move(&self, record: Option<Move>) -> Result<(), Error> {
        (self.propose_one(FIRST_GROUP, Change::Moving(record)).await).map(|_| ())
    }

    /// Carries out a recorded move from the step after its last one,
    /// recording each step once done; every step may be done again after a
    /// crash. The pairs copied (by this run).
    async fn run_move(&self, mut record: Move) -> Result<u64, Error> {
        let (started, mut frozen, mut copied) = (std::time::Instant::now(), None, 0);
        loop {
            // Only group 1's leader coordinates: a deposed one stops here
            // (and its older steps cannot be recorded).
            self.first().read_barrier().await?;
            let current = self.first().shards().borrow().moving().cloned();
            match current {
                Some(current) if current.abort => return self.undo_move(current).await,
                Some(current) if current.step >= record.step => record = current,
                // Finished, or taken over, by another coordinator.
                _ => return Ok(copied),
            }
            let Some(next) = self.next_step(&record, &mut copied).await? else {
                break;
            };
            match next {
                MoveStep::Frozen => frozen = Some(std::time::Instant::now()),
                MoveStep::Released => {
                    // benches/sharding.sh reads it (0: frozen before a resume).
                    let frozen_ms = frozen.map_or(0, |at| at.elapsed().as_millis() as u64);
                    tracing::info!(record.first, record.last, frozen_ms, "slots released");
                }
                _ => {}
            }
            record.step = next;
            self.record_move(Some(record.clone())).await?;
        }
        let Move {
            first,
            last,
            from,
            to,
            ..
        } = record;
        let total_ms = started.elapsed().as_millis() as u64;
        tracing::info!(first, last, from, to, copied, total_ms, "slots moved");
        Ok(copied)
    }

    /// Undoes a move asked to abort before its release: the source serves
    /// the slots again (its data is as the freeze left it), the target
    /// gives them up and drops what was copied, and the record is cleared.
    async fn undo_move(&self, record: Move) -> Result<u64, Error> {
        let Move {
            first,
            last,
            from,
            to,
            ..
        } = record;
        let slots = (first, last);
        self.step_slots(from, slots, SlotState::Frozen, SlotState::Serving)
            .await?;
        self.step_slots(to, slots, SlotState::Importing, SlotState::Elsewhere)
            .await?;
        self.purge_slots(to, (first, last)).await?;
        self.record_move(None).await?;
        tracing::info!(first, last, from, to, "slot move aborted");
        Err(cluster_failed(format!(
            "the move of slots {first}-{last} to group {to} was aborted"
        )))
    }

    /// `AbortMove`: asks the move under way to be undone (before its
    /// release only) and waits (a while) until it is.
    async fn abort_move(&self) -> Result<(), Error> {
        self.first().read_barrier().await?;
        let Some(current) = self.first().shards().borrow().moving().cloned() else {
            return Err(cluster_failed("no slot move is under way"));
        };
        let aborted = Move {
            abort: true,
            ..current.clone()
        };
        self.record_move(Some(aborted)).await?;
        let deadline = tokio::time::Instant::now() + ABORT_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.first().shards().borrow().moving().is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(cluster_failed(format!(
            "the abort of the move of slots {}-{} is recorded but not done after {ABORT_WAIT:?}",
            current.first, current.last
        )))
    }

    /// Does the step after `record`'s last one; the step done, or `None`
    /// once the last is done and the record cleared. Adds the pairs it
    /// copied to `copied`.
    async fn next_step(&self, record: &Move, copied: &mut u64) -> Result<Option<MoveStep>, Error> {
        let Move {
            first,
            last,
            from,
            to,
            ..
        } = *record;
        let next = match record.step {
            MoveStep::Begun => {
                self.step_slots(
                    to,
                    (first, last),
                    SlotState::Elsewhere,
                    SlotState::Importing,
                )
                .await?;
                MoveStep::Importing
            }
            MoveStep::Importing => {
                self.step_slots(from, (first, last), SlotState::Serving, SlotState::Frozen)
                    .await?;
                MoveStep::Frozen
            }
            MoveStep::Frozen => {
                *copied += self.copy_slots(from, to, (first, last)).await?;
                MoveStep::Copied
            }
            MoveStep::Copied => {
                self.step_slots(from, (first, last), SlotState::Frozen, SlotState::Elsewhere)
                    .await?;
                MoveStep::Released
            }
            MoveStep::Released => {
                let assign = Change::Assign {
                    first,
                    last,
                    group: to,
                };
                self.propose_one(FIRST_GROUP, assign).await?;
                MoveStep::Published
            }
            MoveStep::Published => {
                self.step_slots(to, (first, last), SlotState::Importing, SlotState::Serving)
                    .await?;
                MoveStep::Serving
            }
            MoveStep::Serving => {
                self.purge_slots(from, (first, last)).await?;
                self.record_move(None).await?;
                return Ok(None);
            }
        };
        Ok(Some(next))
    }

    /// Copies the pairs of `slots` from group `from`'s leader into group
    /// `to`, page by page; the pairs copied.
    async fn copy_slots(
        &self,
        from: GroupId,
        to: GroupId,
        slots: (u16, u16),
    ) -> Result<u64, Error> {
        let (mut after, mut copied) = (None, 0);
        loop {
            let page = self.read_slots(from, slots, after).await?;
            if !page.pairs.is_empty() {
                copied += page.pairs.len() as u64;
                self.import(to, page.pairs, page.deadlines).await?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(copied),
            }
        }
    }

    /// Writes a page of a slot move's copy into group `to`, each pair with
    /// its key's deadline if it has one, in one entry.
    async fn import(
        &self,
        to: GroupId,
        pairs: Vec<(Bytes, Bytes)>,
        deadlines: Vec<Option<u64>>,
    ) -> Result<(), Error> {
        let (mut items, mut timed) = (Vec::new(), Vec::new());
        for ((key, value), deadline) in pairs.into_iter().zip(deadlines) {
            match deadline {
                None => items.push((key, value)),
                Some(at) => timed.push((key, value, at)),
            }
        }
        let changes = [
            (Change::Import { items }),
            (Change::ImportTimed { items: timed }),
        ];
        let changes = changes
            .into_iter()
            .filter(|c| !c.keys().is_empty())
            .collect();
        for outcome in self.propose(to, changes).await? {
            outcome.into_result()?;
        }
        Ok(())
    }

    /// Removes the pairs of `slots` from group `from`, which no longer
    /// serves them.
    async fn purge_slots(&self, from: GroupId, slots: (u16, u16)) -> Result<(), Error> {
        let mut after = None;
        loop {
            let page = self.read_slots(from, slots, after).await?;
            if !page.pairs.is_empty() {
                let keys = page.pairs.into_iter().map(|(key, _)| key).collect();
                self.propose_one(from, Change::Purge { keys }).await?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// This node's view of the cluster: group 1's, and every group's it
    /// runs.
    pub fn status(&self) -> ClusterStatus {
        let first = self.first();
        let shards = first.shards().borrow().clone();
        let group = first.status();
        let groups = self
            .all()
            .iter()
            .map(|g| view(g.status(), &shards))
            .collect();
        ClusterStatus {
            node_id: self.settings.id,
            role: group.role.to_string(),
            term: group.term,
            leader: group.leader,
            last_log_index: group.last_log_index,
            applied_index: group.applied_index,
            pid: std::process::id(),
            members: (group.members.into_iter())
                .map(|member| ClusterMember {
                    resp_addr: shards.door(member.id).map(String::from),
                    ..member
                })
                .collect(),
            groups,
            moving: shards.moving().map(|m| MoveView {
                first: m.first,
                last: m.last,
                from: m.from,
                to: m.to,
                step: format!("{:?}", m.step),
            }),
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
/// key ([`Cluster::group_for`]); a burst's writes for one group stay one
/// unit, in order.
impl Log for Cluster {
    fn queue(&self, writes: Vec<Queued>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut runs: Vec<(Arc<Group>, Vec<Queued>)> = Vec::new();
            let mut flushes = Vec::new();
            let sharded = self.is_sharded();
            for write in writes {
                if sharded && is_flush(&write.change) {
                    flushes.push(self.fan_out_flush(write, &mut runs));
                    continue;
                }
                let group = match self.group_for(&write.change) {
                    Ok(group) => group,
                    Err(e) => {
                        // The caller has gone if it cannot be told.
                        let _ = write.done.send(Err(e));
                        continue;
                    }
                };
                match runs.last_mut() {
                    Some((last, run)) if last.id() == group.id() => run.push(write),
                    _ => runs.push((group, vec![write])),
                }
            }
            for (group, run) in runs {
                group.queue(run).await?;
            }
            for flush in flushes {
                flush.finish(self).await;
            }
            Ok(())
        })
    }

    /// A group whose openraft stopped on a failure of its log or state
    /// machine (an `fdatasync` error included) fails every write from then
    /// on, and `log_failed` says so.
    fn failure(&self) -> Option<String> {
        // Asked before every write: no allocation.
        self.groups
            .read()
            .values()
            .find_map(|group| group.failure())
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

/// How long a whole-cluster scan page waits for slots moving between its
/// groups' pages to settle before it answers `TryAgain` (below the
/// client's request timeout).
const SCAN_MOVE_WAIT: Duration = Duration::from_secs(2);

/// The pause before a scan page is read again.
const SCAN_MOVE_PAUSE: Duration = Duration::from_millis(20);

/// Whether `pages` answered for every slot exactly once between them
/// ([`ScanPage::answered`]).
fn answer_every_slot_once(pages: &[ScanPage]) -> bool {
    let mut times = vec![0u8; kvstore_client::slot::SLOTS as usize];
    for &(first, last) in pages.iter().flat_map(|page| &page.answered) {
        for slot in first..=last {
            let at = slot as usize % times.len();
            times[at] = times[at].saturating_add(1);
        }
    }
    times.iter().all(|&n| n == 1)
}

/// The keys of `slot` in `engine`, by a walk of all of them.
fn count_slot(engine: &dyn Engine, slot: u16) -> Result<u64, Error> {
    let mut count = 0;
    let mut after: Option<Bytes> = None;
    loop {
        let page = engine.keys(b"", after.as_deref(), 4096, usize::MAX)?;
        let of_slot = page
            .keys
            .iter()
            .filter(|key| kvstore_client::slot::slot_of(key) == slot);
        count += of_slot.count() as u64;
        if !page.more {
            return Ok(count);
        }
        after = page.keys.last().cloned();
    }
}

/// Runs `work` on `dir` off the async workers.
async fn blocking_fs(
    dir: &Path,
    work: impl FnOnce(&Path) -> std::io::Result<()> + Send + 'static,
) -> Result<(), Error> {
    let owned = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || work(&owned)).await {
        Ok(result) => result.map_err(|e| Error::io(dir, e)),
        Err(e) => Err(Error::StorageFailed(format!("{}: {e}", dir.display()))),
    }
}

/// Whether `change` is a flush (`Clear`), in a client session or not.
fn is_flush(change: &Change) -> bool {
    match change {
        Change::Write(WriteOp::Clear) => true,
        Change::Once { change, .. } => is_flush(change),
        _ => false,
    }
}

/// A flush of a sharded cluster under way ([`Cluster::fan_out_flush`]).
struct Flush {
    write: Queued,
    /// The answers of the groups this node leads, whose `Clear` is queued
    /// with the burst.
    here: Vec<oneshot::Receiver<Result<Applied, Error>>>,
    /// The groups led elsewhere, with the change to write in each.
    elsewhere: Vec<(GroupId, Change)>,
}

impl Flush {
    /// Writes the `Clear` in each group led elsewhere, then answers the
    /// flush once every group has: the first failure, or `Stored`.
    async fn finish(self, cluster: &Cluster) {
        let elsewhere =
            (self.elsewhere.into_iter()).map(|(group, change)| cluster.propose_one(group, change));
        let mut results = futures_util::future::join_all(elsewhere).await;
        let here = self.here;
        let done = self.write.done;
        // The groups led here apply theirs with the burst, after this.
        tokio::spawn(async move {
            for answer in here {
                let lost = || Error::OutcomeUnknown("a group's part of the flush was lost".into());
                results.push(answer.await.unwrap_or_else(|_| Err(lost())));
            }
            let failed = results.into_iter().find_map(Result::err);
            let _ = done.send(failed.map_or(Ok(Applied::Stored), Err));
        });
    }
}

/// Joins groups' pages of one scan, in its order (`reverse`: descending):
/// the pairs up to the first key past which some group stopped walking (it
/// has not looked beyond it), at most `limit` and about `max_bytes` of them
/// (at least one). The pairs, and the key the walk stopped at if it did:
/// the next page starts after it.
fn merge(
    pages: Vec<ScanPage>,
    reverse: bool,
    limit: usize,
    max_bytes: usize,
) -> (Vec<(Bytes, Bytes)>, Option<Bytes>) {
    let in_order = |a: &Bytes, b: &Bytes| if reverse { b.cmp(a) } else { a.cmp(b) };
    let stops = pages.iter().filter_map(|p| p.stopped_at.clone());
    let cut = stops.min_by(|a, b| in_order(a, b));
    let mut pairs: Vec<(Bytes, Bytes)> = (pages.into_iter())
        .flat_map(|page| page.pairs)
        .filter(|(key, _)| cut.as_ref().is_none_or(|cut| in_order(key, cut).is_le()))
        .collect();
    pairs.sort_by(|(a, _), (b, _)| in_order(a, b));
    let mut bytes = 0;
    let fits = pairs.iter().take_while(|(key, value)| {
        bytes += key.len() + value.len() + 16;
        bytes <= max_bytes
    });
    let keep = fits.count().clamp(1, limit.max(1));
    if pairs.len() > keep {
        pairs.truncate(keep);
        let last = pairs.last().map(|(key, _)| key.clone());
        return (pairs, last);
    }
    (pairs, cut)
}

/// The groups node `me` answers for among `shards` ([`Cluster::redis_groups`]).
fn answered_by(shards: &[RedisShard], me: u64) -> Vec<GroupId> {
    let led_by = |node: u64| -> Vec<GroupId> {
        (shards.iter())
            .filter(|s| s.nodes.first().is_some_and(|(id, _)| *id == node))
            .map(|s| s.group)
            .collect()
    };
    let mine = led_by(me);
    if !mine.is_empty() {
        return mine;
    }
    let listed = (shards.iter()).find(|s| s.nodes.iter().any(|(id, _)| *id == me));
    match listed.and_then(|s| s.nodes.first()) {
        Some((master, _)) => led_by(*master),
        None => Vec::new(),
    }
}

/// A group's status as `Cluster` reports it, with the slots `shards` gives
/// it.
fn view(status: GroupStatus, shards: &Shards) -> GroupView {
    let slots = (shards.map().ranges().iter())
        .filter(|range| range.value == status.id)
        .map(|range| (range.first, range.last))
        .collect();
    GroupView {
        id: status.id,
        role: status.role.to_string(),
        term: status.term,
        leader: status.leader,
        applied_index: status.applied_index,
        purged_index: status.purged_index,
        voters: (status.members.iter())
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect(),
        keys: status.keys,
        slots,
    }
}

/// The first voters of a new group: `nodes`, each a member of group 1
/// (whose `members` give their addresses); or, if none are named, the
/// three voters of group 1 that run the fewest groups.
fn placement_for(
    shards: &Shards,
    members: &[ClusterMember],
    nodes: Vec<u64>,
) -> Result<BTreeMap<u64, Member>, Error> {
    let load = |id: u64| {
        shards
            .groups()
            .values()
            .filter(|p| p.members.contains_key(&id))
            .count()
    };
    let nodes = match nodes.is_empty() {
        false => nodes,
        true => {
            let mut voters: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            voters.sort_by_key(|id| (load(*id), *id));
            voters.truncate(GROUP_REPLICAS);
            voters
        }
    };
    (nodes.into_iter())
        .map(|id| {
            let member = members.iter().find(|m| m.id == id).ok_or_else(|| {
                cluster_failed(format!("node {id} is not a member of the cluster"))
            })?;
            let member = Member {
                raft_addr: member.raft_addr.clone(),
                client_addr: member.addr.clone(),
            };
            Ok((id, member))
        })
        .collect()
}

/// Starts every group the sharding table places on this node that is not
/// running yet, whenever the table changes; a group that fails to start is
/// tried again a second later. Until shutdown.
async fn run_placed_groups(cluster: Arc<Cluster>, mut shards: watch::Receiver<Arc<Shards>>) {
    let shutdown = cluster.starter.shutdown.clone();
    loop {
        let table = shards.borrow_and_update().clone();
        let mut failed = false;
        let placed: Vec<GroupId> = (table.groups_of(cluster.settings.id))
            .map(|(id, _)| id)
            .collect();
        for &id in &placed {
            if shutdown.is_cancelled() || cluster.groups.read().contains_key(&id) {
                continue;
            }
            let first_voters = table.first_voters(id).cloned();
            if let Err(e) = cluster.start_group(id, first_voters).await {
                tracing::error!(group = id, "raft group did not start: {e}");
                failed = true;
            }
        }
        let left: Vec<GroupId> = (cluster.groups.read().keys())
            .filter(|id| **id != FIRST_GROUP && !placed.contains(id))
            .copied()
            .collect();
        for id in left {
            if let Err(e) = cluster.stop_group(id).await {
                tracing::error!(group = id, "raft group did not stop: {e}");
                failed = true;
            }
        }
        let retry = async {
            match failed {
                true => tokio::time::sleep(Duration::from_secs(1)).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = shards.changed() => if changed.is_err() { return },
            () = retry => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Records this node's RESP address in group 1's table until the table
/// holds it: once the cluster has a leader, and again if it changes (a
/// restart with another `--resp-listen`). Until shutdown.
async fn record_doors(cluster: Arc<Cluster>) {
    let shutdown = cluster.starter.shutdown.clone();
    let (me, resp) = (cluster.settings.id, cluster.settings.resp_addr.clone());
    loop {
        let first = cluster.first();
        let recorded = first.shards().borrow().door(me).map(String::from);
        // Not before the cluster has a leader: asking would wait for one.
        if recorded != resp && first.leader().is_some() {
            let change = Change::Doors {
                node: me,
                resp: resp.clone(),
            };
            if let Err(e) = cluster.propose_one(FIRST_GROUP, change).await {
                tracing::debug!("this node's RESP address is not recorded yet: {e}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// How often a node asks who leads the groups it does not run.
const LEADER_POLL: Duration = Duration::from_secs(1);

/// Keeps [`Cluster::leaders_elsewhere`]: every [`LEADER_POLL`], asks the
/// nodes of each group placed elsewhere who leads it, so that this node's
/// `CLUSTER SLOTS` and `-MOVED` name the leader, not merely a member.
/// Until shutdown.
async fn learn_leaders(cluster: Arc<Cluster>) {
    let shutdown = cluster.starter.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(LEADER_POLL) => {}
            () = shutdown.cancelled() => return,
        }
        let placed = cluster.table().groups().clone();
        let mut learned = BTreeMap::new();
        for (id, placement) in placed {
            if cluster.groups.read().contains_key(&id) {
                continue;
            }
            if let Some(leader) = cluster.ask_leader(id, &placement.members).await {
                learned.insert(id, leader);
            }
        }
        *cluster.leaders_elsewhere.write() = learned;
    }
}

/// Each group this node leads sweeps its expired keys (`crate::expiry`),
/// proposing the removals in its log; followers only hide them.
async fn sweep_led_groups(cluster: Arc<Cluster>) {
    let shutdown = cluster.starter.shutdown.clone();
    crate::expiry::every_tick(shutdown, || sweep_led(cluster.clone())).await;
}

/// One tick of [`sweep_led_groups`]: every led group is swept; the first
/// failure is the answer.
async fn sweep_led(cluster: Arc<Cluster>) -> Result<(), Error> {
    let led: Vec<Arc<Group>> = (cluster.groups.read().values())
        .filter(|group| group.leader() == Some(cluster.settings.id))
        .cloned()
        .collect();
    let mut result = Ok(());
    for group in led {
        let (id, proposer) = (group.id(), cluster.clone());
        let write: crate::expiry::Write = Arc::new(move |op| {
            let proposer = proposer.clone();
            Box::pin(async move { proposer.propose_one(id, Change::from(op)).await })
        });
        let clock = crate::storage::clock::Clock::System;
        let swept = crate::expiry::sweep_once(&group.engine(), &clock, &write).await;
        result = result.and(swept.map(drop));
    }
    result
}

/// How long `AbortMove` waits for the move to be undone.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// How often group 1's leader looks for a recorded move that no one is
/// carrying out (its coordinator died).
const MOVE_CHECK: Duration = Duration::from_millis(500);

/// On group 1's leader, carries out the recorded slot move, if any, that
/// no one here is carrying out: a move whose coordinator crashed, or lost
/// the leadership, is finished by the next leader. Until shutdown.
async fn finish_moves(cluster: Arc<Cluster>) {
    let shutdown = cluster.starter.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(MOVE_CHECK) => {}
            () = shutdown.cancelled() => return,
        }
        let first = cluster.first();
        let record = first.shards().borrow().moving().cloned();
        let (Some(record), "leader") = (record, first.status().role) else {
            continue;
        };
        let Ok(_moving) = cluster.moving.try_lock() else {
            continue;
        };
        tracing::info!(step = ?record.step, first = record.first, last = record.last, "finishing a slot move");
        if let Err(e) = cluster.run_move(record).await {
            tracing::warn!("the slot move did not finish, trying again: {e}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_answers_for_the_groups_it_leads_or_else_its_master_s() {
        let shard = |group: GroupId, nodes: &[u64]| RedisShard {
            group,
            slots: vec![],
            nodes: nodes.iter().map(|n| (*n, format!("h:{n}"))).collect(),
        };
        // Node 1 leads groups 1 and 3, node 2 group 2; node 3 leads none.
        let shards = [shard(1, &[1, 2, 3]), shard(2, &[2, 1]), shard(3, &[1, 3])];
        assert_eq!(answered_by(&shards, 1), vec![1, 3]);
        assert_eq!(answered_by(&shards, 2), vec![2]);
        // Its first group's master: node 1's groups, as CLUSTER NODES says.
        assert_eq!(answered_by(&shards, 3), vec![1, 3]);
        // A node in no group answers for none.
        assert_eq!(answered_by(&shards, 4), Vec::<GroupId>::new());
        // A group whose nodes recorded no RESP address has no master.
        assert_eq!(answered_by(&[shard(1, &[])], 1), Vec::<GroupId>::new());
    }

    #[test]
    fn a_scan_page_must_answer_for_each_slot_once() {
        let answering = |answered: Vec<(u16, u16)>| ScanPage {
            answered,
            ..page(&[], None)
        };
        let halves = [answering(vec![(0, 8191)]), answering(vec![(8192, 16383)])];
        assert!(answer_every_slot_once(&halves));
        let split = [
            answering(vec![(0, 99), (200, 16383)]),
            answering(vec![(100, 199)]),
        ];
        assert!(answer_every_slot_once(&split));
        // Slot 100 moved between the pages: answered by neither, or both.
        let neither = [answering(vec![(0, 99)]), answering(vec![(101, 16383)])];
        assert!(!answer_every_slot_once(&neither));
        let both = [answering(vec![(0, 100)]), answering(vec![(100, 16383)])];
        assert!(!answer_every_slot_once(&both));
        assert!(!answer_every_slot_once(&[]));
    }

    fn page(keys: &[&str], stopped_at: Option<&str>) -> ScanPage {
        let b = |k: &str| Bytes::copy_from_slice(k.as_bytes());
        ScanPage {
            answered: vec![(0, 16383)],
            pairs: keys.iter().map(|k| (b(k), b(k))).collect(),
            stopped_at: stopped_at.map(b),
        }
    }

    fn keys(merged: &(Vec<(Bytes, Bytes)>, Option<Bytes>)) -> (Vec<&[u8]>, Option<&[u8]>) {
        let keys = merged.0.iter().map(|(k, _)| &k[..]).collect();
        (keys, merged.1.as_deref())
    }

    #[test]
    fn a_scan_page_stops_where_the_first_group_stopped_looking() {
        // Group 1 walked up to c and has more; group 2 walked to its end.
        let pages = || vec![page(&["a", "c"], Some("c")), page(&["b", "e"], None)];
        let all = merge(pages(), false, 10, 1 << 20);
        assert_eq!(keys(&all), (vec![&b"a"[..], b"b", b"c"], Some(&b"c"[..])));
        // Cut by the limit: the next page starts after the last pair.
        let two = merge(pages(), false, 2, 1 << 20);
        assert_eq!(keys(&two), (vec![&b"a"[..], b"b"], Some(&b"b"[..])));
        // Descending, each group walking down.
        let down = vec![page(&["e", "c"], Some("c")), page(&["d", "a"], None)];
        let down = merge(down, true, 10, 1 << 20);
        assert_eq!(keys(&down), (vec![&b"e"[..], b"d", b"c"], Some(&b"c"[..])));
        // Both done: no more.
        let done = merge(
            vec![page(&["a"], None), page(&["b"], None)],
            false,
            10,
            1 << 20,
        );
        assert_eq!(keys(&done), (vec![&b"a"[..], b"b"], None));
        // Nothing kept but a group stopped: the caller walks on after c.
        let empty = merge(
            vec![page(&[], Some("c")), page(&[], None)],
            false,
            10,
            1 << 20,
        );
        assert_eq!(keys(&empty), (vec![], Some(&b"c"[..])));
    }
}
