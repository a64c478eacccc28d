//! The kvstore wire protocol, defined once and shared by the server and every client.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of body
//! ([`codec::frame_codec`]); a body is a [`Request`] or a [`Response`] encoded with
//! bincode in the bincode 1.x byte format ([`codec::CONFIG`]). `docs/protocol.md`
//! describes every byte; `tests/golden.rs` pins the examples it shows.
//!
//! This crate must never depend on the server: the server depends on it.

pub mod codec;
pub mod error;
pub mod protocol;
mod wire_bytes;

pub use error::Error;
pub use protocol::{Command, ErrorCode, Reply, Request, Response};
