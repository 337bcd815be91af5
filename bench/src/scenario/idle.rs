//! (c) Idle sessions: `--sessions` sessions (Connect streams, or WebSockets with
//! `--transport ws`), each on its own TCP connection (as separate devices would be), held
//! open and silent; the server's resident memory before and after gives its cost per
//! session.
//!
//! The open-file limit is 20,000 per process here and cannot be raised, so one load
//! generator holds at most ~19,000 sockets: with `--processes P` (by default one per 10,000
//! sessions) the sessions are opened by P `chat-bench idle-worker` children instead. The
//! protocol with a worker is two JSON lines each way: the parent writes the identities, the
//! worker answers `{"ready","errors","samples"}` once its sessions are open; the parent
//! closes the worker's stdin when done measuring and the worker answers `{"ended"}` (streams
//! the server ended meanwhile) and exits.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use daehwa::v1::ClientEvent;
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::mpsc,
    task::JoinSet,
};

use super::Ctx;
use crate::{
    load::{self, Identity},
    progress,
    report::{Check, Figure, Run},
    session::{self, Dial, Transport},
    target::Target,
};

/// Sessions being opened at once (an idle build-up, not a storm).
const OPENING: usize = 256;
/// Sessions per load-generator process when `--processes` is not given.
const PER_PROCESS: usize = 10_000;

/// Flags of `chat-bench idle`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Idle sessions to hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Users the sessions belong to (default: one per 500 sessions).
    #[arg(long)]
    pub users: Option<usize>,
    /// Load-generator processes holding the sessions (default: one per 10,000).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Seconds to wait after the last session is ready before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// How sessions connect: `grpc` (Connect streams) or `ws` (the gateway's `/v1/ws`).
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
}

impl Params {
    fn users(&self) -> usize {
        self.users
            .unwrap_or(self.sessions.div_ceil(500))
            .clamp(1, self.sessions.max(1))
    }

    fn processes(&self) -> usize {
        self.processes
            .unwrap_or(self.sessions.div_ceil(PER_PROCESS))
            .max(1)
    }

    /// The parameters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"sessions": self.sessions, "users": self.users(), "processes": self.processes()})
    }
}

/// Flags of the hidden `chat-bench idle-worker` (identities come on stdin).
#[derive(Debug, Clone, Args)]
pub struct WorkerParams {
    /// The server's URL for `--transport`.
    #[arg(long)]
    pub url: String,
    /// How the sessions connect.
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
    /// Sessions to open.
    #[arg(long)]
    pub sessions: usize,
}

/// A worker's first answer.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Opened {
    ready: u64,
    errors: u64,
    samples: Vec<String>,
}

/// A worker's last answer.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ended {
    ended: u64,
}

/// Sessions held open by this process; each one's stream is drained by a task that counts
/// streams the server ends.
struct Held {
    /// Dropping these ends the streams.
    senders: Vec<mpsc::Sender<ClientEvent>>,
    /// The stream drainers, aborted when dropped.
    _drainers: JoinSet<()>,
    check: Check,
    ended: Arc<AtomicU64>,
}

async fn open_many(dial: &Dial, ids: &[Identity], n: usize) -> Held {
    let ended = Arc::new(AtomicU64::new(0));
    let mut check = Check::default();
    let mut senders = Vec::with_capacity(n);
    let mut drainers = JoinSet::new();
    let mut opened = stream::iter(0..n)
        .map(|i| session::connect_session(dial, &ids[i % ids.len()]))
        .buffer_unordered(OPENING);
    while let Some(result) = opened.next().await {
        match result {
            Ok(session) => {
                let ended = ended.clone();
                let mut rx = session.rx;
                drainers.spawn(async move {
                    while let Ok(Some(_)) = rx.message().await {}
                    ended.fetch_add(1, Ordering::Relaxed);
                });
                senders.push(session.tx);
                if senders.len() % 2500 == 0 {
                    eprintln!("  {} sessions ready", senders.len());
                }
            }
            Err(e) => check.error(format!("session failed: {e:#}")),
        }
    }
    Held {
        senders,
        _drainers: drainers,
        check,
        ended,
    }
}

/// Runs the idle-sessions scenario on `target`.
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    progress!("idle", target, "logging in {} users", p.users());
    let dial = target.dial(p.transport)?;
    let ids = load::provision(target.kind, &target.url, ctx.run, p.users()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = target.rss_kib();
    let processes = p.processes();
    progress!(
        "idle",
        target,
        "opening {} {} sessions from {processes} process(es)",
        p.sessions,
        p.transport
    );
    let mut check = Check::default();
    let mut ready = 0u64;
    let mut workers = Vec::new();
    let mut local = None;
    if processes == 1 {
        let held = open_many(&dial, &ids, p.sessions).await;
        ready = held.senders.len() as u64;
        check.absorb(held.check.clone());
        local = Some(held);
    } else {
        for w in 0..processes {
            let share = p.sessions / processes + usize::from(w < p.sessions % processes);
            // Rotate the identities so the workers spread over all users.
            let mut mine = ids.clone();
            mine.rotate_left(w % ids.len());
            workers.push(Worker::spawn(&dial, share, &mine).await?);
        }
        for worker in &mut workers {
            let opened: Opened = worker.answer().await?;
            ready += opened.ready;
            check.errors += opened.errors;
            check
                .error_samples
                .extend(opened.samples.into_iter().take(3));
        }
    }
    progress!(
        "idle",
        target,
        "{ready} sessions ready; settling {} s",
        p.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(p.settle)).await;
    let after = target.rss_kib();

    let mut ended = local
        .as_ref()
        .map_or(0, |h| h.ended.load(Ordering::Relaxed));
    drop(local);
    for mut worker in workers {
        drop(worker.stdin.take());
        let last: Ended = worker.answer().await.unwrap_or_default();
        ended += last.ended;
        let _ = worker.child.wait().await;
    }
    if ended > 0 {
        check.error(format!("{ended} idle streams were ended by the server"));
    }
    let mut figures = vec![Figure::new("ready", "sessions ready", ready as f64)];
    let mut notes = Vec::new();
    match (before, after) {
        (Some(before), Some(after)) => {
            figures.push(Figure::new(
                "rss_before_mib",
                "server RSS before MiB",
                before as f64 / 1024.0,
            ));
            figures.push(Figure::new(
                "rss_after_mib",
                "server RSS after MiB",
                after as f64 / 1024.0,
            ));
            figures.push(Figure::new(
                "kib_per_session",
                "server KiB per session",
                after.saturating_sub(before) as f64 / (ready.max(1) as f64),
            ));
        }
        _ => notes.push("server memory unknown (not started by chat-bench)".to_owned()),
    }
    Ok(Run {
        figures,
        check,
        notes,
    })
}

/// An `idle-worker` child.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn spawn(dial: &Dial, sessions: usize, ids: &[Identity]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating chat-bench itself")?;
        let mut child = Command::new(exe)
            .args(["idle-worker", "--url", &dial.url, "--transport"])
            .arg(dial.transport.name())
            .arg("--sessions")
            .arg(sessions.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning an idle worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = serde_json::to_vec(ids)?;
        line.push(b'\n');
        stdin.write_all(&line).await.context("briefing a worker")?;
        stdin.flush().await?;
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
        })
    }

    async fn answer<T: for<'de> Deserialize<'de>>(&mut self) -> anyhow::Result<T> {
        let line = self
            .stdout
            .next_line()
            .await?
            .context("worker exited without answering")?;
        serde_json::from_str(&line).with_context(|| format!("bad worker answer: {line}"))
    }
}

/// The `idle-worker` process: opens its sessions, reports, holds them until stdin closes.
pub async fn worker(p: &WorkerParams) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin.next_line().await?.context("no identities on stdin")?;
    let ids: Vec<Identity> = serde_json::from_str(&line).context("bad identities")?;
    anyhow::ensure!(!ids.is_empty(), "no identities on stdin");
    let dial = Dial {
        transport: p.transport,
        url: p.url.clone(),
    };
    let held = open_many(&dial, &ids, p.sessions).await;
    let opened = Opened {
        ready: held.senders.len() as u64,
        errors: held.check.errors,
        samples: held.check.error_samples.clone(),
    };
    println!("{}", serde_json::to_string(&opened)?);
    while stdin.next_line().await?.is_some() {}
    let ended = Ended {
        ended: held.ended.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&ended)?);
    Ok(())
}
