//! Counters of the gateway and their Prometheus exposition.
//!
//! Plain atomics, read on scrape by `prometheus-client` collectors: nothing per
//! message beyond an increment (a shard's own, added to these once per loop turn).
//! The delivery-latency histogram has fixed buckets so that Prometheus can aggregate
//! it across gateways.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use engine::Engine;
use engine::feed::FeedStats;
use engine::kafka::KafkaStats;
use engine::model::Tier;
use engine::pipeline::DropReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::hub::Timing;

/// Bucket upper bounds of the delivery-latency histogram, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Ingest-to-socket-write latency of delivered signals.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// (upper bound in µs or None for +Inf, count in that bucket alone)
    pub fn snapshot(&self) -> (Vec<(Option<u64>, u64)>, u64) {
        let mut v: Vec<(Option<u64>, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (Some(*b), c.load(Ordering::Relaxed)))
            .collect();
        v.push((None, self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed)));
        (v, self.sum_us.load(Ordering::Relaxed))
    }
}

/// One shard's share of a histogram, between publications.
#[derive(Debug, Default)]
struct LocalHistogram {
    buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl LocalHistogram {
    fn record(&mut self, us: u64) {
        self.buckets[LATENCY_BUCKETS_US.partition_point(|&b| b < us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    fn publish(&mut self, to: &LatencyHistogram) {
        for (t, n) in to.buckets.iter().zip(&mut self.buckets) {
            if *n > 0 {
                t.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        to.sum_us.fetch_add(std::mem::take(&mut self.sum_us), Ordering::Relaxed);
    }
}

/// A hub shard's own counts of what it wrote, added to [`GatewayStats`] once per
/// turn of its loop rather than once per delivery (no shared cache line per send).
#[derive(Debug, Default)]
pub struct LocalStats {
    delivered: [u64; 4],
    live: LocalHistogram,
    /// Delayed views and replays: they wait on purpose, so they stay out of `live`.
    delayed: LocalHistogram,
    replayed: LocalHistogram,
    any: bool,
}

impl LocalStats {
    /// A signal of `signals_<tier>` was written to a socket, `latency_ns` after ingest.
    pub fn delivered(&mut self, tier: Tier, timing: Timing, latency_ns: i64) {
        let us = (latency_ns.max(0) / 1_000) as u64;
        self.delivered[tier.index()] += 1;
        match timing {
            Timing::Live => self.live.record(us),
            Timing::Delayed => self.delayed.record(us),
            Timing::Replay => self.replayed.record(us),
        }
        self.any = true;
    }

    /// Adds the counts to `to` and starts over.
    pub fn publish(&mut self, to: &GatewayStats) {
        if !std::mem::take(&mut self.any) {
            return;
        }
        for (t, n) in to.delivered.iter().zip(&mut self.delivered) {
            t.fetch_add(std::mem::take(n), Ordering::Relaxed);
        }
        self.live.publish(&to.latency);
        self.delayed.publish(&to.delayed_latency);
        self.replayed.publish(&to.replay_latency);
    }
}

/// Gateway counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    connections: [AtomicI64; 4],
    delivered: [AtomicU64; 4],
    slow_consumer_closes: AtomicU64,
    upgrades: AtomicU64,
    auth_failures: AtomicU64,
    /// Upgraded connections turned away because every hub shard's queue was full.
    hub_busy: AtomicU64,
    /// permessage-deflate: upgrades that took it, channel messages compressed (once per
    /// hub shard), and their bytes before and after.
    deflate_upgrades: AtomicU64,
    deflated: AtomicU64,
    deflate_in: AtomicU64,
    deflate_out: AtomicU64,
    /// Live deliveries only: what the engine and the hub cost.
    pub latency: LatencyHistogram,
    /// Deliveries from delayed views (the delay is in the figure, on purpose).
    pub delayed_latency: LatencyHistogram,
    /// Resume replays: ingest to the replayed write.
    pub replay_latency: LatencyHistogram,
}

impl GatewayStats {
    pub fn connected(&self, tier: Tier, delta: i64) {
        self.connections[tier.index()].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn connections(&self, tier: Tier) -> i64 {
        self.connections[tier.index()].load(Ordering::Relaxed)
    }

    /// WebSocket connections open, every tier.
    pub fn open_connections(&self) -> usize {
        let n: i64 = self.connections.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        usize::try_from(n).unwrap_or(0)
    }

    pub fn delivered_count(&self, tier: Tier) -> u64 {
        self.delivered[tier.index()].load(Ordering::Relaxed)
    }

    pub fn slow_consumer(&self) {
        self.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_consumer_closes(&self) -> u64 {
        self.slow_consumer_closes.load(Ordering::Relaxed)
    }

    pub fn upgraded(&self) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hub_was_busy(&self) {
        self.hub_busy.fetch_add(1, Ordering::Relaxed);
    }

    /// An upgrade negotiated permessage-deflate.
    pub fn deflate_upgraded(&self) {
        self.deflate_upgrades.fetch_add(1, Ordering::Relaxed);
    }

    /// A hub shard compressed a channel message of `plain` bytes to `compressed`.
    pub fn deflated(&self, plain: usize, compressed: usize) {
        self.deflated.fetch_add(1, Ordering::Relaxed);
        self.deflate_in.fetch_add(plain as u64, Ordering::Relaxed);
        self.deflate_out.fetch_add(compressed as u64, Ordering::Relaxed);
    }
}

/// The process's metrics, read from the counters above (and the engine's, the
/// feed's, Kafka's, the accounts link's) at scrape time and encoded by
/// `prometheus-client`: the hot paths only bump their own atomics, and nothing here
/// keeps a second copy of a value.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(
        gw: Arc<GatewayStats>,
        engine: Arc<Engine>,
        feed: Arc<FeedStats>,
        kafka: Arc<KafkaStats>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Gateway { gw, engine, feed, kafka }));
        registry.register_collector(Box::new(Process));
        Self { registry }
    }

    /// Adds the accounts sidecar's link: `up` says whether its change feed is
    /// connected, `keys` how many signing keys the gateway holds.
    pub fn with_accounts(
        mut self,
        up: impl Fn() -> bool + Send + Sync + 'static,
        keys: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        self.registry.register_collector(Box::new(AccountsLink { up: Box::new(up), keys: Box::new(keys) }));
        self
    }

    /// The OpenMetrics text of every metric (`CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug in a
        // collector, and a partial page is still better than none.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        text
    }
}

/// `signalcast archive`'s metrics: what it stored, its lag per tier topic, pruning.
pub fn archive_exposition(stats: Arc<store::archiver::ArchiveStats>) -> String {
    #[derive(Debug)]
    struct Archive(Arc<store::archiver::ArchiveStats>);
    impl Collector for Archive {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Fmt {
            use store::archiver::ArchiveStats as S;
            let (s, e) = (&self.0, &mut enc);
            counter(
                e,
                "signalcast_archive_records",
                "signals.<tier> records taken (each once).",
                S::get(&s.records),
            )?;
            counter(e, "signalcast_archive_signals", "Signals new to the store.", S::get(&s.signals))?;
            counter(
                e,
                "signalcast_archive_rejected",
                "Records that are no routed signal (skipped).",
                S::get(&s.rejected),
            )?;
            counter(
                e,
                "signalcast_archive_gaps",
                "Offsets that never came (deleted before they were archived).",
                S::get(&s.gaps),
            )?;
            counter(e, "signalcast_archive_commits", "Transactions committed.", S::get(&s.commits))?;
            counter(
                e,
                "signalcast_archive_commit_failures",
                "Commits that failed (each retried).",
                S::get(&s.commit_failures),
            )?;
            counter(e, "signalcast_archive_pruned", "Signals removed by retention.", S::get(&s.pruned))?;
            per_tier(
                e,
                "signalcast_archive_lag",
                "Records of the tier's topic not yet stored.",
                MetricType::Gauge,
                |t| ConstGauge::new(s.lag(t)),
            )?;
            Ok(())
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Archive(stats)));
    registry.register_collector(Box::new(Process));
    let mut text = String::with_capacity(2 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    text
}

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Fmt = Result<(), std::fmt::Error>;

/// One unlabelled counter; `name` without `_total`, which the encoder adds.
fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One unlabelled gauge.
fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> Fmt {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One series per (label value, metric) under label `key`.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    key: &'static str,
    rows: impl IntoIterator<Item = (String, M)>,
    kind: MetricType,
) -> Fmt {
    let mut f = enc.encode_descriptor(name, help, None, kind)?;
    for (value, m) in rows {
        m.encode(f.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}

fn per_tier<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    f: impl Fn(Tier) -> M,
) -> Fmt {
    family(enc, name, help, "tier", Tier::ALL.map(|t| (t.to_string(), f(t))), kind)
}

/// A latency histogram's buckets as (upper bound in seconds, count in that bucket
/// alone: the encoder accumulates them), its sum in seconds and its count.
fn histogram_parts(h: &LatencyHistogram) -> (Vec<(f64, u64)>, f64, u64) {
    let (buckets, sum_us) = h.snapshot();
    let count = buckets.iter().map(|(_, n)| n).sum();
    // `f64::MAX` is how prometheus-client spells the `+Inf` bucket.
    let buckets = buckets.into_iter().map(|(le, n)| (le.map_or(f64::MAX, |us| us as f64 / 1e6), n)).collect();
    (buckets, sum_us as f64 / 1e6, count)
}

/// Histograms of one family, one series per (labels, histogram).
fn histograms(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Option<(&'static str, &'static str)>, &LatencyHistogram)],
) -> Fmt {
    let mut f = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (label, h) in series {
        let (buckets, sum, count) = histogram_parts(h);
        match label {
            Some(l) => f.encode_family(&[*l])?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
            None => f.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
        }
    }
    Ok(())
}

/// The gateway's, the engine's, the feed's and Kafka's counters.
#[derive(Debug)]
struct Gateway {
    gw: Arc<GatewayStats>,
    engine: Arc<Engine>,
    feed: Arc<FeedStats>,
    kafka: Arc<KafkaStats>,
}

impl Collector for Gateway {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Fmt {
        let (gw, engine, kafka) = (&self.gw, &self.engine, &self.kafka);
        let e = &mut enc;
        let (counter_t, gauge_t) = (MetricType::Counter, MetricType::Gauge);
        per_tier(
            e,
            "signalcast_connections",
            "Open WebSocket connections by the user's tier.",
            gauge_t,
            |t| ConstGauge::new(gw.connections(t)),
        )?;
        per_tier(
            e,
            "signalcast_signals_delivered",
            "Signal messages written to client sockets, by channel tier.",
            counter_t,
            |t| ConstCounter::new(gw.delivered_count(t)),
        )?;
        per_tier(
            e,
            "signalcast_signals_routed",
            "Messages appended to signals_<tier> by the pipeline.",
            counter_t,
            |t| ConstCounter::new(engine.stats.routed(t)),
        )?;
        per_tier(
            e,
            "signalcast_channel_head_seq",
            "Last published seq of each live tier channel.",
            gauge_t,
            |t| ConstGauge::new(engine.channels.live(t).head() as i64),
        )?;
        family(
            e,
            "signalcast_drops",
            "Signals (and ticks) that did not reach a channel, by reason.",
            "reason",
            DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), ConstCounter::new(engine.stats.drops(*r)))),
            counter_t,
        )?;
        family(
            e,
            "signalcast_outcomes_closed",
            "Signals closed by their outcome (docs/outcomes.md), by status.",
            "status",
            engine::outcome::Status::ALL[1..]
                .iter()
                .map(|s| (s.as_str().to_owned(), ConstCounter::new(engine.stats.closes(*s)))),
            counter_t,
        )?;
        gauge(
            e,
            "signalcast_outcomes_open",
            "Routed signals whose outcome is being tracked.",
            engine.stats.open_signals() as i64,
        )?;
        gauge(
            e,
            "signalcast_outcomes_standby",
            "Engine nodes in scale-out: open signals of symbols whose partitions other nodes hold, kept for a takeover.",
            engine.stats.standby_signals() as i64,
        )?;
        counter(
            e,
            "signalcast_outcomes_untracked",
            "Routed signals not tracked because engine.max_open_signals were open (they stay open).",
            engine.stats.outcomes_untracked(),
        )?;
        counter(
            e,
            "signalcast_signals_received",
            "Signals taken by the pipeline stage.",
            engine.stats.signals_in(),
        )?;
        counter(
            e,
            "signalcast_store_failures",
            "Commits of the signal store that failed (each retried; nothing is acknowledged meanwhile).",
            engine.stats.store_failures(),
        )?;
        gauge(
            e,
            "signalcast_store_stalled",
            "1 while the pipeline waits for the signal store to take a batch (disk full, read-only).",
            i64::from(engine.stats.store_stalled()),
        )?;
        counter(
            e,
            "signalcast_ticks_received",
            "Ticks taken by the pipeline stage.",
            engine.stats.ticks_in(),
        )?;
        gauge(
            e,
            "signalcast_ingest_queue_depth",
            "Items waiting between ingest and the stage.",
            engine.queue_depth() as i64,
        )?;
        gauge(
            e,
            "signalcast_feed_producers_connected",
            "Producers with an authenticated feed session.",
            self.feed.connected() as i64,
        )?;
        counter(
            e,
            "signalcast_feed_errors",
            "Producer connections closed with an ERROR frame.",
            self.feed.errors(),
        )?;
        counter(
            e,
            "signalcast_slow_consumer_closes",
            "Connections closed with 4008 (outbound buffer full).",
            gw.slow_consumer_closes(),
        )?;
        counter(
            e,
            "signalcast_ws_upgrades",
            "WebSocket upgrades accepted.",
            gw.upgrades.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_auth_failures",
            "Connections refused with 401.",
            gw.auth_failures.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_hub_busy_refusals",
            "Connections turned away after the upgrade because every hub shard's queue of new connections was full (503 hub_busy, or close 1013).",
            gw.hub_busy.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_deflate_upgrades",
            "WebSocket upgrades that negotiated permessage-deflate.",
            gw.deflate_upgrades.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_deflate_messages",
            "Channel messages compressed for permessage-deflate connections (once per hub shard, not per delivery).",
            gw.deflated.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_deflate_input_bytes",
            "Bytes of the channel messages compressed, before compression.",
            gw.deflate_in.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "signalcast_deflate_output_bytes",
            "Bytes of the channel messages compressed, after compression (without the 4-byte tail the extension drops).",
            gw.deflate_out.load(Ordering::Relaxed),
        )?;
        for (name, help, c) in [
            (
                "signalcast_kafka_records_consumed",
                "Records taken from raw-signals and market-data.",
                &kafka.consumed,
            ),
            ("signalcast_kafka_dead_lettered", "Poison records sent to the DLQ.", &kafka.dead_lettered),
            (
                "signalcast_kafka_published",
                "Routed signals written to signals.<tier> (engine role).",
                &kafka.published,
            ),
            (
                "signalcast_kafka_publish_failed",
                "Routed signals Kafka refused for good.",
                &kafka.publish_failed,
            ),
            ("signalcast_kafka_relayed", "Records read from signals.<tier> (gateway role).", &kafka.relayed),
            (
                "signalcast_kafka_unauthenticated",
                "raw-signals records refused for their signature (unsigned, unknown producer, bad or stale).",
                &kafka.unauthenticated,
            ),
            (
                "signalcast_kafka_dlq_failed",
                "Poison records the DLQ did not take (permanent error or dlq_timeout); given up.",
                &kafka.dlq_failed,
            ),
            (
                "signalcast_kafka_relay_rejected",
                "signals.<tier> records dropped before any client: too large or not a routed signal.",
                &kafka.relay_rejected,
            ),
        ] {
            counter(e, name, help, KafkaStats::get(c))?;
        }
        gauge(
            e,
            "signalcast_kafka_assigned_partitions",
            "Input partitions (raw-signals and market-data, co-partitioned) this engine node holds now.",
            KafkaStats::get(&kafka.assigned_partitions) as i64,
        )?;
        family(
            e,
            "signalcast_kafka_consumer_lag",
            "Records not yet consumed, per topic, over the partitions this node holds.",
            "topic",
            kafka.lag().into_iter().map(|(t, l)| (t, ConstGauge::new(l))),
            gauge_t,
        )?;
        histograms(
            e,
            "signalcast_delivery_latency_seconds",
            "Ingest to socket write of each live delivery (delayed views and resume replays are apart).",
            &[(None, &gw.latency)],
        )?;
        histograms(
            e,
            "signalcast_deferred_delivery_latency_seconds",
            "Ingest to socket write of deliveries that wait on purpose: delayed views, resume replays.",
            &[
                (Some(("kind", "delayed_view")), &gw.delayed_latency),
                (Some(("kind", "replay")), &gw.replay_latency),
            ],
        )
    }
}

/// The accounts sidecar's link, for a gateway that uses one.
struct AccountsLink {
    up: Box<dyn Fn() -> bool + Send + Sync>,
    keys: Box<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for AccountsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsLink").finish_non_exhaustive()
    }
}

impl Collector for AccountsLink {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Fmt {
        gauge(
            &mut enc,
            "signalcast_accounts_feed_up",
            "1 while the accounts change feed is connected; 0 = degraded (tokens verify with cached keys).",
            i64::from((self.up)()),
        )?;
        gauge(
            &mut enc,
            "signalcast_accounts_signing_keys",
            "Token signing keys held from the JWKS.",
            (self.keys)() as i64,
        )
    }
}

/// The standard `process_*` gauges (names of Prometheus's process collector), read
/// from procfs at scrape time: what a soak watches (memory, descriptors) without
/// anything sampling the process from outside. Absent where procfs is.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Fmt {
        let e = &mut enc;
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kib) = status_kib(&status, "VmRSS") {
                gauge(
                    e,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    (kib * 1024) as i64,
                )?;
            }
            if let Some(kib) = status_kib(&status, "VmSize") {
                gauge(
                    e,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    (kib * 1024) as i64,
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle reading it is one of the entries; it is not the
            // process's own.
            let open = fds.count().saturating_sub(1) as i64;
            gauge(e, "process_open_fds", "Number of open file descriptors.", open)?;
        }
        if let Some(max) =
            std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files)
        {
            gauge(e, "process_max_fds", "Maximum number of open file descriptors.", max as i64)?;
        }
        Ok(())
    }
}

/// A `Name:   123 kB` line of /proc/self/status, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The soft limit of the `Max open files` line of /proc/self/limits.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_once() {
        let h = LatencyHistogram::default();
        let mut local = LocalHistogram::default();
        for us in [40, 40, 300, 2_000_000] {
            local.record(us);
        }
        local.publish(&h);
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One(LatencyHistogram);
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Fmt {
                histograms(&mut enc, "t_seconds", "test", &[(None, &self.0)])
            }
        }
        registry.register_collector(Box::new(One(h)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let bucket = |le: &str| {
            let key = format!("t_seconds_bucket{{le=\"{le}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&key)).map(str::to_owned)
        };
        assert_eq!(bucket("5e-5").or_else(|| bucket("0.00005")).as_deref(), Some("2"), "{text}");
        assert_eq!(bucket("0.5").as_deref(), Some("3"), "{text}");
        assert_eq!(bucket("+Inf").as_deref(), Some("4"), "{text}");
        assert!(text.contains("t_seconds_count 4"), "{text}");
    }

    #[test]
    fn procfs_lines_are_read_by_name_and_unit() {
        let status = "Name:\tsignalcast\nVmPeak:\t  99999 kB\nVmSize:\t  81234 kB\nVmRSS:\t   5120 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(5120));
        assert_eq!(status_kib(status, "VmSize"), Some(81234));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(max_open_files(limits), Some(20000));
        assert_eq!(max_open_files("Max open files            unlimited  unlimited  files\n"), None);
    }
}
