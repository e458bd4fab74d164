//! Daily signal quotas, per user across all their connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Today's count for one user (UTC days).
#[derive(Debug, Default)]
pub struct UserQuota {
    day: AtomicU32,
    used: AtomicU32,
    notified: AtomicBool,
    /// Highest seq counted per log, so that a message delivered to two connections of
    /// the same user counts once.
    counted: [AtomicU64; 8],
}

/// What a delivery may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    Deliver,
    /// Over the limit; `notify` is true the first time today.
    Exhausted {
        notify: bool,
    },
}

impl UserQuota {
    /// Counts the delivery of `seq` from log `log` against `limit` on `day`.
    pub fn take(&self, log: usize, seq: u64, limit: u32, day: u32) -> Take {
        if self.day.swap(day, Ordering::AcqRel) != day {
            // A new UTC day: start over. (Two shards racing here at midnight can at
            // worst count one delivery twice.)
            self.used.store(0, Ordering::Release);
            self.notified.store(false, Ordering::Release);
            for c in &self.counted {
                c.store(0, Ordering::Release);
            }
        }
        if seq <= self.counted[log].load(Ordering::Acquire) {
            return Take::Deliver; // admitted already, for another connection of this user
        }
        // Exhausted: refused on every connection of the user, not only the first to
        // see the message.
        if self.used.load(Ordering::Acquire) >= limit {
            return Take::Exhausted { notify: !self.notified.swap(true, Ordering::AcqRel) };
        }
        if self.counted[log].fetch_max(seq, Ordering::AcqRel) < seq {
            // Two shards admitting different messages at the same instant may both
            // pass the check above: the limit can be passed by at most one per shard.
            self.used.fetch_add(1, Ordering::AcqRel);
        }
        Take::Deliver
    }

    /// Today's deliveries have reached `limit` (nothing more would be delivered today).
    pub fn exhausted(&self, limit: u32, day: u32) -> bool {
        self.day.load(Ordering::Acquire) == day && self.used.load(Ordering::Acquire) >= limit
    }

    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }
}

/// Quotas by user id. Kept for the process's life (a reconnect must not reset a quota);
/// one small entry per user that ever connected.
#[derive(Debug, Default)]
pub struct QuotaBook {
    users: Mutex<HashMap<String, Arc<UserQuota>>>,
}

impl QuotaBook {
    pub fn user(&self, id: &str) -> Arc<UserQuota> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(users.entry(id.to_owned()).or_default())
    }
}

/// Days since the Unix epoch, UTC.
pub fn utc_day(unix_ns: i64) -> u32 {
    (unix_ns / 86_400_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_once_per_message_and_resets_daily() {
        let q = UserQuota::default();
        assert_eq!(q.take(0, 1, 2, 100), Take::Deliver);
        assert_eq!(q.take(0, 1, 2, 100), Take::Deliver, "same message, second connection");
        assert_eq!(q.take(0, 2, 2, 100), Take::Deliver);
        assert_eq!(q.take(0, 3, 2, 100), Take::Exhausted { notify: true });
        assert_eq!(
            q.take(0, 3, 2, 100),
            Take::Exhausted { notify: false },
            "refused on the user's other connections too"
        );
        assert_eq!(q.take(0, 4, 2, 100), Take::Exhausted { notify: false });
        assert_eq!(
            q.take(0, 2, 2, 100),
            Take::Deliver,
            "an admitted message still reaches a late connection"
        );
        assert_eq!(q.used(), 2);
        assert!(q.exhausted(2, 100));
        assert!(!q.exhausted(2, 101), "spent yesterday is not spent today");
        assert!(!q.exhausted(3, 100));
        assert_eq!(q.take(0, 5, 2, 101), Take::Deliver, "a new day");
    }
}
