//! Confidence 0.00–100.00, kept as integer hundredths (the source's DECIMAL(5,2)).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Confidence in hundredths of a percent point: `Confidence::new(8725)` is 87.25.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Confidence(u16);

/// Why a value is not a confidence.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfidenceError {
    #[error("confidence {0} is outside 0.00..=100.00")]
    OutOfRange(f64),
    #[error("confidence {0} has more than two decimal places")]
    TooPrecise(f64),
}

impl Confidence {
    pub const MAX: Self = Self(10_000);

    /// From hundredths; `None` above 100.00.
    pub const fn new(hundredths: u16) -> Option<Self> {
        if hundredths > 10_000 { None } else { Some(Self(hundredths)) }
    }

    /// Hundredths.
    pub const fn hundredths(self) -> u16 {
        self.0
    }

    /// From a decimal number as JSON and TOML carry it (`87.25`).
    pub fn from_f64(v: f64) -> Result<Self, ConfidenceError> {
        if !v.is_finite() || !(0.0..=100.0).contains(&v) {
            return Err(ConfidenceError::OutOfRange(v));
        }
        let scaled = v * 100.0;
        let rounded = scaled.round();
        // 87.25 * 100 is 8725.000000000001 in binary floating point; a third decimal is not.
        if (scaled - rounded).abs() > 1e-6 {
            return Err(ConfidenceError::TooPrecise(v));
        }
        Ok(Self(rounded as u16))
    }

    /// Writes `87.25` / `90.00` (always two decimals) into `buf` and returns it.
    pub fn format(self, buf: &mut [u8; 8]) -> &str {
        let int = self.0 / 100;
        let frac = self.0 % 100;
        let mut i = buf.len();
        buf[i - 1] = b'0' + (frac % 10) as u8;
        buf[i - 2] = b'0' + (frac / 10) as u8;
        buf[i - 3] = b'.';
        i -= 3;
        let mut v = int;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        std::str::from_utf8(&buf[i..]).unwrap_or("0.00")
    }

    fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format(&mut [0; 8]))
    }
}

impl Serialize for Confidence {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Confidence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Self::from_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_decimals_exactly() {
        assert_eq!(Confidence::from_f64(87.25).unwrap().hundredths(), 8725);
        assert_eq!(Confidence::from_f64(0.07).unwrap().hundredths(), 7);
        assert_eq!(Confidence::from_f64(100.0).unwrap(), Confidence::MAX);
        assert!(Confidence::from_f64(87.255).is_err());
        assert!(Confidence::from_f64(100.01).is_err());
        assert!(Confidence::from_f64(-0.5).is_err());
        assert!(Confidence::from_f64(f64::NAN).is_err());
        assert_eq!(Confidence::new(9000).unwrap().to_string(), "90.00");
        assert_eq!(Confidence::new(5).unwrap().to_string(), "0.05");
        assert_eq!(Confidence::new(8725).unwrap().to_string(), "87.25");
    }
}
