//! Enrichment: the market snapshot a routed signal carries.

use crate::model::{MarketSnapshot, Tick, UnixNanos};

/// The snapshot of `tick` as seen at `now`; a tick stamped in the future has age 0.
pub fn snapshot(tick: &Tick, now: UnixNanos) -> MarketSnapshot {
    let age_ns = now.0.saturating_sub(tick.ts.0).max(0);
    MarketSnapshot {
        bid: tick.bid,
        ask: tick.ask,
        last: tick.last,
        volume: tick.volume,
        tick_ts: tick.ts,
        tick_age_ms: (age_ns / 1_000_000) as u64,
    }
}
