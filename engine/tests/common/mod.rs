//! Shared pieces of the engine's integration tests: a real engine with its TCP feed on
//! 127.0.0.1:0, signal builders, a channel reader, and a TCP proxy that can cut every
//! connection through it (to kill a producer's connection mid-stream).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::channels::{ChannelLog, Message};
use engine::config::{EngineConfig, FeedConfig};
use engine::feed::{FeedStats, Producer, ProducerConfig, StaticKeys};
use engine::model::{Category, Signal};
use engine::policy::TierPolicy;
use engine::{Engine, feed};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// The source of [`engine::testkit`]'s signals.
pub const TESTKIT_SOURCE: uuid::Uuid = uuid::Uuid::from_u128(0xfeed);

pub const KEYS: [(&str, &str); 3] = [("alpha", "key-alpha"), ("beta", "key-beta"), ("gamma", "key-gamma")];

pub struct TestEngine {
    pub engine: Engine,
    pub feed_addr: SocketAddr,
    pub feed_stats: Arc<FeedStats>,
    _shutdown: oneshot::Sender<()>,
}

pub async fn start(config: EngineConfig) -> TestEngine {
    start_with(config, FeedConfig::default()).await
}

pub async fn start_with(config: EngineConfig, feed_config: FeedConfig) -> TestEngine {
    let engine = Engine::start(config, TierPolicy::default()).unwrap();
    // gamma sends signals only; all three publish under the test kit's source only.
    let mut keys = StaticKeys::new(KEYS.iter().map(|(i, k)| ((*i).to_owned(), (*k).to_owned())))
        .with_ticks(["alpha".to_owned(), "beta".to_owned()]);
    for (id, _) in KEYS {
        keys = keys.with_sources(id, [TESTKIT_SOURCE]);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_addr = listener.local_addr().unwrap();
    let ctx = engine.feed_context(Arc::new(keys), feed_config);
    let feed_stats = Arc::clone(&ctx.stats);
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(feed::run(listener, ctx, async move {
        let _ = rx.await;
    }));
    TestEngine { engine, feed_addr, feed_stats, _shutdown: tx }
}

pub fn producer_config(addr: SocketAddr, id: &str) -> ProducerConfig {
    let key = KEYS.iter().find(|(i, _)| *i == id).map(|(_, k)| *k).unwrap_or("wrong");
    ProducerConfig::new(addr.to_string(), id, key)
}

pub async fn producer(addr: SocketAddr, id: &str) -> Producer {
    Producer::connect(producer_config(addr, id)).await.unwrap()
}

/// A valid signal on a given symbol (`n` makes the id, `confidence` is in hundredths).
#[allow(unused_imports)] // not every test binary uses both
pub use engine::testkit::{signal_on as signal, tick};

pub fn equity(n: u128, confidence: u16) -> Signal {
    signal(n, confidence, "RELIANCE", "NSE", Category::Equity)
}

/// Waits (at most 10 s) until `log` holds `n` messages and returns them from seq 1.
pub async fn wait_for(engine: &Engine, log: &ChannelLog, n: usize) -> Vec<Message> {
    let mut bell = engine.channels.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut out = Vec::new();
        let _ = log.read_after(0, &mut out, usize::MAX);
        if out.len() >= n {
            return out;
        }
        if tokio::time::timeout_at(deadline, bell.changed()).await.is_err() {
            panic!("{}: {} of {n} messages after 10 s", log.name(), out.len());
        }
    }
}

/// Waits until `cond` holds (at most 10 s), polling.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

pub fn data(m: &Message) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
    assert_eq!(v["seq"].as_u64(), Some(m.seq()));
    v["data"].clone()
}

pub fn id_of(m: &Message) -> u128 {
    uuid::Uuid::parse_str(data(m)["id"].as_str().unwrap()).unwrap().as_u128()
}

/// A TCP proxy whose live connections can all be cut at once.
pub struct CutProxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let registry = Arc::clone(&conns);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else { continue };
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, conns }
    }

    /// Drops both sockets of every connection through the proxy, mid-stream.
    pub fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}
