//! WebSocket frame encodings, chosen by subprotocol:
//! - `daehwa.v1.proto` (the default): one binary frame = one protobuf-encoded
//!   `chat.v1.ClientEvent` / `chat.v1.ServerEvent`;
//! - `daehwa.v1.json`: one text frame = one event in the proto3 JSON mapping (field names in
//!   lowerCamelCase on output; either spelling accepted on input; 64-bit ids as strings).

use axum::extract::ws::Message;
use daehwa::v1::ClientEvent;
use prost::Message as _;

use crate::{json, port::SharedEvent};

/// Subprotocol for protobuf binary frames.
pub const PROTO_SUBPROTOCOL: &str = "daehwa.v1.proto";
/// Subprotocol for protobuf-JSON text frames.
pub const JSON_SUBPROTOCOL: &str = "daehwa.v1.json";

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
            (Self::Json, Message::Text(text)) => {
                json::from_json("chat.v1.ClientEvent", text.as_str()).map_err(DecodeError::Invalid)
            }
            _ => Err(DecodeError::WrongFrameType),
        }
    }

    /// Encodes a server event as a frame (a protobuf encoding is shared with every other
    /// session the event goes to).
    pub fn encode(self, event: &SharedEvent) -> Message {
        match self {
            Self::Proto => Message::Binary(event.proto()),
            Self::Json => Message::Text(json::to_json("chat.v1.ServerEvent", &**event).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daehwa::v1::{HeartbeatAck, ServerEvent, client_event, server_event};

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
        let frame = Codec::Json.encode(&SharedEvent::new(ServerEvent {
            event: Some(server_event::Event::HeartbeatAck(HeartbeatAck {})),
        }));
        assert_eq!(frame, Message::Text(r#"{"heartbeatAck":{}}"#.into()));
    }

    #[test]
    fn a_shared_event_is_encoded_once_for_every_session() {
        let event = ServerEvent {
            event: Some(server_event::Event::HeartbeatAck(HeartbeatAck {})),
        };
        let shared = SharedEvent::new(event.clone());
        let (Message::Binary(first), Message::Binary(second)) =
            (Codec::Proto.encode(&shared), Codec::Proto.encode(&shared))
        else {
            panic!("binary frames expected");
        };
        assert_eq!(first.as_ptr(), second.as_ptr(), "one encoding, shared");
        assert_eq!(ServerEvent::decode(first.as_ref()).unwrap(), event);
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
