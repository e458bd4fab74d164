//! What a signal channel's filter costs the hub (figures go to docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p signalcast-gateway --bench filters
//! ```
//!
//! - `fields`: reading a message's fields out of its data, once per message per shard
//!   (whatever the number of filtered subscribers).
//! - `check/<n>/{hit,miss}`: one subscriber's check against a watchlist of `n` symbols
//!   (1, 10, 100 and 1,000, the largest a tier allows), for a message whose symbol is on
//!   it or not; with a category, a type and a minimum confidence as well.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use engine::model::{Category, CategoryMask, UnixNanos};
use gateway::protocol::filter::{Fields, Filter, Limits};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A routed signal's SIGNAL_UPDATE data, as the engine encodes it.
fn data(symbol: &str) -> Vec<u8> {
    let s = engine::testkit::signal_on(7, 9_000, symbol, "NSE", Category::Equity);
    let mut out = Vec::new();
    engine::pipeline::encode::signal_data(&mut out, &s, None, UnixNanos(1), UnixNanos(2), None);
    out
}

/// A watchlist of `n` symbols (`S0`…), with the other parts of a filter.
fn filter(n: usize) -> Filter {
    let symbols: Vec<String> = (0..n).map(|k| format!("S{k}")).collect();
    let v = serde_json::json!({
        "symbols": symbols,
        "categories": ["equity"],
        "signal_types": ["buy", "sell"],
        "min_confidence": 80.0,
    });
    Filter::parse(&v, Limits { symbols: 1_000, sources: 50 }, CategoryMask::ALL).unwrap()
}

fn bench(c: &mut Criterion) {
    let hit = data("S0");
    c.bench_function("fields", |b| b.iter(|| Fields::of(std::hint::black_box(&hit)).unwrap()));
    let mut group = c.benchmark_group("check");
    for n in [1, 10, 100, 1_000] {
        let f = filter(n);
        let on = Fields::of(&hit).unwrap();
        let other = data("ZZZ");
        let off = Fields::of(&other).unwrap();
        assert!(f.matches(&on) && !f.matches(&off));
        group.bench_function(format!("{n}/hit"), |b| b.iter(|| std::hint::black_box(&f).matches(&on)));
        group.bench_function(format!("{n}/miss"), |b| b.iter(|| std::hint::black_box(&f).matches(&off)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
