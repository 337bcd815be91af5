//! The real `chatd` binary: kill -9 right after acknowledgements loses nothing, SIGTERM tells
//! live streams and exits cleanly, configuration comes from flags, env and TOML, and metrics
//! are served. Needs `cargo build --workspace --bins` first (scripts/test.sh does it).

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use common::{Chatd, TestUser, befriend, unique_name};
use daehwa::v1;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Mutex,
};
use tonic::Code;

async fn sync_all(user: &TestUser, conversation: &str) -> Vec<v1::Message> {
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
async fn send_on_stream(
    stream: &mut common::LiveStream,
    conversation: &str,
    client_msg_id: &str,
    text: &str,
) -> Result<v1::Message, tonic::Status> {
    let event = v1::ClientEvent {
        event: Some(v1::client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: client_msg_id.into(),
            conversation_id: conversation.into(),
            content: Some(common::text_content(text)),
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

#[tokio::test]
async fn kill_9_right_after_acknowledgements_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let unlimited = ["--send-rate", "1000000", "--send-burst", "1000000"];
    let chatd = Chatd::spawn(dir.path(), &unlimited).await;
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

    let chatd = Chatd::spawn(dir.path(), &[]).await;
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

#[tokio::test]
async fn sigterm_tells_live_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::spawn(dir.path(), &[]).await;
    let alice = TestUser::sign_up(&chatd.url(), &unique_name("alice")).await;
    let bob = TestUser::sign_up(&chatd.url(), &unique_name("bob")).await;
    befriend(&alice, &bob).await;
    let sent = alice
        .send_text(&alice.dm_with(&bob), "before shutdown")
        .await;
    let mut stream = bob.connect().await;
    let mut watch = bob
        .presence()
        .watch_presence(v1::WatchPresenceRequest { user_ids: vec![] })
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    let status = chatd.terminate().await;
    assert!(status.success(), "chatd exits 0 after SIGTERM: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "open streams do not hold shutdown for its 10 s grace: took {:?}",
        started.elapsed()
    );
    let watch_end = loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("WatchPresence ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(watch_end.code(), Code::Unavailable, "{watch_end:?}");
    let ended = loop {
        match stream.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(
        ended.code(),
        Code::Unavailable,
        "streams are told the server is going away: {ended:?}"
    );

    let chatd = Chatd::spawn(dir.path(), &[]).await;
    let bob = TestUser::log_in(&chatd.url(), &bob.username, &bob.password).await;
    assert_eq!(sync_all(&bob, &bob.dm_with(&alice)).await, vec![sent]);
    chatd.kill9().await;
}

#[tokio::test]
async fn configuration_from_toml_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(
        &file,
        "server_id = \"from-toml\"\nadvertise = \"chat.example:443\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    // The flag beats the file for server_id; advertise comes from the file.
    let chatd = Chatd::spawn(
        &data,
        &[
            "--config",
            file.to_str().unwrap(),
            "--server-id",
            "from-flag",
        ],
    )
    .await;
    let user = TestUser::sign_up(&chatd.url(), &unique_name("cfg")).await;
    let server = user
        .discovery()
        .get_chat_server(v1::GetChatServerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (server.server_id.as_str(), server.grpc_endpoint.as_str()),
        ("from-flag", "chat.example:443")
    );
    chatd.kill9().await;

    // A typo in the file stops the server before it binds, with a message naming the key.
    std::fs::write(&file, "sever_id = \"oops\"\n").unwrap();
    let output = tokio::process::Command::new(common::workspace_binary("chatd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sever_id"), "{stderr}");
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::spawn(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let line = chatd
        .startup_log
        .iter()
        .find(|l| l.contains("metrics listening"))
        .expect("metrics address logged before serving");
    let start = line.find("addr=").unwrap() + 5;
    let metrics_addr: std::net::SocketAddr = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let alice = TestUser::sign_up(&chatd.url(), &unique_name("alice")).await;
    let bob = TestUser::sign_up(&chatd.url(), &unique_name("bob")).await;
    befriend(&alice, &bob).await;
    let _stream = bob.connect().await;
    alice.send_text(&alice.dm_with(&bob), "count me").await;
    let _ = alice
        .chat()
        .get_history(v1::GetHistoryRequest {
            conversation_id: "nonsense".into(),
            before_seq: 0,
            limit: 1,
        })
        .await;

    let mut socket = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    for expected in [
        "daehwa_sessions 1",
        "daehwa_messages_sent_total 1",
        "daehwa_messages_delivered_total",
        "daehwa_delivery_latency_seconds_bucket",
        "daehwa_store_append_seconds_count 1",
        "daehwa_rpc_errors_total{code=\"InvalidArgument\"} 1",
    ] {
        assert!(
            body.contains(expected),
            "metrics lack {expected:?}:\n{body}"
        );
    }
    chatd.kill9().await;
}
