//! # Daehwa's public contract
//!
//! The `chat.v1` gRPC API, generated from `proto/chat/v1/*.proto` at build time. Servers
//! (`daehwa-server`), the gateway, the terminal client and the end-to-end tests all speak
//! through these types; nothing else defines the wire format.
//!
//! - [`v1`]: messages, clients (`*_client`) and server traits (`*_server`) of package `chat.v1`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//! - [`codec`]: the protobuf codec the generated code uses (small per-RPC buffers).
//! - [`client_msg_id`]: fresh idempotency keys for senders (time-ordered UUIDs).

pub mod client_msg_id;
pub mod codec;

/// Package `chat.v1`: every message, client and server of the public API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("chat.v1");
}

/// Encoded `FileDescriptorSet` of `proto/` (with its imports), served by reflection so tools
/// such as grpcurl can call the API without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_v1_descriptor");

/// Builds a dm conversation id (`dm:<lo>:<hi>`) the same way the server does.
pub fn dm_conversation_id(a: u64, b: u64) -> String {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    format!("dm:{lo}:{hi}")
}

/// Builds a group conversation id (`g:<group_id>`).
pub fn group_conversation_id(group_id: u64) -> String {
    format!("g:{group_id}")
}
