//! Channels: where routed messages wait for the gateway.
//!
//! Every `signals_<tier>` channel has a [`ChannelLog`]: an epoch, a gap-free seq and a
//! ring of the last N encoded messages. Tiers whose users get a delayed feed also have a
//! delayed view: the same messages with the same seq, released later (see
//! `pipeline::delay`). The gateway reads both through [`ChannelLog::subscribe`] and
//! [`ChannelLog::read_after`].

mod history;
mod log;
mod message;
mod name;

pub use history::{History, HistoryError, HistoryReply};
pub use log::{ChannelLog, Epoch, ReadError, Resume, Subscription};
pub use message::{Message, MessageMeta, frame_header};
pub use name::{ChannelName, ChannelNameError};

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::model::Tier;
use crate::policy::TierPolicy;

/// All signal channel logs of one engine, and the bell rung after each batch.
pub struct ChannelSet {
    live: [ChannelLog; 4],
    delayed: [Option<ChannelLog>; 4],
    changed: watch::Sender<u64>,
    /// Called after each batch too: gateway shard threads are woken this way, without
    /// an async task in between.
    listeners: Mutex<Vec<Listener>>,
}

/// Called by [`ChannelSet`] after every batch that appended to a log; it must be quick
/// and must not block (e.g. an eventfd write).
pub type Listener = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for ChannelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSet")
            .field("live", &self.live)
            .field("delayed", &self.delayed)
            .finish_non_exhaustive()
    }
}

impl ChannelSet {
    /// One live log per tier, and a delayed view where the policy calls for one. Each
    /// delayed view shares its live log's epoch, since seq means the same in both.
    pub fn new(policy: &TierPolicy, ring_capacity: usize) -> Self {
        Self::build(policy, ring_capacity, Tier::ALL.map(|_| Epoch::random()), false)
    }

    /// Logs of this node with given epochs: a node restarted from its store keeps its
    /// channels' epochs, so that clients' resumes still name them.
    pub fn with_epochs(policy: &TierPolicy, ring_capacity: usize, epochs: [Epoch; 4]) -> Self {
        Self::build(policy, ring_capacity, epochs, false)
    }

    /// Logs that follow seqs assigned elsewhere, with given epochs: every gateway node
    /// that serves the same `signals.<tier>` topic derives the same epoch, and a client
    /// may resume on any of them (see [`ChannelLog::following`]).
    pub fn following(policy: &TierPolicy, ring_capacity: usize, epochs: [Epoch; 4]) -> Self {
        Self::build(policy, ring_capacity, epochs, true)
    }

    fn build(policy: &TierPolicy, ring_capacity: usize, epochs: [Epoch; 4], follows: bool) -> Self {
        let log = |name: String, epoch| {
            let log = ChannelLog::new(name, epoch, ring_capacity);
            if follows { log.following() } else { log }
        };
        let live = Tier::ALL.map(|t| log(ChannelName::Signals(t).to_string(), epochs[t.index()]));
        let delayed = Tier::ALL.map(|t| {
            (!policy.delayed_view(t).is_zero()).then(|| {
                let name = format!("{} (delayed)", ChannelName::Signals(t));
                log(name, live[t.index()].epoch())
            })
        });
        Self { live, delayed, changed: watch::Sender::new(0), listeners: Mutex::new(Vec::new()) }
    }

    /// The live log of `signals_<tier>`.
    pub fn live(&self, tier: Tier) -> &ChannelLog {
        &self.live[tier.index()]
    }

    /// The delayed view of `signals_<tier>`, if the policy has any delay for it.
    pub fn delayed(&self, tier: Tier) -> Option<&ChannelLog> {
        self.delayed[tier.index()].as_ref()
    }

    /// A receiver that changes after every batch that appended to any log.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Calls `f` after every batch that appended to any log, from the stage's thread.
    pub fn listen(&self, f: Listener) {
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner).push(f);
    }

    /// Rung by the stage once per batch, not per message.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
        for f in self.listeners.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            f();
        }
    }
}
