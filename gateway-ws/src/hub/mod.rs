//! Tier hubs: where channel messages meet connections.
//!
//! The hub is a few shard threads (one per core by default). A shard owns its
//! connections outright — sockets, subscriptions, outbound queues — and drives them
//! with one edge-triggered poller: no task per connection, no lock, no wake per
//! recipient. When the engine rings its bell a shard reads the channel logs by cursor,
//! queues each message on every subscribed connection as a reference-counted frame,
//! and sweeps the sockets that have something to write, one `writev` each, picking up
//! newer messages every few dozen sockets (docs/PERFORMANCE.md, "The floor").
//!
//! Every decision — who may subscribe to what, which message reaches whom, prices,
//! expiry, slow consumers — is made by the I/O-free [`core::Core`], one per shard; the
//! shard thread only moves bytes between it and the sockets.
//!
//! - [`core`]: the rules, fed events with their time, tested without sockets.
//! - `shard`: the thread's loop: poller, sockets, timers; drives its core.
//! - [`quota`]: daily quotas shared by a user's connections across shards.

pub mod core;
pub mod quota;
mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use engine::Engine;

use crate::auth::{Authenticator, Entitlements, Session};
use crate::conn::{ConnConfig, Io};
use crate::metrics::GatewayStats;

pub use self::core::Timing;
pub use quota::{QuotaBook, UserQuota};

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Shard threads; 0 = one per core.
    pub shards: usize,
    pub max_subscriptions: usize,
    /// The most messages a SUBSCRIBE's `snapshot` may ask for.
    pub max_snapshot: usize,
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
            max_snapshot: 100,
            heartbeat_timeout: Duration::from_secs(60),
            expiry_warning: Duration::from_secs(60),
            price_interval: Duration::from_millis(20),
        }
    }
}

/// A connection handed to the hub after its upgrade.
#[derive(Debug)]
pub struct Attach {
    pub io: Io,
    /// Bytes the client sent right after the upgrade request.
    pub input: BytesMut,
    /// The 101 response, when the shard is to write it (ahead of WELCOME, in the same
    /// `writev`); `None` when hyper already did.
    pub preamble: Option<std::sync::Arc<[u8]>>,
    pub session: Session,
    /// The connection's place under the per-IP and per-user limits, given back when
    /// the connection is dropped.
    pub admitted: Option<crate::admission::Admitted>,
    /// Channels named in the upgrade request (`?subscribe=`), subscribed as it opens.
    pub subscribe: Vec<engine::channels::ChannelName>,
    /// permessage-deflate, as negotiated in the upgrade.
    pub deflate: Option<crate::ws::deflate::Agreed>,
}

enum Cmd {
    Attach(Box<Attach>),
    /// A user's rights changed (accounts change feed).
    Rights(Arc<Entitlements>),
    /// A history read-back for a waiting subscription.
    History(Box<core::HistoryDone>),
    /// Tell every client to go (SYSTEM_MESSAGE drain, then 1001).
    Drain,
    Stop,
    /// Dies as a bug would (tests of what a shard's death does).
    #[cfg(test)]
    Crash,
}

struct ShardHandle {
    tx: SyncSender<Cmd>,
    waker: Arc<mio::Waker>,
}

impl ShardHandle {
    fn send(&self, cmd: Cmd) -> Result<(), TrySendError<Cmd>> {
        self.tx.try_send(cmd)?;
        let _ = self.waker.wake();
        Ok(())
    }
}

/// The running shards. Dropping it stops them.
pub struct Hub {
    shards: Vec<ShardHandle>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
    quotas: Arc<QuotaBook>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

/// Why a connection could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("hub shard is full of pending connections")]
    Busy,
    #[error("hub is stopped")]
    Stopped,
}

impl Hub {
    /// Starts the shard threads and hooks them to the engine's bell. A shard that dies
    /// ends the process ([`engine::critical::exit_process`]): its connections are
    /// gone, and a process with a dead shard would fail every Nth upgrade; a restart
    /// lets clients reconnect and resume.
    pub fn start(
        engine: Arc<Engine>,
        auth: Arc<dyn Authenticator>,
        stats: Arc<GatewayStats>,
        hub: HubConfig,
        conn: ConnConfig,
    ) -> std::io::Result<Self> {
        Self::start_with(engine, auth, stats, hub, conn, engine::critical::exit_process())
    }

    /// [`start`](Hub::start), with what to do when a shard dies.
    pub fn start_with(
        engine: Arc<Engine>,
        auth: Arc<dyn Authenticator>,
        stats: Arc<GatewayStats>,
        hub: HubConfig,
        conn: ConnConfig,
        on_death: engine::critical::OnDeath,
    ) -> std::io::Result<Self> {
        let n = if hub.shards == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            hub.shards
        };
        let quotas = Arc::new(QuotaBook::default());
        let src = core::Sources {
            channels: Arc::clone(&engine.channels),
            ticks: Arc::clone(&engine.ticks),
            policy: Arc::clone(&engine.policy),
            history: engine.history.is_some(),
            auth,
            stats,
            quotas: Arc::clone(&quotas),
            hub,
            conn,
        };
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            // Connections arrive at handshake speed, which a shard outpaces; 1,024
            // absorbs a reconnect storm. When full, the next shard takes it; when every
            // one is, the upgrade is dropped (the client sees the connection close and
            // retries with backoff).
            let (tx, rx) = std::sync::mpsc::sync_channel(1_024);
            let shard = shard::Shard::new(i, src.clone(), engine.history.clone(), tx.clone(), rx)?;
            shards.push(ShardHandle { tx, waker: shard.waker() });
            threads.push(engine::critical::spawn(
                format!("hub-shard-{i}"),
                Arc::clone(&on_death),
                move || shard.run(),
            )?);
        }
        let wakers: Vec<Arc<mio::Waker>> = shards.iter().map(|s| Arc::clone(&s.waker)).collect();
        engine.channels.listen(Arc::new(move || {
            for w in &wakers {
                let _ = w.wake();
            }
        }));
        Ok(Self { shards, threads: std::sync::Mutex::new(threads), next: AtomicUsize::new(0), quotas })
    }

    /// The daily quotas of every user, which HTTP history charges too.
    pub fn quotas(&self) -> &Arc<QuotaBook> {
        &self.quotas
    }

    /// Places a connection on the next shard (round robin); a shard whose queue is full
    /// passes it to the next one, so a connection is dropped only when every shard is
    /// full.
    pub fn attach(&self, a: Attach) -> Result<(), AttachError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut cmd = Cmd::Attach(Box::new(a));
        for k in 0..self.shards.len() {
            match self.shards[(first + k) % self.shards.len()].send(cmd) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => cmd = back,
                Err(TrySendError::Disconnected(_)) => return Err(AttachError::Stopped),
            }
        }
        Err(AttachError::Busy)
    }

    /// Tells every client to reconnect elsewhere (SYSTEM_MESSAGE drain, close 1001).
    pub fn drain(&self) {
        for s in &self.shards {
            let _ = s.send(Cmd::Drain);
        }
    }

    /// Stops the shards (their connections are dropped) and waits for them.
    pub fn stop(&self) {
        for s in &self.shards {
            // A full queue cannot block Stop: the shard also stops when this sender
            // is dropped, and `Drop` gets there.
            let _ = s.send(Cmd::Stop);
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A handle that tells every shard about rights changes.
    pub fn rights(&self) -> RightsSender {
        RightsSender { shards: self.shards.iter().map(|s| (s.tx.clone(), Arc::clone(&s.waker))).collect() }
    }
}

/// Sends rights changes to every shard (cloneable, for the accounts change feed).
#[derive(Clone)]
pub struct RightsSender {
    shards: Vec<(SyncSender<Cmd>, Arc<mio::Waker>)>,
}

impl std::fmt::Debug for RightsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RightsSender").field("shards", &self.shards.len()).finish()
    }
}

impl RightsSender {
    /// Applies `e` to the user's live connections on every shard: new tier, categories,
    /// limit and view at once, or close 4003 on suspension.
    pub fn send(&self, e: &Entitlements) {
        let e = Arc::new(e.clone());
        for (tx, waker) in &self.shards {
            // Changes are rare; a shard whose queue is full (a connection storm) gets
            // this one late rather than never: send waits.
            if tx.send(Cmd::Rights(Arc::clone(&e))).is_ok() {
                let _ = waker.wake();
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for s in &self.shards {
            let _ = s.send(Cmd::Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn a_shard_that_dies_is_reported_not_left_half_alive() {
        let engine = Arc::new(
            Engine::start(engine::config::EngineConfig::default(), engine::policy::TierPolicy::default())
                .unwrap(),
        );
        let accounts = crate::auth::Accounts::from_toml(crate::config::fixtures::ACCOUNTS).unwrap();
        let auth = Arc::new(crate::auth::DevAuth::new(b"a secret for this test, 32 bytes+", accounts));
        let deaths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&deaths);
        let on_death: engine::critical::OnDeath =
            Arc::new(move |t: &str, why: &str| seen.lock().unwrap().push(format!("{t}: {why}")));
        let hub = Hub::start_with(
            engine,
            auth,
            Arc::default(),
            HubConfig { shards: 2, ..HubConfig::default() },
            ConnConfig::default(),
            on_death,
        )
        .unwrap();
        hub.shards[1].send(Cmd::Crash).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while deaths.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the death was never reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*deaths.lock().unwrap(), ["hub-shard-1: panicked: hub shard 1 crashed on request"]);
        hub.stop();
        assert_eq!(deaths.lock().unwrap().len(), 1, "a shard told to stop is not a death");
    }
}
