//! Push notifications delivered by HTTP POST to an operator's webhook.
//!
//! [`WebhookPush`] owns a bounded in-memory queue, an HTTP client and one background worker
//! task. [`Push::notify`] only puts the notification on the queue (`try_send`): when the queue
//! is full the notification is dropped, logged and counted; it never waits on the network. The
//! worker takes notifications off the queue as soon as one of its `concurrency` delivery slots
//! is free and posts each one on its own task.
//!
//! # Document
//!
//! Each notification is one `POST` to the configured URL with `Content-Type: application/json`
//! and a JSON object body:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `user_id` | integer | the recipient, who has no connected device |
//! | `conversation_id` | string | the conversation the message belongs to |
//! | `message_id` | integer | the stored message |
//! | `seq` | integer | the message's sequence number in its conversation |
//! | `sender_id` | integer | the author |
//! | `text` | string | the message text; present only when `include_text` is set |
//!
//! Without `include_text` the text is stripped even when the caller set it.
//!
//! # Retries and limits
//!
//! Each attempt is bounded by `timeout` (connect, request and response). A 2xx answer is
//! success; 5xx, 429, timeouts and connection errors are retried, up to `max_attempts` attempts
//! in all, after `initial_backoff` doubling each time up to [`MAX_BACKOFF`] (or
//! `initial_backoff` when larger), plus up to 10 % random jitter. Any other status (other 4xx,
//! and 3xx: redirects are not followed) fails at once. [`WebhookPush::stats`] counts sent,
//! failed and dropped notifications.
//!
//! [`Push::close`] stops accepting, then waits for the queue to drain and the posts in flight to
//! finish, for at most twice `timeout`. When that grace runs out, the posts in flight are
//! cancelled and they and whatever is still queued are counted as dropped.
//!
//! # TLS
//!
//! The HTTP client is built without TLS, so only `http://` URLs are accepted; an `https://`
//! URL is rejected by [`WebhookPush::start`]. Point the webhook at a local relay or enable a
//! TLS feature of `reqwest` to reach an HTTPS endpoint.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::push::{Push, PushNotification};

/// The longest wait between two attempts, unless `initial_backoff` is longer still.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long `close` waits for cancelled posts to stop before aborting the worker outright.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// Settings of a [`WebhookPush`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where notifications are posted; must be an `http://` URL (see the module doc on TLS).
    pub url: String,
    /// Whether the message text is sent; when false it is stripped from every notification.
    pub include_text: bool,
    /// Bound on one attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Attempts per notification, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; it doubles after each further failure.
    pub initial_backoff: Duration,
    /// Notifications that may wait in the queue; beyond that `notify` drops them.
    pub queue_capacity: usize,
    /// Posts in flight at once.
    pub concurrency: usize,
}

impl WebhookConfig {
    /// Defaults for `url`: no text, 5 s timeout, 4 attempts, 200 ms initial backoff,
    /// a queue of 10 000 and 8 posts in flight.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            include_text: false,
            timeout: Duration::from_secs(5),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            queue_capacity: 10_000,
            concurrency: 8,
        }
    }
}

/// Counts of notifications by outcome since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Answered with a 2xx.
    pub sent: u64,
    /// Given up: a non-retryable answer, or every attempt failed.
    pub failed: u64,
    /// Never posted to the end: queue full, provider closed, or cancelled at close.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A [`Push`] provider that posts notifications to an HTTP webhook.
pub struct WebhookPush {
    queue: Mutex<Option<mpsc::Sender<PushNotification>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    cancel: watch::Sender<bool>,
    counters: Arc<Counters>,
    include_text: bool,
    grace: Duration,
}

impl WebhookPush {
    /// Checks `config` and starts the background worker; must be called within a Tokio runtime.
    ///
    /// Fails on a URL that is not `http://` (including `https://`: TLS is not built in yet),
    /// on a zero timeout, attempt count, queue capacity or concurrency, or outside a runtime.
    pub fn start(config: WebhookConfig) -> Result<Self, String> {
        let url = Url::parse(&config.url)
            .map_err(|e| format!("webhook url {:?} is not a valid URL: {e}", config.url))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "webhook url {:?}: https is not supported yet (this build has no TLS); \
                     use an http:// URL, e.g. a local relay",
                    config.url
                ));
            }
            other => {
                return Err(format!(
                    "webhook url {:?}: scheme {other:?} is not http",
                    config.url
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("webhook url {:?} has no host", config.url));
        }
        for (name, zero) in [
            ("timeout", config.timeout.is_zero()),
            ("max_attempts", config.max_attempts == 0),
            ("queue_capacity", config.queue_capacity == 0),
            ("concurrency", config.concurrency == 0),
        ] {
            if zero {
                return Err(format!("webhook {name} must be greater than zero"));
            }
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "webhook push must be started within a Tokio runtime".to_string())?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("daehwa-chatd")
            .build()
            .map_err(|e| format!("webhook http client: {e}"))?;

        let counters = Arc::new(Counters::default());
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let (cancel, cancel_rx) = watch::channel(false);
        let poster = Arc::new(Poster {
            client,
            url,
            max_attempts: config.max_attempts,
            initial_backoff: config.initial_backoff,
            counters: Arc::clone(&counters),
        });
        let worker = runtime.spawn(run_worker(rx, poster, config.concurrency, cancel_rx));
        Ok(Self {
            queue: Mutex::new(Some(queue)),
            worker: Mutex::new(Some(worker)),
            cancel,
            counters,
            include_text: config.include_text,
            grace: config.timeout.saturating_mul(2),
        })
    }

    /// Current counts of sent, failed and dropped notifications.
    pub fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        WebhookStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Push for WebhookPush {
    async fn notify(&self, mut notification: PushNotification) {
        if !self.include_text {
            notification.text = None;
        }
        let user_id = notification.user_id;
        let result = match lock(&self.queue).as_ref() {
            Some(queue) => queue.try_send(notification).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "worker stopped",
            }),
            None => Err("provider closed"),
        };
        if let Err(reason) = result {
            Counters::add(&self.counters.dropped, 1);
            tracing::warn!(user_id, reason, "webhook push dropped");
        }
    }

    async fn close(&self) {
        // Dropping the sender lets the worker drain the queue and stop.
        drop(lock(&self.queue).take());
        let Some(mut worker) = lock(&self.worker).take() else {
            return;
        };
        if tokio::time::timeout(self.grace, &mut worker).await.is_ok() {
            return;
        }
        tracing::warn!(
            grace = %humantime::format_duration(self.grace),
            "webhook push: grace expired at close; cancelling undelivered notifications"
        );
        self.cancel.send_replace(true);
        if tokio::time::timeout(CANCEL_WAIT, &mut worker)
            .await
            .is_err()
        {
            worker.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves once `close` has cancelled delivery; never if the flag can no longer be set.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_worker(
    mut rx: mpsc::Receiver<PushNotification>,
    poster: Arc<Poster>,
    concurrency: usize,
    mut cancel: watch::Receiver<bool>,
) {
    let mut in_flight = JoinSet::new();
    loop {
        // Take a notification only once a slot is free, so waiting ones stay in the bounded queue.
        while in_flight.try_join_next().is_some() {}
        while in_flight.len() >= concurrency {
            in_flight.join_next().await;
        }
        let next = tokio::select! {
            biased;
            () = cancelled(&mut cancel) => None,
            next = rx.recv() => next,
        };
        let Some(notification) = next else { break };
        let poster = Arc::clone(&poster);
        let mut cancel = cancel.clone();
        in_flight.spawn(async move {
            tokio::select! {
                biased;
                () = cancelled(&mut cancel) => Counters::add(&poster.counters.dropped, 1),
                () = poster.deliver(&notification) => {}
            }
        });
    }
    // Non-empty only when cancelled: a closed sender makes `recv` return None once drained.
    rx.close();
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    Counters::add(&poster.counters.dropped, left);
    while in_flight.join_next().await.is_some() {}
}

/// What one delivery task needs.
struct Poster {
    client: reqwest::Client,
    url: Url,
    max_attempts: u32,
    initial_backoff: Duration,
    counters: Arc<Counters>,
}

impl Poster {
    /// Posts with retries and counts the outcome as sent or failed.
    async fn deliver(&self, notification: &PushNotification) {
        let user_id = notification.user_id;
        let body = match serde_json::to_vec(notification) {
            Ok(body) => body,
            Err(e) => {
                Counters::add(&self.counters.failed, 1);
                tracing::warn!(user_id, error = %e, "webhook push: cannot encode notification");
                return;
            }
        };
        for attempt in 1..=self.max_attempts {
            let result = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let (status, error, retry) = match result {
                Ok(response) => {
                    let status = response.status();
                    // Read the (small) answer so the connection can be reused; its content is ignored.
                    let _ = response.bytes().await;
                    if status.is_success() {
                        Counters::add(&self.counters.sent, 1);
                        return;
                    }
                    let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    (Some(status.as_u16()), None, retry)
                }
                // Timeouts, refused or reset connections: the request itself is well formed.
                Err(e) => (None, Some(e), true),
            };
            let error = error.as_ref().map(tracing::field::display);
            if !retry || attempt == self.max_attempts {
                Counters::add(&self.counters.failed, 1);
                tracing::warn!(
                    user_id,
                    status,
                    error,
                    attempt,
                    retry,
                    "webhook push failed; giving up"
                );
                return;
            }
            let delay = backoff(self.initial_backoff, attempt);
            tracing::debug!(
                user_id,
                status,
                error,
                attempt,
                ?delay,
                "webhook push attempt failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// The wait after `failed` failed attempts (1-based): doubling, capped, plus up to 10 % jitter.
fn backoff(initial: Duration, failed: u32) -> Duration {
    let cap = MAX_BACKOFF.max(initial);
    let factor = 2u32.saturating_pow(failed.saturating_sub(1));
    let base = initial.saturating_mul(factor).min(cap);
    let jitter_max = u64::try_from(base.as_nanos() / 10).unwrap_or(u64::MAX);
    base.saturating_add(Duration::from_nanos(rand::random_range(0..=jitter_max)))
}

#[cfg(test)]
mod tests;
