//! Routing: which tier channels a signal enters.

use crate::model::{Confidence, Tier};
use crate::policy::TierPolicy;

/// The tiers whose channel admits a signal of confidence `c`, lowest tier first.
pub(crate) fn tiers(policy: &TierPolicy, c: Confidence) -> impl Iterator<Item = Tier> + '_ {
    Tier::ALL.iter().copied().filter(move |&t| policy.admits(t, c))
}
