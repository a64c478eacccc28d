//! Raft messages between nodes: the raft port (`--raft-listen`), one TCP
//! connection per message in flight, each message one frame of the server's
//! frame codec (4-byte big-endian length, bincode body).
//!
//! ```text
//! request:  bincode(Envelope { group, rpc })     response: bincode(RpcReply)
//! ```
//!
//! A node may run several Raft groups (sharding: docs/sharding.md). They
//! share the node's connections: every message names its group, and the
//! receiving node hands it to that group's [`Raft`] ([`Rafts`]).
//!
//! The sending side ([`Network`], [`Peer`]) keeps idle connections per peer
//! node, for all its groups, and dials a new one when none is idle. A
//! message that cannot be sent or answered within openraft's deadline (the
//! heartbeat interval for AppendEntries) fails, and the connection is
//! dropped. The receiving side ([`serve`]) answers each connection's
//! messages in order.
//!
//! With `--raft-tls-*` every connection is mutual TLS and carries messages
//! from one authenticated member only ([`PeerTls`]). Without, the raft port
//! has no authentication: a node refuses to start on a non-loopback raft
//! address that way unless told `--allow-insecure-raft` (docs/security.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kvstore_client::slot::GroupId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::peer_tls::PeerTls;
use super::rebalance::SlotLoad;
use super::shards::Shards;
use super::{Batch, Member, Outcomes, Raft, TypeConfig};
use crate::engine::Engine;
use crate::storage::store::Span;
use bytes::Bytes;
use kvstore_client::slot::slot_of;

/// The largest raft message: far above one AppendEntries of
/// `log::MAX_READ_BYTES` or one snapshot chunk, and above the largest single
/// write a client may send (`--max-frame`, which the caller adds).
pub const BASE_MAX_FRAME: usize = 64 << 20;

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 4;

/// How long dialing a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type Conn =
    Framed<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>, LengthDelimitedCodec>;

/// A message to a peer's raft port, for one of its groups.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub group: GroupId,
    pub rpc: Rpc,
}

/// A message for one group's [`Raft`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Node `from` asks the group to write `batch` (a cluster command for a
    /// group it does not lead): done if this node leads the group.
    Propose {
        from: u64,
        batch: Batch,
    },
    /// Node `from` asks the group's leader for a page of the pairs in slots
    /// `slots` (first, last), in key order after `after`: a slot move's
    /// copy and clean-up.
    ReadSlots {
        from: u64,
        slots: (u16, u16),
        after: Option<Bytes>,
    },
    /// Node `from` asks the group's leader for a page of a scan: up to
    /// `limit` pairs of `span`, of the slots the group serves; with
    /// `keys_only`, their values left empty.
    ReadPage {
        from: u64,
        span: Span,
        limit: usize,
        keys_only: bool,
    },
    /// Node `from`, which does not run the group, asks who leads it (for
    /// Redis Cluster's view of the cluster and its redirects).
    Leader {
        from: u64,
    },
    /// Node `from` asks the group's leader what each slot holds, in a page
    /// of the walk after `after` (`kvstore cluster rebalance`).
    ReadLoads {
        from: u64,
        after: Option<Bytes>,
    },
    /// Node `from` asks the group's leader to change the group's members
    /// (`kvstore cluster move-replica`).
    Members {
        from: u64,
        change: MembersChange,
    },
}

/// A change of a group's members ([`Rpc::Members`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembersChange {
    /// Node `id` joins as a learner; answered once it has caught up.
    Learner { id: u64, member: Member },
    /// These become the voters (joint consensus); a node that no longer
    /// votes leaves the group.
    Voters(BTreeSet<u64>),
}

impl Rpc {
    /// The node that sent it: the leader or the candidate its vote names,
    /// or the proposing node.
    pub fn sender(&self) -> Option<u64> {
        let vote = match self {
            Rpc::Append(rpc) => &rpc.vote,
            Rpc::Vote(rpc) => &rpc.vote,
            Rpc::Snapshot(rpc) => &rpc.vote,
            Rpc::Propose { from, .. }
            | Rpc::ReadSlots { from, .. }
            | Rpc::ReadPage { from, .. }
            | Rpc::ReadLoads { from, .. }
            | Rpc::Members { from, .. }
            | Rpc::Leader { from } => return Some(*from),
        };
        vote.leader_id().voted_for()
    }
}

/// Why a node did not write a [`Rpc::Propose`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Refusal {
    /// It does not lead the group; the leader it knows of.
    NotLeader(Option<u64>),
    /// The group could not write it; why.
    Failed(String),
}

/// The answer to an [`Rpc`], with the peer's raft error if it refused it.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The node runs no such group (yet, or any more).
    NoGroup(GroupId),
    /// What a [`Rpc::Propose`] did: each change's outcome.
    Proposed(Result<Outcomes, Refusal>),
    /// A page of [`Rpc::ReadSlots`].
    SlotPage(Result<SlotPage, Refusal>),
    /// A page of [`Rpc::ReadPage`].
    Page(Result<ScanPage, Refusal>),
    /// The leader this node knows of ([`Rpc::Leader`]).
    Leader(Option<u64>),
    /// A page of [`Rpc::ReadLoads`].
    Loads(Result<LoadPage, Refusal>),
    /// Whether the leader made an [`Rpc::Members`] change.
    Members(Result<(), Refusal>),
}

/// What the slots of a page of keys hold, and where the next page starts
/// (`None`: no more).
#[derive(Debug, Serialize, Deserialize)]
pub struct LoadPage {
    pub slots: Vec<(u16, SlotLoad)>,
    pub next: Option<Bytes>,
}

/// One group's page of a scan: the pairs of the slots it serves, and, if
/// the walk stopped before the span's end, the last key it walked (the
/// group has said nothing of the keys past it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPage {
    pub pairs: Vec<(Bytes, Bytes)>,
    pub stopped_at: Option<Bytes>,
    /// The slots whose pairs it kept, as ranges: a whole-cluster scan
    /// checks that its groups' pages answered for each slot once.
    pub answered: Vec<(u16, u16)>,
}

/// Pairs of some slots, and where the next page starts (`None`: no more).
#[derive(Debug, Serialize, Deserialize)]
pub struct SlotPage {
    pub pairs: Vec<(Bytes, Bytes)>,
    /// The deadline of each pair's key, if it has one.
    pub deadlines: Vec<Option<u64>>,
    pub next: Option<Bytes>,
}

/// Keys one [`Rpc::ReadSlots`] looks at: the whole group is walked in key
/// order, keeping the pairs of the slots asked for (docs/sharding.md).
const READ_SLOTS_KEYS: usize = 4096;

/// Roughly the most bytes of pairs a page holds, far below a frame.
const READ_SLOTS_BYTES: usize = 1 << 20;

/// Confirms that this node leads the group and has applied all that was
/// committed; else who leads it, as far as it knows.
async fn confirm_leader(raft: &Raft) -> Result<(), Refusal> {
    raft.ensure_linearizable().await.map(|_| ()).map_err(|e| {
        match e.forward_to_leader::<Member>() {
            Some(forward) => Refusal::NotLeader(forward.leader_id),
            None => Refusal::Failed(e.to_string()),
        }
    })
}

/// A page of the whole group's pairs in `engine` after `after`, and the
/// key the next page starts after (`None`: no more); once this node is
/// confirmed as the group's leader and has applied all that was committed.
async fn walk_group(
    raft: &Raft,
    engine: &dyn Engine,
    after: Option<Bytes>,
) -> Result<(Vec<(Bytes, Bytes)>, Option<Bytes>), Refusal> {
    confirm_leader(raft).await?;
    let span = Span::prefix(b"", after.as_deref(), false);
    let (walked, more) = (engine.pairs(&span, READ_SLOTS_KEYS, READ_SLOTS_BYTES))
        .map_err(|e| Refusal::Failed(e.to_string()))?;
    let next = more
        .then(|| walked.last().map(|(key, _)| key.clone()))
        .flatten();
    Ok((walked, next))
}

/// A page of the pairs of `slots` in `engine`, after `after`, once this
/// node is confirmed as the group's leader and has applied all that was
/// committed (so everything written before a freeze is there).
pub async fn read_slots(
    raft: &Raft,
    engine: &dyn Engine,
    (first, last): (u16, u16),
    after: Option<Bytes>,
) -> Result<SlotPage, Refusal> {
    let (walked, next) = walk_group(raft, engine, after).await?;
    let (mut pairs, mut deadlines) = (Vec::new(), Vec::new());
    for (key, value) in walked {
        if !(first..=last).contains(&slot_of(&key)) {
            continue;
        }
        // Read after the walk: a key the sweep removed meanwhile is left
        // out rather than copied without its deadline.
        match engine
            .deadline(&key)
            .map_err(|e| Refusal::Failed(e.to_string()))?
        {
            Some(deadline) => deadlines.push(deadline),
            None => continue,
        }
        pairs.push((key, value));
    }
    Ok(SlotPage {
        pairs,
        deadlines,
        next,
    })
}

/// What the slots of a page of the pairs in `engine` after `after` hold,
/// once this node is confirmed as the group's leader.
async fn read_loads(
    raft: &Raft,
    engine: &dyn Engine,
    after: Option<Bytes>,
) -> Result<LoadPage, Refusal> {
    let (walked, next) = walk_group(raft, engine, after).await?;
    let mut slots = BTreeMap::<u16, SlotLoad>::new();
    for (key, value) in &walked {
        let load = slots.entry(slot_of(key)).or_default();
        load.keys += 1;
        load.bytes += (key.len() + value.len()) as u64;
    }
    let slots = slots.into_iter().collect();
    Ok(LoadPage { slots, next })
}

/// Roughly the most bytes of pairs a scan page of one group holds.
const READ_PAGE_BYTES: usize = 1 << 20;

/// A page of `span` in `engine`, up to `limit` pairs walked, keeping those
/// of the slots `serves` says the group serves; once this node is
/// confirmed as the group's leader and has applied all that was committed.
async fn read_page(
    served: &Served,
    span: &Span,
    limit: usize,
    keys_only: bool,
) -> Result<ScanPage, Refusal> {
    confirm_leader(&served.raft).await?;
    // No apply, and so no new slot states, until the walk is done: the
    // states read are those of the data walked.
    let _pages = served.pages.read();
    let shards = served.shards.borrow().clone();
    let (walked, more) = (served.engine.pairs(span, limit, READ_PAGE_BYTES))
        .map_err(|e| Refusal::Failed(e.to_string()))?;
    let stopped_at = more
        .then(|| walked.last().map(|(key, _)| key.clone()))
        .flatten();
    let pairs = (walked.into_iter())
        .filter(|(key, _)| shards.answers(slot_of(key)))
        .map(|(key, value)| (key, if keys_only { Bytes::new() } else { value }))
        .collect();
    let answered = shards.answered();
    Ok(ScanPage {
        pairs,
        stopped_at,
        answered,
    })
}

/// The groups this node runs, by id: where [`serve`] hands each message.
#[derive(Default)]
pub struct Rafts(RwLock<HashMap<GroupId, Served>>);

/// A group as the raft port serves it: its openraft, and its data and
/// slot states for a slot move's copy ([`Rpc::ReadSlots`]) and scans
/// ([`Rpc::ReadPage`]).
#[derive(Clone)]
struct Served {
    raft: Raft,
    engine: Arc<dyn Engine>,
    shards: watch::Receiver<Arc<Shards>>,
    /// Read while a page walks (`StateMachine::pages`).
    pages: Arc<RwLock<()>>,
}

impl Served {
    async fn answer(&self, rpc: Rpc) -> RpcReply {
        let raft = &self.raft;
        match rpc {
            Rpc::Append(rpc) => RpcReply::Append(raft.append_entries(rpc).await),
            Rpc::Vote(rpc) => RpcReply::Vote(raft.vote(rpc).await),
            Rpc::Snapshot(rpc) => RpcReply::Snapshot(raft.install_snapshot(rpc).await),
            Rpc::Propose { batch, .. } => RpcReply::Proposed(propose(raft, batch).await),
            Rpc::ReadSlots { slots, after, .. } => {
                RpcReply::SlotPage(read_slots(raft, &*self.engine, slots, after).await)
            }
            Rpc::ReadPage {
                span,
                limit,
                keys_only,
                ..
            } => RpcReply::Page(read_page(self, &span, limit, keys_only).await),
            Rpc::Leader { .. } => RpcReply::Leader(raft.metrics().borrow().current_leader),
            Rpc::ReadLoads { after, .. } => {
                RpcReply::Loads(read_loads(raft, &*self.engine, after).await)
            }
            Rpc::Members { change, .. } => RpcReply::Members(change_members(raft, change).await),
        }
    }
}

impl RpcReply {
    /// Why the node did not do what a [`Rpc::Propose`] or
    /// [`Rpc::ReadSlots`] asked, if it did not.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            RpcReply::Proposed(Err(refusal))
            | RpcReply::SlotPage(Err(refusal))
            | RpcReply::Page(Err(refusal))
            | RpcReply::Loads(Err(refusal))
            | RpcReply::Members(Err(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

impl Rafts {
    /// Answers `rpc` for `group` on this node, as a message from a peer
    /// would be.
    pub async fn answer(&self, group: GroupId, rpc: Rpc) -> RpcReply {
        match self.get(group) {
            None => RpcReply::NoGroup(group),
            Some(served) => served.answer(rpc).await,
        }
    }

    /// From now on messages for `group` go to `raft`, over `engine`, with
    /// its slot states in `shards`.
    pub fn insert(
        &self,
        group: GroupId,
        raft: Raft,
        engine: Arc<dyn Engine>,
        shards: watch::Receiver<Arc<Shards>>,
        pages: Arc<RwLock<()>>,
    ) {
        (self.0.write()).insert(
            group,
            Served {
                raft,
                engine,
                shards,
                pages,
            },
        );
    }

    fn get(&self, group: GroupId) -> Option<Served> {
        self.0.read().get(&group).cloned()
    }

    /// From now on messages for `group` are answered `NoGroup`.
    pub fn remove(&self, group: GroupId) {
        self.0.write().remove(&group);
    }

    /// Every node that some group here counts as a member.
    fn members(&self) -> BTreeSet<u64> {
        let rafts = self.0.read();
        let memberships = rafts
            .values()
            .map(|served| served.raft.metrics().borrow().membership_config.clone());
        memberships
            .flat_map(|m| m.nodes().map(|(id, _)| *id).collect::<Vec<_>>())
            .collect()
    }
}

/// Dials peers for one group; shared by every [`Peer`] its openraft makes.
#[derive(Clone)]
pub struct Network {
    group: GroupId,
    links: Arc<Links>,
}

/// What every group of a node shares to reach its peers.
struct Links {
    /// Idle connections, by peer address.
    idle: Mutex<HashMap<String, Vec<Conn>>>,
    /// The raft addresses this node was given for its peers (`--peers`, the
    /// cluster file). They win over the membership's, which holds the
    /// addresses the cluster was initialised with: each node may reach a
    /// peer by its own route (a NAT, a proxy, the tests' link proxies).
    dial: HashMap<u64, String>,
    /// Mutual TLS with every peer, when configured.
    tls: Option<Arc<PeerTls>>,
    max_frame: usize,
}

impl Network {
    /// Group `group`'s network, the first of a node.
    pub fn new(
        group: GroupId,
        max_frame: usize,
        dial: HashMap<u64, String>,
        tls: Option<Arc<PeerTls>>,
    ) -> Network {
        let links = Links {
            idle: Mutex::default(),
            dial,
            tls,
            max_frame,
        };
        Network {
            group,
            links: Arc::new(links),
        }
    }

    /// Another group's network on the same connections.
    pub fn for_group(&self, group: GroupId) -> Network {
        Network {
            group,
            links: self.links.clone(),
        }
    }
}

/// One peer, as openraft sees it. Does not connect until a message is sent.
pub struct Peer {
    target: u64,
    addr: String,
    network: Network,
}

/// Why a message got no answer.
enum Failed {
    /// The peer could not be dialed: openraft waits before trying again.
    Unreachable(std::io::Error),
    /// The connection broke or the answer did not come in time.
    Network(std::io::Error),
}

impl<E: std::error::Error> From<Failed> for RPCError<u64, Member, E> {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Failed::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl Peer {
    /// Sends `rpc` and waits for the answer, within `deadline`.
    async fn call(&self, rpc: Rpc, deadline: Duration) -> Result<RpcReply, Failed> {
        let group = self.network.group;
        let body = kvstore_client::codec::encode(&Envelope { group, rpc })
            .map_err(|e| Failed::Network(std::io::Error::other(e.to_string())))?;
        let links = &self.network.links;
        let reused = links.idle.lock().get_mut(&self.addr).and_then(Vec::pop);
        let mut conn = match reused {
            Some(conn) => conn,
            None => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                    .await
                    .map_err(|_| {
                        Failed::Unreachable(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("connecting to {} timed out", self.addr),
                        ))
                    })?
                    .map_err(Failed::Unreachable)?;
                let _ = stream.set_nodelay(true);
                let io = match &links.tls {
                    None => Either::Left(stream),
                    Some(tls) => Either::Right(
                        tls.connect(stream, self.target)
                            .await
                            .map_err(Failed::Unreachable)?,
                    ),
                };
                Framed::new(io, kvstore_client::codec::frame_codec(links.max_frame))
            }
        };
        let exchange = async {
            conn.send(bytes::Bytes::from(body)).await?;
            match conn.next().await {
                Some(frame) => {
                    let frame = frame?;
                    kvstore_client::codec::decode::<RpcReply>(&frame)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                }
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                )),
            }
        };
        let reply = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| {
                Failed::Network(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from node {} within {deadline:?}", self.target),
                ))
            })?
            .map_err(Failed::Network)?;
        let mut idle = links.idle.lock();
        let list = idle.entry(self.addr.clone()).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
        drop(idle);
        match reply {
            // Not yet created there, or removed: openraft waits and retries.
            RpcReply::NoGroup(group) => Err(Failed::Unreachable(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("node {} runs no group {group}", self.target),
            ))),
            reply => Ok(reply),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, Member, E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "node {} answered a different message",
            self.target
        ))))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Peer {
        let addr = (self.links.dial.get(&target))
            .unwrap_or(&node.raft_addr)
            .clone();
        Peer {
            target,
            addr,
            network: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.call(Rpc::Append(rpc), option.hard_ttl()).await? {
            RpcReply::Append(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.call(Rpc::Snapshot(rpc), option.hard_ttl()).await? {
            RpcReply::Snapshot(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await? {
            RpcReply::Vote(reply) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// Writes `batch` through `raft` if this node leads its group.
pub async fn propose(raft: &Raft, batch: Batch) -> Result<Outcomes, Refusal> {
    raft.client_write(batch)
        .await
        .map(|written| written.data)
        .map_err(refusal)
}

/// Makes `change` to the group's members if this node leads it.
async fn change_members(raft: &Raft, change: MembersChange) -> Result<(), Refusal> {
    if super::group::leads_outside_voters(raft) {
        return Err(Refusal::NotLeader(None));
    }
    match change {
        MembersChange::Learner { id, member } => raft.add_learner(id, member, true).await.map(drop),
        MembersChange::Voters(voters) => {
            let change = openraft::ChangeMembers::ReplaceAllVoters(voters);
            raft.change_membership(change, false).await.map(drop)
        }
    }
    .map_err(refusal)
}

/// A write's error as the refusal a peer gets: who leads, if not this node.
fn refusal(e: RaftError<u64, openraft::error::ClientWriteError<u64, Member>>) -> Refusal {
    match e.forward_to_leader::<Member>() {
        Some(forward) => Refusal::NotLeader(forward.leader_id),
        None => Refusal::Failed(e.to_string()),
    }
}

impl Network {
    /// Sends `rpc` (for this network's group) to node `target` at raft
    /// address `addr` and waits for the answer (a commit at most).
    pub async fn ask(&self, target: u64, addr: String, rpc: Rpc) -> std::io::Result<RpcReply> {
        let peer = Peer {
            target,
            addr,
            network: self.clone(),
        };
        peer.call(rpc, ASK_TIMEOUT).await.map_err(|e| match e {
            Failed::Unreachable(e) | Failed::Network(e) => e,
        })
    }

    /// Where this node reaches node `id`: the address it was given for
    /// it, else `known`.
    pub fn address_of(&self, id: u64, known: &str) -> String {
        self.links
            .dial
            .get(&id)
            .map_or(known, |a| a.as_str())
            .to_string()
    }
}

/// How long a node's own request to another ([`Network::ask`]) may take:
/// a commit, not a heartbeat.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers raft messages on `listener` until `shutdown`; with `tls`, only
/// from peers that authenticate as members ([`PeerTls`]).
pub async fn serve(
    listener: TcpListener,
    rafts: Arc<Rafts>,
    tls: Option<Arc<PeerTls>>,
    max_frame: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("raft port accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (rafts, tls, shutdown) = (rafts.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let (io, sender) = match tls {
                None => (Either::Left(stream), None),
                Some(tls) => match authenticate(&tls, stream, &rafts).await {
                    Ok((stream, id)) => (Either::Right(stream), Some(id)),
                    Err(e) => {
                        tracing::warn!(%peer, "raft peer refused: {e}");
                        return;
                    }
                },
            };
            let conn = Framed::new(io, kvstore_client::codec::frame_codec(max_frame));
            answer(conn, peer, sender, &rafts, shutdown).await;
        });
    }
}

/// The TLS handshake of an accepted connection, and the check that the
/// peer it names is a member of one of this node's groups (any node, before
/// this one has a membership: it is waiting to be added).
async fn authenticate(
    tls: &PeerTls,
    stream: TcpStream,
    rafts: &Rafts,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, u64)> {
    let (stream, id) = tls.accept(stream).await?;
    let members = rafts.members();
    let known = members.is_empty() || members.contains(&id);
    if !known {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("node {id} is not a member of the cluster"),
        ));
    }
    Ok((stream, id))
}

/// Answers one connection's messages in order, from node `sender` only
/// when the connection authenticated it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Framed<S, LengthDelimitedCodec>,
    peer: std::net::SocketAddr,
    sender: Option<u64>,
    rafts: &Rafts,
    shutdown: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            frame = conn.next() => frame,
            _ = shutdown.cancelled() => return,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(%peer, "raft connection ended: {e}");
                return;
            }
            None => return,
        };
        let Envelope { group, rpc } = match kvstore_client::codec::decode(&frame) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(%peer, "undecodable raft message, closing: {e}");
                return;
            }
        };
        if sender.is_some() && rpc.sender() != sender {
            tracing::warn!(%peer, ?sender, claimed = ?rpc.sender(), "raft message from a node other than the one its certificate names, closing");
            return;
        }
        let reply = rafts.answer(group, rpc).await;
        let body = match kvstore_client::codec::encode(&reply) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!("raft reply did not encode: {e}");
                return;
            }
        };
        if conn.send(bytes::Bytes::from(body)).await.is_err() {
            return;
        }
    }
}
