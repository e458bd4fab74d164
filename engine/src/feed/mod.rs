//! The producers' TCP feed (docs/feed-protocol.md).
//!
//! - [`codec`]: frames (`u32` LE length, `u8` kind, rkyv payload) and the typed messages
//!   they carry; no I/O, never panics on any input.
//! - [`server`]: the ingest server: HELLO/WELCOME, signals and ticks into the pipeline,
//!   cumulative ACKs.
//! - [`Producer`]: the client, with reconnect, resend from the last ACK and back-pressure.
//! - [`ProducerRegistry`]: what the engine remembers about each producer across
//!   connections (last acked seq, the live session).
//! - [`auth`]: producer API keys.

pub mod auth;
pub mod codec;
mod producer;
mod registry;
mod server;
mod wire;

pub use auth::{ProducerAuth, StaticKeys};
pub use codec::{CodecError, EngineMessage, FrameKind, Hello, ProducerMessage};
pub use producer::{Producer, ProducerConfig, ProducerError};
pub use registry::{ProducerRegistry, ProducerSlot};
pub use server::{FeedContext, FeedStats, FeedTls, run};
