//! The hub's decisions, with no I/O: who may subscribe to what, which message reaches
//! whom (tier, categories, quota, delayed view, resume), price conflation, token expiry,
//! heartbeats, slow consumers, drain.
//!
//! A [`Core`] owns every connection of one shard as a [`peer::Peer`] — session,
//! subscriptions, outbound queue, inbound frame state — and is fed events with the time
//! they happen at: a connection attached, bytes read, bytes written, the socket blocked
//! or writable, the peer gone, a rights change, a history read-back, a timer, a drain.
//! The driver (the shard thread, `hub::shard`) owns the sockets and only asks the core
//! what to write ([`Core::next_to_write`], [`Core::fill`]), whom to drop
//! ([`Core::poll_gone`]) and which history reads to start ([`Core::poll_request`]). So
//! every rule is tested here without a socket, a thread or a real second (`tests`).
//!
//! - `client`: what a client's messages do (SUBSCRIBE, REFRESH, ...).
//! - `fanout`: channel logs and prices to outboxes; subscriptions.
//! - `history`: resumes from before the ring, read back from the topic.
//! - [`outbox`]: a connection's bounded outbound queue.
//! - `peer`: one connection's state.

mod client;
mod fanout;
mod history;
pub mod outbox;
mod peer;
pub mod prices;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::channels::{ChannelSet, Message};
use engine::model::UnixNanos;
use engine::policy::TierPolicy;
use engine::ticks::TickBook;

pub use history::{HistoryDone, HistoryRequest};
pub use outbox::{IOVECS, Out, Pushed, Timing};
pub use peer::{LINGER, LINGER_BYTES, MAX_ERRORS, Phase};

use self::peer::Peer;
use super::{HubConfig, QuotaBook};
use crate::auth::{Authenticator, Session};
use crate::conn::ConnConfig;
use crate::metrics::{GatewayStats, LocalStats};
use crate::protocol::{self, SystemEvent};
use crate::ws::{CloseCode, outbound};

/// Eight logs: the live log and the delayed view of each tier (`tier * 2 + delayed`).
const LOGS: usize = 8;

/// zlib level of the shared compressor. zlib-rs's level 1 is the "quick" strategy
/// (static Huffman codes): 0.749 of the wire bytes on the fixture mix at 6.5 µs a
/// message; level 2 gives 0.598 at 15.2 µs and level 6 0.595 at 16.3 µs
/// (`cargo bench -p signalcast-gateway --bench deflate`). A message is compressed once
/// per shard, not per delivery, so the bytes win (decision 139).
pub(crate) const DEFLATE_LEVEL: u32 = 6;

/// A connection's handle inside its core (and the driver's poller token).
pub type ConnId = usize;

/// Connection slots reserved (address space, not memory) per shard, for the core's
/// peers and the driver's sockets alike. Pages of a `Vec`'s buffer count in RSS only
/// once written, so this costs nothing until connections come; and neither table is
/// ever copied to grow (a copy is a stall in a reconnect storm, and leaves the old
/// buffer as freed memory the allocator holds on to for a while: 0.2 KiB per idle
/// connection at 10,000 in the memory scenario, measured). Past it, the tables grow as
/// usual.
pub const SLOTS_RESERVED: usize = 1 << 16;

/// History read-backs one connection may have under way at once: one per signal
/// channel. Past it a resume or snapshot that needs one is answered as by a busy
/// reader (`recovered: false`; a snapshot from the ring alone).
pub const MAX_READS_PER_CONN: u8 = 4;

/// The time of an event: monotonic for timeouts and rates, wall clock for what the
/// protocol states in Unix time (token expiry, UTC days, delivery latency).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono: Instant,
    pub unix: UnixNanos,
}

impl Clock {
    pub fn now() -> Self {
        Self { mono: Instant::now(), unix: UnixNanos::now() }
    }

    /// This clock `d` later.
    pub fn plus(self, d: Duration) -> Self {
        Self { mono: self.mono + d, unix: self.unix.plus_nanos(d.as_nanos() as i64) }
    }

    fn unix_secs(self) -> i64 {
        self.unix.0 / 1_000_000_000
    }
}

/// What a core reads and shares: the engine's channel logs and tick book, the tier
/// policy, tokens (REFRESH), counters and the users' daily quotas.
#[derive(Clone)]
pub struct Sources {
    pub channels: Arc<ChannelSet>,
    pub ticks: Arc<TickBook>,
    pub policy: Arc<TierPolicy>,
    /// The node can read channel history back from its topics (gateway role).
    pub history: bool,
    pub auth: Arc<dyn Authenticator>,
    pub stats: Arc<GatewayStats>,
    pub quotas: Arc<QuotaBook>,
    pub hub: HubConfig,
    pub conn: ConnConfig,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("history", &self.history).finish_non_exhaustive()
    }
}

/// A subscription to one log, with what the fan-out needs inline (no lookup per
/// recipient).
#[derive(Debug)]
struct Sub {
    pub conn: ConnId,
    pub categories: engine::model::CategoryMask,
    pub quota: Arc<super::UserQuota>,
    pub limit: Option<u32>,
    /// Messages up to this seq were replayed or predate the subscription.
    pub skip_until: u64,
    /// Last seq queued or skipped for this subscriber (to move it between views).
    pub last_seq: u64,
    /// Only messages that pass this (the subscription's SUBSCRIBE `filter`).
    pub filter: Option<Arc<crate::protocol::filter::Filter>>,
}

/// What reading some bytes from a connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Keep reading.
    More,
    /// A lingering connection has read all it may: drop it.
    Enough,
}

pub struct Core {
    index: usize,
    src: Sources,
    /// Connections by id; `None` slots are free.
    conns: Vec<Option<Peer>>,
    free: Vec<ConnId>,
    /// Connections attached so far: each gets the next as its serial.
    attached: u64,
    subs: [Vec<Sub>; LOGS],
    cursors: [u64; LOGS],
    /// `prices_general`: frames per (symbol, rate) and who watches what.
    prices: prices::Prices,
    /// Signal channels' filters, each distinct one once.
    filters: crate::protocol::filter::Interner,
    /// Compresses each channel message once for the shard's permessage-deflate
    /// connections.
    deflater: crate::ws::deflate::Deflater,
    /// Connections with something to write, in the order they got it.
    dirty: VecDeque<ConnId>,
    /// Subscriptions waiting for a history read-back, and reads to start.
    pending: Vec<history::Pending>,
    /// A snapshot's older part, read back from the node's history, for the snapshot
    /// being sent now ([`Core::send_snapshot`] takes it).
    snapshot_older: Vec<Message>,
    requests: VecDeque<HistoryRequest>,
    /// Connections the driver must drop now (stalled, lingered long enough).
    gone: Vec<ConnId>,
    /// Reused buffers.
    batch: Vec<Message>,
    overflowed: Vec<ConnId>,
    exhausted: Vec<ConnId>,
    local: LocalStats,
    next_prices: Instant,
    next_sweep: Instant,
    draining: bool,
    /// The time of the event being handled (for the rules that need it deep inside).
    now: Clock,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.index)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(index: usize, src: Sources, now: Clock) -> Self {
        Self {
            index,
            src,
            conns: Vec::with_capacity(SLOTS_RESERVED),
            free: Vec::new(),
            attached: 0,
            subs: Default::default(),
            cursors: [0; LOGS],
            prices: prices::Prices::default(),
            filters: crate::protocol::filter::Interner::default(),
            deflater: crate::ws::deflate::Deflater::new(DEFLATE_LEVEL),
            dirty: VecDeque::new(),
            pending: Vec::new(),
            snapshot_older: Vec::new(),
            requests: VecDeque::new(),
            gone: Vec::new(),
            batch: Vec::with_capacity(256),
            overflowed: Vec::new(),
            exhausted: Vec::new(),
            local: LocalStats::default(),
            next_prices: now.mono,
            next_sweep: now.mono + Duration::from_secs(1),
            draining: false,
            now,
        }
    }

    /// Connection `i` negotiated permessage-deflate (right after [`Core::attach`]): its
    /// channel messages go compressed, and its compressed messages are read.
    pub fn enable_deflate(&mut self, i: ConnId, agreed: crate::ws::deflate::Agreed) {
        if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            c.enable_deflate(agreed);
        }
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    // ----- events in -----

    /// A connection was upgraded with `session`: `preamble` (the 101 response, when it
    /// is still to be written) and WELCOME are queued (or, while draining, the preamble
    /// and a 1001 close). Then hand it the bytes that came with the upgrade
    /// ([`received`]).
    ///
    /// [`received`]: Core::received
    pub fn attach(&mut self, session: Session, preamble: Option<Arc<[u8]>>, now: Clock) -> ConnId {
        self.now = now;
        let i = self.free.pop().unwrap_or(self.conns.len());
        if i == self.conns.len() {
            self.conns.push(None);
        }
        self.src.stats.connected(session.tier, 1);
        let welcome = protocol::system(SystemEvent::Welcome {
            user: &session.user_id,
            tier: session.tier,
            real_time: session.real_time,
            token_expires_at: session.expires_at,
            heartbeat_interval_s: self.src.hub.heartbeat_timeout.as_secs() / 2,
            server: protocol::SERVER,
        });
        let quota = self.src.quotas.user(&session.user_id, crate::hub::quota::utc_day(now.unix.0));
        let mut peer = Peer::new(session, quota, self.src.conn.max_message, now.mono);
        self.attached += 1;
        peer.serial = self.attached;
        if let Some(head) = preamble {
            peer.outbox.push(Out::Http(head), self.src.conn.outbound_limit);
        }
        if self.draining {
            peer.outbox.close(outbound::close(CloseCode::GoingAway));
        } else {
            peer.outbox.push_text(&welcome, self.src.conn.outbound_limit);
        }
        tracing::debug!(shard = self.index, conn = i, user = %peer.session.user_id, "websocket open");
        self.conns[i] = Some(peer);
        self.mark_dirty(i);
        i
    }

    /// Bytes read from connection `i`: every complete client message is acted on.
    pub fn received(&mut self, i: ConnId, bytes: &[u8], now: Clock) -> Received {
        self.now = now;
        let Some(c) = self.peer(i) else { return Received::Enough };
        if !c.take_input(bytes, now.mono) {
            return Received::Enough;
        }
        while let Some(c) = self.peer(i) {
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
        Received::More
    }

    /// Connection `i`'s socket can take bytes again.
    pub fn writable(&mut self, i: ConnId) {
        self.mark_dirty(i);
    }

    /// Connection `i`'s socket refused bytes: its stall is timed from now (and the
    /// driver waits for it to be writable).
    pub fn blocked(&mut self, i: ConnId, now: Clock) {
        if let Some(c) = self.peer(i) {
            c.blocked_since.get_or_insert(now.mono);
        }
    }

    /// Connection `i` is gone (the peer closed, the socket failed, or the driver drops
    /// it): its subscriptions and its slot are freed.
    pub fn remove(&mut self, i: ConnId) {
        self.forget_subscriptions(i);
        self.pending.retain(|p| p.conn != i);
        let Some(c) = self.conns.get_mut(i).and_then(Option::take) else { return };
        self.src.stats.connected(c.session.tier, -1);
        self.free.push(i);
        tracing::debug!(shard = self.index, conn = i, user = %c.session.user_id, "websocket closed");
    }

    /// Tell every client to reconnect elsewhere: SYSTEM_MESSAGE drain, then 1001.
    pub fn drain(&mut self) {
        self.draining = true;
        let note =
            protocol::system(SystemEvent::Drain { message: "server shutting down; reconnect and resume" });
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else { continue };
            if c.is_open() {
                c.outbox.push_text(&note, self.src.conn.outbound_limit);
                self.close(i, outbound::close(CloseCode::GoingAway));
            }
        }
    }

    /// When [`on_timer`](Core::on_timer) next has something to do.
    pub fn next_timer(&self) -> Instant {
        if self.prices.is_empty() { self.next_sweep } else { self.next_sweep.min(self.next_prices) }
    }

    /// Timers due at `now`: conflated prices every `price_interval`, and once a second
    /// token expiry (warning, then 4001), heartbeats (4004), stalled and lingering
    /// sockets.
    pub fn on_timer(&mut self, now: Clock) {
        self.now = now;
        if now.mono >= self.next_prices {
            self.next_prices = now.mono + self.src.hub.price_interval;
            if !self.prices.is_empty() {
                self.fan_out_prices();
            }
        }
        if now.mono >= self.next_sweep {
            self.next_sweep = now.mono + Duration::from_secs(1);
            self.sweep(now);
        }
    }

    // ----- what the driver asks -----

    /// The next connection with something to write, if any (each is returned once per
    /// [`mark_dirty`](Core::writable); the driver skips those it cannot write now and
    /// gets them back when it reports them writable).
    pub fn next_to_write(&mut self) -> Option<ConnId> {
        while let Some(i) = self.dirty.pop_front() {
            if let Some(c) = self.peer(i) {
                c.dirty = false;
                return Some(i);
            }
        }
        None
    }

    /// Anything waiting to be written.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Fills `slices` with what connection `i` should write next, first byte first;
    /// returns how many (0: nothing left).
    pub fn fill<'a>(&'a mut self, i: ConnId, slices: &mut [IoSlice<'a>; IOVECS]) -> usize {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return 0 };
        c.outbox.settle(self.prices.frames(c.prices.as_ref().map_or(0, |p| p.rate)));
        c.outbox.fill(slices)
    }

    /// The socket took `n` bytes of what [`fill`](Core::fill) offered.
    pub fn written(&mut self, i: ConnId, n: usize, now: UnixNanos) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        // The write timeout counts from the last progress, not the first stall.
        c.blocked_since = None;
        let local = &mut self.local;
        c.outbox.advance(n, |m, tier, timing| {
            local.delivered(tier, timing, now.0.saturating_sub(m.ingest_ts().0))
        });
    }

    /// Everything of connection `i` is written. True when that included our close
    /// frame: the driver shuts the socket's write side, and the connection lingers
    /// (input read and discarded) until EOF, [`LINGER`] or [`LINGER_BYTES`]. `now` is
    /// read only then: a clock read on every write was 1% of a shard's time.
    pub fn flushed(&mut self, i: ConnId, now: impl FnOnce() -> Instant) -> bool {
        let Some(c) = self.peer(i) else { return false };
        c.blocked_since = None;
        if c.outbox.close_sent() && !matches!(c.phase, Phase::Lingering { .. }) {
            c.phase = Phase::Lingering { until: now() + LINGER, budget: LINGER_BYTES };
            return true;
        }
        false
    }

    /// The next connection to drop at once (no more writing): it stalled past the
    /// write timeout or lingered long enough. The driver closes its socket and calls
    /// [`remove`](Core::remove).
    pub fn poll_gone(&mut self) -> Option<ConnId> {
        self.gone.pop()
    }

    /// The next history read to start; its result comes back as
    /// [`history_done`](Core::history_done).
    pub fn poll_request(&mut self) -> Option<HistoryRequest> {
        while let Some(req) = self.requests.pop_front() {
            let Some(c) =
                self.conns.get_mut(req.conn).and_then(Option::as_mut).filter(|c| c.serial == req.serial)
            else {
                continue; // gone: nobody to read for
            };
            c.reads += 1;
            if c.reads <= MAX_READS_PER_CONN {
                return Some(req);
            }
            // One client's read-backs may not fill the reader's queue for everyone
            // else: answered as a busy reader would be (`recovered: false`).
            self.history_done(req.done(Err(engine::channels::HistoryError::Busy)), self.now);
        }
        None
    }

    /// Bytes in connection `i`'s write queue (pending prices are bits until queued).
    pub fn queued_bytes(&self, i: ConnId) -> usize {
        self.conns.get(i).and_then(Option::as_ref).map_or(0, |c| c.outbox.queued_bytes())
    }

    /// Adds this core's delivery counts to the shared counters.
    pub fn publish_stats(&mut self) {
        self.local.publish(&self.src.stats);
    }

    // ----- shared by the rules -----

    fn peer(&mut self, i: ConnId) -> Option<&mut Peer> {
        self.conns.get_mut(i).and_then(Option::as_mut)
    }

    fn mark_dirty(&mut self, i: ConnId) {
        if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
            c.mark_dirty(&mut self.dirty, i);
        }
    }

    /// Queues `frame` (a close frame) after what is queued and stops all deliveries.
    fn close(&mut self, i: ConnId, frame: Vec<u8>) {
        let Some(c) = self.peer(i) else { return };
        if c.phase == Phase::Open {
            c.phase = Phase::Closing;
        }
        c.outbox.close(frame);
        self.forget_subscriptions(i);
        self.mark_dirty(i);
    }

    fn sweep(&mut self, now: Clock) {
        let now_s = now.unix_secs();
        let warn = self.src.hub.expiry_warning.as_secs() as i64;
        let silent = self.src.hub.heartbeat_timeout;
        let stalled = self.src.conn.write_timeout;
        let limit = self.src.conn.outbound_limit;
        let mut close = Vec::new();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if c.blocked_since.is_some_and(|t| now.mono.saturating_duration_since(t) > stalled) {
                self.gone.push(i);
                continue;
            }
            match c.phase {
                Phase::Lingering { until, .. } if now.mono >= until => self.gone.push(i),
                Phase::Open if now_s >= c.session.expires_at => close.push((i, CloseCode::TokenExpired)),
                Phase::Open if now.mono.saturating_duration_since(c.last_seen) > silent => {
                    close.push((i, CloseCode::HeartbeatTimeout));
                }
                Phase::Open if !c.warned_expiry && now_s >= c.session.expires_at - warn => {
                    c.warned_expiry = true;
                    let note = protocol::system(SystemEvent::TokenExpiring {
                        token_expires_at: c.session.expires_at,
                    });
                    c.outbox.push_text(&note, limit);
                    c.mark_dirty(&mut self.dirty, i);
                }
                _ => {}
            }
        }
        for (i, code) in close {
            self.close(i, outbound::close(code));
        }
    }
}
