//! One hub shard: a thread, its poller, its connections, and the loop that drives them.
//!
//! Each turn: wait for readiness (or the engine's bell, or a timer); take new
//! connections; read the readable sockets and act on what clients said; queue new
//! channel messages (`fanout`); then sweep the connections that have something to
//! write, one `writev` each, picking up newer messages every [`PICKUP_EVERY`] sockets
//! so that a long sweep never holds a message back for a whole pass.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use engine::channels::Message;
use engine::model::UnixNanos;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Attach, Cmd, Context};
use crate::conn::{Conn, IOVECS, LINGER, LINGER_BYTES, Phase, ReadEnd};
use crate::metrics::LocalStats;
use crate::protocol::{self, SystemEvent};
use crate::ws::{CloseCode, outbound};

/// Eight logs: the live log and the delayed view of each tier (`tier * 2 + delayed`).
pub(super) const LOGS: usize = 8;

/// Sockets written between two looks at the channel logs during a sweep.
const PICKUP_EVERY: usize = 32;

/// Bytes read from one socket per readiness event before others get their turn.
const READ_BUDGET: usize = 64 * 1024;

const WAKE: Token = Token(usize::MAX);

/// A connection's subscription to one log, with what the fan-out needs inline (no
/// lookup per recipient).
#[derive(Debug)]
pub(super) struct Sub {
    pub conn: usize,
    pub categories: engine::model::CategoryMask,
    pub quota: Arc<super::UserQuota>,
    pub limit: Option<u32>,
    /// Messages up to this seq were replayed or predate the subscription.
    pub skip_until: u64,
    /// Last seq queued or skipped for this subscriber (to move it between views).
    pub last_seq: u64,
}

pub(super) struct Shard {
    pub index: usize,
    pub ctx: Context,
    poll: Poll,
    waker: Arc<Waker>,
    cmds: Receiver<Cmd>,
    /// This shard's own command queue, for replies from other threads (history).
    pub me: SyncSender<Cmd>,
    /// Subscriptions waiting for a history read-back.
    pub pending: Vec<super::history::Pending>,
    /// Connections attached so far: each gets the next as its serial.
    attached: u64,
    /// Connections by poller token; `None` slots are free.
    pub conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    pub subs: [Vec<Sub>; LOGS],
    pub cursors: [u64; LOGS],
    pub price_subs: Vec<usize>,
    pub price_versions: Vec<u64>,
    /// Connections with something to write, in the order they got it.
    pub dirty: VecDeque<usize>,
    /// Connections whose read budget ran out: read again before waiting.
    again: Vec<usize>,
    /// Reused buffers.
    pub batch: Vec<Message>,
    pub overflowed: Vec<usize>,
    pub exhausted: Vec<usize>,
    scratch: Box<[u8]>,
    pub local: LocalStats,
    next_prices: Instant,
    next_sweep: Instant,
    draining: bool,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        ctx: Context,
        me: SyncSender<Cmd>,
        cmds: Receiver<Cmd>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let now = Instant::now();
        Ok(Self {
            index,
            ctx,
            poll,
            waker,
            cmds,
            me,
            pending: Vec::new(),
            attached: 0,
            conns: Vec::new(),
            free: Vec::new(),
            subs: Default::default(),
            cursors: [0; LOGS],
            price_subs: Vec::new(),
            price_versions: Vec::new(),
            dirty: VecDeque::new(),
            again: Vec::new(),
            batch: Vec::with_capacity(256),
            overflowed: Vec::new(),
            exhausted: Vec::new(),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            local: LocalStats::default(),
            next_prices: now,
            next_sweep: now + Duration::from_secs(1),
            draining: false,
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut readable = Vec::new();
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(shard = self.index, error = %e, "poll failed; shard stops");
                break;
            }
            for ev in &events {
                let i = ev.token().0;
                if ev.token() == WAKE {
                    continue;
                }
                let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { continue };
                if ev.is_writable() {
                    c.writable = true;
                    c.mark_dirty(&mut self.dirty, i);
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
            self.fan_out();
            self.flush();
            let now = Instant::now();
            if now >= self.next_prices {
                self.next_prices = now + self.ctx.hub.price_interval;
                if !self.price_subs.is_empty() {
                    self.fan_out_prices();
                    self.flush();
                }
            }
            if now >= self.next_sweep {
                self.next_sweep = now + Duration::from_secs(1);
                self.sweep(now);
                self.flush();
            }
            self.local.publish(&self.ctx.stats);
        }
        self.local.publish(&self.ctx.stats);
        for i in 0..self.conns.len() {
            self.finish(i);
        }
        tracing::debug!(shard = self.index, "hub shard stopped");
    }

    fn timeout(&self) -> Duration {
        if !self.again.is_empty() || !self.dirty.is_empty() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut at = self.next_sweep;
        if !self.price_subs.is_empty() {
            at = at.min(self.next_prices);
        }
        at.saturating_duration_since(now)
    }

    /// Takes what the hub sent; false when the shard must stop.
    fn commands(&mut self) -> bool {
        loop {
            match self.cmds.try_recv() {
                Ok(Cmd::Attach(a)) => self.attach(*a),
                Ok(Cmd::Rights(e)) => self.rights(&e),
                Ok(Cmd::History(done)) => self.history_done(*done),
                Ok(Cmd::Drain) => self.drain(),
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn attach(&mut self, a: Attach) {
        let Attach { mut io, input, session, admitted } = a;
        let i = self.free.pop().unwrap_or(self.conns.len());
        if let Err(e) =
            self.poll.registry().register(io.socket(), Token(i), Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(shard = self.index, error = %e, "cannot register a connection");
            return;
        }
        if i == self.conns.len() {
            self.conns.push(None);
        }
        self.ctx.stats.connected(session.tier, 1);
        let welcome = protocol::system(SystemEvent::Welcome {
            user: &session.user_id,
            tier: session.tier,
            real_time: session.real_time,
            token_expires_at: session.expires_at,
            heartbeat_interval_s: self.ctx.hub.heartbeat_timeout.as_secs() / 2,
            server: protocol::SERVER,
        });
        let quota = self.ctx.quotas.user(&session.user_id);
        let mut conn = Conn::new(io, session, quota, input, self.ctx.conn.max_message);
        self.attached += 1;
        conn.serial = self.attached;
        conn.admitted = admitted;
        if self.draining {
            conn.outbox.close(outbound::close(CloseCode::GoingAway));
        } else {
            conn.outbox.push_text(&welcome, self.ctx.conn.outbound_limit);
        }
        tracing::debug!(shard = self.index, conn = i, user = %conn.session.user_id, "websocket open");
        self.conns[i] = Some(conn);
        self.mark_dirty(i);
        // Bytes that came with the upgrade, or TLS plaintext already decrypted, have
        // no readiness event of their own.
        self.read(i);
    }

    pub(super) fn mark_dirty(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            c.mark_dirty(&mut self.dirty, i);
        }
    }

    /// Reads a readable socket and acts on every complete client message.
    fn read(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let end = c.read(&mut self.scratch, READ_BUDGET);
        loop {
            let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
            match c.next_frame() {
                Ok(Some(m)) => self.on_frame(i, m),
                Ok(None) => break,
                Err(v) => {
                    tracing::debug!(shard = self.index, conn = i, code = ?v.0, "client protocol violation");
                    self.close(i, outbound::close(v.0));
                    break;
                }
            }
        }
        self.remove_overflowed();
        match end {
            ReadEnd::Drained => {}
            ReadEnd::Budget => self.again.push(i),
            ReadEnd::Gone => {
                // A close echo (or anything else queued) may still get out.
                if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut)
                    && c.writable
                {
                    let _ = self.write(i);
                }
                self.finish(i);
            }
        }
    }

    /// Queues `frame` (a close frame) after what is queued and stops all deliveries.
    pub(super) fn close(&mut self, i: usize, frame: Vec<u8>) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if c.phase == Phase::Open {
            c.phase = Phase::Closing;
        }
        c.outbox.close(frame);
        self.forget_subscriptions(i);
        self.mark_dirty(i);
    }

    /// Writes the dirty connections, picking up new messages as it goes.
    fn flush(&mut self) {
        let mut written = 0;
        while let Some(i) = self.dirty.pop_front() {
            let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { continue };
            c.dirty = false;
            if !c.writable {
                continue; // back when the poller says so
            }
            if self.write(i).is_err() {
                self.finish(i);
            }
            written += 1;
            if written % PICKUP_EVERY == 0 {
                self.fan_out();
            }
        }
    }

    /// Writes everything connection `i` lacks, `IOVECS` frames per `writev`, until it
    /// is all out or the socket is full.
    fn write(&mut self, i: usize) -> std::io::Result<()> {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return Ok(()) };
        loop {
            c.outbox.settle();
            if c.outbox.is_empty() {
                if c.io.has_pending() {
                    match c.io.flush() {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            c.stalled();
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
                break;
            }
            let result = {
                let mut slices = [IoSlice::new(&[]); IOVECS];
                let n = c.outbox.fill(&mut slices);
                c.io.write(&slices[..n])
            };
            match result {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    // The write timeout counts from the last progress, not the first stall.
                    c.blocked_since = None;
                    let now = UnixNanos::now().0;
                    let local = &mut self.local;
                    c.outbox
                        .advance(n, |m, tier, timing| local.delivered(tier, timing, now - m.ingest_ts().0));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    c.stalled();
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.blocked_since = None;
        if c.outbox.close_sent() && !matches!(c.phase, Phase::Lingering { .. }) {
            c.io.shutdown_write();
            c.phase = Phase::Lingering { until: Instant::now() + LINGER, budget: LINGER_BYTES };
        }
        Ok(())
    }

    /// Drops connection `i`: its subscriptions, its registration, its socket.
    fn finish(&mut self, i: usize) {
        self.forget_subscriptions(i);
        let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(c.io.socket());
        self.ctx.stats.connected(c.session.tier, -1);
        self.free.push(i);
        tracing::debug!(shard = self.index, conn = i, user = %c.session.user_id, "websocket closed");
    }

    /// Once a second: lingering and stalled sockets, token expiry (warning, then
    /// 4001), heartbeats (4004).
    fn sweep(&mut self, now: Instant) {
        let now_s = UnixNanos::now().0 / 1_000_000_000;
        let warn = self.ctx.hub.expiry_warning.as_secs() as i64;
        let silent = self.ctx.hub.heartbeat_timeout;
        let stalled = self.ctx.conn.write_timeout;
        let mut gone = Vec::new();
        let mut close = Vec::new();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if c.blocked_since.is_some_and(|t| now.duration_since(t) > stalled) {
                gone.push(i);
                continue;
            }
            match c.phase {
                Phase::Lingering { until, .. } if now >= until => gone.push(i),
                Phase::Open if now_s >= c.session.expires_at => close.push((i, CloseCode::TokenExpired)),
                Phase::Open if now.duration_since(c.last_seen) > silent => {
                    close.push((i, CloseCode::HeartbeatTimeout));
                }
                Phase::Open if !c.warned_expiry && now_s >= c.session.expires_at - warn => {
                    c.warned_expiry = true;
                    c.outbox.push_text(
                        &protocol::system(SystemEvent::TokenExpiring {
                            token_expires_at: c.session.expires_at,
                        }),
                        self.ctx.conn.outbound_limit,
                    );
                    c.mark_dirty(&mut self.dirty, i);
                }
                _ => {}
            }
        }
        for i in gone {
            self.finish(i);
        }
        for (i, code) in close {
            self.close(i, outbound::close(code));
        }
    }

    /// Shutdown: tell everyone to reconnect elsewhere, then 1001.
    fn drain(&mut self) {
        self.draining = true;
        let note =
            protocol::system(SystemEvent::Drain { message: "server shutting down; reconnect and resume" });
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else { continue };
            if c.is_open() {
                c.outbox.push_text(&note, self.ctx.conn.outbound_limit);
                self.close(i, outbound::close(CloseCode::GoingAway));
            }
        }
    }
}
