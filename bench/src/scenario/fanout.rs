//! (d) Group fan-out: a group of `--members` online members (each its own user, session and
//! connection, over `--transport`) and its owner; the owner sends `--messages` messages one after another, and
//! each is timed from the send to its delivery on the LAST member's stream.
//!
//! Against chatd the owner first becomes friends with every member (a request each way),
//! since members can only be added by a friend; the relay has no groups and simply
//! broadcasts `g:<n>` messages to every other connected user, which is the same delivery.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use daehwa::v1::{
    self, ClientEvent, ServerEvent, group_service_client::GroupServiceClient, send_result::Outcome,
    server_event::Event,
};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::json;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};

use super::Ctx;
use crate::{
    load::{self, Bearer, Clock, Identity, SeqLedger, send_event, stamp_of, stamped_text},
    progress,
    report::{Check, CpuWindow, Figure, Latency, Run},
    session::{self, Session, Transport},
    target::{Kind, Target},
};

/// Members added per CreateGroup / AddMembers call.
const CHUNK: usize = 1000;
/// How long one message may take to reach every member.
const PER_MESSAGE: Duration = Duration::from_secs(60);

/// Flags of `chat-bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Online group members besides the owner.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Messages sent one after another (each waits for its last delivery). Enough of them
    /// that the CPU figures are mostly deliveries, not the first message's one-off work.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Message text bytes (at least 16: the time stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How sessions connect: `grpc` (Connect streams) or `ws` (the gateway's `/v1/ws`).
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
}

impl Params {
    /// The parameters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"members": self.members, "messages": self.messages, "size": self.size})
    }
}

/// Creates the group on chatd and returns its conversation id; `g:1` on the relay.
async fn create_group(
    target: &Target,
    owner: &Identity,
    members: &[Identity],
) -> anyhow::Result<String> {
    if target.kind == Kind::Relay {
        return Ok("g:1".into());
    }
    let pairs: Vec<(&Identity, &Identity)> = members.iter().map(|m| (owner, m)).collect();
    load::befriend(target.kind, &target.url, &pairs).await?;
    let mut groups = GroupServiceClient::with_interceptor(
        load::channel(&target.url).await?,
        Bearer::new(owner)?,
    );
    let mut chunks = members.chunks(CHUNK);
    let first: Vec<u64> = chunks
        .next()
        .unwrap_or_default()
        .iter()
        .map(|m| m.user_id)
        .collect();
    let group = groups
        .create_group(v1::CreateGroupRequest {
            name: "bench fan-out".into(),
            member_ids: first,
        })
        .await
        .context("CreateGroup failed")?
        .into_inner()
        .group
        .context("CreateGroup answered without a group")?;
    for chunk in chunks {
        groups
            .add_members(v1::AddMembersRequest {
                group_id: group.group_id,
                user_ids: chunk.iter().map(|m| m.user_id).collect(),
            })
            .await
            .context("AddMembers failed")?;
    }
    Ok(group.conversation_id)
}

/// What one member saw.
struct MemberResult {
    ledger: SeqLedger,
    check: Check,
    delivered: u64,
    /// (seq, latency ns) of each delivery, for the per-message maximum.
    latencies: Vec<(u64, u64)>,
}

/// Every member's deliveries counted as they arrive, so the owner learns that a message
/// reached everyone with one wake-up per message, not a channel message per delivery (the
/// load generator shares the machine: its cost per delivery is in every figure).
#[derive(Default)]
struct Tally {
    /// Deliveries of the message in flight.
    delivered: AtomicU64,
    /// The time stamp of the message in flight: a late delivery of an earlier message (one
    /// that timed out) is not counted for it.
    in_flight: AtomicU64,
    /// Deliveries counted over the whole run (the CPU figures' denominator).
    total: AtomicU64,
    /// Notified when `delivered` reaches `everyone`.
    reached: Notify,
    everyone: u64,
}

impl Tally {
    fn new(everyone: u64) -> Self {
        Self {
            everyone,
            ..Self::default()
        }
    }

    /// Starts counting the deliveries of the message stamped `stamp`.
    fn expect(&self, stamp: u64) {
        self.delivered.store(0, Ordering::Release);
        self.in_flight.store(stamp, Ordering::Release);
    }

    /// Counts a delivery (already checked: right conversation, new seq) of the message
    /// stamped `stamp`.
    fn delivered(&self, stamp: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if stamp != self.in_flight.load(Ordering::Acquire) {
            return;
        }
        if self.delivered.fetch_add(1, Ordering::AcqRel) + 1 == self.everyone {
            self.reached.notify_one();
        }
    }
}

/// Reads a member's stream, recording each delivery, until told to stop.
fn spawn_member(
    session: Session,
    conversation: String,
    clock: Clock,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<MemberResult> {
    tokio::spawn(async move {
        let Session {
            tx: _keep_open,
            mut rx,
            ..
        } = session;
        let mut out = MemberResult {
            ledger: SeqLedger::default(),
            check: Check::default(),
            delivered: 0,
            latencies: Vec::new(),
        };
        loop {
            let next = tokio::select! {
                biased;
                next = rx.message() => next,
                _ = stop.changed() => break,
            };
            match next {
                Ok(Some(ServerEvent {
                    event: Some(Event::Message(m)),
                })) => {
                    let now = clock.now_ns();
                    out.delivered += 1;
                    if m.conversation_id != conversation || !out.ledger.record(m.seq) {
                        out.check.error(format!(
                            "unexpected message {} {}",
                            m.conversation_id, m.seq
                        ));
                        continue;
                    }
                    let Some(stamp) = stamp_of(&m) else {
                        out.check.error("message without a time stamp");
                        continue;
                    };
                    tally.delivered(stamp);
                    out.latencies.push((m.seq, now.saturating_sub(stamp)));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    out.check.error("member stream ended early");
                    break;
                }
                Err(status) => {
                    out.check.error(format!("member stream failed: {status}"));
                    break;
                }
            }
        }
        out
    })
}

/// Runs the fan-out scenario on `target`.
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    anyhow::ensure!(p.members >= 1, "--members must be at least 1");
    let dial = target.dial(p.transport)?;
    progress!(
        "fanout",
        target,
        "setting up an owner and {} members",
        p.members
    );
    let ids = load::provision(target.kind, &target.url, ctx.run, p.members + 1).await?;
    let (owner, members) = ids.split_first().context("no users")?;
    let conversation = create_group(target, owner, members).await?;
    progress!("fanout", target, "connecting {} members", p.members);
    let sessions: Vec<Session> = stream::iter(members)
        .map(|m| session::connect_session(&dial, m))
        .buffer_unordered(128)
        .try_collect()
        .await
        .context("connecting a member")?;
    let everyone = p.members as u64;
    let tally = Arc::new(Tally::new(everyone));
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            spawn_member(
                s,
                conversation.clone(),
                ctx.clock,
                tally.clone(),
                stop_rx.clone(),
            )
        })
        .collect();
    let mut owner_session = session::connect_session(&dial, owner)
        .await
        .context("connecting the owner")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut check = Check::default();
    let mut all = Latency::new();
    let mut last = Latency::new();
    let mut acks = Latency::new();
    let mut acked = Vec::new();
    // CPU over the messages only (set-up excluded; the pauses between messages are idle).
    let cpu = CpuWindow::start(target.pid());
    let window_start = Instant::now();
    for k in 0..p.messages {
        progress!("fanout", target, "message {}/{}", k + 1, p.messages);
        let sent_ns = ctx.clock.now_ns();
        // Every member's delivery of this message (known by its stamp) completes it.
        tally.expect(sent_ns);
        let event: ClientEvent = send_event(
            &conversation,
            format!("f-{k}"),
            stamped_text(sent_ns, p.size),
        );
        owner_session
            .tx
            .send(event)
            .await
            .context("owner stream closed")?;
        let deadline = Instant::now() + PER_MESSAGE;
        let mut seq = None;
        loop {
            if seq.is_some() && tally.delivered.load(Ordering::Acquire) >= everyone {
                break;
            }
            tokio::select! {
                next = owner_session.rx.message() => match next {
                    Ok(Some(ServerEvent { event: Some(Event::SendResult(r)) })) => match r.outcome {
                        Some(Outcome::Message(m)) => {
                            acks.record(ctx.clock.now_ns().saturating_sub(sent_ns));
                            acked.push(m.seq);
                            seq = Some(m.seq);
                        }
                        other => {
                            check.error(format!("message {k} refused: {other:?}"));
                            break;
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => anyhow::bail!("owner stream ended"),
                    Err(status) => anyhow::bail!("owner stream failed: {status}"),
                },
                () = tally.reached.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let got = tally.delivered.load(Ordering::Acquire);
                    check.error(format!("message {k}: {got} of {everyone} deliveries in {PER_MESSAGE:?}"));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let cpu_figures = cpu.figures(
        target.pid(),
        window_start.elapsed().as_secs_f64(),
        tally.total.load(Ordering::Acquire),
    );
    let _ = stop_tx.send(true);
    acked.sort_unstable();
    check.acked = acked.len() as u64;
    // The last delivery of each message: the largest latency any member saw for its seq.
    let mut slowest: HashMap<u64, u64> = HashMap::new();
    for reader in readers {
        match reader.await {
            Ok(r) => {
                let (lost, duplicated) = r.ledger.compare(&acked);
                check.lost += lost;
                check.duplicated += duplicated;
                check.delivered += r.delivered;
                check.absorb(r.check);
                for (seq, latency) in r.latencies {
                    all.record(latency);
                    let max = slowest.entry(seq).or_default();
                    *max = (*max).max(latency);
                }
            }
            Err(e) => check.error(format!("member task failed: {e}")),
        }
    }
    for seq in &acked {
        if let Some(latency) = slowest.get(seq) {
            last.record(*latency);
        }
    }
    let mut figures = Vec::new();
    if last.count() > 0 {
        figures.push(Figure::new(
            "last_delivery_median_ms",
            "last delivery ms (median msg)",
            last.quantile_ms(0.5),
        ));
        figures.push(Figure::new(
            "last_delivery_max_ms",
            "last delivery ms (worst msg)",
            last.max_ms(),
        ));
        figures.push(Figure::new(
            "ack_median_ms",
            "owner's ack ms (median)",
            acks.quantile_ms(0.5),
        ));
    }
    figures.extend(all.figures("delivery", "any delivery"));
    figures.extend(cpu_figures);
    Ok(Run {
        figures,
        check,
        notes: Vec::new(),
    })
}
