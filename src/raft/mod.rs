//! Cluster mode: every write replicated through Raft (openraft 0.9), when the
//! server runs with `--node-id`. Single-node mode does not touch this module.
//!
//! The write path in cluster mode:
//!
//! 1. A connection's write ([`Change`]) goes to the [`propose`] batcher
//!    instead of the group-commit thread. The batcher gathers what arrives
//!    while the previous proposal is in flight into one [`Batch`], the
//!    group commit of cluster mode (openraft writes one log entry per
//!    proposal).
//! 2. openraft appends the entry to the leader's [`log`] (`fdatasync` before
//!    it counts), sends it to the followers over the raft port ([`network`]),
//!    and commits it once a majority has it durably in its log.
//! 3. Every node applies committed entries to its store in the [`state`]
//!    machine. The writes that read first (`Incr`, `SetIf`, ...) are resolved
//!    there, against the state all earlier entries left, which is the same
//!    on every node.
//! 4. The leader answers each write with its outcome from the apply.
//!
//! Reads in cluster mode go to the leader's store after a quorum round that
//! confirms it is still the leader (`Raft::ensure_linearizable`).
//! `docs/replication.md` says what is promised.

pub mod group;
pub mod log;
pub mod network;
pub mod node;
pub mod peer_tls;
pub mod propose;
pub mod rebalance;
pub mod sessions;
pub mod shards;
pub mod state;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::storage::change::{Change, Resolved};
use crate::storage::store::Applied;

openraft::declare_raft_types!(
    /// The types openraft runs kvstore with.
    pub TypeConfig:
        D = Batch,
        R = Outcomes,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// The raft handle of this node.
pub type Raft = openraft::Raft<TypeConfig>;

/// The group a cluster's data is in until it is sharded: every slot.
pub const FIRST_GROUP: kvstore_client::slot::GroupId = 1;

/// A node as the cluster's membership records it: where its peers reach it
/// and where clients do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The raft port (`--raft-listen`), for the other nodes.
    pub raft_addr: String,
    /// The native port (`--listen`), for clients: a "not leader" error names
    /// it.
    pub client_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (raft {})", self.client_addr, self.raft_addr)
    }
}

/// One log entry's writes: what the batcher gathered for one proposal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch(pub Vec<Change>);

/// The outcome of each write of a [`Batch`], in order, from its apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcomes(pub Vec<Outcome>);

/// What one write did, as [`Applied`] or a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Stored,
    Deleted(bool),
    Bool(bool),
    Value(Option<Bytes>),
    Int(i64),
    /// Nothing was written: the error's code and message
    /// (`Error::Rejected`).
    Rejected {
        code: u32,
        message: String,
    },
    /// A transaction's branch and what each of its operations did (a
    /// refused one as `Rejected`).
    Txn {
        succeeded: bool,
        each: Vec<Outcome>,
    },
    /// A key's value and revisions (a transaction's read).
    Versioned {
        value: Option<Bytes>,
        modified: u64,
        created: u64,
    },
}

impl Outcome {
    pub fn from_result(result: Result<Applied, Error>) -> Outcome {
        match result {
            Ok(applied) => Outcome::from_applied(applied),
            Err(e) => Outcome::from_error(&e),
        }
    }

    fn from_applied(applied: Applied) -> Outcome {
        match applied {
            Applied::Stored => Outcome::Stored,
            Applied::Deleted(b) => Outcome::Deleted(b),
            Applied::Bool(b) => Outcome::Bool(b),
            Applied::Value(v) => Outcome::Value(v),
            Applied::Int(n) => Outcome::Int(n),
            Applied::Removed(keys) => Outcome::Int(keys.len() as i64),
            Applied::Txn { succeeded, each } => Outcome::Txn {
                succeeded,
                each: each.into_iter().map(Outcome::from_applied).collect(),
            },
            Applied::Refused { code, message } => Outcome::Rejected {
                code: code as u32,
                message,
            },
            Applied::Versioned { value, revisions } => Outcome::Versioned {
                value,
                modified: revisions.modified,
                created: revisions.created,
            },
        }
    }

    fn from_error(e: &Error) -> Outcome {
        match e {
            Error::Rejected { code, message } => Outcome::Rejected {
                code: *code as u32,
                message: message.clone(),
            },
            e => Outcome::Rejected {
                code: kvstore_client::ErrorCode::StorageFailed as u32,
                message: e.to_string(),
            },
        }
    }

    /// The outcome of a resolved write, given what the engine did for its
    /// op (as [`Resolved::outcome`], without consuming it).
    pub fn of(resolved: &Resolved, done: Option<&Applied>) -> Outcome {
        match (resolved, done) {
            (Resolved::Apply(_), Some(applied)) | (Resolved::Log(_, applied), _) => {
                Outcome::from_applied(applied.clone())
            }
            (Resolved::Answer(Ok(applied)), _) => Outcome::from_applied(applied.clone()),
            (Resolved::Answer(Err(e)), _) => Outcome::from_error(e),
            (Resolved::Apply(_), None) => Outcome::from_error(&Error::StorageFailed(
                "a write was answered without being applied".into(),
            )),
        }
    }

    pub fn into_result(self) -> Result<Applied, Error> {
        match self {
            Outcome::Stored => Ok(Applied::Stored),
            Outcome::Deleted(b) => Ok(Applied::Deleted(b)),
            Outcome::Bool(b) => Ok(Applied::Bool(b)),
            Outcome::Value(v) => Ok(Applied::Value(v)),
            Outcome::Int(n) => Ok(Applied::Int(n)),
            Outcome::Rejected { code, message } => Err(Error::Rejected {
                code: kvstore_client::ErrorCode::from_code(code)
                    .unwrap_or(kvstore_client::ErrorCode::StorageFailed),
                message,
            }),
            Outcome::Versioned {
                value,
                modified,
                created,
            } => Ok(Applied::Versioned {
                value,
                revisions: crate::storage::store::Revisions { modified, created },
            }),
            Outcome::Txn { succeeded, each } => Ok(Applied::Txn {
                succeeded,
                each: (each.into_iter())
                    .map(|outcome| match outcome.into_result() {
                        Ok(applied) => applied,
                        Err(Error::Rejected { code, message }) => {
                            Applied::Refused { code, message }
                        }
                        Err(e) => Applied::Refused {
                            code: kvstore_client::ErrorCode::StorageFailed,
                            message: e.to_string(),
                        },
                    })
                    .collect(),
            }),
        }
    }
}

/// Roughly the bytes an entry takes on the wire, to keep replication
/// messages under the raft port's frame limit.
pub fn entry_size(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(batch) => {
            64 + batch.0.iter().map(Change::approx_len).sum::<usize>()
        }
        _ => 256,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;
    use tempfile::TempDir;

    use super::log::LogStore;
    use super::state::StateMachine;
    use super::TypeConfig;
    use crate::engine::disk::Disk;
    use crate::engine::memory::Memory;
    use crate::engine::Engine;
    use crate::storage::fs::RealFs;
    use crate::storage::store::Store;

    /// A fresh log and state machine, over the memory engine or the disk
    /// engine (`true`), in a new temp directory.
    struct Fresh(bool);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Fresh {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().unwrap();
            let fs = Arc::new(RealFs);
            let covered = super::log::Covered::default();
            let log = LogStore::open(fs.clone(), dir.path(), covered.clone()).unwrap();
            let engine: Arc<dyn Engine> = match self.0 {
                true => Arc::new(Disk::open(&dir.path().join("fjall"), 1 << 20).unwrap()),
                false => Arc::new(Memory::new(Arc::new(Store::new(4)), Arc::default())),
            };
            let group = super::FIRST_GROUP;
            let machine = StateMachine::open(fs, dir.path(), group, engine, covered).unwrap();
            Ok((dir, log, machine))
        }
    }

    /// openraft's own checks of a log and state machine implementation.
    /// A plain test: the suite runs each case in a runtime of its own.
    #[test]
    fn the_log_and_state_machine_pass_openraft_s_storage_suite() {
        Suite::test_all(Fresh(false)).unwrap();
    }

    #[test]
    fn the_state_machine_over_the_disk_engine_passes_it_too() {
        Suite::test_all(Fresh(true)).unwrap();
    }
}
