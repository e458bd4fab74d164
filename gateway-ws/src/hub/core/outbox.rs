//! A connection's outbound queue: owned by the hub core, bounded, no I/O.
//!
//! Signal messages are reference-counted frames made once by the engine; queueing one
//! is a pointer push and a count increment. Price updates are conflated per symbol
//! until the socket can take them: a slow client gets the latest price, never a
//! backlog. Past `limit` bytes the queue is dropped and a 4008 close goes out instead
//! (the client can resume with `since`).
//!
//! A pending price is one bit (its symbol id), not a frame: the frame is the shard's
//! latest for that symbol, taken when the socket can write it, at most [`IOVECS`]
//! frames ahead. So a snapshot of the whole tick book costs a subscriber one bit per
//! symbol (8 KiB at 65,536 symbols), a pending price is never more than the latest,
//! and price bytes in the queue (counted against `limit`) are at most a `writev`'s
//! worth: a price never closes a connection as a slow consumer, signals do.
//!
//! Replayed signals (a resume's gap, a snapshot) are not counted against `limit` but
//! against a bound of their own, [`REPLAY_FACTOR`] × `limit` (64 MiB at the default):
//! the client asked for them and the frames are already in memory. Counting them against
//! `limit` made any gap over it (about 1,400 signals at the default 1 MiB) a 4008 before
//! the client had read a byte, so a slow consumer cut off could never catch up by
//! resuming; the separate bound still closes a client that piles up replays it does not
//! read (a SUBSCRIBE with `since` over and over). Live frames queued behind a replay are
//! counted against `limit` as before.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use engine::channels::Message;
use engine::model::Tier;

use crate::ws::{CloseCode, outbound};

/// Replayed bytes a connection may have queued, in multiples of the live bound: 64 MiB
/// at the default 1 MiB, room for the 50,000 signals a read-back returns at most.
pub const REPLAY_FACTOR: usize = 64;

/// Frames per `writev`. The floor design coalesced about 8 frames per call at
/// saturation; 32 leaves room for bursts.
pub const IOVECS: usize = 32;

/// Why a signal is written when it is. Only `Live` deliveries measure the engine's
/// latency; the others wait on purpose and are measured apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Fan-out of a real-time view as it happens.
    Live,
    /// From a delayed view (free tier, users without real-time access).
    Delayed,
    /// A resume replay (from the ring or read back from history).
    Replay,
}

/// One queued frame.
#[derive(Clone, Debug)]
pub enum Out {
    /// A signal from a tier channel, framed by the engine.
    Signal(Message, Tier, Timing),
    /// A reply, notice, price update or close, framed here.
    Frame(Arc<[u8]>),
    /// The upgrade's HTTP response (101), queued first when the shard writes it: kept
    /// when an overflow drops the queue, since the client reads it before any frame.
    Http(Arc<[u8]>),
}

impl Out {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Signal(m, ..) => m.frame(),
            Self::Frame(f) | Self::Http(f) => f,
        }
    }

    /// Replayed (not counted against the bound).
    fn is_replay(&self) -> bool {
        matches!(self, Self::Signal(_, _, Timing::Replay))
    }
}

/// The result of queueing a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Over the bound: the queue was dropped and a 4008 close is on its way.
    Overflow,
    /// The connection is closing; nothing was queued.
    Closed,
}

#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Out>,
    /// Bytes of `frames`, and how much of the first one is already written.
    bytes: usize,
    written: usize,
    /// Of `bytes`, those of replayed frames (not counted against the bound).
    replay_bytes: usize,
    /// Symbols with a price to send.
    prices: PendingPrices,
    /// A close frame is queued (last); nothing is accepted after it.
    closing: bool,
}

impl Outbox {
    /// Queues a frame, or at `limit` bytes drops the queue and closes with 4008.
    pub fn push(&mut self, out: Out, limit: usize) -> Pushed {
        if self.closing {
            return Pushed::Closed;
        }
        let len = out.bytes().len();
        let replay = out.is_replay();
        let over = if replay {
            self.replay_bytes + len > limit.saturating_mul(REPLAY_FACTOR)
        } else {
            self.bytes - self.replay_bytes + len > limit
        };
        if over {
            // A frame partly written must be finished, or the stream is corrupt; the
            // 101, if still queued, is always first and always kept.
            let keep = usize::from(self.written > 0 || matches!(self.frames.front(), Some(Out::Http(_))));
            self.frames.truncate(keep);
            self.bytes = self.frames.front().map_or(0, |f| f.bytes().len());
            self.replay_bytes = self.frames.front().filter(|f| f.is_replay()).map_or(0, |f| f.bytes().len());
            self.close(outbound::close(CloseCode::SlowConsumer));
            return Pushed::Overflow;
        }
        self.bytes += len;
        if replay {
            self.replay_bytes += len;
        }
        self.frames.push_back(out);
        Pushed::Queued
    }

    /// Queues a text message, framing it.
    pub fn push_text(&mut self, json: &[u8], limit: usize) -> Pushed {
        self.push(Out::Frame(outbound::text(json).into()), limit)
    }

    /// Marks `symbol`'s price pending: the latest frame of the symbol goes out when the
    /// socket can take it (conflation).
    pub fn push_price(&mut self, symbol: u32) {
        if !self.closing {
            self.prices.insert(symbol);
        }
    }

    /// Forgets the pending prices (the subscription ended or changed: they may be of
    /// symbols or a rate no longer asked for).
    pub fn clear_prices(&mut self) {
        self.prices.clear();
    }

    /// Sends what is queued, then `frame` (a close frame); nothing is accepted after.
    /// Pending prices are dropped (a closing client has no use for them).
    pub fn close(&mut self, frame: Vec<u8>) {
        if self.closing {
            return;
        }
        self.prices.clear();
        self.bytes += frame.len();
        self.frames.push_back(Out::Frame(frame.into()));
        self.closing = true;
    }

    /// Nothing left to write (prices included).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.prices.count == 0
    }

    /// The close frame has been written in full.
    pub fn close_sent(&self) -> bool {
        self.closing && self.frames.is_empty()
    }

    /// Moves pending prices into the write queue, up to a `writev`'s worth of frames
    /// queued: `latest[symbol]` is each symbol's latest price frame.
    pub fn settle(&mut self, latest: &[Option<Arc<[u8]>>]) {
        while self.frames.len() < IOVECS
            && let Some(symbol) = self.prices.pop()
        {
            if let Some(Some(f)) = latest.get(symbol as usize) {
                self.bytes += f.len();
                self.frames.push_back(Out::Frame(Arc::clone(f)));
            }
        }
    }

    /// Symbols with a price waiting to be queued.
    #[cfg(test)]
    pub fn pending_prices(&self) -> usize {
        self.prices.count
    }

    /// Fills `slices` with the unwritten bytes, first frame first; returns how many.
    pub fn fill<'a>(&'a self, slices: &mut [IoSlice<'a>; IOVECS]) -> usize {
        let mut n = 0;
        for (k, f) in self.frames.iter().take(IOVECS).enumerate() {
            slices[k] = IoSlice::new(if k == 0 { &f.bytes()[self.written..] } else { f.bytes() });
            n += 1;
        }
        n
    }

    /// Marks `n` bytes written; `delivered` is called for each signal written in full.
    pub fn advance(&mut self, mut n: usize, mut delivered: impl FnMut(&Message, Tier, Timing)) {
        while n > 0 {
            let Some(front) = self.frames.front() else { return };
            let left = front.bytes().len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.bytes -= front.bytes().len();
            if front.is_replay() {
                self.replay_bytes -= front.bytes().len();
            }
            self.written = 0;
            if let Some(Out::Signal(m, tier, timing)) = self.frames.pop_front() {
                delivered(&m, tier, timing);
            }
        }
    }

    /// Bytes queued (prices not counted until settled).
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }
}

/// A set of symbol ids, one bit each, taken out in id order from where the last one
/// was taken (so a symbol that changes often cannot starve the others).
#[derive(Debug, Default)]
struct PendingPrices {
    words: Vec<u64>,
    count: usize,
    /// The word the next search starts at.
    from: usize,
}

impl PendingPrices {
    fn insert(&mut self, symbol: u32) {
        let (w, bit) = (symbol as usize / 64, 1u64 << (symbol % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.count += 1;
        }
    }

    fn pop(&mut self) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        let n = self.words.len();
        for k in 0..n {
            let w = (self.from + k) % n;
            let word = self.words[w];
            if word != 0 {
                let bit = word.trailing_zeros();
                self.words[w] &= word - 1; // clears the lowest set bit
                self.count -= 1;
                self.from = w;
                return Some((w * 64) as u32 + bit);
            }
        }
        None
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(o: &mut Outbox, latest: &[Option<Arc<[u8]>>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            o.settle(latest);
            if o.is_empty() {
                break;
            }
            let mut sl = [IoSlice::new(&[]); IOVECS];
            let n = o.fill(&mut sl);
            let chunk: Vec<u8> = sl[..n].iter().flat_map(|s| s.iter().copied()).collect();
            // Write in 3-byte pieces to exercise partial writes.
            let take = chunk.len().min(3);
            out.push(chunk[..take].to_vec());
            o.advance(take, |_, _, _| {});
        }
        out
    }

    fn stream(o: &mut Outbox) -> Vec<u8> {
        written(o, &[]).concat()
    }

    #[test]
    fn overflow_drops_the_queue_and_closes_with_4008() {
        let mut o = Outbox::default();
        assert_eq!(o.push_text(&[b'a'; 40], 100), Pushed::Queued);
        assert_eq!(o.push_text(&[b'a'; 40], 100), Pushed::Queued);
        assert_eq!(o.push_text(&[b'a'; 40], 100), Pushed::Overflow);
        assert_eq!(o.push_text(b"late", 100), Pushed::Closed);
        let s = stream(&mut o);
        assert_eq!(s.len(), 2 + 2 + CloseCode::SlowConsumer.reason().len());
        assert_eq!(&s[2..4], &4008u16.to_be_bytes(), "only the close frame is written");
        assert!(o.close_sent());
    }

    #[test]
    fn an_overflow_keeps_the_upgrade_response_queued_ahead_of_it() {
        let mut o = Outbox::default();
        o.push(Out::Http(Arc::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..])), 100);
        o.push_text(b"{\"welcome\":1}", 100);
        assert_eq!(o.push_text(&[b'x'; 200], 100), Pushed::Overflow);
        let s = stream(&mut o);
        assert!(s.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), "{s:?}");
        let mut want = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        want.extend_from_slice(&outbound::close(CloseCode::SlowConsumer));
        assert_eq!(s, want, "the 101, then the close frame alone");
    }

    #[test]
    fn a_frame_partly_written_is_finished_before_the_overflow_close() {
        let mut o = Outbox::default();
        o.push_text(&[b'a'; 40], 100);
        o.advance(5, |_, _, _| {});
        o.push_text(&[b'b'; 40], 100);
        assert_eq!(o.push_text(&[b'c'; 40], 100), Pushed::Overflow);
        let s = stream(&mut o);
        assert_eq!(s.len(), 42 - 5 + 4 + CloseCode::SlowConsumer.reason().len());
        assert!(s[..37].iter().all(|b| *b == b'a'));
    }

    #[test]
    fn prices_conflate_per_symbol_to_the_latest_and_a_close_drops_them() {
        let mut o = Outbox::default();
        let mut latest: Vec<Option<Arc<[u8]>>> = vec![None, Some(Arc::from(&b"p1-old"[..])), None];
        o.push_price(1);
        o.push_price(2);
        latest[2] = Some(Arc::from(&b"p2"[..]));
        o.push_price(1);
        latest[1] = Some(Arc::from(&b"p1-new"[..]));
        o.push_text(b"hello", 1 << 20);
        assert_eq!(o.pending_prices(), 2, "one per symbol");
        let hello = outbound::text(b"hello");
        assert_eq!(written(&mut o, &latest).concat(), [&hello[..], b"p1-new", b"p2"].concat());
        o.push_price(1);
        o.close(outbound::close(CloseCode::GoingAway));
        o.push_price(2);
        assert_eq!(stream(&mut o), outbound::close(CloseCode::GoingAway));
    }

    #[test]
    fn pending_prices_enter_the_queue_a_writev_at_a_time_and_all_get_out() {
        let frame: Arc<[u8]> = Arc::from(&[b'p'; 100][..]);
        let latest = vec![Some(frame); 2_000];
        let mut o = Outbox::default();
        for k in (0..2_000).rev() {
            o.push_price(k);
        }
        o.settle(&latest);
        assert_eq!(o.queued_bytes(), IOVECS * 100, "a writev's worth queued, the rest one bit each");
        assert_eq!(written(&mut o, &latest).concat().len(), 2_000 * 100, "every symbol once");
    }

    /// A signal message (seq 1) with `json` as its text.
    fn message(json: &[u8]) -> Message {
        let meta = engine::channels::MessageMeta {
            seq: 1,
            category: engine::model::Category::Crypto,
            ingest_ts: engine::model::UnixNanos(0),
            routed_ts: engine::model::UnixNanos(0),
            sent_ts: None,
            outcome: false,
        };
        Message::new(&meta, json, &mut Vec::new())
    }

    #[test]
    fn signals_are_reported_once_written_in_full() {
        let msg = message(b"{\"x\":1}");
        let mut o = Outbox::default();
        o.push(Out::Signal(msg.clone(), Tier::Free, Timing::Live), 1 << 20);
        let len = msg.frame().len();
        let mut seen = 0;
        o.advance(len - 1, |_, _, _| seen += 1);
        assert_eq!(seen, 0);
        o.advance(1, |m, t, timing| {
            assert_eq!((m.seq(), t, timing), (1, Tier::Free, Timing::Live));
            seen += 1;
        });
        assert_eq!(seen, 1);
        assert!(o.is_empty() && o.queued_bytes() == 0);
    }

    #[test]
    fn replays_have_a_bound_of_their_own_and_live_frames_behind_them_keep_theirs() {
        let msg = message(&[b'x'; 90]);
        let len = msg.frame().len();
        let limit = 3 * len;
        let replay = || Out::Signal(msg.clone(), Tier::Free, Timing::Replay);
        let live = || Out::Signal(msg.clone(), Tier::Free, Timing::Live);
        let mut o = Outbox::default();
        // Far past the live bound, within the replay bound.
        for _ in 0..REPLAY_FACTOR * 3 {
            assert_eq!(o.push(replay(), limit), Pushed::Queued);
        }
        // Live frames behind the replay: counted against `limit` alone.
        for _ in 0..3 {
            assert_eq!(o.push(live(), limit), Pushed::Queued);
        }
        assert_eq!(o.queued_bytes(), (REPLAY_FACTOR * 3 + 3) * len);
        // Written in part: what left was replay, so the replay bound has room again.
        o.advance(2 * len, |_, _, _| {});
        assert_eq!(o.push(replay(), limit), Pushed::Queued);
        assert_eq!(o.push(replay(), limit), Pushed::Queued);
        // Past the replay bound: 4008, as for live frames past theirs.
        assert_eq!(o.push(replay(), limit), Pushed::Overflow);
        assert!(o.push(live(), limit) == Pushed::Closed);

        let mut o = Outbox::default();
        o.push(replay(), limit);
        for _ in 0..3 {
            assert_eq!(o.push(live(), limit), Pushed::Queued);
        }
        assert_eq!(o.push(live(), limit), Pushed::Overflow, "a fourth live frame is past the live bound");
    }
}
