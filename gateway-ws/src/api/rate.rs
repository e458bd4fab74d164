//! Token buckets by key (a user id, a producer id), bounded in number: past
//! [`MAX_KEYS`] the buckets that have refilled are forgotten (a full bucket is the
//! same as no bucket).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Keys remembered before full buckets are swept.
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Takes `cost` tokens from `key`'s bucket, which holds `burst` and refills at
    /// `per_sec`; or, if it has too few, takes nothing and says how long until it has.
    pub fn take(&self, key: &str, cost: f64, per_sec: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            return Ok(());
        }
        let missing = cost.min(burst) - b.tokens;
        Err(Duration::from_secs_f64(missing / per_sec.max(f64::MIN_POSITIVE)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_when() {
        let r = RateLimits::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.take("u", 1.0, 1.0, 3.0, t0).is_ok());
        }
        let wait = r.take("u", 1.0, 1.0, 3.0, t0).unwrap_err();
        assert!((0.99..=1.01).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(r.take("other", 1.0, 1.0, 3.0, t0).is_ok(), "per key");
        assert!(r.take("u", 1.0, 1.0, 3.0, t0 + Duration::from_secs(1)).is_ok(), "refilled");
    }
}
