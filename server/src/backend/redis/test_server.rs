//! A private Redis server for tests: the real `redis-server` (Debian package `redis-server`;
//! `DAEHWA_REDIS_BIN` overrides the binary) on a free port of 127.0.0.1, with no persistence,
//! so a test can kill it (`stop`) and start it again on the same port (`restart`) while its
//! clients keep their URL. A watchdog process kills it if the test binary dies without
//! dropping it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// What to run when the binary is missing.
const INSTALL_HINT: &str = "redis-server is needed for the Redis backend tests: install it \
    with `apt-get install -y redis-server` (or set DAEHWA_REDIS_BIN to the binary)";

/// A running `redis-server` owned by a test; killed on drop.
pub struct RedisServer {
    port: u16,
    process: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        let server = Self {
            port,
            process: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`, for `--presence` and `--bus`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): every key is lost, as in a crash without persistence.
    pub fn stop(&self) {
        if let Some(mut child) = self.lock(&self.process).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.lock(&self.watchdog).take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Starts the server again on the same port (empty), waiting until it answers.
    pub fn restart(&self) {
        self.stop();
        let bin = std::env::var("DAEHWA_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}. {INSTALL_HINT}"));
        let pid = child.id();
        *self.lock(&self.process) = Some(child);
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "while [ -e /proc/$1 ]; do sleep 1; done; kill -9 $2",
                "watchdog",
            ])
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(watchdog) = watchdog {
            *self.lock(&self.watchdog) = Some(watchdog);
        }
        self.wait_until_ready();
    }

    /// Sends one inline command and returns the raw reply (for tests reading INFO).
    pub fn command(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("write to redis");
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf).expect("read from redis");
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || complete_reply(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answered = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf)?;
                Ok(buf[..n].starts_with(b"+PONG"))
            });
            if answered.unwrap_or(false) {
                return;
            }
            if let Some(child) = self.lock(&self.process).as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited at start ({status}). {INSTALL_HINT}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock<'a>(&self, slot: &'a Mutex<Option<Child>>) -> std::sync::MutexGuard<'a, Option<Child>> {
        slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a RESP reply is complete: a simple line, or a bulk string with all its bytes.
fn complete_reply(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply[0] != b'$' {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    len < 0 || reply.len() >= end + 2 + len as usize + 2
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
