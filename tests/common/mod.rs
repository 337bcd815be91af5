//! The end-to-end test harness: real servers on real sockets.
//!
//! - [`TestServer`]: `daehwa_server::run` in this process on a port-0 listener with a
//!   temporary data dir; stopped gracefully by [`TestServer::stop`].
//! - [`Chatd`]: the real `chatd` binary as a child process (for kill -9 and signal tests).
//! - [`TestUser`]: a signed-up, logged-in user with typed clients that carry its token.
//! - [`LiveStream`]: a Connect stream, already past its `ready` event.
//!
//! Nothing here sleeps and hopes: waits poll a condition until a deadline and fail loudly.

#![allow(dead_code)]

pub mod cluster;
pub mod durability;
pub mod ws;

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use daehwa::v1::{
    self, ClientEvent, Content, LoginRequest, Message, ServerEvent, SignUpRequest,
    auth_service_client::AuthServiceClient, chat_service_client::ChatServiceClient, client_event,
    content::Kind, group_service_client::GroupServiceClient,
    presence_service_client::PresenceServiceClient, server_event::Event,
    user_service_client::UserServiceClient,
};
use daehwa_server::Config;
use tokio::{io::AsyncBufReadExt, net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status, Streaming,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub config: Config,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with test defaults changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        adjust(&mut config);
        let mut server = Self::start_in(config).await;
        server._dir = Some(dir);
        server
    }

    /// A server on an existing configuration (e.g. to restart on the same data dir).
    pub async fn start_in(config: Config) -> Self {
        let listener = TcpListener::bind(config.listen)
            .await
            .expect("bind test listener");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(daehwa_server::run(config.clone(), listener, async move {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            config,
            shutdown: Some(tx),
            task: Some(task),
            _dir: None,
        };
        server.wait_serving().await;
        server
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        channel(&self.url()).await
    }

    async fn wait_serving(&self) {
        let url = self.url();
        eventually("the test server to serve health checks", || {
            let url = url.clone();
            async move {
                let channel = Channel::from_shared(url).ok()?.connect().await.ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let status = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()?;
                (status.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                    .then_some(())
            }
        })
        .await;
    }

    /// Signs up and logs in a new user with a unique name derived from `prefix`.
    pub async fn user(&self, prefix: &str) -> TestUser {
        TestUser::sign_up(&self.url(), &unique_name(prefix)).await
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("server task");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops within 30 s")
            .expect("server task joins")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A unique, valid username.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// A lazily connecting channel to `url`.
pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
        .expect("connect to server")
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = MetadataValue::try_from(format!("Bearer {}", self.0))
            .map_err(|_| Status::internal("bad token"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A logged-in user (one device) with clients that carry its access token.
#[derive(Clone)]
pub struct TestUser {
    pub url: String,
    pub username: String,
    pub password: String,
    pub user_id: u64,
    pub device_id: u64,
    pub access_token: String,
    pub refresh_token: String,
    pub channel: Channel,
}

impl TestUser {
    pub async fn sign_up(url: &str, username: &str) -> Self {
        let channel = channel(url).await;
        let password = "correct horse battery".to_owned();
        AuthServiceClient::new(channel.clone())
            .sign_up(SignUpRequest {
                username: username.to_owned(),
                password: password.clone(),
                display_name: format!("{username} display"),
            })
            .await
            .expect("sign up");
        Self::log_in(url, username, &password).await
    }

    /// Logs in again: a new device of the same user.
    pub async fn log_in(url: &str, username: &str, password: &str) -> Self {
        let channel = channel(url).await;
        let login = AuthServiceClient::new(channel.clone())
            .login(LoginRequest {
                username: username.to_owned(),
                password: password.to_owned(),
                device_name: "test".into(),
            })
            .await
            .expect("log in")
            .into_inner();
        Self {
            url: url.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            user_id: login.user_id,
            device_id: login.device_id,
            access_token: login.access_token,
            refresh_token: login.refresh_token,
            channel,
        }
    }

    /// Another device of this user.
    pub async fn second_device(&self) -> Self {
        Self::log_in(&self.url, &self.username, &self.password).await
    }

    fn bearer(&self) -> Bearer {
        Bearer(self.access_token.clone())
    }

    pub fn auth(&self) -> AuthServiceClient<Authed> {
        AuthServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }
    pub fn users(&self) -> UserServiceClient<Authed> {
        UserServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }
    pub fn groups(&self) -> GroupServiceClient<Authed> {
        GroupServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }
    pub fn chat(&self) -> ChatServiceClient<Authed> {
        ChatServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }
    pub fn presence(&self) -> PresenceServiceClient<Authed> {
        PresenceServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }
    pub fn discovery(&self) -> v1::discovery_service_client::DiscoveryServiceClient<Authed> {
        v1::discovery_service_client::DiscoveryServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer(),
        )
    }

    /// The dm conversation id with `other`.
    pub fn dm_with(&self, other: &TestUser) -> String {
        daehwa::dm_conversation_id(self.user_id, other.user_id)
    }

    /// Sends a text message with a random client_msg_id; panics on failure.
    pub async fn send_text(&self, conversation: &str, text: &str) -> Message {
        self.try_send_text(
            conversation,
            &format!("c-{:016x}", rand::random::<u64>()),
            text,
        )
        .await
        .expect("send message")
    }

    pub async fn try_send_text(
        &self,
        conversation: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Message, Status> {
        let response = self
            .chat()
            .send_message(v1::SendMessageRequest {
                client_msg_id: client_msg_id.to_owned(),
                conversation_id: conversation.to_owned(),
                content: Some(text_content(text)),
            })
            .await?;
        Ok(response.into_inner().message.expect("message in response"))
    }

    /// Opens a Connect stream and waits for `ready`.
    pub async fn connect(&self) -> LiveStream {
        LiveStream::open(self).await.expect("open Connect stream")
    }
}

/// Text content.
pub fn text_content(text: &str) -> Content {
    Content {
        kind: Some(Kind::Text(text.to_owned())),
    }
}

/// The text of a message (empty for other kinds).
pub fn text_of(message: &Message) -> &str {
    match message.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(t)) => t,
        _ => "",
    }
}

/// Makes `a` and `b` friends (request and accept).
pub async fn befriend(a: &TestUser, b: &TestUser) {
    a.users()
        .add_friend(v1::AddFriendRequest { user_id: b.user_id })
        .await
        .expect("friend request");
    let accepted = b
        .users()
        .add_friend(v1::AddFriendRequest { user_id: a.user_id })
        .await
        .expect("accept")
        .into_inner();
    assert_eq!(
        accepted.friendship.expect("friendship").state,
        v1::FriendshipState::Friends as i32
    );
}

/// A Connect stream past its `ready` event.
pub struct LiveStream {
    pub tx: mpsc::Sender<ClientEvent>,
    pub rx: Streaming<ServerEvent>,
    pub ready: v1::SessionReady,
}

impl LiveStream {
    pub async fn open(user: &TestUser) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(64);
        let mut inbound = user
            .chat()
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no ready event"))??;
        match first.and_then(|e| e.event) {
            Some(Event::Ready(ready)) => Ok(Self {
                tx,
                rx: inbound,
                ready,
            }),
            other => panic!("first event must be ready, got {other:?}"),
        }
    }

    pub async fn send(&self, event: client_event::Event) {
        self.tx
            .send(ClientEvent { event: Some(event) })
            .await
            .expect("stream open");
    }

    /// The next event, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Result<Event, Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Err(_) => panic!("no event within {WAIT:?}"),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Err(Status::cancelled("stream ended")),
            Ok(Ok(Some(ServerEvent { event: Some(e) }))) => Ok(e),
            Ok(Ok(Some(ServerEvent { event: None }))) => panic!("empty server event"),
        }
    }

    /// Skips events until `pick` returns Some; fails after [`WAIT`].
    pub async fn next_matching<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = match tokio::time::timeout(left, self.rx.message()).await {
                Err(_) => panic!("expected event did not arrive within {WAIT:?}"),
                Ok(r) => r
                    .expect("stream healthy")
                    .expect("stream open")
                    .event
                    .expect("event set"),
            };
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }

    /// The next `message` event.
    pub async fn next_message(&mut self) -> Message {
        self.next_matching(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await
    }
}

/// Polls `check` until it returns Some, failing with `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workspace root (where tools/ and proto/ are).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built binary of the workspace (`chatd`, `chat`) next to the test executable's target dir.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The real `chatd` binary as a child process, killed when dropped.
pub struct Chatd {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    /// Log lines up to and including "chatd serving".
    pub startup_log: Vec<String>,
    /// Log lines after start-up, as they come.
    pub log: mpsc::UnboundedReceiver<String>,
}

impl Chatd {
    /// Starts `chatd --listen 127.0.0.1:0 --data-dir DIR ARGS...` and waits until it serves.
    pub async fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(workspace_binary("chatd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--gateway-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chatd");
        let (log_tx, mut log) = mpsc::unbounded_channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let tx = log_tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        let mut startup_log = Vec::new();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = log.recv().await {
                let addr = line
                    .contains("chatd serving")
                    .then(|| parse_addr(&line))
                    .flatten();
                startup_log.push(line);
                if let Some(addr) = addr {
                    return addr;
                }
            }
            panic!("chatd exited before serving:\n{}", startup_log.join("\n"));
        })
        .await
        .expect("chatd serves within the deadline");
        Self {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            startup_log,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill chatd");
        self.child.wait().await.expect("reap chatd");
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("chatd pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("chatd exits after SIGTERM")
            .expect("wait")
    }
}

fn parse_addr(line: &str) -> Option<std::net::SocketAddr> {
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}
