//! Server configuration: the only module that reads flags, environment and files.
//!
//! Precedence: built-in defaults ← TOML file (`--config`) ← `DAEHWA_<NAME>` environment ←
//! command-line flags. Every setting has all three spellings: flag `--offline-after`, env
//! `DAEHWA_OFFLINE_AFTER`, TOML key `offline_after`. The result is validated once, before any
//! port is bound, and unknown TOML keys are errors (a typo must not silently do nothing).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

/// Everything a server needs to start. Build with [`Config::load`] or [`Config::for_tests`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where SQLite, the message log and the signing key live.
    pub data_dir: PathBuf,
    /// Accounts, friends and groups: `sqlite://` (in the data dir), `sqlite://PATH`, or
    /// `postgres://USER@HOST:PORT/DB`.
    pub directory: String,
    /// Message history: `embedded` (redb in the data dir), `postgres://USER@HOST:PORT/DB` or
    /// `tikv://PD1:PORT,PD2:PORT`.
    pub store: String,
    /// Who is online and where their streams are: `memory` (one server) or `redis://HOST:PORT`
    /// (a cluster; needs `bus` on the same kind).
    pub presence: String,
    /// Envelopes between chat servers: `local` (one server) or `redis://HOST:PORT`.
    pub bus: String,
    /// Which servers exist and their Snowflake worker ids: `static` (this process, with
    /// `worker_id`) or `etcd://HOST:PORT[,HOST:PORT...]` (leased worker ids).
    pub registry: String,
    /// How long an etcd lease outlives a server that stopped renewing it.
    #[serde(with = "humantime_serde")]
    pub registry_lease_ttl: Duration,
    /// The services this server runs: any of `api` (Auth, User, Group, Discovery), `chat`
    /// (Chat: streams, sends, sync) and `presence` (Presence).
    pub roles: Vec<String>,
    /// Shifts the clock of the message id generator by this many ms. For tests of clock skew
    /// between servers; leave 0.
    pub id_clock_offset_ms: i64,
    /// The embedded gateway (WebSocket `/v1/ws`, gRPC-web) listen address; off when unset.
    pub gateway_listen: Option<SocketAddr>,
    /// Origins allowed to use gRPC-web cross-origin (`*`: any); empty: same origin only.
    pub gateway_allowed_origins: Vec<String>,
    /// Prometheus `/metrics` listen address; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// This server's name in Discovery and logs.
    pub server_id: String,
    /// The gRPC endpoint clients should use (defaults to the bound address).
    pub advertise: Option<String>,
    /// Snowflake worker id, 0..=1023, unique among live servers.
    pub worker_id: u16,
    /// A user with no heartbeat and no stream activity for this long is offline.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// How often clients should send heartbeats; also the grace before a user whose last
    /// stream closed is shown offline.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Lifetime of access tokens.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// File holding the 32-byte token signing key; default `<data_dir>/signing.key`, created
    /// on first start.
    pub signing_key_file: Option<PathBuf>,
    /// Largest message content (text bytes, ciphertext bytes).
    pub max_content_bytes: usize,
    /// Sustained messages per second per user.
    pub send_rate: f64,
    /// Burst of messages a user may send above the sustained rate.
    pub send_burst: u32,
    /// Largest group, owner included.
    pub max_group_members: usize,
    /// Live streams per user: Connect and Subscribe together, and WatchPresence apart.
    pub max_streams_per_user: usize,
    /// Events queued per stream before the stream is closed as too slow.
    pub outbox_capacity: usize,
    /// Largest page of SyncMessages and GetHistory.
    pub max_page_size: usize,
    /// Webhook URL for push notifications to offline users; off when unset.
    pub push_webhook_url: Option<String>,
    /// Include message text in push notifications (off: only ids).
    pub push_include_text: bool,
    /// How long shutdown waits for streams and queues to drain.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            directory: "sqlite://".to_owned(),
            store: "embedded".to_owned(),
            presence: "memory".to_owned(),
            bus: "local".to_owned(),
            registry: "static".to_owned(),
            registry_lease_ttl: Duration::from_secs(10),
            roles: ALL_ROLES.iter().map(|r| (*r).to_owned()).collect(),
            id_clock_offset_ms: 0,
            gateway_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            gateway_allowed_origins: Vec::new(),
            metrics_listen: None,
            server_id: "chatd-1".to_owned(),
            advertise: None,
            worker_id: 0,
            offline_after: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            signing_key_file: None,
            max_content_bytes: 64 * 1024,
            send_rate: 50.0,
            send_burst: 100,
            max_group_members: 10_000,
            max_streams_per_user: 16,
            outbox_capacity: 1024,
            max_page_size: 1000,
            push_webhook_url: None,
            push_include_text: false,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Parses flags and environment (and the TOML file they name), then validates.
    pub fn load() -> anyhow::Result<Self> {
        Self::from_flags(Flags::parse())
    }

    /// Applies parsed flags (which clap already merged with `DAEHWA_*` env) over the TOML file
    /// over the defaults.
    pub fn from_flags(flags: Flags) -> anyhow::Result<Self> {
        let mut config = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("bad config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        flags.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Defaults suited to tests: port 0, the given data dir, short timeouts.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data_dir.into(),
            send_rate: 10_000.0,
            send_burst: 10_000,
            shutdown_grace: Duration::from_secs(5),
            ..Self::default()
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("invalid configuration: {what}"))
            }
        };
        check(self.worker_id <= 1023, "worker_id must be 0..=1023")?;
        check(!self.server_id.is_empty(), "server_id must not be empty")?;
        check(
            self.heartbeat_interval > Duration::ZERO,
            "heartbeat_interval must be positive",
        )?;
        check(
            self.offline_after > self.heartbeat_interval,
            "offline_after must be longer than heartbeat_interval",
        )?;
        check(
            self.access_token_ttl >= Duration::from_secs(1),
            "access_token_ttl must be at least 1s",
        )?;
        check(
            self.refresh_token_ttl > self.access_token_ttl,
            "refresh_token_ttl must be longer than access_token_ttl",
        )?;
        check(
            self.max_content_bytes > 0 && self.max_content_bytes <= 4 * 1024 * 1024,
            "max_content_bytes must be 1..=4194304",
        )?;
        check(
            self.send_rate > 0.0 && self.send_burst >= 1,
            "send_rate and send_burst must be positive",
        )?;
        check(
            self.max_group_members >= 2,
            "max_group_members must be at least 2",
        )?;
        check(
            self.max_streams_per_user >= 1,
            "max_streams_per_user must be at least 1",
        )?;
        check(
            self.outbox_capacity >= 16,
            "outbox_capacity must be at least 16",
        )?;
        check(self.max_page_size >= 1, "max_page_size must be at least 1")?;
        self.directory_backend()?;
        self.store_backend()?;
        let clustered = self.cluster_backends()?;
        check(
            self.registry_lease_ttl >= Duration::from_secs(2),
            "registry_lease_ttl must be at least 2s",
        )?;
        check(!self.roles.is_empty(), "roles must name at least one role")?;
        if let Some(bad) = self.roles.iter().find(|r| !ALL_ROLES.contains(&r.as_str())) {
            return Err(anyhow::anyhow!(
                "invalid configuration: unknown role {bad:?}: expected api, chat or presence"
            ));
        }
        check(
            clustered.0.is_some() == clustered.1.is_some(),
            "presence and bus must both be redis://... (a cluster) or memory and local (one server)",
        )?;
        check(
            clustered.0.is_none() || self.registry_endpoints()?.is_some(),
            "a cluster (presence and bus on redis://) needs registry = etcd://... so that no two \
             servers share a message id worker id",
        )?;
        if let Some(url) = &self.push_webhook_url {
            check(
                url.starts_with("http://"),
                "push_webhook_url must be an http:// URL (TLS is not built in yet)",
            )?;
        }
        Ok(())
    }

    /// Where the directory lives, parsed from `directory`.
    pub fn directory_backend(&self) -> anyhow::Result<DirectoryBackend> {
        let url = self.directory.trim();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = if path.is_empty() {
                self.data_dir.join("directory.sqlite3")
            } else {
                PathBuf::from(path)
            };
            return Ok(DirectoryBackend::Sqlite(path));
        }
        if is_postgres(url) {
            return Ok(DirectoryBackend::Postgres(url.to_owned()));
        }
        Err(anyhow::anyhow!(
            "invalid configuration: directory {url:?}: expected sqlite://[PATH] or postgres://..."
        ))
    }

    /// Where messages live, parsed from `store`.
    pub fn store_backend(&self) -> anyhow::Result<StoreBackend> {
        let url = self.store.trim();
        if url == "embedded" {
            return Ok(StoreBackend::Embedded(self.data_dir.join("messages.redb")));
        }
        if is_postgres(url) {
            return Ok(StoreBackend::Postgres(url.to_owned()));
        }
        if let Some(endpoints) = url.strip_prefix("tikv://") {
            let endpoints = split_endpoints(endpoints);
            if endpoints.is_empty() {
                return Err(anyhow::anyhow!(
                    "invalid configuration: store {url:?}: tikv:// needs at least one PD endpoint"
                ));
            }
            return Ok(StoreBackend::Tikv(endpoints));
        }
        Err(anyhow::anyhow!(
            "invalid configuration: store {url:?}: expected embedded, postgres://... or tikv://PD,..."
        ))
    }

    /// The shared presence store and bus (Redis URLs), `None` for the in-process ones.
    pub fn cluster_backends(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        let pick = |value: &str, local: &str, what: &str| match value.trim() {
            v if v == local => Ok(None),
            v if v.starts_with("redis://") => Ok(Some(v.to_owned())),
            v => Err(anyhow::anyhow!(
                "invalid configuration: {what} {v:?}: expected {local} or redis://HOST:PORT"
            )),
        };
        Ok((
            pick(&self.presence, "memory", "presence")?,
            pick(&self.bus, "local", "bus")?,
        ))
    }

    /// The etcd endpoints (`http://HOST:PORT`) of the registry; `None` for `static`.
    pub fn registry_endpoints(&self) -> anyhow::Result<Option<Vec<String>>> {
        let url = self.registry.trim();
        if url == "static" {
            return Ok(None);
        }
        crate::backend::etcd::endpoints_from_url(url)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("invalid configuration: registry: {e} (or static)"))
    }

    /// Whether this server runs `role` (`api`, `chat` or `presence`).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The largest encoded gRPC request the server accepts: content plus envelope.
    pub fn max_request_bytes(&self) -> usize {
        self.max_content_bytes + 64 * 1024
    }
}

/// Every role, in the order they are listed.
pub const ALL_ROLES: &[&str] = &["api", "chat", "presence"];

fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The directory backend chosen by configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryBackend {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database URL.
    Postgres(String),
}

/// The message store chosen by configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// A redb file.
    Embedded(PathBuf),
    /// A PostgreSQL database URL.
    Postgres(String),
    /// TiKV, through these PD endpoints (`HOST:PORT`).
    Tikv(Vec<String>),
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Command-line flags of `chatd`; each also reads `DAEHWA_<NAME>`.
#[derive(Debug, Parser, Default)]
#[command(name = "chatd", version, about = "Daehwa chat server")]
pub struct Flags {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "DAEHWA_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "DAEHWA_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "DAEHWA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite:// (default), sqlite://PATH or postgres://...
    #[arg(long, env = "DAEHWA_DIRECTORY")]
    pub directory: Option<String>,
    /// embedded (default), postgres://... or tikv://PD1:PORT,PD2:PORT
    #[arg(long, env = "DAEHWA_STORE")]
    pub store: Option<String>,
    /// memory (default) or redis://HOST:PORT
    #[arg(long, env = "DAEHWA_PRESENCE")]
    pub presence: Option<String>,
    /// local (default) or redis://HOST:PORT
    #[arg(long, env = "DAEHWA_BUS")]
    pub bus: Option<String>,
    /// static (default) or etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long, env = "DAEHWA_REGISTRY")]
    pub registry: Option<String>,
    /// e.g. 10s
    #[arg(long, env = "DAEHWA_REGISTRY_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub registry_lease_ttl: Option<Duration>,
    /// Comma-separated: api,chat,presence (default all)
    #[arg(long, env = "DAEHWA_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// Testing only: shifts the message id clock by this many ms.
    #[arg(
        long,
        env = "DAEHWA_ID_CLOCK_OFFSET_MS",
        allow_hyphen_values = true,
        hide = true
    )]
    pub id_clock_offset_ms: Option<i64>,
    /// Where the embedded gateway listens (default 127.0.0.1:8080).
    #[arg(long, env = "DAEHWA_GATEWAY_LISTEN")]
    pub gateway_listen: Option<SocketAddr>,
    /// Run without the embedded gateway.
    #[arg(long, env = "DAEHWA_NO_GATEWAY")]
    pub no_gateway: bool,
    /// Comma-separated origins allowed to use gRPC-web cross-origin (`*`: any).
    #[arg(long, env = "DAEHWA_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub gateway_allowed_origins: Option<Vec<String>>,
    #[arg(long, env = "DAEHWA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "DAEHWA_SERVER_ID")]
    pub server_id: Option<String>,
    #[arg(long, env = "DAEHWA_ADVERTISE")]
    pub advertise: Option<String>,
    #[arg(long, env = "DAEHWA_WORKER_ID")]
    pub worker_id: Option<u16>,
    /// e.g. 30s
    #[arg(long, env = "DAEHWA_OFFLINE_AFTER", value_parser = humantime::parse_duration)]
    pub offline_after: Option<Duration>,
    /// e.g. 5s
    #[arg(long, env = "DAEHWA_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    #[arg(long, env = "DAEHWA_ACCESS_TOKEN_TTL", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Option<Duration>,
    #[arg(long, env = "DAEHWA_REFRESH_TOKEN_TTL", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Option<Duration>,
    #[arg(long, env = "DAEHWA_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    #[arg(long, env = "DAEHWA_MAX_CONTENT_BYTES")]
    pub max_content_bytes: Option<usize>,
    #[arg(long, env = "DAEHWA_SEND_RATE")]
    pub send_rate: Option<f64>,
    #[arg(long, env = "DAEHWA_SEND_BURST")]
    pub send_burst: Option<u32>,
    #[arg(long, env = "DAEHWA_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    #[arg(long, env = "DAEHWA_MAX_STREAMS_PER_USER")]
    pub max_streams_per_user: Option<usize>,
    #[arg(long, env = "DAEHWA_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    #[arg(long, env = "DAEHWA_MAX_PAGE_SIZE")]
    pub max_page_size: Option<usize>,
    #[arg(long, env = "DAEHWA_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    #[arg(long, env = "DAEHWA_PUSH_INCLUDE_TEXT")]
    pub push_include_text: Option<bool>,
    #[arg(long, env = "DAEHWA_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
}

impl Flags {
    fn apply(self, c: &mut Config) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = Some(v); } )* };
        }
        set!(
            listen,
            data_dir,
            directory,
            store,
            presence,
            bus,
            registry,
            registry_lease_ttl,
            roles,
            id_clock_offset_ms,
            server_id,
            worker_id,
            offline_after,
            heartbeat_interval,
            access_token_ttl,
            refresh_token_ttl,
            max_content_bytes,
            send_rate,
            send_burst,
            max_group_members,
            max_streams_per_user,
            outbox_capacity,
            max_page_size,
            push_include_text,
            shutdown_grace
        );
        set_opt!(
            metrics_listen,
            advertise,
            signing_key_file,
            push_webhook_url,
            gateway_listen
        );
        set!(gateway_allowed_origins);
        // --no-gateway wins over any listen address from the file or the environment.
        if self.no_gateway {
            c.gateway_listen = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chatd.toml");
        std::fs::write(&file, "offline_after = \"12s\"\nmax_group_members = 50\n").unwrap();
        let flags = Flags::try_parse_from([
            "chatd",
            "--config",
            file.to_str().unwrap(),
            "--max-group-members",
            "7",
        ])
        .unwrap();
        let config = Config::from_flags(flags).unwrap();
        assert_eq!(config.offline_after, Duration::from_secs(12));
        assert_eq!(config.max_group_members, 7);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chatd.toml");
        std::fs::write(&file, "ofline_after = \"12s\"\n").unwrap();
        let flags = Flags::try_parse_from(["chatd", "--config", file.to_str().unwrap()]).unwrap();
        assert!(
            Config::from_flags(flags)
                .unwrap_err()
                .to_string()
                .contains("ofline_after")
        );
        let flags = Flags::try_parse_from(["chatd", "--worker-id", "5000"]).unwrap();
        assert!(Config::from_flags(flags).is_err());
    }

    #[test]
    fn a_cluster_needs_both_redis_backends_and_etcd() {
        let parse = |args: &[&str]| {
            let flags = Flags::try_parse_from(["chatd"].iter().chain(args)).unwrap();
            Config::from_flags(flags).map_err(|e| e.to_string())
        };
        let redis = ["--presence", "redis://r:6379", "--bus", "redis://r:6379"];
        let err = parse(&redis).unwrap_err();
        assert!(err.contains("etcd"), "{err}");
        let err = parse(&["--presence", "redis://r:6379"]).unwrap_err();
        assert!(err.contains("both"), "{err}");
        let config = parse(&[&redis[..], &["--registry", "etcd://e1:2379,e2:2379"]].concat())
            .expect("a complete cluster configuration");
        assert_eq!(
            config.registry_endpoints().unwrap(),
            Some(vec![
                "http://e1:2379".to_owned(),
                "http://e2:2379".to_owned()
            ])
        );
        let err = parse(&["--roles", "api,chatter"]).unwrap_err();
        assert!(err.contains("chatter"), "{err}");
        assert_eq!(
            parse(&["--roles", "api,presence"]).unwrap().roles,
            vec!["api", "presence"]
        );
    }
}
