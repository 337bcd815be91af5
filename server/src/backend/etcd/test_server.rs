//! A private etcd server for tests: the real `/usr/bin/etcd` from Debian's `etcd-server`
//! package (`DAEHWA_ETCD_BIN` overrides the binary), with its data in a temporary directory
//! and its client and peer ports on free ports of 127.0.0.1, so nothing outside the test is
//! touched. A missing binary fails the test with the command that installs it.
//!
//! [`EtcdServer::stop`] kills it as a crash would (SIGKILL) and [`EtcdServer::restart`] starts
//! it again on the same ports and data, for tests of outages. Dropping the server kills it and
//! deletes the directory; a watchdog process does the same if the test binary dies without
//! dropping it (a kill, a Ctrl-C).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// What to run when the binary is missing.
const INSTALL_HINT: &str = "the etcd server binary is needed for the etcd registry tests: \
    install it with `apt-get install -y etcd-server` (or set DAEHWA_ETCD_BIN to an etcd binary)";

/// How long etcd may take to answer its health check after starting.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running etcd server owned by a test; killed and deleted on drop.
pub struct EtcdServer {
    bin: PathBuf,
    /// The data directory (`data/`), the log and the pid file the watchdog reads.
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// The etcd process while it runs.
    child: Mutex<Option<Child>>,
    /// Kills etcd if this process dies without dropping the server.
    watchdog: Mutex<Option<Child>>,
}

impl EtcdServer {
    /// Starts etcd in a new temporary directory on free ports and waits until it answers.
    /// Panics (failing the test) with an explanation when that is impossible.
    pub fn start() -> Self {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("daehwa-etcd-")
            .tempdir()
            .expect("temporary directory for etcd");
        let mut server = Self {
            bin,
            dir,
            client_port: 0,
            peer_port: 0,
            child: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        // A port found free may be taken before etcd binds it: try a few.
        let mut last_failure = String::new();
        for _ in 0..5 {
            server.client_port = free_port();
            server.peer_port = free_port();
            if server.client_port == server.peer_port {
                continue;
            }
            // Each attempt starts a fresh cluster: etcd remembers its peer URL in its data.
            let _ = std::fs::remove_dir_all(server.data_dir());
            match server.launch() {
                Ok(()) => {
                    server.spawn_watchdog();
                    return server;
                }
                Err(failure) => last_failure = failure,
            }
        }
        panic!("etcd did not start: {last_failure}");
    }

    /// The client URL, as the etcd client takes it: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The registry URL as Daehwa's configuration spells it: `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd at once (SIGKILL), as a crash would. Stopping a stopped server does nothing.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same ports and data.
    pub fn restart(&self) {
        self.stop();
        if let Err(failure) = self.launch() {
            panic!("etcd did not restart: {failure}");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Spawns etcd and waits for its health check; on failure kills it and returns why.
    fn launch(&self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open the etcd log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot open the etcd log: {e}"))?;
        let mut child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}. {INSTALL_HINT}", self.bin.display()))?;
        // The watchdog kills whatever pid this file names when the test binary dies.
        let _ = std::fs::write(self.dir.path().join("etcd.pid"), child.id().to_string());
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        loop {
            if healthy(addr) {
                *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("etcd exited with {status}\n{}", self.log_tail()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "etcd did not answer its health check within {START_DEADLINE:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of etcd's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = log.len().saturating_sub(4_000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!("etcd log (end):\n{}", &log[start..])
    }

    /// Starts a shell that waits for this process to end, then kills etcd and deletes its
    /// directory. Dropping the server kills the watchdog first.
    fn spawn_watchdog(&self) {
        let script = r#"pid=$1; dir=$2
while [ -e "/proc/$pid" ]; do sleep 1; done
kill -9 "$(cat "$dir/etcd.pid")" >/dev/null 2>&1
rm -rf "$dir""#;
        let mut watchdog = Command::new("sh");
        watchdog
            .args(["-c", script, "watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Without a watchdog etcd is still killed on drop; only a killed test leaks it.
        if let Ok(child) = watchdog.spawn() {
            *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.stop();
    }
}

/// Whether etcd at `addr` answers `GET /health` with `"health":"true"` (plain HTTP/1.0 over
/// std, so the harness needs no HTTP client).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains(r#""health":"true""#)
}

/// `DAEHWA_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on the PATH.
fn find_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("DAEHWA_ETCD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "DAEHWA_ETCD_BIN={} is not a file. {INSTALL_HINT}",
            bin.display()
        );
        return bin;
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.is_file() {
        return default;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no etcd binary at /usr/bin/etcd or on the PATH. {INSTALL_HINT}"))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
