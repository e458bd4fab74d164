//! Daily signal quotas, per user across all their connections.
//!
//! A quota charges each message once per user and UTC day, whichever connection, shard
//! or replay it reaches the user through — and charges every message the user never had
//! before, replays included. So each user keeps the exact set of messages charged today
//! (not a high-water mark: "everything up to the highest seq charged is free" let a user
//! replay the whole ring uncharged with `since`). The set holds at most `limit` seqs (a
//! message past the limit is refused, not charged): 8 bytes per charged message (up to
//! twice that while a vector grows), so at most 160 B (320 B) for the default free tier
//! (20 a day), 1.6 KiB (3.2 KiB) for basic (200) and 16 KiB (32 KiB) for premium (2,000);
//! users without a limit never touch it. Yesterday's sets are freed on the user's first
//! delivery of a new day, or with the user's entry (`QuotaBook::user`).
//!
//! On a node with a signal store, every new charge is also kept for the store (in the
//! user's own entry, under the lock the charge takes anyway), the server writes what is
//! waiting each second ([`QuotaBook::journaled`]), and the day's charges are read back at
//! start ([`QuotaBook::restore`]): a crash leaves at most a second of deliveries
//! uncounted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Logs a quota spans (the live log and the delayed view of each tier).
const LOGS: usize = 8;

/// Today's count for one user (UTC days).
#[derive(Debug, Default)]
pub struct UserQuota {
    /// One lock per user: contended only by the same user's connections on two shards
    /// at the same instant.
    day: Mutex<Day>,
    /// Per log, the last message charged and its day ([`newest`]): the user's other
    /// connections find a live message charged without taking the lock, which the
    /// user's connections on two shards would otherwise pass back and forth on every
    /// delivery.
    newest: [AtomicU64; LOGS],
    id: Arc<str>,
    journal: Option<Arc<Journal>>,
}

/// A (day, seq) pair in one word, when the seq fits in 40 bits (a trillion messages;
/// past that the lock answers alone).
fn newest(day: u32, seq: u64) -> Option<u64> {
    (seq < 1 << 40 && day < 1 << 24).then(|| (u64::from(day) << 40) | seq)
}

/// The users with charges waiting for the store. A user is put here by the charge that
/// finds its waiting list empty, so the shards touch this shared lock about once per
/// user per second (the writer's turn), not once per delivery (measured:
/// `cargo bench -p signalcast-gateway --bench quota`, docs/PERFORMANCE.md).
#[derive(Debug, Default)]
pub struct Journal {
    users: Mutex<Vec<Arc<UserQuota>>>,
    lost: AtomicU64,
}

/// One journaled charge: (UTC day, user, log, seq).
pub type Charged = (u32, Arc<str>, u8, u64);

/// Charges one user keeps waiting for the store at most (16 bytes each). Past it new
/// ones are not journaled (counted), so a store that cannot keep up costs memory only
/// up to the bound; the limits of the tier table stay far below it.
pub const PENDING_MAX: usize = 65_536;

impl Journal {
    /// Charges never journaled because a user's waiting list was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Day {
    day: u32,
    notified: bool,
    /// Seqs charged today, per log, sorted (live deliveries append at the end).
    charged: [Vec<u64>; LOGS],
    used: u32,
    /// Charges not yet written to the store, (day, log, seq): kept across a new day, so
    /// that the last second of yesterday still reaches the store.
    pending: Vec<(u32, u8, u64)>,
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
    fn today(&self, day: u32) -> MutexGuard<'_, Day> {
        let mut d = self.day.lock().unwrap_or_else(PoisonError::into_inner);
        if d.day != day {
            // A new UTC day: start over, and give yesterday's memory back.
            let pending = std::mem::take(&mut d.pending);
            *d = Day { day, pending, ..Day::default() };
        }
        d
    }

    /// Counts the delivery of `seq` from log `log` against `limit` on `day`.
    pub fn take(self: &Arc<Self>, log: usize, seq: u64, limit: u32, day: u32) -> Take {
        let key = newest(day, seq);
        // Relaxed: a match only says this seq is in the day's set, which never shrinks
        // within the day; a miss goes to the lock.
        if key.is_some() && self.newest.get(log).map(|n| n.load(Ordering::Relaxed)) == key {
            return Take::Deliver;
        }
        let mut d = self.today(day);
        let Day { charged, used, notified, .. } = &mut *d;
        let Some(charged) = charged.get_mut(log) else { return Take::Exhausted { notify: false } };
        // Live deliveries come in seq order: check the end before searching.
        let pos = match charged.last() {
            Some(&last) if last < seq => charged.len(),
            None => 0,
            Some(_) => match charged.binary_search(&seq) {
                Ok(_) => return Take::Deliver, // charged already (another connection, a replay)
                Err(pos) => pos,
            },
        };
        // Exhausted: refused on every connection of the user, not only the first to
        // see the message.
        if *used >= limit {
            return Take::Exhausted { notify: !std::mem::replace(notified, true) };
        }
        charged.insert(pos, seq);
        *used += 1;
        if pos + 1 == charged.len()
            && let (Some(key), Some(n)) = (key, self.newest.get(log))
        {
            n.store(key, Ordering::Relaxed);
        }
        if let Some(j) = &self.journal {
            let first = d.pending.is_empty();
            if d.pending.len() >= PENDING_MAX {
                j.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                d.pending.push((day, log as u8, seq));
            }
            drop(d);
            if first {
                j.users.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(self));
            }
        }
        Take::Deliver
    }

    /// Puts back a charge read from the store (no journal, no limit).
    fn preload(&self, log: usize, seq: u64, day: u32) {
        let mut d = self.today(day);
        let Day { charged, used, .. } = &mut *d;
        let Some(charged) = charged.get_mut(log) else { return };
        if let Err(pos) = charged.binary_search(&seq) {
            charged.insert(pos, seq);
            *used += 1;
        }
    }

    /// Today's deliveries have reached `limit` (nothing more would be delivered today).
    pub fn exhausted(&self, limit: u32, day: u32) -> bool {
        self.today(day).used >= limit
    }

    pub fn used(&self, day: u32) -> u32 {
        self.today(day).used
    }

    /// Memory this user's charged set holds (bytes of seqs).
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        let d = self.day.lock().unwrap_or_else(PoisonError::into_inner);
        d.charged.iter().map(|c| c.capacity() * std::mem::size_of::<u64>()).sum()
    }
}

/// Quotas by user id. An entry lives while a connection of the user holds it or its
/// day is today (a reconnect must not reset a quota); stale ones are dropped when a
/// new day's first connection comes in.
#[derive(Debug, Default)]
pub struct QuotaBook {
    users: Mutex<Users>,
    journal: std::sync::OnceLock<Arc<Journal>>,
}

#[derive(Debug, Default)]
struct Users {
    by_id: HashMap<String, Arc<UserQuota>>,
    swept: u32,
}

impl QuotaBook {
    /// The quota of user `id`, on `day` (UTC days since the epoch).
    pub fn user(&self, id: &str, day: u32) -> Arc<UserQuota> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.swept != day {
            users.swept = day;
            // Nobody connected holds it and its day is over: it would start over anyway.
            users.by_id.retain(|_, q| {
                Arc::strong_count(q) > 1 || q.day.lock().unwrap_or_else(PoisonError::into_inner).day == day
            });
        }
        if let Some(q) = users.by_id.get(id) {
            return Arc::clone(q);
        }
        let q = Arc::new(UserQuota {
            id: Arc::from(id),
            journal: self.journal.get().cloned(),
            ..UserQuota::default()
        });
        users.by_id.insert(id.to_owned(), Arc::clone(&q));
        q
    }

    /// Journals every new charge from now on (for users whose entry is made after this:
    /// call it before the first connection).
    pub fn journal(&self) -> Arc<Journal> {
        Arc::clone(self.journal.get_or_init(|| Arc::new(Journal::default())))
    }

    /// Takes every charge waiting for the store (none unless [`journal`](Self::journal)
    /// was called).
    pub fn journaled(&self) -> Vec<Charged> {
        let Some(j) = self.journal.get() else { return Vec::new() };
        let users = std::mem::take(&mut *j.users.lock().unwrap_or_else(PoisonError::into_inner));
        let mut out = Vec::new();
        for u in users {
            let pending = std::mem::take(&mut u.day.lock().unwrap_or_else(PoisonError::into_inner).pending);
            out.extend(pending.into_iter().map(|(day, log, seq)| (day, Arc::clone(&u.id), log, seq)));
        }
        out
    }

    /// Puts back the charges of `day` read from the store.
    pub fn restore(&self, day: u32, charges: impl IntoIterator<Item = (String, u8, u64)>) {
        for (user, log, seq) in charges {
            self.user(&user, day).preload(usize::from(log), seq, day);
        }
    }

    /// Users with an entry.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(PoisonError::into_inner).by_id.len()
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
        let q = Arc::new(UserQuota::default());
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
        assert_eq!(q.used(100), 2);
        assert!(q.exhausted(2, 100));
        assert!(!q.exhausted(2, 101), "spent yesterday is not spent today");
        assert!(!q.exhausted(3, 101));
        assert_eq!(q.take(0, 5, 2, 101), Take::Deliver, "a new day");
    }

    #[test]
    fn a_replay_below_the_highest_charged_seq_is_charged_unless_it_was_charged() {
        let q = Arc::new(UserQuota::default());
        // Live from seq 10 on; then a resume from 0 replays 1..=12.
        assert_eq!(q.take(0, 10, 5, 7), Take::Deliver);
        assert_eq!(q.take(0, 12, 5, 7), Take::Deliver);
        let replay: Vec<Take> = (1..=12).map(|seq| q.take(0, seq, 5, 7)).collect();
        let delivered: Vec<u64> =
            (1..=12).zip(&replay).filter(|(_, t)| **t == Take::Deliver).map(|(s, _)| s).collect();
        assert_eq!(delivered, [1, 2, 3, 10, 12], "three never-charged ones fill the quota of 5");
        assert_eq!(q.used(7), 5);
        // The same seq of another log is another message.
        assert_eq!(q.take(1, 1, 5, 7), Take::Exhausted { notify: false });
        let held = q.held_bytes();
        assert!(
            (5 * 8..=2 * 5 * 8).contains(&held),
            "8 B per charged message, at most twice while growing: {held}"
        );
    }

    #[test]
    fn every_new_charge_reaches_the_journal_once_whichever_thread_made_it() {
        let book = QuotaBook::default();
        let journal = book.journal();
        let users: Vec<Arc<UserQuota>> = (0..50).map(|k| book.user(&format!("u{k}"), 7)).collect();
        // Two shards deliver seqs 1..=200 to every user (each user also on both shards:
        // the second charge of a message is no new charge), the writer taking meanwhile.
        let mut got: Vec<Charged> = Vec::new();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for seq in 1..=200 {
                        for u in &users {
                            assert_eq!(u.take(3, seq, 1_000, 7), Take::Deliver);
                        }
                    }
                });
            }
            for _ in 0..20 {
                got.extend(book.journaled());
                std::thread::yield_now();
            }
        });
        got.extend(book.journaled());
        assert!(book.journaled().is_empty(), "nothing is journaled twice");
        let mut keys: Vec<(String, u64)> = got
            .iter()
            .map(|(day, user, log, seq)| {
                assert_eq!((*day, *log), (7, 3));
                (user.to_string(), *seq)
            })
            .collect();
        keys.sort();
        let mut want: Vec<(String, u64)> =
            (0..50).flat_map(|k| (1..=200).map(move |seq| (format!("u{k}"), seq))).collect();
        want.sort();
        assert_eq!(keys, want, "each (user, message) charge exactly once");
        assert_eq!(journal.lost(), 0);
    }

    #[test]
    fn a_full_waiting_list_counts_what_it_drops_and_a_new_day_keeps_what_waits() {
        let book = QuotaBook::default();
        let journal = book.journal();
        let u = book.user("u", 7);
        for seq in 1..=PENDING_MAX as u64 + 10 {
            u.take(0, seq, u32::MAX, 7);
        }
        assert_eq!(journal.lost(), 10, "past the bound charges are counted, not kept");
        assert_eq!(u.used(7), PENDING_MAX as u32 + 10, "the quota itself still counts them");
        assert_eq!(book.journaled().len(), PENDING_MAX);
        // Yesterday's last charges wait through midnight and still reach the store.
        let v = book.user("v", 7);
        v.take(0, 1, 5, 7);
        v.take(0, 2, 5, 7);
        v.take(0, 3, 5, 8);
        let got: Vec<(u32, u64)> = book.journaled().into_iter().map(|(day, _, _, seq)| (day, seq)).collect();
        assert_eq!(got, [(7, 1), (7, 2), (8, 3)]);
        assert_eq!(v.used(8), 1, "the new day starts over");
    }

    #[test]
    fn stale_users_are_forgotten_on_a_new_day_and_held_ones_kept() {
        let book = QuotaBook::default();
        let held = book.user("held", 100);
        assert_eq!(held.take(0, 1, 5, 100), Take::Deliver);
        book.user("gone", 100).take(0, 1, 5, 100);
        assert_eq!(book.len(), 2);
        let _ = book.user("new", 101);
        assert_eq!(book.len(), 2, "'gone' dropped: nobody holds it and its day is over");
        assert!(Arc::ptr_eq(&held, &book.user("held", 101)), "a connected user keeps its entry");
    }
}
