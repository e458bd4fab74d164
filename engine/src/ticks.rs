//! The tick book: the latest market tick of every (symbol, exchange).
//!
//! One writer (the pipeline stage, which sees ticks and signals in the order producers
//! sent them) and any number of readers. Each symbol gets a fixed slot on first sight;
//! a slot is a seqlock over plain atomics, so a reader never takes a lock, never blocks
//! the writer, and there is no `unsafe` (the pattern of Boehm, "Can seqlocks get along
//! with programming language memory models?", 2012). The slot table is allocated once
//! with `max_symbols` entries: the book is bounded, and a tick for a new symbol past that
//! bound is refused and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};

use crate::hash::FastHash;
use crate::model::{Exchange, Price, Symbol, Tick, UnixNanos};

/// Index of a symbol's slot in the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SymbolId(pub u32);

/// The shared, lock-free-readable side of the book.
#[derive(Debug)]
pub struct TickBook {
    slots: Box<[Slot]>,
    /// Slots `0..len` have their key set and at least one tick written.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Slot {
    key: OnceLock<(Symbol, Exchange)>,
    /// Odd while a write is in progress; `seq / 2` is the number of updates so far.
    seq: AtomicU64,
    bid: AtomicI64,
    ask: AtomicI64,
    last: AtomicI64,
    volume: AtomicU64,
    ts: AtomicI64,
}

/// What a tick update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickUpdate {
    Applied(SymbolId),
    /// Older than the tick already held for the symbol; ignored.
    Stale(SymbolId),
    /// A new symbol, and every slot is taken.
    BookFull,
}

impl TickBook {
    fn with_capacity(max_symbols: usize) -> Self {
        Self { slots: (0..max_symbols).map(|_| Slot::default()).collect(), len: AtomicUsize::new(0) }
    }

    /// The book and its one writer.
    pub fn new(max_symbols: usize) -> (Arc<Self>, TickWriter) {
        let book = Arc::new(Self::with_capacity(max_symbols));
        let writer = TickWriter { book: Arc::clone(&book), index: HashMap::default() };
        (book, writer)
    }

    /// Number of symbols with a tick.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The latest tick of slot `id`, and its version (it grows with every update, so a
    /// reader can tell whether a symbol changed since it last looked).
    pub fn get(&self, id: SymbolId) -> Option<(Tick, u64)> {
        let i = id.0 as usize;
        if i >= self.len() {
            return None;
        }
        let slot = &self.slots[i];
        let (symbol, exchange) = *slot.key.get()?;
        let (v, version) = slot.read();
        Some((
            Tick {
                symbol,
                exchange,
                bid: price(v[0]),
                ask: price(v[1]),
                last: price(v[2]),
                volume: v[3] as u64,
                ts: UnixNanos(v[4]),
            },
            version,
        ))
    }

    /// Every symbol's latest tick (a snapshot per slot, not across slots).
    pub fn iter(&self) -> impl Iterator<Item = (SymbolId, Tick, u64)> + '_ {
        (0..self.len() as u32).filter_map(|i| {
            let id = SymbolId(i);
            self.get(id).map(|(t, v)| (id, t, v))
        })
    }
}

fn price(raw: i64) -> Price {
    // Only validated prices are ever stored.
    Price::from_raw(raw).unwrap_or_default()
}

impl Slot {
    fn write(&self, t: &Tick) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Readers that see any of the stores below also see the odd seq.
        fence(Ordering::Release);
        self.bid.store(t.bid.raw(), Ordering::Relaxed);
        self.ask.store(t.ask.raw(), Ordering::Relaxed);
        self.last.store(t.last.raw(), Ordering::Relaxed);
        self.volume.store(t.volume, Ordering::Relaxed);
        self.ts.store(t.ts.0, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    fn read(&self) -> ([i64; 5], u64) {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = [
                self.bid.load(Ordering::Relaxed),
                self.ask.load(Ordering::Relaxed),
                self.last.load(Ordering::Relaxed),
                self.volume.load(Ordering::Relaxed) as i64,
                self.ts.load(Ordering::Relaxed),
            ];
            // Orders the loads above before the re-check of seq.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return (v, s1 / 2);
            }
        }
    }
}

/// The single writer of a [`TickBook`]; owned by the pipeline stage.
#[derive(Debug)]
pub struct TickWriter {
    book: Arc<TickBook>,
    /// Only the writer assigns slots, so the directory needs no sharing at all.
    index: HashMap<(Symbol, Exchange), SymbolId, FastHash>,
}

impl TickWriter {
    pub fn book(&self) -> &Arc<TickBook> {
        &self.book
    }

    /// Stores `tick` as the symbol's latest unless it is older than the one held.
    pub fn update(&mut self, tick: &Tick) -> TickUpdate {
        let key = (tick.symbol, tick.exchange);
        let id = match self.index.get(&key) {
            Some(&id) => id,
            None => {
                let i = self.index.len();
                if i >= self.book.slots.len() {
                    return TickUpdate::BookFull;
                }
                let slot = &self.book.slots[i];
                // A fresh slot: nobody can read it before `len` moves past it.
                let _ = slot.key.set(key);
                slot.write(tick);
                self.book.len.store(i + 1, Ordering::Release);
                let id = SymbolId(i as u32);
                self.index.insert(key, id);
                return TickUpdate::Applied(id);
            }
        };
        let slot = &self.book.slots[id.0 as usize];
        if tick.ts.0 < slot.ts.load(Ordering::Relaxed) {
            return TickUpdate::Stale(id);
        }
        slot.write(tick);
        TickUpdate::Applied(id)
    }

    /// The latest tick of (symbol, exchange), if any was seen.
    pub fn latest(&self, symbol: &Symbol, exchange: &Exchange) -> Option<Tick> {
        let id = *self.index.get(&(*symbol, *exchange))?;
        self.book.get(id).map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(sym: &str, last: i64, ts: i64) -> Tick {
        Tick {
            symbol: Symbol::new(sym).unwrap(),
            exchange: Exchange::new("NSE").unwrap(),
            bid: Price::from_raw(last - 1).unwrap(),
            ask: Price::from_raw(last + 1).unwrap(),
            last: Price::from_raw(last).unwrap(),
            volume: 10,
            ts: UnixNanos(ts),
        }
    }

    #[test]
    fn latest_wins_stale_ignored_bound_held() {
        let (book, mut w) = TickBook::new(2);
        assert!(matches!(w.update(&tick("A", 100, 5)), TickUpdate::Applied(_)));
        assert!(matches!(w.update(&tick("A", 200, 6)), TickUpdate::Applied(_)));
        assert!(matches!(w.update(&tick("A", 300, 4)), TickUpdate::Stale(_)));
        assert_eq!(
            w.latest(&Symbol::new("A").unwrap(), &Exchange::new("NSE").unwrap()).unwrap().last.raw(),
            200
        );
        assert!(matches!(w.update(&tick("B", 1, 1)), TickUpdate::Applied(_)));
        assert_eq!(w.update(&tick("C", 1, 1)), TickUpdate::BookFull);
        assert_eq!(book.len(), 2);
        let (t, version) = book.get(SymbolId(0)).unwrap();
        assert_eq!((t.last.raw(), version), (200, 2));
    }

    #[test]
    fn readers_never_see_a_torn_tick() {
        // The writer keeps bid = last - 1 and ask = last + 1; a torn read would break that.
        let (book, mut w) = TickBook::new(1);
        w.update(&tick("A", 1_000, 0));
        let reader = {
            let book = Arc::clone(&book);
            std::thread::spawn(move || {
                for _ in 0..200_000 {
                    let (t, _) = book.get(SymbolId(0)).unwrap();
                    assert_eq!(t.bid.raw() + 1, t.last.raw());
                    assert_eq!(t.ask.raw() - 1, t.last.raw());
                    assert_eq!(t.ts.0, t.last.raw() - 1_000);
                }
            })
        };
        for i in 1..200_000 {
            w.update(&tick("A", 1_000 + i, i));
        }
        reader.join().unwrap();
    }
}
