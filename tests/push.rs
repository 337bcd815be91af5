//! Push notifications through the webhook provider, received by a real HTTP server that the
//! test starts: a recipient with no connected device is notified (without message text unless
//! configured); a connected recipient or one with notifications off is not.

mod common;

use common::{TestServer, TestUser, befriend};
use daehwa::v1;
use serde_json::Value;
use tokio::sync::mpsc;

/// An HTTP server on a free port that forwards every POSTed JSON body to a channel.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ =
                    tx.send(serde_json::from_str::<Value>(&body).expect("webhook body is JSON"));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_push(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("a push arrives")
        .expect("receiver open")
}

async fn server_with_webhook(include_text: bool) -> (TestServer, mpsc::UnboundedReceiver<Value>) {
    let (url, rx) = webhook_receiver().await;
    let server = TestServer::start_with(|c| {
        c.push_webhook_url = Some(url);
        c.push_include_text = include_text;
    })
    .await;
    (server, rx)
}

#[tokio::test]
async fn offline_recipients_get_a_push_without_text() {
    let (server, mut pushes) = server_with_webhook(false).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let message = alice.send_text(&alice.dm_with(&bob), "secret text").await;
    let push = next_push(&mut pushes).await;
    assert_eq!(push["user_id"], bob.user_id);
    assert_eq!(push["conversation_id"], message.conversation_id);
    assert_eq!(push["message_id"], message.message_id);
    assert_eq!(push["seq"], message.seq);
    assert_eq!(push["sender_id"], alice.user_id);
    assert!(
        push.get("text").is_none(),
        "no message text unless configured: {push}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn text_is_included_when_configured() {
    let (server, mut pushes) = server_with_webhook(true).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    alice.send_text(&alice.dm_with(&bob), "see you at 6").await;
    assert_eq!(next_push(&mut pushes).await["text"], "see you at 6");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connected_recipients_and_muted_users_get_no_push() {
    let (server, mut pushes) = server_with_webhook(false).await;
    let alice = server.user("alice").await;
    let online = server.user("online").await;
    let muted = server.user("muted").await;
    let offline = server.user("offline").await;
    for other in [&online, &muted, &offline] {
        befriend(&alice, other).await;
    }
    muted
        .users()
        .update_settings(v1::UpdateSettingsRequest {
            settings: Some(v1::Settings {
                notifications_enabled: false,
                presence_visible: true,
            }),
        })
        .await
        .unwrap();
    let _stream = online.connect().await;
    let send = |to: &TestUser| {
        let dm = alice.dm_with(to);
        let alice = alice.clone();
        async move { alice.send_text(&dm, "ping").await }
    };
    send(&online).await;
    send(&muted).await;
    send(&offline).await;
    // Pushes are queued in send order: had the first two been queued, one of them would
    // have been first.
    let first = next_push(&mut pushes).await;
    assert_eq!(
        first["user_id"], offline.user_id,
        "only the offline, unmuted user is pushed: {first}"
    );
    // Group messages: every offline member, never the sender.
    let ids = vec![online.user_id, offline.user_id];
    let group = alice
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: "g".into(),
            member_ids: ids,
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    alice
        .send_text(&group.conversation_id, "to the group")
        .await;
    let push = next_push(&mut pushes).await;
    assert_eq!(
        (push["user_id"].as_u64(), push["conversation_id"].as_str()),
        (Some(offline.user_id), Some(group.conversation_id.as_str()))
    );
    server.stop().await.unwrap();
}
