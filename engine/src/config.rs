//! Engine settings. Every field has a default (listed in docs/configuration.md); the
//! gateway's `signalcast.toml` embeds these tables as `[engine]` and `[feed]`.

use std::time::Duration;

use serde::Deserialize;

/// What enrichment does with a signal whose symbol has no tick yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingTick {
    /// Route it with `"market": null`.
    #[default]
    Pass,
    /// Drop it (counted as `missing_tick`).
    Drop,
}

/// The pipeline and channel logs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Items (signals and ticks) waiting between ingest and the stage. When full,
    /// producers' sockets stop being read: back-pressure, nothing dropped.
    pub ingest_queue: usize,
    /// Encoded messages kept per channel for resume.
    pub ring_capacity: usize,
    /// Signal ids remembered for de-duplication; a duplicate older than this many
    /// signals is not recognised.
    pub dedup_window: usize,
    /// Distinct (symbol, exchange) pairs the tick book holds; ticks for further new
    /// symbols are dropped and counted.
    pub max_symbols: usize,
    /// Messages waiting in one delayed view; past it the oldest is dropped from that
    /// view (counted; delayed readers are told they lost data).
    pub delay_capacity: usize,
    /// Largest `analysis` JSON accepted, in bytes.
    pub max_analysis_bytes: usize,
    pub missing_tick: MissingTick,
    /// A tick stamped more than this far ahead of the engine's clock is dropped
    /// (`future_tick`): its symbol would otherwise refuse every real tick until a
    /// restart.
    pub max_tick_ahead_ms: u64,
    /// Routed signals whose outcome is tracked at once (docs/outcomes.md); past it a
    /// signal is routed and stored but stays open (counted,
    /// `signalcast_outcomes_untracked_total`). 0 turns outcome tracking off.
    pub max_open_signals: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ingest_queue: 65_536,
            ring_capacity: 10_000,
            dedup_window: 65_536,
            max_symbols: 65_536,
            delay_capacity: 65_536,
            max_analysis_bytes: 4_096,
            missing_tick: MissingTick::Pass,
            max_tick_ahead_ms: 10_000,
            max_open_signals: 200_000,
        }
    }
}

/// The producers' TCP feed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Time allowed between connect and a valid HELLO.
    #[serde(with = "millis", rename = "handshake_timeout_ms")]
    pub handshake_timeout: Duration,
    /// A producer that sends nothing (not even HEARTBEAT) for this long is closed.
    #[serde(with = "millis", rename = "idle_timeout_ms")]
    pub idle_timeout: Duration,
    /// Time allowed for one write to a producer (WELCOME, ACK, ERROR).
    #[serde(with = "millis", rename = "write_timeout_ms")]
    pub write_timeout: Duration,
    /// Authenticated producer connections at once; more get ERROR
    /// `too_many_connections` after their HELLO.
    pub max_connections: usize,
    /// Connections that have not sent a valid HELLO yet, at once (0: no cap): past it a
    /// new connection is closed at once, so idle sockets cannot hold producers' places.
    pub max_unauthenticated: usize,
    /// The same, per peer address.
    pub max_unauthenticated_per_ip: usize,
    /// An ACK goes out at most this often, unless `ack_every` signals are waiting.
    #[serde(with = "millis", rename = "ack_interval_ms")]
    pub ack_interval: Duration,
    pub ack_every: u64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            max_connections: 1_024,
            max_unauthenticated: 1_024,
            max_unauthenticated_per_ip: 256,
            ack_interval: Duration::from_millis(1),
            ack_every: 256,
        }
    }
}

/// The longest duration a setting may name: 30 days. Timers are the clock plus the
/// setting, and a clock plus `u64::MAX` ms does not exist (it would panic at runtime).
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3_600 * 1_000;

/// Durations as integer milliseconds in config files.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = u64::deserialize(d)?;
        if ms > super::MAX_DURATION_MS {
            return Err(D::Error::custom(format!(
                "{ms} ms is more than a duration setting may be (30 days, {} ms)",
                super::MAX_DURATION_MS
            )));
        }
        Ok(Duration::from_millis(ms))
    }
}

/// Kafka: ingest from `raw-signals` / `market-data` and the scale-out roles
/// (docs/deploy.md). Off unless `brokers` is set. `Debug` hides the values of client
/// properties that hold secrets (`sasl.password`, `ssl.key.password`, …).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`; empty = no Kafka.
    pub brokers: String,
    /// Consumer group of engine nodes on `raw-signals` and `market-data`.
    pub group_id: String,
    pub raw_signals_topic: String,
    pub market_data_topic: String,
    /// Poison records go here, with the reason in headers.
    pub dlq_topic: String,
    /// Routed signals go to `<prefix><tier>` (one partition each: offset + 1 = seq).
    pub signals_topic_prefix: String,
    /// A dead engine node's partitions move to the others after this long.
    #[serde(with = "millis", rename = "session_timeout_ms")]
    pub session_timeout: std::time::Duration,
    /// How often routed offsets are committed; a crash re-reads at most this much
    /// (duplicates are removed by id).
    #[serde(with = "millis", rename = "commit_interval_ms")]
    pub commit_interval: std::time::Duration,
    /// The longest a consumer's fetch waits at the broker for records (librdkafka's
    /// `fetch.wait.max.ms`): a bound on the hop's latency where the broker does not
    /// answer early.
    #[serde(with = "millis", rename = "fetch_wait_max_ms")]
    pub fetch_wait_max: std::time::Duration,
    /// Partitions for the topics signalcast creates when missing (`raw-signals`,
    /// `market-data`, the DLQ); `signals.<tier>` always get one.
    pub partitions: i32,
    /// Gateway role: a resume from before the ring is read back from the topic when it
    /// asks for at most this many messages; deeper ones get `recovered: false`.
    pub history_max_messages: u64,
    /// `raw-signals` records must carry a producer id and an HMAC of the record made
    /// with that producer's key (docs/kafka.md); unsigned or badly signed ones go to
    /// the DLQ. `false` only where the broker's ACLs alone decide who may write.
    pub require_signed_signals: bool,
    /// A signed record whose signing time is older than this when it is consumed goes
    /// to the DLQ (`stale_signature`): the bound on replaying a captured record.
    #[serde(with = "millis", rename = "signature_max_age_ms")]
    pub signature_max_age: std::time::Duration,
    /// Gateway role: the largest `signals.<tier>` value relayed; larger ones are
    /// dropped and counted. Each ring entry is at most this (plus the envelope).
    pub relay_max_record_bytes: usize,
    /// How long a poison record's copy to the DLQ is tried before it is given up
    /// (counted, logged) and the partition moves on; permanent errors give up at once.
    #[serde(with = "millis", rename = "dlq_timeout_ms")]
    pub dlq_timeout: std::time::Duration,
    /// More librdkafka properties (e.g. `security.protocol`), passed as they are.
    pub client: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "signalcast-engine".into(),
            raw_signals_topic: "raw-signals".into(),
            market_data_topic: "market-data".into(),
            dlq_topic: "raw-signals.dlq".into(),
            signals_topic_prefix: "signals.".into(),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(1000),
            fetch_wait_max: Duration::from_millis(10),
            partitions: 6,
            history_max_messages: 50_000,
            require_signed_signals: true,
            signature_max_age: Duration::from_secs(600),
            relay_max_record_bytes: 8192,
            dlq_timeout: Duration::from_secs(30),
            client: std::collections::BTreeMap::new(),
        }
    }
}

/// A librdkafka property whose value is a secret: written as `<redacted>` by `Debug`.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "ssl.key.pem", "token", "sasl.jaas.config"].iter().any(|s| key.contains(s))
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client: std::collections::BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("raw_signals_topic", &self.raw_signals_topic)
            .field("market_data_topic", &self.market_data_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("signals_topic_prefix", &self.signals_topic_prefix)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("fetch_wait_max", &self.fetch_wait_max)
            .field("partitions", &self.partitions)
            .field("history_max_messages", &self.history_max_messages)
            .field("require_signed_signals", &self.require_signed_signals)
            .field("signature_max_age", &self.signature_max_age)
            .field("relay_max_record_bytes", &self.relay_max_record_bytes)
            .field("dlq_timeout", &self.dlq_timeout)
            .field("client", &client)
            .finish()
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// The topic of `signals_<tier>`.
    pub fn signals_topic(&self, tier: crate::model::Tier) -> String {
        format!("{}{}", self.signals_topic_prefix, tier.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_debug_hides_secret_client_properties() {
        let mut k = KafkaConfig { brokers: "kafka:9092".into(), ..KafkaConfig::default() };
        for (key, value) in [
            ("sasl.password", "hunter2-sasl"),
            ("ssl.key.password", "hunter2-key"),
            ("sasl.oauthbearer.client.secret", "hunter2-oauth"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "signalcast"),
        ] {
            k.client.insert(key.into(), value.into());
        }
        let shown = format!("{k:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL") && shown.contains("signalcast") && shown.contains("kafka:9092"));
        assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
    }
}
