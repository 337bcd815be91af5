//! Long polling at `POST /v1/poll`: messages after the cursors come back at once; otherwise
//! the poll waits for a new message or times out empty; cursors resume; errors are JSON with
//! matching HTTP statuses.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, TestUser, befriend, ws::ws_url};
use http::StatusCode;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};

/// The gateway's base URL for `user`'s server.
async fn base(user: &TestUser) -> String {
    ws_url(user)
        .await
        .replace("ws://", "http://")
        .trim_end_matches("/v1/ws")
        .to_owned()
}

/// POSTs a poll; returns the HTTP status and the JSON body.
async fn poll(base: &str, token: Option<&str>, body: Value, wait_ms: u64) -> (StatusCode, Value) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{base}/v1/poll?wait_ms={wait_ms}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(request.body(body.to_string()).unwrap()),
    )
    .await
    .expect("poll answers in time")
    .expect("poll request");
    let status = response.status();
    let bytes = http_body_util_collect(response.into_body()).await;
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

async fn http_body_util_collect(mut body: hyper::body::Incoming) -> Vec<u8> {
    use hyper::body::Body as _;
    let mut out = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.expect("body frame").into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

fn seqs(body: &Value) -> Vec<u64> {
    body["messages"].as_array().map_or(vec![], |m| {
        m.iter()
            .map(|m| m["seq"].as_str().unwrap().parse().unwrap())
            .collect()
    })
}

fn cursor(conversation: &str, after: u64) -> Value {
    json!({"cursors": [{"conversationId": conversation, "afterSeq": after.to_string()}]})
}

#[tokio::test]
async fn a_waiting_poll_returns_when_a_message_arrives() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    let base = base(&bob).await;
    let token = bob.access_token.clone();
    let started = Instant::now();
    let waiting = tokio::spawn({
        let (base, dm) = (base.clone(), dm.clone());
        async move { poll(&base, Some(&token), cursor(&dm, 0), 15_000).await }
    });
    // The poll is parked once bob has a live session; then alice sends.
    common::eventually("bob's poll to be waiting", || async {
        let server = bob
            .discovery()
            .list_chat_servers(daehwa::v1::ListChatServersRequest {})
            .await
            .ok()?
            .into_inner();
        (server.servers.first()?.connections >= 1).then_some(())
    })
    .await;
    alice.send_text(&dm, "wake up").await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seqs(&body), vec![1]);
    assert_eq!(body["messages"][0]["content"]["text"], "wake up");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered on arrival, not at the timeout"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn waiting_messages_come_at_once_cursors_resume_and_timeouts_are_empty() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    for text in ["one", "two", "three"] {
        alice.send_text(&dm, text).await;
    }
    let base = base(&bob).await;
    let (status, body) = poll(&base, Some(&bob.access_token), cursor(&dm, 0), 10_000).await;
    assert_eq!((status, seqs(&body)), (StatusCode::OK, vec![1, 2, 3]));
    let (_, body) = poll(&base, Some(&bob.access_token), cursor(&dm, 2), 10_000).await;
    assert_eq!(seqs(&body), vec![3], "the cursor resumes after seq 2");
    let started = Instant::now();
    let (status, body) = poll(&base, Some(&bob.access_token), cursor(&dm, 3), 300).await;
    assert_eq!(
        (status, seqs(&body)),
        (StatusCode::OK, vec![]),
        "a timeout answers empty"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn poll_errors_are_json_with_http_statuses() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    befriend(&alice, &bob).await;
    let base = base(&alice).await;
    let (status, body) = poll(&base, None, cursor(&alice.dm_with(&bob), 0), 0).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED"))
    );
    let (status, _) = poll(&base, Some("dh1.bogus"), cursor(&alice.dm_with(&bob), 0), 0).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = poll(
        &base,
        Some(&carol.access_token),
        cursor(&alice.dm_with(&bob), 0),
        0,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("PERMISSION_DENIED"))
    );
    let (status, body) = poll(
        &base,
        Some(&alice.access_token),
        json!({"cursors": "nope"}),
        0,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    server.stop().await.unwrap();
}
