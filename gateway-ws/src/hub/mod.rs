//! Tier hubs: where channel messages meet connections.
//!
//! The hub is split into shards (one per worker thread by default). A shard owns its
//! connections' subscriptions outright: no lock is shared between shards, and each
//! message is handled by a shard once, then handed to each subscribed connection's
//! outbox as a reference-counted frame (no re-encoding, no allocation per recipient).
//! Shards read the engine's channel logs by cursor when the engine's bell rings.

mod quota;
mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use engine::Engine;
use engine::channels::{ChannelName, Resume};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::Session;
use crate::conn::Outbox;
use crate::metrics::GatewayStats;

pub use quota::{QuotaBook, UserQuota};

/// Identifies a connection within the process.
pub type ConnId = u64;

/// What connections ask of their shard.
#[derive(Debug)]
pub enum Cmd {
    Attach {
        id: ConnId,
        session: Session,
        outbox: Arc<Outbox>,
    },
    Detach {
        id: ConnId,
    },
    Subscribe {
        id: ConnId,
        channel: ChannelName,
        resume: Option<Resume>,
    },
    Unsubscribe {
        id: ConnId,
        channel: ChannelName,
    },
    /// A verified REFRESH: new expiry and entitlements for the same user.
    Refresh {
        id: ConnId,
        session: Session,
    },
}

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub shards: usize,
    pub max_subscriptions: usize,
    /// Nothing from a client for this long closes it with 4004.
    pub heartbeat_timeout: Duration,
    /// SYSTEM_MESSAGE `token_expiring` goes out this long before `exp`.
    pub expiry_warning: Duration,
    /// How often conflated price updates go out.
    pub price_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            max_subscriptions: 16,
            heartbeat_timeout: Duration::from_secs(60),
            expiry_warning: Duration::from_secs(60),
            price_interval: Duration::from_millis(20),
        }
    }
}

/// Sends connections to shards.
#[derive(Clone, Debug)]
pub struct Hub {
    shards: Arc<[mpsc::Sender<Cmd>]>,
    next_shard: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
}

/// A connection's place in the hub.
#[derive(Clone, Debug)]
pub struct ShardLink {
    pub id: ConnId,
    tx: mpsc::Sender<Cmd>,
}

impl ShardLink {
    /// Sends a command; false if the shard is gone (shutting down).
    pub async fn send(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

impl Hub {
    /// Starts the shards; they drain (notice + 1001) when `drain` turns true.
    pub fn start(
        engine: &Engine,
        stats: Arc<GatewayStats>,
        config: HubConfig,
        drain: watch::Receiver<bool>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let n = if config.shards == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            config.shards
        };
        let quotas = Arc::new(QuotaBook::default());
        let mut senders = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            // Commands are rare (subscribe, unsubscribe, connect); 1,024 absorbs a
            // reconnect storm without making senders wait long.
            let (tx, rx) = mpsc::channel(1_024);
            senders.push(tx);
            let shard = shard::Shard::new(i, engine, Arc::clone(&stats), Arc::clone(&quotas), config.clone());
            tasks.push(tokio::spawn(shard.run(rx, drain.clone())));
        }
        let hub = Self {
            shards: senders.into(),
            next_shard: Arc::new(AtomicUsize::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        (hub, tasks)
    }

    /// Places a new connection on the next shard (round robin).
    pub fn link(&self) -> ShardLink {
        let i = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        ShardLink { id: self.next_id.fetch_add(1, Ordering::Relaxed), tx: self.shards[i].clone() }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}
