//! Shared pieces of the gateway's integration tests: the real server on 127.0.0.1:0, a
//! real producer on its TCP feed, WebSocket clients (tokio-tungstenite, and a raw one
//! for what a well-behaved library refuses to send).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use engine::feed::{Producer, ProducerConfig};
use engine::model::UnixNanos;
use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Running};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PRODUCER: (&str, &str) = ("model-alpha", "dev-alpha-0c1d2e3f4a5b6c7d");

/// A tier table like the default one, with delays of one second instead of thirty.
pub const FAST_TIERS: &str = r#"
min_confidence = 75.00
delayed_feed_secs = 1
[free]
min_confidence = 90.00
delay_secs = 1
signals_per_day = 20
[basic]
min_confidence = 85.00
signals_per_day = 200
[premium]
min_confidence = 75.00
signals_per_day = 2000
[enterprise]
min_confidence = 75.00
"#;

pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("signalcast-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", UnixNanos::now().0));
    std::fs::write(&path, text).unwrap();
    path
}

/// A data directory no other server uses (one process per directory).
pub fn data_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("signalcast-test-{}", std::process::id())).join(format!("data-{n}"))
}

/// Test defaults: no demo producer, fast delays, one-second heartbeat margins left alone,
/// a data directory of its own.
pub fn config() -> Config {
    let mut c = Config::default();
    c.store.data_dir = data_dir();
    c.demo.enabled = false;
    c.policy_file = Some(temp_file("tiers.toml", FAST_TIERS));
    c.shards = 2;
    c.drain_timeout_secs = 1;
    c
}

pub async fn start(config: Config) -> Running {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway::start_on(config, http, feed).await.unwrap()
}

pub async fn producer(server: &Running) -> Producer {
    Producer::connect(ProducerConfig::new(
        server.feed_addr.expect("a feed").to_string(),
        PRODUCER.0,
        PRODUCER.1,
    ))
    .await
    .unwrap()
}

pub fn token(server: &Running, user: &str) -> String {
    server.dev_auth.mint(user, Duration::from_secs(3600)).unwrap()
}

pub fn url(server: &Running, token: &str) -> String {
    format!("ws://{}/ws?token={token}", server.http_addr)
}

/// An upgrade request for `/ws` that carries the token in the WebSocket subprotocol, as
/// the TypeScript client does: `Sec-WebSocket-Protocol: signalcast.v1,
/// signalcast.token.<JWT>` (nothing in the URL).
pub fn protocol_request(
    server: &Running,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", server.http_addr).into_client_request().unwrap();
    let offer = format!("signalcast.v1, signalcast.token.{token}");
    req.headers_mut().insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
    req
}

/// A valid signal; `n` makes the id.
#[allow(unused_imports)] // not every test binary uses both
pub use engine::testkit::{signal, tick};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON WebSocket client on tokio-tungstenite.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self::from_ws(ws).await
    }

    /// A client on a socket already open (WSS with a test certificate, say).
    pub async fn from_ws(ws: Ws) -> Self {
        let mut c = Self { ws };
        let welcome = c.next().await;
        assert_eq!(welcome["data"]["event"], "welcome", "{welcome}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(WsMessage::text(v.to_string())).await.unwrap();
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"type": "SUBSCRIBE", "channel": channel})).await;
        self.next_of(&["SUBSCRIBED", "ERROR"]).await
    }

    /// The next JSON message (10 s at most); panics on close.
    pub async fn next(&mut self) -> Value {
        match self.try_next(Duration::from_secs(10)).await {
            Some(v) => v,
            None => panic!("no message within 10 s"),
        }
    }

    /// The next JSON message, or None after `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("connection ended"),
                Ok(Some(m)) => m.unwrap(),
            };
            match msg {
                WsMessage::Text(t) => {
                    if std::env::var("WS_DEBUG").is_ok() {
                        eprintln!("RECV {}", &t.as_str()[..t.len().min(120)]);
                    }
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                WsMessage::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next message whose type is one of `types` (others are skipped).
    pub async fn next_of(&mut self, types: &[&str]) -> Value {
        loop {
            let v = self.next().await;
            if types.iter().any(|t| v["type"] == *t) {
                return v;
            }
        }
    }

    /// Collects `n` SIGNAL_UPDATEs.
    pub async fn signals(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_of(&["SIGNAL_UPDATE"]).await);
        }
        out
    }

    /// Asserts no SIGNAL_UPDATE arrives within `wait`.
    pub async fn no_signal_within(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(v) =
            self.try_next(deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
            assert_ne!(v["type"], "SIGNAL_UPDATE", "unexpected {v}");
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), self.ws.next()).await.unwrap() {
                Some(Ok(WsMessage::Close(Some(f)))) => return Some(f.code.into()),
                Some(Ok(WsMessage::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A sample of a Prometheus exposition: the value on the first line that starts with
/// `series` (a name, or a name with its labels).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// The server's metrics once `series` reads `value` (shards publish their counts after
/// a write sweep, so a client can read a message a moment before it is counted); the
/// last exposition read if it never does within 5 s.
pub async fn metrics_once(server: &Running, series: &str, value: f64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = server.app.metrics();
        if sample(&m, series) == Some(value) || std::time::Instant::now() >= deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn id_of(v: &Value) -> u128 {
    uuid::Uuid::parse_str(v["data"]["id"].as_str().unwrap()).unwrap().as_u128()
}

/// A WebSocket client written by hand: it can send what libraries will not (unmasked
/// or invalid frames) and stop reading at will, with a small receive buffer.
/// A client frame (masked unless `mask` is false).
pub fn client_frame(opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    gateway::ws::client_frame(true, opcode, payload, mask.then_some([1, 2, 3, 4]))
}

pub struct RawClient {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, token: &str, recv_buffer: Option<u32>) -> Self {
        Self::connect_with(addr, token, recv_buffer, &[]).await
    }

    /// Connects, sending `early` (client frames) in the same write as the upgrade
    /// request, as a client that does not wait for the 101 may.
    pub async fn connect_with(addr: SocketAddr, token: &str, recv_buffer: Option<u32>, early: &[u8]) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let mut req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(early);
        stream.write_all(&req).await.unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            stream.read_buf(&mut buf).await.unwrap();
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.advance(end);
        Self { stream, buf }
    }

    /// Sends a frame; `mask: false` breaks RFC 6455 on purpose.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], mask: bool) {
        self.stream.write_all(&client_frame(opcode, payload, mask)).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_frame(0x1, s.as_bytes(), true).await;
    }

    /// The next server frame: (opcode, payload).
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    self.buf.advance(at);
                    return Some((op, self.buf.split_to(len).to_vec()));
                }
            }
            match tokio::time::timeout(Duration::from_secs(15), self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no frame within 15 s"),
            }
        }
    }

    /// Reads until a close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.frame().await {
            if op == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// Minimal base64url without padding, to forge tokens by hand.
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The binary on its embedded default with `env` added, and the premium ready URL it
/// prints.
pub async fn serve_default(env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        // Ephemeral ports, so that tests never collide with anything on 8080/7000.
        .env("SIGNALCAST_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_FEED_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_STORE__DATA_DIR", data_dir())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let url = loop {
        let line =
            tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        if line.starts_with("premium") {
            break line.split_whitespace().last().unwrap().to_owned();
        }
    };
    // Keep reading: a closed pipe would make the server's next line a panic.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

pub fn kill(child: &Child, signal: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
}

pub fn dev_url(http: SocketAddr, user: &str) -> String {
    let token = gateway::server::dev_auth(&gateway::Config::default())
        .unwrap()
        .mint(user, Duration::from_secs(3600))
        .unwrap();
    format!("ws://{http}/ws?token={token}")
}

/// A `signalcast serve` process in single-node mode on fixed ports and one data
/// directory, so that a restarted one is where its clients and producers look for it,
/// with what its predecessor stored.
pub struct Server {
    pub child: Child,
}

impl Server {
    pub async fn start(http: SocketAddr, feed: SocketAddr, data: &std::path::Path) -> Self {
        Self::start_with(http, feed, data, &[]).await
    }

    pub async fn start_with(
        http: SocketAddr,
        feed: SocketAddr,
        data: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_signalcast"))
            .envs(env.iter().copied())
            .env("SIGNALCAST_STORE__DATA_DIR", data)
            .env("SIGNALCAST_LISTEN", http.to_string())
            .env("SIGNALCAST_FEED_LISTEN", feed.to_string())
            .env("SIGNALCAST_DEMO__ENABLED", "false")
            .env("SIGNALCAST_DRAIN_TIMEOUT_SECS", "2")
            .env("SIGNALCAST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut s = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !get(http, "/health/ready").await.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            assert!(s.child.try_wait().unwrap().is_none(), "signalcast exited at start");
            assert!(Instant::now() < deadline, "signalcast not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    /// SIGTERM (drain) or SIGKILL, and waits for the exit.
    pub async fn stop(mut self, signal: &str) {
        kill(&self.child, signal);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "signalcast did not exit on {signal}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
