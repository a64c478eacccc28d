//! Raft messages between nodes: the raft port (`--raft-listen`), one TCP
//! connection per message in flight, each message one frame of the server's
//! frame codec (4-byte big-endian length, bincode body).
//!
//! ```text
//! request:  bincode(Rpc)        response: bincode(RpcReply)
//! ```
//!
//! The sending side ([`Network`], [`Peer`]) keeps idle connections per peer
//! and dials a new one when none is idle. A message that cannot be sent or
//! answered within openraft's deadline (the heartbeat interval for
//! AppendEntries) fails, and the connection is dropped. The receiving side
//! ([`serve`]) answers each connection's messages in order by handing them to
//! the local [`Raft`].
//!
//! The raft port has no authentication: bind it to an address only the
//! cluster's nodes can reach (docs/replication.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Member, Raft, TypeConfig};

/// The largest raft message: far above one AppendEntries of
/// `log::MAX_READ_BYTES` or one snapshot chunk, and above the largest single
/// write a client may send (`--max-frame`, which the caller adds).
pub const BASE_MAX_FRAME: usize = 64 << 20;

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 4;

/// How long dialing a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

/// A message to a peer's raft port.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to an [`Rpc`], with the peer's raft error if it refused it.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Dials peers; shared by every [`Peer`] openraft makes.
#[derive(Clone)]
pub struct Network {
    /// Idle connections, by peer address.
    idle: Arc<Mutex<HashMap<String, Vec<Conn>>>>,
    /// The raft addresses this node was given for its peers (`--peers`, the
    /// cluster file). They win over the membership's, which holds the
    /// addresses the cluster was initialised with: each node may reach a
    /// peer by its own route (a NAT, a proxy, the tests' link proxies).
    dial: Arc<HashMap<u64, String>>,
    max_frame: usize,
}

impl Network {
    pub fn new(max_frame: usize, dial: HashMap<u64, String>) -> Network {
        Network {
            idle: Arc::default(),
            dial: Arc::new(dial),
            max_frame,
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
        let body = kvstore_client::codec::encode(&rpc)
            .map_err(|e| Failed::Network(std::io::Error::other(e.to_string())))?;
        let reused = self
            .network
            .idle
            .lock()
            .get_mut(&self.addr)
            .and_then(Vec::pop);
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
                Framed::new(
                    stream,
                    kvstore_client::codec::frame_codec(self.network.max_frame),
                )
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
        let mut idle = self.network.idle.lock();
        let list = idle.entry(self.addr.clone()).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
        Ok(reply)
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
        let addr = self.dial.get(&target).unwrap_or(&node.raft_addr).clone();
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

/// Answers raft messages on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    raft: Raft,
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
        let raft = raft.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut conn = Framed::new(stream, kvstore_client::codec::frame_codec(max_frame));
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
                let rpc = match kvstore_client::codec::decode::<Rpc>(&frame) {
                    Ok(rpc) => rpc,
                    Err(e) => {
                        tracing::warn!(%peer, "undecodable raft message, closing: {e}");
                        return;
                    }
                };
                let reply = match rpc {
                    Rpc::Append(rpc) => RpcReply::Append(raft.append_entries(rpc).await),
                    Rpc::Vote(rpc) => RpcReply::Vote(raft.vote(rpc).await),
                    Rpc::Snapshot(rpc) => RpcReply::Snapshot(raft.install_snapshot(rpc).await),
                };
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
        });
    }
}
