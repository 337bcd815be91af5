//! The embedded gateway: WebSocket sessions at `/v1/ws` (binary and JSON frames,
//! authentication, close codes, slow readers, reconnects) and gRPC-web for unary and
//! server-streaming RPCs, with CORS.

mod common;

use common::ws::{close_code, decode, json, next_frame, open, send_binary, ws_url};

use std::time::Duration;

use common::{TestServer, TestUser, befriend, text_content, text_of};
use daehwa::v1::{self, client_event, send_result::Outcome, server_event::Event};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
use tonic::Code;

async fn friends(server: &TestServer) -> (TestUser, TestUser) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    (alice, bob)
}

#[tokio::test]
async fn binary_and_json_sessions_exchange_messages() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    let mut bob_ws = open(&bob, "daehwa.v1.proto", true).await;
    let Event::Ready(ready) = decode(next_frame(&mut bob_ws).await) else {
        panic!("ready first")
    };
    assert_eq!(
        (ready.user_id, ready.device_id),
        (bob.user_id, bob.device_id)
    );

    let mut alice_ws = open(&alice, "daehwa.v1.json", true).await;
    let ready = json(next_frame(&mut alice_ws).await);
    assert_eq!(
        ready["ready"]["userId"],
        alice.user_id.to_string(),
        "64-bit ids are JSON strings: {ready}"
    );
    let send = serde_json::json!({"send": {"clientMsgId": "ws-1", "conversationId": dm, "content": {"text": "hello over json"}}});
    alice_ws
        .send(Message::Text(send.to_string().into()))
        .await
        .unwrap();
    let result = json(next_frame(&mut alice_ws).await);
    assert_eq!(result["sendResult"]["clientMsgId"], "ws-1", "{result}");
    assert_eq!(result["sendResult"]["message"]["seq"], "1", "{result}");

    let Event::Message(m) = decode(next_frame(&mut bob_ws).await) else {
        panic!("message")
    };
    assert_eq!(
        (text_of(&m), m.sender_id),
        ("hello over json", alice.user_id)
    );

    send_binary(
        &mut bob_ws,
        client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: "ws-2".into(),
            conversation_id: dm.clone(),
            content: Some(text_content("and back in binary")),
        }),
    )
    .await;
    let Event::SendResult(result) = decode(next_frame(&mut bob_ws).await) else {
        panic!("send_result")
    };
    assert!(
        matches!(result.outcome, Some(Outcome::Message(ref m)) if m.seq == 2),
        "{result:?}"
    );
    let incoming = json(next_frame(&mut alice_ws).await);
    assert_eq!(
        incoming["message"]["content"]["text"], "and back in binary",
        "{incoming}"
    );

    alice_ws
        .send(Message::Text(r#"{"heartbeat":{}}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        json(next_frame(&mut alice_ws).await),
        serde_json::json!({"heartbeatAck": {}})
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn authentication_comes_first() {
    let server = TestServer::start().await;
    let (alice, _bob) = friends(&server).await;
    // The token as the first text frame (no query parameter, no header).
    let mut socket = open(&alice, "daehwa.v1.proto", false).await;
    socket
        .send(Message::Text(alice.access_token.clone().into()))
        .await
        .unwrap();
    assert!(matches!(
        decode(next_frame(&mut socket).await),
        Event::Ready(_)
    ));

    let mut bad = open(&alice, "daehwa.v1.proto", false).await;
    bad.send(Message::Text("dh1.not-a-token".into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut bad).await, CloseCode::Policy);

    let mut early = open(&alice, "daehwa.v1.proto", false).await;
    send_binary(
        &mut early,
        client_event::Event::Heartbeat(v1::HeartbeatEvent {}),
    )
    .await;
    assert_eq!(
        close_code(&mut early).await,
        CloseCode::Policy,
        "an event before authentication"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_frames_get_their_close_codes_and_the_server_carries_on() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let cases: Vec<(&str, Message, CloseCode)> = vec![
        (
            "daehwa.v1.proto",
            Message::Binary(vec![0xff, 0xff, 0xff, 0xff].into()),
            CloseCode::Invalid,
        ),
        (
            "daehwa.v1.json",
            Message::Text("{not json".into()),
            CloseCode::Invalid,
        ),
        (
            "daehwa.v1.json",
            Message::Text(r#"{"launch":{"missiles":true}}"#.into()),
            CloseCode::Invalid,
        ),
        (
            "daehwa.v1.proto",
            Message::Text("{}".into()),
            CloseCode::Unsupported,
        ),
        (
            "daehwa.v1.json",
            Message::Binary(vec![1, 2, 3].into()),
            CloseCode::Unsupported,
        ),
        (
            "daehwa.v1.proto",
            Message::Binary(vec![0u8; server.config.max_request_bytes() + 1].into()),
            CloseCode::Size,
        ),
    ];
    for (protocol, frame, expected) in cases {
        let mut socket = open(&alice, protocol, true).await;
        next_frame(&mut socket).await; // ready
        socket.send(frame).await.unwrap();
        assert_eq!(close_code(&mut socket).await, expected, "{protocol}");
    }
    // The server is unaffected.
    let mut socket = open(&bob, "daehwa.v1.proto", true).await;
    next_frame(&mut socket).await;
    alice.send_text(&alice.dm_with(&bob), "still here").await;
    let Event::Message(m) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(text_of(&m), "still here");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_reader_is_closed_and_loses_nothing_across_reconnects() {
    let server = TestServer::start_with(|c| c.outbox_capacity = 16).await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    let mut slow = open(&bob, "daehwa.v1.proto", true).await;
    next_frame(&mut slow).await; // ready; then stop reading while messages pour in
    let text = "w".repeat(4096);
    let sent: Vec<v1::Message> = futures::stream::iter(0..1500)
        .map(|i| {
            let (alice, dm, text) = (&alice, &dm, &text);
            async move {
                alice
                    .try_send_text(dm, &format!("slow-{i}"), text)
                    .await
                    .expect("send")
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(
        close_code(&mut slow).await,
        CloseCode::Again,
        "a slow reader is told to come back later"
    );

    // Reconnect and catch up from the cursor: every message is there exactly once.
    let mut socket = open(&bob, "daehwa.v1.proto", true).await;
    assert!(matches!(
        decode(next_frame(&mut socket).await),
        Event::Ready(_)
    ));
    let mut seqs = Vec::new();
    loop {
        let cursors = vec![v1::Cursor {
            conversation_id: dm.clone(),
            after_seq: seqs.last().copied().unwrap_or(0),
        }];
        let page = bob
            .chat()
            .sync_messages(v1::SyncMessagesRequest {
                cursors,
                limit: 500,
            })
            .await
            .unwrap()
            .into_inner();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=sent.len() as u64).collect::<Vec<_>>());
    // And the new socket is live.
    let m = alice.send_text(&dm, "after the reconnect").await;
    let Event::Message(got) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(got.message_id, m.message_id);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_service_restart() {
    let server = TestServer::start().await;
    let (alice, _bob) = friends(&server).await;
    let mut socket = open(&alice, "daehwa.v1.proto", true).await;
    next_frame(&mut socket).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(close_code(&mut socket).await, CloseCode::Restart);
    stopping.await.unwrap().unwrap();
}

mod grpc_web {
    //! gRPC-web over HTTP/1.1, as a browser would call it.

    use super::*;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tonic::{service::interceptor::InterceptedService, transport::Uri};
    use tonic_web::GrpcWebClientLayer;

    type WebChannel = tonic_web::GrpcWebClientService<
        Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >;

    /// The gateway's base URL (from the WebSocket URL Discovery hands out).
    async fn base(user: &TestUser) -> Uri {
        let ws = ws_url(user).await;
        ws.replace("ws://", "http://")
            .trim_end_matches("/v1/ws")
            .parse()
            .unwrap()
    }

    fn channel() -> WebChannel {
        let client = Client::builder(TokioExecutor::new())
            .build_http::<tonic_web::GrpcWebCall<tonic::body::Body>>();
        tower::ServiceBuilder::new()
            .layer(GrpcWebClientLayer::new())
            .service(client)
    }

    #[tokio::test]
    async fn unary_and_server_streaming_calls_work_over_grpc_web() {
        let server = TestServer::start().await;
        let (alice, bob) = friends(&server).await;
        let origin = base(&bob).await;
        let authed = InterceptedService::new(channel(), common::Bearer(bob.access_token.clone()));
        let mut users =
            v1::user_service_client::UserServiceClient::with_origin(authed.clone(), origin.clone());
        let me = users
            .get_me(v1::GetMeRequest {})
            .await
            .expect("GetMe over gRPC-web")
            .into_inner();
        assert_eq!(me.user.unwrap().user_id, bob.user_id);
        let missing = users
            .get_user(v1::GetUserRequest {
                key: Some(v1::get_user_request::Key::UserId(999_999)),
            })
            .await
            .unwrap_err();
        assert_eq!(
            missing.code(),
            Code::NotFound,
            "errors arrive as statuses: {missing:?}"
        );
        let anonymous =
            v1::user_service_client::UserServiceClient::with_origin(channel(), origin.clone())
                .get_me(v1::GetMeRequest {})
                .await
                .unwrap_err();
        assert_eq!(anonymous.code(), Code::Unauthenticated);

        let mut chat = v1::chat_service_client::ChatServiceClient::with_origin(authed, origin);
        let mut events = chat
            .subscribe(v1::SubscribeRequest {})
            .await
            .expect("Subscribe over gRPC-web")
            .into_inner();
        let first = events.message().await.unwrap().unwrap();
        assert!(matches!(first.event, Some(Event::Ready(_))), "{first:?}");
        let sent = alice
            .send_text(&alice.dm_with(&bob), "to the browser")
            .await;
        let next = loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if !matches!(event.event, Some(Event::Presence(_))) {
                break event;
            }
        };
        assert!(
            matches!(next.event, Some(Event::Message(ref m)) if m.message_id == sent.message_id),
            "{next:?}"
        );
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn cors_preflight_allows_configured_origins_and_exposes_grpc_status() {
        let server = TestServer::start_with(|c| {
            c.gateway_allowed_origins = vec!["http://app.example".into()]
        })
        .await;
        let user = server.user("cors").await;
        let base = base(&user).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<String>();
        let preflight = |origin: &'static str| {
            http::Request::builder()
                .method("OPTIONS")
                .uri(format!("{base}chat.v1.UserService/GetMe"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,x-grpc-web,authorization",
                )
                .body(String::new())
                .unwrap()
        };
        let allowed = client
            .request(preflight("http://app.example"))
            .await
            .unwrap();
        let headers = allowed.headers();
        assert_eq!(
            headers.get("access-control-allow-origin").unwrap(),
            "http://app.example"
        );
        let allowed_headers = headers
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            allowed_headers.contains("authorization") && allowed_headers.contains("x-grpc-web"),
            "{allowed_headers}"
        );
        let other = client
            .request(preflight("http://evil.example"))
            .await
            .unwrap();
        assert!(
            other.headers().get("access-control-allow-origin").is_none(),
            "unknown origins are not allowed"
        );

        // An actual cross-origin call exposes the grpc-* headers to the page.
        let call = http::Request::builder()
            .method("POST")
            .uri(format!("{base}chat.v1.UserService/GetMe"))
            .header("origin", "http://app.example")
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(String::from_utf8(vec![0, 0, 0, 0, 0]).unwrap())
            .unwrap();
        let response = client.request(call).await.unwrap();
        let exposed = response
            .headers()
            .get("access-control-expose-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(exposed.contains(header), "{header} not exposed: {exposed}");
        }
        server.stop().await.unwrap();
    }
}
