//! kvstore's wire protocol and clients.
//!
//! - [`Client`]: async (tokio), cheap to clone, multiplexed connections,
//!   timeouts, retries with exponential backoff.
//! - [`BlockingClient`]: the same methods for code without an async runtime.
//! - [`protocol`] and [`codec`]: the wire types and their encoding, defined
//!   once and shared with the server. A frame is a 4-byte big-endian length
//!   followed by a bincode body in the bincode 1.x byte format;
//!   `docs/protocol.md` describes every byte and `tests/golden.rs` pins the
//!   examples it shows.
//! - The `kvstore` command-line tool (feature `cli`, on by default).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), kvstore_client::Error> {
//! use kvstore_client::Client;
//! let client = Client::builder().addr("kvstore://127.0.0.1:65433").build()?;
//! client.set("user:1", "ann").await?;
//! client.bulk_set([("user:2", "bob"), ("user:3", "cy")]).await?;
//! assert_eq!(client.get("user:2").await?.as_deref(), Some(&b"bob"[..]));
//! assert!(client.delete("user:3").await?);
//! # Ok(()) }
//! ```
//!
//! This crate must never depend on the server: the server depends on it.

#![warn(missing_docs)]

pub mod addr;
pub mod backup;
pub mod blocking;
pub mod client;
pub mod codec;
pub mod error;
mod mux;
mod once;
mod pool;
pub mod protocol;
mod replicas;
mod routes;
pub mod scan;
pub mod slot;
pub mod split;
pub mod txn;
pub mod watch;
mod wire_bytes;

pub use backup::{BackupStream, BackupSummary};
pub use blocking::BlockingClient;
pub use client::{Client, ClientBuilder, Reads, Versioned};
pub use error::Error;
pub use protocol::{
    ClusterMember, ClusterRequest, ClusterStatus, Command, Compare, CompareOp, Condition,
    ErrorCode, Event, EventKind, ExpireWhen, Expiry, GroupView, MoveView, Reply, Request, Response,
    Target,
};
pub use replicas::ReplicaLoad;
pub use scan::ScanQuery;
pub use split::Part;
pub use txn::{Transaction, TxnDone};
pub use watch::WatchStream;
