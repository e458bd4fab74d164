//! One channel's log: epoch, seq and the ring of recent encoded messages.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Message;
use crate::model::UnixNanos;

/// A log's identity: random at creation, so a seq from another log (or an earlier run)
/// is never mistaken for one of this log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A random epoch. std's `RandomState` is seeded from the OS per process and
    /// perturbed per instance, which is all the randomness an epoch needs.
    pub fn random() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(UnixNanos::now().0 as u128);
        Self(h.finish())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// Where a resuming subscriber left off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: Epoch,
}

/// The answer to a subscribe: what to tell the client, what to replay, where to go on.
#[derive(Debug)]
pub struct Subscription {
    pub epoch: Epoch,
    /// The last published seq when the subscription was taken (0 if none).
    pub head: u64,
    /// `None` without a resume request; otherwise whether the gap could be replayed.
    pub recovered: Option<bool>,
    /// `since+1 ..= head`, in order, when recovered; empty otherwise.
    pub replay: Vec<Message>,
    /// Read live messages with `read_after(cursor)`; no message is missed or repeated
    /// between the replay and live reading.
    pub cursor: u64,
}

/// A reader asked for messages that the ring no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reader fell behind: messages after {after} up to {lost_through} are gone")]
pub struct ReadError {
    pub after: u64,
    pub lost_through: u64,
}

/// The log of one channel: a single writer (the pipeline stage) and many readers.
///
/// The ring sits behind a mutex that the writer takes once per message and a reader
/// once per batch it reads; readers are hub shards (a handful), never connections.
/// How many appends ahead of its eviction a message is prefetched.
const EVICT_AHEAD: usize = 8;

/// Messages a resume copies per hold of the ring's lock.
pub const REPLAY_BATCH: usize = 256;

#[derive(Debug)]
pub struct ChannelLog {
    name: String,
    epoch: Epoch,
    capacity: usize,
    /// The seqs come from elsewhere (a gateway node following `signals.<tier>`): a
    /// resume a little ahead of this log is another gateway's position, not a mistake.
    follows: bool,
    /// Last published seq, readable without the lock.
    head: AtomicU64,
    ring: Mutex<Ring>,
    /// Times the ring's lock was taken (tests).
    #[cfg(test)]
    locked: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct Ring {
    /// Seqs beside the messages: eviction and the binary searches of `subscribe` and
    /// `read_after` then never touch the (cold) message buffers themselves.
    msgs: VecDeque<(u64, Message)>,
    /// Highest seq that is not in the ring any more (evicted or never released).
    lost_through: u64,
}

impl ChannelLog {
    pub fn new(name: String, epoch: Epoch, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            name,
            epoch,
            capacity,
            follows: false,
            head: AtomicU64::new(0),
            ring: Mutex::new(Ring { msgs: VecDeque::with_capacity(capacity), lost_through: 0 }),
            #[cfg(test)]
            locked: Default::default(),
        }
    }

    /// Marks this log as following seqs assigned elsewhere: a resume with the right
    /// epoch and `since` beyond the head (by at most the ring's capacity) is recovered
    /// by waiting; the subscriber gets what comes after `since` as this log catches up.
    #[must_use]
    pub fn following(mut self) -> Self {
        self.follows = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Last published seq (0 if none).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The highest seq this log no longer holds (evicted, or before it started): a
    /// resume from below it needs [`super::History`].
    pub fn lost_through(&self) -> u64 {
        self.ring().lost_through
    }

    /// Number of messages the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        #[cfg(test)]
        self.locked.fetch_add(1, Ordering::Relaxed);
        // The ring is consistent after every statement, so a panic elsewhere while
        // holding the lock leaves nothing half-done.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `msg`, whose seq must be above the head (the writer's contract; a live
    /// log appends `head + 1`, a delayed view may skip seqs it lost).
    pub(crate) fn append(&self, msg: Message) {
        let seq = msg.seq();
        debug_assert!(seq > self.head(), "{}: seq {seq} not above head", self.name);
        let mut ring = self.ring();
        let evicted = if ring.msgs.len() == self.capacity { ring.msgs.pop_front() } else { None };
        if let Some((_, soon)) = ring.msgs.get(EVICT_AHEAD) {
            soon.prefetch(); // evicted EVICT_AHEAD appends from now
        }
        if let Some((old, _)) = &evicted {
            ring.lost_through = ring.lost_through.max(*old);
        }
        ring.msgs.push_back((seq, msg));
        drop(ring);
        self.head.store(seq, Ordering::Release);
        // The last reference to an old message is usually this one: free it outside
        // the lock.
        drop(evicted);
    }

    /// Records that `seq` will never be in this log (a delayed view that overflowed):
    /// readers and resumes across it are told they lost data instead of skipping it.
    pub(crate) fn mark_lost(&self, seq: u64) {
        let mut ring = self.ring();
        ring.lost_through = ring.lost_through.max(seq);
        drop(ring);
        self.head.fetch_max(seq, Ordering::AcqRel);
    }

    /// Subscribes, replaying `since+1 ..= head` when `resume` asks for it and the ring
    /// still holds all of it under the same epoch.
    ///
    /// The replay is copied [`REPLAY_BATCH`] messages per hold of the ring's lock, which
    /// the pipeline's writer takes for every message: a resume across the whole ring
    /// (10,000 by default, at up to the message rate per connection) must not stall
    /// the writer for the length of the copy. Should the ring move past the gap while
    /// it is copied, the resume is answered as not recovered.
    pub fn subscribe(&self, resume: Option<Resume>) -> Subscription {
        let ring = self.ring();
        let head = ring.msgs.back().map_or(0, |(seq, _)| *seq).max(ring.lost_through);
        let lost_through = ring.lost_through;
        drop(ring);
        let mut sub =
            Subscription { epoch: self.epoch, head, recovered: None, replay: Vec::new(), cursor: head };
        let Some(r) = resume else { return sub };
        let ahead = self.follows && r.since > head && r.since - head <= self.capacity as u64;
        let ok = r.epoch == self.epoch && (ahead || (r.since <= head && r.since >= lost_through));
        sub.recovered = Some(ok);
        let mut after = r.since;
        while ok && after < head {
            match self.read_after(after, &mut sub.replay, REPLAY_BATCH) {
                Ok(next) if next > after => after = next,
                Ok(_) => break,
                Err(_) => {
                    sub.recovered = Some(false);
                    sub.replay.clear();
                    break;
                }
            }
        }
        // Only up to the head this subscription was taken at: live reading goes on from
        // the cursor.
        let past = sub.replay.partition_point(|m| m.seq() <= head);
        sub.replay.truncate(past);
        sub
    }

    /// Appends to `out` up to `max` messages with seq above `after`, in order, and
    /// returns the seq to pass next time.
    pub fn read_after(&self, after: u64, out: &mut Vec<Message>, max: usize) -> Result<u64, ReadError> {
        let ring = self.ring();
        if after < ring.lost_through {
            return Err(ReadError { after, lost_through: ring.lost_through });
        }
        let start = ring.msgs.partition_point(|(seq, _)| *seq <= after);
        let mut next = after;
        for (seq, m) in ring.msgs.range(start..).take(max) {
            next = *seq;
            out.push(m.clone());
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::Category;

    fn msg(seq: u64) -> Message {
        let meta = super::super::MessageMeta {
            seq,
            category: Category::Equity,
            ingest_ts: UnixNanos(0),
            routed_ts: UnixNanos(0),
            sent_ts: None,
            outcome: false,
        };
        Message::new(&meta, format!("m{seq}").as_bytes(), &mut Vec::new())
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(Message::seq).collect()
    }

    #[test]
    fn resume_inside_ring_replays_exact_gap() {
        let log = ChannelLog::new("t".into(), Epoch(7), 4);
        for s in 1..=6 {
            log.append(msg(s));
        }
        // Ring holds 3..=6.
        let sub = log.subscribe(Some(Resume { since: 2, epoch: Epoch(7) }));
        assert_eq!((sub.head, sub.recovered), (6, Some(true)));
        assert_eq!(seqs(&sub.replay), vec![3, 4, 5, 6]);
        let sub = log.subscribe(Some(Resume { since: 6, epoch: Epoch(7) }));
        assert_eq!((sub.recovered, sub.replay.len()), (Some(true), 0));
        for (since, epoch) in [(1, 7), (7, 7), (4, 8)] {
            let sub = log.subscribe(Some(Resume { since, epoch: Epoch(epoch) }));
            assert_eq!(sub.recovered, Some(false), "since {since} epoch {epoch}");
            assert!(sub.replay.is_empty());
            assert_eq!(sub.cursor, 6);
        }
        assert_eq!(log.subscribe(None).recovered, None);
    }

    #[test]
    fn a_resume_across_the_whole_ring_copies_it_a_batch_per_lock() {
        let log = ChannelLog::new("t".into(), Epoch(7), 10_000);
        for s in 1..=10_000 {
            log.append(msg(s));
        }
        let before = log.locked.load(Ordering::Relaxed);
        let sub = log.subscribe(Some(Resume { since: 0, epoch: Epoch(7) }));
        let holds = log.locked.load(Ordering::Relaxed) - before;
        assert_eq!(sub.recovered, Some(true));
        assert_eq!(seqs(&sub.replay), (1..=10_000).collect::<Vec<_>>());
        assert_eq!(holds, 1 + 10_000usize.div_ceil(REPLAY_BATCH), "the head, then one hold per batch");
    }

    #[test]
    fn readers_continue_from_cursor_and_learn_of_loss() {
        let log = ChannelLog::new("t".into(), Epoch(1), 3);
        let sub = log.subscribe(None);
        log.append(msg(1));
        log.append(msg(2));
        let mut out = Vec::new();
        let next = log.read_after(sub.cursor, &mut out, 1).unwrap();
        assert_eq!((next, seqs(&out)), (1, vec![1]));
        let next = log.read_after(next, &mut out, 10).unwrap();
        assert_eq!((next, seqs(&out)), (2, vec![1, 2]));
        for s in 3..=6 {
            log.append(msg(s));
        }
        assert_eq!(log.read_after(next, &mut out, 10), Err(ReadError { after: 2, lost_through: 3 }));
        log.mark_lost(7);
        log.append(msg(8));
        assert!(log.read_after(6, &mut out, 10).is_err());
        assert_eq!(log.subscribe(Some(Resume { since: 6, epoch: Epoch(1) })).recovered, Some(false));
        assert_eq!(log.subscribe(Some(Resume { since: 7, epoch: Epoch(1) })).recovered, Some(true));
    }

    #[test]
    fn a_following_log_honours_a_resume_a_little_ahead_of_it() {
        // Another gateway already delivered up to 9; this one is at 6.
        let log = ChannelLog::new("t".into(), Epoch(3), 4).following();
        for s in 1..=6 {
            log.append(msg(s));
        }
        let sub = log.subscribe(Some(Resume { since: 9, epoch: Epoch(3) }));
        assert_eq!((sub.head, sub.recovered, sub.replay.len()), (6, Some(true), 0));
        // Further ahead than a ring's worth, or another epoch: not a position of this topic.
        assert_eq!(log.subscribe(Some(Resume { since: 11, epoch: Epoch(3) })).recovered, Some(false));
        assert_eq!(log.subscribe(Some(Resume { since: 9, epoch: Epoch(4) })).recovered, Some(false));
        // A log of its own (single node) never issued 9: refused, as before.
        let own = ChannelLog::new("t".into(), Epoch(3), 4);
        own.append(msg(1));
        assert_eq!(own.subscribe(Some(Resume { since: 3, epoch: Epoch(3) })).recovered, Some(false));
    }
}
