//! `chatd --store tikv://...` end to end: a server on the TiKV message store, reached through
//! the in-process PD + TiKV stand-in (`daehwa-tikv-standin`; what it models and what it does
//! not is in its crate doc). Proves the wiring from configuration to the store and the chat
//! flow over it (live delivery, gapless seq, idempotent retry, sync after a restart); the
//! store's own contract is checked by the conformance suite in `server/src/backend/tikv`.

mod common;

use common::{TestServer, befriend, text_of};
use daehwa::v1;
use daehwa_tikv_standin::Standin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_runs_on_the_tikv_store() {
    let standin = Standin::start().await.expect("TiKV stand-in");
    let store = format!("tikv://{}", standin.pd_endpoint());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = {
        let mut config = daehwa_server::Config::for_tests(dir.path());
        config.store = store.clone();
        config
    };
    let server = TestServer::start_in(config.clone()).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    let mut bob_stream = bob.connect().await;
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(alice.send_text(&dm, &format!("m{i}")).await);
    }
    for (i, message) in sent.iter().enumerate() {
        assert_eq!(message.seq, i as u64 + 1, "gapless seq");
        let got = bob_stream.next_message().await;
        assert_eq!(got.message_id, message.message_id);
    }
    let retry = alice
        .try_send_text(&dm, "same-id", "first")
        .await
        .expect("send");
    let again = alice
        .try_send_text(&dm, "same-id", "second")
        .await
        .expect("retry");
    assert_eq!(
        (again.message_id, text_of(&again)),
        (retry.message_id, "first")
    );
    drop(bob_stream);
    server.stop().await.expect("clean stop");

    // Another server on the same TiKV sees everything (the store is the truth).
    let server = TestServer::start_in(config).await;
    let bob_again = common::TestUser::log_in(&server.url(), &bob.username, &bob.password).await;
    let page = bob_again
        .chat()
        .sync_messages(v1::SyncMessagesRequest {
            cursors: vec![v1::Cursor {
                conversation_id: dm.clone(),
                after_seq: 0,
            }],
            limit: 100,
        })
        .await
        .expect("sync")
        .into_inner();
    assert_eq!(page.messages.len(), 31);
    assert!(
        page.messages
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq == i as u64 + 1)
    );
    server.stop().await.expect("clean stop");
}
