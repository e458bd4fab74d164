//! The domain model (docs/protocol.md, docs/feed-protocol.md): signals, ticks, tiers and the fixed-point numbers
//! they are made of.
//!
//! Nothing here does I/O. Every type validates on construction, so a value that exists
//! is a value the rest of the engine may trust: a [`Price`] has four decimals and fits
//! DECIMAL(15,4), a [`Symbol`] is 1–20 printable ASCII bytes that need no JSON escaping,
//! a [`Confidence`] is 0.00–100.00.

mod confidence;
mod enriched;
mod enums;
mod price;
mod signal;
mod text;
mod time;

pub use confidence::{Confidence, ConfidenceError};
pub use enriched::{EnrichedSignal, MarketSnapshot};
pub use enums::{Category, CategoryMask, SignalType, SourceType, Tier, UnknownVariant};
pub use price::{Price, PriceError};
pub use signal::{Analysis, Signal, SignalError, Tick, TickError};
pub use text::{Exchange, InlineStr, Symbol, TextError};
pub use time::UnixNanos;
