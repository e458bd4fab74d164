//! Kafka: the second way in (`raw-signals`, `market-data`) and the backbone of scale-out.
//!
//! - [`value`]: record values (JSON or rkyv) to signals and ticks, and the check of a
//!   relayed `signals.<tier>` value; sans-IO, always built.
//! - [`signing`]: the producer signature `raw-signals` records carry; sans-IO.
//! - `ingest` (engine and single-node roles): the `signalcast-engine` consumer group on
//!   `raw-signals` and `market-data` into the stage; poison records to the DLQ; offsets
//!   stored only when the stage says the records before them are routed.
//! - `publish` (engine role): the stage's sink, one record per routed signal on
//!   `signals.<tier>` (one partition: offset + 1 is the channel seq on every gateway).
//! - `relay` (gateway role): `signals.<tier>` and `market-data` into a stage that only
//!   appends: every gateway builds the same channel logs.
//! - `follow` (engine role): every `signals.<tier>` record back into the stage, so that
//!   open signals follow their symbols' partitions between engine nodes.
//! - `history` (gateway role): resumes from before the ring, read back by offset.
//!
//! Everything but [`value`], [`signing`] and [`KafkaStats`] needs the `kafka` feature (librdkafka).

pub mod signing;
pub mod value;

#[cfg(feature = "kafka")]
mod client;
#[cfg(feature = "kafka")]
mod follow;
#[cfg(feature = "kafka")]
mod history;
#[cfg(feature = "kafka")]
mod ingest;
#[cfg(feature = "kafka")]
mod publish;
#[cfg(feature = "kafka")]
mod relay;

#[cfg(feature = "kafka")]
pub use client::{KafkaError, check_brokers, client_config, ensure_topics, epochs, recent_ids};
#[cfg(feature = "kafka")]
pub use follow::spawn_follower;
#[cfg(feature = "kafka")]
pub use history::KafkaHistory;
#[cfg(feature = "kafka")]
pub use ingest::{IngestContext, run_ingest};
#[cfg(feature = "kafka")]
pub use publish::KafkaSink;
#[cfg(feature = "kafka")]
pub use rdkafka;
#[cfg(feature = "kafka")]
pub use relay::{routed as routed_record, spawn_relay};

/// The producer a `signals.<tier>` record names (`sc-producer`), when it is a valid
/// producer id (1–64 bytes of UTF-8).
#[cfg(feature = "kafka")]
pub fn producer_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    client::header(m, headers::PRODUCER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|p| (1..=64).contains(&p.len()))
        .map(str::to_owned)
}

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Record headers of `signals.<tier>`, besides `content-type: application/json`.
pub mod headers {
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CATEGORY: &str = "sc-category";
    pub const INGEST_TS: &str = "sc-ingest-ts";
    pub const ROUTED_TS: &str = "sc-routed-ts";
    pub const SENT_TS: &str = "sc-sent-ts";
    /// The producer that sent a routed signal (the archiver stores it).
    pub const PRODUCER: &str = "sc-producer";
    /// On a DLQ record: why it is poison ([`super::value::ValueError::code`]), in words,
    /// and where it came from.
    pub const ERROR_CODE: &str = "error.code";
    pub const ERROR_MESSAGE: &str = "error.message";
    pub const SOURCE_TOPIC: &str = "source.topic";
    pub const SOURCE_PARTITION: &str = "source.partition";
    pub const SOURCE_OFFSET: &str = "source.offset";
}

/// Counters for `/metrics`; written by the Kafka tasks, read by the renderer.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Records taken from `raw-signals` and `market-data` (poison included).
    pub consumed: AtomicU64,
    /// Poison records sent to the DLQ.
    pub dead_lettered: AtomicU64,
    /// `raw-signals` records refused for their signature (unsigned, unknown producer,
    /// bad or stale signature); also counted in `dead_lettered` once the DLQ has them.
    pub unauthenticated: AtomicU64,
    /// Poison records the DLQ did not take (a permanent error, or `dlq_timeout`):
    /// logged, given up, and their partition moved on.
    pub dlq_failed: AtomicU64,
    /// Records produced to `signals.<tier>` (engine role).
    pub published: AtomicU64,
    /// Records that could not be produced and were given up (a permanent error).
    pub publish_failed: AtomicU64,
    /// Records read from `signals.<tier>` (gateway role).
    pub relayed: AtomicU64,
    /// `signals.<tier>` records dropped before they reach a client: too large, not a
    /// routed signal, or a value that is not the SIGNAL_UPDATE `data` an engine writes.
    pub relay_rejected: AtomicU64,
    /// Input partitions (of `raw-signals` and `market-data`, co-partitioned) this
    /// engine node holds now.
    pub assigned_partitions: AtomicU64,
    /// Consumer lag per topic (sum over the partitions this node holds), from
    /// librdkafka's statistics.
    lag: Mutex<BTreeMap<String, i64>>,
}

impl KafkaStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set_lag(&self, lag: BTreeMap<String, i64>) {
        *self.lag.lock().unwrap_or_else(PoisonError::into_inner) = lag;
    }

    /// `(topic, lag)` pairs.
    pub fn lag(&self) -> Vec<(String, i64)> {
        self.lag.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(t, l)| (t.clone(), *l)).collect()
    }
}
