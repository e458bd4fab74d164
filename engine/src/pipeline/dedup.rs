//! At-least-once in, exactly-once out: the two de-duplication checks.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

use crate::hash::FastHash;

/// The highest seq taken per producer slot. Producers number their signals with
/// increasing seqs and resend from their last ACK after a reconnect, so anything at or
/// below the highest taken is a resend.
#[derive(Debug, Default)]
pub(crate) struct ProducerSeqs {
    last: Vec<u64>,
}

impl ProducerSeqs {
    /// True if `seq` is new for `slot` (and records it).
    pub(crate) fn accept(&mut self, slot: u32, seq: u64) -> bool {
        let i = slot as usize;
        if i >= self.last.len() {
            self.last.resize(i + 1, 0);
        }
        if seq <= self.last[i] {
            return false;
        }
        self.last[i] = seq;
        true
    }

    pub(crate) fn last(&self, slot: u32) -> u64 {
        self.last.get(slot as usize).copied().unwrap_or(0)
    }
}

/// The last `capacity` signal ids, oldest forgotten first.
#[derive(Debug)]
pub(crate) struct RecentIds {
    set: HashSet<u128, FastHash>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            set: HashSet::with_capacity_and_hasher(capacity, FastHash::default()),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// True if `id` was not seen within the window (and records it).
    pub(crate) fn insert(&mut self, id: Uuid) -> bool {
        let id = id.as_u128();
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id);
        true
    }

    pub(crate) fn contains(&self, id: Uuid) -> bool {
        self.set.contains(&id.as_u128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_seqs_refuse_resends() {
        let mut s = ProducerSeqs::default();
        assert!(s.accept(3, 1) && s.accept(3, 2) && s.accept(3, 5));
        assert!(!s.accept(3, 5) && !s.accept(3, 4));
        assert!(s.accept(0, 1));
        assert_eq!(s.last(3), 5);
    }

    #[test]
    fn ids_are_forgotten_oldest_first() {
        let mut r = RecentIds::new(2);
        let id = |n| Uuid::from_u128(n);
        assert!(r.insert(id(1)) && r.insert(id(2)));
        assert!(!r.insert(id(1)));
        assert!(r.insert(id(3)));
        assert!(r.insert(id(1)), "id 1 left the window");
        assert!(!r.insert(id(3)));
    }
}
