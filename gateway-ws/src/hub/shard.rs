//! One hub shard: a thread, its poller, its sockets, and the loop that drives its
//! [`Core`]. Nothing here decides anything about the protocol: the loop moves bytes
//! between sockets and the core, reports readiness, starts the history reads the core
//! asks for, and drops the sockets the core gives up on.
//!
//! Each turn: wait for readiness (or the engine's bell, or the core's next timer); take
//! history answers and commands (new connections, rights, drain); read the readable sockets; let
//! the core queue new channel messages; then sweep the connections that have something
//! to write, one `writev` each, asking the core for newer messages every
//! [`PICKUP_EVERY`] sockets so that a long sweep never holds a message back for a pass.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Duration;

use engine::channels::History;
use engine::model::UnixNanos;
use mio::{Events, Interest, Poll, Token, Waker};

use super::core::{Clock, ConnId, Core, HistoryDone, IOVECS, Received, SLOTS_RESERVED, Sources};
use super::{Attach, Cmd};
use crate::admission::Admitted;
use crate::conn::Io;

/// Sockets written between two looks at the channel logs during a sweep.
const PICKUP_EVERY: usize = 32;

/// Bytes read from one socket per readiness event before others get their turn.
const READ_BUDGET: usize = 64 * 1024;

const WAKE: Token = Token(usize::MAX);

/// The driver's half of a connection: the socket and its place under the limits.
struct Sock {
    io: Io,
    /// The socket took everything last time; false after `WouldBlock` until the
    /// poller reports it writable again.
    writable: bool,
    /// Released when the socket is dropped.
    _admitted: Option<Admitted>,
}

pub(super) struct Shard {
    index: usize,
    core: Core,
    poll: Poll,
    waker: Arc<Waker>,
    cmds: Receiver<Cmd>,
    /// History replies, from the reader's thread or from this one: a reader may answer
    /// at once (busy, too deep), inside [`Shard::start_history_reads`]. Not the command
    /// queue, which is bounded: a shard that waited for room in its own queue would
    /// wait for good. Unbounded, but what it can hold is: one reply per request the
    /// reader holds (its queue is bounded: 64 for the store, 16 for Kafka) and the
    /// replies given at once during this turn, one per request the core made in it.
    replies: (Sender<HistoryDone>, Receiver<HistoryDone>),
    history: Option<Arc<dyn History>>,
    /// Sockets by connection id (the core's ids are the poller's tokens).
    socks: Vec<Option<Sock>>,
    /// Connections whose read budget ran out: read again before waiting.
    again: Vec<ConnId>,
    scratch: Box<[u8]>,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        src: Sources,
        history: Option<Arc<dyn History>>,
        cmds: Receiver<Cmd>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(Self {
            index,
            core: Core::new(index, src, Clock::now()),
            poll,
            waker,
            cmds,
            replies: std::sync::mpsc::channel(),
            history,
            socks: Vec::with_capacity(SLOTS_RESERVED),
            again: Vec::new(),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Runs until told to stop (`Ok`) or the poller fails (`Err`).
    pub(super) fn run(mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut readable = Vec::new();
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(format!("poll failed: {e}"));
            }
            for ev in &events {
                let i = ev.token().0;
                if ev.token() == WAKE {
                    continue;
                }
                let Some(s) = self.socks.get_mut(i).and_then(Option::as_mut) else { continue };
                if ev.is_writable() {
                    s.writable = true;
                    self.core.writable(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    readable.push(i);
                }
            }
            if !self.commands() {
                break;
            }
            readable.append(&mut self.again);
            for i in readable.drain(..) {
                self.read(i);
            }
            self.core.fan_out(Clock::now());
            self.flush();
            let now = Clock::now();
            if now.mono >= self.core.next_timer() {
                self.core.on_timer(now);
                self.drop_gone();
                self.flush();
            }
            self.start_history_reads();
            self.core.publish_stats();
        }
        self.core.publish_stats();
        for i in 0..self.socks.len() {
            self.finish(i);
        }
        tracing::debug!(shard = self.index, "hub shard stopped");
        Ok(())
    }

    fn timeout(&self) -> Duration {
        if !self.again.is_empty() || self.core.has_dirty() {
            return Duration::ZERO;
        }
        self.core.next_timer().saturating_duration_since(std::time::Instant::now())
    }

    /// Takes what the hub sent; false when the shard must stop.
    fn commands(&mut self) -> bool {
        while let Ok(done) = self.replies.1.try_recv() {
            self.core.history_done(done, Clock::now());
        }
        loop {
            match self.cmds.try_recv() {
                Ok(Cmd::Attach(a)) => self.attach(*a),
                Ok(Cmd::Rights(e)) => self.core.rights(&e, Clock::now()),
                Ok(Cmd::Drain) => self.core.drain(),
                #[cfg(test)]
                Ok(Cmd::Crash) => panic!("hub shard {} crashed on request", self.index),
                #[cfg(test)]
                Ok(Cmd::Stall(entered, held)) => {
                    let _ = entered.send(());
                    let _ = held.recv();
                }
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn attach(&mut self, a: Attach) {
        let Attach { mut io, input, preamble, session, admitted, subscribe, deflate } = a;
        let i = self.core.attach(session, preamble, Clock::now());
        if let Some(agreed) = deflate {
            self.core.enable_deflate(i, agreed);
        }
        self.core.subscribe_on_open(i, subscribe);
        if let Err(e) =
            self.poll.registry().register(io.socket(), Token(i), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(shard = self.index, error = %e, "cannot register a connection");
            self.core.remove(i);
            return;
        }
        if self.socks.len() <= i {
            self.socks.resize_with(i + 1, || None);
        }
        self.socks[i] = Some(Sock { io, writable: true, _admitted: admitted });
        // Bytes that came with the upgrade have no readiness event of their own; nor
        // has TLS plaintext already decrypted, which the read below picks up.
        if !input.is_empty() {
            self.core.received(i, &input, Clock::now());
        }
        self.read(i);
    }

    /// Reads a readable socket into the core, up to [`READ_BUDGET`] bytes.
    fn read(&mut self, i: ConnId) {
        let mut taken = 0;
        let gone = loop {
            let Some(s) = self.socks.get_mut(i).and_then(Option::as_mut) else { return };
            if taken >= READ_BUDGET {
                self.again.push(i);
                break false;
            }
            match s.io.read(&mut self.scratch) {
                Ok(0) => break true,
                Ok(n) => {
                    taken += n;
                    if self.core.received(i, &self.scratch[..n], Clock::now()) == Received::Enough {
                        break true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if gone {
            // A close echo (or anything else queued) may still get out.
            if self.socks.get(i).and_then(Option::as_ref).is_some_and(|s| s.writable) {
                let _ = self.write(i);
            }
            self.finish(i);
        }
    }

    /// Writes the connections the core has something for, picking up new messages as
    /// it goes.
    fn flush(&mut self) {
        let mut written = 0;
        while let Some(i) = self.core.next_to_write() {
            if !self.socks.get(i).and_then(Option::as_ref).is_some_and(|s| s.writable) {
                continue; // back when the poller says so
            }
            if self.write(i).is_err() {
                self.finish(i);
            }
            written += 1;
            if written % PICKUP_EVERY == 0 {
                self.core.fan_out(Clock::now());
            }
        }
    }

    /// Writes everything connection `i` lacks, `IOVECS` frames per `writev`, until it
    /// is all out or the socket is full.
    fn write(&mut self, i: ConnId) -> std::io::Result<()> {
        let Some(s) = self.socks.get_mut(i).and_then(Option::as_mut) else { return Ok(()) };
        loop {
            let result = {
                let mut slices = [IoSlice::new(&[]); IOVECS];
                let n = self.core.fill(i, &mut slices);
                if n == 0 {
                    break;
                }
                s.io.write(&slices[..n])
            };
            match result {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.core.written(i, n, UnixNanos::now()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    s.writable = false;
                    self.core.blocked(i, Clock::now());
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if s.io.has_pending() {
            match s.io.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    s.writable = false;
                    self.core.blocked(i, Clock::now());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if self.core.flushed(i, std::time::Instant::now) {
            s.io.shutdown_write();
        }
        Ok(())
    }

    /// Drops the sockets the core gave up on (stalled, lingered long enough).
    fn drop_gone(&mut self) {
        while let Some(i) = self.core.poll_gone() {
            self.finish(i);
        }
    }

    /// Drops connection `i`: its socket, its registration, its state in the core.
    fn finish(&mut self, i: ConnId) {
        self.core.remove(i);
        let Some(mut s) = self.socks.get_mut(i).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(s.io.socket());
    }

    /// Starts the history reads the core asked for; each answer comes back through
    /// `replies`, also when a reader drops a request unanswered (its thread died).
    fn start_history_reads(&mut self) {
        while let Some(req) = self.core.poll_request() {
            let Some(history) = self.history.as_ref() else {
                // The core asks only when the node has a history; if not, say so.
                let none = engine::channels::HistoryError::Incomplete("no history on this node".into());
                self.core.history_done(req.done(Err(none)), Clock::now());
                continue;
            };
            let (tier, from, to) = (req.tier, req.since + 1, req.to);
            let answer =
                Answer { req: Some(req), me: self.replies.0.clone(), waker: Arc::clone(&self.waker) };
            history.read(tier, from, to, Box::new(move |result| answer.send(result)));
        }
    }
}

/// The way back for one history read. Dropped unanswered (the reader's thread died
/// with the request), it answers `Incomplete`: the subscription waiting for it goes on
/// unrecovered, and the connection's count of reads under way comes down.
struct Answer {
    req: Option<super::core::HistoryRequest>,
    me: Sender<HistoryDone>,
    waker: Arc<Waker>,
}

impl Answer {
    fn send(mut self, result: Result<Vec<engine::channels::Message>, engine::channels::HistoryError>) {
        self.answer(result);
    }

    /// The first answer goes back; a shard that is gone has nobody to answer.
    fn answer(&mut self, result: Result<Vec<engine::channels::Message>, engine::channels::HistoryError>) {
        if let Some(req) = self.req.take()
            && self.me.send(req.done(result)).is_ok()
        {
            let _ = self.waker.wake();
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.req.is_some() {
            let why = "the history reader dropped the request";
            self.answer(Err(engine::channels::HistoryError::Incomplete(why.into())));
        }
    }
}
