//! UTC time as nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanoseconds since the Unix epoch, UTC.
///
/// Inside the engine and in rkyv frames time is kept in nanoseconds; in JSON it is an
/// integer count of microseconds, which a JavaScript number holds exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    /// The wall clock now.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            // A clock before 1970 is a broken clock; keep the arithmetic sane.
            Err(_) => Self(0),
        }
    }

    /// From microseconds; `None` when that overflows nanoseconds (year 2262).
    pub const fn from_micros(us: i64) -> Option<Self> {
        match us.checked_mul(1_000) {
            Some(ns) => Some(Self(ns)),
            None => None,
        }
    }

    /// Whole microseconds (towards negative infinity).
    pub const fn as_micros(self) -> i64 {
        self.0.div_euclid(1_000)
    }

    /// `self + ns`, saturating.
    pub const fn plus_nanos(self, ns: i64) -> Self {
        Self(self.0.saturating_add(ns))
    }
}

impl Serialize for UnixNanos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_micros())
    }
}

impl<'de> Deserialize<'de> for UnixNanos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let us = i64::deserialize(d)?;
        Self::from_micros(us)
            .ok_or_else(|| serde::de::Error::custom(format!("timestamp {us} µs is out of range")))
    }
}
