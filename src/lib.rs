//! kvstore-server: a durable key-value server.
//!
//! A request travels down one path, one module per step:
//!
//! 1. [`connection`]: frames off the socket, decoded into `Request`s.
//! 2. [`handler`]: one connection's loop; pipelining, replies in order.
//! 3. [`cmd`]: what each command does, one file per command.
//! 4. [`db`]: reads go to the [`engine`], writes to the [`log`].
//! 5. [`log`]: the write side's seam, with the queued-bytes budget;
//!    [`commit`] implements it on one node (the log writer thread: one
//!    `write` + one `fdatasync` per batch, then apply to the store and
//!    acknowledge), [`raft`] in cluster mode.
//! 6. [`engine`]: the applied state behind one trait (today the memory
//!    engine); [`storage`]: the sharded map, the log segments, snapshots,
//!    recovery.
//!
//! [`expiry`] removes keys whose deadline has passed, as logged writes.
//! [`stats`] and [`figures`] count what happens and name the figures that
//! `Stats` and the [`metrics`] endpoint report.
//! [`server`] ties them together and owns start-up and shutdown;
//! `docs/architecture.md` walks the same path with more words.

pub mod auth;
pub mod backup;
pub mod cmd;
pub mod commit;
pub mod config;
pub mod connection;
pub mod db;
pub mod engine;
pub mod error;
pub mod expiry;
pub mod feed;
pub mod figures;
pub mod grpc;
pub mod handler;
pub mod log;
pub mod logging;
pub mod metrics;
pub mod raft;
pub mod resp;
pub mod server;
pub mod session;
pub mod stats;
pub mod storage;
pub mod tls;

pub use config::{Config, SyncMode};
pub use error::Error;
