//! (b) Latency at a fixed offered rate (open loop): message k is due at `start + k / rate`
//! and goes to pair `k mod pairs`, whether or not earlier ones were answered. A pacer thread
//! (std sleep, microsecond resolution, unlike tokio's 1 ms timer) queues each message at its
//! due time with the DUE time as its stamp, so a server that falls behind shows its queueing
//! in the latency instead of slowing the load down (no coordinated omission).

use std::time::Duration;

use clap::Args;
use daehwa::v1::{ClientEvent, ServerEvent, server_event::Event};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    Ctx,
    pairs::{self, Sent},
};
use crate::{
    load::{ClientIds, Clock, send_event, stamped_text},
    progress,
    report::{Check, CpuWindow, Figure, Run},
    server_metrics::MetricsWindow,
    session::{Inbound, Transport},
    target::Target,
};

/// How long a sender waits for its next result once the offer is over.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Lead time before the first due send, so the pacer starts on schedule.
const LEAD: Duration = Duration::from_millis(200);

/// Flags of `chat-bench latency`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Offered messages per second, over all pairs.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Sender/recipient pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// How long the load is offered.
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
        json!({"rate": self.rate, "pairs": self.pairs, "seconds": self.seconds, "size": self.size, "client_ids": self.client_ids.name()})
    }
}

/// Runs the open-loop latency scenario on `target`.
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    anyhow::ensure!(p.rate > 0.0, "--rate must be positive");
    let set = pairs::set_up(target, ctx, "latency", p.pairs, p.transport).await?;
    let total = (p.rate * p.seconds).round() as u64;
    progress!(
        "latency",
        target,
        "offering {} msg/s for {} s ({total} messages)",
        p.rate,
        p.seconds
    );
    let mut lanes = Vec::with_capacity(set.len());
    let mut ack_readers = Vec::with_capacity(set.len());
    let mut recipients = Vec::with_capacity(set.len());
    for pair in set {
        recipients.push(pairs::spawn_recipient(
            pair.recipient,
            pair.conversation.clone(),
            ctx.clock,
        ));
        let (expect_tx, expect_rx) = oneshot::channel();
        ack_readers.push((
            expect_tx,
            tokio::spawn(read_acks(pair.sender.rx, expect_rx)),
        ));
        lanes.push(Lane {
            conversation: pair.conversation,
            tx: pair.sender.tx,
            sent: 0,
        });
    }
    let cpu = CpuWindow::start(target.pid());
    let server = MetricsWindow::start(target.metrics).await;
    let start_ns = ctx.clock.now_ns() + LEAD.as_nanos() as u64;
    let pacer = Pacer {
        lanes,
        total,
        interval_ns: 1e9 / p.rate,
        start_ns,
        size: p.size,
        client_ids: p.client_ids,
        clock: ctx.clock,
    };
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let _ = done_tx.send(pacer.run());
        })?;
    // The lanes' senders come back so the streams stay open until every answer is read
    // (a half-closed stream may end before the readers know how many answers to expect).
    let (sent_per_lane, pacer_check, _open) = done_rx.await?;
    progress!("latency", target, "offer done, waiting for results");
    let mut sent = Vec::with_capacity(ack_readers.len());
    for ((expect, task), n) in ack_readers.into_iter().zip(sent_per_lane) {
        let _ = expect.send(n);
        let mut s = task.await.unwrap_or_default();
        s.sent = n;
        sent.push(s);
    }
    let mut totals = pairs::settle(sent, recipients).await;
    totals.check.absorb(pacer_check);
    let seconds = (totals.last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let mut figures = vec![
        Figure::new("offered_per_s", "offered msg/s", p.rate),
        Figure::new(
            "delivered_per_s",
            "delivered msg/s",
            totals.check.delivered as f64 / seconds,
        ),
    ];
    figures.extend(totals.latency.figures("latency", "latency (from due time)"));
    figures.extend(cpu.figures(target.pid(), seconds, totals.check.delivered));
    figures.extend(server.figures().await);
    Ok(Run {
        figures,
        check: totals.check,
        notes: Vec::new(),
    })
}

/// Reads a sender's `send_result`s until it has as many as it is told were sent (or none
/// came for [`ANSWER_TIMEOUT`] after being told).
async fn read_acks(mut rx: Inbound, expect: oneshot::Receiver<u64>) -> Sent {
    let mut out = Sent::default();
    let mut expect = Some(expect);
    let mut wanted: Option<u64> = None;
    let mut deadline = Instant::now() + Duration::from_secs(365 * 86_400);
    let mut answered = 0u64;
    loop {
        if wanted.is_some_and(|w| answered >= w) {
            break;
        }
        let next = tokio::select! {
            next = rx.message() => next,
            n = async { expect.as_mut().expect("guarded").await }, if expect.is_some() => {
                expect = None;
                wanted = Some(n.unwrap_or(0));
                deadline = Instant::now() + ANSWER_TIMEOUT;
                continue;
            }
            () = tokio::time::sleep_until(deadline) => {
                out.check.error(format!(
                    "{} sends never answered",
                    wanted.unwrap_or(0).saturating_sub(answered)
                ));
                break;
            }
        };
        match next {
            Ok(Some(ServerEvent {
                event: Some(Event::SendResult(result)),
            })) => {
                answered += 1;
                pairs::note_result(result.outcome, &mut out);
                if wanted.is_some() {
                    // A server behind the offered rate drains slowly: wait while it answers.
                    deadline = Instant::now() + ANSWER_TIMEOUT;
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

/// One sender's stream as the pacer sees it.
struct Lane {
    conversation: String,
    tx: mpsc::Sender<ClientEvent>,
    sent: u64,
}

/// Queues every message at its due time, round robin over the lanes.
struct Pacer {
    lanes: Vec<Lane>,
    total: u64,
    interval_ns: f64,
    start_ns: u64,
    size: usize,
    client_ids: ClientIds,
    clock: Clock,
}

impl Pacer {
    /// Runs on its own OS thread; returns how many messages each lane queued, and the
    /// lanes' senders.
    fn run(mut self) -> (Vec<u64>, Check, Vec<mpsc::Sender<ClientEvent>>) {
        let mut check = Check::default();
        let n = self.lanes.len() as u64;
        for k in 0..self.total {
            let due = self.start_ns + (k as f64 * self.interval_ns) as u64;
            let now = self.clock.now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            let lane = &mut self.lanes[(k % n) as usize];
            let event = send_event(
                &lane.conversation,
                self.client_ids.next(),
                stamped_text(due, self.size),
            );
            // Waits only if 1024 sends are queued on this stream: the due-time stamp keeps
            // that wait in the measured latency.
            if lane.tx.blocking_send(event).is_err() {
                check.error("sender stream closed");
                continue;
            }
            lane.sent += 1;
        }
        let sent = self.lanes.iter().map(|l| l.sent).collect();
        (sent, check, self.lanes.into_iter().map(|l| l.tx).collect())
    }
}
