//! Helpers of the store's integration tests: a real PostgreSQL, a real Kafka-protocol
//! broker, and the same signals for both backends.
#![allow(dead_code, clippy::unwrap_used)]

pub mod broker;
#[path = "../../../accounts/tests/common/pg.rs"]
pub mod pg;

use engine::model::{Category, SignalType, Tier, UnixNanos};
use store::Routed;

pub const T0: i64 = 1_795_400_000_000_000_000;

/// Signal `n` on `symbol`, routed at T0 + `ms` into `channels`; every fifth a sell,
/// every seventh from another source, every fourth with an analysis.
pub fn routed(n: u128, ms: i64, symbol: &str, category: Category, channels: &[(Tier, u64)]) -> Routed {
    let at = UnixNanos(T0 + ms * 1_000_000);
    let mut signal = engine::testkit::signal_at(n, 9_000, symbol, "NSE", category, at);
    if n.is_multiple_of(5) {
        signal.signal_type = SignalType::Sell;
    }
    if n.is_multiple_of(7) {
        signal.source_id = uuid::Uuid::from_u128(0xbeef);
    }
    if n.is_multiple_of(4) {
        signal.analysis = Some(serde_json::from_str(r#"{"rsi":71.5,"notes":["breakout"]}"#).unwrap());
    }
    Routed {
        data: format!(r#"{{"id":"{}","n":{n}}}"#, signal.id),
        signal,
        producer: (!n.is_multiple_of(3)).then(|| "model-alpha".to_owned()),
        market: n.is_multiple_of(2).then(|| r#"{"last":"100.0000","bid":"99.9900"}"#.to_owned()),
        ingest_ts: UnixNanos(at.0 - 1_000),
        routed_ts: at,
        channels: channels.to_vec(),
    }
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "signalcast-store-{name}-{}-{}",
            std::process::id(),
            UnixNanos::now().0
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
