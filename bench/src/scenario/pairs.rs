//! (a) 1:1 pairs, as fast as possible: each sender keeps `--in-flight` sends outstanding on
//! its Connect stream (closed loop: a `send_result` frees a slot) for `--seconds`; the
//! recipient measures each message's latency from the stamp in its text (the moment the
//! send was queued) to its delivery. Figures: delivered msg/s and the latency percentiles.
//!
//! The pair machinery here (set-up, recipients, the final exactly-once check) is shared by
//! the open-loop [`super::latency`] scenario. Sessions go over `--transport` (gRPC or
//! WebSocket); nothing else depends on it.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use daehwa::v1::{ClientEvent, ServerEvent, send_result::Outcome, server_event::Event};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::Ctx;
use crate::{
    load::{self, ClientIds, Clock, Identity, SeqLedger, send_event, stamp_of, stamped_text},
    progress,
    report::{Check, CpuWindow, Figure, Latency, Run},
    server_metrics::MetricsWindow,
    session::{self, Inbound, Session, Transport},
    target::Target,
};

/// How long recipients wait for the next message once sending is over.
pub const DRAIN: Duration = Duration::from_secs(15);
/// How long a sender waits for its outstanding results once sending is over.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `chat-bench pairs`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Sender/recipient pairs (each user one stream on its own connection).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// How long the senders send.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Message text bytes (at least 16: the time stamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How sessions connect: `grpc` (Connect streams) or `ws` (the gateway's `/v1/ws`).
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
    /// The senders' `client_msg_id`s: `ordered` (UUID v7, what Daehwa's clients send) or
    /// `random` (UUID v4).
    #[arg(long, value_enum, default_value_t = ClientIds::Ordered)]
    pub client_ids: ClientIds,
}

impl Params {
    /// The parameters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"pairs": self.pairs, "in_flight": self.in_flight, "seconds": self.seconds, "size": self.size, "client_ids": self.client_ids.name()})
    }
}

/// A sender's stream and its recipient's, in their direct conversation.
pub struct Pair {
    /// `dm:<lo>:<hi>`.
    pub conversation: String,
    /// The sending user's stream.
    pub sender: Session,
    /// The receiving user's stream.
    pub recipient: Session,
}

/// Signs up `2n` users, befriends them in pairs and opens one session per user over
/// `transport`.
pub async fn set_up(
    target: &Target,
    ctx: &Ctx,
    scenario: &str,
    n: usize,
    transport: Transport,
) -> anyhow::Result<Vec<Pair>> {
    let dial = target.dial(transport)?;
    progress!(scenario, target, "setting up {n} pairs");
    let ids = load::provision(target.kind, &target.url, ctx.run, 2 * n).await?;
    let pairs: Vec<(&Identity, &Identity)> = ids.chunks_exact(2).map(|c| (&c[0], &c[1])).collect();
    load::befriend(target.kind, &target.url, &pairs).await?;
    progress!(scenario, target, "opening {} {transport} sessions", 2 * n);
    let dial = &dial;
    stream::iter(pairs)
        .map(|(a, b)| async move {
            let sender = session::connect_session(dial, a)
                .await
                .context("opening a sender's stream")?;
            let recipient = session::connect_session(dial, b)
                .await
                .context("opening a recipient's stream")?;
            anyhow::Ok(Pair {
                conversation: daehwa::dm_conversation_id(a.user_id, b.user_id),
                sender,
                recipient,
            })
        })
        .buffered(32)
        .try_collect()
        .await
}

/// What one sender did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Seqs of its acknowledged messages.
    pub acked: Vec<u64>,
    /// Sends queued on its stream.
    pub sent: u64,
    /// Refusals and stream failures.
    pub check: Check,
}

/// What one recipient saw.
#[derive(Default)]
pub struct Received {
    ledger: SeqLedger,
    latency: Latency,
    check: Check,
    delivered: u64,
    last_ns: u64,
}

/// A running recipient: hand it the acknowledged seqs, then join it.
pub struct Recipient {
    acked: oneshot::Sender<Vec<u64>>,
    task: JoinHandle<Received>,
}

/// Reads a recipient's stream (keeping its sending half open, which the relay needs) until
/// every acknowledged seq it is later handed has arrived, or nothing came for [`DRAIN`]
/// after that.
pub fn spawn_recipient(session: Session, conversation: String, clock: Clock) -> Recipient {
    let (acked, acked_rx) = oneshot::channel();
    let task = tokio::spawn(receive(
        session.rx,
        session.tx,
        conversation,
        clock,
        acked_rx,
    ));
    Recipient { acked, task }
}

async fn receive(
    mut rx: Inbound,
    _keep_open: mpsc::Sender<ClientEvent>,
    conversation: String,
    clock: Clock,
    mut acked_rx: oneshot::Receiver<Vec<u64>>,
) -> Received {
    let mut out = Received::default();
    let mut acked: Option<(Vec<u64>, usize)> = None;
    let mut deadline = Instant::now() + Duration::from_secs(365 * 86_400);
    loop {
        if let Some((list, seen)) = &mut acked {
            while *seen < list.len() && out.ledger.has(list[*seen]) {
                *seen += 1;
            }
            if *seen == list.len() {
                break;
            }
        }
        let next = tokio::select! {
            next = rx.message() => next,
            list = &mut acked_rx, if acked.is_none() => {
                acked = Some((list.unwrap_or_default(), 0));
                deadline = Instant::now() + DRAIN;
                continue;
            }
            () = tokio::time::sleep_until(deadline) => break,
        };
        match next {
            Ok(Some(ServerEvent {
                event: Some(Event::Message(m)),
            })) => {
                let now = clock.now_ns();
                if acked.is_some() {
                    // Still draining: wait as long as messages keep coming.
                    deadline = Instant::now() + DRAIN;
                }
                out.delivered += 1;
                out.last_ns = out.last_ns.max(now);
                if m.conversation_id != conversation {
                    out.check.error(format!(
                        "message of {} on the wrong stream",
                        m.conversation_id
                    ));
                } else if !out.ledger.record(m.seq) {
                    out.check.error(format!("implausible seq {}", m.seq));
                }
                match stamp_of(&m) {
                    Some(stamp) => out.latency.record(now.saturating_sub(stamp)),
                    None => out.check.error("message without a time stamp"),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                out.check.error("recipient stream ended early");
                break;
            }
            Err(status) => {
                out.check
                    .error(format!("recipient stream failed: {status}"));
                break;
            }
        }
    }
    out
}

/// Totals over all pairs.
pub struct Totals {
    /// The exactly-once check and errors of senders and recipients.
    pub check: Check,
    /// Every delivery's latency.
    pub latency: Latency,
    /// When the last delivery arrived (clock ns).
    pub last_ns: u64,
}

/// Hands each recipient its sender's acknowledged seqs, joins it and checks exactly-once.
pub async fn settle(sent: Vec<Sent>, recipients: Vec<Recipient>) -> Totals {
    let mut totals = Totals {
        check: Check::default(),
        latency: Latency::new(),
        last_ns: 0,
    };
    let mut pending = Vec::with_capacity(recipients.len());
    for (mut s, r) in sent.into_iter().zip(recipients) {
        s.acked.sort_unstable();
        let _ = r.acked.send(s.acked.clone());
        pending.push((s, r.task));
    }
    for (s, task) in pending {
        totals.check.acked += s.acked.len() as u64;
        totals.check.absorb(s.check);
        match task.await {
            Ok(r) => {
                let (lost, duplicated) = r.ledger.compare(&s.acked);
                totals.check.lost += lost;
                totals.check.duplicated += duplicated;
                totals.check.delivered += r.delivered;
                totals.check.absorb(r.check);
                totals.latency.merge(&r.latency);
                totals.last_ns = totals.last_ns.max(r.last_ns);
            }
            Err(e) => totals.check.error(format!("recipient task failed: {e}")),
        }
    }
    totals
}

/// Runs the closed-loop pairs scenario on `target`.
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    let pairs = set_up(target, ctx, "pairs", p.pairs, p.transport).await?;
    progress!(
        "pairs",
        target,
        "sending for {} s, {} in flight per sender",
        p.seconds,
        p.in_flight
    );
    let cpu = CpuWindow::start(target.pid());
    let server = MetricsWindow::start(target.metrics).await;
    let start_ns = ctx.clock.now_ns();
    let stop_at = Instant::now() + Duration::from_secs_f64(p.seconds);
    let mut senders = Vec::with_capacity(pairs.len());
    let mut recipients = Vec::with_capacity(pairs.len());
    for pair in pairs {
        recipients.push(spawn_recipient(
            pair.recipient,
            pair.conversation.clone(),
            ctx.clock,
        ));
        let sender = ClosedLoop {
            conversation: pair.conversation,
            in_flight: p.in_flight.max(1),
            size: p.size,
            client_ids: p.client_ids,
            clock: ctx.clock,
            stop_at,
        };
        senders.push(tokio::spawn(sender.run(pair.sender)));
    }
    let mut sent = Vec::with_capacity(senders.len());
    for task in senders {
        sent.push(task.await.unwrap_or_else(|e| {
            let mut s = Sent::default();
            s.check.error(format!("sender task failed: {e}"));
            s
        }));
    }
    progress!("pairs", target, "sending done, draining recipients");
    let totals = settle(sent, recipients).await;
    let seconds = (totals.last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let mut figures = vec![Figure::new(
        "delivered_per_s",
        "delivered msg/s",
        totals.check.delivered as f64 / seconds,
    )];
    figures.extend(totals.latency.figures("latency", "latency"));
    figures.extend(cpu.figures(target.pid(), seconds, totals.check.delivered));
    figures.extend(server.figures().await);
    Ok(Run {
        figures,
        check: totals.check,
        notes: Vec::new(),
    })
}

/// One closed-loop sender.
struct ClosedLoop {
    conversation: String,
    in_flight: usize,
    size: usize,
    client_ids: ClientIds,
    clock: Clock,
    stop_at: Instant,
}

impl ClosedLoop {
    async fn run(self, mut session: Session) -> Sent {
        let mut out = Sent::default();
        let mut outstanding = 0usize;
        for _ in 0..self.in_flight {
            if !self.send(&session, &mut out).await {
                return out;
            }
            outstanding += 1;
        }
        let give_up = self.stop_at + ACK_TIMEOUT;
        while outstanding > 0 {
            let Ok(next) = tokio::time::timeout_at(give_up, session.rx.message()).await else {
                out.check
                    .error(format!("{outstanding} sends never answered"));
                break;
            };
            match next {
                Ok(Some(ServerEvent {
                    event: Some(Event::SendResult(result)),
                })) => {
                    outstanding -= 1;
                    note_result(result.outcome, &mut out);
                    if Instant::now() < self.stop_at {
                        if !self.send(&session, &mut out).await {
                            break;
                        }
                        outstanding += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    out.check.error("sender stream ended early");
                    break;
                }
                Err(status) => {
                    out.check.error(format!("sender stream failed: {status}"));
                    break;
                }
            }
        }
        out
    }

    async fn send(&self, session: &Session, out: &mut Sent) -> bool {
        let event = send_event(
            &self.conversation,
            self.client_ids.next(),
            stamped_text(self.clock.now_ns(), self.size),
        );
        if session.tx.send(event).await.is_err() {
            out.check.error("sender stream closed");
            return false;
        }
        out.sent += 1;
        true
    }
}

/// Counts one `send_result`: an acknowledged seq or a refusal.
pub fn note_result(outcome: Option<Outcome>, out: &mut Sent) {
    match outcome {
        Some(Outcome::Message(m)) => out.acked.push(m.seq),
        Some(Outcome::Error(e)) => out
            .check
            .error(format!("send refused: code {} {}", e.code, e.message)),
        None => out.check.error("send_result without an outcome"),
    }
}
