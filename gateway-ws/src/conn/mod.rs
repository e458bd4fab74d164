//! One WebSocket connection after the upgrade: a reader and a writer around an
//! [`Outbox`].
//!
//! The reader parses client frames (`ws::inbound`) and messages (`protocol`), answers
//! PING and errors itself and sends the rest to the connection's hub shard. The writer
//! drains the outbox into the socket, several frames per `writev`, each with a
//! deadline. Neither waits on the other: a client that stops reading fills only its own
//! outbox, and is closed with 4008 at its bound.

mod outbox;

pub use outbox::{MAX_ERRORS, Next, Out, Outbox, Pushed};

use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use engine::model::UnixNanos;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{Authenticator, Session};
use crate::hub::{Cmd, ShardLink};
use crate::metrics::GatewayStats;
use crate::protocol::{self, ClientMessage, ErrorCode, Refusal};
use crate::ws::CloseCode;
use crate::ws::inbound::{FrameReader, Inbound, Violation};
use crate::ws::outbound;

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Largest client message (all fragments), bytes.
    pub max_message: usize,
    /// Outbound buffer bound, bytes; past it, close 4008.
    pub outbound_limit: usize,
    /// Deadline for one socket write.
    pub write_timeout: Duration,
    /// Client messages per second (a burst of twice this is allowed).
    pub max_messages_per_sec: u32,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_message: 4_096,
            outbound_limit: 1 << 20,
            write_timeout: Duration::from_secs(10),
            max_messages_per_sec: 50,
        }
    }
}

/// Everything a connection needs.
#[derive(Clone, Debug)]
pub struct ConnContext {
    pub auth: Arc<dyn Authenticator>,
    pub stats: Arc<GatewayStats>,
    pub config: ConnConfig,
}

/// Runs a connection to its end.
pub async fn run<IO>(io: IO, session: Session, link: ShardLink, ctx: ConnContext)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let outbox = Arc::new(Outbox::new(ctx.config.outbound_limit));
    let user = session.user_id.clone();
    if !link.send(Cmd::Attach { id: link.id, session: session.clone(), outbox: Arc::clone(&outbox) }).await {
        return;
    }
    tracing::debug!(conn = link.id, %user, "websocket open");
    let writer =
        tokio::spawn(write_loop(w, Arc::clone(&outbox), Arc::clone(&ctx.stats), ctx.config.write_timeout));
    let mut reader =
        Reader { outbox: Arc::clone(&outbox), link: link.clone(), session, ctx, rate: Bucket::default() };
    reader.run(r).await;
    outbox.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    link.send(Cmd::Detach { id: link.id }).await;
    tracing::debug!(conn = link.id, %user, "websocket closed");
}

struct Reader {
    outbox: Arc<Outbox>,
    link: ShardLink,
    session: Session,
    ctx: ConnContext,
    rate: Bucket,
}

/// Token bucket for inbound messages.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Self { tokens: f64::MAX, at: Instant::now() }
    }
}

impl Bucket {
    fn take(&mut self, per_sec: u32) -> bool {
        let burst = f64::from(per_sec) * 2.0;
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * f64::from(per_sec)).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum Flow {
    Continue,
    Stop,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut r: R) {
        // Empty until the client says something: most clients send a few small messages.
        let mut buf = BytesMut::new();
        let mut frames = FrameReader::new(self.ctx.config.max_message);
        loop {
            loop {
                match frames.next(&mut buf) {
                    Ok(Some(m)) => {
                        if let Flow::Stop = self.handle(m).await {
                            return linger(&mut r).await;
                        }
                    }
                    Ok(None) => break,
                    Err(Violation(code)) => {
                        tracing::debug!(conn = self.link.id, ?code, "client protocol violation");
                        self.outbox.close(code);
                        return linger(&mut r).await;
                    }
                }
            }
            tokio::select! {
                read = r.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => self.outbox.touch(),
                },
                () = self.outbox.closing() => return linger(&mut r).await,
            }
        }
    }

    async fn handle(&mut self, m: Inbound) -> Flow {
        match m {
            Inbound::Text(text) => self.message(&text).await,
            Inbound::Ping(p) => {
                self.outbox.push_frame(outbound::pong(&p).into());
                Flow::Continue
            }
            Inbound::Pong => Flow::Continue,
            Inbound::Close(code) => {
                // Echo the client's code (RFC 6455 §5.5.1), then end.
                self.outbox.close_with(outbound::close_raw(code.unwrap_or(1000), ""));
                Flow::Stop
            }
        }
    }

    async fn message(&mut self, text: &str) -> Flow {
        if !self.rate.take(self.ctx.config.max_messages_per_sec) {
            let per = self.ctx.config.max_messages_per_sec;
            return self.refuse(&Refusal::new(
                ErrorCode::RateLimited,
                format!("more than {per} messages per second"),
            ));
        }
        let cmd = match protocol::parse(text) {
            Ok(ClientMessage::Ping) => {
                self.outbox.push_text(protocol::PONG);
                return Flow::Continue;
            }
            Ok(ClientMessage::Subscribe { channel, resume }) => {
                Cmd::Subscribe { id: self.link.id, channel, resume }
            }
            Ok(ClientMessage::Unsubscribe { channel }) => Cmd::Unsubscribe { id: self.link.id, channel },
            Ok(ClientMessage::Refresh { token }) => match self.ctx.auth.authenticate(&token) {
                Ok(s) if s.user_id == self.session.user_id => {
                    self.session = s.clone();
                    Cmd::Refresh { id: self.link.id, session: s }
                }
                Ok(_) => {
                    return self
                        .refuse(&Refusal::new(ErrorCode::Forbidden, "REFRESH token is for another user"));
                }
                Err(e) => {
                    return self.refuse(&Refusal::new(ErrorCode::Forbidden, format!("REFRESH refused: {e}")));
                }
            },
            Err(r) => return self.refuse(&r),
        };
        if self.link.send(cmd).await { Flow::Continue } else { Flow::Stop }
    }

    fn refuse(&self, r: &Refusal) -> Flow {
        self.outbox.push_text(&protocol::error(r));
        if self.outbox.record_error() {
            self.outbox.close(CloseCode::Policy);
            return Flow::Stop;
        }
        Flow::Continue
    }
}

/// After a close is sent, read and discard what the client still sends for a moment,
/// so that unread input does not make the kernel reset the connection and destroy the
/// close frame on its way.
async fn linger<R: AsyncRead + Unpin>(r: &mut R) {
    // On the heap, and only while lingering: an array here would sit in every
    // connection's reader future for its whole life (4 KiB per idle connection).
    let mut sink = vec![0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut budget = 256 * 1024;
    while budget > 0 {
        match tokio::time::timeout_at(until, r.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => budget -= n.min(budget),
            _ => break,
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    outbox: Arc<Outbox>,
    stats: Arc<GatewayStats>,
    write_timeout: Duration,
) {
    // Grows with the first burst only; an idle connection holds no batch memory.
    let mut batch = Vec::new();
    loop {
        match outbox.next(&mut batch).await {
            Next::Frames => {
                match tokio::time::timeout(write_timeout, write_frames(&mut w, &batch)).await {
                    Ok(Ok(())) => {}
                    _ => {
                        outbox.finish();
                        return;
                    }
                }
                let now = UnixNanos::now();
                for out in &batch {
                    if let Out::Signal(m, tier) = out {
                        stats.delivered(*tier, now.0 - m.ingest_ts().0);
                    }
                }
                batch.clear();
            }
            Next::Close(frame) => {
                let _ = tokio::time::timeout(write_timeout, async {
                    w.write_all(&frame).await?;
                    w.flush().await
                })
                .await;
                let _ = w.shutdown().await;
                return;
            }
            Next::End => {
                let _ = w.shutdown().await;
                return;
            }
        }
    }
}

/// Frames per `writev`: the slices live in the writer's future, so this is memory per
/// connection as well as coalescing; the floor design coalesced about 8.
const IOVECS: usize = 32;

/// Writes every frame, up to [`IOVECS`] per `writev`.
async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Out]) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < frames.len() {
        let mut slices = [IoSlice::new(&[]); IOVECS];
        let mut n = 0;
        for (k, f) in frames[i..].iter().take(IOVECS).enumerate() {
            slices[k] = IoSlice::new(if k == 0 { &f.bytes()[off..] } else { f.bytes() });
            n += 1;
        }
        let mut written = w.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && i < frames.len() {
            let left = frames[i].bytes().len() - off;
            if written >= left {
                written -= left;
                i += 1;
                off = 0;
            } else {
                off += written;
                written = 0;
            }
        }
    }
    w.flush().await
}
