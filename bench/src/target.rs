//! The servers under load: `chatd` started as a child process (temporary data dir, a free
//! port, generous limits), the bare relay started as a child process of this binary
//! (`chat-bench relay-server`), or an already-running server given by URL.
//!
//! Each target has a gRPC URL (set-up calls always use it) and, for WebSocket sessions, a
//! `ws://HOST:PORT/v1/ws` URL: chatd's from its "gateway listening" log line (the embedded
//! gateway), the relay's from its "relay ws serving" line, an external server's from
//! `--ws-url`. A chatd child also has its metrics address, from its "metrics listening" line.
//!
//! Children log to pipes that are drained for the whole run (a full pipe would stall them);
//! warnings and errors are echoed on stderr, and the last lines are kept to explain a
//! failed start. Children are killed when the target is stopped or dropped.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::session::{Dial, Transport};

/// chatd flags for a load run: lift the per-user limits a load generator hits at once, and
/// put the embedded gateway (its default, 8080, may be taken by another chatd on the same
/// machine) and the metrics endpoint (read by `server_metrics`) on free ports.
pub const CHATD_FLAGS: &[&str] = &[
    "--gateway-listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--send-rate",
    "1000000",
    "--send-burst",
    "1000000",
    "--max-streams-per-user",
    "100000",
    "--max-group-members",
    "20000",
    // Set-up of large scenarios (argon2 logins) can outlast the default 15 minutes.
    "--access-token-ttl",
    "4h",
];

/// How long a child may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines kept to explain a failed start.
const LOG_TAIL: usize = 50;
/// Warning lines echoed per child before the rest are only counted.
const ECHOED_WARNINGS: usize = 20;

/// Which server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Daehwa's chatd.
    Daehwa,
    /// The bare tonic relay (the ceiling).
    Relay,
}

impl Kind {
    /// Short name for progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Daehwa => "daehwa",
            Kind::Relay => "relay",
        }
    }
}

/// A server the load runs against.
pub struct Target {
    /// Which server it is.
    pub kind: Kind,
    /// Its gRPC URL (`http://host:port`).
    pub url: String,
    /// Its WebSocket session URL (`ws://host:port/v1/ws`), when known.
    pub ws_url: Option<String>,
    /// Its Prometheus endpoint (chatd started by this tool only).
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `chatd` from `path` on a free port with a temporary data dir, the flags of
    /// [`CHATD_FLAGS`] and then `extra` flags; for `transport` ws it also waits for the
    /// embedded gateway's address.
    pub async fn chatd(
        path: &Path,
        extra: &[String],
        transport: Transport,
    ) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!(
                "chatd not found at {}: build it (`cargo build --release -p daehwa-server`) or pass --chatd PATH",
                path.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("chat-bench-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let mut command = Command::new(path);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(CHATD_FLAGS)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CHATD_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1");
        // The lines of server/src/app.rs: serving, metrics and `spawn_gateway`.
        let markers: &[&str] = match transport {
            Transport::Grpc => &["chatd serving", "metrics listening"],
            Transport::Ws => &["chatd serving", "metrics listening", "gateway listening"],
        };
        let (child, addrs) = spawn_serving(command, "chatd", markers).await?;
        Ok(Self {
            kind: Kind::Daehwa,
            url: format!("http://{}", addrs[0]),
            metrics: Some(addrs[1]),
            ws_url: addrs.get(2).map(|a| format!("ws://{a}/v1/ws")),
            child: Some(child),
            _data_dir: Some(dir),
        })
    }

    /// Starts the relay (gRPC and WebSocket, each on a free port) as a child process of
    /// this binary.
    pub async fn relay() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating chat-bench itself")?;
        let mut command = Command::new(exe);
        command.args([
            "relay-server",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
        ]);
        let (child, addrs) =
            spawn_serving(command, "relay", &[RELAY_GRPC_LINE, RELAY_WS_LINE]).await?;
        Ok(Self {
            kind: Kind::Relay,
            url: format!("http://{}", addrs[0]),
            ws_url: Some(format!("ws://{}/v1/ws", addrs[1])),
            metrics: None,
            child: Some(child),
            _data_dir: None,
        })
    }

    /// An already-running Daehwa server (`--server`, `--ws-url`): no process, so no memory
    /// figures.
    pub fn external(url: &str, ws_url: Option<&str>) -> Self {
        Self {
            kind: Kind::Daehwa,
            url: url.trim_end_matches('/').to_owned(),
            ws_url: ws_url.map(str::to_owned),
            metrics: None,
            child: None,
            _data_dir: None,
        }
    }

    /// Where sessions over `transport` connect; an error for WebSocket when the target has
    /// no WebSocket URL (an external server without `--ws-url`).
    pub fn dial(&self, transport: Transport) -> anyhow::Result<Dial> {
        let url = match transport {
            Transport::Grpc => self.url.clone(),
            Transport::Ws => self
                .ws_url
                .clone()
                .context("no WebSocket URL for this server: pass --ws-url ws://HOST:PORT/v1/ws")?,
        };
        Ok(Dial { transport, url })
    }

    /// The server's process id, when this tool started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The server's resident memory in KiB, when this tool started it.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(crate::rss::rss_kib)
    }

    /// Kills the child (if any) and waits for it.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// `chatd` next to this executable (`target/release/chatd` for a release chat-bench).
pub fn default_chatd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("chatd")))
        .unwrap_or_else(|| PathBuf::from("target/release/chatd"))
}

/// The relay's startup line for its gRPC port (`relay serving addr=...`).
pub const RELAY_GRPC_LINE: &str = "relay serving";
/// The relay's startup line for its WebSocket port (`relay ws serving addr=...`).
pub const RELAY_WS_LINE: &str = "relay ws serving";

/// Spawns `command`, drains its output and waits, for each of `markers`, for a line with
/// that marker and `addr=`; returns the addresses in the order of `markers`.
async fn spawn_serving(
    mut command: Command,
    name: &'static str,
    markers: &'static [&'static str],
) -> anyhow::Result<(Child, Vec<SocketAddr>)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
    let (addr_tx, mut addr_rx) = mpsc::channel(2 * markers.len());
    let pipes: [Option<Box<dyn AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        tokio::spawn(drain(pipe, name, markers, addr_tx.clone(), tail.clone()));
    }
    drop(addr_tx);
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; markers.len()];
    let all = async {
        while addrs.iter().any(Option::is_none) {
            let (i, addr) = addr_rx.recv().await?;
            addrs[i] = Some(addr);
        }
        Some(())
    };
    match tokio::time::timeout(START_TIMEOUT, all).await {
        Ok(Some(())) => Ok((child, addrs.into_iter().flatten().collect())),
        outcome => {
            let _ = child.start_kill();
            let why = if outcome.is_err() {
                "did not start serving in time"
            } else {
                "exited before serving"
            };
            let log: Vec<String> = tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            let missing: Vec<&str> = markers
                .iter()
                .zip(&addrs)
                .filter(|(_, addr)| addr.is_none())
                .map(|(marker, _)| *marker)
                .collect();
            bail!(
                "{name} {why} (no `addr=` line for {missing:?}; CHATD_LOG must keep info lines); its last log lines:\n{}",
                log.join("\n")
            )
        }
    }
}

async fn drain(
    pipe: Box<dyn AsyncRead + Unpin + Send>,
    name: &'static str,
    markers: &'static [&'static str],
    addr: mpsc::Sender<(usize, SocketAddr)>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    let mut echoed = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let line = strip_ansi(&line);
        if let Some(i) = markers.iter().position(|m| line.contains(m))
            && let Some(a) = parse_addr(&line)
        {
            let _ = addr.try_send((i, a));
        }
        if line.contains("WARN") || line.contains("ERROR") {
            echoed += 1;
            if echoed <= ECHOED_WARNINGS {
                eprintln!("[{name}] {line}");
            } else if echoed == ECHOED_WARNINGS + 1 {
                eprintln!("[{name}] (further warnings not shown)");
            }
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == LOG_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// The `addr=HOST:PORT` field of a log line.
pub fn parse_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// The line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_a_log_line() {
        let line = "2025-01-01T00:00:00Z  INFO daehwa_server::app: chatd serving addr=127.0.0.1:4567 server_id=chatd-1";
        assert_eq!(parse_addr(line), Some("127.0.0.1:4567".parse().unwrap()));
        let coloured = "\u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:99 x";
        assert_eq!(
            parse_addr(&strip_ansi(coloured)),
            Some("127.0.0.1:99".parse().unwrap())
        );
        assert_eq!(parse_addr("no address here"), None);
    }
}
