//! WebSocket framing (RFC 6455) for the server side, with no I/O.
//!
//! - [`inbound`]: client frames → messages, with every limit of docs/protocol.md enforced
//!   (masking, 4,096-byte messages, control frame rules, UTF-8).
//! - [`outbound`]: server frames (text, pong, close). Signal messages arrive already
//!   framed from the engine (`engine::channels::Message::frame`).
//!
//! The HTTP upgrade is `crate::upgrade` and `crate::http` (decision 146); see
//! docs/DECISIONS.md for why frames are read here.

pub mod deflate;
pub mod inbound;
pub mod outbound;

/// A frame as a client writes it: `mask` as RFC 6455 requires of clients (`None` for an
/// unmasked frame, which a server must refuse). Used by the tests, the fuzz targets and
/// the bench's light client; the server itself never writes one.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push((u8::from(fin) << 7) | opcode);
    match payload.len() {
        n if n < 126 => f.push(bit | n as u8),
        n if n <= 65_535 => {
            f.push(bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Close codes the gateway sends (docs/protocol.md, "Close codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    Protocol = 1002,
    Unsupported = 1003,
    InvalidPayload = 1007,
    Policy = 1008,
    TooBig = 1009,
    Internal = 1011,
    TokenExpired = 4001,
    Suspended = 4003,
    HeartbeatTimeout = 4004,
    SlowConsumer = 4008,
}

impl CloseCode {
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The reason text sent with the code.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "bye",
            Self::GoingAway => "server going away",
            Self::Protocol => "protocol error",
            Self::Unsupported => "binary messages are not accepted",
            Self::InvalidPayload => "invalid UTF-8",
            Self::Policy => "too many errors",
            Self::TooBig => "message over 4096 bytes",
            Self::Internal => "internal error",
            Self::TokenExpired => "token expired",
            Self::Suspended => "account suspended",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::SlowConsumer => "slow consumer",
        }
    }
}
