//! # chat-bench: Daehwa's load generator
//!
//! Runs one scenario of issue 5 against `chatd` and, where a ceiling applies, against a
//! bare relay speaking the same session protocol; prints Daehwa's figures beside the
//! ceiling's with their ratio (progress on stderr, `--json` for a machine-readable summary
//! on stdout). Sessions go over gRPC (`ChatService/Connect`) or, with `--transport ws`, over
//! WebSocket (the gateway's `/v1/ws`, against a bare WebSocket relay). Exits 1 if any
//! acknowledged message was lost or duplicated, 2 if the scenario could not run.
//!
//! ## Layout
//! - `target`: the servers under load (chatd child, relay child, or `--server URL`).
//! - `relay`: the ceiling, a bare relay over gRPC and WebSocket (`chat-bench relay-server`).
//! - `load`: users, stamped messages, the per-recipient seq ledger.
//! - `session`: one live session over either transport.
//! - `scenario`: one module per scenario (pairs, latency, idle, catchup, storm, fanout).
//! - `report`: HDR histograms, the table and the JSON summary.
//! - `rss`: resident memory and CPU time of a process, and the load average, from /proc.
//! - `server_metrics`: chatd's own histograms over a measured window, from its `/metrics`.
//!
//! The relay runs first and is stopped before chatd starts, so the two never share the CPU;
//! each scenario's users are set up before its clock starts. With `--rounds N` the pair runs
//! N times, alternating which goes first, and the round with the median ratio is reported.

mod load;
mod relay;
mod report;
mod rss;
mod scenario;
mod server_metrics;
mod session;
mod target;

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    report::{Report, Round},
    scenario::Ctx,
    session::Transport,
    target::Target,
};

/// Runs a scenario `--rounds` times, each round on the relay (when `$ceiling` and not
/// `--no-ceiling`) and on chatd (started for `$transport`), one stopped before the other
/// starts: the relay first in rounds 1, 3, 5 ..., chatd first in rounds 2, 4 ..., so that a drift of the
/// machine's speed does not always favour the same target. Each round gets its own
/// usernames (`Ctx::for_round`). Yields the rounds. A macro because the scenario future
/// borrows the target it runs on.
macro_rules! rounds {
    ($cli:expr, $ctx:expr, $ceiling:expr, $transport:expr, |$t:ident, $c:ident| $run:expr) => {{
        // Fail before the relay run, not after it, when chatd is missing.
        preflight(&$cli, $transport)?;
        let with_ceiling = $ceiling && !$cli.no_ceiling;
        let mut rounds = Vec::with_capacity(usize::from($cli.rounds));
        for round in 0..$cli.rounds {
            let $c = $ctx.for_round(round);
            if $cli.rounds > 1 {
                eprintln!("round {} of {}", round + 1, $cli.rounds);
            }
            // `round` counts from 0: the relay goes first in rounds 0, 2, 4 ...
            let relay_first = round % 2 == 0;
            let mut ceiling = None;
            let mut daehwa = None;
            for on_relay in [relay_first, !relay_first] {
                if on_relay {
                    if with_ceiling {
                        let $t = Target::relay().await?;
                        announce(&$t);
                        let run = $run.await;
                        $t.stop().await;
                        ceiling = Some(run?);
                    }
                } else {
                    let $t = daehwa_target(&$cli, $transport).await?;
                    announce(&$t);
                    let run = $run.await;
                    $t.stop().await;
                    daehwa = Some(run?);
                }
            }
            if let Some(daehwa) = daehwa {
                rounds.push(Round { daehwa, ceiling });
            }
        }
        rounds
    }};
}

/// Daehwa's load generator: each scenario against chatd beside a bare relay.
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version)]
struct Cli {
    /// The chatd binary to start (default: `chatd` next to this executable).
    #[arg(long, global = true)]
    chatd: Option<PathBuf>,
    /// An extra flag for chatd, e.g. `--chatd-arg=--outbox-capacity=4096` (repeatable).
    #[arg(long = "chatd-arg", global = true, allow_hyphen_values = true)]
    chatd_args: Vec<String>,
    /// Use an already-running Daehwa server at this URL instead of starting chatd (no
    /// memory figures; it needs generous send-rate, stream and group limits).
    #[arg(long, global = true)]
    server: Option<String>,
    /// With `--server` and `--transport ws`: the server's WebSocket URL
    /// (`ws://HOST:PORT/v1/ws`).
    #[arg(long, global = true)]
    ws_url: Option<String>,
    /// Skip the relay (ceiling) run.
    #[arg(long, global = true)]
    no_ceiling: bool,
    /// Print a JSON summary on stdout (the table then goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Run the scenario this many times (odd) on both targets, alternating which goes
    /// first, and report the round with the median ratio of its headline figure (every
    /// round's headline is listed, and every round's loss counts).
    #[arg(long, global = true, default_value_t = 1, value_parser = odd_rounds)]
    rounds: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (a) 1:1 pairs, closed loop: delivered msg/s and latency.
    Pairs(scenario::pairs::Params),
    /// (b) 1:1 pairs, open loop at a fixed rate: latency from the intended send time.
    Latency(scenario::latency::Params),
    /// (c) Idle sessions: server memory per session.
    Idle(scenario::idle::Params),
    /// (e) A device N messages behind syncs to current (chatd only).
    Catchup(scenario::catchup::Params),
    /// (f) N sessions connecting at once.
    Storm(scenario::storm::Params),
    /// (d) One message to a group of N online members: time to the last delivery.
    Fanout(scenario::fanout::Params),
    /// The bare relay server (the ceiling); started by the scenarios themselves.
    #[command(hide = true)]
    RelayServer {
        /// Address of the gRPC relay.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Address of the WebSocket relay (`/v1/ws`).
        #[arg(long, default_value = "127.0.0.1:0")]
        ws_listen: std::net::SocketAddr,
    },
    /// Holds idle sessions for `idle --processes N`; started by the scenario itself.
    #[command(hide = true)]
    IdleWorker(scenario::idle::WorkerParams),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        run: rand::random(),
        clock: load::Clock::new(),
    };
    let load_before = rss::load_average();
    let mut report = match &cli.command {
        Command::RelayServer { listen, ws_listen } => {
            // The same accept queue as chatd's listeners, so connect storms compare stacks.
            let grpc = daehwa_gateway::listen::bind(*listen)?;
            let ws = daehwa_gateway::listen::bind(*ws_listen)?;
            // The lines `Target::relay` waits for.
            eprintln!("{} addr={}", target::RELAY_GRPC_LINE, grpc.local_addr()?);
            eprintln!("{} addr={}", target::RELAY_WS_LINE, ws.local_addr()?);
            relay::serve(grpc, ws).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::IdleWorker(p) => {
            scenario::idle::worker(p).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Pairs(p) => {
            let rounds = rounds!(cli, ctx, true, p.transport, |t, c| scenario::pairs::run(
                &t, &c, p
            ));
            Report::from_rounds("pairs", p.transport, p.to_json(), rounds, "delivered_per_s")
        }
        Command::Latency(p) => {
            let rounds = rounds!(cli, ctx, true, p.transport, |t, c| scenario::latency::run(
                &t, &c, p
            ));
            Report::from_rounds(
                "latency",
                p.transport,
                p.to_json(),
                rounds,
                "latency_p99_ms",
            )
        }
        Command::Idle(p) => {
            let rounds = rounds!(cli, ctx, true, p.transport, |t, c| scenario::idle::run(
                &t, &c, p
            ));
            Report::from_rounds("idle", p.transport, p.to_json(), rounds, "kib_per_session")
        }
        Command::Catchup(p) => {
            // Unary gRPC calls: no session transport to choose.
            let rounds = rounds!(cli, ctx, false, Transport::Grpc, |t, c| {
                scenario::catchup::run(&t, &c, p)
            });
            let mut r = Report::from_rounds(
                "catchup",
                Transport::Grpc,
                p.to_json(),
                rounds,
                "catchup_ms",
            );
            r.notes
                .push("no ceiling: the relay stores nothing to catch up from".into());
            r
        }
        Command::Storm(p) => {
            let rounds = rounds!(cli, ctx, true, p.transport, |t, c| scenario::storm::run(
                &t, &c, p
            ));
            Report::from_rounds("storm", p.transport, p.to_json(), rounds, "connects_per_s")
        }
        Command::Fanout(p) => {
            let rounds = rounds!(cli, ctx, true, p.transport, |t, c| scenario::fanout::run(
                &t, &c, p
            ));
            Report::from_rounds(
                "fanout",
                p.transport,
                p.to_json(),
                rounds,
                "last_delivery_median_ms",
            )
        }
    };
    report.notes.push(format!(
        "machine: {} CPUs, 1-min load average {} at start and {} at end (the load generator runs on the same machine)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        rss::load_average().map_or("?".into(), |l| format!("{l:.2}")),
    ));
    if cli.json {
        report.print_table(&mut std::io::stderr())?;
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report.to_json())?;
        writeln!(out)?;
    } else {
        report.print_table(&mut std::io::stdout())?;
    }
    if report.violations() > 0 {
        eprintln!(
            "chat-bench: {} messages lost or duplicated",
            report.violations()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `--rounds`: an odd count from 1 to 99, so that the median round is one round.
fn odd_rounds(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(n) if (1..=99).contains(&n) && n % 2 == 1 => Ok(n),
        _ => Err(format!("`{value}` is not an odd number from 1 to 99")),
    }
}

/// The Daehwa server to measure: `--server URL` (and `--ws-url`), or chatd started from
/// `--chatd` (its gateway's address found too when sessions go over `transport` ws).
async fn daehwa_target(cli: &Cli, transport: Transport) -> anyhow::Result<Target> {
    match &cli.server {
        Some(url) => Ok(Target::external(url, cli.ws_url.as_deref())),
        None => Target::chatd(&chatd_path(cli)?, &cli.chatd_args, transport).await,
    }
}

/// Prints which server a run is on, with its URLs.
fn announce(target: &Target) {
    match &target.ws_url {
        Some(ws) => eprintln!("[{}] {} {ws}", target.kind.name(), target.url),
        None => eprintln!("[{}] {}", target.kind.name(), target.url),
    }
}

/// What the Daehwa run needs that can be checked before the relay run: the chatd binary,
/// or with `--server` and `transport` ws, `--ws-url`.
fn preflight(cli: &Cli, transport: Transport) -> anyhow::Result<()> {
    match &cli.server {
        None => chatd_path(cli).map(drop),
        Some(url) => Target::external(url, cli.ws_url.as_deref())
            .dial(transport)
            .map(drop),
    }
}

/// `--chatd`, or `chatd` next to this executable; an error if it does not exist.
fn chatd_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    let path = cli.chatd.clone().unwrap_or_else(target::default_chatd);
    anyhow::ensure!(
        path.exists(),
        "chatd not found at {}: build it (`cargo build --release -p daehwa-server`) or pass --chatd PATH",
        path.display()
    );
    Ok(path)
}
