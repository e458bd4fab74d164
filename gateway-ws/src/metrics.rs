//! Counters of the gateway and their Prometheus text exposition.
//!
//! Plain atomics, rendered on scrape: no metrics registry and nothing per message
//! beyond an increment. The delivery-latency histogram has fixed buckets so that
//! Prometheus can aggregate it across gateways.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use engine::Engine;
use engine::feed::FeedStats;
use engine::kafka::KafkaStats;
use engine::model::Tier;
use engine::pipeline::DropReason;

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
        self.sum_us += us;
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
}

/// The whole process's metrics in the Prometheus text format.
pub fn render(gw: &GatewayStats, engine: &Engine, feed: &FeedStats, kafka: &KafkaStats) -> String {
    let mut o = String::with_capacity(4096);
    let section = |o: &mut String, name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let per_tier = |f: &dyn Fn(Tier) -> String| -> Vec<(String, String)> {
        Tier::ALL.iter().map(|t| (format!("{{tier=\"{t}\"}}"), f(*t))).collect()
    };
    section(
        &mut o,
        "signalcast_connections",
        "gauge",
        "Open WebSocket connections by the user's tier.",
        per_tier(&|t| gw.connections(t).to_string()),
    );
    section(
        &mut o,
        "signalcast_signals_delivered_total",
        "counter",
        "Signal messages written to client sockets, by channel tier.",
        per_tier(&|t| gw.delivered_count(t).to_string()),
    );
    section(
        &mut o,
        "signalcast_signals_routed_total",
        "counter",
        "Messages appended to signals_<tier> by the pipeline.",
        per_tier(&|t| engine.stats.routed(t).to_string()),
    );
    section(
        &mut o,
        "signalcast_channel_head_seq",
        "gauge",
        "Last published seq of each live tier channel.",
        per_tier(&|t| engine.channels.live(t).head().to_string()),
    );
    section(
        &mut o,
        "signalcast_drops_total",
        "counter",
        "Signals (and ticks) that did not reach a channel, by reason.",
        DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.as_str()), engine.stats.drops(*r).to_string()))
            .collect(),
    );
    single(
        &mut o,
        "signalcast_signals_received_total",
        "counter",
        "Signals taken by the pipeline stage.",
        engine.stats.signals_in().to_string(),
    );
    single(
        &mut o,
        "signalcast_ticks_received_total",
        "counter",
        "Ticks taken by the pipeline stage.",
        engine.stats.ticks_in().to_string(),
    );
    single(
        &mut o,
        "signalcast_ingest_queue_depth",
        "gauge",
        "Items waiting between ingest and the stage.",
        engine.queue_depth().to_string(),
    );
    single(
        &mut o,
        "signalcast_feed_producers_connected",
        "gauge",
        "Producers with an authenticated feed session.",
        feed.connected().to_string(),
    );
    single(
        &mut o,
        "signalcast_feed_errors_total",
        "counter",
        "Producer connections closed with an ERROR frame.",
        feed.errors().to_string(),
    );
    single(
        &mut o,
        "signalcast_slow_consumer_closes_total",
        "counter",
        "Connections closed with 4008 (outbound buffer full).",
        gw.slow_consumer_closes().to_string(),
    );
    single(
        &mut o,
        "signalcast_ws_upgrades_total",
        "counter",
        "WebSocket upgrades accepted.",
        gw.upgrades.load(Ordering::Relaxed).to_string(),
    );
    single(
        &mut o,
        "signalcast_auth_failures_total",
        "counter",
        "Connections refused with 401.",
        gw.auth_failures.load(Ordering::Relaxed).to_string(),
    );
    for (name, help, counter) in [
        (
            "signalcast_kafka_records_consumed_total",
            "Records taken from raw-signals and market-data.",
            &kafka.consumed,
        ),
        ("signalcast_kafka_dead_lettered_total", "Poison records sent to the DLQ.", &kafka.dead_lettered),
        (
            "signalcast_kafka_published_total",
            "Routed signals written to signals.<tier> (engine role).",
            &kafka.published,
        ),
        (
            "signalcast_kafka_publish_failed_total",
            "Routed signals Kafka refused for good.",
            &kafka.publish_failed,
        ),
        (
            "signalcast_kafka_relayed_total",
            "Records read from signals.<tier> (gateway role).",
            &kafka.relayed,
        ),
    ] {
        single(&mut o, name, "counter", help, KafkaStats::get(counter).to_string());
    }
    section(
        &mut o,
        "signalcast_kafka_consumer_lag",
        "gauge",
        "Records not yet consumed, per topic, over the partitions this node holds.",
        kafka.lag().into_iter().map(|(t, l)| (format!("{{topic=\"{t}\"}}"), l.to_string())).collect(),
    );

    histogram(
        &mut o,
        "signalcast_delivery_latency_seconds",
        "Ingest to socket write of each live delivery (delayed views and resume replays are apart).",
        &[("", &gw.latency)],
    );
    histogram(
        &mut o,
        "signalcast_deferred_delivery_latency_seconds",
        "Ingest to socket write of deliveries that wait on purpose: delayed views, resume replays.",
        &[("kind=\"delayed_view\"", &gw.delayed_latency), ("kind=\"replay\"", &gw.replay_latency)],
    );
    process(&mut o);
    o
}

/// The accounts sidecar's link, for a gateway that uses one.
pub fn accounts(o: &mut String, feed_up: bool, keys: usize) {
    single(
        o,
        "signalcast_accounts_feed_up",
        "gauge",
        "1 while the accounts change feed is connected; 0 = degraded (tokens verify with cached keys).",
        u8::from(feed_up).to_string(),
    );
    single(
        o,
        "signalcast_accounts_signing_keys",
        "gauge",
        "Token signing keys held from the JWKS.",
        keys.to_string(),
    );
}

/// A Prometheus histogram, one series per (labels, histogram).
fn histogram(o: &mut String, name: &str, help: &str, series: &[(&str, &LatencyHistogram)]) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        let (buckets, sum_us) = h.snapshot();
        let mut cumulative = 0;
        for (le, count) in buckets {
            cumulative += count;
            let le = le.map_or_else(|| "+Inf".to_owned(), |us| (us as f64 / 1e6).to_string());
            let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(o, "{name}_sum{braces} {}\n{name}_count{braces} {cumulative}", sum_us as f64 / 1e6);
    }
}

/// One unlabelled sample with its HELP and TYPE lines.
fn single(o: &mut String, name: &str, kind: &str, help: &str, v: String) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}

/// The standard `process_*` gauges (names of Prometheus's process collector), read
/// from procfs at scrape time: what a soak watches (memory, descriptors) without
/// anything sampling the process from outside. Absent where procfs is.
fn process(o: &mut String) {
    let gauge =
        |o: &mut String, name: &str, help: &str, v: u64| single(o, name, "gauge", help, v.to_string());
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status_kib(&status, "VmRSS") {
            gauge(o, "process_resident_memory_bytes", "Resident memory size in bytes.", kib * 1024);
        }
        if let Some(kib) = status_kib(&status, "VmSize") {
            gauge(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.", kib * 1024);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle reading it is one of the entries; it is not the
        // process's own.
        let open = fds.count().saturating_sub(1) as u64;
        gauge(o, "process_open_fds", "Number of open file descriptors.", open);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files) {
        gauge(o, "process_max_fds", "Maximum number of open file descriptors.", max);
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
