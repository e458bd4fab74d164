//! A connection's outbound buffer: bounded, shared by the hub shard (signals, prices,
//! notices), the reader (replies) and the writer (drains it).
//!
//! Signal messages are reference-counted frames made once by the engine; queueing one
//! is a pointer push and a count increment. Price updates are conflated per symbol: a
//! slow client gets the latest price, never a backlog. Past `limit` bytes of signals
//! and replies the connection is closed with 4008 (it can resume with `since`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use engine::channels::Message;
use engine::model::Tier;
use tokio::sync::Notify;

use crate::ws::{CloseCode, outbound};

/// One queued frame.
#[derive(Clone, Debug)]
pub enum Out {
    /// A signal from a tier channel, framed by the engine.
    Signal(Message, Tier),
    /// A reply, notice or price update framed here.
    Frame(Arc<[u8]>),
}

impl Out {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Signal(m, _) => m.frame(),
            Self::Frame(f) => f,
        }
    }
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Write these frames (moved into the caller's vector).
    Frames,
    /// Write this close frame, then shut the socket.
    Close(Vec<u8>),
    /// Shut the socket.
    End,
}

/// The result of queueing a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Over the bound: the queue was dropped and a 4008 close is on its way.
    Overflow,
    /// The connection is closing; nothing was queued.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Out>,
    bytes: usize,
    /// Latest price frame per symbol id, and the order symbols first became pending.
    prices: HashMap<u32, Arc<[u8]>>,
    price_order: VecDeque<u32>,
    close: Option<Vec<u8>>,
    closing: bool,
    done: bool,
    errors: VecDeque<Instant>,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    closed: Notify,
    limit: usize,
    /// Wall-clock ns of the last frame from the client (heartbeat).
    last_seen: AtomicI64,
}

/// More than this many ERRORs within [`ERROR_WINDOW`] closes with 1008.
pub const MAX_ERRORS: usize = 10;
pub const ERROR_WINDOW: Duration = Duration::from_secs(10);

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: Notify::new(),
            limit,
            last_seen: AtomicI64::new(engine::model::UnixNanos::now().0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, out: Out) -> Pushed {
        let mut s = self.state();
        if s.closing {
            return Pushed::Closed;
        }
        let len = out.bytes().len();
        if s.bytes + len > self.limit {
            s.frames.clear();
            s.bytes = 0;
            s.prices.clear();
            s.price_order.clear();
            Self::start_close(&mut s, outbound::close(CloseCode::SlowConsumer));
            drop(s);
            self.wake.notify_one();
            self.closed.notify_waiters();
            return Pushed::Overflow;
        }
        let was_idle = s.frames.is_empty() && s.price_order.is_empty();
        s.bytes += len;
        s.frames.push_back(out);
        drop(s);
        if was_idle {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a signal message.
    pub fn push_signal(&self, msg: Message, tier: Tier) -> Pushed {
        self.push(Out::Signal(msg, tier))
    }

    /// Queues a frame made here (reply, notice).
    pub fn push_frame(&self, frame: Arc<[u8]>) -> Pushed {
        self.push(Out::Frame(frame))
    }

    /// Queues a text message, framing it.
    pub fn push_text(&self, json: &[u8]) -> Pushed {
        self.push_frame(outbound::text(json).into())
    }

    /// Replaces any pending price of `symbol` with `frame` (conflation).
    pub fn push_price(&self, symbol: u32, frame: Arc<[u8]>) {
        let mut s = self.state();
        if s.closing {
            return;
        }
        let was_idle = s.frames.is_empty() && s.price_order.is_empty();
        if s.prices.insert(symbol, frame).is_none() {
            s.price_order.push_back(symbol);
        }
        drop(s);
        if was_idle {
            self.wake.notify_one();
        }
    }

    fn start_close(s: &mut State, frame: Vec<u8>) {
        if !s.closing {
            s.closing = true;
            s.close = Some(frame);
        }
    }

    /// Sends what is queued, then this close frame; nothing is accepted after it.
    pub fn close(&self, code: CloseCode) {
        self.close_with(outbound::close(code));
    }

    pub fn close_with(&self, frame: Vec<u8>) {
        let mut s = self.state();
        Self::start_close(&mut s, frame);
        drop(s);
        self.wake.notify_one();
        self.closed.notify_waiters();
    }

    /// Ends the connection without a close frame (the socket failed or the reader ended).
    pub fn finish(&self) {
        let mut s = self.state();
        s.closing = true;
        s.done = true;
        drop(s);
        self.wake.notify_one();
        self.closed.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.state().closing
    }

    /// Resolves once a close has been requested.
    pub async fn closing(&self) {
        loop {
            let n = self.closed.notified();
            if self.is_closing() {
                return;
            }
            n.await;
        }
    }

    /// Records an ERROR sent to the client; true when that makes more than
    /// [`MAX_ERRORS`] within [`ERROR_WINDOW`] (the caller then closes with 1008).
    pub fn record_error(&self) -> bool {
        let now = Instant::now();
        let mut s = self.state();
        while s.errors.front().is_some_and(|t| now.duration_since(*t) > ERROR_WINDOW) {
            s.errors.pop_front();
        }
        s.errors.push_back(now);
        s.errors.len() > MAX_ERRORS
    }

    pub fn touch(&self) {
        self.last_seen.store(engine::model::UnixNanos::now().0, Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> i64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Waits for work and moves it into `out`.
    pub async fn next(&self, out: &mut Vec<Out>) -> Next {
        loop {
            let woken = self.wake.notified();
            {
                let mut s = self.state();
                if !s.frames.is_empty() || !s.price_order.is_empty() {
                    out.extend(s.frames.drain(..));
                    s.bytes = 0;
                    while let Some(sym) = s.price_order.pop_front() {
                        if let Some(f) = s.prices.remove(&sym) {
                            out.push(Out::Frame(f));
                        }
                    }
                    return Next::Frames;
                }
                if let Some(c) = s.close.take() {
                    return Next::Close(c);
                }
                if s.done || s.closing {
                    return Next::End;
                }
            }
            woken.await;
        }
    }

    /// Bytes of signals and replies waiting.
    pub fn queued_bytes(&self) -> usize {
        self.state().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_drops_the_queue_and_closes_with_4008() {
        let o = Outbox::new(100);
        assert_eq!(o.push_text(&[b'a'; 40]), Pushed::Queued);
        assert_eq!(o.push_text(&[b'a'; 40]), Pushed::Queued);
        assert_eq!(o.push_text(&[b'a'; 40]), Pushed::Overflow);
        assert_eq!(o.push_text(b"late"), Pushed::Closed);
        let mut v = Vec::new();
        match o.next(&mut v).await {
            Next::Close(f) => assert_eq!(&f[2..4], &4008u16.to_be_bytes()),
            other => panic!("{other:?}"),
        }
        assert!(v.is_empty(), "nothing of the dropped backlog is written");
        assert!(matches!(o.next(&mut v).await, Next::End));
    }

    #[tokio::test]
    async fn prices_conflate_per_symbol_and_a_close_comes_after_the_queue() {
        let o = Outbox::new(1 << 20);
        o.push_price(1, Arc::from(&b"p1-old"[..]));
        o.push_price(2, Arc::from(&b"p2"[..]));
        o.push_price(1, Arc::from(&b"p1-new"[..]));
        o.push_text(b"hello");
        o.close(CloseCode::GoingAway);
        let mut v = Vec::new();
        assert!(matches!(o.next(&mut v).await, Next::Frames));
        let got: Vec<&[u8]> = v.iter().map(Out::bytes).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[1..], &[&b"p1-new"[..], &b"p2"[..]]);
        assert!(matches!(o.next(&mut v).await, Next::Close(_)));
    }

    #[test]
    fn the_eleventh_error_in_ten_seconds_trips_the_policy() {
        let o = Outbox::new(100);
        assert!((0..MAX_ERRORS).all(|_| !o.record_error()));
        assert!(o.record_error());
    }
}
