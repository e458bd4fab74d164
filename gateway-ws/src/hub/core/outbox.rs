//! A connection's outbound queue: owned by the hub core, bounded, no I/O.
//!
//! Signal messages are reference-counted frames made once by the engine; queueing one
//! is a pointer push and a count increment. Price updates are conflated per symbol
//! until the socket can take them: a slow client gets the latest price, never a
//! backlog. Past `limit` bytes the queue is dropped and a 4008 close goes out instead
//! (the client can resume with `since`).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use engine::channels::Message;
use engine::model::Tier;

use crate::ws::{CloseCode, outbound};

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
}

impl Out {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Signal(m, ..) => m.frame(),
            Self::Frame(f) => f,
        }
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
    /// Pending price frames, the latest per symbol id, in the order symbols became
    /// pending. Few symbols per connection: a vector beats a map here.
    prices: Vec<(u32, Arc<[u8]>)>,
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
        if self.bytes + len > limit {
            // A frame partly written must be finished, or the stream is corrupt.
            let keep = usize::from(self.written > 0);
            self.frames.truncate(keep);
            self.bytes = self.frames.front().map_or(0, |f| f.bytes().len());
            self.prices.clear();
            self.close(outbound::close(CloseCode::SlowConsumer));
            return Pushed::Overflow;
        }
        self.bytes += len;
        self.frames.push_back(out);
        Pushed::Queued
    }

    /// Queues a text message, framing it.
    pub fn push_text(&mut self, json: &[u8], limit: usize) -> Pushed {
        self.push(Out::Frame(outbound::text(json).into()), limit)
    }

    /// Replaces any pending price of `symbol` with `frame` (conflation).
    pub fn push_price(&mut self, symbol: u32, frame: Arc<[u8]>) {
        if self.closing {
            return;
        }
        match self.prices.iter_mut().find(|(s, _)| *s == symbol) {
            Some(p) => p.1 = frame,
            None => self.prices.push((symbol, frame)),
        }
    }

    /// Sends what is queued, then `frame` (a close frame); nothing is accepted after.
    pub fn close(&mut self, frame: Vec<u8>) {
        if self.closing {
            return;
        }
        self.settle();
        self.bytes += frame.len();
        self.frames.push_back(Out::Frame(frame.into()));
        self.closing = true;
    }

    /// Nothing left to write (prices included).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.prices.is_empty()
    }

    /// The close frame has been written in full.
    pub fn close_sent(&self) -> bool {
        self.closing && self.frames.is_empty()
    }

    /// Commits pending prices to the write queue (they are about to be written).
    pub fn settle(&mut self) {
        for (_, f) in self.prices.drain(..) {
            self.bytes += f.len();
            self.frames.push_back(Out::Frame(f));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn written(o: &mut Outbox) -> Vec<Vec<u8>> {
        o.settle();
        let mut out = Vec::new();
        while !o.is_empty() {
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
        written(o).concat()
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
    fn prices_conflate_per_symbol_and_a_close_comes_after_the_queue() {
        let mut o = Outbox::default();
        o.push_price(1, Arc::from(&b"p1-old"[..]));
        o.push_price(2, Arc::from(&b"p2"[..]));
        o.push_price(1, Arc::from(&b"p1-new"[..]));
        o.push_text(b"hello", 1 << 20);
        o.close(outbound::close(CloseCode::GoingAway));
        o.push_price(3, Arc::from(&b"p3"[..]));
        let s = stream(&mut o);
        let hello = outbound::text(b"hello");
        let close = outbound::close(CloseCode::GoingAway);
        assert_eq!(s, [&hello[..], b"p1-new", b"p2", &close[..]].concat());
    }

    #[test]
    fn signals_are_reported_once_written_in_full() {
        let meta = engine::channels::MessageMeta {
            seq: 1,
            category: engine::model::Category::Crypto,
            ingest_ts: engine::model::UnixNanos(0),
            routed_ts: engine::model::UnixNanos(0),
            sent_ts: None,
        };
        let msg = Message::new(&meta, b"{\"x\":1}", &mut Vec::new());
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
}
