//! The gateway role's input: every `signals.<tier>` (and `market-data` for
//! `prices_general`) into a stage that appends without routing.
//!
//! Each gateway reads every record of the one-partition tier topics in offset order and
//! gives record `offset` the seq `offset + 1`, with the epoch [`super::epochs`] derives
//! from the cluster: all gateways hold the same logs, and a client may resume on any of
//! them. At start a gateway reads back the last `ring_capacity` records of each topic,
//! so its ring serves the same resumes as a gateway that has been up all along.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use rkyv::util::AlignedVec;

use super::client::{StatsContext, authenticate, client_config, content_type, header};
use super::value;
use super::{KafkaError, KafkaStats, headers};
use crate::config::KafkaConfig;
use crate::model::{Category, Tier, UnixNanos};
use crate::pipeline::{IngestItem, IngestSender, RoutedItem};

/// Starts the relay thread; it runs until `stop` is set or the engine stops.
/// `producers` decides whose `market-data` records move prices (signed, with the right
/// to send ticks), as on an engine node.
pub fn spawn_relay(
    cfg: &KafkaConfig,
    ingest: IngestSender,
    ring_capacity: usize,
    stats: Arc<KafkaStats>,
    producers: Arc<dyn crate::feed::ProducerAuth>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, KafkaError> {
    let consumer: BaseConsumer<StatsContext> = client_config(cfg)
        // No group is joined (partitions are assigned, not subscribed); the id is only
        // required by librdkafka, and nothing is committed.
        .set("group.id", "signalcast-gateway")
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "1000")
        .create_with_context(StatsContext(Arc::clone(&stats)))?;
    let mut tpl = TopicPartitionList::new();
    let topics = Tier::ALL.map(|t| cfg.signals_topic(t));
    for topic in &topics {
        let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
        let start = low.max(high - i64::try_from(ring_capacity).unwrap_or(i64::MAX));
        tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    }
    // Prices: only what happens from now on (the latest tick per symbol is what counts).
    // "Now" is the high watermark read here, not `Offset::End`, which librdkafka resolves
    // at its first fetch: ticks written between this gateway's start and that fetch
    // were lost (a price stale until the symbol's next tick).
    let metadata = consumer.fetch_metadata(Some(&cfg.market_data_topic), Duration::from_secs(10))?;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
            tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl)?;
    let market = cfg.market_data_topic.clone();
    let kafka = cfg.clone();
    let max_bytes = cfg.relay_max_record_bytes;
    std::thread::Builder::new()
        .name("signalcast-relay".into())
        .spawn(move || {
            let mut scratch = AlignedVec::new();
            let mut runs = [Run::default(); 4];
            while !stop.load(Ordering::Acquire) {
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let item = match m {
                    Ok(m) if m.topic() == market => {
                        match authenticate(&kafka, producers.as_ref(), &m, true) {
                            Ok(_) => tick(&m, &mut scratch),
                            Err(e) => {
                                // Logged at debug: a flood of forged ticks must not
                                // flood the log; the counter shows it.
                                tracing::debug!(error = %e, "market-data record refused");
                                KafkaStats::count(&stats.unauthenticated);
                                None
                            }
                        }
                    }
                    Ok(m) => {
                        KafkaStats::count(&stats.relayed);
                        let r = routed(&topics, &m, max_bytes);
                        let run = topics.iter().position(|t| t == m.topic()).and_then(|i| runs.get_mut(i));
                        if let Some(run) = run {
                            match &r {
                                None => run.rejected(m.offset()),
                                Some(_) => run.accepted(m.offset()),
                            };
                        }
                        if r.is_none() {
                            KafkaStats::count(&stats.relay_rejected);
                        }
                        r.map(|mut r| {
                            r.skipped = run_before(&runs, &topics, &m);
                            let hop_us = UnixNanos::now().0.saturating_sub(r.routed_ts.0) / 1_000;
                            tracing::trace!(seq = r.seq, tier = r.tier.as_str(), hop_us, "relayed");
                            IngestItem::Routed(Box::new(r))
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka relay error");
                        None
                    }
                };
                if let Some(item) = item
                    && ingest.blocking_send(item).is_err()
                {
                    break;
                }
            }
            tracing::debug!("kafka relay stopped");
        })
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))
}

/// The records of one tier topic the relay dropped just before the current offset.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// How many consecutive offsets were dropped, ending at `end`.
    len: u64,
    end: i64,
    /// The run that ended right before the last accepted record.
    before_last: u64,
}

impl Run {
    fn rejected(&mut self, offset: i64) {
        self.len = if self.len > 0 && offset == self.end + 1 { self.len + 1 } else { 1 };
        self.end = offset;
    }

    fn accepted(&mut self, offset: i64) {
        self.before_last = if self.len > 0 && self.end + 1 == offset { self.len } else { 0 };
        self.len = 0;
    }
}

fn run_before(runs: &[Run; 4], topics: &[String; 4], m: &BorrowedMessage<'_>) -> u64 {
    topics.iter().position(|t| t == m.topic()).and_then(|i| runs.get(i)).map_or(0, |r| r.before_last)
}

fn nanos(m: &BorrowedMessage<'_>, name: &str) -> Option<UnixNanos> {
    std::str::from_utf8(header(m, name)?).ok()?.parse().ok().map(UnixNanos)
}

/// How far ahead of this node's clock a record's times may be: engines' clocks agree
/// within NTP's error, far less than this.
const MAX_AHEAD_NS: i64 = 60_000_000_000;

/// A record's time as this node takes it: none before 1970 (no engine wrote it), and
/// at most [`MAX_AHEAD_NS`] ahead of `now`, later ones brought back to that. A time
/// far ahead would hold a delayed view shut until then (its releases are in order),
/// and arithmetic on extreme ones overflows. Brought back, not refused: whether a
/// record is taken must not depend on this node's clock (a gateway whose clock is
/// behind would drop every record, and a read-back later would take what the relay
/// refused).
fn plausible(t: UnixNanos, now: UnixNanos) -> Option<UnixNanos> {
    (t.0 > 0).then(|| UnixNanos(t.0.min(now.0.saturating_add(MAX_AHEAD_NS))))
}

/// A `signals.<tier>` record as the channel message it stands for; `None` (logged) for
/// a record no engine wrote: no client ever sees its bytes ([`value::relayed_signal`]).
/// Its seq is then missing from the channel (resumes across it are `recovered: false`),
/// the same on every gateway. Public for the store's archiver, which reads the topics
/// the same way (what it stores is what the channels hold).
pub fn routed(topics: &[String; 4], m: &BorrowedMessage<'_>, max_bytes: usize) -> Option<RoutedItem> {
    let tier = Tier::ALL[topics.iter().position(|t| t == m.topic())?];
    let category = header(m, headers::CATEGORY)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<Category>().ok());
    let now = UnixNanos::now();
    let time = |name| nanos(m, name).and_then(|t| plausible(t, now));
    let (Some(category), Some(data), Some(ingest_ts), Some(routed_ts)) =
        (category, m.payload(), time(headers::INGEST_TS), time(headers::ROUTED_TS))
    else {
        tracing::warn!(
            topic = m.topic(),
            offset = m.offset(),
            "not a routed signal record (category, body and plausible times); skipped"
        );
        return None;
    };
    let data = match value::relayed_signal(data, Some(category), max_bytes) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(topic = m.topic(), offset = m.offset(), code = e.code(), error = %e, "relayed record dropped");
            return None;
        }
    };
    Some(RoutedItem {
        tier,
        seq: u64::try_from(m.offset()).ok()? + 1,
        category,
        data,
        ingest_ts,
        routed_ts,
        sent_ts: time(headers::SENT_TS),
        skipped: 0,
    })
}

fn tick(m: &BorrowedMessage<'_>, scratch: &mut AlignedVec) -> Option<IngestItem> {
    let ct = content_type(m).ok()?;
    value::decode_tick(m.payload().unwrap_or_default(), ct, scratch).ok().map(IngestItem::Tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_times_far_ahead_are_brought_back_and_those_before_1970_refused() {
        let now = UnixNanos(1_800_000_000_000_000_000);
        assert_eq!(plausible(now, now), Some(now));
        let soon = UnixNanos(now.0 + MAX_AHEAD_NS);
        assert_eq!(plausible(soon, now), Some(soon), "clock skew within the bound");
        let past = UnixNanos(now.0 - 86_400_000_000_000);
        assert_eq!(plausible(past, now), Some(past), "read-back of old records");
        for far in [UnixNanos(now.0 + MAX_AHEAD_NS + 1), UnixNanos(i64::MAX)] {
            assert_eq!(plausible(far, now), Some(soon), "{far:?} brought back");
        }
        for bad in [UnixNanos(0), UnixNanos(i64::MIN)] {
            assert_eq!(plausible(bad, now), None, "{bad:?}");
        }
    }
}
