//! Scale-out: which engine node tracks a symbol's open signals, and how they move when
//! its partition does. I/O-free, like the [`Tracker`](super::Tracker) it feeds.
//!
//! Engine nodes share `raw-signals` and `market-data` as one consumer group; the node
//! that holds a symbol's partition gets its ticks, so it is the one that can close its
//! signals. Which symbols a partition holds is the producers' partitioner's business, so
//! a node learns it from the records it takes: the first record of a (symbol, exchange)
//! from partition *p* makes that key **active** here ([`Handover::owned`]), and a
//! revoked partition makes its keys inactive again ([`Handover::revoke`]).
//!
//! Every engine node also follows `signals.<tier>` (what every node routed and closed):
//! the open signals of the keys it does not track wait in **standby**. When a key
//! becomes active, its standby signals are tracked here; when it becomes inactive, the
//! tracker's signals of that key go back to standby. So the node that takes over a
//! partition — because another joined, left, or died — tracks what was open there, and
//! a restarted node rebuilds its open signals the same way (the topics are the store of
//! a scale-out deployment).
//!
//! Before the follower has read the topics up to where they ended at start
//! ([`PeerEvent::CaughtUp`]), nothing is moved out of standby: what it reads is history,
//! and the keys that became active meanwhile take their standby signals at that point.

use std::collections::{HashMap, HashSet};

use super::Tracked;
use crate::hash::FastHash;
use crate::model::{Exchange, Symbol};
use crate::pipeline::dedup::RecentIds;

/// A symbol on its exchange: what a partition holds and what a book tracks.
pub type Key = (Symbol, Exchange);

/// What the follower of `signals.<tier>` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A routed signal (with the bit of the tier whose topic carried it).
    Open(Box<Tracked>),
    /// A close: the signal is no longer open, whoever tracked it.
    Close { id: uuid::Uuid, key: Key },
    /// The topics are read up to where they ended when the node started.
    CaughtUp,
}

/// Closed ids remembered so that a tier's copy of a signal read after another tier's
/// copy of its close does not make it open again (the follower reads the tier topics
/// side by side, not in one order).
const CLOSED_WINDOW: usize = 65_536;

/// See the module docs.
#[derive(Debug)]
pub struct Handover {
    caught_up: bool,
    /// Keys tracked here, with the partition they came from (`None`: routed here from
    /// the TCP feed or HTTP, not from a partition; never revoked).
    active: HashMap<Key, Option<i32>, FastHash>,
    standby: HashMap<Key, Vec<Tracked>, FastHash>,
    standby_len: usize,
    max_standby: usize,
    closed: RecentIds,
    /// Signals not kept in standby because it was full.
    dropped: u64,
}

impl Handover {
    /// Keeps at most `max_standby` signals in standby (the tracker's own bound).
    pub fn new(max_standby: usize) -> Self {
        Self {
            caught_up: false,
            active: HashMap::default(),
            standby: HashMap::default(),
            standby_len: 0,
            max_standby,
            closed: RecentIds::new(CLOSED_WINDOW),
            dropped: 0,
        }
    }

    /// Signals waiting in standby.
    pub fn standby_len(&self) -> usize {
        self.standby_len
    }

    /// Signals not kept because standby was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A record of the follower; returns the signals to track here now.
    pub fn peer(&mut self, event: PeerEvent) -> Vec<Tracked> {
        match event {
            PeerEvent::Open(t) => {
                // A key tracked here: this node routed it (or will route what follows).
                if self.closed.contains(t.id) || (self.caught_up && self.active.contains_key(&key_of(&t))) {
                    return Vec::new();
                }
                self.keep(*t);
                Vec::new()
            }
            PeerEvent::Close { id, key } => {
                self.closed.insert(id);
                if let Some(list) = self.standby.get_mut(&key)
                    && let Some(i) = list.iter().position(|t| t.id == id)
                {
                    list.remove(i);
                    self.standby_len -= 1;
                    if list.is_empty() {
                        self.standby.remove(&key);
                    }
                }
                Vec::new()
            }
            PeerEvent::CaughtUp => {
                self.caught_up = true;
                let keys: Vec<Key> = self.active.keys().copied().collect();
                keys.iter().flat_map(|k| self.take(k)).collect()
            }
        }
    }

    /// A record of `key` came from `partition`: the key is tracked here from now on.
    /// Returns its standby signals when it was not tracked here before.
    pub fn owned(&mut self, key: Key, partition: i32) -> Vec<Tracked> {
        let before = self.active.insert(key, Some(partition));
        match before {
            Some(Some(_)) => Vec::new(),
            // New here, or tracked here only for what was routed locally.
            None | Some(None) if self.caught_up => self.take(&key),
            None | Some(None) => Vec::new(),
        }
    }

    /// A signal of `key` is tracked here because it was routed here (not from a
    /// partition): the follower's copy of it must not wait in standby as well.
    pub fn tracked_here(&mut self, key: Key) {
        self.active.entry(key).or_insert(None);
    }

    /// `partitions` were revoked: their keys are no longer tracked here. Returns those
    /// keys; their open signals go back with [`Handover::put_back`].
    pub(crate) fn revoke(&mut self, partitions: &[i32]) -> HashSet<Key, FastHash> {
        let gone: HashSet<Key, FastHash> = self
            .active
            .iter()
            .filter(|(_, p)| p.is_some_and(|p| partitions.contains(&p)))
            .map(|(k, _)| *k)
            .collect();
        self.active.retain(|k, _| !gone.contains(k));
        gone
    }

    /// Open signals of revoked keys, taken from the tracker, oldest first.
    pub fn put_back(&mut self, signals: Vec<Tracked>) {
        for t in signals {
            self.keep(t);
        }
    }

    fn keep(&mut self, t: Tracked) {
        let list = self.standby.entry(key_of(&t)).or_default();
        // The same signal from another tier's topic: it was carried there too.
        if let Some(same) = list.iter_mut().find(|s| s.id == t.id) {
            same.tiers |= t.tiers;
            same.entry = same.entry.or(t.entry);
            return;
        }
        if self.standby_len >= self.max_standby {
            self.dropped += 1;
            return;
        }
        list.push(t);
        self.standby_len += 1;
    }

    fn take(&mut self, key: &Key) -> Vec<Tracked> {
        let list = self.standby.remove(key).unwrap_or_default();
        self.standby_len -= list.len();
        list
    }
}

fn key_of(t: &Tracked) -> Key {
    (t.symbol, t.exchange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Category, Price, SignalType, UnixNanos};

    fn signal(id: u128, symbol: &str) -> Tracked {
        Tracked {
            id: uuid::Uuid::from_u128(id),
            source_id: uuid::Uuid::from_u128(7),
            symbol: Symbol::new(symbol).unwrap(),
            exchange: Exchange::new("NSE").unwrap(),
            category: Category::Equity,
            signal_type: SignalType::Buy,
            target: Price::from_raw(110_0000).unwrap(),
            stop: Price::from_raw(90_0000).unwrap(),
            expires_at: UnixNanos(1_000),
            entry: Price::from_raw(100_0000),
            tiers: 1,
            data: Box::from(&b"{}"[..]),
        }
    }

    fn key(symbol: &str) -> Key {
        (Symbol::new(symbol).unwrap(), Exchange::new("NSE").unwrap())
    }

    fn ids(v: &[Tracked]) -> Vec<u128> {
        v.iter().map(|t| t.id.as_u128()).collect()
    }

    fn open(h: &mut Handover, id: u128, symbol: &str) -> Vec<Tracked> {
        h.peer(PeerEvent::Open(Box::new(signal(id, symbol))))
    }

    #[test]
    fn a_key_taken_over_gets_what_was_open_there_and_nothing_closed() {
        let mut h = Handover::new(100);
        open(&mut h, 1, "TCS");
        open(&mut h, 2, "TCS");
        open(&mut h, 3, "INFY");
        h.peer(PeerEvent::Close { id: uuid::Uuid::from_u128(2), key: key("TCS") });
        assert!(h.peer(PeerEvent::CaughtUp).is_empty(), "no key is tracked here yet");
        assert_eq!(ids(&h.owned(key("TCS"), 0)), [1]);
        assert!(h.owned(key("TCS"), 0).is_empty(), "only the first record moves them");
        assert_eq!(h.standby_len(), 1);
        // Active here: the follower's copy of what this node routes stays out of standby.
        open(&mut h, 4, "TCS");
        assert_eq!(h.standby_len(), 1);
    }

    #[test]
    fn before_the_follower_caught_up_history_waits_and_then_moves_at_once() {
        let mut h = Handover::new(100);
        assert!(h.owned(key("TCS"), 3).is_empty());
        open(&mut h, 1, "TCS");
        open(&mut h, 2, "INFY");
        assert_eq!(ids(&h.peer(PeerEvent::CaughtUp)), [1]);
        assert_eq!(h.standby_len(), 1);
    }

    #[test]
    fn a_tiers_copy_merges_and_a_close_read_first_is_not_reopened() {
        let mut h = Handover::new(100);
        open(&mut h, 1, "TCS");
        let mut premium = signal(1, "TCS");
        premium.tiers = 4;
        h.peer(PeerEvent::Open(Box::new(premium)));
        h.peer(PeerEvent::Close { id: uuid::Uuid::from_u128(5), key: key("TCS") });
        open(&mut h, 5, "TCS");
        h.peer(PeerEvent::CaughtUp);
        let moved = h.owned(key("TCS"), 0);
        assert_eq!(ids(&moved), [1]);
        assert_eq!(moved[0].tiers, 5, "carried on both tiers' channels");
    }

    #[test]
    fn a_revoked_partition_gives_back_its_keys_only() {
        let mut h = Handover::new(100);
        h.peer(PeerEvent::CaughtUp);
        h.owned(key("TCS"), 0);
        h.owned(key("INFY"), 1);
        h.tracked_here(key("SBIN"));
        let gone = h.revoke(&[0, 2]);
        assert_eq!(gone.into_iter().collect::<Vec<_>>(), [key("TCS")]);
        h.put_back(vec![signal(1, "TCS")]);
        assert_eq!(h.standby_len(), 1);
        // Back on a later record of its partition (this node got it again).
        assert_eq!(ids(&h.owned(key("TCS"), 0)), [1]);
        assert!(h.revoke(&[5]).is_empty(), "keys routed here are never revoked");
    }

    #[test]
    fn standby_is_bounded_and_counts_what_it_did_not_keep() {
        let mut h = Handover::new(2);
        for id in 1..=3 {
            open(&mut h, id, "TCS");
        }
        assert_eq!((h.standby_len(), h.dropped()), (2, 1));
        open(&mut h, 1, "TCS");
        assert_eq!((h.standby_len(), h.dropped()), (2, 1), "a copy is not a new signal");
    }
}
