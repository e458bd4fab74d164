//! The rkyv schema of frame payloads.
//!
//! rkyv has no schema evolution: these structs are the wire format of protocol version
//! 1 and must not change. A new field means a new frame kind or a new version in HELLO.
//! Enums travel as their `u8` codes and times as nanoseconds; both are checked when the
//! archived value is turned into a domain type.

use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct HelloWire {
    pub(crate) producer_id: String,
    pub(crate) api_key: String,
    pub(crate) version: u16,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SignalWire {
    pub(crate) id: [u8; 16],
    pub(crate) source_id: [u8; 16],
    pub(crate) source_type: u8,
    pub(crate) symbol: String,
    pub(crate) exchange: String,
    pub(crate) category: u8,
    pub(crate) signal_type: u8,
    pub(crate) entry_price: i64,
    pub(crate) target_price: i64,
    pub(crate) stop_loss: i64,
    pub(crate) quantity_recommended: Option<u32>,
    pub(crate) confidence: u16,
    pub(crate) generated_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) analysis: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SignalFrameWire {
    pub(crate) producer_seq: u64,
    /// Producer send time in ns; 0 when not given.
    pub(crate) sent_at: i64,
    pub(crate) signal: SignalWire,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct TickWire {
    pub(crate) symbol: String,
    pub(crate) exchange: String,
    pub(crate) bid: i64,
    pub(crate) ask: i64,
    pub(crate) last: i64,
    pub(crate) volume: u64,
    pub(crate) ts: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SeqWire {
    pub(crate) seq: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ErrorWire {
    pub(crate) code: String,
    pub(crate) message: String,
}
