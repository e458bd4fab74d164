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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

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

/// Input partitions given to or taken from this node, in the order the consumer learnt
/// of them. Written by the consumer's rebalance callback, read by the stage before every
/// item it takes: a revocation applies before the records still queued behind it,
/// which the node no longer owns (their new owner reads them again).
#[derive(Debug, Default)]
pub struct Rebalances {
    events: Mutex<Vec<(bool, Vec<i32>)>>,
    pending: AtomicBool,
}

impl Rebalances {
    /// `partitions` assigned (`true`) or revoked (`false`).
    pub fn push(&self, assigned: bool, partitions: Vec<i32>) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((assigned, partitions));
        self.pending.store(true, Ordering::Release);
    }

    /// What happened since the last call; `None` at the cost of one atomic load.
    pub(crate) fn take(&self) -> Option<Vec<(bool, Vec<i32>)>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// Closed ids remembered so that a copy of a signal read after its close (the follower
/// reads the tier topics side by side, and this node's own closes come back through
/// them) does not make it open again.
pub const CLOSED_WINDOW: usize = 65_536;

/// See the module docs.
#[derive(Debug)]
pub struct Handover {
    caught_up: bool,
    /// Input partitions this node holds now.
    assigned: HashSet<i32, FastHash>,
    /// Keys tracked here, with the partition they came from (`None`: routed here from
    /// the TCP feed or HTTP, not from a partition; never revoked).
    active: HashMap<Key, Option<i32>, FastHash>,
    standby: HashMap<Key, Vec<Tracked>, FastHash>,
    standby_len: usize,
    max_standby: usize,
    closed: RecentIds,
    /// Signals not kept because standby was full.
    dropped: u64,
}

impl Handover {
    /// Keeps at most `max_standby` signals in standby (the tracker's own bound).
    pub fn new(max_standby: usize) -> Self {
        Self {
            caught_up: false,
            assigned: HashSet::default(),
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

    /// Is `key` tracked here?
    pub fn is_active(&self, key: &Key) -> bool {
        self.active.contains_key(key)
    }

    /// A signal routed elsewhere was read; returns it when it is to be tracked here (its
    /// key is, and the read-back is over), unless it closed already.
    pub fn peer_open(&mut self, t: Tracked) -> Option<Tracked> {
        if self.closed.contains(t.id) {
            return None;
        }
        if self.caught_up && self.active.contains_key(&key_of(&t)) {
            return Some(t); // the tracker keeps one copy of an id
        }
        self.keep(t);
        None
    }

    /// Signal `id` closed (here or elsewhere): it leaves standby. True when its key is
    /// tracked here (the tracker forgets it, if another node closed it).
    pub fn peer_close(&mut self, id: uuid::Uuid, key: Key) -> bool {
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
        self.active.contains_key(&key)
    }

    /// The read-back at start is over: the keys that became active meanwhile take their
    /// standby signals.
    pub fn caught_up(&mut self) -> Vec<Tracked> {
        self.caught_up = true;
        let keys: Vec<Key> = self.active.keys().copied().collect();
        keys.iter().flat_map(|k| self.take(k)).collect()
    }

    /// This node's tracker closed signal `id`.
    pub fn closed_here(&mut self, id: uuid::Uuid) {
        self.closed.insert(id);
    }

    /// A record of `key` came from `partition`: the key is tracked here from now on,
    /// unless the partition is no longer this node's (a record queued before a
    /// revocation). Returns its standby signals when it was not tracked here before.
    pub fn owned(&mut self, key: Key, partition: i32) -> Vec<Tracked> {
        if !self.assigned.contains(&partition) {
            return Vec::new();
        }
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

    /// `partitions` were assigned (`true`) or revoked. Returns the keys no longer
    /// tracked here; their open signals go back with [`Handover::put_back`].
    pub(crate) fn rebalance(&mut self, assigned: bool, partitions: &[i32]) -> HashSet<Key, FastHash> {
        if assigned {
            self.assigned.extend(partitions.iter().copied());
            return HashSet::default();
        }
        for p in partitions {
            self.assigned.remove(p);
        }
        let gone: HashSet<Key, FastHash> = self
            .active
            .iter()
            .filter(|(_, p)| p.is_some_and(|p| partitions.contains(&p)))
            .map(|(k, _)| *k)
            .collect();
        self.active.retain(|k, _| !gone.contains(k));
        gone
    }

    /// Open signals not tracked here (revoked keys taken from the tracker, or signals
    /// routed here from a partition this node no longer holds), oldest first.
    pub fn put_back(&mut self, signals: impl IntoIterator<Item = Tracked>) {
        for t in signals {
            self.keep(t);
        }
    }

    fn keep(&mut self, t: Tracked) {
        let key = key_of(&t);
        // The same signal from another tier's topic: it was carried there too.
        if let Some(same) = self.standby.get_mut(&key).and_then(|l| l.iter_mut().find(|s| s.id == t.id)) {
            same.tiers |= t.tiers;
            same.entry = same.entry.or(t.entry);
            return;
        }
        if self.standby_len >= self.max_standby {
            self.dropped += 1;
            return;
        }
        self.standby.entry(key).or_default().push(t);
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

    fn open(h: &mut Handover, id: u128, symbol: &str) -> Option<Tracked> {
        h.peer_open(signal(id, symbol))
    }

    fn close(h: &mut Handover, id: u128, symbol: &str) -> bool {
        h.peer_close(uuid::Uuid::from_u128(id), key(symbol))
    }

    /// Caught up, holding `partitions`.
    fn holding(partitions: &[i32]) -> Handover {
        let mut h = Handover::new(100);
        h.rebalance(true, partitions);
        h
    }

    #[test]
    fn a_key_taken_over_gets_what_was_open_there_and_nothing_closed() {
        let mut h = holding(&[0]);
        open(&mut h, 1, "TCS");
        open(&mut h, 2, "TCS");
        open(&mut h, 3, "INFY");
        assert!(!close(&mut h, 2, "TCS"), "not tracked here");
        assert!(h.caught_up().is_empty(), "no key is tracked here yet");
        assert_eq!(ids(&h.owned(key("TCS"), 0)), [1]);
        assert!(h.owned(key("TCS"), 0).is_empty(), "only the first record moves them");
        assert_eq!(h.standby_len(), 1);
        // Tracked here: what the follower reads of it goes to the tracker (which keeps
        // one copy of an id), and a close elsewhere is for the tracker to forget.
        assert_eq!(open(&mut h, 4, "TCS").map(|t| t.id.as_u128()), Some(4));
        assert!(close(&mut h, 4, "TCS"));
        assert_eq!(h.standby_len(), 1);
    }

    #[test]
    fn before_the_follower_caught_up_history_waits_and_then_moves_at_once() {
        let mut h = holding(&[3]);
        assert!(h.owned(key("TCS"), 3).is_empty());
        assert_eq!(open(&mut h, 1, "TCS"), None, "history, kept for the catch-up");
        open(&mut h, 2, "INFY");
        assert_eq!(ids(&h.caught_up()), [1]);
        assert_eq!(h.standby_len(), 1);
    }

    #[test]
    fn a_tiers_copy_merges_and_a_close_read_first_is_not_reopened() {
        let mut h = holding(&[0]);
        open(&mut h, 1, "TCS");
        let mut premium = signal(1, "TCS");
        premium.tiers = 4;
        h.peer_open(premium);
        close(&mut h, 5, "TCS");
        open(&mut h, 5, "TCS");
        h.caught_up();
        let moved = h.owned(key("TCS"), 0);
        assert_eq!(ids(&moved), [1]);
        assert_eq!(moved[0].tiers, 5, "carried on both tiers' channels");
        // Closed by this node's tracker, then read back: not opened again.
        h.closed_here(uuid::Uuid::from_u128(6));
        assert_eq!(open(&mut h, 6, "TCS"), None);
    }

    #[test]
    fn a_revoked_partition_gives_back_its_keys_and_its_queued_records_move_nothing() {
        let mut h = holding(&[0, 1]);
        h.caught_up();
        h.owned(key("TCS"), 0);
        h.owned(key("INFY"), 1);
        h.tracked_here(key("SBIN"));
        let gone = h.rebalance(false, &[0, 2]);
        assert_eq!(gone.into_iter().collect::<Vec<_>>(), [key("TCS")]);
        h.put_back(vec![signal(1, "TCS")]);
        assert_eq!(h.standby_len(), 1);
        // A record of partition 0 queued before the revocation: no longer this node's.
        assert!(h.owned(key("TCS"), 0).is_empty());
        assert!(!h.is_active(&key("TCS")));
        // Given back to this node: its next record tracks the key here again.
        h.rebalance(true, &[0]);
        assert_eq!(ids(&h.owned(key("TCS"), 0)), [1]);
        assert!(h.rebalance(false, &[5]).is_empty(), "keys routed here are never revoked");
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
        open(&mut h, 4, "INFY");
        assert_eq!(h.standby.len(), 1, "a signal not kept leaves no empty list behind");
    }

    #[test]
    fn rebalances_are_taken_in_order_once() {
        let r = Rebalances::default();
        assert_eq!(r.take(), None);
        r.push(false, vec![0, 1]);
        r.push(true, vec![1]);
        assert_eq!(r.take(), Some(vec![(false, vec![0, 1]), (true, vec![1])]));
        assert_eq!(r.take(), None);
    }
}
