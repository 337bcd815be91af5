//! Daehwa on PostgreSQL (`--directory postgres://... --store postgres://...`), against a
//! private PostgreSQL server the test starts: the chat flows, kill -9 durability of the real
//! `chatd` binary, and two servers writing one conversation through one database.
//!
//! What this does not show yet: live delivery between servers (that needs the Redis bus);
//! here a user on the other server gets the messages by sync, which is the repair path.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, TestUser, befriend, durability, text_of};
use daehwa::v1;
use daehwa_server::backend::postgres::test_server::PgServer;
use futures::StreamExt;

async fn on_postgres(url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start_with(move |c| {
        c.directory = url.clone();
        c.store = url;
    })
    .await
}

#[tokio::test]
async fn chat_works_with_postgres_for_accounts_and_messages() {
    let pg = PgServer::shared();
    let server = on_postgres(&pg.create_database().await).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    let mut live = bob.connect().await;
    let first = alice.send_text(&dm, "stored in postgres").await;
    assert_eq!(first.seq, 1);
    assert_eq!(live.next_message().await.message_id, first.message_id);
    let retry = alice
        .try_send_text(&dm, &first.client_msg_id, "again")
        .await
        .unwrap();
    assert_eq!(retry, first, "idempotent on postgres too");
    let group = alice
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: "pg".into(),
            member_ids: vec![bob.user_id],
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    alice
        .send_text(&group.conversation_id, "group on postgres")
        .await;
    let conversations = bob
        .chat()
        .list_conversations(v1::ListConversationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<String> = conversations
        .conversations
        .iter()
        .map(|c| c.conversation_id.clone())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([dm.clone(), group.conversation_id.clone()])
    );
    let history = bob
        .chat()
        .get_history(v1::GetHistoryRequest {
            conversation_id: group.conversation_id,
            before_seq: 0,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(
        history.iter().map(text_of).collect::<Vec<_>>(),
        vec!["group on postgres"]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn kill_9_of_chatd_on_postgres_loses_nothing_acknowledged() {
    let pg = PgServer::shared();
    let url = pg.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    durability::kill9_loses_nothing(dir.path(), &["--directory", &url, "--store", &url]).await;
}

#[tokio::test]
async fn two_servers_on_one_database_keep_one_gapless_log() {
    let pg = PgServer::shared();
    let url = pg.create_database().await;
    let one = on_postgres(&url).await;
    let two = on_postgres(&url).await;
    let alice = one.user("alice").await;
    // Bob logs in through the second server: same accounts, same tokens' user ids.
    let bob_name = common::unique_name("bob");
    TestUser::sign_up(&two.url(), &bob_name).await;
    let bob = TestUser::log_in(&two.url(), &bob_name, "correct horse battery").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);
    let sends = futures::stream::iter(0..200)
        .map(|i| {
            let (sender, dm) = (if i % 2 == 0 { &alice } else { &bob }, &dm);
            async move {
                sender
                    .try_send_text(dm, &format!("both-{i}"), "x")
                    .await
                    .expect("send")
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let seqs: BTreeSet<u64> = sends.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=200).collect::<BTreeSet<_>>(),
        "one gapless seq across both servers"
    );
    let synced = durability::sync_all(&bob, &dm).await;
    assert_eq!(synced.len(), 200);
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}
