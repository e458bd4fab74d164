//! History pages from a store of 1,000,000 signals (the embedded SQLite backend): p50
//! and p99 of a page of 100 for the common queries.
//!
//!   cargo bench -p signalcast-store --bench history
//!
//! The store is built once in `target/bench-store` (about a minute) and reused; delete the
//! directory to rebuild it. Figures: docs/PERFORMANCE.md.
// The report is this program's output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use engine::model::{Category, Tier, UnixNanos};
use hdrhistogram::Histogram;
use store::{Durability, Query, Routed, SqliteStore};

const SIGNALS: u64 = 1_000_000;
const SYMBOLS: u64 = 500;
const SOURCES: u64 = 50;
/// One signal a second: 1,000,000 signals span 11.6 days.
const T0: i64 = 1_795_400_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn build(dir: &std::path::Path) -> SqliteStore {
    let mut store = SqliteStore::open(dir, Durability::Process).expect("open");
    if store.head(Tier::Enterprise).expect("head") >= SIGNALS {
        return store;
    }
    let started = Instant::now();
    let mut seqs = [0u64; 4];
    let mut batch = Vec::with_capacity(10_000);
    for n in 1..=SIGNALS {
        let at = UnixNanos(T0 + n as i64 * SEC);
        let category = Category::ALL[(n % 4) as usize];
        let symbol = format!("S{:03}", n % SYMBOLS);
        let confidence = 7_600 + (n % 2_400) as u16;
        let mut signal = engine::testkit::signal_at(n as u128, confidence, &symbol, "NSE", category, at);
        signal.source_id = uuid::Uuid::from_u128(u128::from(n % SOURCES) + 1);
        let bars = [9_000, 8_500, 7_500, 7_500];
        let channels: Vec<(Tier, u64)> = Tier::ALL
            .into_iter()
            .filter(|t| confidence >= bars[t.index()])
            .map(|t| {
                seqs[t.index()] += 1;
                (t, seqs[t.index()])
            })
            .collect();
        batch.push(Routed {
            data: format!(r#"{{"id":"{}","symbol":"{symbol}","n":{n}}}"#, signal.id),
            signal,
            producer: Some("bench".into()),
            market: None,
            ingest_ts: at,
            routed_ts: at,
            channels,
        });
        if batch.len() == 10_000 {
            store.append(&batch).expect("append");
            batch.clear();
        }
    }
    eprintln!("built {SIGNALS} signals in {:?}", started.elapsed());
    store
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-store");
    let store = build(&dir);
    let day = 86_400 * SEC;
    let day_range = Query {
        tier: Some(Tier::Enterprise),
        from: Some(UnixNanos(T0 + 5 * day)),
        to: Some(UnixNanos(T0 + 6 * day)),
        limit: 100,
        ..Query::default()
    };
    let queries = [
        ("latest for a tier (premium)", Query { tier: Some(Tier::Premium), limit: 100, ..Query::default() }),
        (
            "one symbol",
            Query {
                tier: Some(Tier::Enterprise),
                symbol: Some("S123".into()),
                exchange: Some("NSE".into()),
                limit: 100,
                ..Query::default()
            },
        ),
        (
            "one source",
            Query {
                tier: Some(Tier::Enterprise),
                source: Some(uuid::Uuid::from_u128(7)),
                limit: 100,
                ..Query::default()
            },
        ),
        ("a day's range", day_range.clone()),
        ("a day's range, page 50", day_range),
    ];
    println!("| query (page of 100, {SIGNALS} signals) | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|");
    for (name, mut q) in queries {
        if name.ends_with("page 50") {
            for _ in 0..49 {
                q.cursor = store.history(&q).expect("page").next;
            }
        }
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..100 {
            store.history(&q).expect("warm up");
        }
        for _ in 0..2_000 {
            let t = Instant::now();
            let page = store.history(&q).expect("page");
            h.record(t.elapsed().as_micros() as u64).expect("record");
            assert_eq!(page.items.len(), 100, "{name}");
        }
        println!("| {name} | {} | {} | {} |", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
    }
    // The scoreboard (GET /v1/sources): every stored signal read with its status (at
    // most once per 10 s: the gateway keeps the rows), then counted for each caller.
    println!();
    println!("| scoreboard over {SIGNALS} signals | read ms | count ms |");
    println!("|---|---|---|");
    for _ in 0..3 {
        let t = Instant::now();
        let rows = store.score_rows(None).expect("score rows");
        let read = t.elapsed();
        let t = Instant::now();
        let viewer = store::scoreboard::Viewer::ALL;
        let board = store::scoreboard::sources(&rows, &viewer, UnixNanos(T0 + 12 * day));
        let count = t.elapsed();
        assert_eq!(board["sources"].as_array().map(Vec::len), Some(SOURCES as usize));
        println!("| | {} | {} |", read.as_millis(), count.as_millis());
    }
    let t = Instant::now();
    let one = store.score_rows(Some(("S123", Some("NSE")))).expect("symbol rows");
    println!(
        "\none symbol's figures (GET /v1/signals/stats, {} signals): {} µs",
        one.len(),
        t.elapsed().as_micros()
    );
}
