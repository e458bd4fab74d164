//! `signalcast.toml` with `SIGNALCAST_*` environment overrides. Every key has a default
//! (docs/configuration.md), so no file at all is the embedded default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::config::{EngineConfig, FeedConfig, KafkaConfig};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::conn::ConnConfig;
use crate::hub::HubConfig;

/// The whole configuration of `signalcast serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket (WSS with `[tls]`).
    pub listen: String,
    /// The producers' TCP feed.
    pub feed_listen: String,
    /// A listener of its own for `/metrics` (TLS with `[tls]`, like `listen`); when set,
    /// `listen` answers 404 for `/metrics`. Unset: `/metrics` is served on `listen`.
    pub metrics_listen: Option<String>,
    pub tls: Option<TlsConfig>,
    /// Hub shards; 0 = one per core.
    pub shards: usize,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub outbound_buffer_bytes: usize,
    pub max_message_bytes: usize,
    /// Answer a client's permessage-deflate offer (shared compression, no context
    /// takeover); false: every connection is uncompressed.
    pub permessage_deflate: bool,
    /// Opt-in: each compressed connection gets a compressor of its own that keeps its
    /// window across messages (fewer bytes, a compression per delivery and the
    /// compressor's memory per connection).
    pub deflate_context_takeover: bool,
    /// The window of those compressors, 9–15 bits (`server_max_window_bits`).
    pub deflate_window_bits: u8,
    pub write_timeout_ms: u64,
    pub heartbeat_timeout_secs: u64,
    pub max_subscriptions: usize,
    /// The most messages a SUBSCRIBE's `snapshot` may ask for.
    pub max_snapshot: usize,
    pub max_messages_per_sec: u32,
    pub price_interval_ms: u64,
    /// On shutdown, how long connections get to close after the drain notice.
    pub drain_timeout_secs: u64,
    /// Time a client gets to complete its TLS handshake and send its request headers,
    /// together; a slower one (slowloris) is disconnected.
    pub handshake_timeout_ms: u64,
    /// Client sockets open at once on the client listener, upgraded or not (0: no cap);
    /// past it a new one gets 503 and is closed.
    pub max_connections: usize,
    /// Client sockets that have not finished their upgrade yet, at once (0: no cap).
    pub max_unauthenticated: usize,
    /// The same, per peer address. Behind a load balancer every client has its address:
    /// the default admits 10,000 clients reconnecting through one at once.
    pub max_unauthenticated_per_ip: usize,
    /// Open WebSocket connections per client IP (the socket's peer: behind a proxy,
    /// the proxy's); 0 = no limit. More get HTTP 429 before the upgrade.
    pub max_connections_per_ip: usize,
    /// Open WebSocket connections per user (token `sub`) on this gateway; 0 = no limit.
    pub max_connections_per_user: usize,
    /// Browser `Origin`s allowed to open a WebSocket; empty = any. Requests without an
    /// Origin (bots, SDKs) are not affected; others get HTTP 403.
    pub allowed_origins: Vec<String>,
    /// SO_SNDBUF for client sockets; unset = the kernel's default (autotuned).
    pub socket_send_buffer: Option<usize>,
    /// Tier table; unset = the embedded fixtures/tiers.toml.
    pub policy_file: Option<PathBuf>,
    /// Producer keys; unset = the embedded fixtures/producers.toml (dev keys).
    pub producers_file: Option<PathBuf>,
    /// Accounts; unset = the embedded fixtures/accounts.toml.
    pub accounts_file: Option<PathBuf>,
    pub auth: AuthConfig,
    pub demo: DemoConfig,
    pub engine: EngineConfig,
    pub feed: FeedConfig,
    /// What this node runs (docs/deploy.md); `engine` and `gateway` need `[kafka]`.
    pub role: Role,
    pub kafka: KafkaConfig,
    /// The signal store of a single node (role `all`).
    pub store: StoreConfig,
    /// `POST /v1/signals` and `/v1/ticks` on nodes that run the engine.
    pub http_ingest: HttpIngestConfig,
    /// The one opt-in that lets a server listen on a non-loopback address while public
    /// development credentials are in force (the public dev secret, fixture producer
    /// keys and accounts, `/dev/tokens`, the demo producer). Anyone who can reach such
    /// a server can mint an enterprise token and publish signals. See
    /// [`Config::public_dev_credentials`].
    pub unsafe_public_dev_credentials: bool,
}

/// What a node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Engine and gateway in one process; Kafka optional (an extra way in).
    #[default]
    All,
    /// TCP feed and Kafka ingest, pipeline, routed signals to `signals.<tier>`; no
    /// WebSocket clients.
    Engine,
    /// WebSocket clients fed from `signals.<tier>`; no producers.
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Engine => "engine",
            Self::Gateway => "gateway",
        }
    }
}

/// Where a single node keeps every routed signal (docs/configuration.md, `[store]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Keep the store (a single node). Off: channels live in memory only, a restart
    /// starts new epochs (`recovered: false`), and ACKs mean "routed", not "stored"; for
    /// measuring what the store costs, not for production.
    pub enabled: bool,
    /// The data directory (`signals.db` and its lock); relative paths are taken from the
    /// working directory. One process per directory.
    pub data_dir: PathBuf,
    /// When a commit (and so an ACK) is on the disk: `full` fsyncs every batch, `process`
    /// leaves it to checkpoints (survives the process's crash, not the machine's).
    pub fsync: Fsync,
    /// Signals routed longer ago than this are pruned; 0 keeps them for ever.
    pub retention_days: u32,
    /// The most the store may grow to, in MiB (0: as far as the disk allows). Past it
    /// the node behaves as on a full disk: nothing more is routed or acknowledged.
    pub max_size_mb: u64,
    /// Scale-out gateways: the PostgreSQL signal store (`signalcast archive` fills it)
    /// that history is read from, with credentials that may only read.
    pub database_url: Option<String>,
    /// Verify the database server's certificate against this CA file (PEM).
    pub database_ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            data_dir: PathBuf::from("signalcast-data"),
            fsync: Fsync::Full,
            retention_days: 30,
            max_size_mb: 0,
            database_url: None,
            database_ca_file: None,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("enabled", &self.enabled)
            .field("data_dir", &self.data_dir)
            .field("fsync", &self.fsync)
            .field("retention_days", &self.retention_days)
            .field("max_size_mb", &self.max_size_mb)
            // The URL may hold a password.
            .field("database_url", &self.database_url.as_ref().map(|_| "<redacted>"))
            .field("database_ca_file", &self.database_ca_file)
            .finish()
    }
}

impl StoreConfig {
    pub fn settings(&self) -> store::Settings {
        store::Settings {
            durability: match self.fsync {
                Fsync::Full => store::Durability::Full,
                Fsync::Process => store::Durability::Process,
            },
            max_bytes: self.max_size_mb.saturating_mul(1 << 20),
        }
    }

    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0).then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

/// Bounds of HTTP ingest (docs/configuration.md, `[http_ingest]`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpIngestConfig {
    /// The largest request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Items (signals or ticks) per request; more gets 413.
    pub max_items: usize,
    /// Items a second per producer, with a burst of one second's worth; past it 429.
    pub items_per_sec: u32,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        Self { max_body_bytes: 1 << 20, max_items: 1_000, items_per_sec: 20_000 }
    }
}

/// See [`StoreConfig::fsync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    #[default]
    Full,
    Process,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often the two files are checked for a renewed certificate (served to new
    /// handshakes without a restart).
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// Serve the producers' TCP feed over TLS too, with the same certificate (API keys
    /// cross the network in HELLO).
    #[serde(default)]
    pub feed: bool,
}

fn default_reload_ms() -> u64 {
    5_000
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret of the embedded default. Public: dev only.
    pub dev_secret: String,
    /// Lifetime of tokens minted by `signalcast token` and printed at start.
    pub token_ttl_secs: u64,
    /// The accounts sidecar (`https://host:port`, or `http://` on loopback): EdDSA
    /// tokens checked against its JWKS, live entitlements from its change feed. Unset:
    /// the embedded default.
    pub accounts_url: Option<String>,
    /// The bearer token the sidecar expects from gateways (its `--gateway-token`).
    pub accounts_gateway_token: String,
    /// PEM file of the CA that signed the sidecar's certificate (https); re-read when
    /// it changes.
    pub accounts_ca_file: Option<std::path::PathBuf>,
    /// INSECURE: allow `http://` to a sidecar that is not on loopback (only where
    /// something else adds TLS, such as a service mesh).
    pub accounts_insecure_plain_http: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Replay the fixtures through the TCP feed so that signals flow at once.
    pub enabled: bool,
    /// Signals per second (ticks ride along).
    pub rate: f64,
    pub producer_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            feed_listen: "127.0.0.1:7000".into(),
            metrics_listen: None,
            tls: None,
            shards: 0,
            workers: 0,
            outbound_buffer_bytes: 1 << 20,
            max_message_bytes: 4_096,
            permessage_deflate: true,
            deflate_context_takeover: false,
            deflate_window_bits: 15,
            write_timeout_ms: 10_000,
            heartbeat_timeout_secs: 60,
            max_subscriptions: 16,
            max_snapshot: 100,
            max_messages_per_sec: 50,
            price_interval_ms: 20,
            drain_timeout_secs: 5,
            socket_send_buffer: None,
            handshake_timeout_ms: 5_000,
            max_connections: 100_000,
            max_unauthenticated: 16_384,
            max_unauthenticated_per_ip: 10_000,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            allowed_origins: Vec::new(),
            policy_file: None,
            producers_file: None,
            accounts_file: None,
            auth: AuthConfig::default(),
            demo: DemoConfig::default(),
            engine: EngineConfig::default(),
            feed: FeedConfig::default(),
            role: Role::All,
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            http_ingest: HttpIngestConfig::default(),
            unsafe_public_dev_credentials: false,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("dev_secret", &"<redacted>")
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("accounts_url", &self.accounts_url)
            .field("accounts_gateway_token", &"<redacted>")
            .field("accounts_ca_file", &self.accounts_ca_file)
            .field("accounts_insecure_plain_http", &self.accounts_insecure_plain_http)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            dev_secret: "signalcast-dev-secret-not-for-production".into(),
            token_ttl_secs: 24 * 3600,
            accounts_url: None,
            accounts_gateway_token: String::new(),
            accounts_ca_file: None,
            accounts_insecure_plain_http: false,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { enabled: true, rate: 20.0, producer_id: "demo".into() }
    }
}

/// `SIGNALCAST_*` variables that are not settings of `signalcast.toml`: read by a
/// binary's command line (`signalcast`, `signalcast-accounts`) or by the test and example
/// tooling. Loading the configuration leaves them alone, so a variable meant for one
/// command never stops another (docs/configuration.md, "Environment variables").
pub const NOT_SETTINGS: &[&str] = &[
    "SIGNALCAST_CONFIG",
    "SIGNALCAST_LOG",
    "SIGNALCAST_PRODUCER_KEY",
    "SIGNALCAST_ARCHIVE_DATABASE_URL",
    "SIGNALCAST_ARCHIVE_DATABASE_CA_FILE",
    "SIGNALCAST_ARCHIVE_METRICS_LISTEN",
    "SIGNALCAST_ACCOUNTS_DATABASE_URL",
    "SIGNALCAST_ACCOUNTS_LISTEN",
    "SIGNALCAST_ACCOUNTS_ADMIN_TOKEN",
    "SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN",
    "SIGNALCAST_ACCOUNTS_LOGIN_PERMITS",
    "SIGNALCAST_ACCOUNTS_KEK",
    "SIGNALCAST_ACCOUNTS_KEK_FILE",
    "SIGNALCAST_ACCOUNTS_DATABASE_CA_FILE",
    "SIGNALCAST_ACCOUNTS_TLS_CERT",
    "SIGNALCAST_ACCOUNTS_TLS_KEY",
    "SIGNALCAST_ACCOUNTS_INSECURE_PLAIN_HTTP",
    "SIGNALCAST_ACCOUNTS_ADMIN_LISTEN",
    "SIGNALCAST_ACCOUNTS_ADMIN_URL",
    "SIGNALCAST_BIN",
    "SIGNALCAST_URL",
    "SIGNALCAST_TOKEN",
];

/// Why the configuration could not be loaded: one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key nobody reads (a typo, most likely), with the closest key that exists.
    #[error("unknown setting {given}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown { given: String, suggestion: Option<String> },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then `SIGNALCAST_*` variables (`__` separates
    /// tables: `SIGNALCAST_ENGINE__RING_CAPACITY=50000`). Variables in [`NOT_SETTINGS`]
    /// are skipped; any other unknown key stops the load, named with its closest match.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut f = Figment::new();
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("SIGNALCAST_").split("__").filter(|key| {
            let full = format!("SIGNALCAST_{}", key.as_str().to_ascii_uppercase());
            !NOT_SETTINGS.contains(&full.as_str())
        });
        let config: Self = f.merge(env).extract().map_err(|e| explain(&e))?;
        let max_ms = engine::config::MAX_DURATION_MS;
        let durations_ms = [
            ("write_timeout_ms", config.write_timeout_ms),
            ("heartbeat_timeout_secs", config.heartbeat_timeout_secs.saturating_mul(1_000)),
            ("price_interval_ms", config.price_interval_ms),
            ("drain_timeout_secs", config.drain_timeout_secs.saturating_mul(1_000)),
            ("handshake_timeout_ms", config.handshake_timeout_ms),
            ("tls.reload_interval_ms", config.tls.as_ref().map_or(0, |t| t.reload_interval_ms)),
        ];
        if let Some((name, _)) = durations_ms.iter().find(|(_, ms)| *ms > max_ms) {
            return Err(ConfigError::Invalid(format!(
                "{name} is more than a duration setting may be (30 days, {max_ms} ms)"
            )));
        }
        if !(9..=15).contains(&config.deflate_window_bits) {
            return Err(ConfigError::Invalid(format!(
                "deflate_window_bits is {}: a compressor's window is 9 to 15 bits",
                config.deflate_window_bits
            )));
        }
        Ok(config)
    }

    /// How permessage-deflate offers are answered.
    pub fn deflate_policy(&self) -> crate::ws::deflate::Policy {
        use crate::ws::deflate::Policy;
        match (self.permessage_deflate, self.deflate_context_takeover) {
            (false, _) => Policy::Off,
            (true, false) => Policy::Shared,
            (true, true) => Policy::Context { window_bits: self.deflate_window_bits.clamp(9, 15) },
        }
    }

    /// Takes tokens and producer keys from the accounts sidecar.
    pub fn uses_sidecar(&self) -> bool {
        self.auth.accounts_url.is_some()
    }

    /// Tokens are signed with the HS256 secret everyone can read in this repository.
    pub fn public_dev_secret(&self) -> bool {
        !self.uses_sidecar() && self.auth.dev_secret == AuthConfig::default().dev_secret
    }

    /// The public development credentials this configuration puts in force, each with
    /// what to set instead. Empty for a production configuration.
    pub fn public_dev_credentials(&self) -> Vec<(&'static str, &'static str)> {
        if self.uses_sidecar() {
            return Vec::new(); // tokens, accounts and producer keys come from the sidecar
        }
        let mut v = Vec::new();
        if self.public_dev_secret() {
            v.push((
                "the public dev secret and /dev/tokens",
                "auth.accounts_url (SIGNALCAST_AUTH__ACCOUNTS_URL) for the accounts sidecar's tokens, \
                 or auth.dev_secret (SIGNALCAST_AUTH__DEV_SECRET) with 32 or more random bytes",
            ));
        }
        if self.accounts_file.is_none() {
            v.push((
                "the fixture accounts",
                "the accounts sidecar, or accounts_file (SIGNALCAST_ACCOUNTS_FILE)",
            ));
        }
        // What this node runs (a role that cannot run fails later, with its own error).
        let plan = crate::node::Plan::of(self).ok();
        if self.producers_file.is_none() && plan.is_none_or(|p| p.feed) {
            v.push((
                "the fixture producer keys",
                "the accounts sidecar, or producers_file (SIGNALCAST_PRODUCERS_FILE)",
            ));
        }
        if plan.is_some_and(|p| p.demo) {
            v.push(("the demo producer", "demo.enabled = false (SIGNALCAST_DEMO__ENABLED=false)"));
        }
        v
    }

    /// Checks that do not depend on where the server listens: a guessable HS256 secret,
    /// a missing gateway token for the sidecar.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        if self.uses_sidecar() {
            if self.auth.accounts_gateway_token.len() < 16 {
                return Err(ConfigError::Invalid(
                    "auth.accounts_gateway_token (SIGNALCAST_AUTH__ACCOUNTS_GATEWAY_TOKEN, \
                     --accounts-gateway-token) must be the sidecar's gateway token: at least 16 characters"
                        .into(),
                ));
            }
        } else if self.auth.dev_secret.len() < 32 {
            return Err(ConfigError::Invalid(format!(
                "auth.dev_secret is {} bytes: an HS256 secret needs at least 32",
                self.auth.dev_secret.len()
            )));
        }
        Ok(())
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            shards: self.shards,
            max_subscriptions: self.max_subscriptions,
            max_snapshot: self.max_snapshot,
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_secs),
            expiry_warning: Duration::from_secs(60),
            price_interval: Duration::from_millis(self.price_interval_ms.max(1)),
        }
    }

    pub fn admission(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            max_per_ip: self.max_connections_per_ip,
            max_per_user: self.max_connections_per_user,
            allowed_origins: self.allowed_origins.clone(),
        }
    }

    pub fn conn(&self) -> ConnConfig {
        ConnConfig {
            max_message: self.max_message_bytes,
            outbound_limit: self.outbound_buffer_bytes,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            max_messages_per_sec: self.max_messages_per_sec,
        }
    }
}

/// One line out of figment's error: for an unknown key, the key as the operator wrote
/// it (variable or file key) and the closest known one at the same level.
fn explain(e: &figment::Error) -> ConfigError {
    let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
    let mut path: Vec<String> = e.path.clone();
    if let figment::error::Kind::UnknownField(field, expected) = &e.kind {
        if path.last() == Some(field) {
            path.pop();
        }
        let render = |last: &str| {
            let mut keys = path.clone();
            keys.push(last.to_owned());
            if from_env {
                format!("SIGNALCAST_{}", keys.join("__").to_ascii_uppercase())
            } else {
                format!("`{}`", keys.join("."))
            }
        };
        let suggestion = expected
            .iter()
            .map(|k| (edit_distance(field, k), *k))
            .filter(|(d, k)| *d <= (k.len() / 2).max(2))
            .min()
            .map(|(_, k)| render(k));
        let mut given = render(field);
        if !from_env && let Some(file) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            given = format!("{given} in {file}");
        }
        return ConfigError::Unknown { given, suggestion };
    }
    ConfigError::Invalid(e.to_string().replace('\n', " "))
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The fixtures compiled into the binary, so that the embedded default runs from any
/// directory.
pub mod fixtures {
    pub const TIERS: &str = include_str!("../../fixtures/tiers.toml");
    pub const PRODUCERS: &str = include_str!("../../fixtures/producers.toml");
    pub const ACCOUNTS: &str = include_str!("../../fixtures/accounts.toml");
    pub const SIGNALS: &str = include_str!("../../fixtures/signals.jsonl");
    pub const TICKS: &str = include_str!("../../fixtures/ticks.jsonl");
}
