//! signalcast engine: everything between a producer's socket and a channel log.
//!
//! The modules follow the path of one signal (docs/ARCHITECTURE.md):
//!
//! ```text
//! feed (TCP frames) --> pipeline::IngestQueue --> pipeline::Stage
//!     enrich (ticks::TickBook) --> filter --> route (policy) --> channels::ChannelLog
//! ```
//!
//! - [`model`]: signals, ticks, tiers, fixed-point prices; JSON and validation.
//! - [`feed`]: the producer wire protocol: frame codec, the TCP ingest server and the
//!   reconnecting [`feed::Producer`] client.
//! - [`ticks`]: the latest tick per symbol, written by the stage, read lock-free.
//! - [`pipeline`]: the single-writer stage (de-duplicate, enrich, filter, route, encode,
//!   delay) and the thread that drives it.
//! - [`channels`]: per-channel logs with epoch, gap-free seq and a ring of encoded
//!   messages; the subscribe-with-replay handoff the gateway builds on.
//! - [`policy`]: the tier table (fixtures/tiers.toml).
//! - [`config`]: engine settings with their defaults.
//! - [`critical`]: threads whose death ends the process (stage, hub shards).
//! - [`doorway`]: caps on sockets that have not authenticated yet.
//!
//! [`Engine`] wires them together.

pub mod channels;
pub mod config;
pub mod critical;
pub mod doorway;
pub mod feed;
pub mod kafka;
pub mod model;
pub mod outcome;
pub mod pipeline;
pub mod policy;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod ticks;

mod engine;
mod hash;

pub use engine::{Durable, Engine, EngineOptions};
