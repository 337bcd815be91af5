//! `POST /v1/poll`: long polling, the last fallback for clients that can use neither a
//! WebSocket nor gRPC-web streaming.
//!
//! The body is a `chat.v1.SyncMessagesRequest` in JSON (per-conversation cursors and a
//! limit); the answer is a `chat.v1.SyncMessagesResponse` in JSON. Messages after the cursors
//! come back at once; when there are none, the request waits until a new message arrives for
//! the caller or `wait_ms` (query parameter, capped by the server; default the cap) passes,
//! then answers (possibly with no messages). The client advances its cursors from the
//! answer and polls again. Authentication: `Authorization: Bearer` or `?access_token=`.
//! Errors are JSON `{"code": "UNAUTHENTICATED", "message": "..."}` with a matching HTTP
//! status (401, 403, 400, 404, 429, 503, 500).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use daehwa::v1::{SyncMessagesRequest, SyncMessagesResponse, server_event::Event};
use futures::StreamExt;
use http::{HeaderMap, StatusCode, header};
use tonic::{Code, Status};

use crate::{SessionPort, json};

/// What the poll handler needs.
#[derive(Clone)]
pub struct PollState {
    pub port: Arc<dyn SessionPort>,
    /// The longest a poll waits.
    pub max_wait: Duration,
}

/// Query parameters of `/v1/poll`.
#[derive(Debug, serde::Deserialize)]
pub struct PollQuery {
    pub access_token: Option<String>,
    /// How long to wait for new messages, in milliseconds (capped).
    pub wait_ms: Option<u64>,
}

/// Handles one long poll.
pub async fn poll(
    State(state): State<PollState>,
    Query(query): Query<PollQuery>,
    headers: HeaderMap,
    body: String,
) -> Response {
    match answer(&state, query, &headers, &body).await {
        Ok(response) => json_response(
            StatusCode::OK,
            json::to_json("chat.v1.SyncMessagesResponse", &response),
        ),
        Err(status) => error_response(&status),
    }
}

async fn answer(
    state: &PollState,
    query: PollQuery,
    headers: &HeaderMap,
    body: &str,
) -> Result<SyncMessagesResponse, Status> {
    let token = query
        .access_token
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            Status::unauthenticated(
                "send \"Authorization: Bearer <access_token>\" or ?access_token=",
            )
        })?;
    let request: SyncMessagesRequest = json::from_json(
        "chat.v1.SyncMessagesRequest",
        if body.trim().is_empty() { "{}" } else { body },
    )
    .map_err(Status::invalid_argument)?;
    let wait = query.wait_ms.map_or(state.max_wait, |ms| {
        Duration::from_millis(ms).min(state.max_wait)
    });
    // Open the live session before looking, so a message committed between the look and the
    // wait still wakes this poll.
    let mut session = state.port.open(&token).await?;
    let first = state.port.sync(&token, request.clone()).await?;
    if !first.messages.is_empty() || wait.is_zero() {
        return Ok(first);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, session.events.next()).await {
            Ok(Some(Ok(event))) if matches!(event.event, Some(Event::Message(_))) => break,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) if status.code() != Code::ResourceExhausted => {
                return Err(status);
            }
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    state.port.sync(&token, request).await
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn error_response(status: &Status) -> Response {
    let http = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = format!("{:?}", status.code());
    let body = serde_json::json!({ "code": screaming(&code), "message": status.message() });
    json_response(http, body.to_string())
}

/// `InvalidArgument` → `INVALID_ARGUMENT`: the names API.md uses.
fn screaming(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
