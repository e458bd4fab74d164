//! What became of each signal: the I/O-free tracker of open signals against live ticks.
//!
//! The rules (docs/outcomes.md):
//! - a routed `buy` or `sell` is open from routing; its entry is the `last` of the
//!   snapshot it was routed with, or of the first tick after it when it had none;
//! - the first tick of its (symbol, exchange) whose `last` is at or beyond the target
//!   closes it `target_hit`, at or beyond the stop `stop_hit` (beyond: above for a buy's
//!   target and a sell's stop, below for the others), at that tick's `last`;
//! - at `expires_at` it closes `expired` at the last known price (no exit and no return
//!   when no price was ever known);
//! - a routed `exit` closes the same source's open buys and sells on its symbol and
//!   exchange `closed` at the current `last`;
//! - `hold` and `exit` are informational: open until expiry, then `expired`, no return.
//!
//! The stage owns one [`Tracker`] and feeds it routed signals, applied ticks and the
//! clock; it turns each [`Close`] into a `SIGNAL_UPDATE` on the channels that carried the
//! signal. Nothing here does I/O or reads a clock, so every rule is tested by a script.
//!
//! Cost on the tick path: a tick of a symbol with no open signal is one map lookup; with
//! open signals, each direction's levels are kept sorted, so a tick looks at the nearest
//! level on each side and pays only for the levels it crosses (O(crossed · log n)), never
//! for the signals it leaves open.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use crate::hash::FastHash;
use crate::model::{Category, Exchange, Price, SignalType, Symbol, UnixNanos};

pub mod handover;

/// What a signal became, as carried by its `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Open,
    TargetHit,
    StopHit,
    Expired,
    Closed,
}

impl Status {
    pub const ALL: [Self; 5] = [Self::Open, Self::TargetHit, Self::StopHit, Self::Expired, Self::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::TargetHit => "target_hit",
            Self::StopHit => "stop_hit",
            Self::Expired => "expired",
            Self::Closed => "closed",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
    }
}

/// A routed signal as the tracker keeps it until it closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub id: uuid::Uuid,
    pub source_id: uuid::Uuid,
    pub symbol: Symbol,
    pub exchange: Exchange,
    pub category: Category,
    pub signal_type: SignalType,
    pub target: Price,
    pub stop: Price,
    pub expires_at: UnixNanos,
    /// The `last` of the snapshot it was routed with (`None`: no tick was known).
    pub entry: Option<Price>,
    /// The tiers whose channels carried it (bit `tier.index()`).
    pub tiers: u8,
    /// Its `SIGNAL_UPDATE` data as routed: a close is this with its new status.
    pub data: Box<[u8]>,
}

impl Tracked {
    /// Signal `s` as routed into the channels of `tiers`, with `data` (its SIGNAL_UPDATE
    /// data) and `entry` (its snapshot's `last`, if any).
    pub fn new(s: &crate::model::Signal, entry: Option<Price>, tiers: u8, data: &[u8]) -> Self {
        Self {
            id: s.id,
            source_id: s.source_id,
            symbol: s.symbol,
            exchange: s.exchange,
            category: s.category,
            signal_type: s.signal_type,
            target: s.target_price,
            stop: s.stop_loss,
            expires_at: s.expires_at,
            entry,
            tiers,
            data: data.into(),
        }
    }
}

/// A signal's close: what the stage publishes and stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub signal: Tracked,
    pub status: Status,
    pub entry: Option<Price>,
    pub exit: Option<Price>,
    /// Ten-thousandths of a percent (4 decimals), signed.
    pub return_pct: Option<i64>,
    pub closed_at: UnixNanos,
}

/// The return of a position from `entry` to `exit`, in ten-thousandths of a percent,
/// rounded half away from zero: (exit − entry) / entry × 100 for a buy, (entry − exit) /
/// entry × 100 for a sell; `None` for the informational types or an unknown price.
pub fn return_pct(signal_type: SignalType, entry: Option<Price>, exit: Option<Price>) -> Option<i64> {
    let (entry, exit) = (i128::from(entry?.raw()), i128::from(exit?.raw()));
    if entry <= 0 {
        return None;
    }
    let gain = match signal_type {
        SignalType::Buy => exit - entry,
        SignalType::Sell => entry - exit,
        _ => return None,
    };
    // × 100 for percent, × 10,000 for four decimals.
    let scaled = gain * 1_000_000;
    let q = scaled / entry;
    let r = scaled % entry;
    let q = if 2 * r.abs() >= entry { q + scaled.signum() } else { q };
    // Within what a 4-decimal field holds (as a price), or unknown: the same on the
    // socket and in both stores.
    i64::try_from(q).ok().filter(|q| q.abs() <= Price::MAX_RAW)
}

/// The tracker is full: the signal is routed and stored but its outcome is not tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} signals are open already, the most the outcome tracker keeps")]
pub struct AtCapacity(pub usize);

/// One open signal in its slot; `generation` tells a live expiry entry from a stale one.
#[derive(Debug)]
struct Slot {
    signal: Tracked,
    entry: Option<Price>,
    generation: u32,
}

/// The open signals of one (symbol, exchange).
#[derive(Debug, Default)]
struct Book {
    /// The last price known: the newest tick's `last`, or a routed snapshot's.
    last: Option<Price>,
    /// Levels that close when `last` rises to them (a buy's target, a sell's stop), and
    /// those that close when it falls to them (a buy's stop, a sell's target).
    up: BTreeSet<(i64, u32)>,
    down: BTreeSet<(i64, u32)>,
    /// Buys and sells still waiting for their entry (routed with no snapshot), with
    /// their slot's generation: one closed meanwhile (its slot empty or reused) is
    /// passed over, so a close never searches this list.
    pending: Vec<(u32, u32)>,
    /// Open buys and sells by source, for a source's `exit`.
    positions: BTreeSet<(uuid::Uuid, u32)>,
    /// Every open signal of the book (informational ones too).
    count: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    books: HashMap<(Symbol, Exchange), Book, FastHash>,
    expiry: BinaryHeap<Reverse<(i64, u32, u32)>>,
    generation: u32,
    open: usize,
    max_open: usize,
    /// The slot of each open signal, by id (a signal is tracked once, and another node's
    /// close of it reaches it here in scale-out).
    ids: HashMap<u128, u32, FastHash>,
}

impl Tracker {
    /// A tracker that keeps at most `max_open` open signals.
    pub fn new(max_open: usize) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            books: HashMap::default(),
            expiry: BinaryHeap::new(),
            generation: 0,
            open: 0,
            max_open,
            ids: HashMap::default(),
        }
    }

    /// Open signals.
    pub fn len(&self) -> usize {
        self.open
    }

    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Is signal `id` open here?
    pub fn contains(&self, id: uuid::Uuid) -> bool {
        self.ids.contains_key(&id.as_u128())
    }

    /// Stops tracking signal `id` without a close (another node closed it). True if it
    /// was open here.
    pub fn forget(&mut self, id: uuid::Uuid) -> bool {
        self.ids.get(&id.as_u128()).copied().and_then(|key| self.unlink(key)).is_some()
    }

    /// The most open signals it keeps.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// Starts tracking a routed signal (routed at `now`). What expired by `now` closes
    /// first; an `exit` then closes its source's open positions on the same symbol and
    /// exchange (into `out`); then it is tracked itself, as every type is, until it
    /// closes.
    pub fn open(&mut self, signal: Tracked, now: UnixNanos, out: &mut Vec<Close>) -> Result<(), AtCapacity> {
        self.expire(now, out);
        if signal.signal_type == SignalType::Exit {
            self.exit(signal.source_id, &signal.symbol, &signal.exchange, now, out);
        }
        self.insert(signal)
    }

    /// Tracks again a signal that was open when the node stopped (read back from the
    /// store, oldest first): no `exit` is applied again, and nothing closes here (what
    /// expired meanwhile closes at the stage's next pass).
    pub fn reopen(&mut self, signal: Tracked) -> Result<(), AtCapacity> {
        self.insert(signal)
    }

    fn insert(&mut self, signal: Tracked) -> Result<(), AtCapacity> {
        if let Some(&k) = self.ids.get(&signal.id.as_u128()) {
            // Tracked already: once is enough. A copy may come from another tier's topic
            // (a scale-out node reads them side by side), and the close goes to every
            // tier that carried the signal.
            if let Some(slot) = self.slots[k as usize].as_mut() {
                slot.signal.tiers |= signal.tiers;
            }
            return Ok(());
        }
        if self.open >= self.max_open {
            return Err(AtCapacity(self.max_open));
        }
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let book = self.books.entry((signal.symbol, signal.exchange)).or_default();
        // A routed snapshot is the symbol's price as of the routing (reopened signals come
        // oldest first, so the newest snapshot is the last word).
        if let Some(entry) = signal.entry {
            book.last = Some(entry);
        }
        book.count += 1;
        let position = matches!(signal.signal_type, SignalType::Buy | SignalType::Sell);
        let pending = position && signal.entry.is_none();
        if position {
            book.positions.insert((signal.source_id, key));
            if signal.entry.is_some() {
                levels(book, &signal, key, true);
            }
        }
        self.expiry.push(Reverse((signal.expires_at.0, key, generation)));
        self.ids.insert(signal.id.as_u128(), key);
        self.slots[key as usize] = Some(Slot { entry: signal.entry, signal, generation });
        if pending && let Some(s) = self.slots[key as usize].as_ref() {
            let book_key = (s.signal.symbol, s.signal.exchange);
            if let Some(book) = self.books.get_mut(&book_key) {
                book.pending.push((key, generation));
                // Entries closed before any tick leave stale pairs: kept within twice
                // the book's open signals.
                if book.pending.len() > 2 * book.count + 16 {
                    let slots = &self.slots;
                    book.pending.retain(|&(k, g)| {
                        slots[k as usize].as_ref().is_some_and(|s| s.generation == g && s.entry.is_none())
                    });
                }
            }
        }
        self.open += 1;
        self.compact_expiry();
        Ok(())
    }

    /// A tick applied to the tick book (at `at`, the engine's time): fills the entries
    /// that waited for it, then closes every open signal of its symbol whose target or
    /// stop it reached.
    pub fn on_tick(
        &mut self,
        symbol: &Symbol,
        exchange: &Exchange,
        last: Price,
        at: UnixNanos,
        out: &mut Vec<Close>,
    ) {
        // What expired by now closes as expired, not as hit by a later tick.
        self.expire(at, out);
        let Some(book) = self.books.get_mut(&(*symbol, *exchange)) else { return };
        book.last = Some(last);
        for (key, generation) in std::mem::take(&mut book.pending) {
            if let Some(slot) = self.slots[key as usize].as_mut()
                && slot.generation == generation
                && slot.entry.is_none()
            {
                slot.entry = Some(last);
                levels(book, &slot.signal, key, true);
            }
        }
        let l = last.raw();
        let mut hits: Vec<(u32, bool)> = Vec::new();
        while let Some(&(level, key)) = book.up.first()
            && level <= l
        {
            book.up.pop_first();
            hits.push((key, true));
        }
        while let Some(&(level, key)) = book.down.last()
            && level >= l
        {
            book.down.pop_last();
            hits.push((key, false));
        }
        for (key, up) in hits {
            let Some(slot) = self.slots[key as usize].as_ref() else { continue };
            // A buy's target and a sell's stop are above; a buy's stop and a sell's
            // target below.
            let status = match (slot.signal.signal_type, up) {
                (SignalType::Buy, true) | (SignalType::Sell, false) => Status::TargetHit,
                _ => Status::StopHit,
            };
            self.close(key, status, Some(last), at, out);
        }
    }

    /// Closes every signal whose `expires_at` is at or before `now` (`closed_at` is its
    /// `expires_at`).
    pub fn expire(&mut self, now: UnixNanos, out: &mut Vec<Close>) {
        while let Some(&Reverse((at, key, generation))) = self.expiry.peek()
            && at <= now.0
        {
            self.expiry.pop();
            let live = self.slots[key as usize].as_ref().is_some_and(|s| s.generation == generation);
            if !live {
                continue;
            }
            let last = self.slots[key as usize]
                .as_ref()
                .and_then(|s| self.books.get(&(s.signal.symbol, s.signal.exchange)))
                .and_then(|b| b.last);
            // Closed at its expiry, however late the stage's clock noticed it.
            self.close(key, Status::Expired, last, UnixNanos(at), out);
        }
    }

    /// Takes every open signal of the books `keys` out of tracking (their partition
    /// moved to another node), oldest first, each with the entry it has now (one filled
    /// by a tick after routing included).
    pub(crate) fn take_books(
        &mut self,
        keys: &std::collections::HashSet<handover::Key, FastHash>,
    ) -> Vec<Tracked> {
        let mut taken: Vec<(u32, Tracked)> = Vec::new();
        if keys.is_empty() {
            return Vec::new();
        }
        for (k, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| keys.contains(&(s.signal.symbol, s.signal.exchange)))
                && let Some(s) = slot.take()
            {
                self.free.push(k as u32);
                self.open -= 1;
                self.ids.remove(&s.signal.id.as_u128());
                let mut t = s.signal;
                t.entry = s.entry;
                taken.push((s.generation, t));
            }
        }
        for key in keys {
            self.books.remove(key);
        }
        // Their expiry entries are stale now (empty or reused slots): passed over.
        taken.sort_by_key(|(generation, _)| *generation);
        taken.into_iter().map(|(_, t)| t).collect()
    }

    /// When the next open signal expires.
    pub fn next_expiry(&self) -> Option<UnixNanos> {
        // Stale entries (signals closed before expiry) only make the stage wake early.
        self.expiry.peek().map(|Reverse((at, _, _))| UnixNanos(*at))
    }

    /// A routed `exit` of `source`: its open buys and sells on the symbol close at the
    /// current `last`.
    fn exit(
        &mut self,
        source: uuid::Uuid,
        symbol: &Symbol,
        exchange: &Exchange,
        now: UnixNanos,
        out: &mut Vec<Close>,
    ) {
        let Some(book) = self.books.get(&(*symbol, *exchange)) else { return };
        let last = book.last;
        let keys: Vec<u32> =
            book.positions.range((source, 0)..=(source, u32::MAX)).map(|&(_, k)| k).collect();
        for key in keys {
            self.close(key, Status::Closed, last, now, out);
        }
    }

    /// Removes `key` and reports its close with `exit` (informational types and unknown
    /// entries get neither exit nor return).
    fn close(&mut self, key: u32, status: Status, exit: Option<Price>, at: UnixNanos, out: &mut Vec<Close>) {
        let Some(slot) = self.unlink(key) else { return };
        let s = &slot.signal;
        let position = matches!(s.signal_type, SignalType::Buy | SignalType::Sell);
        let exit = if position && slot.entry.is_some() { exit } else { None };
        out.push(Close {
            return_pct: return_pct(s.signal_type, slot.entry, exit),
            entry: slot.entry,
            exit,
            status,
            closed_at: at,
            signal: slot.signal,
        });
    }

    /// Takes `key` out of its slot, its book and the id index (its expiry entry goes
    /// stale and is passed over).
    fn unlink(&mut self, key: u32) -> Option<Slot> {
        let slot = self.slots[key as usize].take()?;
        self.free.push(key);
        self.open -= 1;
        self.ids.remove(&slot.signal.id.as_u128());
        let s = &slot.signal;
        let book_key = (s.symbol, s.exchange);
        if let Some(book) = self.books.get_mut(&book_key) {
            if matches!(s.signal_type, SignalType::Buy | SignalType::Sell) {
                levels(book, s, key, false);
                book.positions.remove(&(s.source_id, key));
            }
            book.count -= 1;
            if book.count == 0 {
                self.books.remove(&book_key);
            }
        }
        Some(slot)
    }

    /// Rebuilds the expiry heap from the open signals when closes before expiry have
    /// left it more than twice their number (its bound).
    fn compact_expiry(&mut self) {
        if self.expiry.len() <= 2 * self.open + 1_024 {
            return;
        }
        self.expiry = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.as_ref().map(|s| Reverse((s.signal.expires_at.0, k as u32, s.generation))))
            .collect();
    }
}

/// Puts (`add`) or takes out a position's target and stop levels.
fn levels(book: &mut Book, s: &Tracked, key: u32, add: bool) {
    let (up, down) = match s.signal_type {
        SignalType::Buy => (s.target, s.stop),
        SignalType::Sell => (s.stop, s.target),
        _ => return,
    };
    if add {
        book.up.insert((up.raw(), key));
        book.down.insert((down.raw(), key));
    } else {
        book.up.remove(&(up.raw(), key));
        book.down.remove(&(down.raw(), key));
    }
}

#[cfg(test)]
mod tests;
