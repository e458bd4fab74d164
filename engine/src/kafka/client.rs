//! What every Kafka client of signalcast shares: configuration, statistics, topics,
//! epochs, and reading back what an earlier run published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::KafkaStats;
use super::value::{ContentType, ValueError};
use crate::channels::Epoch;
use crate::config::KafkaConfig;
use crate::model::Tier;

pub use rdkafka::error::KafkaError;

/// The properties every client gets: brokers, then the operator's extras (SASL, TLS).
/// Public for the other Kafka clients of the workspace (the store's archiver).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("client.id", "signalcast");
    // Latency over batching: no Nagle on broker sockets, and a fetch that finds nothing
    // comes back soon (brokers that do not answer a waiting fetch as soon as data
    // arrives would otherwise hold every record up to the 500 ms default).
    c.set("socket.nagle.disable", "true");
    c.set("fetch.wait.max.ms", cfg.fetch_wait_max.as_millis().to_string());
    for (k, v) in &cfg.client {
        c.set(k, v);
    }
    c
}

/// The value of header `name` (case-insensitive, first one wins).
pub(super) fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    m.headers().and_then(|h| h.iter().find(|h| h.key.eq_ignore_ascii_case(name))?.value)
}

/// Who signed record `m`, checked before its value is even decoded (when
/// `require_signed_signals`; `None` otherwise); a `market-data` record's signer must
/// also hold the right to send ticks.
pub(super) fn authenticate(
    cfg: &crate::config::KafkaConfig,
    producers: &dyn crate::feed::ProducerAuth,
    m: &BorrowedMessage<'_>,
    tick: bool,
) -> Result<Option<String>, ValueError> {
    use super::signing;
    if !cfg.require_signed_signals {
        return Ok(None);
    }
    let claimed = signing::Claimed {
        producer: header(m, signing::PRODUCER_HEADER),
        signed_at: header(m, signing::SIGNED_AT_HEADER),
        signature: header(m, signing::SIGNATURE_HEADER),
    };
    let now_ms = u64::try_from(crate::model::UnixNanos::now().0 / 1_000_000).unwrap_or(0);
    let key = m.key().unwrap_or_default();
    let value = m.payload().unwrap_or_default();
    let producer = signing::verify(producers, claimed, key, value, now_ms, cfg.signature_max_age)?;
    if tick && !producers.may_send_ticks(&producer) {
        return Err(ValueError::ForbiddenTick(producer));
    }
    Ok(Some(producer))
}

/// How the record's value is encoded (its `content-type` header).
pub(super) fn content_type(m: &BorrowedMessage<'_>) -> Result<ContentType, ValueError> {
    ContentType::from_header(header(m, super::headers::CONTENT_TYPE))
}

/// Turns librdkafka's statistics into the consumer-lag gauge.
#[derive(Debug, Clone)]
pub(super) struct StatsContext(pub Arc<KafkaStats>);

impl ClientContext for StatsContext {
    fn stats(&self, s: Statistics) {
        let mut lag = BTreeMap::new();
        for (name, topic) in &s.topics {
            let sum: i64 = topic
                .partitions
                .iter()
                .filter(|(id, _)| **id >= 0) // -1 is librdkafka's internal "unassigned" partition
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            lag.insert(name.clone(), sum);
        }
        self.0.set_lag(lag);
    }
}

impl ConsumerContext for StatsContext {}

/// Remembers the first authentication error librdkafka reports (SASL refused).
#[derive(Debug, Default)]
struct AuthWatch(std::sync::Mutex<Option<String>>);

impl AuthWatch {
    fn saw(&self, reason: &str) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get_or_insert_with(|| reason.to_owned());
    }
}

impl ClientContext for AuthWatch {
    // librdkafka tells a refused SCRAM proof in its log, a refused mechanism as an
    // error; both come with a poll.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if message.contains("SASL authentication error") || message.contains("Authentication failed") {
            self.saw(message);
        }
        tracing::warn!(?level, fac, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Authentication)) {
            self.saw(reason);
        }
        tracing::debug!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for AuthWatch {}

/// Checks at start that the brokers answer and accept the node's credentials: a node
/// with a wrong SASL password stops with that said, instead of waiting and retrying
/// without end (librdkafka's way).
pub fn check_brokers(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let consumer: BaseConsumer<AuthWatch> = client_config(cfg).create_with_context(AuthWatch::default())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let result = consumer.fetch_metadata(None, Duration::from_secs(1));
        // Serves librdkafka's queued logs and errors to the context (nothing is
        // subscribed, so no record comes).
        let _ = consumer.poll(Duration::from_millis(100));
        let refused = consumer.context().0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(reason) = refused {
            return Err(KafkaError::ClientCreation(format!(
                "the Kafka brokers {} refused this node's credentials ([kafka.client] sasl.*): {reason}",
                cfg.brokers
            )));
        }
        match result {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
    }
}

/// Creates the topics signalcast needs when they are missing: the input topics and
/// the DLQ with `cfg.partitions`, each `signals.<tier>` with exactly one partition.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let tier_topics: Vec<String> = Tier::ALL.iter().map(|t| cfg.signals_topic(*t)).collect();
    let mut topics: Vec<NewTopic<'_>> = [&cfg.raw_signals_topic, &cfg.market_data_topic, &cfg.dlq_topic]
        .into_iter()
        .map(|t| NewTopic::new(t, cfg.partitions.max(1), TopicReplication::Fixed(-1)))
        .collect();
    topics.extend(tier_topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1))));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(topics.iter(), &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = %name, "cannot create"));
            }
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: stable across processes, builds and versions (std's hashers are not).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff; // separator, so ("ab","c") and ("a","bc") differ
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The epoch of each `signals.<tier>`: a hash of the cluster id and the topic name, so
/// that every gateway on the same cluster derives the same one and a client's `since`
/// means the same thing on all of them.
pub fn epochs(cfg: &KafkaConfig) -> Result<[Epoch; 4], KafkaError> {
    let consumer: BaseConsumer = client_config(cfg).create()?;
    // Metadata first: it fails loudly when no broker answers; the cluster id alone would
    // quietly be None.
    consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let cluster = consumer.client().fetch_cluster_id(Duration::from_secs(10)).unwrap_or_default();
    Ok(Tier::ALL.map(|t| Epoch(fnv1a(&[cluster.as_bytes(), cfg.signals_topic(t).as_bytes()]))))
}

/// The ids of up to `window` most recent records of each `signals.<tier>`: what an
/// earlier run of the engine (or another engine node) has routed already.
pub fn recent_ids(cfg: &KafkaConfig, window: usize) -> Result<Vec<Uuid>, KafkaError> {
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", "signalcast-engine-recent-ids")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for tier in Tier::ALL {
        let topic = cfg.signals_topic(tier);
        let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10))?;
        if high > low {
            let start = low.max(high - i64::try_from(window).unwrap_or(i64::MAX));
            tpl.add_partition_offset(&topic, 0, Offset::Offset(start))?;
            ends.insert(topic, high);
        }
    }
    let mut ids = Vec::new();
    if ends.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        if let Some(id) =
            m.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| Uuid::parse_str(k).ok())
        {
            ids.push(id);
        }
        if ends.get(m.topic()).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(m.topic());
        }
    }
    if !ends.is_empty() {
        tracing::warn!(topics = ?ends.keys().collect::<Vec<_>>(), "could not read back every recent id in 60 s");
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn epoch_hash_is_stable_and_separates_parts() {
        // Fixed: gateways of different builds must agree.
        assert_eq!(fnv1a(&[b"cluster", b"signals.free"]), fnv1a(&[b"cluster", b"signals.free"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_ne!(fnv1a(&[b"c", b"signals.free"]), fnv1a(&[b"c", b"signals.basic"]));
    }
}
