//! The group commit of cluster mode: writes gathered into one Raft proposal.
//!
//! openraft 0.9 writes one log entry, with its own `fdatasync` on every node,
//! per `client_write`. One proposal per client write would make every write
//! wait for the fsyncs of all those before it. So, as the single-node commit
//! thread does, the batcher takes everything that queued while earlier
//! proposals were in flight (up to [`MAX_BATCH_OPS`] writes or
//! [`MAX_BATCH_BYTES`]) into one [`Batch`], with at most [`IN_FLIGHT`]
//! proposals outstanding.
//!
//! Each write's outcome comes from the leader's apply of the entry, so it is
//! sent only once a majority has the entry durably in its log and the leader
//! applied it.

use std::sync::Arc;

use kvstore_client::ErrorCode;
use tokio::sync::{mpsc, Semaphore};

use super::{Batch, Member, Raft};
use crate::error::Error;
use crate::log::Queued;
use crate::storage::change::Change;

/// Writes waiting for the batcher.
const QUEUE_DEPTH: usize = 4096;
/// The most writes in one proposal.
const MAX_BATCH_OPS: usize = 4096;
/// Roughly the most bytes in one proposal: one log entry, which a follower
/// must receive and sync within a heartbeat interval (see
/// `log::MAX_READ_BYTES`). A single larger write (a big `BulkSet`) is still
/// one entry of its own.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Proposals outstanding at once: the next batch gathers while these wait.
const IN_FLIGHT: usize = 4;

/// Writes queued together (a pipelined burst stays together).
struct Burst(Vec<Queued>);

/// Hands writes to the batcher. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Burst>,
}

impl Proposer {
    /// Starts the batcher for `raft`.
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(batcher(raft, rx));
        Proposer { tx }
    }

    /// Queues writes, in order, as one unit. Each keeps its share of the
    /// byte budget until it is answered.
    pub async fn queue(&self, writes: Vec<Queued>) -> Result<(), Error> {
        self.tx
            .send(Burst(writes))
            .await
            .map_err(|_| Error::ShuttingDown)
    }
}

async fn batcher(raft: Raft, mut rx: mpsc::Receiver<Burst>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Burst> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut writes = first.0;
        let mut bytes: usize = writes.iter().map(|w| w.change.approx_len()).sum();
        while writes.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    let more: usize = q.0.iter().map(|w| w.change.approx_len()).sum();
                    if writes.len() + q.0.len() > MAX_BATCH_OPS || bytes + more > MAX_BATCH_BYTES {
                        carried = Some(q);
                        break;
                    }
                    bytes += more;
                    writes.extend(q.0);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            // The budget permits stay with `done` until each is answered.
            let (changes, done): (Vec<Change>, Vec<_>) = writes
                .into_iter()
                .map(|w| (w.change, (w.done, w.budget)))
                .unzip();
            // "Not the leader" is answered only from this check, before
            // anything is proposed: then nothing was done. Once proposed, a
            // failure leaves the outcome unknown (openraft also answers
            // ForwardToLeader for an entry a deposed leader drops, which a
            // later leader may still commit).
            let term = match leading(&raft) {
                Ok(term) => term,
                Err(leader) => {
                    for (done, _budget) in done {
                        let _ = done.send(Err(not_leader(leader.as_ref())));
                    }
                    return;
                }
            };
            // openraft 0.9 does not always answer a proposal its leader
            // lost: a deposed leader that catches up from a snapshot keeps
            // the callers of its uncommitted entries waiting for good. So a
            // proposal also ends when this node stops leading the term it
            // was made in, with its outcome unknown, and its permit is freed.
            let result = tokio::select! {
                result = raft.client_write(Batch(changes)) => {
                    result.map_err(|e| format!("the proposal failed: {e}"))
                }
                () = deposed(&raft, term) => Err(format!(
                    "this node stopped leading term {term} before the write was committed"
                )),
            };
            match result {
                Ok(response) => {
                    for ((done, _budget), outcome) in done.into_iter().zip(response.data.0) {
                        let _ = done.send(outcome.into_result());
                    }
                }
                Err(why) => {
                    for (done, _budget) in done {
                        let _ = done.send(Err(Error::OutcomeUnknown(why.clone())));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Returns once `raft` is no longer the leader of `term` (or has stopped).
async fn deposed(raft: &Raft, term: u64) {
    let mut metrics = raft.metrics();
    loop {
        {
            let now = metrics.borrow_and_update();
            if now.current_term != term || now.state != openraft::ServerState::Leader {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The term this node leads; else the leader it knows, if any.
fn leading(raft: &Raft) -> Result<u64, Option<Member>> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    if metrics.state == openraft::ServerState::Leader {
        return Ok(metrics.current_term);
    }
    let leader = metrics.current_leader.and_then(|id| {
        metrics
            .membership_config
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, member)| member.clone())
    });
    Err(leader)
}

/// "Not the leader", naming the leader's client address if known. Nothing
/// was written.
pub fn not_leader(leader: Option<&Member>) -> Error {
    Error::Rejected {
        code: ErrorCode::NotLeader,
        message: match leader {
            Some(member) => format!("not the leader; leader at {}", member.client_addr),
            None => "not the leader; no leader known yet".to_string(),
        },
    }
}
