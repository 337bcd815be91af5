//! ChatService end to end: send, sync, history, conversations, read marks, typing, live
//! delivery to every device, gapless seq under concurrency, idempotent retries, limits, and
//! the statuses of bad input.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, TestUser, befriend, text_content, text_of};
use daehwa::v1::{self, client_event, send_result::Outcome, server_event::Event};
use futures::{StreamExt, stream};
use tonic::Code;

async fn friends(server: &TestServer) -> (TestUser, TestUser) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    (alice, bob)
}

async fn sync(
    user: &TestUser,
    conversation: &str,
    after_seq: u64,
    limit: u32,
) -> v1::SyncMessagesResponse {
    let cursors = vec![v1::Cursor {
        conversation_id: conversation.into(),
        after_seq,
    }];
    user.chat()
        .sync_messages(v1::SyncMessagesRequest { cursors, limit })
        .await
        .expect("sync")
        .into_inner()
}

async fn history(user: &TestUser, conversation: &str, before_seq: u64, limit: u32) -> Vec<u64> {
    let request = v1::GetHistoryRequest {
        conversation_id: conversation.into(),
        before_seq,
        limit,
    };
    user.chat()
        .get_history(request)
        .await
        .expect("history")
        .into_inner()
        .messages
        .iter()
        .map(|m| m.seq)
        .collect()
}

async fn conversation(user: &TestUser, id: &str) -> v1::Conversation {
    let list = user
        .chat()
        .list_conversations(v1::ListConversationsRequest {})
        .await
        .expect("list")
        .into_inner();
    list.conversations
        .into_iter()
        .find(|c| c.conversation_id == id)
        .expect("conversation listed")
}

#[tokio::test]
async fn send_sync_history_conversations_and_read_marks() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    for i in 1..=5 {
        let m = alice.send_text(&dm, &format!("hello {i}")).await;
        assert_eq!(
            (m.seq, m.sender_id, m.conversation_id.as_str()),
            (i, alice.user_id, dm.as_str())
        );
        assert!(m.message_id > 0 && m.created_at.is_some());
    }
    let synced = sync(&bob, &dm, 0, 0).await;
    assert_eq!(
        synced.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(text_of(&synced.messages[2]), "hello 3");
    assert!(!synced.has_more);
    let page = sync(&bob, &dm, 1, 2).await;
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(page.has_more);
    assert!(sync(&bob, &dm, 5, 0).await.messages.is_empty());

    assert_eq!(
        history(&bob, &dm, 0, 2).await,
        vec![4, 5],
        "newest page first, ascending"
    );
    assert_eq!(history(&bob, &dm, 4, 2).await, vec![2, 3]);
    assert_eq!(history(&bob, &dm, 2, 10).await, vec![1]);

    let c = conversation(&bob, &dm).await;
    assert_eq!((c.last_seq, c.read_seq, c.unread_count), (5, 0, 5));
    assert_eq!(c.last_message.map(|m| m.seq), Some(5));
    assert_eq!(
        conversation(&alice, &dm).await.unread_count,
        0,
        "one's own messages are read"
    );
    bob.chat()
        .mark_read(v1::MarkReadRequest {
            conversation_id: dm.clone(),
            seq: 3,
        })
        .await
        .unwrap();
    assert_eq!(conversation(&bob, &dm).await.unread_count, 2);
    bob.chat()
        .mark_read(v1::MarkReadRequest {
            conversation_id: dm.clone(),
            seq: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        conversation(&bob, &dm).await.read_seq,
        3,
        "read marks never move backwards"
    );
    bob.chat()
        .mark_read(v1::MarkReadRequest {
            conversation_id: dm.clone(),
            seq: 99,
        })
        .await
        .unwrap();
    assert_eq!(
        conversation(&bob, &dm).await.read_seq,
        5,
        "read marks are capped at the last seq"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn live_messages_reach_every_device_of_every_member() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let alice2 = alice.second_device().await;
    let bob2 = bob.second_device().await;
    let dm = alice.dm_with(&bob);
    let mut a1 = alice.connect().await;
    let mut a2 = alice2.connect().await;
    let mut b1 = bob.connect().await;
    let mut b2 = bob2.connect().await;
    assert_eq!(
        (a1.ready.user_id, a1.ready.device_id),
        (alice.user_id, alice.device_id)
    );

    a1.send(client_event::Event::Send(v1::SendMessageRequest {
        client_msg_id: "m-1".into(),
        conversation_id: dm.clone(),
        content: Some(text_content("hi all")),
    }))
    .await;
    let acked = a1
        .next_matching(|e| match e {
            Event::SendResult(r) => Some(r),
            Event::Message(m) => {
                panic!("the sending device gets send_result, not its own message: {m:?}")
            }
            _ => None,
        })
        .await;
    assert_eq!(acked.client_msg_id, "m-1");
    let Some(Outcome::Message(stored)) = acked.outcome else {
        panic!("send failed: {acked:?}")
    };
    for (who, stream) in [
        ("alice's other device", &mut a2),
        ("bob's first device", &mut b1),
        ("bob's second device", &mut b2),
    ] {
        let got = stream.next_message().await;
        assert_eq!(
            (got.message_id, text_of(&got)),
            (stored.message_id, "hi all"),
            "{who}"
        );
    }
    // The unary path delivers too, and the sending device is skipped there as well.
    let m2 = bob2.send_text(&dm, "back at you").await;
    assert_eq!(b1.next_message().await.message_id, m2.message_id);
    assert_eq!(a1.next_message().await.message_id, m2.message_id);
    assert_eq!(a2.next_message().await.message_id, m2.message_id);
    // Subscribe (server streaming, for gRPC-web) gets the same events.
    let mut sub = bob
        .chat()
        .subscribe(v1::SubscribeRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = sub.message().await.unwrap().unwrap().event;
    assert!(matches!(first, Some(Event::Ready(_))), "{first:?}");
    let m3 = alice.send_text(&dm, "third").await;
    let got = sub.message().await.unwrap().unwrap().event;
    assert!(
        matches!(got, Some(Event::Message(ref m)) if m.message_id == m3.message_id),
        "{got:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn seq_is_gapless_with_four_concurrent_senders() {
    let server = TestServer::start().await;
    let owner = server.user("owner").await;
    let mut others = Vec::new();
    for i in 0..3 {
        let u = server.user(&format!("member{i}")).await;
        befriend(&owner, &u).await;
        others.push(u);
    }
    let ids = others.iter().map(|u| u.user_id).collect();
    let group = owner
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: "race".into(),
            member_ids: ids,
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let conversation = group.conversation_id.clone();
    let senders: Vec<TestUser> = std::iter::once(owner.clone()).chain(others).collect();
    let per_sender = 50;
    let results = futures::future::join_all(senders.iter().map(|sender| {
        let conversation = conversation.clone();
        async move {
            stream::iter(0..per_sender)
                .map(|i| {
                    let conversation = conversation.clone();
                    async move {
                        sender
                            .try_send_text(&conversation, &format!("{}-{i}", sender.user_id), "x")
                            .await
                            .expect("send")
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<_>>()
                .await
        }
    }))
    .await;
    let all: Vec<v1::Message> = results.into_iter().flatten().collect();
    let seqs: BTreeSet<u64> = all.iter().map(|m| m.seq).collect();
    let total = 4 * per_sender as u64;
    assert_eq!(
        seqs,
        (1..=total).collect::<BTreeSet<_>>(),
        "every seq 1..={total} exactly once"
    );
    let ids: BTreeSet<u64> = all.iter().map(|m| m.message_id).collect();
    assert_eq!(ids.len(), all.len(), "message ids are unique");
    let mut synced = Vec::new();
    let mut after = 0;
    loop {
        let page = sync(&senders[1], &conversation, after, 64).await;
        after = page.messages.last().map_or(after, |m| m.seq);
        synced.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        synced,
        (1..=total).collect::<Vec<_>>(),
        "sync pages through every message in order"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_retried_client_msg_id_returns_the_first_message() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    let first = alice
        .try_send_text(&dm, "retry-1", "original")
        .await
        .unwrap();
    let again = alice
        .try_send_text(&dm, "retry-1", "changed on retry")
        .await
        .unwrap();
    assert_eq!(
        again, first,
        "the retry returns the stored message unchanged"
    );
    let mut stream = alice.connect().await;
    stream
        .send(client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: "retry-1".into(),
            conversation_id: dm.clone(),
            content: Some(text_content("third try")),
        }))
        .await;
    let result = stream
        .next_matching(|e| {
            if let Event::SendResult(r) = e {
                Some(r)
            } else {
                None
            }
        })
        .await;
    assert_eq!(result.outcome, Some(Outcome::Message(first.clone())));
    let stored = sync(&bob, &dm, 0, 0).await.messages;
    assert_eq!(stored, vec![first], "exactly one message stored");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_stores_nothing() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let carol = server.user("carol").await;
    let dm = alice.dm_with(&bob);
    let send = |user: &TestUser, conversation: &str, content: Option<v1::Content>| {
        let mut chat = user.chat();
        let request = v1::SendMessageRequest {
            client_msg_id: String::new(),
            conversation_id: conversation.to_owned(),
            content,
        };
        async move { chat.send_message(request).await.map(|r| r.into_inner()) }
    };
    let code = |r: Result<v1::SendMessageResponse, tonic::Status>| r.expect_err("must fail").code();

    assert_eq!(
        code(send(&alice, &dm, None).await),
        Code::InvalidArgument,
        "no content"
    );
    assert_eq!(
        code(send(&alice, &dm, Some(v1::Content { kind: None })).await),
        Code::InvalidArgument,
        "empty content"
    );
    assert_eq!(
        code(send(&alice, &dm, Some(text_content(""))).await),
        Code::InvalidArgument,
        "empty text"
    );
    let limit = server.config.max_content_bytes;
    let oversized = send(&alice, &dm, Some(text_content(&"x".repeat(limit + 1))))
        .await
        .unwrap_err();
    assert_eq!(
        oversized.code(),
        Code::InvalidArgument,
        "oversized text: {oversized:?}"
    );
    assert!(
        oversized.message().contains("limit"),
        "{}",
        oversized.message()
    );
    send(&alice, &dm, Some(text_content(&"y".repeat(limit))))
        .await
        .expect("exactly the limit is fine");
    let huge = send(&alice, &dm, Some(text_content(&"z".repeat(limit * 4))))
        .await
        .unwrap_err();
    assert_eq!(
        huge.code(),
        Code::ResourceExhausted,
        "beyond the transport limit: a size limit ({huge:?})"
    );

    for bad in [
        "", "dm", "dm:2:1", "dm:5:5", "dm:01:2", "g:", "g:abc", "x:1", "dm:1:2:3",
    ] {
        assert_eq!(
            code(send(&alice, bad, Some(text_content("hi"))).await),
            Code::InvalidArgument,
            "conversation id {bad:?}"
        );
        let sync_error = alice
            .chat()
            .sync_messages(v1::SyncMessagesRequest {
                cursors: vec![v1::Cursor {
                    conversation_id: bad.into(),
                    after_seq: 0,
                }],
                limit: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(sync_error.code(), Code::InvalidArgument);
    }
    let bad_id = alice
        .try_send_text(&dm, &"k".repeat(65), "hi")
        .await
        .unwrap_err();
    assert_eq!(
        bad_id.code(),
        Code::InvalidArgument,
        "client_msg_id too long"
    );

    // Not a member of the conversation: no send, no read, no sync, no marks.
    assert_eq!(
        code(send(&carol, &dm, Some(text_content("let me in"))).await),
        Code::PermissionDenied
    );
    let history = carol
        .chat()
        .get_history(v1::GetHistoryRequest {
            conversation_id: dm.clone(),
            before_seq: 0,
            limit: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(history.code(), Code::PermissionDenied);
    let synced = carol
        .chat()
        .sync_messages(v1::SyncMessagesRequest {
            cursors: vec![v1::Cursor {
                conversation_id: dm.clone(),
                after_seq: 0,
            }],
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(synced.code(), Code::PermissionDenied);
    let mark = carol
        .chat()
        .mark_read(v1::MarkReadRequest {
            conversation_id: dm.clone(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(mark.code(), Code::PermissionDenied);
    // Not friends: no direct messages.
    let stranger = send(
        &alice,
        &alice.dm_with(&carol),
        Some(text_content("hello stranger")),
    )
    .await
    .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);
    assert!(
        stranger.message().contains("friend"),
        "{}",
        stranger.message()
    );
    // Groups: unknown is NOT_FOUND.
    assert_eq!(
        code(send(&alice, "g:999999", Some(text_content("hi"))).await),
        Code::NotFound
    );
    // Errors on the stream come back as send_result errors.
    let mut stream = alice.connect().await;
    stream
        .send(client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: "s-1".into(),
            conversation_id: "dm:9:8".into(),
            content: Some(text_content("hi")),
        }))
        .await;
    let result = stream
        .next_matching(|e| {
            if let Event::SendResult(r) = e {
                Some(r)
            } else {
                None
            }
        })
        .await;
    assert!(
        matches!(result.outcome, Some(Outcome::Error(ref e)) if e.code == Code::InvalidArgument as i32),
        "{result:?}"
    );

    let stored = sync(&bob, &dm, 0, 0).await.messages;
    assert_eq!(stored.len(), 1, "only the one valid message was stored");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn send_rate_and_stream_count_are_limited() {
    let server = TestServer::start_with(|c| {
        c.send_rate = 0.5;
        c.send_burst = 3;
        c.max_streams_per_user = 2;
    })
    .await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    for i in 0..3 {
        alice
            .try_send_text(&dm, &format!("b{i}"), "burst")
            .await
            .expect("within the burst");
    }
    let limited = alice
        .try_send_text(&dm, "b3", "one too many")
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    bob.try_send_text(&dm, "other", "bob has his own bucket")
        .await
        .expect("per-user buckets");

    let _s1 = alice.connect().await;
    let _s2 = alice.connect().await;
    let third = common::LiveStream::open(&alice)
        .await
        .err()
        .expect("third stream refused");
    assert_eq!(third.code(), Code::ResourceExhausted);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_consumer_too_slow_is_disconnected_and_catches_up_by_sync() {
    let server = TestServer::start_with(|c| c.outbox_capacity = 16).await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    let mut slow = bob.connect().await; // never read while messages flow
    let text = "s".repeat(2048);
    let sent: Vec<v1::Message> = stream::iter(0..1500)
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
    let ended = loop {
        match slow.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(
        ended.code(),
        Code::ResourceExhausted,
        "slow stream closed: {ended:?}"
    );
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = sync(&bob, &dm, after, 500).await;
        count += page.messages.len();
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        count,
        sent.len(),
        "sync recovers everything the stream dropped"
    );
    bob.connect().await; // and the device can reconnect
    server.stop().await.unwrap();
}

#[tokio::test]
async fn typing_and_read_receipts_reach_the_other_members() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let dm = alice.dm_with(&bob);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    a.send(client_event::Event::Typing(v1::TypingEvent {
        conversation_id: dm.clone(),
    }))
    .await;
    let typing = b
        .next_matching(|e| {
            if let Event::Typing(t) = e {
                Some(t)
            } else {
                None
            }
        })
        .await;
    assert_eq!(
        (typing.user_id, typing.conversation_id.as_str()),
        (alice.user_id, dm.as_str())
    );
    bob.chat()
        .notify_typing(v1::NotifyTypingRequest {
            conversation_id: dm.clone(),
        })
        .await
        .unwrap();
    let typing = a
        .next_matching(|e| {
            if let Event::Typing(t) = e {
                Some(t)
            } else {
                None
            }
        })
        .await;
    assert_eq!(typing.user_id, bob.user_id);

    let m = alice.send_text(&dm, "read me").await;
    b.send(client_event::Event::Read(v1::ReadEvent {
        conversation_id: dm.clone(),
        seq: m.seq,
    }))
    .await;
    let receipt = a
        .next_matching(|e| {
            if let Event::ReadReceipt(r) = e {
                Some(r)
            } else {
                None
            }
        })
        .await;
    assert_eq!((receipt.user_id, receipt.seq), (bob.user_id, m.seq));
    a.send(client_event::Event::Heartbeat(v1::HeartbeatEvent {}))
        .await;
    a.next_matching(|e| matches!(e, Event::HeartbeatAck(_)).then_some(()))
        .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_oversized_event_on_a_stream_closes_it_with_resource_exhausted() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let mut stream = alice.connect().await;
    let text = "z".repeat(server.config.max_request_bytes() + 1);
    stream
        .send(client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: "big".into(),
            conversation_id: alice.dm_with(&bob),
            content: Some(text_content(&text)),
        }))
        .await;
    let ended = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    alice
        .send_text(&alice.dm_with(&bob), "the server is fine")
        .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn strangers_cannot_type_or_send_receipts_into_a_dm() {
    let server = TestServer::start().await;
    let (alice, bob) = friends(&server).await;
    let mallory = server.user("mallory").await;
    let mut a = alice.connect().await;
    let to_alice = mallory.dm_with(&alice);
    let typing = mallory
        .chat()
        .notify_typing(v1::NotifyTypingRequest {
            conversation_id: to_alice.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(typing.code(), Code::PermissionDenied);
    // MarkRead of an empty dm is harmless and tells nobody.
    mallory
        .chat()
        .mark_read(v1::MarkReadRequest {
            conversation_id: to_alice.clone(),
            seq: 5,
        })
        .await
        .unwrap();
    let mut m = mallory.connect().await;
    m.send(client_event::Event::Typing(v1::TypingEvent {
        conversation_id: to_alice,
    }))
    .await;
    // The stream handles events in order: once the heartbeat is answered, the typing event
    // before it was handled (and refused).
    m.send(client_event::Event::Heartbeat(v1::HeartbeatEvent {}))
        .await;
    m.next_matching(|e| matches!(e, Event::HeartbeatAck(_)).then_some(()))
        .await;
    // Alice's next event is bob's typing: nothing from mallory reached her before it.
    bob.chat()
        .notify_typing(v1::NotifyTypingRequest {
            conversation_id: alice.dm_with(&bob),
        })
        .await
        .unwrap();
    let first = a.next_matching(|e| match e {
        Event::Typing(t) => Some(t.user_id),
        Event::ReadReceipt(r) => Some(r.user_id),
        _ => None,
    });
    assert_eq!(first.await, bob.user_id);
    server.stop().await.unwrap();
}

/// A client with many sends in flight on one Connect stream (here 300, to two
/// conversations, with a read mark and typing in between): the server commits what arrived
/// together, yet every send_result comes back in the order sent, each conversation's seqs
/// follow the send order, and everything is stored once.
#[tokio::test]
async fn pipelined_sends_on_a_stream_keep_their_order() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    befriend(&alice, &bob).await;
    befriend(&alice, &carol).await;
    let (to_bob, to_carol) = (alice.dm_with(&bob), alice.dm_with(&carol));
    let mut stream = alice.connect().await;
    let mut sent = Vec::new();
    for i in 0..300 {
        let conversation = if i % 3 == 0 { &to_carol } else { &to_bob };
        let client_msg_id = format!("pipe-{i}");
        stream
            .send(client_event::Event::Send(v1::SendMessageRequest {
                client_msg_id: client_msg_id.clone(),
                conversation_id: conversation.clone(),
                content: Some(text_content(&format!("m{i}"))),
            }))
            .await;
        sent.push((client_msg_id, conversation.clone()));
        if i == 150 {
            stream
                .send(client_event::Event::Typing(v1::TypingEvent {
                    conversation_id: to_bob.clone(),
                }))
                .await;
        }
    }
    let mut last_seq = std::collections::HashMap::new();
    for (client_msg_id, conversation) in &sent {
        let result = stream
            .next_matching(|e| match e {
                Event::SendResult(r) => Some(r),
                _ => None,
            })
            .await;
        assert_eq!(&result.client_msg_id, client_msg_id, "results out of order");
        let Some(Outcome::Message(message)) = result.outcome else {
            panic!("send {client_msg_id} failed: {result:?}");
        };
        assert_eq!(&message.conversation_id, conversation);
        let previous = last_seq
            .insert(conversation.clone(), message.seq)
            .unwrap_or(0);
        assert_eq!(message.seq, previous + 1, "seq out of send order");
    }
    let stored = common::durability::sync_all(&bob, &to_bob).await;
    assert_eq!(stored.len(), 200);
    let texts: Vec<&str> = stored.iter().map(text_of).collect();
    let expected: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(texts, expected);
    server.stop().await.unwrap();
}
