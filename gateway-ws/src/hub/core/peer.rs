//! One connection as the hub core sees it: who it is, what it subscribed to, what waits
//! to be written, and the state of what the client sends. No socket: the driver owns
//! that and reports what it read and wrote.
//!
//! Memory per idle connection is the point of this shape: a peer is this struct (a few
//! hundred bytes); buffers are allocated only while something is in them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::outbox::Outbox;
use crate::auth::Session;
use crate::hub::UserQuota;
use crate::ws::inbound::{FrameReader, Inbound, Violation};

/// After our close frame: how long, and how much, the client's input is still read
/// and discarded, so that unread input does not make the kernel reset the connection
/// and destroy the close frame on its way.
pub const LINGER: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: usize = 256 * 1024;

/// More than this many ERRORs within [`ERROR_WINDOW`] closes with 1008.
pub const MAX_ERRORS: usize = 10;
pub const ERROR_WINDOW: Duration = Duration::from_secs(10);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// Our close frame is queued; input is discarded.
    Closing,
    /// Our close frame is out and the write side shut; reading until EOF, `LINGER` or
    /// `LINGER_BYTES`.
    Lingering {
        until: Instant,
        budget: usize,
    },
}

#[derive(Debug)]
pub(super) struct Peer {
    /// Unique within its core (slots are reused; serials are not).
    pub serial: u64,
    pub outbox: Outbox,
    pub session: Session,
    pub quota: Arc<UserQuota>,
    /// Signal channels subscribed: log index per channel tier.
    pub signals: [Option<u8>; 4],
    /// Where each of those subscriptions stands in its log's subscriber list, so that a
    /// close unlinks it without a scan of the shard's subscribers.
    pub sub_pos: [u32; 4],
    /// The filter of each signal channel's subscription (`None`: everything).
    pub filters: [Option<Arc<crate::protocol::filter::Filter>>; 4],
    /// `prices_general`: its watchlist and rate.
    pub prices: Option<super::prices::PriceSub>,
    pub user_channel: bool,
    /// How channel messages go to it: plain, the shard's shared compressed frames, or
    /// through a compressor of its own (context takeover, opted in).
    pub deflate: Deflate,
    pub warned_expiry: bool,
    pub phase: Phase,
    /// In the core's list of connections with something to write.
    pub dirty: bool,
    /// Since when the socket has been refusing bytes.
    pub blocked_since: Option<Instant>,
    /// The client's last bytes (heartbeat).
    pub last_seen: Instant,
    /// History read-backs asked for it and not answered yet, cancelled ones included
    /// (a read under way runs to its end).
    pub reads: u8,
    input: BytesMut,
    frames: FrameReader,
    rate: Bucket,
    errors: VecDeque<Instant>,
}

/// A connection's permessage-deflate.
#[derive(Debug)]
pub enum Deflate {
    Off,
    /// The shard's one compressed copy of each message.
    Shared,
    /// A compressor of its own, made at its first compressed message (an idle
    /// connection holds none).
    Context {
        window_bits: u8,
        c: Option<Box<crate::ws::deflate::ContextDeflater>>,
    },
}

impl Peer {
    pub fn new(session: Session, quota: Arc<UserQuota>, max_message: usize, now: Instant) -> Self {
        Self {
            serial: 0,
            outbox: Outbox::default(),
            session,
            quota,
            signals: [None; 4],
            sub_pos: [0; 4],
            filters: [None, None, None, None],
            prices: None,
            user_channel: false,
            deflate: Deflate::Off,
            warned_expiry: false,
            phase: Phase::Open,
            dirty: false,
            blocked_since: None,
            reads: 0,
            last_seen: now,
            input: BytesMut::new(),
            frames: FrameReader::new(max_message),
            rate: Bucket::new(now),
            errors: VecDeque::new(),
        }
    }

    /// permessage-deflate was negotiated: channel messages go compressed and
    /// compressed client messages are read.
    pub fn enable_deflate(&mut self, agreed: crate::ws::deflate::Agreed) {
        self.deflate = match agreed {
            crate::ws::deflate::Agreed::Shared => Deflate::Shared,
            crate::ws::deflate::Agreed::Context { window_bits } => Deflate::Context { window_bits, c: None },
        };
        self.frames.enable_deflate();
    }

    pub fn subscriptions(&self) -> usize {
        self.signals.iter().flatten().count()
            + usize::from(self.prices.is_some())
            + usize::from(self.user_channel)
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Puts connection `i` (this one) on the list of connections with something to
    /// write, once.
    pub fn mark_dirty(&mut self, dirty: &mut VecDeque<usize>, i: usize) {
        if !self.dirty {
            self.dirty = true;
            dirty.push_back(i);
        }
    }

    /// Takes bytes the client sent. False once a lingering connection has read its
    /// budget (drop it).
    pub fn take_input(&mut self, bytes: &[u8], now: Instant) -> bool {
        self.last_seen = now;
        match &mut self.phase {
            Phase::Open => self.input.extend_from_slice(bytes),
            Phase::Closing => {}
            Phase::Lingering { budget, .. } => {
                *budget = budget.saturating_sub(bytes.len());
                return *budget > 0;
            }
        }
        true
    }

    /// The next complete client frame in the input, if any.
    pub fn next_frame(&mut self) -> Result<Option<Inbound>, Violation> {
        if !self.is_open() {
            return Ok(None);
        }
        let next = self.frames.next(&mut self.input);
        if self.input.is_empty() && self.input.capacity() > 1024 {
            // A burst grew the buffer; an idle connection gives it back.
            self.input = BytesMut::new();
        }
        next
    }

    /// Takes a token for one client message (false: over the rate).
    pub fn admit_message(&mut self, per_sec: u32, now: Instant) -> bool {
        self.rate.take(per_sec, now)
    }

    /// Records an ERROR sent to the client; true when that makes more than
    /// [`MAX_ERRORS`] within [`ERROR_WINDOW`] (the caller then closes with 1008).
    pub fn record_error(&mut self, now: Instant) -> bool {
        while self.errors.front().is_some_and(|t| now.saturating_duration_since(*t) > ERROR_WINDOW) {
            self.errors.pop_front();
        }
        self.errors.push_back(now);
        self.errors.len() > MAX_ERRORS
    }
}

/// Token bucket for inbound messages.
#[derive(Debug)]
struct Bucket {
    tokens: f32,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self { tokens: f32::MAX, at: now }
    }

    fn take(&mut self, per_sec: u32, now: Instant) -> bool {
        let burst = per_sec as f32 * 2.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f32();
        self.tokens = (self.tokens + elapsed * per_sec as f32).min(burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
