//! WebSocket framing (RFC 6455) for the server side, with no I/O.
//!
//! - [`inbound`]: client frames → messages, with every limit of docs/protocol.md enforced
//!   (masking, 4,096-byte messages, control frame rules, UTF-8).
//! - [`outbound`]: server frames (text, pong, close). Signal messages arrive already
//!   framed from the engine (`engine::channels::Message::frame`).
//!
//! The HTTP upgrade itself is fastwebsockets' (`fastwebsockets::upgrade`); see
//! docs/DECISIONS.md for why frames are read here.

pub mod inbound;
pub mod outbound;

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
