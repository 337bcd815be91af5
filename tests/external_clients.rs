//! Clients that are not ours talk to the server: grpcurl through server reflection (no .proto
//! files), and a Python client generated from `proto/` with grpc_tools.
//!
//! Both tools live in `tools/.venv`, installed by `scripts/install-test-tools.sh` (which
//! `scripts/test.sh` runs first). A missing tool fails the test with that instruction.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use common::{TestServer, TestUser, text_of, unique_name, workspace_root};
use daehwa::v1;
use serde_json::{Value, json};

/// The longest any one external command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The Python scenario runs many calls and a stream; each of its waits is 10 s at most.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str = "run scripts/install-test-tools.sh (it installs tools/requirements.txt \
     into tools/.venv; scripts/test.sh runs it first)";

/// A tool of `tools/.venv/bin`, or a failed test saying how to install it.
fn venv_tool(name: &str) -> PathBuf {
    let path = workspace_root().join("tools/.venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// Proxy settings must not send loopback test traffic anywhere else.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "grpc_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "GRPC_PROXY",
    "ALL_PROXY",
];

/// Runs `command` to completion with a deadline; the child is killed if the test gives up.
async fn run(mut command: tokio::process::Command, timeout: Duration, what: &str) -> Output {
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}; {INSTALL_HINT}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// grpcurl against one server, with an optional bearer token.
struct Grpcurl {
    bin: PathBuf,
    addr: String,
}

impl Grpcurl {
    fn new(server: &TestServer) -> Self {
        Self {
            bin: venv_tool("grpcurl"),
            addr: server.addr.to_string(),
        }
    }

    /// `grpcurl -plaintext [ARGS...] ADDR [TAIL...]`.
    async fn raw(&self, args: &[&str], tail: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(["-plaintext", "-max-time", "10"])
            .args(args)
            .arg(&self.addr)
            .args(tail);
        run(
            command,
            COMMAND_TIMEOUT,
            &format!("grpcurl {args:?} {tail:?}"),
        )
        .await
    }

    /// Calls `method` with `body` as JSON; the parsed response, or grpcurl's output on failure.
    async fn call(&self, token: Option<&str>, method: &str, body: &Value) -> Result<Value, String> {
        let header = token.map(|t| format!("authorization: Bearer {t}"));
        let body = body.to_string();
        let mut args = vec!["-d", body.as_str()];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        let output = self.raw(&args, &[method]).await;
        if !output.status.success() {
            return Err(describe(&output));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("grpcurl {method} printed no JSON ({e}): {text}")))
    }

    async fn ok(&self, token: Option<&str>, method: &str, body: Value) -> Value {
        self.call(token, method, &body)
            .await
            .unwrap_or_else(|e| panic!("grpcurl {method} {body} failed: {e}"))
    }
}

/// A field of grpcurl's JSON, whichever spelling it uses (proto name or lowerCamelCase).
fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    let camel: String = name
        .split('_')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        })
        .collect();
    value
        .get(name)
        .or_else(|| value.get(&camel))
        .unwrap_or_else(|| panic!("no field {name} in {value}"))
}

/// A uint64 of grpcurl's JSON: printed as a string (proto3 JSON), tolerated as a number.
fn u64_of(value: &Value, name: &str) -> u64 {
    match field(value, name) {
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name} = {s:?} is not a u64")),
        Value::Number(n) => n.as_u64().expect("u64"),
        other => panic!("{name} = {other} is not a u64"),
    }
}

fn str_of<'a>(value: &'a Value, name: &str) -> &'a str {
    field(value, name)
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {value}"))
}

/// Signs up and logs in through grpcurl; returns a [`TestUser`] for checks with Rust clients.
async fn grpcurl_user(grpcurl: &Grpcurl, server: &TestServer, prefix: &str) -> TestUser {
    let username = unique_name(prefix);
    let password = "correct horse battery";
    let signed = grpcurl
        .ok(
            None,
            "chat.v1.AuthService/SignUp",
            json!({"username": username, "password": password, "display_name": prefix}),
        )
        .await;
    assert_eq!(str_of(field(&signed, "user"), "username"), username);
    let login = grpcurl
        .ok(
            None,
            "chat.v1.AuthService/Login",
            json!({"username": username, "password": password, "device_name": "grpcurl"}),
        )
        .await;
    let user_id = u64_of(&login, "user_id");
    assert_eq!(user_id, u64_of(field(&signed, "user"), "user_id"));
    TestUser {
        url: server.url(),
        username,
        password: password.to_owned(),
        user_id,
        device_id: u64_of(&login, "device_id"),
        access_token: str_of(&login, "access_token").to_owned(),
        refresh_token: str_of(&login, "refresh_token").to_owned(),
        channel: server.channel().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_all_services_and_completes_signup_login_send() {
    let server = TestServer::start().await;
    let grpcurl = Grpcurl::new(&server);

    // Reflection: grpcurl 1.8.6 asks grpc.reflection.v1alpha.
    let listed = grpcurl.raw(&[], &["list"]).await;
    assert!(
        listed.status.success(),
        "grpcurl list: {}",
        describe(&listed)
    );
    let services: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    for service in [
        "chat.v1.AuthService",
        "chat.v1.UserService",
        "chat.v1.GroupService",
        "chat.v1.ChatService",
        "chat.v1.PresenceService",
        "chat.v1.DiscoveryService",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "grpcurl list lacks {service}: {services:?}"
        );
    }

    let described = grpcurl.raw(&[], &["describe", "chat.v1.ChatService"]).await;
    assert!(
        described.status.success(),
        "grpcurl describe: {}",
        describe(&described)
    );
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains("chat.v1.ChatService is a service"),
        "describe output: {text}"
    );
    for rpc in [
        "rpc Connect ( stream .chat.v1.ClientEvent ) returns ( stream .chat.v1.ServerEvent )",
        "rpc SendMessage ( .chat.v1.SendMessageRequest ) returns ( .chat.v1.SendMessageResponse )",
        "rpc SyncMessages",
    ] {
        assert!(text.contains(rpc), "describe lacks {rpc:?}: {text}");
    }

    // Accounts and friendship, all through grpcurl.
    let alice = grpcurl_user(&grpcurl, &server, "gc_alice").await;
    let bob = grpcurl_user(&grpcurl, &server, "gc_bob").await;
    let asked = grpcurl
        .ok(
            Some(&alice.access_token),
            "chat.v1.UserService/AddFriend",
            json!({"user_id": bob.user_id.to_string()}),
        )
        .await;
    assert_eq!(
        str_of(field(&asked, "friendship"), "state"),
        "FRIENDSHIP_STATE_OUTGOING"
    );
    let accepted = grpcurl
        .ok(
            Some(&bob.access_token),
            "chat.v1.UserService/AddFriend",
            json!({"user_id": alice.user_id.to_string()}),
        )
        .await;
    assert_eq!(
        str_of(field(&accepted, "friendship"), "state"),
        "FRIENDSHIP_STATE_FRIENDS"
    );

    // No token: refused by the auth layer, and grpcurl says so.
    let conversation = alice.dm_with(&bob);
    let send_body = json!({
        "client_msg_id": "grpcurl-1",
        "conversation_id": conversation,
        "content": {"text": "hello from grpcurl"},
    });
    let refused = grpcurl
        .call(None, "chat.v1.ChatService/SendMessage", &send_body)
        .await
        .expect_err("SendMessage without a token must fail");
    assert!(
        refused.contains("Unauthenticated"),
        "expected Unauthenticated: {refused}"
    );

    let sent = grpcurl
        .ok(
            Some(&alice.access_token),
            "chat.v1.ChatService/SendMessage",
            send_body,
        )
        .await;
    let message = field(&sent, "message");
    assert_eq!(u64_of(message, "seq"), 1, "{sent}");
    assert_eq!(str_of(message, "conversation_id"), conversation);
    assert_eq!(u64_of(message, "sender_id"), alice.user_id);
    let message_id = u64_of(message, "message_id");

    // Stored: bob reads it back with the Rust client.
    let history = bob
        .chat()
        .get_history(v1::GetHistoryRequest {
            conversation_id: conversation.clone(),
            before_seq: 0,
            limit: 10,
        })
        .await
        .expect("GetHistory")
        .into_inner();
    assert_eq!(history.messages.len(), 1, "{:?}", history.messages);
    let stored = &history.messages[0];
    assert_eq!(stored.seq, 1);
    assert_eq!(stored.message_id, message_id);
    assert_eq!(stored.sender_id, alice.user_id);
    assert_eq!(stored.client_msg_id, "grpcurl-1");
    assert_eq!(text_of(stored), "hello from grpcurl");

    // And grpcurl reads the same history.
    let fetched = grpcurl
        .ok(
            Some(&bob.access_token),
            "chat.v1.ChatService/GetHistory",
            json!({"conversation_id": conversation}),
        )
        .await;
    let messages = field(&fetched, "messages").as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{fetched}");
    assert_eq!(u64_of(&messages[0], "message_id"), message_id);

    server.stop().await.unwrap();
}

/// The .proto files of `proto/chat/v1`, relative to `proto/`, sorted.
fn chat_protos(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root.join("proto/chat/v1"))
        .expect("read proto/chat/v1")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("chat/v1/{name}"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the 7 chat.v1 protos, found {files:?}"
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_proto_runs_a_scenario() {
    let root = workspace_root();
    let python = venv_tool("python");
    let out = tempfile::tempdir().expect("temp dir");

    // Stubs from the .proto files; google/protobuf/timestamp.proto comes from grpc_tools'
    // bundled includes.
    let mut protoc = tokio::process::Command::new(&python);
    protoc
        .current_dir(&root)
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args(chat_protos(&root))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let generated = run(protoc, COMMAND_TIMEOUT, "grpc_tools.protoc").await;
    assert!(
        generated.status.success(),
        "grpc_tools.protoc failed ({INSTALL_HINT} if grpc_tools is missing): {}",
        describe(&generated)
    );
    for stub in ["chat/v1/chat_pb2.py", "chat/v1/chat_pb2_grpc.py"] {
        assert!(
            out.path().join(stub).exists(),
            "protoc did not write {stub}"
        );
    }

    let server = TestServer::start().await;
    let mut scenario = tokio::process::Command::new(&python);
    scenario
        .current_dir(&root)
        .arg(root.join("tests/python/scenario.py"))
        .arg(server.addr.to_string())
        .env("PYTHONPATH", out.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let result = run(scenario, SCENARIO_TIMEOUT, "tests/python/scenario.py").await;
    assert!(
        result.status.success(),
        "tests/python/scenario.py failed: {}",
        describe(&result)
    );
    println!("{}", String::from_utf8_lossy(&result.stdout));
    server.stop().await.unwrap();
}
