//! The webhook provider against a real HTTP server started by each test.

use std::collections::VecDeque;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::routing::post;
use serde_json::{Value, json};

use super::*;

/// How the test server answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Waits until the test releases the server (or forever), then answers 200.
    Hold,
}

/// One request the test server received.
struct Hit {
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct ServerState {
    /// Replies in order; the last one repeats.
    script: Arc<Mutex<VecDeque<Reply>>>,
    hits: mpsc::UnboundedSender<Hit>,
    release: watch::Receiver<bool>,
}

struct TestServer {
    url: String,
    hits: mpsc::UnboundedReceiver<Hit>,
    release: watch::Sender<bool>,
}

impl TestServer {
    async fn start(script: &[Reply]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (hits_tx, hits) = mpsc::unbounded_channel();
        let (release, release_rx) = watch::channel(false);
        let state = ServerState {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            hits: hits_tx,
            release: release_rx,
        };
        let app = Router::new().route("/hook", post(handle)).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, hits, release }
    }

    async fn next_hit(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(5), self.hits.recv())
            .await
            .expect("no request reached the test server within 5 s")
            .unwrap()
    }

    /// Requests received so far and not yet taken.
    fn count_hits(&mut self) -> usize {
        std::iter::from_fn(|| self.hits.try_recv().ok()).count()
    }
}

async fn handle(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let reply = {
        let mut script = state.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script[0]
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = state.hits.send(Hit { content_type, body });
    match reply {
        Reply::Status(code) => axum::http::StatusCode::from_u16(code).unwrap(),
        Reply::Hold => {
            let _ = state.release.clone().wait_for(|r| *r).await;
            axum::http::StatusCode::OK
        }
    }
}

fn notification(user_id: u64) -> PushNotification {
    PushNotification {
        user_id,
        conversation_id: "dm:1:2".into(),
        message_id: 77,
        seq: 5,
        sender_id: 2,
        text: Some("hello".into()),
    }
}

fn fast_config(url: &str) -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(10),
        ..WebhookConfig::new(url)
    }
}

/// Polls `push.stats()` until `done` holds, failing after 5 s.
async fn wait_stats(push: &WebhookPush, done: impl Fn(WebhookStats) -> bool) -> WebhookStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = push.stats();
        if done(stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached; stats {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn posts_json_without_text_by_default() {
    let mut server = TestServer::start(&[Reply::Status(200)]).await;
    let push = WebhookPush::start(fast_config(&server.url)).unwrap();
    push.notify(notification(1)).await;
    let hit = server.next_hit().await;
    assert_eq!(hit.content_type.as_deref(), Some("application/json"));
    let expected = json!({"user_id": 1, "conversation_id": "dm:1:2", "message_id": 77, "seq": 5, "sender_id": 2});
    assert_eq!(hit.body, expected);
    wait_stats(&push, |s| s.sent == 1).await;
    push.close().await;
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 1,
            failed: 0,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn include_text_sends_the_text() {
    let mut server = TestServer::start(&[Reply::Status(204)]).await;
    let push = WebhookPush::start(WebhookConfig {
        include_text: true,
        ..fast_config(&server.url)
    })
    .unwrap();
    push.notify(notification(1)).await;
    let hit = server.next_hit().await;
    assert_eq!(hit.body["text"], "hello");
    assert_eq!(hit.body["user_id"], 1);
    wait_stats(&push, |s| s.sent == 1).await;
    push.close().await;
}

#[tokio::test]
async fn server_errors_and_429_are_retried_until_success() {
    let script = [Reply::Status(503), Reply::Status(503), Reply::Status(200)];
    let mut server = TestServer::start(&script).await;
    let push = WebhookPush::start(fast_config(&server.url)).unwrap();
    push.notify(notification(1)).await;
    wait_stats(&push, |s| s.sent == 1).await;
    push.close().await;
    assert_eq!(server.count_hits(), 3);
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 1,
            failed: 0,
            dropped: 0
        }
    );

    let mut server = TestServer::start(&[Reply::Status(429), Reply::Status(200)]).await;
    let push = WebhookPush::start(fast_config(&server.url)).unwrap();
    push.notify(notification(1)).await;
    wait_stats(&push, |s| s.sent == 1).await;
    push.close().await;
    assert_eq!(server.count_hits(), 2);
}

#[tokio::test]
async fn client_error_is_not_retried() {
    let mut server = TestServer::start(&[Reply::Status(400)]).await;
    let push = WebhookPush::start(fast_config(&server.url)).unwrap();
    push.notify(notification(1)).await;
    wait_stats(&push, |s| s.failed == 1).await;
    push.close().await;
    assert_eq!(server.count_hits(), 1);
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 0,
            failed: 1,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn unanswered_attempts_time_out_and_fail_after_max_attempts() {
    let mut server = TestServer::start(&[Reply::Hold]).await;
    let config = WebhookConfig {
        timeout: Duration::from_millis(100),
        max_attempts: 3,
        ..fast_config(&server.url)
    };
    let push = WebhookPush::start(config).unwrap();
    let started = Instant::now();
    push.notify(notification(1)).await;
    wait_stats(&push, |s| s.failed == 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "three attempts must each time out"
    );
    push.close().await;
    assert_eq!(server.count_hits(), 3);
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 0,
            failed: 1,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn connection_refused_is_retried_then_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let push = WebhookPush::start(WebhookConfig {
        max_attempts: 2,
        ..fast_config(&url)
    })
    .unwrap();
    push.notify(notification(1)).await;
    wait_stats(&push, |s| s.failed == 1).await;
    push.close().await;
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let mut server = TestServer::start(&[Reply::Hold]).await;
    let config = WebhookConfig {
        queue_capacity: 1,
        concurrency: 1,
        ..fast_config(&server.url)
    };
    let push = WebhookPush::start(config).unwrap();
    push.notify(notification(1)).await;
    // The only slot is busy, so the worker takes nothing more off the queue.
    server.next_hit().await;
    push.notify(notification(2)).await; // waits in the queue
    push.notify(notification(3)).await; // queue full
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 0,
            failed: 0,
            dropped: 1
        }
    );
    server.release.send_replace(true);
    wait_stats(&push, |s| s.sent == 2).await;
    push.close().await;
    assert_eq!(server.count_hits(), 1);
    push.notify(notification(4)).await; // closed
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 2,
            failed: 0,
            dropped: 2
        }
    );
}

#[tokio::test]
async fn close_delivers_what_is_queued() {
    let mut server = TestServer::start(&[Reply::Status(200)]).await;
    let push = WebhookPush::start(WebhookConfig {
        concurrency: 2,
        ..fast_config(&server.url)
    })
    .unwrap();
    for user in 0..20 {
        push.notify(notification(user)).await;
    }
    push.close().await;
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 20,
            failed: 0,
            dropped: 0
        }
    );
    assert_eq!(server.count_hits(), 20);
    push.close().await; // idempotent
}

#[tokio::test]
async fn close_is_bounded_and_counts_the_abandoned() {
    let mut server = TestServer::start(&[Reply::Hold]).await;
    let config = WebhookConfig {
        timeout: Duration::from_millis(100),
        max_attempts: 1000,
        concurrency: 1,
        ..fast_config(&server.url)
    };
    let push = WebhookPush::start(config).unwrap();
    push.notify(notification(1)).await;
    server.next_hit().await;
    push.notify(notification(2)).await;
    let started = Instant::now();
    push.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(
        push.stats(),
        WebhookStats {
            sent: 0,
            failed: 0,
            dropped: 2
        }
    );
}

#[tokio::test]
async fn start_rejects_bad_configs() {
    let https = WebhookPush::start(WebhookConfig::new("https://example.test/hook"))
        .err()
        .unwrap();
    assert!(https.contains("https") && https.contains("TLS"), "{https}");
    for url in ["ftp://example.test/", "not a url", "http://"] {
        assert!(
            WebhookPush::start(WebhookConfig::new(url)).is_err(),
            "{url}"
        );
    }
    let zero_queue = WebhookConfig {
        queue_capacity: 0,
        ..WebhookConfig::new("http://127.0.0.1:9/")
    };
    assert!(
        WebhookPush::start(zero_queue)
            .err()
            .unwrap()
            .contains("queue_capacity")
    );
    let zero_attempts = WebhookConfig {
        max_attempts: 0,
        ..WebhookConfig::new("http://127.0.0.1:9/")
    };
    assert!(WebhookPush::start(zero_attempts).is_err());
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    assert!(WebhookPush::start(WebhookConfig::new("http://127.0.0.1:9/")).is_err());
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    let initial = Duration::from_millis(200);
    for (failed, base_ms) in [
        (1, 200),
        (2, 400),
        (3, 800),
        (5, 3200),
        (6, 5000),
        (40, 5000),
    ] {
        let delay = backoff(initial, failed);
        let base = Duration::from_millis(base_ms);
        assert!(
            delay >= base && delay <= base + base / 10,
            "attempt {failed}: {delay:?}"
        );
    }
    let long = Duration::from_secs(8);
    assert!(backoff(long, 3) >= long && backoff(long, 3) <= long + long / 10);
}
