//! Frame codec: `u32` little-endian length of the rest, `u8` kind, rkyv payload.
//!
//! [`next_frame`] cuts frames out of a read buffer incrementally (partial reads, several
//! frames per read); [`ProducerMessage::decode`] and [`EngineMessage::decode`] validate
//! the archive (bytecheck) and turn it into checked domain values. Every failure is a
//! typed [`CodecError`] with the code sent to the peer in an ERROR frame; no input can
//! make this module panic (see the property tests and the fuzz targets).

use std::fmt;

use bytes::{Buf, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use uuid::Uuid;

use super::wire::{
    ArchivedErrorWire, ArchivedHelloWire, ArchivedSeqWire, ArchivedSignalFrameWire, ArchivedTickWire,
    ErrorWire, HelloWire, SeqWire, SignalFrameWire, SignalWire, TickWire,
};
use crate::model::{
    Analysis, Category, Confidence, Exchange, Price, Signal, SignalType, SourceType, Symbol, Tick, UnixNanos,
};

/// Largest value of the length field (kind byte + payload): 64 KiB.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Bytes before the payload: length and kind.
pub const HEADER_LEN: usize = 5;
/// The protocol version a producer states in HELLO.
pub const PROTOCOL_VERSION: u16 = 1;

/// Frame kinds; `0x8_` go from the engine to the producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Signal = 2,
    Tick = 3,
    Heartbeat = 4,
    Welcome = 0x81,
    Ack = 0x82,
    Error = 0x83,
}

impl FrameKind {
    pub fn from_byte(b: u8) -> Result<Self, CodecError> {
        Ok(match b {
            1 => Self::Hello,
            2 => Self::Signal,
            3 => Self::Tick,
            4 => Self::Heartbeat,
            0x81 => Self::Welcome,
            0x82 => Self::Ack,
            0x83 => Self::Error,
            other => return Err(CodecError::UnknownKind(other)),
        })
    }
}

/// Everything that can be wrong with bytes from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame length {0} is over the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("frame length is 0: a frame needs at least its kind byte")]
    Empty,
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{0:?} frame sent in the wrong direction")]
    WrongDirection(FrameKind),
    #[error("invalid {kind:?} archive: {reason}")]
    InvalidArchive { kind: FrameKind, reason: String },
    #[error("HEARTBEAT must have an empty payload")]
    HeartbeatPayload,
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("invalid tick: {0}")]
    InvalidTick(String),
    #[error("connection closed inside a frame")]
    Truncated,
}

impl CodecError {
    /// The `code` of the ERROR frame that reports this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "frame_too_large",
            Self::Empty | Self::HeartbeatPayload | Self::Truncated => "bad_frame",
            Self::UnknownKind(_) => "unknown_kind",
            Self::WrongDirection(_) => "unexpected_frame",
            Self::InvalidArchive { .. } => "invalid_archive",
            Self::InvalidSignal(_) => "invalid_signal",
            Self::InvalidTick(_) => "invalid_tick",
        }
    }
}

/// The next whole frame at the start of `buf`, without taking it: its kind and its
/// length with the header, so that the payload is `buf[HEADER_LEN..len]`. Reserves room
/// for a frame that is not all there yet. The feed's reader decodes in place and then
/// advances, with no handle per frame.
pub fn peek_frame(buf: &mut BytesMut) -> Result<Option<(FrameKind, usize)>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = FrameKind::from_byte(buf[4])?;
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    Ok(Some((kind, 4 + len)))
}

/// Cuts the next whole frame off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. The length is checked as soon as its four
/// bytes are in, so an oversize claim is refused before anything is buffered for it.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<(FrameKind, BytesMut)>, CodecError> {
    let Some((kind, len)) = peek_frame(buf)? else { return Ok(None) };
    buf.advance(HEADER_LEN);
    Ok(Some((kind, buf.split_to(len - HEADER_LEN))))
}

/// Appends one frame.
pub fn write_frame(out: &mut Vec<u8>, kind: FrameKind, payload: &[u8]) {
    let len = (payload.len() + 1) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
}

fn write_archived<T>(out: &mut Vec<u8>, kind: FrameKind, value: &T)
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
{
    match rkyv::to_bytes::<rancor::Error>(value) {
        Ok(bytes) => write_frame(out, kind, &bytes),
        // Serializing plain owned structs into a growable buffer cannot fail short of
        // allocation failure, which aborts anyway.
        Err(e) => unreachable!("rkyv serialization of a plain struct failed: {e}"),
    }
}

/// Copies `payload` into `scratch` (rkyv needs aligned bytes and the archive root at
/// the very end) and validates it as `T`.
fn access<'a, T>(kind: FrameKind, payload: &[u8], scratch: &'a mut AlignedVec) -> Result<&'a T, CodecError>
where
    T: rkyv::Portable
        + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, rancor::Error>>,
{
    scratch.clear();
    scratch.extend_from_slice(payload);
    rkyv::access::<T, rancor::Error>(scratch)
        .map_err(|e| CodecError::InvalidArchive { kind, reason: e.to_string() })
}

/// A producer's API key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The first frame of every producer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub producer_id: String,
    pub api_key: ApiKey,
    pub version: u16,
}

/// Frames a producer sends.
#[derive(Clone, Debug, PartialEq)]
pub enum ProducerMessage {
    Hello(Hello),
    Signal { producer_seq: u64, sent_at: Option<UnixNanos>, signal: Signal },
    Tick(Tick),
    Heartbeat,
}

/// Frames the engine sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineMessage {
    Welcome { last_acked_seq: u64 },
    Ack { up_to_seq: u64 },
    Error { code: String, message: String },
}

impl ProducerMessage {
    /// Appends this message as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello(h) => write_archived(
                out,
                FrameKind::Hello,
                &HelloWire {
                    producer_id: h.producer_id.clone(),
                    api_key: h.api_key.0.clone(),
                    version: h.version,
                },
            ),
            Self::Signal { producer_seq, sent_at, signal } => {
                encode_signal(out, *producer_seq, *sent_at, signal);
            }
            Self::Tick(t) => write_archived(out, FrameKind::Tick, &tick_wire(t)),
            Self::Heartbeat => write_frame(out, FrameKind::Heartbeat, &[]),
        }
    }

    /// Validates and decodes one producer frame. `max_analysis_bytes` bounds a signal's
    /// `analysis` JSON.
    pub fn decode(
        kind: FrameKind,
        payload: &[u8],
        scratch: &mut AlignedVec,
        max_analysis_bytes: usize,
    ) -> Result<Self, CodecError> {
        match kind {
            FrameKind::Hello => {
                let a = access::<ArchivedHelloWire>(kind, payload, scratch)?;
                Ok(Self::Hello(Hello {
                    producer_id: a.producer_id.as_str().to_owned(),
                    api_key: ApiKey(a.api_key.as_str().to_owned()),
                    version: a.version.to_native(),
                }))
            }
            FrameKind::Signal => {
                let a = access::<ArchivedSignalFrameWire>(kind, payload, scratch)?;
                let signal = signal_from_archived(&a.signal, max_analysis_bytes)?;
                let sent = a.sent_at.to_native();
                Ok(Self::Signal {
                    producer_seq: a.producer_seq.to_native(),
                    sent_at: (sent != 0).then_some(UnixNanos(sent)),
                    signal,
                })
            }
            FrameKind::Tick => {
                let a = access::<ArchivedTickWire>(kind, payload, scratch)?;
                tick_from_archived(a).map(Self::Tick)
            }
            FrameKind::Heartbeat if payload.is_empty() => Ok(Self::Heartbeat),
            FrameKind::Heartbeat => Err(CodecError::HeartbeatPayload),
            other => Err(CodecError::WrongDirection(other)),
        }
    }
}

/// Appends a SIGNAL frame without cloning the signal into an owned message first.
pub fn encode_signal(out: &mut Vec<u8>, producer_seq: u64, sent_at: Option<UnixNanos>, s: &Signal) {
    let wire = SignalFrameWire {
        producer_seq,
        sent_at: sent_at.map_or(0, |t| t.0),
        signal: SignalWire {
            id: *s.id.as_bytes(),
            source_id: *s.source_id.as_bytes(),
            source_type: s.source_type.code(),
            symbol: s.symbol.as_str().to_owned(),
            exchange: s.exchange.as_str().to_owned(),
            category: s.category.code(),
            signal_type: s.signal_type.code(),
            entry_price: s.entry_price.raw(),
            target_price: s.target_price.raw(),
            stop_loss: s.stop_loss.raw(),
            quantity_recommended: s.quantity_recommended,
            confidence: s.confidence.hundredths(),
            generated_at: s.generated_at.0,
            expires_at: s.expires_at.0,
            analysis: s.analysis.as_ref().map(|a| a.as_str().to_owned()),
        },
    };
    write_archived(out, FrameKind::Signal, &wire);
}

impl EngineMessage {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Welcome { last_acked_seq } => {
                write_archived(out, FrameKind::Welcome, &SeqWire { seq: *last_acked_seq });
            }
            Self::Ack { up_to_seq } => write_archived(out, FrameKind::Ack, &SeqWire { seq: *up_to_seq }),
            Self::Error { code, message } => write_archived(
                out,
                FrameKind::Error,
                &ErrorWire { code: code.clone(), message: message.clone() },
            ),
        }
    }

    pub fn decode(kind: FrameKind, payload: &[u8], scratch: &mut AlignedVec) -> Result<Self, CodecError> {
        match kind {
            FrameKind::Welcome => {
                let a = access::<ArchivedSeqWire>(kind, payload, scratch)?;
                Ok(Self::Welcome { last_acked_seq: a.seq.to_native() })
            }
            FrameKind::Ack => {
                let a = access::<ArchivedSeqWire>(kind, payload, scratch)?;
                Ok(Self::Ack { up_to_seq: a.seq.to_native() })
            }
            FrameKind::Error => {
                let a = access::<ArchivedErrorWire>(kind, payload, scratch)?;
                Ok(Self::Error { code: a.code.as_str().to_owned(), message: a.message.as_str().to_owned() })
            }
            other => Err(CodecError::WrongDirection(other)),
        }
    }
}

fn tick_wire(t: &Tick) -> TickWire {
    TickWire {
        symbol: t.symbol.as_str().to_owned(),
        exchange: t.exchange.as_str().to_owned(),
        bid: t.bid.raw(),
        ask: t.ask.raw(),
        last: t.last.raw(),
        volume: t.volume,
        ts: t.ts.0,
    }
}

fn price(field: &'static str, raw: i64, bad: fn(String) -> CodecError) -> Result<Price, CodecError> {
    Price::from_raw(raw).ok_or_else(|| bad(format!("{field} {raw} is outside DECIMAL(15,4)")))
}

fn text<const N: usize>(
    field: &'static str,
    s: &str,
    bad: fn(String) -> CodecError,
) -> Result<crate::model::InlineStr<N>, CodecError> {
    crate::model::InlineStr::new(s).map_err(|e| bad(format!("{field}: {e}")))
}

fn signal_from_archived(
    a: &super::wire::ArchivedSignalWire,
    max_analysis: usize,
) -> Result<Signal, CodecError> {
    let bad = CodecError::InvalidSignal;
    let code_err = |e: crate::model::UnknownVariant| bad(e.to_string());
    let confidence = a.confidence.to_native();
    let signal = Signal {
        id: Uuid::from_bytes(a.id),
        source_id: Uuid::from_bytes(a.source_id),
        source_type: SourceType::from_code(a.source_type).map_err(code_err)?,
        symbol: text::<20>("symbol", a.symbol.as_str(), bad)? as Symbol,
        exchange: text::<50>("exchange", a.exchange.as_str(), bad)? as Exchange,
        category: Category::from_code(a.category).map_err(code_err)?,
        signal_type: SignalType::from_code(a.signal_type).map_err(code_err)?,
        entry_price: price("entry_price", a.entry_price.to_native(), bad)?,
        target_price: price("target_price", a.target_price.to_native(), bad)?,
        stop_loss: price("stop_loss", a.stop_loss.to_native(), bad)?,
        quantity_recommended: a.quantity_recommended.as_ref().map(|q| q.to_native()),
        confidence: Confidence::new(confidence)
            .ok_or_else(|| bad(format!("confidence {confidence} hundredths is over 100.00")))?,
        generated_at: UnixNanos(a.generated_at.to_native()),
        expires_at: UnixNanos(a.expires_at.to_native()),
        analysis: match a.analysis.as_ref() {
            Some(s) if s.len() > max_analysis => {
                return Err(bad(format!("analysis is {} bytes, over the limit of {max_analysis}", s.len())));
            }
            Some(s) => Some(Analysis::from_json(s.as_str().to_owned()).map_err(|e| bad(e.to_string()))?),
            None => None,
        },
    };
    signal.validate(max_analysis).map_err(|e| bad(e.to_string()))?;
    Ok(signal)
}

fn tick_from_archived(a: &ArchivedTickWire) -> Result<Tick, CodecError> {
    let bad = CodecError::InvalidTick;
    let tick = Tick {
        symbol: text::<20>("symbol", a.symbol.as_str(), bad)?,
        exchange: text::<50>("exchange", a.exchange.as_str(), bad)?,
        bid: price("bid", a.bid.to_native(), bad)?,
        ask: price("ask", a.ask.to_native(), bad)?,
        last: price("last", a.last.to_native(), bad)?,
        volume: a.volume.to_native(),
        ts: UnixNanos(a.ts.to_native()),
    };
    tick.validate().map_err(|e| bad(e.to_string()))?;
    Ok(tick)
}

#[cfg(test)]
mod tests;
