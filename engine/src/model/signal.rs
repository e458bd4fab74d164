//! Signals and ticks as producers send them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Category, Confidence, Exchange, Price, SignalType, SourceType, Symbol, UnixNanos};

/// A trading signal (after the source's `signals.trading_signals`).
///
/// `id` is assigned by the producer and is the idempotency key: the engine routes each id
/// at most once (within its de-duplication window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub id: Uuid,
    pub source_id: Uuid,
    pub source_type: SourceType,
    pub symbol: Symbol,
    pub exchange: Exchange,
    pub category: Category,
    pub signal_type: SignalType,
    pub entry_price: Price,
    pub target_price: Price,
    pub stop_loss: Price,
    #[serde(default)]
    pub quantity_recommended: Option<u32>,
    pub confidence: Confidence,
    pub generated_at: UnixNanos,
    pub expires_at: UnixNanos,
    #[serde(default)]
    pub analysis: Option<Analysis>,
}

/// Why a well-formed signal is still not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("{field} must be positive")]
    NonPositivePrice { field: &'static str },
    #[error("expires_at must be after generated_at")]
    ExpiresBeforeGenerated,
    #[error("analysis is {len} bytes, over the limit of {max}")]
    AnalysisTooLarge { len: usize, max: usize },
    #[error("analysis is not valid JSON: {0}")]
    InvalidAnalysis(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

impl Signal {
    /// Checks the rules that the types alone do not: prices positive, expiry after
    /// generation, analysis within `max_analysis_bytes`.
    pub fn validate(&self, max_analysis_bytes: usize) -> Result<(), SignalError> {
        for (field, p) in [
            ("entry_price", self.entry_price),
            ("target_price", self.target_price),
            ("stop_loss", self.stop_loss),
        ] {
            if p.raw() <= 0 {
                return Err(SignalError::NonPositivePrice { field });
            }
        }
        if self.expires_at <= self.generated_at {
            return Err(SignalError::ExpiresBeforeGenerated);
        }
        // A position's levels on either side of its entry: a target already behind the
        // entry would be "hit" by the next tick and fake its source's record.
        let (entry, target, stop) = (self.entry_price, self.target_price, self.stop_loss);
        match self.signal_type {
            SignalType::Buy if !(stop < entry && entry < target) => {
                return Err(SignalError::Field {
                    field: "target_price",
                    reason: "a buy's target must be above its entry price and its stop loss below".into(),
                });
            }
            SignalType::Sell if !(target < entry && entry < stop) => {
                return Err(SignalError::Field {
                    field: "target_price",
                    reason: "a sell's target must be below its entry price and its stop loss above".into(),
                });
            }
            _ => {}
        }
        if let Some(a) = &self.analysis {
            let len = a.as_str().len();
            if len > max_analysis_bytes {
                return Err(SignalError::AnalysisTooLarge { len, max: max_analysis_bytes });
            }
        }
        Ok(())
    }

    /// The same signal with its lifetime moved to start at `now` (replaying recorded
    /// signals, whose original times have long expired).
    #[must_use]
    pub fn restamped(&self, now: UnixNanos) -> Self {
        let ttl = self.expires_at.0.saturating_sub(self.generated_at.0);
        Self { generated_at: now, expires_at: now.plus_nanos(ttl), ..self.clone() }
    }
}

/// The opaque `analysis` JSON of a signal, validated, at most a few KiB.
#[derive(Clone, Debug)]
pub struct Analysis(Box<RawValue>);

impl Analysis {
    /// Validates `json` and keeps its bytes as they are.
    pub fn from_json(json: String) -> Result<Self, SignalError> {
        RawValue::from_string(json).map(Self).map_err(|e| SignalError::InvalidAnalysis(e.to_string()))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Analysis {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Analysis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Analysis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through `Value` rather than `RawValue` so that this also works inside
        // `#[serde(flatten)]` (the enriched view); key order is preserved, whitespace
        // is compacted.
        let v = serde_json::Value::deserialize(d)?;
        serde_json::value::to_raw_value(&v).map(Self).map_err(serde::de::Error::custom)
    }
}

/// A market tick: the latest quote of one symbol on one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub symbol: Symbol,
    pub exchange: Exchange,
    pub bid: Price,
    pub ask: Price,
    pub last: Price,
    pub volume: u64,
    pub ts: UnixNanos,
}

/// Why a tick is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickError {
    #[error("{field} must not be negative")]
    NegativePrice { field: &'static str },
}

impl Tick {
    pub fn validate(&self) -> Result<(), TickError> {
        for (field, p) in [("bid", self.bid), ("ask", self.ask), ("last", self.last)] {
            if p.raw() < 0 {
                return Err(TickError::NegativePrice { field });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "id":"6f1c2a0e-5b7d-4c1e-9a43-2f0d9e8b7c61","source_id":"3b9d0c52-7a4e-4f0a-8d5e-1c2b3a4d5e6f",
      "source_type":"ai_model","symbol":"RELIANCE","exchange":"NSE","category":"equity",
      "signal_type":"buy","entry_price":"2456.7500","target_price":"2520.0000",
      "stop_loss":"2420.0000","quantity_recommended":50,"confidence":87.25,
      "generated_at":1795400000123456,"expires_at":1795403600000000,
      "analysis":{"rsi":71.5,"note":"breakout","a":[1,2]}}"#;

    #[test]
    fn design_example_round_trips() {
        let s: Signal = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(s.symbol.as_str(), "RELIANCE");
        assert_eq!(s.entry_price.raw(), 24_567_500);
        assert_eq!(s.confidence.hundredths(), 8725);
        assert_eq!(s.generated_at, UnixNanos(1_795_400_000_123_456_000));
        assert_eq!(s.analysis.as_ref().unwrap().as_str(), r#"{"rsi":71.5,"note":"breakout","a":[1,2]}"#);
        s.validate(4096).unwrap();
        let back: Signal = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn validation_catches_bad_values() {
        let mut s: Signal = serde_json::from_str(EXAMPLE).unwrap();
        assert!(matches!(s.validate(10), Err(SignalError::AnalysisTooLarge { .. })));
        s.expires_at = s.generated_at;
        assert_eq!(s.validate(4096), Err(SignalError::ExpiresBeforeGenerated));
        let bad = EXAMPLE.replace("87.25", "187.25");
        assert!(serde_json::from_str::<Signal>(&bad).is_err());
        let bad = EXAMPLE.replace("\"equity\"", "\"bonds\"");
        assert!(serde_json::from_str::<Signal>(&bad).is_err());
    }
}
