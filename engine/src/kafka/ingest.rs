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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::Timestamp;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rkyv::util::AlignedVec;

use rdkafka::types::RDKafkaErrorCode;

use super::client::{StatsContext, authenticate, client_config, content_type};
use super::value::{self, ValueError};
use super::{KafkaError, KafkaStats, headers};
use crate::config::KafkaConfig;
use crate::feed::ProducerAuth;
use crate::model::UnixNanos;
use crate::outcome::handover::Rebalances;
use crate::pipeline::{Done, HandoverItem, IngestItem, IngestSender, Origin, SignalItem};

/// What Kafka ingest needs from the engine.
#[derive(Debug, Clone)]
pub struct IngestContext {
    pub ingest: IngestSender,
    pub max_analysis_bytes: usize,
    pub stats: Arc<KafkaStats>,
    /// The producers' keys (the file or the sidecar, as for the TCP feed): who may
    /// sign `raw-signals` records.
    pub producers: Arc<dyn ProducerAuth>,
    /// An engine node in scale-out: tell the stage which partition each symbol's
    /// records come from and, through this, which partitions each rebalance gave and
    /// took, so that open signals follow their partition ([`crate::outcome::handover`]).
    pub handover: Option<Arc<Rebalances>>,
}

/// The ingest consumer's context: statistics as every client's, and the partitions a
/// rebalance takes away (librdkafka calls it from inside the consumer's poll).
struct IngestClient {
    stats: StatsContext,
    revoked: std::sync::Mutex<Vec<i32>>,
    revoke: tokio::sync::Notify,
    /// Revocations so far: an offset marker queued before one stores nothing (see
    /// [`mark`]).
    revocations: AtomicU64,
    /// Input partitions held now (the `signalcast_kafka_assigned_partitions` gauge).
    held: std::sync::Mutex<std::collections::BTreeSet<i32>>,
    /// The stage's view of the same (engine nodes in scale-out).
    rebalances: Option<Arc<Rebalances>>,
}

/// The partition numbers of `tpl` (both input topics share them), sorted, once each.
fn partitions(tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
    let mut v: Vec<i32> =
        tpl.elements().iter().map(rdkafka::topic_partition_list::TopicPartitionListElem::partition).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl rdkafka::client::ClientContext for IngestClient {
    fn stats(&self, s: rdkafka::Statistics) {
        self.stats.stats(s);
    }
}

impl rdkafka::consumer::ConsumerContext for IngestClient {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = r {
            let partitions = partitions(tpl);
            tracing::info!(?partitions, "input partitions revoked");
            self.revocations.fetch_add(1, Ordering::AcqRel);
            self.hold(false, &partitions);
            if let Some(r) = &self.rebalances {
                r.push(false, partitions.clone());
            }
            self.revoked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(partitions);
            self.revoke.notify_one();
        }
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        r: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match r {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                let partitions = partitions(tpl);
                tracing::info!(?partitions, "input partitions assigned");
                self.hold(true, &partitions);
                if let Some(r) = &self.rebalances {
                    r.push(true, partitions);
                }
            }
            rdkafka::consumer::Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            rdkafka::consumer::Rebalance::Revoke(_) => {}
        }
    }
}

impl IngestClient {
    fn hold(&self, assigned: bool, partitions: &[i32]) {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in partitions {
            if assigned {
                held.insert(*p);
            } else {
                held.remove(p);
            }
        }
        self.stats.0.assigned_partitions.store(held.len() as u64, Ordering::Relaxed);
    }

    fn take_revoked(&self) -> Vec<i32> {
        let mut v =
            std::mem::take(&mut *self.revoked.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Which input partition each symbol's records came from, as the stage was told.
type Learned = std::collections::HashMap<crate::outcome::handover::Key, i32>;

/// Symbols [`Learned`] remembers; past it, it starts over. Producers name symbols
/// freely, so the map must not grow with every name ever seen; forgetting costs only
/// a repeated `Owned`, which the stage takes as news it already had.
const LEARNED_MAX: usize = 1 << 18;

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
    let consumer: Arc<StreamConsumer<IngestClient>> = Arc::new(
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
            .create_with_context(IngestClient {
                stats: StatsContext(Arc::clone(&ctx.stats)),
                revoked: std::sync::Mutex::default(),
                revoke: tokio::sync::Notify::new(),
                revocations: AtomicU64::new(0),
                held: std::sync::Mutex::default(),
                rebalances: ctx.handover.clone(),
            })?,
    );
    let mut learned = Learned::new();
    // librdkafka retries transient errors itself, for at most dlq_timeout.
    let dlq: FutureProducer = client_config(&cfg)
        .set("message.timeout.ms", cfg.dlq_timeout.as_millis().max(1).to_string())
        .create()?;
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
                () = consumer.context().revoke.notified() => {
                    revoked(&consumer, &mut learned, &mut pending);
                    continue;
                }
                () = &mut stop => break,
            }
        } else {
            consumer.recv().now_or_never()
        };
        let Some(received) = next else {
            // The poll that found nothing may have run a rebalance: what it revoked
            // leaves `pending` before the marker is made.
            revoked(&consumer, &mut learned, &mut pending);
            mark(&cfg, &ctx, &consumer, &mut pending).await;
            continue;
        };
        let taken = match received {
            Ok(m) => take(&cfg, &ctx, &m, &mut scratch),
            Err(e) => {
                tracing::warn!(error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        KafkaStats::count(&ctx.stats.consumed);
        // A rebalance inside this poll: what the partitions held is to be learnt again.
        revoked(&consumer, &mut learned, &mut pending);
        match taken.outcome {
            Ok(item) => {
                if ctx.handover.is_some() && !owned(&ctx, &mut learned, &item, taken.partition).await {
                    break;
                }
                if ctx.ingest.send(item).await.is_err() {
                    break; // the engine stopped
                }
            }
            Err((error, poison)) => {
                if error.is_unauthenticated() {
                    KafkaStats::count(&ctx.stats.unauthenticated);
                }
                let at = (taken.topic.name(&cfg), taken.partition, taken.offset);
                match dead_letter(&cfg, &dlq, at, &error, poison).await {
                    Ok(()) => KafkaStats::count(&ctx.stats.dead_lettered),
                    Err(()) => KafkaStats::count(&ctx.stats.dlq_failed),
                }
            }
        }
        pending.push((taken.topic, taken.partition, taken.offset));
    }
    revoked(&consumer, &mut learned, &mut pending);
    mark(&cfg, &ctx, &consumer, &mut pending).await;
    // Give the stage a moment to run the last marker before the consumer closes (its
    // close commits what is stored).
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("kafka ingest stopped");
    Ok(())
}

/// Forgets which symbols the revoked partitions held, and the offsets taken from them
/// and not yet marked: their records are read again by whoever holds them next (this
/// node too, if they come back), and tell the stage anew.
fn revoked(
    consumer: &StreamConsumer<IngestClient>,
    learned: &mut Learned,
    pending: &mut Vec<(Topic, i32, i64)>,
) {
    let partitions = consumer.context().take_revoked();
    if !partitions.is_empty() {
        tracing::debug!(?partitions, "forgetting the symbols of revoked partitions");
        learned.retain(|_, p| !partitions.contains(p));
        pending.retain(|(_, p, _)| !partitions.contains(p));
    }
}

/// Tells the stage, before `item`, that its symbol comes from `partition` here, when
/// that is news. False when the stage is gone.
async fn owned(ctx: &IngestContext, learned: &mut Learned, item: &IngestItem, partition: i32) -> bool {
    let key = match item {
        IngestItem::Signal(s) => (s.signal.symbol, s.signal.exchange),
        IngestItem::Tick(t) => (t.symbol, t.exchange),
        _ => return true,
    };
    if learned.len() >= LEARNED_MAX && !learned.contains_key(&key) {
        learned.clear();
    }
    if learned.insert(key, partition) == Some(partition) {
        return true;
    }
    tracing::debug!(symbol = %key.0, partition, "first record of a symbol from this partition");
    ctx.ingest.send(IngestItem::Handover(HandoverItem::Owned { key, partition })).await.is_ok()
}

/// Queues a marker that stores the highest offset taken per partition.
async fn mark(
    cfg: &KafkaConfig,
    ctx: &IngestContext,
    consumer: &Arc<StreamConsumer<IngestClient>>,
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
    let generation = consumer.context().revocations.load(Ordering::Acquire);
    let done = Done(Arc::new(move || {
        // The stage runs this after the records, and after any rebalance the consumer
        // learnt of meanwhile. Records taken before a revocation moved nothing there
        // (their symbols had gone to standby), so their offsets must not be stored, even
        // when the same partition came straight back to this node: its new owner (this
        // node, then) reads them again from the last commit, and a tick read again is
        // checked against what is open by then. Signals read again are de-duplicated by id.
        if consumer.context().revocations.load(Ordering::Acquire) != generation {
            tracing::debug!(records = offsets.len(), "offsets not stored: a rebalance came between");
            return;
        }
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

fn take(cfg: &KafkaConfig, ctx: &IngestContext, m: &BorrowedMessage<'_>, scratch: &mut AlignedVec) -> Taken {
    let max_analysis = ctx.max_analysis_bytes;
    let topic = if m.topic() == cfg.market_data_topic { Topic::MarketData } else { Topic::RawSignals };
    let authenticated = authenticate(cfg, ctx.producers.as_ref(), m, topic == Topic::MarketData);
    let decoded = authenticated.and_then(|signer| Ok((signer, content_type(m)?))).and_then(|(signer, ct)| {
        let value = m.payload().unwrap_or_default();
        if topic == Topic::MarketData {
            value::decode_tick(value, ct, scratch).map(IngestItem::Tick)
        } else {
            let (signal, sent_at) = value::decode_signal(value, ct, max_analysis, scratch)?;
            // A signed record's signer must be bound to the signal's source; unsigned
            // topics trust the broker's ACLs (docs/kafka.md).
            if let Some(producer) = &signer
                && !ctx.producers.may_publish_as(producer, &signal.source_id)
            {
                return Err(ValueError::ForeignSource {
                    producer: producer.clone(),
                    source_id: signal.source_id,
                });
            }
            // JSON producers give their send time as the record's CreateTime.
            let sent_ts = sent_at.or(match m.timestamp() {
                Timestamp::CreateTime(ms) => UnixNanos::from_micros(ms.saturating_mul(1000)),
                _ => None,
            });
            Ok(IngestItem::Signal(Box::new(SignalItem {
                origin: Origin::Kafka { partition: m.partition() },
                signal,
                ingest_ts: UnixNanos::now(),
                sent_ts,
                // The signer, so that the signal is stored with its producer.
                verdict: signer.map(|p| crate::pipeline::Verdict::new(p.into())),
            })))
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

/// Errors after which trying again cannot help: the DLQ will never take this record.
fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e,
        KafkaError::MessageProduction(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::MessageBatchTooLarge
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidTopic
                | C::UnknownTopic
                | C::PolicyViolation
                | C::UnsupportedForMessageFormat
                | C::InvalidArgument
        )
    )
}

/// Sends a poison record to the DLQ with the reason and its origin in headers, and
/// waits until the broker has it (its offset is committed after this). Bounded: a
/// permanent error gives up at once, a transient one after `dlq_timeout`; then the
/// record is logged and counted, and the partition moves on without it (`Err`).
async fn dead_letter(
    cfg: &KafkaConfig,
    dlq: &FutureProducer,
    (topic, partition, offset): (&str, i32, i64),
    error: &ValueError,
    poison: Poison,
) -> Result<(), ()> {
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
    let started = tokio::time::Instant::now();
    loop {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&cfg.dlq_topic).headers(hs.clone());
        if let Some(k) = &poison.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &poison.value {
            record = record.payload(v.as_slice());
        }
        let left = cfg.dlq_timeout.saturating_sub(started.elapsed());
        let e = match dlq.send(record, left).await {
            Ok(_) => return Ok(()),
            Err((e, _)) => e,
        };
        if permanent(&e) || started.elapsed() + Duration::from_millis(500) >= cfg.dlq_timeout {
            tracing::error!(
                %topic, partition, offset, code = error.code(), dlq = %cfg.dlq_topic, error = %e,
                permanent = permanent(&e),
                "the DLQ did not take a poison record; it is given up and the partition moves on"
            );
            return Err(());
        }
        tracing::warn!(error = %e, "DLQ produce failed; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
