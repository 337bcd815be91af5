//! (f) Connect storm: `--sessions` devices connect at once, each on a new TCP connection
//! (HTTP/2 handshake and Connect, or with `--transport ws` the WebSocket upgrade; then wait
//! for `ready`). Logins are done beforehand (a few users,
//! many streams each), so the storm measures connection and session set-up, not argon2.
//! Figures: time until every session is ready, connects/s, per-session connect latency;
//! every failure is an error.
//!
//! One process holds every client socket, so the open-file limit (20,000 here) bounds the
//! storm at about 19,000 sessions per run.

use std::time::Instant;

use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;

use super::Ctx;
use crate::{
    load, progress,
    report::{Check, Figure, Latency, Run},
    session::{self, Transport},
    target::Target,
};

/// Flags of `chat-bench storm`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Sessions connecting at once.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Users the sessions belong to (default: one per 500 sessions).
    #[arg(long)]
    pub users: Option<usize>,
    /// How sessions connect: `grpc` (Connect streams) or `ws` (the gateway's `/v1/ws`).
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
}

impl Params {
    /// Users to log in.
    pub fn users(&self) -> usize {
        self.users
            .unwrap_or(self.sessions.div_ceil(500))
            .clamp(1, self.sessions.max(1))
    }

    /// The parameters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"sessions": self.sessions, "users": self.users()})
    }
}

/// Runs the connect storm on `target`.
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    let dial = target.dial(p.transport)?;
    progress!("storm", target, "logging in {} users", p.users());
    let ids = load::provision(target.kind, &target.url, ctx.run, p.users()).await?;
    progress!(
        "storm",
        target,
        "{} {} sessions connecting at once",
        p.sessions,
        p.transport
    );
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..p.sessions {
        let identity = ids[i % ids.len()].clone();
        let dial = dial.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let session = session::connect_session(&dial, &identity).await;
            (session, t.elapsed())
        });
    }
    let mut check = Check::default();
    let mut latency = Latency::new();
    let mut open = Vec::with_capacity(p.sessions);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((Ok(session), took)) => {
                latency.record(took.as_nanos() as u64);
                open.push(session);
            }
            Ok((Err(e), _)) => check.error(format!("session failed: {e:#}")),
            Err(e) => check.error(format!("session task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress!(
        "storm",
        target,
        "{} ready, {} failed in {elapsed:.2} s",
        open.len(),
        check.errors
    );
    let mut figures = vec![
        Figure::new("ready", "sessions ready", open.len() as f64),
        Figure::new("failed", "sessions failed", check.errors as f64),
        Figure::new("all_ready_ms", "time until all ready ms", elapsed * 1e3),
        Figure::new(
            "connects_per_s",
            "connects/s",
            open.len() as f64 / elapsed.max(1e-9),
        ),
    ];
    figures.extend(latency.figures("connect", "connect"));
    drop(open);
    Ok(Run {
        figures,
        check,
        notes: Vec::new(),
    })
}
