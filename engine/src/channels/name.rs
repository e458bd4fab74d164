//! Channel names as clients write them.

use std::fmt;
use std::str::FromStr;

use crate::model::Tier;

/// `signals_<tier>`, `prices_general` or `user_<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChannelName {
    Signals(Tier),
    Prices,
    User(String),
}

/// The name is none of the known channel shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel {0:?}")]
pub struct ChannelNameError(pub String);

/// Longest user id accepted in `user_<id>`.
const MAX_USER_ID: usize = 128;

impl FromStr for ChannelName {
    type Err = ChannelNameError;

    fn from_str(s: &str) -> Result<Self, ChannelNameError> {
        let err = || ChannelNameError(s.chars().take(64).collect());
        if s == "prices_general" {
            return Ok(Self::Prices);
        }
        if let Some(t) = s.strip_prefix("signals_") {
            return t.parse().map(Self::Signals).map_err(|_| err());
        }
        if let Some(id) = s.strip_prefix("user_") {
            let ok = !id.is_empty()
                && id.len() <= MAX_USER_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            return if ok { Ok(Self::User(id.to_owned())) } else { Err(err()) };
        }
        Err(err())
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signals(t) => write!(f, "signals_{t}"),
            Self::Prices => f.write_str("prices_general"),
            Self::User(id) => write!(f, "user_{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        for s in ["signals_free", "signals_enterprise", "prices_general", "user_u-42"] {
            assert_eq!(s.parse::<ChannelName>().unwrap().to_string(), s);
        }
        for s in ["signals_gold", "signals_", "user_", "user_a b", "prices", ""] {
            assert!(s.parse::<ChannelName>().is_err(), "{s}");
        }
    }
}
