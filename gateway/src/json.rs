//! The proto3 JSON mapping for `chat.v1` messages, driven by the API's own descriptors
//! (`daehwa::FILE_DESCRIPTOR_SET`), so JSON clients see exactly what grpcurl shows:
//! lowerCamelCase names on output (either spelling accepted on input), 64-bit integers as
//! strings, enums by name, timestamps in RFC 3339.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// The chat.v1 descriptors, decoded once; `None` only if the embedded set is corrupt.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(daehwa::FILE_DESCRIPTOR_SET).ok());

/// Parses the JSON form of the message type `full_name` (e.g. `chat.v1.ClientEvent`).
pub fn from_json<M: prost::Message + Default>(full_name: &str, text: &str) -> Result<M, String> {
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .map_err(|e| format!("not a {full_name} in JSON: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("trailing data after the {full_name}: {e}"))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| format!("not a {full_name}: {e}"))
}

/// The JSON form of `message`, of type `full_name`.
pub fn to_json<M: prost::Message>(full_name: &str, message: &M) -> String {
    POOL.as_ref()
        .and_then(|pool| pool.get_message_by_name(full_name))
        .and_then(|descriptor| {
            DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).ok()
        })
        .and_then(|dynamic| serde_json::to_string(&dynamic).ok())
        .unwrap_or_else(|| "{}".to_owned())
}
