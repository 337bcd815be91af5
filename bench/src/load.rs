//! Users, sessions and senders: what every scenario drives the servers with.
//!
//! - [`provision`]: signs users up and logs each in once (argon2 makes both deliberately
//!   slow, so with bounded concurrency); against the relay, user ids are simply 1..=n.
//! - [`befriend`]: the friendship direct messages and group invitations need.
//! - [`crate::session`]: one live session (gRPC or WebSocket) on its own connection.
//! - [`Clock`] and [`stamped_text`]: the send time travels inside the message text, so the
//!   recipient computes the end-to-end latency without any shared map.
//! - [`SeqLedger`]: what one recipient got of one conversation, for the exactly-once check.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use daehwa::v1::{
    self, ClientEvent, Content, auth_service_client::AuthServiceClient,
    chat_service_client::ChatServiceClient, content::Kind as ContentKind,
    user_service_client::UserServiceClient,
};
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::target::Kind;

/// Every bench user's password.
pub const PASSWORD: &str = "bench-password-1";
/// Concurrent sign-ups and logins (chatd hashes at most 4 passwords at once anyway).
pub const LOGIN_CONCURRENCY: usize = 4;
/// Concurrent cheap set-up calls (friend requests).
pub const SETUP_CONCURRENCY: usize = 32;

/// A logged-in user: one device whose token opens any number of streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The user id.
    pub user_id: u64,
    /// The access token (against the relay: the user id itself).
    pub token: String,
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(Arc<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor for `identity`.
    pub fn new(identity: &Identity) -> anyhow::Result<Self> {
        let value = MetadataValue::try_from(format!("Bearer {}", identity.token))
            .context("token is not a valid header value")?;
        Ok(Self(Arc::new(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", (*self.0).clone());
        Ok(request)
    }
}

/// A channel whose requests carry a token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A connected channel: one HTTP/2 connection (TCP_NODELAY, 30 s connect timeout).
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .context("bad server URL")?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The chat client of `identity` on `channel`.
pub fn chat_client(
    channel: Channel,
    identity: &Identity,
) -> anyhow::Result<ChatServiceClient<Authed>> {
    Ok(ChatServiceClient::with_interceptor(
        channel,
        Bearer::new(identity)?,
    ))
}

/// A username unique to this run.
pub fn username(run: u32, i: usize) -> String {
    format!("b{run:08x}_{i}")
}

/// `n` logged-in users: against chatd, signed up and logged in (4 at a time); against the
/// relay, ids 1..=n.
pub async fn provision(kind: Kind, url: &str, run: u32, n: usize) -> anyhow::Result<Vec<Identity>> {
    if kind == Kind::Relay {
        return Ok((1..=n as u64)
            .map(|id| Identity {
                user_id: id,
                token: id.to_string(),
            })
            .collect());
    }
    let channel = channel(url).await?;
    let started = Instant::now();
    let identities: Vec<Identity> = stream::iter(0..n)
        .map(|i| sign_up_and_log_in(channel.clone(), username(run, i)))
        .buffered(LOGIN_CONCURRENCY)
        .inspect_ok({
            let mut done = 0usize;
            move |_| {
                done += 1;
                if done % 250 == 0 {
                    eprintln!("  signed up {done}/{n} users");
                }
            }
        })
        .try_collect()
        .await?;
    eprintln!(
        "  signed up and logged in {n} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(identities)
}

async fn sign_up_and_log_in(channel: Channel, username: String) -> anyhow::Result<Identity> {
    let mut auth = AuthServiceClient::new(channel);
    auth.sign_up(v1::SignUpRequest {
        username: username.clone(),
        password: PASSWORD.into(),
        display_name: username.clone(),
    })
    .await
    .with_context(|| format!("signing up {username}"))?;
    let login = auth
        .login(v1::LoginRequest {
            username: username.clone(),
            password: PASSWORD.into(),
            device_name: "chat-bench".into(),
        })
        .await
        .with_context(|| format!("logging in {username}"))?
        .into_inner();
    Ok(Identity {
        user_id: login.user_id,
        token: login.access_token,
    })
}

/// Makes each pair friends (request, then accept), `SETUP_CONCURRENCY` pairs at a time.
/// Nothing to do against the relay.
pub async fn befriend(
    kind: Kind,
    url: &str,
    pairs: &[(&Identity, &Identity)],
) -> anyhow::Result<()> {
    if kind == Kind::Relay {
        return Ok(());
    }
    let channel = channel(url).await?;
    stream::iter(pairs)
        .map(|(a, b)| {
            let channel = channel.clone();
            async move {
                for (from, to) in [(a, b), (b, a)] {
                    UserServiceClient::with_interceptor(channel.clone(), Bearer::new(from)?)
                        .add_friend(v1::AddFriendRequest {
                            user_id: to.user_id,
                        })
                        .await
                        .with_context(|| {
                            format!("friend request {} -> {}", from.user_id, to.user_id)
                        })?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Nanoseconds since a base instant shared by every task of this process.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            base: std::time::Instant::now(),
        }
    }

    /// Nanoseconds since the base.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Width of the time stamp at the start of every message text.
const STAMP_DIGITS: usize = 16;

/// Text content of `size` bytes (at least 16) that starts with the stamp `ns`.
pub fn stamped_text(ns: u64, size: usize) -> Content {
    let mut text = format!("{ns:0width$x}", width = STAMP_DIGITS);
    text.extend(std::iter::repeat_n('x', size.saturating_sub(STAMP_DIGITS)));
    Content {
        kind: Some(ContentKind::Text(text)),
    }
}

/// The stamp at the start of a message's text, if it has one.
pub fn stamp_of(message: &v1::Message) -> Option<u64> {
    match message.content.as_ref()?.kind.as_ref()? {
        ContentKind::Text(text) => u64::from_str_radix(text.get(..STAMP_DIGITS)?, 16).ok(),
        _ => None,
    }
}

/// How a scenario makes each send's `client_msg_id`: the `--client-ids` of `pairs` and
/// `latency`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientIds {
    /// Time-ordered UUIDs (version 7), as Daehwa's clients send them.
    #[default]
    Ordered,
    /// Random UUIDs (version 4), as many other clients send them: each lands on its own page
    /// of the store's retry index.
    Random,
}

impl ClientIds {
    /// A fresh id of this kind.
    pub fn next(self) -> String {
        match self {
            ClientIds::Ordered => daehwa::client_msg_id::time_ordered(),
            ClientIds::Random => daehwa::client_msg_id::random(),
        }
    }

    /// Its name in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ClientIds::Ordered => "ordered",
            ClientIds::Random => "random",
        }
    }
}

/// A `send` client event.
pub fn send_event(conversation: &str, client_msg_id: String, content: Content) -> ClientEvent {
    ClientEvent {
        event: Some(v1::client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id,
            conversation_id: conversation.to_owned(),
            content: Some(content),
        })),
    }
}

/// Highest seq a ledger accepts; beyond it a seq is treated as garbage, not as an index.
const MAX_SEQ: u64 = 100_000_000;

/// How many times one recipient received each seq of one conversation.
#[derive(Debug, Default, Clone)]
pub struct SeqLedger {
    counts: Vec<u8>,
    distinct: u64,
}

impl SeqLedger {
    /// Notes one delivery; `false` if the seq is implausible (0 or huge).
    pub fn record(&mut self, seq: u64) -> bool {
        if seq == 0 || seq > MAX_SEQ {
            return false;
        }
        let i = seq as usize;
        if self.counts.len() <= i {
            self.counts.resize((i + 1).max(self.counts.len() * 2), 0);
        }
        if self.counts[i] == 0 {
            self.distinct += 1;
        }
        self.counts[i] = self.counts[i].saturating_add(1);
        true
    }

    /// Whether `seq` was received at least once.
    pub fn has(&self, seq: u64) -> bool {
        self.counts.get(seq as usize).is_some_and(|c| *c > 0)
    }

    /// (lost, duplicated): acknowledged seqs never received, and extra copies of any seq.
    pub fn compare(&self, acked: &[u64]) -> (u64, u64) {
        let lost = acked.iter().filter(|s| !self.has(**s)).count() as u64;
        let duplicated = self
            .counts
            .iter()
            .map(|c| u64::from(c.saturating_sub(1)))
            .sum();
        (lost, duplicated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_the_text() {
        let content = stamped_text(0x1234_5678_9abc, 64);
        let message = v1::Message {
            content: Some(content.clone()),
            ..Default::default()
        };
        assert_eq!(stamp_of(&message), Some(0x1234_5678_9abc));
        match content.kind {
            Some(ContentKind::Text(t)) => assert_eq!(t.len(), 64),
            _ => panic!("text expected"),
        }
        let short = v1::Message {
            content: Some(Content {
                kind: Some(ContentKind::Text("hello".into())),
            }),
            ..Default::default()
        };
        assert_eq!(stamp_of(&short), None);
    }

    #[test]
    fn ledger_finds_loss_and_duplicates() {
        let mut ledger = SeqLedger::default();
        for seq in [1, 2, 2, 4, 4, 4] {
            assert!(ledger.record(seq));
        }
        assert!(!ledger.record(0));
        assert!(!ledger.record(u64::MAX));
        assert_eq!(ledger.distinct, 3);
        assert_eq!(ledger.compare(&[1, 2, 3, 4]), (1, 3));
    }
}
