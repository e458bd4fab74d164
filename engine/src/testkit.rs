//! Builders for the tests of every crate (feature `testkit`, enabled only as a
//! dev-dependency): one valid signal and one tick, defined once.

use crate::model::{
    Category, Confidence, Exchange, Price, Signal, SignalType, SourceType, Symbol, Tick, UnixNanos,
};

/// The (symbol, exchange) the builders use for a category.
pub fn market_of(category: Category) -> (&'static str, &'static str) {
    match category {
        Category::Equity => ("RELIANCE", "NSE"),
        Category::Crypto => ("BTC-USDT", "BINANCE"),
        Category::Forex => ("EUR/USD", "OANDA"),
        Category::Commodity => ("GOLD", "MCX"),
    }
}

/// A valid buy signal, current, expiring in an hour: `n` makes its id, `confidence` is
/// in hundredths, the symbol follows the category ([`market_of`]).
pub fn signal(n: u128, confidence: u16, category: Category) -> Signal {
    let (symbol, exchange) = market_of(category);
    signal_on(n, confidence, symbol, exchange, category)
}

/// [`signal`] on a given symbol and exchange.
pub fn signal_on(n: u128, confidence: u16, symbol: &str, exchange: &str, category: Category) -> Signal {
    signal_at(n, confidence, symbol, exchange, category, UnixNanos::now())
}

/// [`signal_on`] generated at `now` (for tests on a fixed clock).
///
/// # Panics
/// When `symbol` or `exchange` is not a valid one, or `confidence` is over 100.00: a
/// test's own mistake.
#[allow(clippy::unwrap_used)]
pub fn signal_at(
    n: u128,
    confidence: u16,
    symbol: &str,
    exchange: &str,
    category: Category,
    now: UnixNanos,
) -> Signal {
    Signal {
        id: uuid::Uuid::from_u128(n),
        source_id: uuid::Uuid::from_u128(0xfeed),
        source_type: SourceType::AiModel,
        symbol: Symbol::new(symbol).unwrap(),
        exchange: Exchange::new(exchange).unwrap(),
        category,
        signal_type: SignalType::Buy,
        entry_price: "2456.75".parse().unwrap(),
        target_price: "2520".parse().unwrap(),
        stop_loss: "2420".parse().unwrap(),
        quantity_recommended: Some(50),
        confidence: Confidence::new(confidence).unwrap(),
        generated_at: now,
        expires_at: now.plus_nanos(3_600_000_000_000),
        analysis: None,
    }
}

/// A tick now: `last` with bid and ask 0.01 either side.
///
/// # Panics
/// On an invalid symbol, exchange or price: a test's own mistake.
#[allow(clippy::unwrap_used)]
pub fn tick(symbol: &str, exchange: &str, last: &str) -> Tick {
    let last: Price = last.parse().unwrap();
    Tick {
        symbol: Symbol::new(symbol).unwrap(),
        exchange: Exchange::new(exchange).unwrap(),
        bid: Price::from_raw(last.raw() - 100).unwrap(),
        ask: Price::from_raw(last.raw() + 100).unwrap(),
        last,
        volume: 1_000,
        ts: UnixNanos::now(),
    }
}
