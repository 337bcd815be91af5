//! End-to-end tests of the `chat` binary against the real Daehwa server: each test runs
//! `daehwa_server::run` in this process on a port-0 listener with a temporary data dir, and
//! drives the built `chat` binary with `DAEHWA_SERVER`, `DAEHWA_CONFIG_DIR` and
//! `DAEHWA_PASSWORD`. Covered: accounts and profile files, friends, direct and group messages,
//! conversations and unread counts, presence, server errors, token refresh, dead sessions and
//! the interactive mode.
//!
//! Nothing here sleeps and hopes: every wait polls a condition until a deadline and fails
//! loudly.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use daehwa::v1::{NotifyTypingRequest, chat_service_client::ChatServiceClient};
use daehwa_server::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PASSWORD: &str = "correct horse";
/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// The real server, running in this process.
struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts a server with test defaults changed by `adjust`, and waits until it serves.
    async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        let data = tempfile::tempdir().expect("temp data dir");
        let mut config = Config::for_tests(data.path());
        adjust(&mut config);
        let listener = TcpListener::bind(config.listen)
            .await
            .expect("bind the server's listener");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(daehwa_server::run(config, listener, async move {
            let _ = rx.await;
        }));
        let server = Server {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            _data: data,
        };
        server.wait_serving().await;
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Polls the gRPC health check until it says SERVING (the listener accepts connections
    /// before the server runs, so a TCP connect proves nothing).
    async fn wait_serving(&self) {
        let url = self.url();
        let task = self.task.as_ref().expect("server task");
        eventually("the server to serve health checks", || {
            assert!(!task.is_finished(), "the server stopped while starting");
            let url = url.clone();
            async move {
                let channel = Channel::from_shared(url).ok()?.connect().await.ok()?;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .status;
                (status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await;
    }

    /// Graceful shutdown; the server must stop cleanly.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("server task");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the server stops within 30 s")
            .expect("the server task joins")
            .expect("the server stops without an error");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `check` until it returns Some, failing with `what` after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server plus a directory of `chat` profiles.
struct Env {
    server: Server,
    url: String,
    _home: tempfile::TempDir,
    /// `DAEHWA_CONFIG_DIR`; created by `chat` itself.
    dir: PathBuf,
}

impl Env {
    async fn new() -> Env {
        Env::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut Config)) -> Env {
        let server = Server::start(adjust).await;
        let home = tempfile::tempdir().expect("temp config dir");
        Env {
            url: server.url(),
            server,
            dir: home.path().join("profiles"),
            _home: home,
        }
    }

    fn cmd(&self, profile: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
        cmd.args(args)
            .env("DAEHWA_CONFIG_DIR", &self.dir)
            .env("DAEHWA_SERVER", &self.url)
            .env("DAEHWA_PROFILE", profile)
            .env("DAEHWA_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn output(&self, mut cmd: Command, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("chat {args:?} did not finish within {WAIT:?}"))
            .expect("run chat");
        let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
        (
            out.status.code().unwrap_or(-1),
            text(out.stdout),
            text(out.stderr),
        )
    }

    async fn run(&self, profile: &str, args: &[&str]) -> (i32, String, String) {
        self.output(self.cmd(profile, args), args).await
    }

    /// Runs `chat`, expects success, returns stdout.
    async fn ok(&self, profile: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(profile, args).await;
        assert_eq!(code, 0, "chat {args:?} failed:\n{err}{out}");
        out
    }

    /// Runs `chat`, expects exit status 1 with `error: ...`, returns stderr trimmed.
    async fn fail(&self, profile: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(profile, args).await;
        assert_eq!(code, 1, "chat {args:?} should fail:\n{out}{err}");
        assert!(err.starts_with("error: "), "chat {args:?}: {err}");
        err.trim().to_string()
    }

    fn profile_path(&self, profile: &str) -> PathBuf {
        self.dir.join(format!("{profile}.json"))
    }

    fn profile_text(&self, profile: &str) -> String {
        std::fs::read_to_string(self.profile_path(profile)).expect("read profile")
    }

    fn profile_json(&self, profile: &str) -> Value {
        serde_json::from_str(&self.profile_text(profile)).expect("profile is JSON")
    }

    /// Overwrites a profile file (as a backup restored by hand would), mode 0600.
    fn write_profile(&self, profile: &str, text: &str) {
        let path = self.profile_path(profile);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create profile");
        file.write_all(text.as_bytes()).expect("write profile");
    }

    fn user_id(&self, profile: &str) -> u64 {
        self.profile_json(profile)["user_id"]
            .as_u64()
            .expect("user_id in profile")
    }

    /// Signs `username` up on `profile`; returns the user id.
    async fn signup(&self, profile: &str, username: &str, display_name: &str) -> u64 {
        let out = self
            .ok(
                profile,
                &["signup", username, "--display-name", display_name],
            )
            .await;
        let name = username.to_lowercase();
        assert!(out.starts_with(&format!("signed up as {name}\n")), "{out}");
        assert!(
            out.contains(&format!("logged in as {name} (user ")),
            "{out}"
        );
        self.user_id(profile)
    }

    /// A friend request from `a` and its acceptance by `b` (profiles and usernames).
    async fn befriend(&self, (a, a_name): (&str, &str), (b, b_name): (&str, &str)) {
        assert_eq!(
            self.ok(a, &["friends", "add", b_name]).await.trim(),
            format!("friend request sent to {b_name}")
        );
        assert_eq!(
            self.ok(b, &["friends", "add", a_name]).await.trim(),
            format!("you and {a_name} are now friends")
        );
    }

    /// JSON lines of `chat --json ARGS`.
    async fn json_lines(&self, profile: &str, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(profile, &all)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn dm(a: u64, b: u64) -> String {
    format!("dm:{}:{}", a.min(b), a.max(b))
}

/// `HH:MM:SS`.
fn is_clock(s: &str) -> bool {
    s.len() == 8
        && s.char_indices().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Checks `[seq] HH:MM:SS sender: text`.
fn assert_message_line(line: &str, seq: u64, sender: &str, text: &str) {
    let prefix = format!("[{seq}] ");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line:?} should start with {prefix:?}"));
    assert!(rest.len() > 9 && is_clock(&rest[..8]), "{line:?}");
    assert_eq!(&rest[8..], format!(" {sender}: {text}"), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_profiles_and_sessions() {
    let env = Env::new().await;

    // Usernames are lowercased by the server; the profile keeps the server's spelling.
    let out = env
        .ok("default", &["signup", "Alice", "--display-name", "Alice A"])
        .await;
    let id = env.user_id("default");
    let device = env.profile_json("default")["device_id"].as_u64().unwrap();
    assert_eq!(
        out,
        format!(
            "signed up as alice\nlogged in as alice (user {id}, device {device}) on {} [profile default]\n",
            env.url
        )
    );
    let profile = env.profile_json("default");
    assert_eq!(profile["username"], "alice");
    assert_eq!(profile["server"], env.url.as_str());
    assert!(profile["access_expires_at"].as_i64().unwrap() > unix_now() + 600);

    // The profile holds bearer tokens: 0600 in a 0700 directory.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.profile_path("default")), 0o600);
    assert_eq!(mode(&env.dir), 0o700);

    let me: Value = serde_json::from_str(&env.ok("default", &["--json", "whoami"]).await).unwrap();
    assert_eq!(me["user_id"], id);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["display_name"], "Alice A");
    assert_eq!(me["device_id"], device);
    assert_eq!(me["server"], env.url.as_str());
    assert_eq!(me["profile"], "default");
    assert_eq!(
        env.ok("default", &["whoami"]).await,
        format!(
            "alice (Alice A) — user {id}, device {device}\nserver {} [profile default]\n",
            env.url
        )
    );

    // Errors of the server reach the user as `error: <message>` with exit status 1.
    assert_eq!(
        env.fail("bob", &["signup", "ALICE"]).await,
        "error: username \"alice\" is taken"
    );
    assert!(
        env.fail("bob", &["signup", "ab"])
            .await
            .starts_with("error: username must be 3-32 characters"),
    );
    let mut short = env.cmd("bob", &["signup", "bobby"]);
    short.env("DAEHWA_PASSWORD", "short");
    let (code, _, err) = env.output(short, &["signup", "bobby"]).await;
    assert_eq!(
        (code, err.trim()),
        (1, "error: password must be at least 8 characters")
    );
    let mut wrong = env.cmd("bob", &["login", "alice"]);
    wrong.env("DAEHWA_PASSWORD", "not the password");
    let (code, _, err) = env.output(wrong, &["login", "alice"]).await;
    assert_eq!((code, err.trim()), (1, "error: wrong username or password"));
    assert!(!env.profile_path("bob").exists());

    // A second device of the same user, on another profile.
    let out = env
        .ok("laptop", &["login", "ALICE", "--device", "laptop"])
        .await;
    let laptop = env.profile_json("laptop")["device_id"].as_u64().unwrap();
    assert_ne!(laptop, device);
    assert_eq!(
        out.trim(),
        format!(
            "logged in as alice (user {id}, device {laptop}) on {} [profile laptop]",
            env.url
        )
    );

    // Logout revokes this device only and forgets the profile.
    assert_eq!(
        env.ok("default", &["logout"]).await.trim(),
        "logged out alice"
    );
    assert!(!env.profile_path("default").exists());
    assert_eq!(
        env.fail("default", &["whoami"]).await,
        "error: not logged in (profile \"default\"): run `chat login USERNAME` first"
    );
    assert_eq!(
        env.ok("default", &["logout"]).await.trim(),
        "not logged in (profile default)"
    );
    assert!(env.ok("laptop", &["whoami"]).await.starts_with("alice "));

    // A session revoked on the server while its profile survives (a restored backup): the
    // access token is refused, the refresh token too, and the user is told to log in again.
    let backup = env.profile_text("laptop");
    env.ok("laptop", &["logout"]).await;
    env.write_profile("laptop", &backup);
    assert_eq!(
        env.fail("laptop", &["whoami"]).await,
        "error: your session has ended (refresh token expired or revoked: log in again): \
         run `chat --profile laptop login alice` again"
    );
    // Logging out a dead session still forgets it, with a warning.
    let (code, out, err) = env.run("laptop", &["logout"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.starts_with(
            "warning: forgot the local session of alice, but the server did not confirm the logout"
        ),
        "{err}"
    );
    assert!(!env.profile_path("laptop").exists());

    assert!(
        env.ok("default", &["login", "alice"])
            .await
            .starts_with("logged in as alice (user ")
    );
    env.ok("default", &["whoami"]).await;
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_direct_messages_and_presence() {
    let env = Env::new().await;
    let a = env.signup("default", "alice", "Alice").await;
    let b = env.signup("bob", "Bob", "Bob B").await;
    let c = env.signup("carol", "carol", "carol").await;
    let dm_ab = dm(a, b);

    // Direct messages need a friendship.
    assert_eq!(
        env.fail("default", &["send", "@bob", "hi"]).await,
        format!("error: user {b} is not your friend: direct messages need a friendship")
    );

    // A request, then its acceptance.
    assert_eq!(
        env.ok("default", &["friends", "add", "bob"]).await,
        "friend request sent to bob\n"
    );
    assert_eq!(
        env.ok("default", &["friends"]).await,
        "Friends (0):\nOutgoing requests (1):\n  bob (Bob B)\n"
    );
    assert_eq!(
        env.ok("bob", &["friends"]).await,
        "Friends (0):\nIncoming requests (accept with `chat friends add USERNAME`) (1):\n  alice (Alice)\n"
    );
    let incoming = env.json_lines("bob", &["friends"]).await;
    assert_eq!(incoming.len(), 1);
    assert_eq!(incoming[0]["username"], "alice");
    assert_eq!(incoming[0]["state"], "incoming");
    assert_eq!(
        env.ok("bob", &["friends", "add", "@ALICE"]).await,
        "you and alice are now friends\n"
    );
    assert_eq!(
        env.ok("default", &["friends"]).await,
        "Friends (1):\n  bob (Bob B)\n"
    );
    // carol's display name is her username: shown once.
    env.befriend(("default", "alice"), ("carol", "carol")).await;
    assert!(
        env.ok("default", &["friends"])
            .await
            .contains("\n  carol\n")
    );

    // Nobody has heard from bob yet.
    let presence = env.ok("default", &["presence", "bob"]).await;
    assert!(
        presence.starts_with("bob ")
            && presence.contains(" offline ")
            && presence.trim_end().ends_with("last active: never seen"),
        "{presence}"
    );

    // Messages.
    assert_eq!(
        env.ok("default", &["send", "@bob", "hello", "there"]).await,
        format!("sent: seq 1 in {dm_ab}\n")
    );
    let history = env.ok("bob", &["history", "@alice"]).await;
    assert_eq!(history.lines().count(), 1, "{history}");
    assert_message_line(history.trim_end(), 1, "alice", "hello there");

    let conversations = env.ok("bob", &["conversations"]).await;
    let lines: Vec<&str> = conversations.lines().collect();
    assert_eq!(lines.len(), 2, "{conversations}");
    assert_eq!(lines[0], format!("{dm_ab}  @alice  (1 unread)"));
    assert_message_line(lines[1].trim_start(), 1, "alice", "hello there");
    let conv = env.json_lines("bob", &["conversations"]).await;
    assert_eq!(conv.len(), 1);
    assert_eq!(conv[0]["conversation_id"], dm_ab.as_str());
    assert_eq!(conv[0]["title"], "@alice");
    assert_eq!(conv[0]["last_seq"], 1);
    assert_eq!(conv[0]["read_seq"], 0);
    assert_eq!(conv[0]["unread_count"], 1);
    assert_eq!(conv[0]["last_message"]["sender"], "alice");
    assert_eq!(conv[0]["last_message"]["text"], "hello there");
    // One's own message counts as read.
    assert!(
        env.ok("default", &["conversations"])
            .await
            .starts_with(&format!("{dm_ab}  @bob\n"))
    );

    // bob answers, which also makes him active.
    assert_eq!(
        env.ok("bob", &["send", "@alice", "hi", "alice"]).await,
        format!("sent: seq 2 in {dm_ab}\n")
    );
    let json = env.json_lines("default", &["history", "@bob"]).await;
    let summary: Vec<_> = json
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["sender"].as_str().unwrap().to_string(),
                m["sender_id"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "alice".to_string(), a, "hello there".to_string()),
            (2, "bob".to_string(), b, "hi alice".to_string()),
        ]
    );
    assert!(json.iter().all(|m| m["conversation_id"] == dm_ab.as_str()));

    // Presence of all friends: bob is online now, carol was never seen.
    let presence = env.ok("default", &["presence"]).await;
    let bob_line = presence
        .lines()
        .find(|l| l.starts_with("bob "))
        .unwrap_or_else(|| panic!("{presence}"));
    assert!(bob_line.contains(" online "), "{presence}");
    assert!(bob_line.contains("last active "), "{presence}");
    let carol_line = presence
        .lines()
        .find(|l| l.starts_with("carol "))
        .unwrap_or_else(|| panic!("{presence}"));
    assert!(carol_line.contains(" offline "), "{presence}");
    let json = env.json_lines("default", &["presence", "bob"]).await;
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["username"], "bob");
    assert_eq!(json[0]["status"], "online");
    assert_eq!(json[0]["user_id"], b);
    // Presence is for friends only.
    assert_eq!(
        env.fail("bob", &["presence", "carol"]).await,
        format!("error: user {c} is not your friend: presence is visible to friends only")
    );

    // Errors.
    assert_eq!(
        env.fail("default", &["send", "@nobody", "hi"]).await,
        "error: no user named \"nobody\""
    );
    assert!(
        env.fail("default", &["send", "bob", "hi"])
            .await
            .starts_with("error: invalid target \"bob\"")
    );
    assert_eq!(
        env.fail("bob", &["history", &dm(a, c)]).await,
        "error: you are not a member of this conversation"
    );

    // Unfriending.
    assert_eq!(
        env.ok("default", &["friends", "remove", "bob"]).await,
        "bob is no longer a friend or request\n"
    );
    assert_eq!(
        env.fail("default", &["friends", "remove", "bob"]).await,
        format!("error: no friendship or request with user {b}")
    );
    assert_eq!(
        env.fail("bob", &["send", "@alice", "still", "there?"])
            .await,
        format!("error: user {a} is not your friend: direct messages need a friendship")
    );
    // The conversation stays readable.
    assert!(
        env.ok("bob", &["history", "@alice"])
            .await
            .contains(" bob: hi alice")
    );
    assert_eq!(
        env.ok("bob", &["presence"]).await,
        "no friends yet: add one with `chat friends add USERNAME`\n"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups() {
    let env = Env::new().await;
    let a = env.signup("default", "alice", "alice").await;
    env.signup("bob", "bob", "bob").await;
    let c = env.signup("carol", "carol", "carol").await;
    env.befriend(("default", "alice"), ("bob", "bob")).await;

    assert_eq!(
        env.ok("bob", &["groups"]).await,
        "no groups yet: create one with `chat groups create NAME [USERNAME...]`\n"
    );
    // Members must be the creator's friends.
    assert_eq!(
        env.fail("default", &["groups", "create", "team", "bob", "carol"])
            .await,
        format!("error: user {c} is not your friend: you can only add friends to a group")
    );
    let created = env
        .ok("default", &["groups", "create", "team", "bob"])
        .await;
    let g: u64 = created
        .strip_prefix("created #")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{created}"));
    let line = format!("#{g} team — 2 members: alice (owner), bob  [g:{g}]");
    assert_eq!(created, format!("created {line}\n"));
    assert_eq!(env.ok("bob", &["groups"]).await, format!("{line}\n"));

    let hash = format!("#{g}");
    assert_eq!(
        env.ok("bob", &["send", &hash, "hi", "team"]).await,
        format!("sent: seq 1 in g:{g}\n")
    );
    let history = env
        .json_lines("default", &["history", &format!("g:{g}")])
        .await;
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0]["text"].as_str(),
            history[0]["sender"].as_str(),
            history[0]["seq"].as_u64()
        ),
        (Some("hi team"), Some("bob"), Some(1))
    );
    let conversations = env.ok("default", &["conversations"]).await;
    assert!(
        conversations.starts_with(&format!("g:{g}  #{g} team  (1 unread)\n")),
        "{conversations}"
    );

    let groups = env.json_lines("bob", &["groups"]).await;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["members"], serde_json::json!(["alice", "bob"]));
    assert_eq!(groups[0]["owner_id"], a);
    assert_eq!(groups[0]["conversation_id"], format!("g:{g}"));

    // Adding members: friends of whoever adds them.
    env.befriend(("default", "alice"), ("carol", "carol")).await;
    assert_eq!(
        env.fail("bob", &["groups", "add", &g.to_string(), "carol"])
            .await,
        format!("error: user {c} is not your friend: you can only add friends to a group")
    );
    assert_eq!(
        env.ok("default", &["groups", "add", &hash, "carol"]).await,
        format!("#{g} team — 3 members: alice (owner), bob, carol  [g:{g}]\n")
    );
    assert!(
        env.ok("carol", &["history", &hash])
            .await
            .contains(" bob: hi team")
    );

    assert_eq!(
        env.ok("bob", &["groups", "leave", &g.to_string()]).await,
        format!("left group #{g}\n")
    );
    assert_eq!(
        env.fail("bob", &["send", &format!("g:{g}"), "still", "here?"])
            .await,
        "error: you are not a member of this group"
    );
    assert_eq!(
        env.fail("bob", &["history", &hash]).await,
        "error: you are not a member of this group"
    );
    assert_eq!(
        env.fail("bob", &["groups", "leave", &g.to_string()]).await,
        "error: you are not a member of this group"
    );
    assert_eq!(
        env.fail("default", &["send", "#999999", "anyone?"]).await,
        "error: group 999999 not found"
    );
    let groups = env.json_lines("default", &["groups"]).await;
    assert_eq!(groups[0]["members"], serde_json::json!(["alice", "carol"]));
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_and_dead_sessions_need_a_new_login() {
    // Access tokens live 2 s: always inside the CLI's 30 s refresh margin.
    let env = Env::with(|c| c.access_token_ttl = Duration::from_secs(2)).await;
    env.signup("default", "alice", "alice").await;
    let refresh_token = |p: &Value| p["refresh_token"].as_str().unwrap().to_string();

    let p0 = env.profile_json("default");
    let expires0 = p0["access_expires_at"].as_i64().unwrap();
    assert!(expires0 <= unix_now() + 2, "the server's TTL: {p0}");

    // A token about to expire is refreshed before use, and the rotated pair is saved.
    assert!(env.ok("default", &["whoami"]).await.starts_with("alice "));
    let p1 = env.profile_json("default");
    assert_ne!(refresh_token(&p1), refresh_token(&p0));
    assert!(p1["access_expires_at"].as_i64().unwrap() >= expires0);
    assert_eq!(p1["user_id"], p0["user_id"]);
    assert_eq!(p1["device_id"], p0["device_id"]);
    env.ok("default", &["friends"]).await;
    let p2 = env.profile_json("default");
    assert_ne!(refresh_token(&p2), refresh_token(&p1));

    // A token the server refuses although it looks fresh: UNAUTHENTICATED, refresh, retry.
    let mut forged = p2.clone();
    forged["access_token"] = "dh1.forged.token".into();
    forged["access_expires_at"] = (unix_now() + 3600).into();
    env.write_profile("default", &forged.to_string());
    assert!(env.ok("default", &["whoami"]).await.starts_with("alice "));
    let p3 = env.profile_json("default");
    assert_ne!(p3["access_token"], "dh1.forged.token");
    assert_ne!(refresh_token(&p3), refresh_token(&p2));
    assert!(p3["access_expires_at"].as_i64().unwrap() <= unix_now() + 2);

    // A stale copy presents a spent refresh token: the server revokes the whole device.
    env.write_profile("default", &p1.to_string());
    assert_eq!(
        env.fail("default", &["whoami"]).await,
        "error: your session has ended (refresh token was already used: this session is \
         revoked, log in again): run `chat login alice` again"
    );
    env.write_profile("default", &p3.to_string());
    assert_eq!(
        env.fail("default", &["whoami"]).await,
        "error: your session has ended (refresh token expired or revoked: log in again): \
         run `chat login alice` again"
    );

    assert!(
        env.ok("default", &["login", "alice", "--device", "laptop"])
            .await
            .starts_with("logged in as alice (user ")
    );
    env.ok("default", &["whoami"]).await;
    env.ok("default", &["whoami"]).await;

    // After logout the profile is gone; a restored copy is dead on the server.
    let backup = env.profile_text("default");
    assert_eq!(env.ok("default", &["logout"]).await, "logged out alice\n");
    assert!(
        env.fail("default", &["whoami"])
            .await
            .contains("not logged in (profile \"default\"): run `chat login USERNAME` first")
    );
    env.write_profile("default", &backup);
    assert_eq!(
        env.fail("default", &["whoami"]).await,
        "error: your session has ended (refresh token expired or revoked: log in again): \
         run `chat login alice` again"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_one_refresh() {
    // Every command refreshes first (2 s tokens); several at once on one profile must not
    // present a refresh token another one already spent: the server would revoke the device.
    let env = Env::with(|c| c.access_token_ttl = Duration::from_secs(2)).await;
    env.signup("default", "alice", "alice").await;
    let device = env.profile_json("default")["device_id"].clone();
    for round in 0..3 {
        let runs: Vec<_> = (0..4).map(|_| env.run("default", &["whoami"])).collect();
        for (code, out, err) in futures::future::join_all(runs).await {
            assert_eq!(code, 0, "round {round}: {out}{err}");
            assert!(out.starts_with("alice "), "{out}");
        }
    }
    env.ok("default", &["whoami"]).await;
    assert_eq!(env.profile_json("default")["device_id"], device);
    env.server.stop().await;
}

/// Reads lines until one contains `needle`; fails after [`WAIT`] with what was read.
async fn expect(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains(needle) => return line,
            Ok(Ok(Some(line))) => seen.push(line),
            other => panic!("no line with {needle:?}: {other:?}; read before: {seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_chat() {
    let env = Env::new().await;
    let a = env.signup("default", "alice", "alice").await;
    let b = env.signup("bob", "bob", "bob").await;
    let c = env.signup("carol", "carol", "carol").await;
    env.befriend(("default", "alice"), ("bob", "bob")).await;
    let dm_ab = dm(a, b);
    env.ok("bob", &["send", "@alice", "earlier"]).await;

    let mut child = env
        .cmd("default", &["chat", "@bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The header is printed once the server's `ready` arrived: the stream is live.
    let header = expect(&mut lines, "──").await;
    assert!(
        header.starts_with(&format!("── @bob ({dm_ab}) — ")),
        "{header}"
    );
    assert_message_line(&expect(&mut lines, "[1] ").await, 1, "bob", "earlier");

    // bob types (through the gRPC API: the CLI has no typing command), then sends.
    let token = env.profile_json("bob")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut typing = tonic::Request::new(NotifyTypingRequest {
        conversation_id: dm_ab.clone(),
    });
    typing
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let channel = Channel::from_shared(env.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChatServiceClient::new(channel)
        .notify_typing(typing)
        .await
        .expect("bob's typing notice");
    assert_eq!(expect(&mut lines, "typing").await, "· bob is typing…");

    env.ok("bob", &["send", "@alice", "live", "one"]).await;
    assert_message_line(&expect(&mut lines, "[2] ").await, 2, "bob", "live one");
    // What is shown is marked read (a `read` event on the stream).
    let (env_ref, dm_ref) = (&env, dm_ab.as_str());
    eventually("alice's read position to reach 2", move || async move {
        let list = env_ref.json_lines("default", &["conversations"]).await;
        let conv = list.iter().find(|x| x["conversation_id"] == dm_ref)?;
        (conv["read_seq"] == 2 && conv["unread_count"] == 0).then_some(())
    })
    .await;

    stdin.write_all(b"hi bob\n").await.unwrap();
    assert_message_line(&expect(&mut lines, "[3] ").await, 3, "alice", "hi bob");
    stdin.write_all(b"/quit\n").await.unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("chat leaves after /quit")
        .unwrap();
    assert!(status.success());
    let history = env.ok("bob", &["history", "@alice"]).await;
    assert_message_line(history.lines().nth(2).unwrap(), 3, "alice", "hi bob");

    // End of input leaves cleanly too, after the history.
    let (code, out, err) = env.run("default", &["chat", "@bob"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" alice: hi bob\n"), "{out}");

    // A line the server refuses (carol is no friend) is reported, and the session goes on.
    let mut child = env
        .cmd("default", &["chat", "@carol"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    expect(&mut lines, "(no messages yet)").await;
    stdin.write_all(b"hello carol\n").await.unwrap();
    assert_eq!(
        expect(&mut lines, "not sent").await,
        format!("! not sent: user {c} is not your friend: direct messages need a friendship")
    );
    stdin.write_all(b"/quit\n").await.unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("chat leaves after /quit")
        .unwrap();
    assert!(status.success());

    // A conversation I am not in.
    assert_eq!(
        env.fail("default", &["chat", &dm(b, c)]).await,
        "error: you are not a member of this conversation"
    );
    env.server.stop().await;
}
