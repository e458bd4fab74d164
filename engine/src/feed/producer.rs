//! The producer client: reconnects, resends from the last ACK, and slows the caller
//! down when too much is unacknowledged.
//!
//! One driver task owns the connection. [`Producer::send_signal`] hands it a signal
//! through a bounded queue; the driver numbers it (producer seq), writes it and keeps
//! the frame until an ACK covers it. After a reconnect the WELCOME says what the engine
//! has, and every kept frame above that is written again: at-least-once on the wire,
//! exactly-once in the channels (the engine drops the duplicates).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connection to the feed: a TCP stream, or TLS over one.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
type Conn = Box<dyn Stream>;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::codec::{
    ApiKey, EngineMessage, Hello, PROTOCOL_VERSION, ProducerMessage, encode_signal, next_frame,
};
use crate::model::{Signal, Tick, UnixNanos};

/// How to reach the engine and how patient to be.
#[derive(Clone)]
pub struct ProducerConfig {
    /// `host:port` of the engine's feed.
    pub addr: String,
    pub producer_id: String,
    pub api_key: String,
    /// Signals written but not yet acknowledged; `send_signal` waits beyond this.
    pub max_in_flight: usize,
    pub heartbeat_interval: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Signals are checked before sending with this `analysis` limit, so that a bad
    /// signal is refused at the caller instead of closing the connection.
    pub max_analysis_bytes: usize,
    /// TLS to a feed that serves it: the connector that verifies the engine's
    /// certificate (its chain and the host of `addr`). `None`: plain TCP.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ProducerConfig")
            .field("addr", &self.addr)
            .field("producer_id", &self.producer_id)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl ProducerConfig {
    pub fn new(addr: impl Into<String>, producer_id: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            producer_id: producer_id.into(),
            api_key: api_key.into(),
            max_in_flight: 4_096,
            heartbeat_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(2),
            max_analysis_bytes: 4_096,
            tls: None,
        }
    }
}

/// Why the producer cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("the engine refused this producer: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("cannot reach the engine: {0}")]
    Io(String),
    #[error("invalid signal: {0}")]
    Invalid(String),
    #[error("the producer is closed")]
    Closed,
}

/// ERROR codes after which reconnecting cannot help (and could loop forever).
fn is_fatal(code: &str) -> bool {
    !matches!(code, "shutting_down" | "idle_timeout" | "too_many_connections" | "handshake_timeout")
}

enum Cmd {
    Signal(Box<Signal>),
    Tick(Tick),
    Flush(oneshot::Sender<Result<(), ProducerError>>),
}

#[derive(Debug, Default)]
struct Shared {
    acked: AtomicU64,
    last_seq: AtomicU64,
    reconnects: AtomicU64,
    fatal: Mutex<Option<ProducerError>>,
}

impl Shared {
    fn fatal(&self) -> Option<ProducerError> {
        self.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A connected producer. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Producer {
    cmds: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    max_analysis_bytes: usize,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Signal(_) => "Signal",
            Self::Tick(_) => "Tick",
            Self::Flush(_) => "Flush",
        })
    }
}

impl Producer {
    /// Connects and authenticates; fails at once if the engine is unreachable or
    /// refuses the key. Later disconnects are retried in the background.
    pub async fn connect(cfg: ProducerConfig) -> Result<Self, ProducerError> {
        let (cmds, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let max_analysis_bytes = cfg.max_analysis_bytes;
        let driver = tokio::spawn(Driver::new(cfg, rx, Arc::clone(&shared)).run(ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self { cmds, shared, max_analysis_bytes, driver }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProducerError::Closed),
        }
    }

    /// Queues a signal; waits while `max_in_flight` signals are unacknowledged.
    pub async fn send_signal(&self, signal: &Signal) -> Result<(), ProducerError> {
        signal.validate(self.max_analysis_bytes).map_err(|e| ProducerError::Invalid(e.to_string()))?;
        self.command(Cmd::Signal(Box::new(signal.clone()))).await
    }

    /// Queues a tick. Ticks are not acknowledged or resent: only the latest matters.
    pub async fn send_tick(&self, tick: &Tick) -> Result<(), ProducerError> {
        tick.validate().map_err(|e| ProducerError::Invalid(e.to_string()))?;
        self.command(Cmd::Tick(*tick)).await
    }

    /// Waits until every signal sent so far is acknowledged.
    pub async fn flush(&self) -> Result<(), ProducerError> {
        let (tx, rx) = oneshot::channel();
        self.command(Cmd::Flush(tx)).await?;
        rx.await.unwrap_or(Err(ProducerError::Closed))
    }

    /// Flushes, then closes the connection.
    pub async fn close(self) -> Result<(), ProducerError> {
        let flushed = self.flush().await;
        drop(self.cmds);
        let _ = self.driver.await;
        flushed
    }

    /// Highest producer seq the engine has acknowledged.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Acquire)
    }

    /// Highest producer seq assigned so far.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// Reconnections since connect.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    async fn command(&self, cmd: Cmd) -> Result<(), ProducerError> {
        if let Some(e) = self.shared.fatal() {
            return Err(e);
        }
        self.cmds.send(cmd).await.map_err(|_| self.shared.fatal().unwrap_or(ProducerError::Closed))
    }
}

/// How a connection ended.
enum Ended {
    /// All handles dropped and everything acknowledged.
    Done,
    /// Try again.
    Retry(String),
    /// Give up.
    Fatal(ProducerError),
}

struct Driver {
    cfg: ProducerConfig,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    /// Frames written and not yet acknowledged, by producer seq.
    unacked: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
    flushes: Vec<oneshot::Sender<Result<(), ProducerError>>>,
    /// Every `Producer` handle is gone: finish the acks, then stop.
    closing: bool,
    out: Vec<u8>,
    scratch: AlignedVec,
}

impl Driver {
    fn new(cfg: ProducerConfig, cmds: mpsc::Receiver<Cmd>, shared: Arc<Shared>) -> Self {
        Self {
            cfg,
            cmds,
            shared,
            unacked: VecDeque::new(),
            next_seq: 0,
            flushes: Vec::new(),
            closing: false,
            out: Vec::with_capacity(64 * 1024),
            scratch: AlignedVec::new(),
        }
    }

    async fn run(mut self, ready: oneshot::Sender<Result<(), ProducerError>>) {
        let mut ready = Some(ready);
        let mut backoff = self.cfg.reconnect_min;
        loop {
            let ended = match self.connect().await {
                Ok((stream, rbuf)) => {
                    backoff = self.cfg.reconnect_min;
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    self.stream(stream, rbuf).await
                }
                Err(e) => e,
            };
            match ended {
                Ended::Done => return,
                Ended::Fatal(e) => {
                    tracing::error!(producer = %self.cfg.producer_id, error = %e, "producer stopped");
                    self.fail(e, ready.take());
                    return;
                }
                Ended::Retry(why) => {
                    if let Some(r) = ready.take() {
                        // The first connection must work; later ones are retried.
                        let _ = r.send(Err(ProducerError::Io(why)));
                        return;
                    }
                    tracing::warn!(producer = %self.cfg.producer_id, reason = %why, ?backoff, "producer reconnecting");
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.reconnect_max);
                }
            }
        }
    }

    fn fail(&mut self, e: ProducerError, ready: Option<oneshot::Sender<Result<(), ProducerError>>>) {
        *self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
        if let Some(r) = ready {
            let _ = r.send(Err(e.clone()));
        }
        for f in self.flushes.drain(..) {
            let _ = f.send(Err(e.clone()));
        }
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Cmd::Flush(f) = cmd {
                let _ = f.send(Err(e.clone()));
            }
        }
    }

    /// Connects, says HELLO, reads WELCOME, and writes again everything unacknowledged.
    async fn connect(&mut self) -> Result<(Conn, BytesMut), Ended> {
        let io = |e: std::io::Error| Ended::Retry(e.to_string());
        let tcp = match timeout(self.cfg.connect_timeout, TcpStream::connect(&self.cfg.addr)).await {
            Ok(r) => r.map_err(io)?,
            Err(_) => return Err(Ended::Retry("connect timed out".into())),
        };
        tcp.set_nodelay(true).map_err(io)?;
        let mut stream: Conn = match &self.cfg.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let host = self.cfg.addr.rsplit_once(':').map_or(self.cfg.addr.as_str(), |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| Ended::Fatal(ProducerError::Io(format!("{host}: {e}"))))?;
                match timeout(self.cfg.connect_timeout, tls.connect(name, tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    // A certificate that does not verify will not verify next time.
                    Ok(Err(e)) if e.get_ref().is_some_and(|r| r.is::<rustls::Error>()) => {
                        return Err(Ended::Fatal(ProducerError::Io(format!("TLS: {e}"))));
                    }
                    Ok(Err(e)) => return Err(Ended::Retry(format!("TLS: {e}"))),
                    Err(_) => return Err(Ended::Retry("TLS handshake timed out".into())),
                }
            }
        };
        self.out.clear();
        ProducerMessage::Hello(Hello {
            producer_id: self.cfg.producer_id.clone(),
            api_key: ApiKey(self.cfg.api_key.clone()),
            version: PROTOCOL_VERSION,
        })
        .encode(&mut self.out);
        stream.write_all(&self.out).await.map_err(io)?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let welcome = loop {
            match next_frame(&mut rbuf) {
                Ok(Some((kind, payload))) => match EngineMessage::decode(kind, &payload, &mut self.scratch) {
                    Ok(m) => break m,
                    Err(e) => return Err(Ended::Fatal(ProducerError::Io(e.to_string()))),
                },
                Ok(None) => {}
                Err(e) => return Err(Ended::Fatal(ProducerError::Io(e.to_string()))),
            }
            match timeout(self.cfg.connect_timeout, stream.read_buf(&mut rbuf)).await {
                Ok(Ok(0)) => return Err(Ended::Retry("engine closed before WELCOME".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io(e)),
                Err(_) => return Err(Ended::Retry("no WELCOME in time".into())),
            }
        };
        let last_acked = match welcome {
            EngineMessage::Welcome { last_acked_seq } => last_acked_seq,
            EngineMessage::Error { code, message } => return Err(self.error_frame(code, message)),
            EngineMessage::Ack { .. } => return Err(Ended::Retry("ACK before WELCOME".into())),
        };
        if self.next_seq == 0 {
            // A new producer process continues after what the engine already has.
            self.next_seq = last_acked.saturating_add(1);
        }
        self.acked(last_acked);
        self.out.clear();
        for (_, frame) in &self.unacked {
            self.out.extend_from_slice(frame);
        }
        stream.write_all(&self.out).await.map_err(io)?;
        Ok((stream, rbuf))
    }

    fn error_frame(&self, code: String, message: String) -> Ended {
        if is_fatal(&code) {
            Ended::Fatal(ProducerError::Refused { code, message })
        } else {
            Ended::Retry(format!("{code}: {message}"))
        }
    }

    /// Drops acknowledged frames and wakes flushes that are now complete.
    fn acked(&mut self, up_to: u64) {
        while self.unacked.front().is_some_and(|(seq, _)| *seq <= up_to) {
            self.unacked.pop_front();
        }
        self.shared.acked.fetch_max(up_to, Ordering::AcqRel);
        if self.unacked.is_empty() {
            for f in self.flushes.drain(..) {
                let _ = f.send(Ok(()));
            }
        }
    }

    async fn stream(&mut self, mut stream: Conn, mut rbuf: BytesMut) -> Ended {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        heartbeat.reset();
        loop {
            if self.closing && self.unacked.is_empty() {
                let _ = stream.shutdown().await;
                return Ended::Done;
            }
            let room = self.unacked.len() < self.cfg.max_in_flight;
            tokio::select! {
                cmd = self.cmds.recv(), if room && !self.closing => {
                    self.out.clear();
                    match cmd {
                        None => self.closing = true,
                        Some(cmd) => {
                            self.take(cmd);
                            // Batch whatever else is queued into the same write.
                            while self.unacked.len() < self.cfg.max_in_flight && self.out.len() < 60 * 1024 {
                                match self.cmds.try_recv() {
                                    Ok(cmd) => self.take(cmd),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    if !self.out.is_empty()
                        && let Err(e) = stream.write_all(&self.out).await
                    {
                        return Ended::Retry(e.to_string());
                    }
                }
                read = stream.read_buf(&mut rbuf) => match read {
                    Ok(0) => return Ended::Retry("engine closed the connection".into()),
                    Ok(_) => loop {
                        match next_frame(&mut rbuf) {
                            Ok(Some((kind, payload))) => match EngineMessage::decode(kind, &payload, &mut self.scratch) {
                                Ok(EngineMessage::Ack { up_to_seq }) => self.acked(up_to_seq),
                                Ok(EngineMessage::Error { code, message }) => return self.error_frame(code, message),
                                Ok(EngineMessage::Welcome { .. }) => return Ended::Retry("unexpected WELCOME".into()),
                                Err(e) => return Ended::Fatal(ProducerError::Io(e.to_string())),
                            },
                            Ok(None) => break,
                            Err(e) => return Ended::Fatal(ProducerError::Io(e.to_string())),
                        }
                    },
                    Err(e) => return Ended::Retry(e.to_string()),
                },
                _ = heartbeat.tick() => {
                    self.out.clear();
                    ProducerMessage::Heartbeat.encode(&mut self.out);
                    if let Err(e) = stream.write_all(&self.out).await {
                        return Ended::Retry(e.to_string());
                    }
                }
            }
        }
    }

    /// Encodes one command into `out` (and `unacked` for signals).
    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Signal(s) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.shared.last_seq.store(seq, Ordering::Release);
                let start = self.out.len();
                encode_signal(&mut self.out, seq, Some(UnixNanos::now()), &s);
                self.unacked.push_back((seq, self.out[start..].to_vec()));
            }
            Cmd::Tick(t) => ProducerMessage::Tick(t).encode(&mut self.out),
            Cmd::Flush(f) => {
                if self.unacked.is_empty() {
                    let _ = f.send(Ok(()));
                } else {
                    self.flushes.push(f);
                }
            }
        }
    }
}
