//! Kafka ingest and scale-out against a real Kafka-protocol broker (tansu, started per
//! test on a free port) and real `signalcast` processes in the engine, gateway and all
//! roles, with real WebSocket clients.
//!
//! Needs the `tansu` binary (`cargo install tansu --locked --features dynostore,libsql`:
//! memory and SQLite storage; scripts/test.sh installs it) and, for the Python
//! producer, `confluent-kafka`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
mod ledger;
#[path = "../../accounts/tests/common/pg.rs"]
mod pg;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Client;
use engine::feed::codec::encode_signal;
use engine::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use engine::kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use engine::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use engine::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use engine::kafka::signing;
use engine::model::{Category, UnixNanos};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// One test at a time: each starts a broker and several debug-build processes, which
/// is all two cores can take.
/// The setup of most single-node tests: the test alone, a broker with the input topics
/// (one partition each), a node of `role`, and an enterprise client subscribed to
/// `signals_enterprise` on it.
async fn one_node_and_a_subscriber(
    role: &str,
) -> (tokio::sync::MutexGuard<'static, ()>, Broker, Node, Client) {
    let serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(1).await;
    let node = Node::start(role, &broker, &[]).await;
    let mut client = Client::connect(&node.ws_url("u-enterprise-1")).await;
    client.subscribe("signals_enterprise").await;
    (serial, broker, node, client)
}

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(())).lock().await
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("tansu")).find(|p| p.is_file()));
    if let Some(p) = on_path {
        return p;
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let candidate = home.join("bin/tansu");
    assert!(
        candidate.exists(),
        "the tansu broker is not installed ({}): run scripts/test.sh, or \
         cargo install tansu --locked --features dynostore,libsql",
        candidate.display()
    );
    candidate
}

/// A single-node Kafka-protocol broker: in-memory storage, or an SQLite file that
/// outlives the process (for restarts).
struct Broker {
    child: Child,
    addr: String,
    storage: String,
    dir: TempDir,
    /// `--authentication`: SASL required of every client.
    authentication: bool,
    /// The SCRAM user the test's own clients log in as.
    credentials: Option<(String, String)>,
}

impl Broker {
    fn start() -> Self {
        Self::start_with("memory://tansu/")
    }

    /// Storage in a file of the broker's directory: a restarted broker has every topic,
    /// record and committed offset of the one before.
    fn start_persistent() -> Self {
        Self::start_with("sqlite://tansu.db")
    }

    fn start_with(storage: &str) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // tansu reads .env from its working directory: give it an empty one.
        let dir = TempDir::new("tansu");
        let child = Self::spawn(&dir, &addr, storage, false);
        Self { child, addr, storage: storage.to_owned(), dir, authentication: false, credentials: None }
    }

    /// A broker that requires SASL/SCRAM-SHA-256 of every client, knowing `users`
    /// (name, password). tansu creates users only through an unauthenticated broker, so
    /// they are created first on an open one over the same SQLite file.
    fn start_authenticated(users: &[(&str, &str)]) -> Self {
        let mut broker = Self::start_persistent();
        for (name, password) in users {
            let out = Command::new(tansu_binary())
                .current_dir(&broker.dir.0)
                .args(["user", "create", "--broker", &format!("tcp://{}", broker.addr)])
                .args(["--mechanism", "scram256", name, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "tansu user create: {}", String::from_utf8_lossy(&out.stderr));
        }
        broker.kill();
        broker.authentication = true;
        broker.credentials = users.first().map(|(u, p)| ((*u).to_owned(), (*p).to_owned()));
        broker.restart();
        broker
    }

    fn spawn(dir: &TempDir, addr: &str, storage: &str, authentication: bool) -> Child {
        let url = format!("tcp://{addr}");
        let mut cmd = Command::new(tansu_binary());
        cmd.current_dir(&dir.0).args(["broker", "--storage-engine", storage]).args([
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        if authentication {
            cmd.arg("--authentication");
        }
        let child =
            cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// SIGKILL: the broker dies with whatever it had not written.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new broker process on the same address and storage.
    fn restart(&mut self) {
        self.child = Self::spawn(&self.dir, &self.addr, &self.storage, self.authentication);
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        if let Some((user, password)) = &self.credentials {
            for (k, v) in sasl(user, password) {
                c.set(k, v);
            }
        }
        c
    }

    fn producer(&self) -> FutureProducer {
        self.client().set("linger.ms", "0").create().unwrap()
    }

    /// Creates `raw-signals` and `market-data` with `partitions` each.
    async fn create_input_topics(&self, partitions: i32) {
        use engine::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = self.client().create().unwrap();
        let topics =
            ["raw-signals", "market-data"].map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)));
        for r in admin.create_topics(topics.iter(), &AdminOptions::new()).await.unwrap() {
            r.unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The librdkafka properties of a SASL/SCRAM-SHA-256 login (no TLS: tansu's cannot be
/// tested here).
fn sasl<'a>(user: &'a str, password: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-256"),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "signalcast-{name}-{}-{}",
            std::process::id(),
            UnixNanos::now().0
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `signalcast serve` process.
struct Node {
    child: Child,
    http: SocketAddr,
}

impl Node {
    async fn start(role: &str, broker: &Broker, env: &[(&str, &str)]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let feed = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_signalcast"));
        cmd.args(["serve", "--role", role, "--kafka-brokers", &broker.addr])
            .env("SIGNALCAST_STORE__DATA_DIR", common::data_dir())
            .env("SIGNALCAST_LISTEN", http.to_string())
            .env("SIGNALCAST_FEED_LISTEN", &feed)
            .env("SIGNALCAST_DEMO__ENABLED", "false")
            .env("SIGNALCAST_SHARDS", "1")
            .env("SIGNALCAST_WORKERS", "1")
            .env("SIGNALCAST_KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env(
                "SIGNALCAST_LOG",
                std::env::var("TEST_NODE_LOG")
                    .unwrap_or("warn,signalcast=info,engine=info,gateway=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // Each line tagged with the node it came from (several nodes share a test), and
        // printed through the test's own output: shown when the test fails.
        let stderr = child.stderr.take().unwrap();
        let tag = format!("{role} :{}", http.port());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
            }
        });
        let mut node = Self { child, http };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!("signalcast --role {role} exited: {status}");
            }
            if node.get("/health/ready").await.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return node;
            }
            assert!(Instant::now() < deadline, "--role {role} not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(self.http).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    /// The consumer lag of `topic` is exported: this node holds partitions of it.
    async fn exports_lag(&self, topic: &str) -> bool {
        let series = format!("signalcast_kafka_consumer_lag{{topic=\"{topic}\"}}");
        self.get("/metrics").await.unwrap_or_default().contains(&series)
    }

    /// The input partitions this engine node holds now.
    async fn assigned(&self) -> f64 {
        self.metric("signalcast_kafka_assigned_partitions").await
    }

    /// A sample from /metrics (the first line starting with `series`).
    async fn metric(&self, series: &str) -> f64 {
        common::sample(&self.get("/metrics").await.unwrap_or_default(), series).unwrap_or(0.0)
    }

    fn ws_url(&self, user: &str) -> String {
        let token = gateway::server::dev_auth(&gateway::Config::default())
            .unwrap()
            .mint(user, Duration::from_secs(3600))
            .unwrap();
        format!("ws://{}/ws?token={token}", self.http)
    }

    /// SIGKILL: no drain, no goodbye, no last commit.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `cond` (checked every 100 ms) for up to `secs`.
async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A signal as producers in other languages write it: JSON, keyed by symbol.
fn signal_json(n: u128) -> (String, String) {
    let s = common::signal(n, 8_000, Category::Equity);
    (s.symbol.as_str().to_owned(), serde_json::to_string(&s).unwrap())
}

async fn produce(p: &FutureProducer, topic: &str, key: &str, value: &[u8], headers: Option<OwnedHeaders>) {
    let mut r = FutureRecord::to(topic).key(key).payload(value);
    if let Some(h) = headers {
        r = r.headers(h);
    }
    p.send(r, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// A producer of fixtures/producers.toml (dev keys): the signer of test records.
const PRODUCER: &str = "model-alpha";
const PRODUCER_KEY: &str = "dev-alpha-0c1d2e3f4a5b6c7d";

fn now_ms() -> u64 {
    u64::try_from(UnixNanos::now().0 / 1_000_000).unwrap()
}

/// `extra` plus the headers that say who wrote a `raw-signals` record (docs/kafka.md).
fn signed_by(
    producer: &str,
    api_key: &str,
    at: u64,
    key: &str,
    value: &[u8],
    extra: Option<OwnedHeaders>,
) -> OwnedHeaders {
    let signature = signing::sign(&signing::signing_key(api_key), producer, at, key.as_bytes(), value);
    extra
        .unwrap_or_default()
        .insert(Header { key: signing::PRODUCER_HEADER, value: Some(producer) })
        .insert(Header { key: signing::SIGNED_AT_HEADER, value: Some(&at.to_string()) })
        .insert(Header { key: signing::SIGNATURE_HEADER, value: Some(&signature) })
}

/// A `raw-signals` record signed by [`PRODUCER`].
async fn produce_signal(p: &FutureProducer, key: &str, value: &[u8], extra: Option<OwnedHeaders>) {
    let headers = signed_by(PRODUCER, PRODUCER_KEY, now_ms(), key, value, extra);
    produce(p, "raw-signals", key, value, Some(headers)).await;
}

/// The next SIGNAL_UPDATE, or None if the connection ends (or nothing comes in `wait`).
async fn next_signal(c: &mut Client, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // A PING every 20 s of waiting, as a client keeps its socket: the gateway closes
        // one it has heard nothing from for 60 s (4004).
        let slice = (tokio::time::Instant::now() + Duration::from_secs(20)).min(deadline);
        let m = match tokio::time::timeout_at(slice, c.ws.next()).await {
            Ok(m) => m?,
            Err(_) if slice < deadline => {
                c.send(json!({"type": "PING"})).await;
                continue;
            }
            Err(_) => return None,
        };
        match m {
            Ok(WsMessage::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "SIGNAL_UPDATE" {
                    return Some(v);
                }
            }
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn seq_and_id(v: &Value) -> (u64, u128) {
    (v["seq"].as_u64().unwrap(), common::id_of(v))
}

/// Produces signals `ids` to `raw-signals`, one every 5 ms, in the background; hands
/// the producer back.
fn feed(p: FutureProducer, ids: std::ops::RangeInclusive<u128>) -> tokio::task::JoinHandle<FutureProducer> {
    tokio::spawn(async move {
        for n in ids {
            let (key, value) = signal_json(n);
            produce_signal(&p, &key, value.as_bytes(), None).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p
    })
}

/// Reads SIGNAL_UPDATEs into `seen` until it holds `n`; each may take up to `wait`.
async fn read_until(c: &mut Client, seen: &mut Vec<(u64, u128)>, n: usize, wait: Duration, what: &str) {
    while seen.len() < n {
        let v = next_signal(c, wait).await.unwrap_or_else(|| panic!("{what}: {} of {n}", seen.len()));
        seen.push(seq_and_id(&v));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_json_producer_to_engine_to_gateway_to_websocket() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(2).await;
    let engine = Node::start("engine", &broker, &[]).await;
    let gw = Node::start("gateway", &broker, &[]).await;
    let mut client = Client::connect(&gw.ws_url("u-premium-1")).await;
    let sub = client.subscribe("signals_premium").await;
    assert_eq!(sub["type"], "SUBSCRIBED", "{sub}");

    // The producer is Python's confluent-kafka: another language's view of the topics.
    let tick = r#"{"symbol":"RELIANCE","exchange":"NSE","bid":"2458.4000","ask":"2458.5000","last":"2458.4500","volume":1850259,"ts":1794023040000000}"#;
    python_produce(&broker, "market-data", "RELIANCE", tick);
    eventually(60, "the engine consumed the tick", async || {
        engine.metric("signalcast_ticks_received_total").await >= 1.0
    })
    .await;
    let (key, value) = signal_json(0x5107);
    python_produce(&broker, "raw-signals", &key, &value);

    let got = next_signal(&mut client, Duration::from_secs(30)).await.expect("the signal");
    assert_eq!(got["channel"], "signals_premium");
    assert_eq!(common::id_of(&got), 0x5107);
    assert_eq!(got["seq"], 1, "the first record of signals.premium is seq 1: {got}");
    assert_eq!(got["data"]["market"]["last"], "2458.4500", "enriched with the tick: {got}");
    assert_eq!(got["data"]["confidence"], 80.0);
    eventually(30, "the engine published premium and enterprise", async || {
        engine.metric("signalcast_kafka_published_total").await >= 2.0
    })
    .await;
    // The premium record reached the client; the enterprise one may still be on its way.
    eventually(30, "the gateway relayed both tiers' records", async || {
        gw.metric("signalcast_kafka_relayed_total").await >= 2.0
    })
    .await;
    // An engine node serves no WebSocket clients.
    let refused = engine.get("/ws").await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 404") && refused.contains("engine_node"), "{refused}");
}

/// Kills a child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_out_history_is_what_the_archiver_wrote_to_postgresql() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(1).await;
    let db = pg::Postgres::start();
    let _engine = Node::start("engine", &broker, &[]).await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _archiver = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_signalcast"))
            .args(["archive", "--kafka-brokers", &broker.addr, "--database-url", &db.url()])
            .args(["--metrics-listen", &metrics.to_string()])
            .env("SIGNALCAST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let gw = Node::start("gateway", &broker, &[("SIGNALCAST_STORE__DATABASE_URL", &db.url())]).await;
    for n in [0xA1u128, 0xA2] {
        let (key, value) = signal_json(n);
        python_produce(&broker, "raw-signals", &key, &value);
    }
    // History on the gateway: read from PostgreSQL, newest first, with each channel's
    // seq = offset + 1 as the gateway's own channels gave them.
    let token = gw.ws_url("u-premium-1").split("token=").nth(1).unwrap().to_owned();
    let mut page = serde_json::Value::Null;
    eventually(60, "the archived signals in the gateway's history", async || {
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let req = format!(
            "GET /v1/signals/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        page = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("null")).unwrap_or_default();
        page["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let ids: Vec<u128> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| uuid::Uuid::parse_str(i["id"].as_str().unwrap()).unwrap().as_u128())
        .collect();
    assert_eq!(ids, [0xA2, 0xA1], "{page}");
    assert_eq!(page["items"][1]["channels"]["signals_premium"], 1, "{page}");
    assert_eq!(page["items"][0]["channels"]["signals_premium"], 2, "{page}");
    assert!(page["items"][0]["channels"].get("signals_enterprise").is_none(), "only the caller's channels");

    // Outcomes in scale-out: two ticks on market-data (the entry, then past the target of
    // 2520) close both on the engine node; the closes travel signals.<tier> and the
    // archiver stores them as events, so history and the scoreboard show them.
    for last in ["2456.7500", "2530.0000"] {
        let tick = serde_json::json!({"symbol": "RELIANCE", "exchange": "NSE", "bid": last, "ask": last,
                                      "last": last, "volume": 1, "ts": UnixNanos::now().as_micros()});
        python_produce(&broker, "market-data", "RELIANCE", &tick.to_string());
    }
    let get = async |path: &str| -> serde_json::Value {
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("null")).unwrap_or_default()
    };
    eventually(60, "the closes in the gateway's history", async || {
        page = get("/v1/signals/history?status=target_hit").await;
        page["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let first = &page["items"][1];
    assert_eq!(first["outcome"]["entry_price"], "2456.7500", "{page}");
    assert_eq!(first["outcome"]["exit_price"], "2530.0000", "{page}");
    assert_eq!(first["channels"]["signals_premium"], 1, "an item's channels are its signal's seqs: {page}");
    let board = get("/v1/sources").await;
    assert_eq!(board["sources"][0]["windows"]["day"]["target_hit"], 2, "{board}");

    // Each row names its producer (the signer of its raw-signals record).
    let producers = Command::new("psql")
        .args([
            &db.url(),
            "-At",
            "-c",
            "SELECT string_agg(DISTINCT coalesce(producer_id, '-'), ',') FROM signals.trading_signals",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&producers.stdout).trim(), PRODUCER, "{producers:?}");

    // The archiver's own metrics: every record of both tier topics, nothing behind.
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert_eq!(common::sample(&text, "signalcast_archive_records_total"), Some(8.0), "{text}");
    assert_eq!(common::sample(&text, "signalcast_archive_signals_total"), Some(2.0), "{text}");
    assert_eq!(common::sample(&text, "signalcast_archive_gaps_total"), Some(0.0), "{text}");
}

fn python_produce(broker: &Broker, topic: &str, key: &str, value: &str) {
    // Signs as docs/kafka.md shows producers in other languages how to.
    let script = r#"
import hashlib, hmac, sys, time
from confluent_kafka import Producer
brokers, topic, key, value, producer, api_key = sys.argv[1:7]
key, value = key.encode(), value.encode()
signed_at = str(int(time.time() * 1000))
message = b"signalcast-kafka-v1\n%s\n%s\n%d\n%s%s" % (producer.encode(), signed_at.encode(), len(key), key, value)
signature = hmac.new(hashlib.sha256(api_key.encode()).digest(), message, hashlib.sha256).hexdigest()
headers = [("signalcast-producer", producer), ("signalcast-signed-at", signed_at), ("signalcast-signature", signature)]
p = Producer({"bootstrap.servers": brokers})
p.produce(topic, key=key, value=value, headers=headers)
left = p.flush(30)
sys.exit(1 if left else 0)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &broker.addr, topic, key, value, PRODUCER, PRODUCER_KEY])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python producer failed (pip install confluent-kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_agree_and_a_killed_gateways_clients_resume_on_the_other() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(3).await;
    let _engine = Node::start("engine", &broker, &[]).await;
    let mut gw_a = Node::start("gateway", &broker, &[]).await;
    let gw_b = Node::start("gateway", &broker, &[]).await;
    let mut on_a = Client::connect(&gw_a.ws_url("u-enterprise-1")).await;
    let mut on_b = Client::connect(&gw_b.ws_url("u-enterprise-1")).await;
    let sub_a = on_a.subscribe("signals_enterprise").await;
    let sub_b = on_b.subscribe("signals_enterprise").await;
    assert_eq!(sub_a["epoch"], sub_b["epoch"], "one topic, one epoch on every gateway");

    const N: u128 = 300;
    let feeding = feed(broker.producer(), 1..=N);

    // A's client reads until a third is in, then A is killed under it.
    let mut seen_a = Vec::new();
    read_until(&mut on_a, &mut seen_a, 100, Duration::from_secs(30), "signals on A").await;
    gw_a.kill();
    while let Some(v) = next_signal(&mut on_a, Duration::from_secs(5)).await {
        seen_a.push(seq_and_id(&v)); // what A had written before it died
    }
    let (last_seq, _) = *seen_a.last().unwrap();
    let mut moved = Client::connect(&gw_b.ws_url("u-enterprise-1")).await;
    moved
        .send(json!({"type":"SUBSCRIBE","channel":"signals_enterprise","since":last_seq,"epoch":sub_a["epoch"]}))
        .await;
    let resumed = moved.next_of(&["SUBSCRIBED"]).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    read_until(&mut moved, &mut seen_a, N as usize, Duration::from_secs(30), "the rest on B").await;
    let _producer = feeding.await.unwrap();

    let mut seen_b = Vec::new();
    read_until(&mut on_b, &mut seen_b, N as usize, Duration::from_secs(30), "signals on B").await;
    assert_eq!(seen_a, seen_b, "same signals, same order, same seq, across the move");
    let ids: HashSet<u128> = seen_b.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, (1..=N).collect::<HashSet<_>>(), "every signal exactly once");
    assert!(seen_b.windows(2).all(|w| w[1].0 == w[0].0 + 1), "gap-free seq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_stream_and_restarted_loses_nothing_and_routes_nothing_twice() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(2).await;
    // A long commit interval: the restarted engine re-reads up to two seconds of records.
    let slow_commit = [("SIGNALCAST_KAFKA__COMMIT_INTERVAL_MS", "2000")];
    let mut first = Node::start("engine", &broker, &slow_commit).await;
    let gw = Node::start("gateway", &broker, &[]).await;
    let mut client = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    client.subscribe("signals_enterprise").await;

    const N: u128 = 400;
    let feeding = feed(broker.producer(), 1..=N);
    let mut seen = Vec::new();
    read_until(&mut client, &mut seen, 120, Duration::from_secs(30), "signals").await;
    first.kill();
    let second = Node::start("engine", &broker, &slow_commit).await;
    let p = feeding.await.unwrap();
    // An at-least-once producer resends a few it already sent, after the restart.
    for n in 1..=20 {
        let (key, value) = signal_json(n);
        produce_signal(&p, &key, value.as_bytes(), None).await;
    }
    read_until(&mut client, &mut seen, N as usize, Duration::from_secs(60), "the rest").await;
    client.no_signal_within(Duration::from_secs(3)).await;
    let ids: Vec<u128> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), (1..=N).collect::<HashSet<_>>(), "nothing lost");
    assert_eq!(ids.len(), N as usize, "nothing twice");
    assert!(seen.windows(2).all(|w| w[1].0 > w[0].0), "seq increases");
    let dups = second.metric("signalcast_drops_total{reason=\"duplicate_id\"}").await;
    println!("duplicates dropped by the restarted engine: {dups} (20 resent by the producer)");
    assert!(dups >= 20.0, "the restarted engine knew what was routed before it: {dups} duplicates dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dlq_and_the_partition_moves_on() {
    let (_serial, broker, node, mut client) = one_node_and_a_subscriber("all").await;

    let p = broker.producer();
    produce_signal(&p, "RELIANCE", b"{\"id\": not json", None).await;
    let unknown = OwnedHeaders::new().insert(Header { key: "content-type", value: Some("text/csv") });
    produce_signal(&p, "RELIANCE", b"a,b,c", Some(unknown)).await;
    let (key, value) = signal_json(0xd1);
    produce_signal(&p, &key, value.as_bytes(), None).await;
    // The same partition carries an rkyv record (the TCP frame's payload) too.
    let mut frame = Vec::new();
    encode_signal(&mut frame, 1, None, &common::signal(0xd2, 8_000, Category::Equity));
    let rkyv = OwnedHeaders::new().insert(Header { key: "content-type", value: Some("application/x-rkyv") });
    produce_signal(&p, "RELIANCE", &frame[5..], Some(rkyv)).await;

    let first = next_signal(&mut client, Duration::from_secs(60)).await.expect("the valid JSON signal");
    let second = next_signal(&mut client, Duration::from_secs(10)).await.expect("the rkyv signal");
    assert_eq!([common::id_of(&first), common::id_of(&second)], [0xd1, 0xd2]);

    let dlq: BaseConsumer = broker.client().set("group.id", "dlq-reader").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..6 {
        tpl.add_partition_offset("raw-signals.dlq", partition, Offset::Beginning).unwrap();
    }
    dlq.assign(&tpl).unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let header = |k: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == k)?.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            dead.push((
                header("error.code"),
                header("source.topic"),
                header("source.offset"),
                m.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    assert_eq!(
        dead,
        vec![
            (
                Some("invalid_json".into()),
                Some("raw-signals".into()),
                Some("0".into()),
                Some(b"{\"id\": not json".to_vec())
            ),
            (
                Some("content_type".into()),
                Some("raw-signals".into()),
                Some("1".into()),
                Some(b"a,b,c".to_vec())
            ),
        ]
    );
    assert_eq!(node.metric("signalcast_kafka_dead_lettered_total").await, 2.0);
    eventually(10, "the lag gauge is exported", async || node.exports_lag("raw-signals").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_the_partitions_and_each_holds_the_ticks_of_its_symbols() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(4).await;
    let first = Node::start("engine", &broker, &[]).await;
    let second = Node::start("engine", &broker, &[]).await;
    let gw = Node::start("gateway", &broker, &[]).await;
    eventually(60, "the group rebalanced onto both engines", async || {
        let held = [first.assigned().await, second.assigned().await];
        held[0] > 0.0 && held[1] > 0.0 && held[0] + held[1] == 4.0
    })
    .await;
    let mut client = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    client.subscribe("signals_enterprise").await;

    // Ticks and signals keyed by symbol, as the partitioning rule asks (docs/deploy.md).
    let symbols: Vec<String> = (0..16).map(|i| format!("SYM{i:02}")).collect();
    let p = broker.producer();
    for (i, symbol) in symbols.iter().enumerate() {
        let tick = common::tick(symbol, "NSE", &format!("{}.2500", 100 + i));
        let value = serde_json::to_vec(&tick).unwrap();
        let headers = signed_by(PRODUCER, PRODUCER_KEY, now_ms(), symbol, &value, None);
        produce(&p, "market-data", symbol, &value, Some(headers)).await;
    }
    eventually(30, "every tick consumed by one engine or the other", async || {
        first.metric("signalcast_ticks_received_total").await
            + second.metric("signalcast_ticks_received_total").await
            >= 16.0
    })
    .await;
    let split = [
        first.metric("signalcast_ticks_received_total").await,
        second.metric("signalcast_ticks_received_total").await,
    ];
    assert!(split[0] > 0.0 && split[1] > 0.0, "both engines hold some symbols: {split:?}");

    for (i, symbol) in symbols.iter().enumerate() {
        let mut s = common::signal(0xe0 + i as u128, 8_000, Category::Equity);
        s.symbol = engine::model::Symbol::new(symbol).unwrap();
        produce_signal(&p, symbol, &serde_json::to_vec(&s).unwrap(), None).await;
    }
    let mut enriched = Vec::new();
    while enriched.len() < symbols.len() {
        let v = next_signal(&mut client, Duration::from_secs(30)).await.expect("signals");
        let symbol = v["data"]["symbol"].as_str().unwrap().to_owned();
        enriched.push((symbol, v["data"]["market"]["last"].clone()));
    }
    enriched.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, Value)> =
        symbols.iter().enumerate().map(|(i, s)| (s.clone(), json!(format!("{}.2500", 100 + i)))).collect();
    assert_eq!(
        enriched, expected,
        "each signal enriched with its own symbol's tick, whichever engine routed it"
    );
    let published = [
        first.metric("signalcast_kafka_published_total").await,
        second.metric("signalcast_kafka_published_total").await,
    ];
    assert!(published[0] > 0.0 && published[1] > 0.0, "both engines routed: {published:?}");
}

/// A signed `market-data` tick of `symbol` at `last`, keyed by symbol.
async fn produce_tick(p: &FutureProducer, symbol: &str, last: &str) {
    let value = serde_json::to_vec(&common::tick(symbol, "NSE", last)).unwrap();
    let headers = signed_by(PRODUCER, PRODUCER_KEY, now_ms(), symbol, &value, None);
    produce(p, "market-data", symbol, &value, Some(headers)).await;
}

/// The next `n` closes on `c`: (id, status), sorted by id.
async fn closes(c: &mut Client, n: usize, wait: Duration) -> Vec<(u128, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v =
            next_signal(c, wait).await.unwrap_or_else(|| panic!("{} of {n} closes came: {out:?}", out.len()));
        if v["data"]["status"] != "open" {
            out.push((common::id_of(&v), v["data"]["status"].as_str().unwrap().to_owned()));
        }
    }
    out.sort();
    out
}

/// Open signals follow their symbol's partition (docs/outcomes.md, "Scale-out"): an
/// engine that joins the group tracks the open signals of the partitions it is given,
/// the one that gave them up stops tracking them, and when an engine dies the one that
/// takes its partitions rebuilds what was open there from `signals.<tier>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_signals_follow_their_partition_when_an_engine_joins_and_when_one_dies() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(4).await;
    // The broker drops a member that died once it misses a rebalance: within the
    // rebalance timeout (librdkafka's max.poll.interval.ms, 5 minutes by default).
    let dir = TempDir::new("handover");
    let config = dir.0.join("engine.toml");
    std::fs::write(
        &config,
        "[kafka.client]\n\"max.poll.interval.ms\" = \"8000\"\n\"session.timeout.ms\" = \"6000\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let engine_env = [("SIGNALCAST_CONFIG", config.as_str())];
    let mut first = Node::start("engine", &broker, &engine_env).await;
    let gw = Node::start("gateway", &broker, &[]).await;
    // A close goes to every tier that carried its signal: one subscriber of each.
    let mut client = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    client.subscribe("signals_enterprise").await;
    let mut premium = Client::connect(&gw.ws_url("u-premium-1")).await;
    premium.subscribe("signals_premium").await;

    // Sixteen symbols at 100, and a buy on each: entry 100, target 110, stop 90.
    let symbols: Vec<String> = (0..16).map(|i| format!("SYM{i:02}")).collect();
    let p = broker.producer();
    for symbol in &symbols {
        produce_tick(&p, symbol, "100").await;
    }
    eventually(30, "the first engine has every tick", async || {
        first.metric("signalcast_ticks_received_total").await >= 16.0
    })
    .await;
    let id = |i: usize| 0x5100 + i as u128;
    for (i, symbol) in symbols.iter().enumerate() {
        let mut s = common::signal(id(i), 8_000, Category::Equity);
        s.symbol = engine::model::Symbol::new(symbol).unwrap();
        (s.entry_price, s.target_price, s.stop_loss) =
            ("100".parse().unwrap(), "110".parse().unwrap(), "90".parse().unwrap());
        produce_signal(&p, symbol, &serde_json::to_vec(&s).unwrap(), None).await;
    }
    for c in [&mut client, &mut premium] {
        for _ in &symbols {
            let v = next_signal(c, Duration::from_secs(30)).await.expect("each signal routed");
            assert_eq!(v["data"]["status"], "open");
        }
    }
    assert_eq!(first.metric("signalcast_outcomes_open").await, 16.0);

    // A second engine joins: it reads what is open from the topics, and the group
    // splits the partitions between the two.
    let second = Node::start("engine", &broker, &engine_env).await;
    eventually(60, "the group rebalanced onto both engines", async || {
        let held = [first.assigned().await, second.assigned().await];
        held[0] > 0.0 && held[1] > 0.0 && held[0] + held[1] == 4.0
    })
    .await;
    // The first half reach their targets: whichever engine holds each symbol now closes
    // it, once.
    for symbol in &symbols[..8] {
        produce_tick(&p, symbol, "111").await;
    }
    let expected: Vec<(u128, String)> = (0..8).map(|i| (id(i), "target_hit".to_owned())).collect();
    assert_eq!(closes(&mut client, 8, Duration::from_secs(60)).await, expected, "enterprise");
    assert_eq!(closes(&mut premium, 8, Duration::from_secs(10)).await, expected, "premium");
    let split = [
        first.metric("signalcast_ticks_received_total").await,
        second.metric("signalcast_ticks_received_total").await,
    ];
    assert!(split[1] > 0.0, "the second engine holds some symbols: ticks {split:?}");
    // The second half waits on both in standby: neither tracks a symbol whose records
    // it has not had since the rebalance (the first gave every partition up).
    eventually(20, "the second half in standby on both engines", async || {
        first.metric("signalcast_outcomes_standby").await == 8.0
            && second.metric("signalcast_outcomes_standby").await == 8.0
    })
    .await;

    // The first engine dies (SIGKILL: no goodbye) and a replacement starts, which
    // rebuilds what is open from the topics; the partitions the first held go to the
    // live engines, and whichever gets each symbol closes what the first had opened.
    first.kill();
    let third = Node::start("engine", &broker, &engine_env).await;
    // Once the group has dropped the dead member, the two live engines hold every
    // partition between them.
    eventually(60, "the replacement holds partitions", async || {
        let held = [second.assigned().await, third.assigned().await];
        held[1] > 0.0 && held[0] + held[1] == 4.0
    })
    .await;
    // The group may rebalance once more as the dead member is dropped (up to the
    // session timeout after the kill, later on a loaded machine): a symbol is tracked
    // again on the first record of it after that (docs/outcomes.md), so the market goes
    // on ticking below the stops, every 2 s, until every close has come.
    let market = {
        let p = broker.producer();
        let symbols = symbols[8..].to_vec();
        tokio::spawn(async move {
            for k in 0..30u32 {
                for symbol in &symbols {
                    produce_tick(&p, symbol, &(89 - k % 5).to_string()).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let expected: Vec<(u128, String)> = (8..16).map(|i| (id(i), "stop_hit".to_owned())).collect();
    let got = closes(&mut client, 8, Duration::from_secs(60)).await;
    let got_premium = closes(&mut premium, 8, Duration::from_secs(10)).await;
    market.abort();
    assert_eq!(got, expected, "enterprise");
    assert_eq!(got_premium, expected, "premium");
    client.no_signal_within(Duration::from_secs(3)).await;
    premium.no_signal_within(Duration::from_secs(1)).await;
    for node in [&second, &third] {
        assert_eq!(node.metric("signalcast_outcomes_open").await, 0.0);
        assert_eq!(node.metric("signalcast_outcomes_standby").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_ring_is_read_back_from_kafka() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(1).await;
    let _engine = Node::start("engine", &broker, &[]).await;
    // A ring of 20: most of what a client missed is only in the topic.
    let gw = Node::start(
        "gateway",
        &broker,
        &[("SIGNALCAST_ENGINE__RING_CAPACITY", "20"), ("SIGNALCAST_KAFKA__HISTORY_MAX_MESSAGES", "75")],
    )
    .await;
    let mut first = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    let epoch = first.subscribe("signals_enterprise").await["epoch"].clone();
    let p = broker.producer();
    for n in 1..=100 {
        let (key, value) = signal_json(n);
        produce_signal(&p, &key, value.as_bytes(), None).await;
    }
    eventually(60, "the gateway has all 100", async || {
        gw.metric("signalcast_channel_head_seq{tier=\"enterprise\"}").await >= 100.0
    })
    .await;

    let mut late = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    late.send(json!({"type":"SUBSCRIBE","channel":"signals_enterprise","since":10,"epoch":epoch})).await;
    let resumed = late.next_of(&["SUBSCRIBED"]).await;
    assert_eq!(
        (resumed["recovered"].clone(), resumed["seq"].clone()),
        (json!(true), json!(100)),
        "{resumed}"
    );
    let mut got = Vec::new();
    read_until(&mut late, &mut got, 90, Duration::from_secs(10), "the gap").await;
    assert_eq!(got, (11..=100).map(|s| (s, u128::from(s as u32))).collect::<Vec<_>>(), "11..=100 in order");
    // Then live, with nothing in between missing.
    let (key, value) = signal_json(101);
    produce_signal(&p, &key, value.as_bytes(), None).await;
    let live = next_signal(&mut late, Duration::from_secs(30)).await.expect("live after the read-back");
    assert_eq!(seq_and_id(&live), (101, 101));

    // Deeper than history_max_messages (80 > 75), or another epoch: told, not silently cut.
    for (since, epoch) in [(1, epoch.clone()), (50, json!("0123456789abcdef"))] {
        let mut c = Client::connect(&gw.ws_url("u-enterprise-1")).await;
        c.send(json!({"type":"SUBSCRIBE","channel":"signals_enterprise","since":since,"epoch":epoch})).await;
        let answer = c.next_of(&["SUBSCRIBED"]).await;
        assert_eq!(answer["recovered"], false, "since {since}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_costs_connected_clients_nothing() {
    let _serial = serial().await;
    let mut broker = Broker::start_persistent();
    broker.create_input_topics(1).await;
    let engine = Node::start("engine", &broker, &[]).await;
    let gw = Node::start("gateway", &broker, &[]).await;

    const N: u128 = 300;
    let produced: Vec<u128> = (1..=N).collect();
    let mut followers = Vec::new();
    for (user, channel) in [("u-enterprise-1", "signals_enterprise"), ("u-premium-1", "signals_premium")] {
        let url = gw.ws_url(user);
        let mut s = ledger::Subscriber::new(channel);
        s.connect(&url).await.unwrap();
        let progress = s.progress.clone();
        followers.push((channel, progress, tokio::spawn(s.follow(vec![url], N, Duration::from_secs(180)))));
    }
    // The producer is an ordinary librdkafka one: it retries through the outage.
    let feeding = feed(broker.producer(), 1..=N);
    let deadline = Instant::now() + Duration::from_secs(60);
    while followers[0].1.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "signals before the broker restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    let _producer = feeding.await.unwrap();

    for (channel, _, task) in followers {
        let ledger = task.await.unwrap().ledger;
        let v = ledger.verify(&produced).unwrap_or_else(|e| panic!("broker restart, {channel}: {e}"));
        println!("broker restart, {channel}: {v:?}");
        assert_eq!(
            (v.delivered, v.resumes, v.told),
            (N as usize, 0, 0),
            "{channel}: every signal once on the same connection"
        );
    }
    let dups = engine.metric("signalcast_drops_total{reason=\"duplicate_id\"}").await;
    println!("records the engine read twice across the restart and dropped by id: {dups}");
}

/// The records of the DLQ as (error.code, value), until `n` are in (20 s at most).
fn read_dlq(broker: &Broker, n: usize) -> Vec<(Option<String>, Option<Vec<u8>>)> {
    let dlq: BaseConsumer = broker.client().set("group.id", "dlq-reader").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..6 {
        tpl.add_partition_offset("raw-signals.dlq", partition, Offset::Beginning).unwrap();
    }
    dlq.assign(&tpl).unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let code = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "error.code")?.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            dead.push((code, m.payload().map(<[u8]>::to_vec)));
        }
    }
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_signals_without_a_producers_signature_go_to_the_dlq_and_never_reach_clients() {
    let (_serial, broker, node, mut client) = one_node_and_a_subscriber("all").await;

    let p = broker.producer();
    // Written straight to Kafka, past the producers' keys: unsigned, signed by a
    // producer nobody knows, with a wrong key, and a signed record altered on the way.
    let (k1, v1) = signal_json(0xa1);
    let forged =
        [(0xa2, None), (0xa3, Some(("mallory", "guessed"))), (0xa4, Some((PRODUCER, "not-the-key")))];
    for (id, signer) in forged {
        let (key, value) = signal_json(id);
        let headers = signer.map(|(who, k)| signed_by(who, k, now_ms(), &key, value.as_bytes(), None));
        produce(&p, "raw-signals", &key, value.as_bytes(), headers).await;
    }
    // A genuine signature, of another record.
    let (key, value) = signal_json(0xa7);
    let stolen = signed_by(PRODUCER, PRODUCER_KEY, now_ms(), &k1, v1.as_bytes(), None);
    produce(&p, "raw-signals", &key, value.as_bytes(), Some(stolen)).await;
    // A genuine record signed twenty minutes ago: a captured record replayed.
    let (key, value) = signal_json(0xa5);
    let old = signed_by(PRODUCER, PRODUCER_KEY, now_ms() - 20 * 60 * 1000, &key, value.as_bytes(), None);
    produce(&p, "raw-signals", &key, value.as_bytes(), Some(old)).await;
    let (key, value) = signal_json(0xa6);
    produce_signal(&p, &key, value.as_bytes(), None).await;

    let got = next_signal(&mut client, Duration::from_secs(60)).await.expect("the signed signal");
    assert_eq!(common::id_of(&got), 0xa6, "only the signed record is routed: {got}");
    client.no_signal_within(Duration::from_secs(2)).await;
    let codes: Vec<Option<String>> = read_dlq(&broker, 5).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        codes,
        ["unsigned", "unknown_producer", "bad_signature", "bad_signature", "stale_signature"]
            .map(|c| Some(c.to_owned()))
            .to_vec()
    );
    assert_eq!(node.metric("signalcast_kafka_unauthenticated_total").await, 5.0);
    assert_eq!(node.metric("signalcast_kafka_dead_lettered_total").await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_signals_tier_record_is_dropped_and_counted_and_clients_stay_connected() {
    let (_serial, broker, gw, mut client) = one_node_and_a_subscriber("gateway").await;

    // Whoever can write to signals.enterprise, as an engine would (headers and all).
    let s = common::signal(0xb1, 8_000, Category::Equity);
    let now = UnixNanos::now();
    let mut good = Vec::new();
    engine::pipeline::encode::signal_data(&mut good, &s, None, now, now, None);
    let headers = |category: &str| {
        let ts = now.0.to_string();
        OwnedHeaders::new()
            .insert(Header { key: "content-type", value: Some("application/json") })
            .insert(Header { key: "sc-category", value: Some(category) })
            .insert(Header { key: "sc-ingest-ts", value: Some(&ts) })
            .insert(Header { key: "sc-routed-ts", value: Some(&ts) })
    };
    let mut invalid_utf8 = good.clone();
    invalid_utf8[12] = 0xff;
    let mut huge = good.clone();
    let at = huge.len() - 1;
    huge.splice(at..at, format!(",\"pad\":\"{}\"", "x".repeat(10_000)).into_bytes());
    let p = broker.producer();
    let key = s.id.hyphenated().to_string();
    for (value, category) in [
        (b"{\"id\": not json".to_vec(), "equity"),
        (invalid_utf8, "equity"),
        (huge, "equity"),
        (good.clone(), "crypto"),
        (b"[1,2,3]".to_vec(), "equity"),
        (good.clone(), "equity"),
    ] {
        produce(&p, "signals.enterprise", &key, &value, Some(headers(category))).await;
    }
    let got = next_signal(&mut client, Duration::from_secs(30)).await.expect("the well-formed record");
    assert_eq!((common::id_of(&got), got["seq"].as_u64()), (0xb1, Some(6)), "{got}");
    assert_eq!(got["data"], serde_json::from_slice::<Value>(&good).unwrap());
    // Still connected: a PING is answered (a broken frame would have closed it, 1007).
    client.send(json!({"type":"PING"})).await;
    assert_eq!(client.next_of(&["PONG"]).await["type"], "PONG");
    assert_eq!(gw.metric("signalcast_kafka_relay_rejected_total").await, 5.0);
    assert_eq!(gw.metric("signalcast_kafka_relayed_total").await, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_the_dlq_refuses_is_given_up_and_the_partition_moves_on() {
    let (_serial, broker, node, mut client) = one_node_and_a_subscriber("all").await;

    // 1.5 MB: poison (over 64 KiB), and over the DLQ producer's message.max.bytes
    // (librdkafka's 1,000,000): the DLQ can never take it.
    let p: FutureProducer =
        broker.client().set("linger.ms", "0").set("message.max.bytes", "4000000").create().unwrap();
    let huge = vec![b' '; 1_500_000];
    produce_signal(&p, "RELIANCE", &huge, None).await;
    let (key, value) = signal_json(0xc1);
    produce_signal(&p, &key, value.as_bytes(), None).await;

    let got =
        next_signal(&mut client, Duration::from_secs(60)).await.expect("the record after the poison one");
    assert_eq!(common::id_of(&got), 0xc1);
    assert_eq!(node.metric("signalcast_kafka_dlq_failed_total").await, 1.0);
    assert_eq!(node.metric("signalcast_kafka_dead_lettered_total").await, 0.0);
    // Later poison the DLQ can take still goes there.
    produce_signal(&p, "RELIANCE", b"{\"id\": not json", None).await;
    let dead = read_dlq(&broker, 1);
    assert_eq!(dead.first().map(|d| d.0.clone()), Some(Some("invalid_json".to_owned())), "{dead:?}");
}

/// Writes `[kafka.client]` SASL settings to a config file for a node.
fn sasl_config(dir: &TempDir, name: &str, user: &str, password: &str) -> String {
    let mut toml = String::from("[kafka.client]\n");
    for (k, v) in sasl(user, password) {
        toml.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    let path = dir.0.join(name);
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_credentials_let_nodes_in_and_wrong_ones_stop_the_node_clearly() {
    let _serial = serial().await;
    let broker = Broker::start_authenticated(&[("signalcast", "s3cret-scram")]);
    broker.create_input_topics(1).await;
    let dir = TempDir::new("sasl");
    let good = sasl_config(&dir, "good.toml", "signalcast", "s3cret-scram");
    let engine = Node::start("engine", &broker, &[("SIGNALCAST_CONFIG", &good)]).await;
    let gw = Node::start("gateway", &broker, &[("SIGNALCAST_CONFIG", &good)]).await;
    let mut client = Client::connect(&gw.ws_url("u-enterprise-1")).await;
    client.subscribe("signals_enterprise").await;
    let p = broker.producer();
    let (key, value) = signal_json(0x5a51);
    produce_signal(&p, &key, value.as_bytes(), None).await;
    let got =
        next_signal(&mut client, Duration::from_secs(60)).await.expect("through the authenticated broker");
    assert_eq!(common::id_of(&got), 0x5a51);
    assert_eq!(engine.metric("signalcast_kafka_published_total").await, 2.0);

    // A wrong password: the node says so and stops, rather than retrying in silence.
    let bad = sasl_config(&dir, "bad.toml", "signalcast", "wrong");
    let out = tokio::task::spawn_blocking({
        let addr = broker.addr.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_signalcast"))
                .args(["serve", "--role", "engine", "--kafka-brokers", &addr])
                .env("SIGNALCAST_CONFIG", &bad)
                .env("SIGNALCAST_LISTEN", format!("127.0.0.1:{}", free_port()))
                .env("SIGNALCAST_FEED_LISTEN", format!("127.0.0.1:{}", free_port()))
                .env("SIGNALCAST_DEMO__ENABLED", "false")
                .env("SIGNALCAST_LOG", "warn")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node with a wrong password must not start: {stderr}");
    assert!(stderr.contains("refused this node's credentials"), "{stderr}");
}

/// [4/10] 6 on Kafka: a `market-data` record moves prices only when signed by a
/// producer with the right to send ticks, on an engine node (refused ones go to the DLQ)
/// and on a gateway node, which reads the topic itself for `prices_general`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_on_kafka_need_a_signature_and_the_producers_tick_right() {
    let _serial = serial().await;
    let broker = Broker::start();
    broker.create_input_topics(1).await;
    let engine = Node::start("engine", &broker, &[]).await;
    let gw = Node::start("gateway", &broker, &[]).await;
    let mut client = Client::connect(&gw.ws_url("u-free-1")).await;
    assert_eq!(client.subscribe("prices_general").await["type"], "SUBSCRIBED");
    let p = broker.producer();
    let tick = |symbol: &str| serde_json::to_vec(&common::tick(symbol, "NSE", "100.2500")).unwrap();
    // Unsigned, and signed by analyst-desk (a known producer without the tick right).
    produce(&p, "market-data", "UNSIGNED", &tick("UNSIGNED"), None).await;
    let (desk, alpha) = (tick("DESK"), tick("ALPHA")); // signed as sent: made once
    let desk_sig = signed_by("analyst-desk", "dev-desk-8899aabbccddeeff", now_ms(), "DESK", &desk, None);
    produce(&p, "market-data", "DESK", &desk, Some(desk_sig)).await;
    let alpha_sig = signed_by(PRODUCER, PRODUCER_KEY, now_ms(), "ALPHA", &alpha, None);
    produce(&p, "market-data", "ALPHA", &alpha, Some(alpha_sig)).await;

    let mut symbols = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(Ok(WsMessage::Text(t)))) = tokio::time::timeout_at(deadline, client.ws.next()).await {
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "PRICE_UPDATE" {
            symbols.push(v["data"]["symbol"].as_str().unwrap().to_owned());
            if symbols.iter().any(|s| s == "ALPHA") {
                break;
            }
        }
    }
    assert_eq!(symbols, ["ALPHA"], "only the tick of a producer with the right moves prices");
    client.no_signal_within(Duration::from_millis(500)).await;
    // The DLQ keeps the records' keys, so they may sit on different partitions: any order.
    let mut codes: Vec<Option<String>> = read_dlq(&broker, 2).into_iter().map(|(c, _)| c).collect();
    codes.sort();
    assert_eq!(codes, [Some("forbidden_tick".to_owned()), Some("unsigned".to_owned())]);
    eventually(30, "the gateway counted both refusals", async || {
        gw.metric("signalcast_kafka_unauthenticated_total").await >= 2.0
    })
    .await;
    assert_eq!(engine.metric("signalcast_kafka_unauthenticated_total").await, 2.0);
}
