//! The servers under load: `chatd` started as a child process (temporary data dir, a free
//! port, generous limits), the bare relay started as a child process of this binary
//! (`chat-bench relay-server`), or an already-running server given by URL.
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

/// chatd flags for a load run: lift the per-user limits a load generator hits at once, and
/// put the embedded gateway on a free port (its default, 8080, may be taken by another
/// chatd on the same machine).
pub const CHATD_FLAGS: &[&str] = &[
    "--gateway-listen",
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
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `chatd` from `path` on a free port with a temporary data dir, the flags of
    /// [`CHATD_FLAGS`] and then `extra` flags.
    pub async fn chatd(path: &Path, extra: &[String]) -> anyhow::Result<Self> {
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
        let (child, addr) = spawn_serving(command, "chatd", "chatd serving").await?;
        Ok(Self {
            kind: Kind::Daehwa,
            url: format!("http://{addr}"),
            child: Some(child),
            _data_dir: Some(dir),
        })
    }

    /// Starts the relay as a child process of this binary.
    pub async fn relay() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating chat-bench itself")?;
        let mut command = Command::new(exe);
        command.args(["relay-server", "--listen", "127.0.0.1:0"]);
        let (child, addr) = spawn_serving(command, "relay", "relay serving").await?;
        Ok(Self {
            kind: Kind::Relay,
            url: format!("http://{addr}"),
            child: Some(child),
            _data_dir: None,
        })
    }

    /// An already-running Daehwa server: no process, so no memory figures.
    pub fn external(url: &str) -> Self {
        Self {
            kind: Kind::Daehwa,
            url: url.trim_end_matches('/').to_owned(),
            child: None,
            _data_dir: None,
        }
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

/// Spawns `command`, drains its output and waits for the line with `marker` and `addr=`.
async fn spawn_serving(
    mut command: Command,
    name: &'static str,
    marker: &'static str,
) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
    let (addr_tx, mut addr_rx) = mpsc::channel(2);
    let pipes: [Option<Box<dyn AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        tokio::spawn(drain(pipe, name, marker, addr_tx.clone(), tail.clone()));
    }
    drop(addr_tx);
    match tokio::time::timeout(START_TIMEOUT, addr_rx.recv()).await {
        Ok(Some(addr)) => Ok((child, addr)),
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
            bail!("{name} {why}; its last log lines:\n{}", log.join("\n"))
        }
    }
}

async fn drain(
    pipe: Box<dyn AsyncRead + Unpin + Send>,
    name: &'static str,
    marker: &'static str,
    addr: mpsc::Sender<SocketAddr>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    let mut echoed = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let line = strip_ansi(&line);
        if line.contains(marker)
            && let Some(a) = parse_addr(&line)
        {
            let _ = addr.try_send(a);
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
