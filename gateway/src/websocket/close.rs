//! WebSocket close codes used by the gateway (RFC 6455 §7.4.1), and the mapping from the
//! status a session ends with.
//!
//! | code | when |
//! |---|---|
//! | 1000 | normal closure (the client closed) |
//! | 1003 | a text frame on `daehwa.v1.proto`, or a binary frame on `daehwa.v1.json` |
//! | 1007 | a frame that is not a valid `ClientEvent` |
//! | 1008 | authentication failed, the token was revoked, or not allowed |
//! | 1009 | a frame larger than the size limit |
//! | 1011 | an unexpected server error |
//! | 1012 | the server is restarting: reconnect (through Discovery) |
//! | 1013 | try again later: the client read too slowly or hit a limit; reconnect and sync |

use axum::extract::ws::{CloseFrame, Message};
use tonic::{Code, Status};

pub const NORMAL: u16 = 1000;
pub const UNSUPPORTED: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const RESTART: u16 = 1012;
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The close code for a session that ended with `status`.
pub fn code_for(status: &Status) -> u16 {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => POLICY,
        Code::ResourceExhausted => TRY_AGAIN_LATER,
        Code::Unavailable => RESTART,
        Code::InvalidArgument => INVALID_PAYLOAD,
        Code::Ok | Code::Cancelled => NORMAL,
        _ => INTERNAL,
    }
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
pub fn frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}
