//! Fixed-point prices with four decimal places (the source's DECIMAL(15,4)).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A price in ten-thousandths: `Price::from_raw(24_567_500)` is `2456.7500`.
///
/// Prices are never binary floats: they are parsed from and printed as decimal strings,
/// and compared exactly. The range is that of DECIMAL(15,4): at most 11 integer digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(i64);

/// Why a decimal string is not a price.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("price is empty")]
    Empty,
    #[error("price {0:?} is not a decimal number")]
    Syntax(String),
    #[error("price {0:?} has more than 4 decimal places")]
    TooPrecise(String),
    #[error("price {0:?} is out of range (DECIMAL(15,4))")]
    OutOfRange(String),
}

impl Price {
    /// Units per 1.0.
    pub const SCALE: i64 = 10_000;
    /// The largest magnitude DECIMAL(15,4) holds: 99,999,999,999.9999.
    pub const MAX_RAW: i64 = 999_999_999_999_999;

    /// A price from ten-thousandths, or `None` when outside DECIMAL(15,4).
    pub const fn from_raw(raw: i64) -> Option<Self> {
        if raw > Self::MAX_RAW || raw < -Self::MAX_RAW { None } else { Some(Self(raw)) }
    }

    /// Ten-thousandths.
    pub const fn raw(self) -> i64 {
        self.0
    }

    /// Writes the canonical form (`-12.3400`) into `buf` and returns it.
    pub fn format(self, buf: &mut [u8; 24]) -> &str {
        let neg = self.0 < 0;
        let mut v = self.0.unsigned_abs();
        let mut i = buf.len();
        // Four fractional digits, then the point, then at least one integer digit.
        for _ in 0..4 {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        i -= 1;
        buf[i] = b'.';
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if neg {
            i -= 1;
            buf[i] = b'-';
        }
        // Only ASCII digits, '.', '-' were written.
        std::str::from_utf8(&buf[i..]).unwrap_or("0.0000")
    }
}

impl FromStr for Price {
    type Err = PriceError;

    fn from_str(s: &str) -> Result<Self, PriceError> {
        let bad = || PriceError::Syntax(s.to_owned());
        if s.is_empty() {
            return Err(PriceError::Empty);
        }
        let (neg, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (body.contains('.') && frac.is_empty()) {
            return Err(bad());
        }
        if frac.len() > 4 {
            return Err(PriceError::TooPrecise(s.to_owned()));
        }
        let int = int.trim_start_matches('0');
        if int.len() > 11 {
            return Err(PriceError::OutOfRange(s.to_owned()));
        }
        let mut raw: i64 = 0;
        for b in int.bytes() {
            raw = raw * 10 + i64::from(b - b'0');
        }
        let mut frac_raw: i64 = 0;
        for (k, b) in frac.bytes().enumerate() {
            frac_raw += i64::from(b - b'0') * 10_i64.pow(3 - k as u32);
        }
        raw = raw * Self::SCALE + frac_raw;
        if neg {
            raw = -raw;
        }
        Self::from_raw(raw).ok_or_else(|| PriceError::OutOfRange(s.to_owned()))
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format(&mut [0; 24]))
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.format(&mut [0; 24]))
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Strings only: a JSON number would already have been through a binary float.
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_four_places() {
        for (text, raw, canon) in [
            ("2456.75", 24_567_500, "2456.7500"),
            ("0.0001", 1, "0.0001"),
            ("-12.3", -123_000, "-12.3000"),
            ("007", 70_000, "7.0000"),
            ("99999999999.9999", Price::MAX_RAW, "99999999999.9999"),
        ] {
            let p: Price = text.parse().unwrap();
            assert_eq!(p.raw(), raw, "{text}");
            assert_eq!(p.to_string(), canon);
            assert_eq!(canon.parse::<Price>().unwrap(), p);
        }
    }

    #[test]
    fn rejects_what_is_not_a_price() {
        for bad in ["", "-", "1.", ".5", "1e5", "1.23456", "abc", "1,5", "100000000000", " 1"] {
            assert!(bad.parse::<Price>().is_err(), "{bad:?} parsed");
        }
        assert!(serde_json::from_str::<Price>("2456.75").is_err(), "numbers are refused");
    }
}
