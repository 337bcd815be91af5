//! Durability scenarios shared by the tests of the real `chatd` binary on each backend.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use daehwa::v1;
use tokio::sync::Mutex;
use tonic::Code;

use super::{Chatd, TestUser, befriend, unique_name};

pub async fn sync_all(user: &TestUser, conversation: &str) -> Vec<v1::Message> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |m: &v1::Message| m.seq);
        let cursors = vec![v1::Cursor {
            conversation_id: conversation.into(),
            after_seq: after,
        }];
        let page = user
            .chat()
            .sync_messages(v1::SyncMessagesRequest {
                cursors,
                limit: 500,
            })
            .await
            .expect("sync")
            .into_inner();
        out.extend(page.messages);
        if !page.has_more {
            return out;
        }
    }
}

/// Sends on a Connect stream and waits for its `send_result`; a broken stream is an error.
pub async fn send_on_stream(
    stream: &mut super::LiveStream,
    conversation: &str,
    client_msg_id: &str,
    text: &str,
) -> Result<v1::Message, tonic::Status> {
    let event = v1::ClientEvent {
        event: Some(v1::client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: client_msg_id.into(),
            conversation_id: conversation.into(),
            content: Some(super::text_content(text)),
        })),
    };
    stream
        .tx
        .send(event)
        .await
        .map_err(|_| tonic::Status::unavailable("stream gone"))?;
    loop {
        match stream.next().await? {
            v1::server_event::Event::SendResult(result) => {
                return match result.outcome {
                    Some(v1::send_result::Outcome::Message(m)) => Ok(m),
                    other => panic!("send {client_msg_id} refused: {other:?}"),
                };
            }
            _ => continue,
        }
    }
}

/// Eight senders (four unary, four on Connect streams) send as fast as they can to a `chatd`
/// started with `extra_args`; it is killed with SIGKILL right after the 300th
/// acknowledgement, restarted on the same data, and every acknowledged message must be
/// there, unchanged, in a gapless log without duplicates.
pub async fn kill9_loses_nothing(data_dir: &Path, extra_args: &[&str]) {
    let mut args = vec!["--send-rate", "1000000", "--send-burst", "1000000"];
    args.extend_from_slice(extra_args);
    let chatd = Chatd::spawn(data_dir, &args).await;
    let alice = TestUser::sign_up(&chatd.url(), &unique_name("alice")).await;
    let bob = TestUser::sign_up(&chatd.url(), &unique_name("bob")).await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);

    // Eight senders send as fast as they can; every acknowledgement is recorded. The server
    // is killed while sends are in flight, right after the 300th acknowledgement.
    let acked: Arc<Mutex<BTreeMap<String, v1::Message>>> = Arc::default();
    let (enough_tx, enough_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    // Senders 0-3 use SendMessage; senders 4-7 send on Connect streams and count a
    // `send_result` as the acknowledgement.
    for s in 0..8 {
        let (alice, dm, acked, enough_tx) =
            (alice.clone(), dm.clone(), acked.clone(), enough_tx.clone());
        senders.push(tokio::spawn(async move {
            let mut stream = if s >= 4 {
                Some(alice.connect().await)
            } else {
                None
            };
            for i in 0.. {
                let id = format!("k{s}-{i}");
                let text = format!("message {id}");
                let outcome = match stream.as_mut() {
                    None => alice.try_send_text(&dm, &id, &text).await,
                    Some(stream) => send_on_stream(stream, &dm, &id, &text).await,
                };
                match outcome {
                    Ok(m) => {
                        let mut acked = acked.lock().await;
                        acked.insert(id, m);
                        if acked.len() >= 300 {
                            let _ = enough_tx.send(true);
                        }
                    }
                    // The server was killed.
                    Err(status)
                        if [Code::Unavailable, Code::Unknown, Code::Cancelled]
                            .contains(&status.code()) =>
                    {
                        return;
                    }
                    Err(status) => panic!("send {id} failed before the kill: {status:?}"),
                }
            }
        }));
    }
    let mut enough = enough_rx.clone();
    tokio::time::timeout(Duration::from_secs(60), enough.wait_for(|v| *v))
        .await
        .expect("300 acks within 60 s")
        .unwrap();
    chatd.kill9().await;
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 300);

    let chatd = Chatd::spawn(data_dir, &args).await;
    let bob = TestUser::log_in(&chatd.url(), &bob.username, &bob.password).await;
    let stored = sync_all(&bob, &dm).await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "the stored log is gapless"
    );
    let by_client_id: BTreeMap<&str, &v1::Message> = stored
        .iter()
        .map(|m| (m.client_msg_id.as_str(), m))
        .collect();
    assert_eq!(by_client_id.len(), stored.len(), "no duplicates");
    for (id, message) in &acked {
        assert_eq!(
            by_client_id.get(id.as_str()),
            Some(&message),
            "acknowledged message {id} survived kill -9 unchanged"
        );
    }
    eprintln!(
        "{} acknowledged before kill -9; {} stored after restart, all acknowledged ones among them",
        acked.len(),
        stored.len()
    );
    // The log continues where it stopped.
    let alice = TestUser::log_in(&chatd.url(), &alice.username, &alice.password).await;
    let next = alice.send_text(&dm, "after restart").await;
    assert_eq!(next.seq, stored.len() as u64 + 1);
    chatd.kill9().await;
}
