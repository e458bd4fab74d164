//! The Kafka → PostgreSQL archiver against a real Kafka-protocol broker (tansu) and a
//! real PostgreSQL: signals published through the engine role's path (a stage whose
//! sink is the KafkaSink, as on an engine node), archived, the archiver killed mid-way
//! and restarted; every signal is in PostgreSQL exactly once with its channels and seqs.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::pg::Postgres;
use engine::channels::ChannelSet;
use engine::config::{EngineConfig, KafkaConfig};
use engine::feed::ProducerRegistry;
use engine::kafka::{KafkaSink, KafkaStats};
use engine::model::{Category, Tier, UnixNanos};
use engine::pipeline::{IngestItem, Origin, PipelineStats, SignalItem, Stage};
use engine::policy::TierPolicy;
use engine::ticks::TickBook;
use store::PgStore;
use store::archiver::{ArchiveError, ArchiveOptions, ArchiveStats, run_with};

/// An engine node's stage, publishing to `signals.<tier>`.
fn engine_stage(kafka: &KafkaConfig, policy: &Arc<TierPolicy>) -> Stage {
    let config = EngineConfig::default();
    let (_book, writer) = TickBook::new(config.max_symbols);
    let channels = Arc::new(ChannelSet::new(policy, config.ring_capacity));
    Stage::new(
        &config,
        Arc::clone(policy),
        writer,
        channels,
        Arc::new(ProducerRegistry::default()),
        Arc::new(PipelineStats::default()),
    )
    .with_sink(Box::new(KafkaSink::new(kafka, Arc::new(KafkaStats::default())).unwrap()))
}

/// Signal `n`: every third reaches all four tiers, the others two or three.
fn confidence(n: u128) -> u16 {
    [9_500, 8_700, 8_000][(n % 3) as usize]
}

/// Routes signals `ns` in batches of 50 (each batch flushed to the broker).
fn publish(stage: &mut Stage, ns: std::ops::RangeInclusive<u128>) {
    let ns: Vec<u128> = ns.collect();
    for chunk in ns.chunks(50) {
        let now = UnixNanos::now();
        for &n in chunk {
            let symbol = if n % 2 == 0 { "RELIANCE" } else { "BTC-USDT" };
            let category = if n % 2 == 0 { Category::Equity } else { Category::Crypto };
            let signal = engine::testkit::signal_at(n, confidence(n), symbol, "NSE", category, now);
            stage.handle(
                IngestItem::Signal(Box::new(SignalItem {
                    origin: Origin::Local,
                    signal,
                    ingest_ts: now,
                    sent_ts: None,
                    verdict: None,
                })),
                now,
            );
        }
        stage.finish_batch();
    }
}

/// The ids each tier's channel should hold, in seq order.
fn expected(policy: &TierPolicy, ns: std::ops::RangeInclusive<u128>) -> [Vec<uuid::Uuid>; 4] {
    let mut out: [Vec<uuid::Uuid>; 4] = Default::default();
    for n in ns {
        let c = engine::model::Confidence::new(confidence(n)).unwrap();
        for tier in Tier::ALL {
            if policy.passes_global(c) && policy.admits(tier, c) {
                out[tier.index()].push(uuid::Uuid::from_u128(n));
            }
        }
    }
    out
}

async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_signal_is_archived_once_with_its_channels_across_a_kill_and_a_restart() {
    let pg = Postgres::start();
    let broker = Broker::start();
    let kafka = KafkaConfig { brokers: broker.addr.clone(), ..KafkaConfig::default() };
    engine::kafka::ensure_topics(&kafka).await.unwrap();
    let store = PgStore::connect(&pg.url(), None).await.unwrap();
    let policy = Arc::new(TierPolicy::default());
    let mut stage = engine_stage(&kafka, &policy);
    let (first, all) = (1..=300u128, 1..=450u128);
    tokio::task::block_in_place(|| publish(&mut stage, first.clone()));
    let total_records: usize = expected(&policy, all.clone()).iter().map(Vec::len).sum();

    // Small batches, so that the kill comes between commits.
    let options =
        ArchiveOptions { max_batch: 20, linger: Duration::from_millis(5), ..ArchiveOptions::default() };
    let stats = Arc::new(ArchiveStats::default());
    let archiver = tokio::spawn(run_with(
        kafka.clone(),
        store.clone(),
        options,
        Arc::clone(&stats),
        std::future::pending(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ArchiveStats::get(&stats.records) < 150 {
        assert!(Instant::now() < deadline, "the archiver did not store 150 records in 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    archiver.abort();
    assert!(archiver.await.unwrap_err().is_cancelled());
    // A commit in flight when it was killed ends (or not) at the server; then read
    // how far the store got.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored_records: i64 = store.archive_offsets().await.unwrap().iter().map(|(_, _, o)| o).sum();
    assert!(stored_records >= 150, "{stored_records}");
    let first_records: usize = self::expected(&policy, first).iter().map(Vec::len).sum();
    assert!((stored_records as usize) < first_records, "killed mid-way: {stored_records} of {first_records}");

    // More is routed while the archiver is down; then it restarts.
    tokio::task::block_in_place(|| publish(&mut stage, 301..=450));
    let expected = expected(&policy, all.clone());
    let stats = Arc::new(ArchiveStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let archiver = tokio::spawn(run_with(kafka.clone(), store.clone(), options, Arc::clone(&stats), async {
        let _ = stop_rx.await;
    }));
    eventually(60, "the archiver catches up", async || {
        Tier::ALL.iter().all(|t| stats.committed(*t) == expected[t.index()].len() as i64)
    })
    .await;
    stop_tx.send(()).unwrap();
    archiver.await.unwrap().unwrap();
    assert_eq!(
        ArchiveStats::get(&stats.records) as usize,
        total_records - stored_records as usize,
        "the restart resumed where the store ended: nothing read twice"
    );
    assert_eq!(ArchiveStats::get(&stats.rejected), 0);
    assert_eq!(ArchiveStats::get(&stats.gaps), 0);
    assert!(ArchiveStats::get(&stats.reread) > 0, "the restart read from before the stored offsets");

    // Every signal once, with each channel and seq it took.
    for tier in Tier::ALL {
        let rows = store.after(tier, 0, 10_000).await.unwrap();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|m| m.id).collect();
        assert_eq!(ids, expected[tier.index()], "the ids of {tier:?} in seq order");
        let seqs: Vec<u64> = rows.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=ids.len() as u64).collect::<Vec<_>>(), "the seqs of {tier:?}: offset + 1");
        assert_eq!(store.head(tier).await.unwrap(), ids.len() as u64);
    }
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id), (SELECT count(*) FROM signals.signal_channels)
             FROM signals.trading_signals",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (450, 450), "one row per signal");
    assert_eq!(row.get::<_, i64>(2) as usize, total_records, "one channel row per record");
    // History carries each tier's seq (the last batch of 50 shares one routed time).
    let page = store.history(&store::Query { limit: 50, ..store::Query::default() }).await.unwrap();
    let last = uuid::Uuid::from_u128(450).to_string();
    let item = page.items.iter().find(|i| i.data.contains(&last)).unwrap();
    assert_eq!(
        item.channels,
        [(Tier::Free, 150), (Tier::Basic, 300), (Tier::Premium, 450), (Tier::Enterprise, 450)]
    );

    // The channels' epochs are the cluster's, as every gateway derives them.
    let kafka2 = kafka.clone();
    let epochs = tokio::task::spawn_blocking(move || engine::kafka::epochs(&kafka2)).await.unwrap().unwrap();
    for tier in Tier::ALL {
        assert_eq!(store.epoch(tier).await.unwrap(), Some(epochs[tier.index()].0));
    }
    // A store filled from another cluster is refused.
    store.set_epoch(Tier::Free, 42).await.unwrap();
    let err = run_with(kafka, store, options, Arc::new(ArchiveStats::default()), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::OtherCluster { tier: "free", stored: 42, .. }), "{err}");
}
