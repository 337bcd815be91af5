//! WebSocket frame encodings, chosen by subprotocol:
//! - `daehwa.v1.proto` (the default): one binary frame = one protobuf-encoded
//!   `chat.v1.ClientEvent` / `chat.v1.ServerEvent`;
//! - `daehwa.v1.json`: one text frame = one event in the proto3 JSON mapping (field names in
//!   lowerCamelCase on output; either spelling accepted on input; 64-bit ids as strings).

use std::sync::LazyLock;

use axum::extract::ws::Message;
use daehwa::v1::{ClientEvent, ServerEvent};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// Subprotocol for protobuf binary frames.
pub const PROTO_SUBPROTOCOL: &str = "daehwa.v1.proto";
/// Subprotocol for protobuf-JSON text frames.
pub const JSON_SUBPROTOCOL: &str = "daehwa.v1.json";

struct Descriptors {
    client_event: MessageDescriptor,
    server_event: MessageDescriptor,
}

/// The chat.v1 descriptors, decoded once; `None` only if the embedded set is corrupt.
static DESCRIPTORS: LazyLock<Option<Descriptors>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(daehwa::FILE_DESCRIPTOR_SET).ok()?;
    Some(Descriptors {
        client_event: pool.get_message_by_name("chat.v1.ClientEvent")?,
        server_event: pool.get_message_by_name("chat.v1.ServerEvent")?,
    })
});

/// Why a frame could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The payload is not a valid event (close 1007).
    Invalid(String),
    /// A text frame on the binary protocol or the other way round (close 1003).
    WrongFrameType,
}

/// How events are put in frames on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// The codec of a negotiated subprotocol (none: protobuf).
    pub fn for_subprotocol(protocol: Option<&str>) -> Self {
        match protocol {
            Some(JSON_SUBPROTOCOL) => Self::Json,
            _ => Self::Proto,
        }
    }

    /// Decodes a client frame.
    pub fn decode(self, frame: &Message) -> Result<ClientEvent, DecodeError> {
        match (self, frame) {
            (Self::Proto, Message::Binary(bytes)) => ClientEvent::decode(bytes.as_ref())
                .map_err(|e| DecodeError::Invalid(format!("not a chat.v1.ClientEvent: {e}"))),
            (Self::Json, Message::Text(text)) => decode_json(text.as_str()),
            _ => Err(DecodeError::WrongFrameType),
        }
    }

    /// Encodes a server event as a frame.
    pub fn encode(self, event: &ServerEvent) -> Message {
        let bytes = event.encode_to_vec();
        match self {
            Self::Proto => Message::Binary(bytes.into()),
            Self::Json => Message::Text(encode_json(&bytes).into()),
        }
    }
}

fn decode_json(text: &str) -> Result<ClientEvent, DecodeError> {
    let descriptors = DESCRIPTORS
        .as_ref()
        .ok_or_else(|| DecodeError::Invalid("descriptors unavailable".into()))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptors.client_event.clone(), &mut deserializer)
        .map_err(|e| DecodeError::Invalid(format!("not a chat.v1.ClientEvent in JSON: {e}")))?;
    deserializer
        .end()
        .map_err(|e| DecodeError::Invalid(format!("trailing data after the event: {e}")))?;
    ClientEvent::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| DecodeError::Invalid(format!("not a chat.v1.ClientEvent: {e}")))
}

fn encode_json(bytes: &[u8]) -> String {
    let Some(descriptors) = DESCRIPTORS.as_ref() else {
        return "{}".to_owned();
    };
    DynamicMessage::decode(descriptors.server_event.clone(), bytes)
        .ok()
        .and_then(|dynamic| serde_json::to_string(&dynamic).ok())
        .unwrap_or_else(|| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use daehwa::v1::{HeartbeatAck, client_event, server_event};

    #[test]
    fn json_round_trip() {
        let event = Codec::Json
            .decode(&Message::Text(
                r#"{"send":{"clientMsgId":"c1","conversation_id":"dm:1:2","content":{"text":"hi"}}}"#.into(),
            ))
            .unwrap();
        let Some(client_event::Event::Send(send)) = event.event else {
            panic!("{event:?}")
        };
        assert_eq!(
            (send.client_msg_id.as_str(), send.conversation_id.as_str()),
            ("c1", "dm:1:2")
        );
        let frame = Codec::Json.encode(&ServerEvent {
            event: Some(server_event::Event::HeartbeatAck(HeartbeatAck {})),
        });
        assert_eq!(frame, Message::Text(r#"{"heartbeatAck":{}}"#.into()));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(matches!(
            Codec::Json.decode(&Message::Text("{nope".into())),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Codec::Json.decode(&Message::Text(r#"{"bogus":1}"#.into())),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Codec::Proto.decode(&Message::Binary(vec![0xff, 0xff, 0xff].into())),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Codec::Proto.decode(&Message::Text("{}".into())),
            Err(DecodeError::WrongFrameType)
        ));
    }
}
