//! `raw-signals` and `market-data` into the stage, as the `signalcast-engine` group.
//!
//! Offsets are stored (and auto-committed every `commit_interval`) only when the stage
//! runs the [`Done`] marker queued after the records: everything before it is routed
//! and, on an engine node, durable in `signals.<tier>`. A crash therefore re-reads at
//! most the last interval; the stage's id de-duplication (seeded from `signals.<tier>`
//! at start) removes what had been routed already.
//!
//! Both topics are keyed by symbol and have the same number of partitions; with the
//! range assignor, partition i of both goes to the same node, so each engine node holds
//! the ticks of the symbols whose signals it routes (docs/deploy.md).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::Timestamp;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rkyv::util::AlignedVec;

use super::client::{StatsContext, client_config, content_type};
use super::value::{self, ValueError};
use super::{KafkaError, KafkaStats, headers};
use crate::config::KafkaConfig;
use crate::model::UnixNanos;
use crate::pipeline::{Done, IngestItem, IngestSender, Origin, SignalItem};

/// What Kafka ingest needs from the engine.
#[derive(Debug, Clone)]
pub struct IngestContext {
    pub ingest: IngestSender,
    pub max_analysis_bytes: usize,
    pub stats: Arc<KafkaStats>,
}

/// Records between two offset markers at most.
const MARK_EVERY: usize = 256;

/// The two input topics (an index, not a name: no allocation per record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Topic {
    RawSignals,
    MarketData,
}

impl Topic {
    fn name(self, cfg: &KafkaConfig) -> &str {
        match self {
            Self::RawSignals => &cfg.raw_signals_topic,
            Self::MarketData => &cfg.market_data_topic,
        }
    }
}

/// One consumed record, decoded or not, with where it came from.
struct Taken {
    topic: Topic,
    partition: i32,
    offset: i64,
    outcome: Result<IngestItem, (ValueError, Poison)>,
}

/// What goes to the DLQ: the record as it was.
struct Poison {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// Consumes until `stop` resolves. Returns an error only if the consumer cannot be set up.
pub async fn run_ingest(
    cfg: KafkaConfig,
    ctx: IngestContext,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), KafkaError> {
    let consumer: Arc<StreamConsumer<StatsContext>> = Arc::new(
        client_config(&cfg)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", cfg.commit_interval.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (cfg.session_timeout.as_millis() / 5).max(100).to_string())
            // Co-partitioning: partition i of both topics on the same node.
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", "1000")
            .create_with_context(StatsContext(Arc::clone(&ctx.stats)))?,
    );
    let dlq: FutureProducer = client_config(&cfg).set("message.timeout.ms", "0").create()?;
    consumer.subscribe(&[&cfg.raw_signals_topic, &cfg.market_data_topic])?;
    tracing::info!(brokers = %cfg.brokers, group = %cfg.group_id, "kafka ingest started");

    let mut scratch = AlignedVec::new();
    let mut pending: Vec<(Topic, i32, i64)> = Vec::new();
    let mut stop = std::pin::pin!(stop.fuse());
    loop {
        if (&mut stop).now_or_never().is_some() {
            break;
        }
        // Wait only when nothing is pending; otherwise mark what was taken first, so
        // offsets advance as soon as the stage has routed it.
        let next = if pending.len() >= MARK_EVERY {
            None
        } else if pending.is_empty() {
            tokio::select! {
                m = consumer.recv() => Some(m),
                () = &mut stop => break,
            }
        } else {
            consumer.recv().now_or_never()
        };
        let Some(received) = next else {
            mark(&cfg, &ctx, &consumer, &mut pending).await;
            continue;
        };
        let taken = match received {
            Ok(m) => take(&cfg, &m, ctx.max_analysis_bytes, &mut scratch),
            Err(e) => {
                tracing::warn!(error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        KafkaStats::count(&ctx.stats.consumed);
        match taken.outcome {
            Ok(item) => {
                if ctx.ingest.send(item).await.is_err() {
                    break; // the engine stopped
                }
            }
            Err((error, poison)) => {
                dead_letter(
                    &cfg,
                    &dlq,
                    taken.topic.name(&cfg),
                    taken.partition,
                    taken.offset,
                    &error,
                    poison,
                )
                .await;
                KafkaStats::count(&ctx.stats.dead_lettered);
            }
        }
        pending.push((taken.topic, taken.partition, taken.offset));
    }
    mark(&cfg, &ctx, &consumer, &mut pending).await;
    // Give the stage a moment to run the last marker before the consumer closes (its
    // close commits what is stored).
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("kafka ingest stopped");
    Ok(())
}

/// Queues a marker that stores the highest offset taken per partition.
async fn mark(
    cfg: &KafkaConfig,
    ctx: &IngestContext,
    consumer: &Arc<StreamConsumer<StatsContext>>,
    pending: &mut Vec<(Topic, i32, i64)>,
) {
    if pending.is_empty() {
        return;
    }
    // Highest per (topic, partition); offsets within a partition arrive in order.
    pending.sort_unstable();
    pending.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0 && later.1 == earlier.1;
        if same {
            earlier.2 = earlier.2.max(later.2);
        }
        same
    });
    let offsets: Vec<(String, i32, i64)> =
        pending.drain(..).map(|(t, p, o)| (t.name(cfg).to_owned(), p, o)).collect();
    let consumer = Arc::clone(consumer);
    let done = Done(Arc::new(move || {
        for (topic, partition, offset) in &offsets {
            // Fails only for a partition this node no longer holds: its new owner
            // re-reads from the last commit and de-duplicates by id.
            if let Err(e) = consumer.store_offset(topic, *partition, *offset) {
                tracing::debug!(%topic, partition, offset, error = %e, "offset not stored");
            }
        }
    }));
    let _ = ctx.ingest.send(IngestItem::Done(done)).await;
}

fn take(cfg: &KafkaConfig, m: &BorrowedMessage<'_>, max_analysis: usize, scratch: &mut AlignedVec) -> Taken {
    let topic = if m.topic() == cfg.market_data_topic { Topic::MarketData } else { Topic::RawSignals };
    let decoded = content_type(m).and_then(|ct| {
        let value = m.payload().unwrap_or_default();
        if topic == Topic::MarketData {
            value::decode_tick(value, ct, scratch).map(IngestItem::Tick)
        } else {
            let (signal, sent_at) = value::decode_signal(value, ct, max_analysis, scratch)?;
            // JSON producers give their send time as the record's CreateTime.
            let sent_ts = sent_at.or(match m.timestamp() {
                Timestamp::CreateTime(ms) => UnixNanos::from_micros(ms.saturating_mul(1000)),
                _ => None,
            });
            Ok(IngestItem::Signal(SignalItem {
                origin: Origin::Local,
                signal,
                ingest_ts: UnixNanos::now(),
                sent_ts,
            }))
        }
    });
    Taken {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        outcome: decoded.map_err(|e| {
            let poison = Poison {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m.headers().map(rdkafka::message::BorrowedHeaders::detach),
            };
            (e, poison)
        }),
    }
}

/// Sends a poison record to the DLQ with the reason and its origin in headers; waits
/// (retrying) until the broker has it, since its offset is committed after this.
async fn dead_letter(
    cfg: &KafkaConfig,
    dlq: &FutureProducer,
    topic: &str,
    partition: i32,
    offset: i64,
    error: &ValueError,
    poison: Poison,
) {
    tracing::warn!(%topic, partition, offset, code = error.code(), %error, "poison record to the DLQ");
    let message = error.to_string();
    let (p, o) = (partition.to_string(), offset.to_string());
    let mut hs = poison.headers.unwrap_or_default();
    for (key, value) in [
        (headers::ERROR_CODE, error.code()),
        (headers::ERROR_MESSAGE, message.as_str()),
        (headers::SOURCE_TOPIC, topic),
        (headers::SOURCE_PARTITION, p.as_str()),
        (headers::SOURCE_OFFSET, o.as_str()),
    ] {
        hs = hs.insert(Header { key, value: Some(value) });
    }
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&cfg.dlq_topic).headers(hs.clone());
        if let Some(k) = &poison.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &poison.value {
            record = record.payload(v.as_slice());
        }
        match dlq.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(error = %e, "DLQ produce failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
