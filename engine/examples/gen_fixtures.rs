//! Regenerates `fixtures/signals.jsonl` and `fixtures/ticks.jsonl`, deterministically.
//!
//! ```text
//! cargo run -p signalcast-engine --example gen_fixtures -- fixtures
//! ```
//!
//! A fixed seed and a tiny SplitMix64 generator (no `rand` dependency) make the output
//! byte-for-byte reproducible; `tests/fixtures.rs` checks the committed files against it.
#![allow(clippy::print_stdout, clippy::unwrap_used, dead_code)]

use engine::model::{
    Analysis, Category, Confidence, Exchange, Price, Signal, SignalType, SourceType, Symbol, Tick, UnixNanos,
};
use uuid::Uuid;

const SEED: u64 = 0x5167_4ca5_7000_2026;
pub const SIGNALS: usize = 1_200;
/// 2026-11-02T03:45:00Z, a Monday, NSE open.
const START_NS: i64 = 1_794_023_100_000_000_000;
const SEC: i64 = 1_000_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn uuid(&mut self) -> Uuid {
        // A random (version 4) UUID from our own bits.
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next()) << 64) | u128::from(self.next())).to_le_bytes(),
        )
        .into_uuid()
    }
}

/// (symbol, exchange, category, reference price in ten-thousandths, tick size)
const INSTRUMENTS: &[(&str, &str, Category, i64, i64)] = &[
    ("RELIANCE", "NSE", Category::Equity, 24_567_500, 500),
    ("TCS", "NSE", Category::Equity, 38_904_000, 500),
    ("INFY", "NSE", Category::Equity, 15_203_500, 500),
    ("HDFCBANK", "NSE", Category::Equity, 16_502_000, 500),
    ("ICICIBANK", "NSE", Category::Equity, 10_851_500, 500),
    ("SBIN", "NSE", Category::Equity, 7_804_500, 500),
    ("BHARTIARTL", "NSE", Category::Equity, 14_206_000, 500),
    ("M&M", "NSE", Category::Equity, 28_903_000, 500),
    ("BAJAJ-AUTO", "NSE", Category::Equity, 92_005_000, 500),
    ("TATAMOTORS", "NSE", Category::Equity, 9_651_000, 500),
    ("BTC-USDT", "BINANCE", Category::Crypto, 640_005_000, 100),
    ("ETH-USDT", "BINANCE", Category::Crypto, 31_502_500, 100),
    ("SOL-USDT", "BINANCE", Category::Crypto, 1_452_300, 100),
    ("XRP-USDT", "BINANCE", Category::Crypto, 5_213, 1),
    ("EUR/USD", "OANDA", Category::Forex, 10_850, 1),
    ("USD/JPY", "OANDA", Category::Forex, 1_512_040, 10),
    ("GBP/USD", "OANDA", Category::Forex, 12_651, 1),
    ("USD/INR", "OANDA", Category::Forex, 832_510, 25),
    ("GOLD", "MCX", Category::Commodity, 720_150_000, 10_000),
    ("CRUDEOIL", "MCX", Category::Commodity, 68_040_000, 10_000),
    ("SILVER", "MCX", Category::Commodity, 840_210_000, 10_000),
    ("NATURALGAS", "MCX", Category::Commodity, 1_802_000, 1_000),
];

fn round_to(v: i64, step: i64) -> i64 {
    (v / step).max(1) * step
}

fn price(v: i64) -> Price {
    Price::from_raw(v).unwrap()
}

/// Moves `base` by up to `bp` basis points either way.
fn jitter(rng: &mut Rng, base: i64, bp: i64, step: i64) -> i64 {
    let delta = base as i128 * i128::from(rng.range(-bp, bp)) / 10_000;
    round_to(base + delta as i64, step)
}

pub fn signals() -> Vec<Signal> {
    let mut rng = Rng(SEED);
    let sources: Vec<(Uuid, SourceType, &str)> = [
        (SourceType::AiModel, "lstm-momentum-v4"),
        (SourceType::AiModel, "gbm-meanrev-v2"),
        (SourceType::Analyst, "desk-equities"),
        (SourceType::Algorithm, "breakout-scanner"),
        (SourceType::Algorithm, "pairs-arb"),
        (SourceType::Sentiment, "news-sentiment"),
    ]
    .into_iter()
    .map(|(t, name)| (rng.uuid(), t, name))
    .collect();
    (0..SIGNALS)
        .map(|i| {
            let (symbol, exchange, category, base, step) =
                INSTRUMENTS[rng.below(INSTRUMENTS.len() as u64) as usize];
            let (source_id, source_type, model) = sources[rng.below(sources.len() as u64) as usize];
            let signal_type = match rng.below(10) {
                0..=4 => SignalType::Buy,
                5..=7 => SignalType::Sell,
                8 => SignalType::Hold,
                _ => SignalType::Exit,
            };
            let entry = jitter(&mut rng, base, 150, step);
            let up = round_to(entry * rng.range(80, 450) / 10_000, step);
            let down = round_to(entry * rng.range(50, 250) / 10_000, step);
            let (target, stop) = match signal_type {
                SignalType::Sell => ((entry - up).max(step), entry + down),
                _ => (entry + up, (entry - down).max(step)),
            };
            let generated = START_NS + i as i64 * 3 * SEC + rng.range(0, 2 * SEC);
            let ttl = rng.range(15 * 60, 4 * 3600) * SEC;
            let confidence = Confidence::new(rng.range(4_000, 9_900) as u16).unwrap();
            let analysis = (rng.below(10) < 3).then(|| {
                let rsi = rng.range(150, 850);
                Analysis::from_json(format!(
                    r#"{{"model":"{model}","rsi":{}.{},"horizon_min":{},"note":"{} setup on {symbol}"}}"#,
                    rsi / 10,
                    rsi % 10,
                    ttl / SEC / 60,
                    if signal_type == SignalType::Sell { "bearish" } else { "bullish" },
                ))
                .unwrap()
            });
            Signal {
                id: rng.uuid(),
                source_id,
                source_type,
                symbol: Symbol::new(symbol).unwrap(),
                exchange: Exchange::new(exchange).unwrap(),
                category,
                signal_type,
                entry_price: price(entry),
                target_price: price(target),
                stop_loss: price(stop),
                quantity_recommended: match category {
                    Category::Equity => Some(rng.range(1, 50) as u32 * 10),
                    Category::Commodity => Some(rng.range(1, 10) as u32),
                    Category::Crypto | Category::Forex => None,
                },
                confidence,
                generated_at: UnixNanos(generated),
                expires_at: UnixNanos(generated + ttl),
                analysis,
            }
        })
        .collect()
}

/// Ticks every 30 s per instrument over the hour the signals span.
pub fn ticks() -> Vec<Tick> {
    let mut rng = Rng(SEED ^ 0x7105);
    let mut out = Vec::new();
    let mut last: Vec<i64> = INSTRUMENTS.iter().map(|i| i.3).collect();
    for step_no in 0..120 {
        for (k, &(symbol, exchange, _, _, step)) in INSTRUMENTS.iter().enumerate() {
            last[k] = jitter(&mut rng, last[k], 8, step);
            let spread = step * rng.range(1, 3);
            out.push(Tick {
                symbol: Symbol::new(symbol).unwrap(),
                exchange: Exchange::new(exchange).unwrap(),
                bid: price((last[k] - spread).max(step)),
                ask: price(last[k] + spread),
                last: price(last[k]),
                volume: rng.range(100, 2_000_000) as u64,
                ts: UnixNanos(START_NS - 60 * SEC + step_no * 30 * SEC + k as i64 * 1_000_000),
            });
        }
    }
    out
}

pub fn jsonl<T: serde::Serialize>(items: &[T]) -> String {
    let mut s = String::new();
    for item in items {
        s.push_str(&serde_json::to_string(item).unwrap());
        s.push('\n');
    }
    s
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fixtures".into());
    let dir = std::path::Path::new(&dir);
    std::fs::write(dir.join("signals.jsonl"), jsonl(&signals())).unwrap();
    std::fs::write(dir.join("ticks.jsonl"), jsonl(&ticks())).unwrap();
    println!("wrote {} signals and {} ticks to {}", SIGNALS, ticks().len(), dir.display());
}
