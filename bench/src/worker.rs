//! A client worker process: holds many subscriber connections and records, for every
//! message, now minus the send time the message carries.
//!
//! The orchestrator (`run`) talks to it over stdin/stdout, one line each way:
//! `READY {…}` once connected, then `RESET` (forget what was recorded), `REPORT`
//! (print `REPORT {…}` and reset) and `STOP` (report and exit).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::proto::{Io, client_frame, next_frame, now_us, sent_us, wss_connect};
use crate::targets::{Endpoint, Target};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub endpoint: Endpoint,
    pub conns: usize,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Of `conns`, how many stop reading right after subscribing (slow consumers): they
    /// keep their socket open and never read again.
    #[serde(default)]
    pub stalled: usize,
    /// Churn: each connection subscribes, reads for 1–4 s, closes, and starts again,
    /// until the worker is stopped (its READY comes after the first round).
    #[serde(default)]
    pub churn: bool,
    /// What the reading subscribers are (stalled and churning ones are always light).
    #[serde(default)]
    pub client: ClientMode,
    /// signalcast targets: the filter (JSON) each SUBSCRIBE carries (`--filter`).
    #[serde(default)]
    pub filter: Option<String>,
    /// signalcast targets: offer permessage-deflate and inflate compressed frames
    /// (light client only).
    #[serde(default)]
    pub deflate: bool,
}

/// This worker's SUBSCRIBE to signalcast (with the run's filter, if any).
static SUBSCRIBE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This worker's subscribers offer permessage-deflate (`--deflate`).
static DEFLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn subscribe_message() -> &'static str {
    SUBSCRIBE.get().map_or(r#"{"type":"SUBSCRIBE","channel":"signals_premium"}"#, String::as_str)
}

/// What a subscriber costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// The bench's own minimal client: no JSON parsing, no allocation per message beyond
    /// the read buffer. Measures the server with as little client cost as possible.
    #[default]
    Light,
    /// A client as real Rust bots are written: tokio-tungstenite (its default buffers),
    /// every text message parsed with serde_json. Measures the server beside clients
    /// that cost what real ones do.
    Tungstenite,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connected: usize,
    /// Of `connected`, those that never read after subscribing.
    #[serde(default)]
    pub stalled: usize,
    pub failed: usize,
    pub connect_secs: f64,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub received: u64,
    /// Connections that ended during the window (closed by the server or failed).
    pub lost_conns: usize,
    /// (latency µs, count) pairs of the window's HDR histogram.
    pub hist: Vec<(u64, u64)>,
    /// Bytes of the data frames received, headers included, as they came off the wire.
    #[serde(default)]
    pub wire_bytes: u64,
}

struct Shared {
    hist: Histogram<u64>,
    received: u64,
    lost: usize,
    wire_bytes: u64,
    /// One inflater for the worker's connections: the server keeps no context between
    /// messages (`server_no_context_takeover`), so each message inflates on its own.
    inflater: gateway::ws::deflate::Inflater,
    inflated: Vec<u8>,
}

/// Latencies from 1 µs to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

pub fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    DEFLATE.store(spec.deflate, std::sync::atomic::Ordering::Relaxed);
    if let Some(f) = &spec.filter {
        let _ = SUBSCRIBE.set(format!(r#"{{"type":"SUBSCRIBE","channel":"signals_premium","filter":{f}}}"#));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shared = Rc::new(RefCell::new(Shared {
            hist: histogram(),
            received: 0,
            lost: 0,
            wire_bytes: 0,
            inflater: gateway::ws::deflate::Inflater::default(),
            inflated: Vec::new(),
        }));
        let started = Instant::now();
        let sem = Rc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1)));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        for n in 0..spec.conns {
            let (ep, shared, sem, ready) =
                (spec.endpoint.clone(), Rc::clone(&shared), Rc::clone(&sem), ready_tx.clone());
            let stalled = n < spec.stalled;
            tokio::task::spawn_local(async move {
                let permit = sem.acquire().await;
                let conn = subscribe(&ep).await;
                drop(permit);
                match conn {
                    Ok(c) if spec.churn => {
                        let _ = ready.send(Ok(()));
                        churn(c, ep, n, &shared).await;
                    }
                    Ok(c) if stalled => {
                        let _ = ready.send(Ok(()));
                        // Holds the socket, never reads: the server's bound decides.
                        std::future::pending::<()>().await;
                        drop(c);
                    }
                    Ok(c) if spec.client == ClientMode::Tungstenite => {
                        drop(c);
                        match tungstenite::subscribe(&ep).await {
                            Ok(ws) => {
                                let _ = ready.send(Ok(()));
                                tungstenite::read_loop(ws, &ep, &shared).await;
                                shared.borrow_mut().lost += 1;
                            }
                            Err(e) => {
                                let _ = ready.send(Err(e.to_string()));
                            }
                        }
                    }
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        c.read_loop(&ep, &shared).await;
                        shared.borrow_mut().lost += 1;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                    }
                }
            });
        }
        let mut ready = Ready::default();
        while ready.connected + ready.failed < spec.conns {
            match ready_rx.recv().await {
                Some(Ok(())) => ready.connected += 1,
                Some(Err(e)) => {
                    ready.failed += 1;
                    ready.first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        ready.stalled = spec.stalled.min(ready.connected);
        ready.connect_secs = started.elapsed().as_secs_f64();
        say(&format!("READY {}", serde_json::to_string(&ready)?));
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let mut s = shared.borrow_mut();
            match line.trim() {
                "RESET" => s.reset(),
                cmd @ ("REPORT" | "STOP") => {
                    let report = Report {
                        received: s.received,
                        lost_conns: s.lost,
                        hist: s
                            .hist
                            .iter_recorded()
                            .map(|v| (v.value_iterated_to(), v.count_at_value()))
                            .collect(),
                        wire_bytes: s.wire_bytes,
                    };
                    s.reset();
                    say(&format!("REPORT {}", serde_json::to_string(&report)?));
                    if cmd == "STOP" {
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    })
}

impl Shared {
    /// Forgets what was recorded (a new window starts).
    fn reset(&mut self) {
        self.hist.reset();
        self.received = 0;
        self.lost = 0;
        self.wire_bytes = 0;
    }
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Conn {
    stream: Box<dyn Io>,
    buf: BytesMut,
    /// With context takeover (a server that opted in), this connection's own inflater,
    /// which keeps its window; otherwise the worker's shared one.
    inflater: Option<Box<gateway::ws::deflate::Inflater>>,
}

/// This worker's TLS client (`--tls`): trusts the endpoint's certificate, and makes a
/// full handshake per connection (no session resumption), as distinct clients do.
fn tls_connector(ep: &Endpoint) -> std::io::Result<Option<tokio_rustls::TlsConnector>> {
    static CONNECTOR: std::sync::OnceLock<Option<tokio_rustls::TlsConnector>> = std::sync::OnceLock::new();
    if let Some(c) = CONNECTOR.get() {
        return Ok(c.clone());
    }
    let made = match &ep.tls_ca {
        None => None,
        Some(ca) => {
            let mut config = (*tls::client::client_config(ca).map_err(std::io::Error::other)?).clone();
            config.resumption = rustls::client::Resumption::disabled();
            Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
        }
    };
    Ok(CONNECTOR.get_or_init(|| made).clone())
}

/// Reads whole frames until `done` says a frame completes the subscribe step.
async fn read_until(c: &mut Conn, mut done: impl FnMut(u8, &[u8]) -> bool) -> std::io::Result<()> {
    loop {
        while let Some((op, start, end)) = next_frame(&c.buf) {
            let hit = done(op, &c.buf[start..end]);
            c.buf.advance(end);
            if hit {
                return Ok(());
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), c.stream.read_buf(&mut c.buf)).await?? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn subscribe(ep: &Endpoint) -> std::io::Result<Conn> {
    // The offer browsers and Python `websockets` make.
    let deflate = DEFLATE.load(std::sync::atomic::Ordering::Relaxed) && ep.target.is_signalcast();
    let headers =
        if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    // signalcast without a filter: the channel is named in the upgrade request and
    // SUBSCRIBED follows WELCOME with no second round trip (as nchan's URL names its
    // channel). A filter takes a SUBSCRIBE message.
    let in_url = ep.target.is_signalcast() && SUBSCRIBE.get().is_none();
    let path = if in_url { format!("{}&subscribe=signals_premium", ep.path) } else { ep.path.clone() };
    let (stream, buf, head) = wss_connect(ep.addr, &path, headers, tls_connector(ep)?.as_ref()).await?;
    if deflate && !head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate") {
        return Err(std::io::Error::other("the server did not accept permessage-deflate"));
    }
    let context = deflate && !head.to_ascii_lowercase().contains("server_no_context_takeover");
    let inflater = context.then(|| Box::new(gateway::ws::deflate::Inflater::keeping_context()));
    let mut c = Conn { stream, buf, inflater };
    match ep.target {
        Target::Signalcast | Target::SignalcastKafka => {
            if !in_url {
                c.stream.write_all(&client_frame(0x1, subscribe_message().as_bytes())).await?;
            }
            read_until(&mut c, |_, p| p.windows(12).any(|w| w == b"\"SUBSCRIBED\"")).await?;
        }
        Target::Reference | Target::NodeWs => read_until(&mut c, |_, p| p.starts_with(b"subscribed")).await?,
        Target::Nats => {
            read_until(&mut c, |_, p| p.starts_with(b"INFO")).await?;
            let hello = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB bench.ch1 1\r\nPING\r\n";
            c.stream.write_all(&client_frame(0x2, hello)).await?;
            read_until(&mut c, |_, p| p.windows(4).any(|w| w == b"PONG")).await?;
        }
        Target::Nchan => {}
    }
    Ok(c)
}

impl Conn {
    async fn read_loop(mut self, ep: &Endpoint, shared: &RefCell<Shared>) {
        let mut nats = BytesMut::new();
        // signalcast closes clients that say nothing for 60 s: a PING every 20 s.
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        ping.reset();
        loop {
            while let Some((op, start, end)) = next_frame(&self.buf) {
                if op == 0x8 {
                    return;
                }
                let payload = &self.buf[start..end];
                if ep.target == Target::Nats {
                    nats.extend_from_slice(payload);
                } else if op == 0x1 {
                    let mut s = shared.borrow_mut();
                    s.wire_bytes += end as u64;
                    if self.buf[0] & RSV1 != 0 {
                        let Shared { inflater, inflated, .. } = &mut *s;
                        let inflater = self.inflater.as_deref_mut().unwrap_or(inflater);
                        if inflater.inflate(payload, 1 << 20, inflated).is_err() {
                            return;
                        }
                        let text = std::mem::take(inflated);
                        s.record(&text);
                        s.inflated = text;
                    } else {
                        s.record(payload);
                    }
                }
                self.buf.advance(end);
            }
            if ep.target == Target::Nats && self.nats_messages(&mut nats, shared).await.is_err() {
                return;
            }
            tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return,
                },
                _ = ping.tick(), if ep.target.is_signalcast() => {
                    if self.stream.write_all(&client_frame(0x1, br#"{"type":"PING"}"#)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The NATS protocol inside the frames: `MSG <subject> <sid> <n>\r\n<payload>\r\n`,
    /// and `PING\r\n`, which must be answered.
    async fn nats_messages(&mut self, nats: &mut BytesMut, shared: &RefCell<Shared>) -> std::io::Result<()> {
        loop {
            let Some(eol) = nats.windows(2).position(|w| w == b"\r\n") else { return Ok(()) };
            let line = &nats[..eol];
            if line.starts_with(b"MSG ") {
                let n: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if nats.len() < eol + 2 + n + 2 {
                    return Ok(());
                }
                record(shared, &nats[eol + 2..eol + 2 + n]);
                nats.advance(eol + 2 + n + 2);
            } else {
                if line == b"PING" {
                    self.stream.write_all(&client_frame(0x2, b"PONG\r\n")).await?;
                }
                nats.advance(eol + 2);
            }
        }
    }
}

/// Holds `c` for a while, closes it, and connects again, forever: `received` counts the
/// connections made.
async fn churn(mut c: Conn, ep: Endpoint, n: usize, shared: &RefCell<Shared>) {
    let mut round = n;
    loop {
        let hold = Duration::from_millis(1_000 + (round as u64 * 7_919) % 3_000);
        let _ = tokio::time::timeout(hold, async {
            while matches!(c.stream.read_buf(&mut c.buf).await, Ok(k) if k > 0) {
                c.buf.clear();
            }
        })
        .await;
        let _ = c.stream.write_all(&client_frame(0x8, &1000u16.to_be_bytes())).await;
        drop(c);
        round += 1;
        c = loop {
            match subscribe(&ep).await {
                Ok(next) => break next,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        shared.borrow_mut().received += 1;
    }
}

/// A frame's first byte: the message is compressed (permessage-deflate).
const RSV1: u8 = 0x40;

fn record(shared: &RefCell<Shared>, payload: &[u8]) {
    shared.borrow_mut().record(payload);
}

impl Shared {
    fn record(&mut self, payload: &[u8]) {
        let Some(sent) = sent_us(payload) else { return };
        self.received += 1;
        let _ = self.hist.record((now_us() - sent).max(1) as u64);
    }
}

/// The heavier client mode: tokio-tungstenite, JSON parsed per message.
mod tungstenite {
    use std::cell::RefCell;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async};

    use super::{Shared, now_us, sent_us};
    use crate::targets::{Endpoint, Target};

    pub(super) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

    fn io(e: impl std::fmt::Display) -> std::io::Error {
        std::io::Error::other(e.to_string())
    }

    /// Connects, upgrades and subscribes as the target wants.
    pub(super) async fn subscribe(ep: &Endpoint) -> std::io::Result<Ws> {
        let tcp = tokio::net::TcpStream::connect(ep.addr).await?;
        tcp.set_nodelay(true)?;
        // `--tls`: WSS, the same rustls client as the light one's (a full handshake each).
        let (stream, url) = match super::tls_connector(ep)? {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io)?;
                let url = format!("wss://localhost:{}{}", ep.addr.port(), ep.path);
                (MaybeTlsStream::Rustls(connector.connect(name, tcp).await?), url)
            }
            None => (MaybeTlsStream::Plain(tcp), format!("ws://{}{}", ep.addr, ep.path)),
        };
        let (mut ws, _) = client_async(url, stream).await.map_err(io)?;
        async fn until(ws: &mut Ws, done: fn(&Message) -> bool) -> std::io::Result<()> {
            let fut = async {
                while let Some(m) = ws.next().await {
                    if done(&m.map_err(io)?) {
                        return Ok(());
                    }
                }
                Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            };
            tokio::time::timeout(Duration::from_secs(30), fut).await.map_err(io)?
        }
        match ep.target {
            Target::Signalcast | Target::SignalcastKafka => {
                ws.send(Message::text(super::subscribe_message())).await.map_err(io)?;
                until(&mut ws, |m| m.to_text().is_ok_and(|t| t.contains("\"SUBSCRIBED\""))).await?;
            }
            Target::Reference | Target::NodeWs => {
                until(&mut ws, |m| m.to_text().is_ok_and(|t| t.starts_with("subscribed"))).await?;
            }
            Target::Nats => {
                until(&mut ws, |m| m.to_text().is_ok_and(|t| t.starts_with("INFO"))).await?;
                let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB bench.ch1 1\r\nPING\r\n";
                ws.send(Message::binary(hello.as_bytes().to_vec())).await.map_err(io)?;
                until(&mut ws, |m| m.clone().into_data().windows(4).any(|w| w == b"PONG")).await?;
            }
            Target::Nchan => {}
        }
        Ok(ws)
    }

    /// Reads until the connection ends, parsing every message as JSON where the target
    /// sends JSON, and recording its latency.
    pub(super) async fn read_loop(mut ws: Ws, ep: &Endpoint, shared: &RefCell<Shared>) {
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        ping.reset();
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => record_json(shared, t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => {
                        // NATS: `MSG <subject> <sid> <n>\r\n<payload>\r\n` (PING answered).
                        if b.starts_with(b"PING") {
                            if ws.send(Message::binary(b"PONG\r\n".to_vec())).await.is_err() {
                                return;
                            }
                        } else if let Some(at) = b.windows(2).position(|w| w == b"\r\n") {
                            record_json(shared, &b[at + 2..]);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                _ = ping.tick(), if ep.target.is_signalcast() => {
                    if ws.send(Message::text(r#"{"type":"PING"}"#)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Parses the message as JSON, as a real client would (and pays for it), then
    /// records now minus the send time it carries.
    fn record_json(shared: &RefCell<Shared>, payload: &[u8]) {
        if serde_json::from_slice::<serde_json::Value>(payload).is_err() {
            return;
        }
        let Some(sent) = sent_us(payload) else { return };
        let mut s = shared.borrow_mut();
        s.received += 1;
        let _ = s.hist.record((now_us() - sent).max(1) as u64);
    }
}
