//! Short strings stored inline, so that a signal is one allocation-free value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most `N` bytes of printable ASCII (space through `~`) other than `"` and `\`.
///
/// That alphabet covers every symbol and exchange code seen in practice (`BTC-USDT`,
/// `EUR/USD`, `M&M`, `NSE`) and can be copied into JSON with no escaping, which keeps
/// the encoder on the hot path a plain memcpy.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InlineStr<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// A trading symbol: 1–20 bytes.
pub type Symbol = InlineStr<20>;
/// An exchange code: 1–50 bytes.
pub type Exchange = InlineStr<50>;

/// Why a string cannot be a symbol or exchange code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("{len} bytes is longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("byte 0x{byte:02x} at {at} is not allowed (printable ASCII without '\"' and '\\')")]
    BadByte { byte: u8, at: usize },
}

impl<const N: usize> InlineStr<N> {
    /// Validates and copies `s`.
    pub fn new(s: &str) -> Result<Self, TextError> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(TextError::Empty);
        }
        if b.len() > N || b.len() > usize::from(u8::MAX) {
            return Err(TextError::TooLong { len: b.len(), max: N });
        }
        if let Some(at) = b.iter().position(|&c| !(0x20..=0x7e).contains(&c) || c == b'"' || c == b'\\') {
            return Err(TextError::BadByte { byte: b[at], at });
        }
        let mut bytes = [0; N];
        bytes[..b.len()].copy_from_slice(b);
        Ok(Self { len: b.len() as u8, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `new`).
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl<const N: usize> std::hash::Hash for InlineStr<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Only the used bytes: the padding is always zero and would triple the work.
        state.write(self.as_bytes());
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> Serialize for InlineStr<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for InlineStr<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_alphabet() {
        assert_eq!(Symbol::new("BTC-USDT").unwrap().as_str(), "BTC-USDT");
        assert!(Symbol::new("M&M").is_ok());
        assert!(Symbol::new("").is_err());
        assert!(Symbol::new(&"X".repeat(21)).is_err());
        assert!(Symbol::new(&"X".repeat(20)).is_ok());
        assert!(Symbol::new("a\"b").is_err());
        assert!(Symbol::new("a\nb").is_err());
        assert!(Symbol::new("é").is_err());
        assert!(Exchange::new(&"E".repeat(50)).is_ok());
    }
}
