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
    /// Tell every client to go (SYSTEM_MESSAGE drain, then 1001).
    Drain,
    Stop,
    /// Dies as a bug would (tests of what a shard's death does).
    #[cfg(test)]
    Crash,
    /// Tells the first that it holds the shard, then holds it until the second's sender
    /// is dropped (tests of a shard that falls behind).
    #[cfg(test)]
    Stall(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>),
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

impl Attach {
    /// Turns away a connection no shard could take: `503 hub_busy` with `retry-after: 1`
    /// when its 101 is still to be written, close 1013 (try again later) when hyper
    /// wrote it. Best effort: one write into the socket's fresh send buffer, then FIN.
    /// Decision 150.
    pub fn refuse_busy(self) {
        let mut io = self.io;
        let answer = if self.preamble.is_some() {
            let body = r#"{"error":"hub_busy","message":"every hub shard has a full queue of new connections; retry in a second"}"#;
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        } else {
            // FIN, close, a 2-byte payload: 1013.
            vec![0x88, 0x02, 0x03, 0xF5]
        };
        let _ = io.write(&[std::io::IoSlice::new(&answer)]);
        let _ = io.flush();
        io.shutdown_write();
        // Input left unread when the socket closes makes the kernel send a reset, which
        // can destroy the answer on its way: read what has come (at most 64 KiB; a
        // client that sent more may still see the reset, and reconnects all the same).
        let mut sink = [0_u8; 4_096];
        for _ in 0..16 {
            if !matches!(io.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// Why a connection could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Every shard's queue of new connections is full; the connection comes back to be
    /// turned away ([`Attach::refuse_busy`]).
    #[error("every hub shard is full of pending connections")]
    Busy(Box<Attach>),
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
            // one is, the connection is turned away (503 hub_busy or close 1013, and the
            // client retries with backoff).
            let (tx, rx) = std::sync::mpsc::sync_channel(1_024);
            let shard = shard::Shard::new(i, src.clone(), engine.history.clone(), rx)?;
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
        match cmd {
            Cmd::Attach(a) => Err(AttachError::Busy(a)),
            _ => unreachable!("the command sent is the attach"),
        }
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
            // Waits for room: a queue full of new connections (a storm at shutdown)
            // drains in moments, and a Stop that did not get in would leave the join
            // below waiting for good (other senders of the queue live on, in the rights
            // feed, so the shard never sees it disconnected). A dead shard's queue
            // refuses at once.
            if s.tx.send(Cmd::Stop).is_ok() {
                let _ = s.waker.wake();
            }
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
    use std::io::Read;
    use std::sync::Mutex;

    use super::*;

    fn hub(shards: usize) -> (Hub, Arc<Mutex<Vec<String>>>) {
        let engine = Arc::new(
            Engine::start(engine::config::EngineConfig::default(), engine::policy::TierPolicy::default())
                .unwrap(),
        );
        hub_on(engine, shards)
    }

    fn hub_on(engine: Arc<Engine>, shards: usize) -> (Hub, Arc<Mutex<Vec<String>>>) {
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
            HubConfig { shards, ..HubConfig::default() },
            ConnConfig::default(),
            on_death,
        )
        .unwrap();
        (hub, deaths)
    }

    #[test]
    fn a_shard_that_dies_is_reported_not_left_half_alive() {
        let (hub, deaths) = hub(2);
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

    /// Stalls shard `i` and fills its queue; the shard resumes when the sender drops.
    fn stall_and_fill(hub: &Hub, i: usize) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel();
        let (entered, stalled) = std::sync::mpsc::channel();
        hub.shards[i].send(Cmd::Stall(entered, held)).unwrap();
        stalled.recv_timeout(Duration::from_secs(10)).expect("the shard takes the stall");
        let mut queued = 0;
        while hub.shards[i].send(filler()).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 1_024, "shard {i}'s queue");
        release
    }

    /// A stall whose channels are gone returns at once: a command that does nothing.
    fn filler() -> Cmd {
        Cmd::Stall(std::sync::mpsc::channel().0, std::sync::mpsc::channel().1)
    }

    /// A connection as the upgrade hands it over: the server side of a real socket and
    /// the 101 the shard is to write, with the client side to read it.
    fn upgraded() -> (Attach, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let attach = Attach {
            io: Io::Plain(mio::net::TcpStream::from_std(server)),
            input: BytesMut::new(),
            preamble: Some(Arc::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..])),
            session: Session {
                user_id: "user_premium".into(),
                tier: engine::model::Tier::Premium,
                categories: engine::model::CategoryMask::ALL,
                real_time: true,
                max_signals_per_day: None,
                expires_at: i64::try_from(now.as_secs()).unwrap() + 3_600,
            },
            admitted: None,
            subscribe: Vec::new(),
            deflate: None,
        };
        (attach, client)
    }

    #[test]
    fn a_shard_with_a_full_queue_passes_the_connection_on_and_only_all_full_refuses_it() {
        let (hub, deaths) = hub(2);
        let held0 = stall_and_fill(&hub, 0);

        // Round robin names shard 0 first; shard 1 takes the connection and greets it.
        let (attach, mut client) = upgraded();
        hub.attach(attach).unwrap();
        let mut got = Vec::new();
        let mut buf = [0_u8; 4_096];
        while !String::from_utf8_lossy(&got).contains("welcome") {
            let n = client.read(&mut buf).expect("the client is greeted while shard 0 is stalled");
            assert!(n > 0, "closed before WELCOME: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&got));

        // Every shard full: the connection comes back, to be turned away with 503
        // hub_busy while its 101 is unwritten, or close 1013 after it.
        let held1 = stall_and_fill(&hub, 1);
        let read_all = |mut c: std::net::TcpStream| {
            let mut all = Vec::new();
            c.read_to_end(&mut all).expect("the turned-away connection is closed, not left open");
            all
        };
        let (attach, refused) = upgraded();
        let Err(AttachError::Busy(back)) = hub.attach(attach) else { panic!("every shard is full") };
        back.refuse_busy();
        let answer = String::from_utf8(read_all(refused)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"], "hub_busy", "{answer}");

        let (mut attach, mut refused) = upgraded();
        attach.preamble = None; // hyper answered the upgrade
        // A client that already sent its first message gets the close frame all the same.
        std::io::Write::write_all(&mut refused, &[0x81, 0x80, 0, 0, 0, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let Err(AttachError::Busy(back)) = hub.attach(attach) else { panic!("every shard is full") };
        back.refuse_busy();
        assert_eq!(read_all(refused), [0x88, 0x02, 0x03, 0xF5], "a close frame with 1013");

        // Released with their queues still full: stop waits for room for its Stop.
        drop((held0, held1));
        hub.stop();
        assert!(deaths.lock().unwrap().is_empty(), "{:?}", deaths.lock().unwrap());
    }

    /// A history reader that answers at once, on the caller's thread, as the store's
    /// does when its queue is full: and just before, the shards' queues fill up (a
    /// reconnect storm at that moment). Or one that drops the request unanswered, as a
    /// reader whose thread died would.
    #[derive(Debug, Default)]
    struct AtOnce {
        queues: std::sync::OnceLock<Vec<SyncSender<Cmd>>>,
        drops: bool,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl engine::channels::History for AtOnce {
        fn read(&self, _: engine::model::Tier, _: u64, _: u64, reply: engine::channels::HistoryReply) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            for q in self.queues.get().into_iter().flatten() {
                while q.try_send(filler()).is_ok() {}
            }
            if !self.drops {
                reply(Err(engine::channels::HistoryError::Busy));
            }
        }
    }

    /// Subscribes with a snapshot the ring cannot fill, so that `reader` is asked;
    /// returns once SUBSCRIBED comes.
    fn snapshot_through(reader: Arc<AtOnce>) {
        use engine::pipeline::{IngestItem, Origin, SignalItem};
        let config = engine::config::EngineConfig { ring_capacity: 4, ..Default::default() };
        let options = engine::EngineOptions { history: Some(reader.clone()), ..Default::default() };
        let engine =
            Arc::new(Engine::start_with(config, engine::policy::TierPolicy::default(), options).unwrap());
        let ingest = engine.ingest();
        for n in 1..=10 {
            let signal = engine::testkit::signal(n, 9_500, engine::model::Category::Equity);
            let ingest_ts = engine::model::UnixNanos::now();
            let item = SignalItem { origin: Origin::Local, signal, ingest_ts, sent_ts: None, verdict: None };
            ingest.blocking_send(IngestItem::Signal(Box::new(item))).unwrap();
        }
        let head = || engine.channels.live(engine::model::Tier::Premium).head();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while head() < 10 {
            assert!(std::time::Instant::now() < deadline, "routed {} of 10", head());
            std::thread::sleep(Duration::from_millis(5));
        }
        let (hub, deaths) = hub_on(engine, 1);
        reader.queues.set(hub.shards.iter().map(|s| s.tx.clone()).collect()).unwrap();

        let (attach, mut client) = upgraded();
        hub.attach(attach).unwrap();
        // A snapshot of 10 from a ring of 4: the older 6 are asked of the reader.
        let subscribe = br#"{"type":"SUBSCRIBE","channel":"signals_premium","snapshot":10}"#;
        let mut frame = vec![0x81, 0x80 | u8::try_from(subscribe.len()).unwrap(), 0, 0, 0, 0]; // mask 0
        frame.extend_from_slice(subscribe);
        std::io::Write::write_all(&mut client, &frame).unwrap();
        let mut got = Vec::new();
        let mut buf = [0_u8; 16 * 1024];
        while !String::from_utf8_lossy(&got).contains("\"SUBSCRIBED\"") {
            let n = client.read(&mut buf).expect("SUBSCRIBED comes whatever the reader did");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(reader.calls.load(Ordering::Relaxed), 1, "the reader was asked");
        hub.stop();
        assert!(deaths.lock().unwrap().is_empty(), "{:?}", deaths.lock().unwrap());
    }

    #[test]
    fn a_history_reader_that_answers_at_once_while_the_queue_is_full_does_not_hang_the_shard() {
        snapshot_through(Arc::new(AtOnce::default()));
    }

    #[test]
    fn a_history_request_the_reader_drops_unanswered_still_ends_the_wait() {
        snapshot_through(Arc::new(AtOnce { drops: true, ..AtOnce::default() }));
    }
}
