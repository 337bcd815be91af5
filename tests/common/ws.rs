//! WebSocket helpers for tests of the gateway (embedded and standalone).

use daehwa::v1::{self, ClientEvent, ServerEvent, client_event, server_event::Event};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

use super::TestUser;

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The gateway's WebSocket URL, as Discovery hands it out.
pub async fn ws_url(user: &TestUser) -> String {
    let server = user
        .discovery()
        .get_chat_server(v1::GetChatServerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(server.websocket_url.starts_with("ws://"), "{server:?}");
    server.websocket_url
}

/// Opens `/v1/ws` of this user's gateway with a subprotocol and, optionally, the token in
/// the query.
pub async fn open(user: &TestUser, subprotocol: &str, token_in_query: bool) -> Socket {
    let mut url = ws_url(user).await;
    if token_in_query {
        url = format!("{url}?access_token={}", user.access_token);
    }
    open_url(&url, subprotocol).await
}

/// Opens a WebSocket at `url` asking for `subprotocol`.
pub async fn open_url(url: &str, subprotocol: &str) -> Socket {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(subprotocol)
    );
    socket
}

/// The next data frame that is not a presence event (friends coming online interleave with
/// everything), failing after the harness deadline.
pub async fn next_frame(socket: &mut Socket) -> Message {
    loop {
        let frame = tokio::time::timeout(super::WAIT, socket.next())
            .await
            .expect("a frame in time");
        match frame.expect("socket open").expect("frame") {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(b)
                if matches!(
                    ServerEvent::decode(b.as_ref()),
                    Ok(ServerEvent {
                        event: Some(Event::Presence(_))
                    })
                ) =>
            {
                continue;
            }
            Message::Text(t) if t.as_str().starts_with("{\"presence\"") => continue,
            other => return other,
        }
    }
}

pub fn decode(frame: Message) -> Event {
    match frame {
        Message::Binary(bytes) => ServerEvent::decode(bytes.as_ref())
            .expect("ServerEvent")
            .event
            .expect("event"),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

pub fn json(frame: Message) -> serde_json::Value {
    match frame {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn send_binary(socket: &mut Socket, event: client_event::Event) {
    let bytes = ClientEvent { event: Some(event) }.encode_to_vec();
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .expect("send frame");
}

/// Reads until the server closes; returns the close code.
pub async fn close_code(socket: &mut Socket) -> CloseCode {
    loop {
        match tokio::time::timeout(super::WAIT, socket.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}
