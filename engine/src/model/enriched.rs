//! The enriched signal as trading clients receive it (`data` of SIGNAL_UPDATE).
//!
//! The engine writes this JSON with a hand-written encoder (`pipeline::encode`) on the
//! hot path; these serde types are the reading side for clients, tests and the bench,
//! and the encoder's tests check that the two agree.

use serde::{Deserialize, Serialize};

use super::{Price, Signal, UnixNanos};

/// The latest tick of the signal's symbol at routing time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSnapshot {
    pub bid: Price,
    pub ask: Price,
    pub last: Price,
    pub volume: u64,
    pub tick_ts: UnixNanos,
    /// Age of the tick when the signal was routed, in whole milliseconds.
    pub tick_age_ms: u64,
}

/// A signal with its market snapshot and the engine's timestamps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrichedSignal {
    #[serde(flatten)]
    pub signal: Signal,
    /// `None` (JSON `null`) when no tick of the symbol was known.
    pub market: Option<MarketSnapshot>,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    /// The producer's send time, when the producer gave one.
    #[serde(default)]
    pub sent_ts: Option<UnixNanos>,
}
