//! Live sessions: the streams (Connect, Subscribe) through which devices receive events.
//!
//! - [`hub`]: which devices of which users are connected here, each with a bounded outbox;
//!   fan-out copies the recipient list under a short lock and never waits on a peer.
//! - [`live`]: the session of one device on any transport: `ready`, then client events
//!   handled in order.
//! - [`outbound`]: turns an outbox into the session's event stream and ends it with a status
//!   when the session is closed (too slow, logged out, server shutting down).
//!
//! Outboxes hold [`SharedEvent`]s: one allocation per event for all its recipients, whose
//! protobuf encoding the gRPC streams and WebSockets of all of them share.

pub mod hub;
pub mod live;
pub mod outbound;

pub use daehwa_gateway::SharedEvent;
pub use hub::{CloseReason, Hub, SessionHandle};
