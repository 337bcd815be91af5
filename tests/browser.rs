//! The web client in real headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from tools/node_modules): two people sign up, befriend, chat 1:1 and in a group, see
//! presence go offline when one closes the page, and reload to see the full history. The page's
//! generated gRPC-web client also calls a unary and a server-streaming RPC through the gateway.
//!
//! The scenario is `tests/browser/chat.spec.mjs`; this test starts a server, finds the
//! gateway's base URL through Discovery and runs the script with node. Missing tools fail the
//! test (never skip it): run `scripts/install-test-tools.sh`.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::{TestServer, workspace_root};
use daehwa::v1;

/// The whole browser scenario must finish within this.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);
const CHROMIUM: &str = "/usr/bin/chromium";

fn require_tools(root: &Path) {
    let hint = "run scripts/install-test-tools.sh (it installs Debian's chromium and \
                playwright-core into tools/node_modules)";
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "node is not installed or does not run ({node:?}); Node.js 20+ is needed: {hint}"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {hint}"
    );
    let playwright = root.join("tools/node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: {hint}",
        playwright.display()
    );
}

/// `http://HOST:PORT` of the gateway, from Discovery's WebSocket URL `ws://HOST:PORT/v1/ws`.
async fn gateway_base_url(server: &TestServer) -> String {
    let probe = server.user("probe").await;
    let found = probe
        .discovery()
        .get_chat_server(v1::GetChatServerRequest {})
        .await
        .expect("GetChatServer")
        .into_inner();
    let base = found
        .websocket_url
        .strip_prefix("ws://")
        .and_then(|rest| rest.strip_suffix("/v1/ws"))
        .unwrap_or_else(|| panic!("unexpected websocket_url {:?}", found.websocket_url));
    format!("http://{base}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_chromium() {
    let root = workspace_root();
    require_tools(&root);
    // Short presence timers so "offline" shows within seconds of a page closing, and access
    // tokens short enough that the pages must refresh them during the scenario.
    let server = TestServer::start_with(|config| {
        config.heartbeat_interval = Duration::from_secs(1);
        config.offline_after = Duration::from_secs(3);
        config.access_token_ttl = Duration::from_secs(12);
    })
    .await;
    let base = gateway_base_url(&server).await;

    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/chat.spec.mjs"))
        .arg(&base)
        .current_dir(&root)
        .env("CHROMIUM_PATH", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await;
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let (out, err) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    match status {
        Ok(Ok(status)) if status.success() => println!("{out}"),
        Ok(Ok(status)) => panic!(
            "browser scenario failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        ),
        Ok(Err(e)) => panic!("waiting for node failed: {e}"),
        Err(_) => panic!(
            "browser scenario did not finish within {SCENARIO_TIMEOUT:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        ),
    }
    server.stop().await.expect("server stops cleanly");
}
