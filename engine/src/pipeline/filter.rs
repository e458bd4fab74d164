//! The global filter of the source's stream job.

use super::DropReason;
use crate::model::{Signal, UnixNanos};
use crate::policy::TierPolicy;

/// Passes when `confidence > policy.min_confidence` and the signal has not expired.
pub(crate) fn check(policy: &TierPolicy, s: &Signal, now: UnixNanos) -> Result<(), DropReason> {
    if !policy.passes_global(s.confidence) {
        return Err(DropReason::BelowConfidence);
    }
    if s.expires_at <= now {
        return Err(DropReason::Expired);
    }
    Ok(())
}
