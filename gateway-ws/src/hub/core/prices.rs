//! `prices_general` on one shard: watchlists and rates.
//!
//! A subscriber watches every symbol (where its tier allows) or a list of symbols, at one
//! of a few fixed rates ([`RATES`], updates per second per symbol). Each price frame is
//! made once per (symbol, rate) that has subscribers, never per recipient; it carries
//! `conflated`, the number of the symbol's updates it stands for at that rate. A
//! subscriber's pending prices are one bit per symbol in its outbox: a slow socket gets
//! the latest frame of its rate, whatever came before.
//!
//! Watchlists are indexed by symbol id, per rate, so a price turn costs the symbols that
//! changed times their watchers, not the subscribers times their lists. A symbol seen
//! for the first time is put on the watchlists that name it then (rare).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::model::{Exchange, Symbol, Tick};
use engine::ticks::TickBook;

use super::ConnId;
use crate::protocol::filter::Filter;

pub use crate::protocol::{PRICE_RATES as RATES, price_rate_index as rate_index};

/// One subscriber's subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceSub {
    /// Index in [`RATES`].
    pub rate: usize,
    /// `None`: every symbol.
    pub watch: Option<Arc<Filter>>,
}

impl PriceSub {
    pub(super) fn watches(&self, symbol: &Symbol, exchange: &Exchange) -> bool {
        self.watch.as_ref().is_none_or(|f| f.watches(symbol, exchange))
    }
}

/// Frames and watchers of one rate.
#[derive(Debug, Default)]
struct Rate {
    /// By symbol id: the latest frame at this rate, the tick version it carries, and
    /// when the next may be made.
    frames: Vec<Option<Arc<[u8]>>>,
    sent: Vec<u64>,
    next: Vec<Option<Instant>>,
    /// By symbol id: who watches it at this rate (watchlists).
    watch: Vec<Vec<ConnId>>,
    /// Who watches every symbol at this rate.
    all: Vec<ConnId>,
    /// Subscribers with a watchlist, for symbols seen later.
    lists: Vec<(ConnId, Arc<Filter>)>,
}

impl Rate {
    fn subscribers(&self) -> usize {
        self.all.len() + self.lists.len()
    }

    fn grow(&mut self, n: usize) {
        if self.frames.len() < n {
            self.frames.resize(n, None);
            self.sent.resize(n, 0);
            self.next.resize(n, None);
            self.watch.resize_with(n, Vec::new);
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Prices {
    rates: [Rate; RATES.len()],
    /// By symbol id: its key, once seen.
    names: Vec<Option<(Symbol, Exchange)>>,
    /// The symbol ids each watchlist subscriber is on (so that leaving costs its list).
    on: std::collections::HashMap<ConnId, Vec<u32>>,
    /// The first turn: each rate's periods are counted from it.
    start: Option<Instant>,
}

impl Prices {
    pub fn is_empty(&self) -> bool {
        self.rates.iter().all(|r| r.subscribers() == 0)
    }

    /// The symbols' keys by id, as seen so far.
    pub fn names(&self) -> &[Option<(Symbol, Exchange)>] {
        &self.names
    }

    /// The frames of `rate` by symbol id (what an outbox's pending bits point at).
    pub fn frames(&self, rate: usize) -> &[Option<Arc<[u8]>>] {
        self.rates.get(rate).map_or(&[], |r| &r.frames)
    }

    /// Registers `i`; returns the symbol ids whose latest frame it gets first.
    pub fn add(&mut self, i: ConnId, sub: &PriceSub) -> Vec<u32> {
        let n = self.names.len();
        let rate = &mut self.rates[sub.rate];
        rate.grow(n);
        let mut first = Vec::new();
        for (k, name) in self.names.iter().enumerate() {
            if let Some((symbol, exchange)) = name
                && sub.watches(symbol, exchange)
            {
                if sub.watch.is_some() {
                    rate.watch[k].push(i);
                    self.on.entry(i).or_default().push(k as u32);
                }
                first.push(k as u32);
            }
        }
        match &sub.watch {
            Some(f) => rate.lists.push((i, Arc::clone(f))),
            None => rate.all.push(i),
        }
        first
    }

    /// Unregisters `i` (subscribed with `sub`).
    pub fn remove(&mut self, i: ConnId, sub: &PriceSub) {
        let rate = &mut self.rates[sub.rate];
        match &sub.watch {
            None => rate.all.retain(|c| *c != i),
            Some(_) => {
                rate.lists.retain(|(c, _)| *c != i);
                for k in self.on.remove(&i).unwrap_or_default() {
                    if let Some(watchers) = rate.watch.get_mut(k as usize) {
                        watchers.retain(|c| *c != i);
                    }
                }
            }
        }
    }

    /// A price turn: for every rate with subscribers, a new frame for each symbol that
    /// changed since its last frame there and is due; calls `push(conn, symbol)` for each
    /// of its watchers.
    pub fn turn(
        &mut self,
        ticks: &TickBook,
        now: Instant,
        interval: Duration,
        mut push: impl FnMut(ConnId, u32),
    ) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start).as_nanos();
        for (sym, tick, version) in ticks.iter() {
            let k = sym.0 as usize;
            self.learn(k, &tick);
            for (r, rate) in self.rates.iter_mut().enumerate() {
                if rate.subscribers() == 0 {
                    continue;
                }
                rate.grow(k + 1);
                // Nobody at this rate watches it: no frame (a newcomer's first turn makes it).
                let watched = !rate.all.is_empty() || !rate.watch[k].is_empty();
                if !watched || version <= rate.sent[k] || rate.next[k].is_some_and(|at| now < at) {
                    continue;
                }
                // One update per period at this rate, on periods counted from the first
                // turn for every symbol alike: a subscriber's symbols fall due in the
                // same turn, so their frames leave in one write, not one each. The next
                // is due at the first period boundary at least half a period from now
                // (so two updates of a symbol are never closer than that, however its
                // ticks fall), and half a turn early still counts (turns are not exactly
                // on time).
                let period = (Duration::from_secs(1) / RATES[r]).as_nanos();
                let slot = (elapsed + period / 2).div_ceil(period);
                let next = u64::try_from(slot * period).unwrap_or(u64::MAX);
                rate.next[k] = Some(
                    start
                        .checked_add(Duration::from_nanos(next).saturating_sub(interval / 2))
                        .unwrap_or(now + Duration::from_secs(3_600)),
                );
                let conflated = if rate.sent[k] == 0 { 1 } else { version - rate.sent[k] };
                rate.sent[k] = version;
                rate.frames[k] = Some(super::fanout::price_frame(&tick, conflated));
                for &i in rate.watch[k].iter().chain(&rate.all) {
                    push(i, sym.0);
                }
            }
        }
    }

    /// A symbol seen for the first time joins the watchlists that name it.
    fn learn(&mut self, k: usize, tick: &Tick) {
        if self.names.len() <= k {
            self.names.resize(k + 1, None);
        }
        if self.names[k].is_some() {
            return;
        }
        self.names[k] = Some((tick.symbol, tick.exchange));
        for rate in &mut self.rates {
            if rate.lists.is_empty() {
                continue;
            }
            rate.grow(k + 1);
            for (i, f) in &rate.lists {
                if f.watches(&tick.symbol, &tick.exchange) {
                    rate.watch[k].push(*i);
                    self.on.entry(*i).or_default().push(k as u32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asked_rate_goes_down_to_the_nearest_fixed_one() {
        assert_eq!(RATES[rate_index(0.2)], 1);
        assert_eq!(RATES[rate_index(1.0)], 1);
        assert_eq!(RATES[rate_index(7.0)], 5);
        assert_eq!(RATES[rate_index(50.0)], 50);
        assert_eq!(RATES[rate_index(1e9)], 50);
    }
}
