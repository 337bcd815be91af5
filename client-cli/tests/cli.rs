//! End-to-end tests of the `chat` binary against an in-memory mock of the chat.v1 API
//! (`tests/mock`): accounts and profiles, token refresh, friends, groups, messages and the
//! interactive mode.

mod mock;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use mock::Mock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const PASSWORD: &str = "correct horse";

struct Env {
    mock: Mock,
    url: String,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let mock = Mock::new();
        let url = mock.start().await;
        Env {
            mock,
            url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, profile: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
        cmd.args(args)
            .env("DAEHWA_CONFIG_DIR", self.dir.path())
            .env("DAEHWA_SERVER", &self.url)
            .env("DAEHWA_PROFILE", profile)
            .env("DAEHWA_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, profile: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(profile, args).output().await.unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (
            out.status.code().unwrap_or(-1),
            text(out.stdout),
            text(out.stderr),
        )
    }

    async fn ok(&self, profile: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(profile, args).await;
        assert_eq!(code, 0, "chat {args:?} failed: {err}{out}");
        out
    }

    async fn fail(&self, profile: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(profile, args).await;
        assert_eq!(code, 1, "chat {args:?} should fail: {out}");
        err
    }

    fn profile_json(&self, profile: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("{profile}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// alice (profile "default") and bob (profile "bob"), friends.
    async fn alice_and_bob(&self) {
        self.ok("default", &["signup", "alice", "--display-name", "Alice"])
            .await;
        self.ok("bob", &["signup", "bob"]).await;
        self.ok("default", &["friends", "add", "bob"]).await;
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_friends_groups_and_messages() {
    let env = Env::new().await;
    env.alice_and_bob().await;

    let me: serde_json::Value =
        serde_json::from_str(&env.ok("default", &["--json", "whoami"]).await).unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["user_id"], 1);
    let mode = std::fs::metadata(env.dir.path().join("default.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(env.profile_json("bob")["username"], "bob");

    assert!(env.ok("default", &["friends"]).await.contains("bob (BOB)"));
    let sent = env.ok("default", &["send", "@bob", "hello", "there"]).await;
    assert_eq!(sent.trim(), "sent: seq 1 in dm:1:2");

    let history = env.ok("bob", &["history", "@alice"]).await;
    let line = history.trim();
    assert!(
        line.starts_with("[1] ") && line.ends_with(" alice: hello there"),
        "{line}"
    );
    assert!(is_clock(&line[4..12]), "{line}");

    let conversations = env.ok("bob", &["conversations"]).await;
    assert!(
        conversations.contains("dm:1:2  @alice  (1 unread)"),
        "{conversations}"
    );
    let conv: serde_json::Value =
        serde_json::from_str(env.ok("bob", &["--json", "conversations"]).await.trim()).unwrap();
    assert_eq!(conv["unread_count"], 1);
    assert_eq!(conv["last_message"]["sender"], "alice");

    let presence = env.ok("default", &["presence"]).await;
    assert!(
        presence.starts_with("bob") && presence.contains("online"),
        "{presence}"
    );

    let created = env
        .ok("default", &["groups", "create", "team", "bob"])
        .await;
    assert!(
        created.contains("#1 team — 2 members: alice (owner), bob  [g:1]"),
        "{created}"
    );
    assert_eq!(
        env.ok("bob", &["send", "#1", "hi", "team"]).await.trim(),
        "sent: seq 1 in g:1"
    );
    let json = env.ok("default", &["--json", "history", "g:1"]).await;
    let msg: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (
            msg["text"].as_str(),
            msg["sender"].as_str(),
            msg["seq"].as_u64()
        ),
        (Some("hi team"), Some("bob"), Some(1))
    );
    let groups: serde_json::Value =
        serde_json::from_str(env.ok("bob", &["--json", "groups"]).await.trim()).unwrap();
    assert_eq!(groups["members"], serde_json::json!(["alice", "bob"]));
    env.ok("bob", &["groups", "leave", "1"]).await;
    assert!(
        env.fail("bob", &["send", "g:1", "still here?"])
            .await
            .contains("error: you are not in this conversation")
    );

    assert_eq!(
        env.fail("default", &["send", "@nobody", "hi"]).await.trim(),
        "error: no user named nobody"
    );
    assert!(
        env.fail("default", &["send", "bob", "hi"])
            .await
            .starts_with("error: invalid target")
    );
    assert!(
        env.fail("bob", &["signup", "alice"])
            .await
            .contains("error: that username is taken")
    );

    env.ok("default", &["friends", "remove", "bob"]).await;
    assert!(
        env.ok("default", &["presence"])
            .await
            .contains("no friends yet")
    );

    env.ok("default", &["logout"]).await;
    assert!(!env.dir.path().join("default.json").exists());
    let err = env.fail("default", &["whoami"]).await;
    assert!(
        err.contains("not logged in") && err.contains("chat login USERNAME"),
        "{err}"
    );
    env.ok("bob", &["whoami"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed() {
    let env = Env::new().await;
    env.mock.lock().access_ttl = 10; // always inside the 30 s margin
    env.ok("default", &["signup", "alice"]).await;
    let before = env.mock.lock().refreshes;
    env.ok("default", &["whoami"]).await;
    assert!(
        env.mock.lock().refreshes > before,
        "a token about to expire is refreshed first"
    );
    env.ok("default", &["whoami"]).await; // the saved pair works

    env.mock.lock().access_ttl = 3600;
    env.ok("default", &["whoami"]).await;
    // The server forgets every access token: UNAUTHENTICATED, refresh, retry.
    env.mock.lock().access.clear();
    let before = env.mock.lock().refreshes;
    env.ok("default", &["whoami"]).await;
    assert_eq!(env.mock.lock().refreshes, before + 1);
    let saved = env.profile_json("default");
    assert!(
        env.mock
            .lock()
            .access
            .contains_key(saved["access_token"].as_str().unwrap())
    );

    // Both tokens gone: the user is told to log in again.
    {
        let mut st = env.mock.lock();
        st.access.clear();
        st.refresh.clear();
    }
    let err = env.fail("default", &["whoami"]).await;
    assert!(err.contains("run `chat login alice` again"), "{err}");
    assert!(
        env.ok("default", &["login", "alice", "--device", "laptop"])
            .await
            .starts_with("logged in as alice")
    );
    env.ok("default", &["whoami"]).await;
}

async fn expect(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line.contains(needle) => return line,
            Ok(Ok(Some(_))) => {}
            other => panic!("no line with {needle:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_chat() {
    let env = Env::new().await;
    env.alice_and_bob().await;
    env.ok("bob", &["send", "@alice", "earlier"]).await;

    let mut child = env
        .cmd("default", &["chat", "@bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    expect(&mut lines, "── @bob (dm:1:2)").await;
    assert!(expect(&mut lines, "[1] ").await.ends_with(" bob: earlier"));

    env.ok("bob", &["send", "@alice", "live", "one"]).await;
    assert_eq!(expect(&mut lines, "·").await, "· bob is typing…");
    assert!(expect(&mut lines, "[2] ").await.ends_with(" bob: live one"));

    stdin.write_all(b"hi bob\n").await.unwrap();
    assert!(expect(&mut lines, "[3] ").await.ends_with(" alice: hi bob"));
    stdin.write_all(b"/quit\n").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    assert_eq!(
        env.mock.lock().reads.get(&("dm:1:2".to_string(), 1)),
        Some(&2)
    );
    assert!(
        env.ok("bob", &["history", "@alice"])
            .await
            .contains("alice: hi bob")
    );

    // End of input leaves cleanly too.
    let out = env.cmd("default", &["chat", "@bob"]).output();
    let out = tokio::time::timeout(Duration::from_secs(5), out)
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice: hi bob"));

    // A conversation I am not in.
    let err = env.fail("default", &["chat", "dm:2:3"]).await;
    assert!(
        err.contains("error: you are not in this conversation"),
        "{err}"
    );
}
