//! The tier policy: which signals each tier's channel carries, how late, how many a day.
//!
//! Loaded from TOML (`fixtures/tiers.toml` holds the defaults of docs/protocol.md, "Tiers"):
//!
//! ```toml
//! min_confidence = 75.00      # global bar: a signal passes when confidence > this
//! delayed_feed_secs = 30      # delay for users whose real_time_access is false
//! [free]
//! min_confidence = 90.00      # inclusive: 90.00 enters signals_free
//! delay_secs = 30
//! signals_per_day = 20        # omit for unlimited
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{Confidence, Tier};

/// One tier's row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierRule {
    /// A signal enters this tier's channel when its confidence is at least this.
    pub min_confidence: Confidence,
    /// How long after ingest the tier's users see a signal.
    pub delay: Duration,
    /// Deliveries per UTC day per user; `None` is unlimited. An account's own
    /// `max_signals_per_day` overrides it.
    pub signals_per_day: Option<u32>,
    /// Requests a minute per user to the HTTP API (history, live).
    pub api_requests_per_minute: u32,
    /// Symbols a signal channel's filter (a watchlist) may name.
    pub watchlist_symbols: u32,
    /// `prices_general`: the most updates per second per symbol (a subscriber's
    /// `max_frequency` is capped to it).
    pub price_rate: u32,
    /// `prices_general` without a watchlist (every symbol) is allowed.
    pub prices_all: bool,
}

/// The HTTP API's rate when a tier's row does not set one (the source architecture's
/// API gateway allowed each consumer 100 requests a minute on its signals service).
pub const DEFAULT_API_REQUESTS_PER_MINUTE: u32 = 100;

/// A tier's watchlist size when its row does not set one.
pub const DEFAULT_WATCHLIST_SYMBOLS: u32 = 200;

/// A tier's price rate cap when its row does not set one: one update per price turn.
pub const DEFAULT_PRICE_RATE: u32 = 50;

/// The whole table plus the global filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPolicy {
    /// The global filter passes `confidence > min_confidence` (strictly).
    pub min_confidence: Confidence,
    /// The delay for users with `real_time_access = false`, on any tier.
    pub delayed_feed: Duration,
    rules: [TierRule; 4],
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid tier policy: {0}")]
    Parse(#[from] toml::de::Error),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    min_confidence: Confidence,
    delayed_feed_secs: u64,
    free: RuleFile,
    basic: RuleFile,
    premium: RuleFile,
    enterprise: RuleFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    min_confidence: Confidence,
    #[serde(default)]
    delay_secs: u64,
    #[serde(default)]
    signals_per_day: Option<u32>,
    #[serde(default)]
    api_requests_per_minute: Option<u32>,
    #[serde(default)]
    watchlist_symbols: Option<u32>,
    #[serde(default)]
    price_rate: Option<u32>,
    #[serde(default)]
    prices_all: Option<bool>,
}

impl From<RuleFile> for TierRule {
    fn from(r: RuleFile) -> Self {
        Self {
            min_confidence: r.min_confidence,
            delay: Duration::from_secs(r.delay_secs),
            signals_per_day: r.signals_per_day,
            api_requests_per_minute: r.api_requests_per_minute.unwrap_or(DEFAULT_API_REQUESTS_PER_MINUTE),
            watchlist_symbols: r.watchlist_symbols.unwrap_or(DEFAULT_WATCHLIST_SYMBOLS),
            price_rate: r.price_rate.unwrap_or(DEFAULT_PRICE_RATE).max(1),
            prices_all: r.prices_all.unwrap_or(true),
        }
    }
}

impl Default for TierPolicy {
    /// The default tier table (docs/protocol.md, "Tiers").
    fn default() -> Self {
        let rule =
            |min: u16, delay: u64, per_day: Option<u32>, per_minute: u32, watchlist: u32, rate: u32| {
                TierRule {
                    min_confidence: Confidence::new(min).unwrap_or(Confidence::MAX),
                    delay: Duration::from_secs(delay),
                    signals_per_day: per_day,
                    api_requests_per_minute: per_minute,
                    watchlist_symbols: watchlist,
                    price_rate: rate,
                    prices_all: true,
                }
            };
        Self {
            min_confidence: Confidence::new(7500).unwrap_or(Confidence::MAX),
            delayed_feed: Duration::from_secs(30),
            rules: [
                rule(9000, 30, Some(20), 30, 20, 2),
                rule(8500, 0, Some(200), 60, 50, 10),
                rule(7500, 0, Some(2000), 100, 200, 50),
                rule(7500, 0, None, 600, 1000, 50),
            ],
        }
    }
}

impl TierPolicy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let f: PolicyFile = toml::from_str(text)?;
        Ok(Self {
            min_confidence: f.min_confidence,
            delayed_feed: Duration::from_secs(f.delayed_feed_secs),
            rules: [f.free.into(), f.basic.into(), f.premium.into(), f.enterprise.into()],
        })
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    pub fn rule(&self, tier: Tier) -> &TierRule {
        &self.rules[tier.index()]
    }

    /// Does a signal of this confidence pass the global filter?
    pub fn passes_global(&self, c: Confidence) -> bool {
        c > self.min_confidence
    }

    /// Does a signal (that passed the global filter) enter `signals_<tier>`?
    pub fn admits(&self, tier: Tier, c: Confidence) -> bool {
        c >= self.rule(tier).min_confidence
    }

    /// The delay of the tier channel's delayed view: the longer of the tier's own delay
    /// and the `delayed_feed` delay, so that neither kind of delayed user ever sees a
    /// signal sooner than their rule allows. Zero means no delayed view.
    pub fn delayed_view(&self, tier: Tier) -> Duration {
        let own = self.rule(tier).delay;
        if own.is_zero() && self.delayed_feed.is_zero() { Duration::ZERO } else { own.max(self.delayed_feed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_file_is_the_design_table() {
        let text = include_str!("../../fixtures/tiers.toml");
        assert_eq!(TierPolicy::from_toml(text).unwrap(), TierPolicy::default());
    }

    #[test]
    fn boundaries() {
        let p = TierPolicy::default();
        let c = |h| Confidence::new(h).unwrap();
        assert!(!p.passes_global(c(7500)));
        assert!(p.passes_global(c(7501)));
        assert!(p.admits(Tier::Free, c(9000)));
        assert!(!p.admits(Tier::Free, c(8999)));
        assert!(p.admits(Tier::Basic, c(8500)));
        assert_eq!(p.delayed_view(Tier::Free), Duration::from_secs(30));
        assert_eq!(p.delayed_view(Tier::Premium), Duration::from_secs(30));
        assert!(TierPolicy::from_toml("min_confidence = 75.0\nbogus = 1").is_err());
    }
}
