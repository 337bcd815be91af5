//! The standalone `chat-gateway` binary in front of a chat server, and in front of a cluster:
//! WebSocket, gRPC-web and long polling reach the user's chat server; when it dies, sockets
//! are told, and clients reconnect through the gateway (to the restarted server, or where
//! Discovery sends them) and lose nothing acknowledged.

mod common;

use std::{collections::HashSet, process::Stdio};

use common::{
    TestServer, TestUser, WAIT, befriend,
    cluster::{Cluster, assert_complete, discover, sync_all},
    text_of,
    ws::{close_code, decode, next_frame, open_url},
};
use daehwa::v1::{self, server_event::Event};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A running `chat-gateway`, killed on drop.
struct Gateway {
    _child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Gateway {
    /// `chat-gateway --listen 127.0.0.1:0` with `args` (`--upstream URL` or `--registry URL`).
    async fn spawn(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(common::workspace_binary("chat-gateway"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chat-gateway");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(start) = line
                    .find("addr=")
                    .filter(|_| line.contains("chat-gateway listening"))
                {
                    return line[start + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                }
            }
            panic!("chat-gateway exited before listening");
        })
        .await
        .expect("chat-gateway listens in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            addr,
        }
    }

    fn ws(&self, user: &TestUser) -> String {
        format!(
            "ws://{}/v1/ws?access_token={}",
            self.addr, user.access_token
        )
    }
}

#[tokio::test]
async fn a_standalone_gateway_serves_sessions_and_survives_its_chat_server_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let config = daehwa_server::Config::for_tests(dir.path());
    let server = TestServer::start_in(config.clone()).await;
    let gateway = Gateway::spawn(&["--upstream", &server.url()]).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    befriend(&alice, &bob).await;
    let dm = alice.dm_with(&bob);

    // A WebSocket through the gateway gets live messages sent to the chat server.
    let mut socket = open_url(&gateway.ws(&bob), "daehwa.v1.proto").await;
    let Event::Ready(ready) = decode(next_frame(&mut socket).await) else {
        panic!("ready first")
    };
    assert_eq!(ready.user_id, bob.user_id);
    let first = alice.send_text(&dm, "through the gateway").await;
    let Event::Message(got) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(got.message_id, first.message_id);

    // The chat server goes away: the socket is told to reconnect.
    let addr = server.addr;
    server.stop().await.unwrap();
    assert_eq!(close_code(&mut socket).await, CloseCode::Restart);

    // Back on the same address and data; alice sends while bob is not connected.
    let server = TestServer::start_in(daehwa_server::Config {
        listen: addr,
        ..config
    })
    .await;
    let alice = TestUser::log_in(&server.url(), &alice.username, &alice.password).await;
    let bob = TestUser::log_in(&server.url(), &bob.username, &bob.password).await;
    let second = alice.send_text(&dm, "while bob was away").await;
    let mut socket = common::eventually("bob to reconnect through the gateway", || {
        let url = gateway.ws(&bob);
        async move {
            let request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                    .ok()?;
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.ok()?;
            matches!(decode(next_frame(&mut socket).await), Event::Ready(_)).then_some(socket)
        }
    })
    .await;
    let synced = common::durability::sync_all(&bob, &dm).await;
    assert_eq!(
        synced.iter().map(text_of).collect::<Vec<_>>(),
        vec!["through the gateway", "while bob was away"]
    );
    assert_eq!(synced[1].message_id, second.message_id);
    let third = alice.send_text(&dm, "live again").await;
    let Event::Message(got) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(got.message_id, third.message_id);

    // gRPC (and so gRPC-web) requests are forwarded upstream.
    let channel = common::channel(&format!("http://{}", gateway.addr)).await;
    let mut users = v1::user_service_client::UserServiceClient::with_interceptor(
        channel,
        common::Bearer(bob.access_token.clone()),
    );
    let me = users
        .get_me(v1::GetMeRequest {})
        .await
        .expect("GetMe through the gateway")
        .into_inner();
    assert_eq!(me.user.unwrap().user_id, bob.user_id);
    server.stop().await.unwrap();
}

/// A gateway in front of a cluster, finding the api servers in the registry (etcd): each
/// WebSocket session goes to the chat server Discovery names for its user, chat calls are
/// forwarded there too.
/// When that chat server is killed (SIGKILL), the socket closes, the client reconnects through
/// the same gateway, Discovery sends it to the live server, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_discovery_to_a_live_chat_server() {
    let mut cluster = Cluster::start(&[("chat-a", 0), ("chat-b", 0)]).await;
    let gateway = Gateway::spawn(&["--registry", &cluster.etcd.url()]).await;
    let alice = cluster.user_on("alice", "chat-a").await;
    let bob = cluster.user_on("bob", "chat-b").await;
    befriend(&cluster.at_api(&alice).await, &cluster.at_api(&bob).await).await;
    let dm = alice.dm_with(&bob);

    let mut socket = open_url(&gateway.ws(&bob), "daehwa.v1.proto").await;
    let Event::Ready(_) = decode(next_frame(&mut socket).await) else {
        panic!("ready first")
    };
    let mut acked = HashSet::new();
    let first = alice.send_text(&dm, "to bob on chat-b").await;
    acked.insert(first.message_id);
    let Event::Message(got) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(got.message_id, first.message_id);

    // Chat calls through the gateway reach Bob's chat server (the api server has no
    // ChatService): gRPC here, and gRPC-web takes the same path.
    let through_gateway = TestUser {
        channel: common::channel(&format!("http://{}", gateway.addr)).await,
        ..bob.clone()
    };
    assert_eq!(sync_all(&through_gateway, &dm, 0).await.len(), 1);

    cluster.chat.remove("chat-b").expect("chat-b").kill9().await;
    let code = close_code(&mut socket).await;
    assert!(
        matches!(code, CloseCode::Restart | CloseCode::Error),
        "socket closed with {code:?}"
    );
    for i in 0..10 {
        acked.insert(
            alice
                .send_text(&dm, &format!("while bob is away {i}"))
                .await
                .message_id,
        );
    }
    let mut socket = common::eventually("bob to reconnect through the gateway", || {
        let url = gateway.ws(&bob);
        async move {
            let request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                    .ok()?;
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.ok()?;
            match tokio::time::timeout(std::time::Duration::from_secs(2), socket.next()).await {
                // Until Discovery moves Bob, the session fails upstream and the socket closes.
                Ok(Some(Ok(frame @ tokio_tungstenite::tungstenite::Message::Binary(_)))) => {
                    matches!(decode(frame), Event::Ready(_)).then_some(socket)
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(
        discover(&cluster.at_api(&bob).await).await.server_id,
        "chat-a"
    );
    let synced = sync_all(&through_gateway, &dm, 0).await;
    assert_complete(&synced, &acked);
    assert_eq!(synced.len(), 11);
    let live = alice.send_text(&dm, "live again").await;
    let Event::Message(got) = decode(next_frame(&mut socket).await) else {
        panic!("message")
    };
    assert_eq!(got.message_id, live.message_id);
}
