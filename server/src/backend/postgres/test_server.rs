//! A private PostgreSQL server for tests: real `initdb` and `pg_ctl` from the Debian packages
//! (`/usr/lib/postgresql/<version>/bin`, the highest version found; `DAEHWA_PG_BIN` overrides
//! the directory), in a temporary directory, on a free port of 127.0.0.1, with trust
//! authentication and its Unix socket in the same directory, so nothing outside the test is
//! touched. Missing binaries fail the test with the command that installs them.
//!
//! [`PgServer::shared`] gives every test of the binary one running server (started by the
//! first test that asks, stopped when the last test holding it ends), and
//! [`PgServer::create_database`] a database of its own, so tests run in parallel without
//! seeing each other's rows. [`PgServer::start`] starts a separate server for a test that
//! stops and restarts it.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, every PostgreSQL command
//! runs as the `postgres` OS user (`runuser -u postgres --`), in a directory owned by it.
//! Dropping the server stops it (`pg_ctl stop -m immediate`) and deletes the directory; a
//! watchdog process does the same if the test binary dies without dropping it (a kill, a
//! Ctrl-C).

use std::{
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use sqlx::Connection;
use tempfile::TempDir;

/// What to run when the binaries are missing.
const INSTALL_HINT: &str = "PostgreSQL server binaries are needed for the PostgreSQL backend \
    tests: install them with `apt-get install -y postgresql` (or set DAEHWA_PG_BIN to a \
    directory holding initdb and pg_ctl)";

/// A running PostgreSQL server owned by a test; stopped and deleted on drop.
pub struct PgServer {
    /// `initdb`, `pg_ctl` and `postgres` live here.
    bin: PathBuf,
    /// The cluster (`data/`), its log and its socket; owned by the `postgres` user under root.
    dir: TempDir,
    port: u16,
    /// Whether commands run through `runuser -u postgres --` (the tests run as root).
    as_postgres: bool,
    /// Stops the server if this process dies without dropping it.
    watchdog: Mutex<Option<Child>>,
}

impl PgServer {
    /// The server shared by the tests of this binary that are running now.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *slot = Arc::downgrade(&server);
        server
    }

    /// Creates a cluster in a new temporary directory and starts a server on a free port.
    /// Panics (failing the test) with an explanation when that is impossible.
    pub fn start() -> Self {
        let bin = find_bin_dir();
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let dir = tempfile::Builder::new()
            .prefix("daehwa-pg-")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        if as_postgres {
            let (uid, gid) = (postgres_id("-u"), postgres_id("-g"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory to the postgres user");
        }
        let mut server = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
            watchdog: Mutex::new(None),
        };
        let data = server.data_dir();
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        check(&output, "initdb");
        // A port found free may be taken before the server binds it: try a few.
        let mut last_failure = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.spawn_watchdog();
                    return server;
                }
                Err(failure) => last_failure = failure,
            }
        }
        panic!("PostgreSQL did not start: {last_failure}");
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database no other test uses and returns its URL.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test server");
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        admin.close().await.expect("close the admin connection");
        self.url(&name)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        // Stopping a stopped server fails harmlessly; there is nothing else to do here.
        drop(output);
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&self) {
        if let Err(failure) = self.pg_ctl_start() {
            panic!("PostgreSQL did not restart: {failure}");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running `program` from the server's bin directory, as `postgres` under root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("{}\nserver log:\n{log}", describe(&output)))
    }

    /// Starts a shell that waits for this process to end, then stops the server and deletes
    /// its directory. Dropping the server kills it first.
    fn spawn_watchdog(&self) {
        let script = r#"pid=$1; dir=$2; shift 2
while [ -e "/proc/$pid" ]; do sleep 1; done
"$@" >/dev/null 2>&1
rm -rf "$dir""#;
        let stop = self.command("pg_ctl");
        let mut watchdog = Command::new("sh");
        watchdog
            .args(["-c", script, "watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .arg(stop.get_program())
            .args(stop.get_args())
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Without a watchdog the server is still stopped on drop; only a killed test leaks it.
        if let Ok(child) = watchdog.spawn() {
            *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        }
    }
}

impl Drop for PgServer {
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

/// The bin directory of the highest PostgreSQL version installed (or `DAEHWA_PG_BIN`).
fn find_bin_dir() -> PathBuf {
    let has_tools = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(dir) = std::env::var_os("DAEHWA_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            has_tools(&dir),
            "DAEHWA_PG_BIN={} lacks initdb, pg_ctl or postgres. {INSTALL_HINT}",
            dir.display()
        );
        return dir;
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten();
    let best = versions
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .max();
    match best {
        Some((_, bin)) => bin,
        None => panic!(
            "no /usr/lib/postgresql/<version>/bin with initdb, pg_ctl and postgres. {INSTALL_HINT}"
        ),
    }
}

/// `id -u postgres` or `id -g postgres`.
fn postgres_id(flag: &str) -> u32 {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    check(
        &output,
        "id postgres (the postgres OS user comes with the postgresql package)",
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

/// `runuser`, which is in sbin, which may not be on the PATH.
fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[track_caller]
fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        describe(output)
    );
}
