//! The Kafka → PostgreSQL archiver: with Kafka the `signals.<tier>` topics are the log,
//! and this fills the PostgreSQL store from them (`signalcast archive`, one process per
//! cluster).
//!
//! It reads the four one-partition topics by assignment (no consumer group), each record
//! read as a gateway's relay reads it ([`engine::kafka::routed_record`]: what is stored
//! is what the channels hold, with seq = offset + 1 and the times of the headers), the
//! signal's columns from the record's value. Records are gathered into a batch (up to
//! [`ArchiveOptions::max_batch`], or what came within [`ArchiveOptions::linger`] of the
//! first) and appended in one transaction together with the next offset of each topic
//! (`signals.archive_offsets`): a restarted archiver resumes from there and neither loses
//! nor duplicates. One signal routed to several tiers comes as one record per tier
//! topic; they become one `trading_signals` row (by id) and one channel row per tier.
//!
//! A restart reads from a little before the stored offset ([`ArchiveOptions::rewind`])
//! and passes over what is stored already: a fetch from an offset inside a producer's
//! record batch must return that whole batch, and a broker that returns the next batch
//! instead (tansu 0.6, the test broker) would otherwise make it skip the rest of the
//! batch. An offset that never comes (records deleted by retention before they were
//! archived) is a gap: logged and counted, never silent.
//!
//! The channels' epochs are those every gateway derives from the cluster
//! ([`engine::kafka::epochs`]), stored in `channel_epochs` at start; a store filled from
//! another cluster (other epochs) is refused: its seqs would collide with this one's.
//! A failed commit is retried (with the same batch) until it succeeds or `stop`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use engine::config::KafkaConfig;
use engine::kafka::rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use engine::kafka::rdkafka::message::{BorrowedMessage, Message};
use engine::kafka::rdkafka::statistics::Statistics;
use engine::kafka::rdkafka::{ClientContext, Offset, TopicPartitionList};
use engine::kafka::{KafkaError, client_config, routed_record};
use engine::model::{EnrichedSignal, Tier, UnixNanos};

use super::{ClosedSignal, PgStore, Routed, StoreError};

/// How records are grouped into commits.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveOptions {
    /// Records per transaction at most.
    pub max_batch: usize,
    /// How long after a batch's first record more are waited for.
    pub linger: Duration,
    /// A restart reads from this many records before each stored offset (and passes
    /// over them): see the module docs.
    pub rewind: i64,
    /// Signals routed longer ago than this are removed (`[store] retention_days`);
    /// `None` keeps them for ever.
    pub retention: Option<Duration>,
    /// How often the store is pruned.
    pub prune_every: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            linger: Duration::from_millis(20),
            rewind: 10_000,
            retention: Some(Duration::from_secs(30 * 86_400)),
            prune_every: Duration::from_secs(10),
        }
    }
}

/// Signals removed per prune transaction: a short lock, and the archiver's own commits
/// between two.
const PRUNE_ROWS: usize = 2_000;

/// Prunes what `retention` no longer keeps, a transaction of [`PRUNE_ROWS`] at a time,
/// at most 50 of them per call (the rest waits for the next one).
async fn prune(store: &PgStore, retention: Duration, stats: &ArchiveStats) {
    let keep = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
    let before = UnixNanos(UnixNanos::now().0.saturating_sub(keep));
    for _ in 0..50 {
        match store.prune(before, PRUNE_ROWS).await {
            Ok(n) => {
                stats.pruned.fetch_add(n as u64, Ordering::Relaxed);
                if n < PRUNE_ROWS {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "archiver: pruning failed; tried again later");
                return;
            }
        }
    }
}

/// What the archiver has done, for metrics; read with [`ArchiveStats::get`].
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Records stored (each record of each tier topic, once).
    pub records: AtomicU64,
    /// Signals that were new to the store.
    pub signals: AtomicU64,
    /// Records that are not a routed signal (skipped, as the relay skips them).
    pub rejected: AtomicU64,
    /// Records read again after a restart (before the stored offset) and passed over.
    pub reread: AtomicU64,
    /// Offsets that never came: records gone (retention) before they were archived.
    pub gaps: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Commits that failed (and were retried).
    pub commit_failures: AtomicU64,
    /// Signals removed by retention.
    pub pruned: AtomicU64,
    /// Per tier topic: the next offset stored in PostgreSQL, and the broker's high
    /// watermark (from librdkafka's statistics, every second; 0 before the first).
    committed: [AtomicI64; 4],
    high: [AtomicI64; 4],
}

impl ArchiveStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records of `tier`'s topic not yet in the store (0 until the broker's high
    /// watermark is known).
    pub fn lag(&self, tier: Tier) -> i64 {
        let high = self.high[tier.index()].load(Ordering::Relaxed);
        (high - self.committed[tier.index()].load(Ordering::Relaxed)).max(0)
    }

    /// The next offset of `tier`'s topic the store is waiting for.
    pub fn committed(&self, tier: Tier) -> i64 {
        self.committed[tier.index()].load(Ordering::Relaxed)
    }
}

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "the signal store holds channel {tier} with epoch {stored:#x}, but this Kafka cluster's is \
         {cluster:#x}: it was filled from another cluster (give this one its own database)"
    )]
    OtherCluster { tier: &'static str, stored: u64, cluster: u64 },
    #[error("the archiver's kafka setup task failed: {0}")]
    Task(String),
}

/// Puts the brokers' high watermarks of the tier topics into the stats.
struct WatermarkContext {
    stats: Arc<ArchiveStats>,
    topics: [String; 4],
}

impl ClientContext for WatermarkContext {
    fn stats(&self, s: Statistics) {
        for (i, topic) in self.topics.iter().enumerate() {
            if let Some(p) = s.topics.get(topic).and_then(|t| t.partitions.get(&0))
                && p.hi_offset >= 0
            {
                self.stats.high[i].store(p.hi_offset, Ordering::Relaxed);
            }
        }
    }
}

impl ConsumerContext for WatermarkContext {}

/// Runs the archiver with the default options until `stop` completes.
pub async fn run(
    kafka: KafkaConfig,
    store: PgStore,
    stop: impl Future<Output = ()>,
) -> Result<(), ArchiveError> {
    run_with(kafka, store, ArchiveOptions::default(), Arc::new(ArchiveStats::default()), stop).await
}

/// [`run`] with options and stats of the caller's.
pub async fn run_with(
    kafka: KafkaConfig,
    store: PgStore,
    options: ArchiveOptions,
    stats: Arc<ArchiveStats>,
    stop: impl Future<Output = ()>,
) -> Result<(), ArchiveError> {
    let topics = Tier::ALL.map(|t| kafka.signals_topic(t));
    // librdkafka's metadata calls block: off the runtime's threads.
    let cfg = kafka.clone();
    let epochs = tokio::task::spawn_blocking(move || engine::kafka::epochs(&cfg))
        .await
        .map_err(|e| ArchiveError::Task(e.to_string()))??;
    for tier in Tier::ALL {
        let cluster = epochs[tier.index()].0;
        match store.epoch(tier).await? {
            Some(stored) if stored != cluster => {
                return Err(ArchiveError::OtherCluster { tier: tier.as_str(), stored, cluster });
            }
            Some(_) => {}
            None => store.set_epoch(tier, cluster).await?,
        }
    }

    let stored: HashMap<(String, i32), i64> =
        store.archive_offsets().await?.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
    let consumer: StreamConsumer<WatermarkContext> = client_config(&kafka)
        // No group is joined (the partitions are assigned) and nothing is committed to
        // Kafka: the progress is in PostgreSQL, with the rows.
        .set("group.id", "signalcast-archiver")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A rewound start below the low watermark begins at the oldest record (the
        // default, "latest", would skip everything).
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000")
        .create_with_context(WatermarkContext { stats: Arc::clone(&stats), topics: topics.clone() })?;
    let mut tpl = TopicPartitionList::new();
    let mut batch = Batch::default();
    for (i, topic) in topics.iter().enumerate() {
        let next = stored.get(&(topic.clone(), 0)).copied().unwrap_or(0);
        stats.committed[i].store(next, Ordering::Relaxed);
        batch.expect[i] = next;
        let from = next.saturating_sub(options.rewind.max(0));
        tpl.add_partition_offset(topic, 0, if from > 0 { Offset::Offset(from) } else { Offset::Beginning })?;
        tracing::info!(topic = %topic, next_offset = next, "archiving from");
    }
    consumer.assign(&tpl)?;

    tokio::pin!(stop);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = tokio::time::sleep_until(next_prune), if options.retention.is_some() => {
                if let Some(retention) = options.retention {
                    prune(&store, retention, &stats).await;
                }
                next_prune = tokio::time::Instant::now() + options.prune_every;
                continue;
            }
            m = consumer.recv() => batch.take(m, &topics, kafka.relay_max_record_bytes, &stats),
        }
        let deadline = tokio::time::Instant::now() + options.linger;
        while batch.records < options.max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => batch.take(m, &topics, kafka.relay_max_record_bytes, &stats),
                Err(_) => break,
            }
        }
        if batch.offsets.is_empty() {
            continue;
        }
        if !commit(&store, &mut batch, &topics, &stats, &mut stop).await {
            break;
        }
    }
    tracing::info!(records = ArchiveStats::get(&stats.records), "archiver stopped");
    Ok(())
}

/// Stores the batch and its offsets; on failure waits and tries again. `false` when
/// `stop` came first (the batch is then left unstored: it is read again at the restart).
async fn commit(
    store: &PgStore,
    batch: &mut Batch,
    topics: &[String; 4],
    stats: &ArchiveStats,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let offsets: Vec<(String, i32, i64)> =
        batch.offsets.iter().map(|((topic, partition), next)| (topic.clone(), *partition, *next)).collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.append_with_offsets(&batch.rows, &batch.closes, &offsets).await {
            Ok(added) => {
                stats.signals.fetch_add(added as u64, Ordering::Relaxed);
                stats.records.fetch_add(batch.records as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                for (topic, partition, next) in &offsets {
                    if let Some(i) = topics.iter().position(|t| t == topic)
                        && *partition == 0
                    {
                        stats.committed[i].store(*next, Ordering::Relaxed);
                    }
                }
                batch.clear();
                return true;
            }
            Err(e) => {
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "archiver commit failed");
                tokio::select! {
                    biased;
                    () = stop.as_mut() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The records of one commit: a row per signal id (with every channel it came on) and
/// the next offset of each partition read.
#[derive(Debug, Default)]
struct Batch {
    rows: Vec<Routed>,
    index: HashMap<uuid::Uuid, usize>,
    /// Closes, one per signal id (with every channel it came on).
    closes: Vec<ClosedSignal>,
    close_index: HashMap<uuid::Uuid, usize>,
    offsets: HashMap<(String, i32), i64>,
    /// Records taken (stored or rejected).
    records: usize,
    /// Per tier topic, the offset expected next (kept across commits).
    expect: [i64; 4],
}

impl Batch {
    fn clear(&mut self) {
        self.rows.clear();
        self.index.clear();
        self.closes.clear();
        self.close_index.clear();
        self.offsets.clear();
        self.records = 0;
    }

    fn take(
        &mut self,
        m: Result<BorrowedMessage<'_>, KafkaError>,
        topics: &[String; 4],
        max_bytes: usize,
        stats: &ArchiveStats,
    ) {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "archiver: kafka error");
                return;
            }
        };
        let Some(i) = topics.iter().position(|t| t == m.topic()) else { return };
        let offset = m.offset();
        if offset < self.expect[i] {
            // Before the stored offset: read again after a restart's rewind.
            stats.reread.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if offset > self.expect[i] {
            let missing = offset - self.expect[i];
            stats.gaps.fetch_add(missing as u64, Ordering::Relaxed);
            tracing::warn!(
                topic = m.topic(),
                from = self.expect[i],
                to = offset,
                missing,
                "archiver: offsets missing from the topic (deleted before they were archived?)"
            );
        }
        self.expect[i] = offset + 1;
        self.records += 1;
        let next = self.offsets.entry((m.topic().to_owned(), m.partition())).or_insert(0);
        *next = (*next).max(m.offset() + 1);
        match record(topics, &m, max_bytes) {
            Some(Record::Signal(r)) => self.push(r),
            Some(Record::Close(c)) => match self.close_index.get(&c.id) {
                Some(&i) => self.closes[i].channels.extend_from_slice(&c.channels),
                None => {
                    self.close_index.insert(c.id, self.closes.len());
                    self.closes.push(c);
                }
            },
            None => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn push(&mut self, r: Routed) {
        match self.index.get(&r.signal.id) {
            Some(&i) => self.rows[i].channels.extend_from_slice(&r.channels),
            None => {
                self.index.insert(r.signal.id, self.rows.len());
                self.rows.push(r);
            }
        }
    }
}

/// A `signals.<tier>` record: a routed signal, or a signal's close (docs/outcomes.md).
enum Record {
    Signal(Routed),
    Close(ClosedSignal),
}

/// A `signals.<tier>` record as the row it stands for; `None` for what the relay would
/// drop (no client has it: it is not archived either).
fn record(topics: &[String; 4], m: &BorrowedMessage<'_>, max_bytes: usize) -> Option<Record> {
    let item = routed_record(topics, m, max_bytes)?;
    if engine::pipeline::encode::is_close(&item.data) {
        let close = close_of(&item.data, item.tier, item.seq);
        if close.is_none() {
            tracing::warn!(topic = m.topic(), offset = m.offset(), "archiver: unreadable close");
        }
        return close.map(Record::Close);
    }
    // The relay's data is the engine's own encoding of a checked enriched signal.
    let e: EnrichedSignal = serde_json::from_slice(&item.data)
        .inspect_err(|e| tracing::warn!(topic = m.topic(), offset = m.offset(), error = %e, "archiver: unreadable signal"))
        .ok()?;
    let data = String::from_utf8(item.data).ok()?;
    Some(Record::Signal(Routed {
        market: e.market.as_ref().and_then(|m| serde_json::to_string(m).ok()),
        signal: e.signal,
        // Named by the engine node that routed it (feed, HTTP and signed Kafka producers).
        producer: engine::kafka::producer_of(m),
        data,
        ingest_ts: item.ingest_ts,
        routed_ts: item.routed_ts,
        channels: vec![(item.tier, item.seq)],
    }))
}

/// A close's data (the signal with `status` and `outcome`, as the engine encodes it) as
/// the event row it stands for.
fn close_of(data: &[u8], tier: Tier, seq: u64) -> Option<ClosedSignal> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let o = v.get("outcome")?;
    let price = |key: &str| -> Option<Option<engine::model::Price>> {
        match o.get(key)? {
            serde_json::Value::Null => Some(None),
            serde_json::Value::String(s) => s.parse().ok().map(Some),
            _ => None,
        }
    };
    let return_pct = match o.get("return_pct")? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(crate::scoreboard::parse_return(s)?),
        _ => return None,
    };
    Some(ClosedSignal {
        id: uuid::Uuid::parse_str(v.get("id")?.as_str()?).ok()?,
        status: v.get("status")?.as_str()?.parse().ok()?,
        entry: price("entry_price")?,
        exit: price("exit_price")?,
        return_pct,
        closed_at: UnixNanos::from_micros(o.get("closed_at")?.as_i64()?)?,
        data: String::from_utf8(data.to_vec()).ok()?,
        channels: vec![(tier, seq)],
    })
}
