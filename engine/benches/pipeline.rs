//! Hot-path micro-benchmarks of the engine (figures go to docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p signalcast-engine --bench pipeline
//! ```
//!
//! - `decode/*`: one SIGNAL (or TICK) frame payload: copy to aligned scratch, bytecheck
//!   validation, conversion into a checked `Signal` (or `Tick`).
//! - `stage/*`: the single-writer stage on one core: dedup, filter, enrich, route,
//!   encode once per channel, append to the ring, delayed views; acks and bell per
//!   256-item batch as the stage thread does. The clock advances 1 ms per signal
//!   (1,000 signals/s of simulated time), so after 30,000 signals the delayed views
//!   release as many messages as they take: the steady state.
//!   `stage/fixture_mix_stored` adds the signal store's queue: each batch handed to the
//!   store's own thread (a store that keeps nothing) and let out once it says stored.
//! - `ticks/*`: one tick through the stage (tick book, then outcome tracking) with
//!   100,000 open signals over 1,000 symbols, their targets and stops 2–50% away so that
//!   the ticks (±0.5% around the entry) cross none: what tracking costs a tick that
//!   closes nothing, against `untracked` (`max_open_signals = 0`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::channels::ChannelSet;
use engine::config::EngineConfig;
use engine::feed::ProducerRegistry;
use engine::feed::codec::{ProducerMessage, encode_signal, next_frame};
use engine::model::{Confidence, Signal, Tick, UnixNanos};
use engine::pipeline::{IngestItem, Origin, PipelineStats, SignalItem, Stage};
use engine::policy::TierPolicy;
use engine::ticks::TickBook;
use rkyv::util::AlignedVec;

// The allocator the binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixtures<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
    let text = std::fs::read_to_string(format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn decode(c: &mut Criterion) {
    let signals: Vec<Signal> = fixtures("signals.jsonl");
    let plain = signals.iter().find(|s| s.analysis.is_none()).unwrap();
    let with_analysis = signals.iter().find(|s| s.analysis.is_some()).unwrap();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, s) in [("signal", plain), ("signal_with_analysis", with_analysis)] {
        let mut frame = Vec::new();
        encode_signal(&mut frame, 1, Some(UnixNanos(1)), s);
        let mut buf = BytesMut::from(&frame[..]);
        let (kind, payload) = next_frame(&mut buf).unwrap().unwrap();
        let mut scratch = AlignedVec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                ProducerMessage::decode(kind, std::hint::black_box(&payload), &mut scratch, 4096).unwrap()
            })
        });
    }
    // A market tick: what the feed decodes 100,000 times a second in the ticks bench.
    let tick: Tick = fixtures::<Tick>("ticks.jsonl").remove(0);
    let mut frame = Vec::new();
    ProducerMessage::Tick(tick).encode(&mut frame);
    let mut buf = BytesMut::from(&frame[..]);
    let (kind, payload) = next_frame(&mut buf).unwrap().unwrap();
    let mut scratch = AlignedVec::new();
    g.bench_function("tick", |b| {
        b.iter(|| ProducerMessage::decode(kind, std::hint::black_box(&payload), &mut scratch, 4096).unwrap())
    });
    g.finish();
}

fn stage(c: &mut Criterion) {
    let now = UnixNanos::now();
    let fixture: Vec<Signal> = fixtures::<Signal>("signals.jsonl").iter().map(|s| s.restamped(now)).collect();
    let ticks: Vec<Tick> = fixtures("ticks.jsonl");
    let mut all_tiers = fixture.clone();
    for s in &mut all_tiers {
        s.confidence = Confidence::new(9_500).unwrap();
    }
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    for (name, templates, tracking, stored) in [
        ("fixture_mix", &fixture, true, false),
        ("fixture_mix_untracked", &fixture, false, false),
        ("fixture_mix_stored", &fixture, true, true),
        ("every_tier", &all_tiers, true, false),
    ] {
        // Outcome tracking on (the default) or off (`max_open_signals = 0`).
        let config = EngineConfig {
            max_open_signals: if tracking { EngineConfig::default().max_open_signals } else { 0 },
            ..EngineConfig::default()
        };
        let policy = Arc::new(TierPolicy::default());
        let (_book, writer) = TickBook::new(config.max_symbols);
        let channels = Arc::new(ChannelSet::new(&policy, config.ring_capacity));
        let mut stage = Stage::new(
            &config,
            policy,
            writer,
            channels,
            Arc::new(ProducerRegistry::default()),
            Arc::new(PipelineStats::default()),
        );
        if stored {
            // What a node runs: each batch handed to the store's thread (one in flight,
            // the next merged behind it), let out once stored.
            stage = stage.with_archive_thread(Box::new(NullArchive::default())).unwrap();
        }
        for t in &ticks {
            stage.handle(IngestItem::Tick(*t), now);
        }
        let mut next_id: u128 = 1;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for k in 0..iters {
                    let now = UnixNanos(now.0 + next_id as i64 * 1_000_000);
                    let mut s = templates[(k % templates.len() as u64) as usize].clone();
                    s.id = uuid::Uuid::from_u128(next_id);
                    // Keep each signal's lifetime relative to the simulated clock.
                    let ttl = s.expires_at.0 - s.generated_at.0;
                    s.generated_at = now;
                    s.expires_at = UnixNanos(now.0 + ttl);
                    next_id += 1;
                    let item = SignalItem {
                        origin: Origin::Local,
                        signal: s,
                        ingest_ts: now,
                        sent_ts: Some(now),
                        verdict: None,
                    };
                    stage.handle(IngestItem::Signal(Box::new(item)), now);
                    if k % 256 == 255 {
                        stage.release_due(now);
                        stage.finish_batch();
                        stage.poll_committed();
                    }
                }
                stage.finish_batch();
                stage.wait_committed();
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// A store that keeps nothing: the stage's side of the store's queue (rows staged, a
/// batch handed to the store's thread and waited for) without a disk.
#[derive(Debug, Default)]
struct NullArchive {
    rows: u64,
}

impl engine::pipeline::Archive for NullArchive {
    fn stage(&mut self, routed: &engine::pipeline::Archived<'_>) {
        self.rows += routed.data.len() as u64 & 1;
    }
    fn stage_close(&mut self, close: &engine::pipeline::ArchivedClose<'_>) {
        self.rows += close.data.len() as u64 & 1;
    }
    fn commit(&mut self) -> Result<(), String> {
        std::hint::black_box(self.rows);
        Ok(())
    }
}

fn ticks(c: &mut Criterion) {
    const SYMBOLS: usize = 1_000;
    const OPEN: u64 = 100_000;
    let now = UnixNanos::now();
    let symbol = |i: usize| format!("SYM{i:04}");
    let mut g = c.benchmark_group("ticks");
    g.throughput(Throughput::Elements(1));
    for (name, max_open) in [("tracked_100k_open", 200_000), ("untracked", 0)] {
        let config = EngineConfig { max_open_signals: max_open, ..EngineConfig::default() };
        let policy = Arc::new(TierPolicy::default());
        let (_book, writer) = TickBook::new(config.max_symbols);
        let channels = Arc::new(ChannelSet::new(&policy, config.ring_capacity));
        let stats = Arc::new(PipelineStats::default());
        let mut stage = Stage::new(
            &config,
            policy,
            writer,
            channels,
            Arc::new(ProducerRegistry::default()),
            Arc::clone(&stats),
        );
        let tick_of = |i: usize, last: i64, at: UnixNanos| {
            let mut t = engine::testkit::tick(&symbol(i), "NSE", "100");
            t.last = engine::model::Price::from_raw(last).unwrap();
            t.ts = at;
            t
        };
        for i in 0..SYMBOLS {
            stage.handle(IngestItem::Tick(tick_of(i, 1_000_000, now)), now);
        }
        for n in 0..OPEN {
            let i = (n % SYMBOLS as u64) as usize;
            let mut s = engine::testkit::signal_at(
                u128::from(n) + 1,
                9_500,
                &symbol(i),
                "NSE",
                engine::model::Category::Equity,
                now,
            );
            // 2% to 50% away from the entry of 100.
            let away = 200 + (n % 4_800) as i64;
            s.target_price = engine::model::Price::from_raw(1_000_000 + away * 100).unwrap();
            s.stop_loss = engine::model::Price::from_raw(1_000_000 - away * 100).unwrap();
            let item =
                SignalItem { origin: Origin::Local, signal: s, ingest_ts: now, sent_ts: None, verdict: None };
            stage.handle(IngestItem::Signal(Box::new(item)), now);
            if n % 1_024 == 1_023 {
                stage.finish_batch();
            }
        }
        stage.finish_batch();
        assert_eq!(stats.open_signals(), if max_open > 0 { OPEN } else { 0 });
        let mut k: u64 = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    k += 1;
                    let at = UnixNanos(now.0 + k as i64);
                    // ±0.5% around 100.
                    let last = 995_000 + (k.wrapping_mul(7_919) % 10_000) as i64;
                    stage.handle(IngestItem::Tick(tick_of((k % SYMBOLS as u64) as usize, last, at)), at);
                }
                start.elapsed()
            })
        });
        assert_eq!(stats.open_signals(), if max_open > 0 { OPEN } else { 0 }, "no tick closed anything");
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = decode, stage, ticks
}
criterion_main!(benches);
