//! Counters of the pipeline, read by the gateway's /metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Tier;

/// Why a signal (or tick) did not reach a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Confidence at or below the global bar.
    BelowConfidence,
    /// `expires_at` already past when the stage saw it.
    Expired,
    /// A producer seq already taken (a resend after reconnect).
    DuplicateSeq,
    /// A signal id already routed (within the de-duplication window).
    DuplicateId,
    /// No tick for the symbol and `missing_tick = "drop"`.
    MissingTick,
    /// Passed the global filter but no tier admits it (a policy with a tier bar above
    /// the global one everywhere).
    NoTier,
    /// A tick older than the one already held (ticks only).
    StaleTick,
    /// A tick for a new symbol with the tick book full (ticks only).
    TickBookFull,
    /// A tick stamped further in the future than `max_tick_ahead_ms` (ticks only): held,
    /// it would make every real tick of its symbol "stale" until a restart.
    FutureTick,
    /// A delayed view overflowed and lost its oldest message (per channel message).
    DelayOverflow,
}

impl DropReason {
    pub const ALL: [Self; 10] = [
        Self::BelowConfidence,
        Self::Expired,
        Self::DuplicateSeq,
        Self::DuplicateId,
        Self::MissingTick,
        Self::NoTier,
        Self::StaleTick,
        Self::TickBookFull,
        Self::FutureTick,
        Self::DelayOverflow,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BelowConfidence => "below_confidence",
            Self::Expired => "expired",
            Self::DuplicateSeq => "duplicate_seq",
            Self::DuplicateId => "duplicate_id",
            Self::MissingTick => "missing_tick",
            Self::NoTier => "no_tier",
            Self::StaleTick => "stale_tick",
            Self::TickBookFull => "tick_book_full",
            Self::FutureTick => "future_tick",
            Self::DelayOverflow => "delay_overflow",
        }
    }
}

/// Monotonic counters; the stage is their only writer.
#[derive(Debug, Default)]
pub struct PipelineStats {
    signals_in: AtomicU64,
    ticks_in: AtomicU64,
    routed: [AtomicU64; 4],
    drops: [AtomicU64; DropReason::ALL.len()],
    store_failures: AtomicU64,
    /// Closes published, per status (docs/outcomes.md), and signals not tracked
    /// because the tracker was full.
    closes: [AtomicU64; 5],
    untracked: AtomicU64,
    /// Signals being tracked now.
    open_signals: AtomicU64,
    /// Scale-out: open signals of symbols other nodes track, ready for a takeover.
    standby_signals: AtomicU64,
    /// The stage is waiting for the store to take a batch (disk full, read-only).
    store_stalled: std::sync::atomic::AtomicBool,
}

impl PipelineStats {
    pub(crate) fn signal_in(&self) {
        self.signals_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tick_in(&self) {
        self.ticks_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn routed_to(&self, tier: Tier) {
        self.routed[tier.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, status: crate::outcome::Status) {
        self.closes[status as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn untracked(&self) {
        self.untracked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_open_signals(&self, n: usize) {
        self.open_signals.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_standby_signals(&self, n: usize) {
        self.standby_signals.store(n as u64, Ordering::Relaxed);
    }

    /// Scale-out: open signals this engine node holds for a takeover (their symbols'
    /// partitions are on other nodes).
    pub fn standby_signals(&self) -> u64 {
        self.standby_signals.load(Ordering::Relaxed)
    }

    /// Closes published with `status`.
    pub fn closes(&self, status: crate::outcome::Status) -> u64 {
        self.closes[status as usize].load(Ordering::Relaxed)
    }

    /// Routed signals whose outcome is not tracked (the tracker was full).
    pub fn outcomes_untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Signals whose outcome is being tracked.
    pub fn open_signals(&self) -> u64 {
        self.open_signals.load(Ordering::Relaxed)
    }

    pub(crate) fn store_failed(&self) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_store_stalled(&self, stalled: bool) {
        self.store_stalled.store(stalled, Ordering::Relaxed);
    }

    /// The stage is waiting for the signal store: nothing is routed or acknowledged
    /// until a commit succeeds.
    pub fn store_stalled(&self) -> bool {
        self.store_stalled.load(Ordering::Relaxed)
    }

    /// Commits of the signal store that failed (each retried).
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn signals_in(&self) -> u64 {
        self.signals_in.load(Ordering::Relaxed)
    }

    pub fn ticks_in(&self) -> u64 {
        self.ticks_in.load(Ordering::Relaxed)
    }

    /// Messages appended to `signals_<tier>`.
    pub fn routed(&self, tier: Tier) -> u64 {
        self.routed[tier.index()].load(Ordering::Relaxed)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }
}
