//! The store's append alone (the embedded SQLite backend): signals per second with
//! ~900-byte SIGNAL_UPDATE data, by commit size (one stage batch, or eight merged while
//! the store was busy), by the order of the ids (time-ordered or random) and by durability.
//!
//!   cargo bench -p signalcast-store --bench append
//!
//! Figures: docs/PERFORMANCE.md ("The store on the ingest path").
// The report is this program's output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use engine::model::{Category, Tier, UnixNanos};
use store::{Durability, Routed, SqliteStore};

const SIGNALS: u64 = 300_000;

/// Ids in the order a producer with time-ordered ids (UUIDv7) sends them, or random (v4).
#[derive(Clone, Copy, Debug)]
enum Ids {
    Ordered,
    Random,
}

fn batch(start: u64, size: usize, ids: Ids, seqs: &mut [u64; 4], rng: &mut u64) -> Vec<Routed> {
    let now = UnixNanos::now();
    (start..start + size as u64)
        .map(|n| {
            let symbol = format!("S{:03}", n % 500);
            let confidence = 7_600 + (n % 2_400) as u16;
            let mut signal =
                engine::testkit::signal_at(0, confidence, &symbol, "NSE", Category::ALL[(n % 4) as usize], now);
            signal.id = match ids {
                Ids::Ordered => uuid::Uuid::from_u128(u128::from(n) + 1),
                Ids::Random => uuid::Uuid::from_u64_pair(next(rng), next(rng)),
            };
            signal.source_id = uuid::Uuid::from_u128(u128::from(n % 50) + 1);
            let bars = [9_000, 8_500, 7_500, 7_500];
            let channels = Tier::ALL
                .into_iter()
                .filter(|t| confidence >= bars[t.index()])
                .map(|t| {
                    seqs[t.index()] += 1;
                    (t, seqs[t.index()])
                })
                .collect();
            Routed {
                data: format!(
                    r#"{{"id":"{}","source_id":"{}","source_type":"ai_model","symbol":"{symbol}","exchange":"NSE","category":"stocks","signal_type":"buy","entry_price":"2456.7500","target_price":"2520.0000","stop_loss":"2420.0000","quantity_recommended":50,"confidence_level":"{}.{:02}","generated_at":"2026-12-06T22:00:00.000000000Z","expires_at":"2026-12-06T23:00:00.000000000Z","analysis":{{"model":"lstm-v3","horizon":"1h","features":["rsi","macd","volume"],"score":0.8731}},"market":{{"symbol":"{symbol}","exchange":"NSE","last":"2456.7500","bid":"2456.7400","ask":"2456.7600","volume":1234567,"ts":"2026-12-06T21:59:59.990000000Z"}},"status":"open"}}"#,
                    signal.id,
                    signal.source_id,
                    confidence / 100,
                    confidence % 100
                ),
                signal,
                producer: Some("bench".into()),
                market: None,
                ingest_ts: now,
                routed_ts: now,
                channels,
            }
        })
        .collect()
}

/// xorshift64*: ids as random as a v4 UUID's, without a dependency for it.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn main() {
    println!("| ids | signals per commit | durability | signals/s ({SIGNALS} signals) |");
    println!("|---|---|---|---|");
    for ids in [Ids::Ordered, Ids::Random] {
        for size in [1_024, 8_192] {
            for durability in [Durability::Process, Durability::Full] {
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-append");
                let _ = std::fs::remove_dir_all(&dir);
                let mut store = SqliteStore::open(&dir, durability).expect("open");
                let (mut seqs, mut rng) = ([0u64; 4], 0x9e37_79b9_7f4a_7c15u64);
                let batches: Vec<Vec<Routed>> = (0..SIGNALS / size as u64)
                    .map(|b| batch(b * size as u64, size, ids, &mut seqs, &mut rng))
                    .collect();
                let started = Instant::now();
                for b in &batches {
                    store.append(b).expect("append");
                }
                let rate = (batches.len() * size) as f64 / started.elapsed().as_secs_f64();
                println!("| {ids:?} | {size} | {durability:?} | {rate:.0} |");
                drop(store);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}
