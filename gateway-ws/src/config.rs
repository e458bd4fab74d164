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
    pub tls: Option<TlsConfig>,
    /// Hub shards; 0 = one per core.
    pub shards: usize,
    /// Tokio worker threads; 0 = one per core.
    pub workers: usize,
    pub outbound_buffer_bytes: usize,
    pub max_message_bytes: usize,
    pub write_timeout_ms: u64,
    pub heartbeat_timeout_secs: u64,
    pub max_subscriptions: usize,
    pub max_messages_per_sec: u32,
    pub price_interval_ms: u64,
    /// On shutdown, how long connections get to close after the drain notice.
    pub drain_timeout_secs: u64,
    /// Time a client gets to complete its TLS handshake and send its request headers;
    /// a slower one (slowloris) is disconnected.
    pub handshake_timeout_ms: u64,
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
    /// The accounts sidecar (`http://host:port`): EdDSA tokens checked against its
    /// JWKS, live entitlements from its change feed. Unset: the embedded default.
    pub accounts_url: Option<String>,
    /// The bearer token the sidecar expects from gateways (its `--gateway-token`).
    pub accounts_gateway_token: String,
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
            tls: None,
            shards: 0,
            workers: 0,
            outbound_buffer_bytes: 1 << 20,
            max_message_bytes: 4_096,
            write_timeout_ms: 10_000,
            heartbeat_timeout_secs: 60,
            max_subscriptions: 16,
            max_messages_per_sec: 50,
            price_interval_ms: 20,
            drain_timeout_secs: 5,
            socket_send_buffer: None,
            handshake_timeout_ms: 10_000,
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
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self { enabled: true, rate: 20.0, producer_id: "demo".into() }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `SIGNALCAST_*` variables (`__` separates
    /// tables: `SIGNALCAST_ENGINE__RING_CAPACITY=50000`).
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut f = Figment::new();
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(Env::prefixed("SIGNALCAST_").split("__").ignore(&["config", "log"]))
            .extract()
            .map_err(Box::new)
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            shards: self.shards,
            max_subscriptions: self.max_subscriptions,
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

/// The fixtures compiled into the binary, so that the embedded default runs from any
/// directory.
pub mod fixtures {
    pub const TIERS: &str = include_str!("../../fixtures/tiers.toml");
    pub const PRODUCERS: &str = include_str!("../../fixtures/producers.toml");
    pub const ACCOUNTS: &str = include_str!("../../fixtures/accounts.toml");
    pub const SIGNALS: &str = include_str!("../../fixtures/signals.jsonl");
    pub const TICKS: &str = include_str!("../../fixtures/ticks.jsonl");
}
