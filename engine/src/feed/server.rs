//! The TCP ingest server: one task per producer connection.
//!
//! A session is: HELLO (within `handshake_timeout`) → WELCOME with the producer's last
//! acked seq → SIGNAL / TICK / HEARTBEAT frames into the pipeline queue, with cumulative
//! ACKs going back as the stage takes the signals. Anything wrong gets one ERROR frame
//! and a close for that producer alone.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::codec::{
    CodecError, EngineMessage, HEADER_LEN, PROTOCOL_VERSION, ProducerMessage, next_frame, peek_frame,
};
use super::{ProducerAuth, ProducerRegistry, ProducerSlot};
use crate::config::FeedConfig;
use crate::doorway::{Doorway, DoorwayConfig, Turned, Unauthenticated};
use crate::model::UnixNanos;
use crate::pipeline::{IngestItem, IngestSender, Origin, SignalItem};

/// What the feed server needs.
#[derive(Clone, Debug)]
pub struct FeedContext {
    /// TLS for every producer connection (the served certificate reloads on renewal);
    /// `None`: plain TCP.
    pub tls: Option<FeedTls>,
    pub ingest: IngestSender,
    pub producers: Arc<ProducerRegistry>,
    pub auth: Arc<dyn ProducerAuth>,
    pub max_analysis_bytes: usize,
    pub config: FeedConfig,
    pub stats: Arc<FeedStats>,
}

/// The TLS acceptor of the feed (a rustls server configuration).
#[derive(Clone)]
pub struct FeedTls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for FeedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedTls")
    }
}

/// Feed counters for /metrics.
#[derive(Debug, Default)]
pub struct FeedStats {
    connected: AtomicU64,
    sessions: AtomicU64,
    signals: AtomicU64,
    ticks: AtomicU64,
    errors: AtomicU64,
}

impl FeedStats {
    /// Producers with an authenticated session now.
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }
    /// Authenticated sessions since start.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    pub fn signals(&self) -> u64 {
        self.signals.load(Ordering::Relaxed)
    }
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
    /// Connections closed with an ERROR frame.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Accepts producers on `listener` until `shutdown` resolves; then tells every session
/// (ERROR `shutting_down`) and waits for them to finish.
pub async fn run(listener: TcpListener, ctx: FeedContext, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let door = Doorway::new(DoorwayConfig {
        max_total: ctx.config.max_unauthenticated,
        max_per_ip: ctx.config.max_unauthenticated_per_ip,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Before HELLO a socket holds only a place at the door, never a
                    // producer's: idle sockets cannot lock producers out.
                    let ticket = match door.enter(peer.ip()) {
                        Ok(t) => t,
                        Err(turned) => {
                            tracing::debug!(%peer, %turned, "producer connection turned away before HELLO");
                            ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if ctx.tls.is_none() {
                                // Best effort, never waiting: the socket is closed next.
                                let _ = stream.try_write(&turned_away(&turned));
                            }
                            continue;
                        }
                    };
                    let ctx = ctx.clone();
                    let (stop, limit) = (stop_rx.clone(), Arc::clone(&limit));
                    sessions.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        // TLS and HELLO share one budget.
                        let deadline = Instant::now() + ctx.config.handshake_timeout;
                        let door = Door { ticket: Some(ticket), deadline, limit };
                        match ctx.tls.clone() {
                            None => session(stream, peer, ctx, door, stop).await,
                            Some(FeedTls(tls)) => match timeout_at(deadline, tls.accept(stream)).await {
                                Ok(Ok(stream)) => session(stream, peer, ctx, door, stop).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "producer TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "producer TLS handshake timed out"),
                            },
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "feed accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    while sessions.join_next().await.is_some() {}
}

/// The ERROR frame for a connection turned away at the door.
fn turned_away(turned: &Turned) -> Vec<u8> {
    let mut out = Vec::new();
    EngineMessage::Error { code: "too_many_connections".to_owned(), message: turned.to_string() }
        .encode(&mut out);
    out
}

/// A connection's way in: its place among the unauthenticated until HELLO is verified,
/// the deadline for that, and the producers' places it then needs one of.
struct Door {
    ticket: Option<Unauthenticated>,
    deadline: Instant,
    limit: Arc<Semaphore>,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The producer closed cleanly (between frames).
    Closed,
    /// Tell the producer, then close.
    Refuse { code: &'static str, message: String },
    /// The socket failed; nothing more can be said.
    Io(std::io::Error),
}

impl From<CodecError> for End {
    fn from(e: CodecError) -> Self {
        Self::Refuse { code: e.code(), message: e.to_string() }
    }
}

fn refuse(code: &'static str, message: impl Into<String>) -> End {
    End::Refuse { code, message: message.into() }
}

struct Session {
    rd: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    wr: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    buf: BytesMut,
    out: Vec<u8>,
    scratch: AlignedVec,
    ctx: FeedContext,
    /// The producer may send ticks (checked again when its rights change).
    may_tick: bool,
    /// The highest producer seq seen or acknowledged: the next may be at most
    /// [`MAX_SEQ_STEP`] above it.
    last_seq: u64,
    /// Decoded items on their way to the pipeline's queue (reused).
    items: Vec<IngestItem>,
}

/// The most decoded items handed to the pipeline's queue at once.
const HANDOFF: usize = 256;

/// How far one signal's `producer_seq` may jump past the producer's highest. Seqs need
/// not be contiguous, but a seq near `u64::MAX` would make every later signal of the
/// producer a "resend" until the engine restarts.
pub const MAX_SEQ_STEP: u64 = 1 << 32;

async fn session<S>(stream: S, peer: SocketAddr, ctx: FeedContext, door: Door, stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut s = Session {
        rd: Box::new(rd),
        wr: Box::new(wr),
        buf: BytesMut::with_capacity(16 * 1024),
        items: Vec::new(),
        out: Vec::with_capacity(256),
        scratch: AlignedVec::new(),
        ctx,
        may_tick: false,
        last_seq: 0,
    };
    let end = s.run(peer, door, stop).await;
    match end {
        End::Closed => {}
        End::Io(e) => tracing::debug!(%peer, error = %e, "producer connection failed"),
        End::Refuse { code, message } => {
            tracing::warn!(%peer, code, %message, "closing producer connection");
            s.ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
            s.refuse(code, message).await;
        }
    }
}

/// Decrements the connected gauge however the session ends.
struct Connected(Arc<FeedStats>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the key revision changes; never when there are no revisions.
async fn changed(revisions: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match revisions {
        Some(r) => match r.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(&mut self, peer: SocketAddr, mut door: Door, mut stop: watch::Receiver<bool>) -> End {
        let hello = match timeout_at(door.deadline, self.next_message()).await {
            Err(_) => return refuse("handshake_timeout", "no HELLO within the handshake timeout"),
            Ok(Err(end)) => return end,
            Ok(Ok(ProducerMessage::Hello(h))) => h,
            Ok(Ok(_)) => return refuse("unexpected_frame", "the first frame must be HELLO"),
        };
        if hello.version != PROTOCOL_VERSION {
            return refuse(
                "unsupported_version",
                format!("protocol version {} is not supported (expected {PROTOCOL_VERSION})", hello.version),
            );
        }
        if !self.ctx.auth.verify(&hello.producer_id, &hello.api_key.0) {
            return refuse("auth_failed", "unknown producer id or wrong API key");
        }
        // Authenticated: out of the door's count, into a producer's place.
        let Ok(_place) = Arc::clone(&door.limit).try_acquire_owned() else {
            return refuse("too_many_connections", "producer connection limit reached");
        };
        door.ticket = None;
        let (slot, session) = self.ctx.producers.attach(&hello.producer_id);
        self.may_tick = self.ctx.auth.may_send_ticks(&slot.id);
        self.last_seq = slot.acked();
        self.ctx.stats.connected.fetch_add(1, Ordering::Relaxed);
        self.ctx.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let _connected = Connected(Arc::clone(&self.ctx.stats));
        tracing::info!(%peer, producer = %slot.id, last_acked = slot.acked(), "producer connected");
        if let Err(e) = self.send(&EngineMessage::Welcome { last_acked_seq: slot.acked() }).await {
            return End::Io(e);
        }
        let end = self.stream(&slot, session, &hello.api_key.0, &mut stop).await;
        tracing::info!(%peer, producer = %slot.id, acked = slot.acked(), "producer disconnected");
        end
    }

    /// The steady state: frames in, ACKs out.
    async fn stream(
        &mut self,
        slot: &ProducerSlot,
        session: u64,
        api_key: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let cfg = self.ctx.config.clone();
        let mut revisions = self.ctx.auth.revisions();
        let mut acks = AckPacer {
            sent: slot.acked(),
            last_at: Instant::now().checked_sub(cfg.ack_interval).unwrap_or_else(Instant::now),
            due: None,
        };
        let mut last_read = Instant::now();
        loop {
            if let Err(end) = self.drain_frames(slot.index, &slot.id).await {
                return end;
            }
            if let Some(up_to) = acks.poll(slot.acked(), Instant::now(), &cfg)
                && let Err(e) = self.send(&EngineMessage::Ack { up_to_seq: up_to }).await
            {
                return End::Io(e);
            }
            tokio::select! {
                read = self.rd.read_buf(&mut self.buf) => match read {
                    Ok(0) if self.buf.is_empty() => return End::Closed,
                    Ok(0) => return End::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, CodecError::Truncated)),
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => return End::Io(e),
                },
                () = slot.acked_changed() => {}
                () = sleep_until(acks.due.unwrap_or_else(Instant::now)), if acks.due.is_some() => acks.due = None,
                () = sleep_until(last_read + cfg.idle_timeout) => {
                    return refuse("idle_timeout", "no frame (not even HEARTBEAT) within the idle timeout");
                }
                () = slot.replaced(session) => {
                    return refuse("replaced", "a newer connection of this producer took over");
                }
                Some(()) = changed(&mut revisions) => {
                    if !self.ctx.auth.verify(&slot.id, api_key) {
                        return refuse("key_revoked", "this producer's API key was revoked");
                    }
                    self.may_tick = self.ctx.auth.may_send_ticks(&slot.id);
                }
                _ = stop.changed() => return refuse("shutting_down", "the engine is shutting down"),
            }
        }
    }

    /// Decodes every whole frame in the buffer and hands them to the pipeline, up to
    /// [`HANDOFF`] at a time, together: one read's items reach the stage's queue back to
    /// back, so the stage's thread is woken once for them, not once per item (at 100,000
    /// ticks a second, waking it per tick was most of a tick's cost).
    async fn drain_frames(&mut self, slot: u32, producer: &str) -> Result<(), End> {
        let mut items = std::mem::take(&mut self.items);
        let result = loop {
            let decoded = self.decode_frames(slot, producer, &mut items);
            // What was decoded before a bad frame still goes in: it was valid.
            if let Err(end) = self.hand_off(&mut items).await {
                break Err(end);
            }
            match decoded {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(end) => break Err(end),
            }
        };
        items.clear();
        self.items = items;
        result
    }

    /// Decodes whole frames into `items` until the buffer has no more (`Ok(false)`) or
    /// [`HANDOFF`] are decoded (`Ok(true)`: call again).
    fn decode_frames(&mut self, slot: u32, producer: &str, items: &mut Vec<IngestItem>) -> Result<bool, End> {
        let most = HANDOFF.min(self.ctx.ingest.max_capacity());
        while items.len() < most {
            let Some((kind, len)) = peek_frame(&mut self.buf)? else { return Ok(false) };
            let msg = ProducerMessage::decode(
                kind,
                &self.buf[HEADER_LEN..len],
                &mut self.scratch,
                self.ctx.max_analysis_bytes,
            );
            self.buf.advance(len);
            let msg = msg?;
            let item = match msg {
                ProducerMessage::Signal { producer_seq, sent_at, signal } => {
                    if producer_seq > self.last_seq.saturating_add(MAX_SEQ_STEP) {
                        return Err(refuse(
                            "bad_seq",
                            format!(
                                "producer_seq {producer_seq} jumps more than 2^32 past this producer's highest ({})",
                                self.last_seq
                            ),
                        ));
                    }
                    if !self.ctx.auth.may_publish_as(producer, &signal.source_id) {
                        return Err(refuse(
                            "foreign_source",
                            format!(
                                "this producer is not bound to source {} (the operator binds producers to their sources)",
                                signal.source_id
                            ),
                        ));
                    }
                    self.last_seq = self.last_seq.max(producer_seq);
                    self.ctx.stats.signals.fetch_add(1, Ordering::Relaxed);
                    IngestItem::Signal(Box::new(SignalItem {
                        origin: Origin::Producer { slot, seq: producer_seq },
                        signal,
                        ingest_ts: UnixNanos::now(),
                        sent_ts: sent_at,
                        verdict: None,
                    }))
                }
                ProducerMessage::Tick(_) if !self.may_tick => {
                    return Err(refuse(
                        "forbidden_tick",
                        "this producer may not send ticks (the operator grants the right)",
                    ));
                }
                ProducerMessage::Tick(t) => {
                    self.ctx.stats.ticks.fetch_add(1, Ordering::Relaxed);
                    IngestItem::Tick(t)
                }
                ProducerMessage::Heartbeat => continue,
                ProducerMessage::Hello(_) => {
                    return Err(refuse("unexpected_frame", "HELLO was already sent"));
                }
            };
            items.push(item);
        }
        Ok(true)
    }

    /// Puts `items` on the pipeline's queue, in order. Waits while the queue has no room
    /// for them, which stops reading this socket: the producer feels back-pressure
    /// through TCP, nothing is dropped.
    async fn hand_off(&mut self, items: &mut Vec<IngestItem>) -> Result<(), End> {
        if items.is_empty() {
            return Ok(());
        }
        let Ok(permits) = self.ctx.ingest.reserve_many(items.len()).await else {
            return Err(refuse("shutting_down", "the engine is shutting down"));
        };
        for (permit, item) in permits.zip(items.drain(..)) {
            permit.send(item);
        }
        Ok(())
    }

    async fn next_message(&mut self) -> Result<ProducerMessage, End> {
        loop {
            if let Some((kind, payload)) = next_frame(&mut self.buf)? {
                return Ok(ProducerMessage::decode(
                    kind,
                    &payload,
                    &mut self.scratch,
                    self.ctx.max_analysis_bytes,
                )?);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return Err(End::Closed),
                Ok(_) => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    async fn send(&mut self, msg: &EngineMessage) -> std::io::Result<()> {
        self.out.clear();
        msg.encode(&mut self.out);
        match timeout(self.ctx.config.write_timeout, self.wr.write_all(&self.out)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write to producer timed out")),
        }
    }

    /// Sends ERROR and closes so that the producer can read it: half-close, then read
    /// and discard what the producer still sends for a moment. Closing with unread
    /// input would make the kernel answer with a reset that can destroy the ERROR.
    async fn refuse(&mut self, code: &'static str, message: String) {
        if self.send(&EngineMessage::Error { code: code.to_owned(), message }).await.is_err() {
            return;
        }
        let _ = self.wr.shutdown().await;
        let mut sink = [0u8; 4096];
        let linger = Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Ok(n)) = tokio::time::timeout_at(linger, self.rd.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Cumulative ACK pacing: at most one ACK per `ack_interval`, unless `ack_every`
/// signals are waiting, and never more than `ack_interval` late.
struct AckPacer {
    sent: u64,
    last_at: Instant,
    due: Option<Instant>,
}

impl AckPacer {
    /// The seq to ACK now, if any; otherwise arms `due` for the latest time to send.
    fn poll(&mut self, acked: u64, now: Instant, cfg: &FeedConfig) -> Option<u64> {
        if acked <= self.sent {
            return None;
        }
        if acked - self.sent >= cfg.ack_every || now >= self.last_at + cfg.ack_interval {
            self.sent = acked;
            self.last_at = now;
            self.due = None;
            return Some(acked);
        }
        self.due.get_or_insert(self.last_at + cfg.ack_interval);
        None
    }
}
