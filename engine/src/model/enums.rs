//! The closed vocabularies of the domain model (docs/protocol.md): tiers, categories, signal and source types.

use serde::{Deserialize, Serialize};

/// An unknown name or wire code for one of the enums here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident = $code:literal, $text:literal;)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum $name { $($variant = $code),+ }

        impl $name {
            /// Every value, in wire-code order.
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            /// The JSON name.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// The code used in rkyv frames.
            pub const fn code(self) -> u8 {
                self as u8
            }

            pub fn from_code(code: u8) -> Result<Self, UnknownVariant> {
                match code {
                    $($code => Ok(Self::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: code.to_string() }),
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, UnknownVariant> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// Who produced a signal.
    SourceType, "source_type", {
        AiModel = 0, "ai_model";
        Analyst = 1, "analyst";
        Algorithm = 2, "algorithm";
        Sentiment = 3, "sentiment";
    }
);

vocabulary!(
    /// The asset class of a signal's symbol.
    Category, "category", {
        Equity = 0, "equity";
        Crypto = 1, "crypto";
        Forex = 2, "forex";
        Commodity = 3, "commodity";
    }
);

vocabulary!(
    /// What the signal recommends.
    SignalType, "signal_type", {
        Buy = 0, "buy";
        Sell = 1, "sell";
        Hold = 2, "hold";
        Exit = 3, "exit";
    }
);

vocabulary!(
    /// Subscription tiers, lowest first: `Tier` orders as the tiers rank.
    Tier, "tier", {
        Free = 0, "free";
        Basic = 1, "basic";
        Premium = 2, "premium";
        Enterprise = 3, "enterprise";
    }
);

impl Tier {
    /// The array index of this tier in per-tier tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A set of categories, one bit per [`Category`]; what an account may receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CategoryMask(u8);

impl CategoryMask {
    pub const ALL: Self = Self(0b1111);
    pub const NONE: Self = Self(0);

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Keeps only the bits that name a category.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }

    pub const fn bit(c: Category) -> u8 {
        1 << c as u8
    }

    pub const fn contains(self, c: Category) -> bool {
        self.0 & Self::bit(c) != 0
    }

    #[must_use]
    pub const fn with(self, c: Category) -> Self {
        Self(self.0 | Self::bit(c))
    }
}

impl FromIterator<Category> for CategoryMask {
    fn from_iter<I: IntoIterator<Item = Category>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_order() {
        assert!(Tier::Free < Tier::Basic && Tier::Premium < Tier::Enterprise);
        for t in &Tier::ALL {
            assert_eq!(Tier::from_code(t.code()).unwrap(), *t);
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), *t);
        }
        assert!(Category::from_code(4).is_err());
        assert_eq!(serde_json::to_string(&SourceType::AiModel).unwrap(), "\"ai_model\"");
        let m: CategoryMask = [Category::Equity, Category::Forex].into_iter().collect();
        assert!(m.contains(Category::Forex) && !m.contains(Category::Crypto));
    }
}
