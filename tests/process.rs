//! The real `chatd` binary: kill -9 right after acknowledgements loses nothing, SIGTERM tells
//! live streams and exits cleanly, configuration comes from flags, env and TOML, and metrics
//! are served. Needs `cargo build --workspace --bins` first (scripts/test.sh does it).

mod common;

use std::time::Duration;

use common::{
    Chatd, TestUser, befriend,
    durability::{self, sync_all},
    unique_name,
};
use daehwa::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn kill_9_right_after_acknowledgements_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    durability::kill9_loses_nothing(dir.path(), &[]).await;
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
