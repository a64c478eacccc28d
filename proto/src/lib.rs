//! kvstore's gRPC service, generated from `keyvalue.proto` (package
//! `kvstore.v1`): messages, the `KeyValue` server trait the server
//! implements, and the client its tests and load generator use.
//!
//! The server's side of it is `kvstore::grpc`; `docs/grpc.md` describes the
//! service for users of other languages.

/// Package `kvstore.v1`.
pub mod v1 {
    tonic::include_proto!("kvstore.v1");
}

/// The encoded `FileDescriptorSet` of `keyvalue.proto`, for the reflection
/// service (`grpcurl list` without the .proto file).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kvstore_v1_descriptor.bin"));
