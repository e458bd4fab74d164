//! One WebSocket connection after the upgrade: its socket, its outbound queue and the
//! state of what the client sends. A connection has no task and no lock: the hub shard
//! that owns it reads and writes it when the poller says it can (`hub::shard`).
//!
//! Memory per idle connection is the point of this shape: a connection is this struct
//! (a few hundred bytes) plus the kernel's socket; buffers are allocated only while
//! something is in them.

mod io;
mod outbox;

pub use io::Io;
pub use outbox::{IOVECS, Out, Outbox, Pushed, Timing};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::auth::Session;
use crate::hub::UserQuota;
use crate::ws::inbound::{FrameReader, Inbound, Violation};

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Largest client message (all fragments), bytes.
    pub max_message: usize,
    /// Outbound buffer bound, bytes; past it, close 4008.
    pub outbound_limit: usize,
    /// A socket that takes nothing for this long is dropped.
    pub write_timeout: Duration,
    /// Client messages per second (a burst of twice this is allowed).
    pub max_messages_per_sec: u32,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_message: 4_096,
            outbound_limit: 1 << 20,
            write_timeout: Duration::from_secs(10),
            max_messages_per_sec: 50,
        }
    }
}

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

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket has nothing more for now.
    Drained,
    /// The per-event budget was used; read again before waiting.
    Budget,
    /// The client closed or the socket failed.
    Gone,
}

/// A connection, owned by one hub shard.
#[derive(Debug)]
pub struct Conn {
    /// Unique within its shard (slots are reused; serials are not).
    pub serial: u64,
    /// Its place under the connection limits; released when the connection is dropped.
    pub admitted: Option<crate::admission::Admitted>,
    pub io: Io,
    pub outbox: Outbox,
    pub session: Session,
    pub quota: Arc<UserQuota>,
    /// Signal channels subscribed: log index per channel tier.
    pub signals: [Option<u8>; 4],
    pub prices: bool,
    pub user_channel: bool,
    pub warned_expiry: bool,
    pub phase: Phase,
    /// The socket took everything last time; false after `WouldBlock` until the
    /// poller reports it writable again.
    pub writable: bool,
    /// In the shard's list of connections with something to write.
    pub dirty: bool,
    /// Since when the socket has been refusing bytes.
    pub blocked_since: Option<Instant>,
    /// The client's last frame (heartbeat).
    pub last_seen: Instant,
    input: BytesMut,
    frames: FrameReader,
    rate: Bucket,
    errors: VecDeque<Instant>,
}

impl Conn {
    pub fn new(io: Io, session: Session, quota: Arc<UserQuota>, input: BytesMut, max_message: usize) -> Self {
        Self {
            serial: 0,
            admitted: None,
            io,
            outbox: Outbox::default(),
            session,
            quota,
            signals: [None; 4],
            prices: false,
            user_channel: false,
            warned_expiry: false,
            phase: Phase::Open,
            writable: true,
            dirty: false,
            blocked_since: None,
            last_seen: Instant::now(),
            input,
            frames: FrameReader::new(max_message),
            rate: Bucket::default(),
            errors: VecDeque::new(),
        }
    }

    pub fn subscriptions(&self) -> usize {
        self.signals.iter().flatten().count() + usize::from(self.prices) + usize::from(self.user_channel)
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Puts connection `i` (this one) on the shard's list of connections with
    /// something to write, once.
    pub fn mark_dirty(&mut self, dirty: &mut VecDeque<usize>, i: usize) {
        if !self.dirty {
            self.dirty = true;
            dirty.push_back(i);
        }
    }

    /// The socket refused bytes: wait for its writable event (and time the stall).
    pub fn stalled(&mut self) {
        self.writable = false;
        self.blocked_since.get_or_insert_with(Instant::now);
    }

    /// Reads what the socket has, up to `budget` bytes, into the input buffer (or, once
    /// closing, into nothing).
    pub fn read(&mut self, scratch: &mut [u8], budget: usize) -> ReadEnd {
        let mut taken = 0;
        loop {
            if taken >= budget {
                return ReadEnd::Budget;
            }
            match self.io.read(scratch) {
                Ok(0) => return ReadEnd::Gone,
                Ok(n) => {
                    taken += n;
                    self.last_seen = Instant::now();
                    match &mut self.phase {
                        Phase::Open => self.input.extend_from_slice(&scratch[..n]),
                        Phase::Closing => {}
                        Phase::Lingering { budget, .. } => {
                            *budget = budget.saturating_sub(n);
                            if *budget == 0 {
                                return ReadEnd::Gone;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return ReadEnd::Gone,
            }
        }
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
    pub fn admit_message(&mut self, per_sec: u32) -> bool {
        self.rate.take(per_sec)
    }

    /// Records an ERROR sent to the client; true when that makes more than
    /// [`MAX_ERRORS`] within [`ERROR_WINDOW`] (the caller then closes with 1008).
    pub fn record_error(&mut self) -> bool {
        let now = Instant::now();
        while self.errors.front().is_some_and(|t| now.duration_since(*t) > ERROR_WINDOW) {
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

impl Default for Bucket {
    fn default() -> Self {
        Self { tokens: f32::MAX, at: Instant::now() }
    }
}

impl Bucket {
    fn take(&mut self, per_sec: u32) -> bool {
        let burst = per_sec as f32 * 2.0;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f32() * per_sec as f32).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
