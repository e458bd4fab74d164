//! signalcast gateway: trading clients over WebSocket.
//!
//! The path of a message from the engine's channel logs to a socket:
//!
//! ```text
//! engine::channels (bell) --> hub shard thread --> hub::core (subscriptions,
//!     category, quota, delayed view) --> its outbox (bounded, per connection)
//!     --> writev by the shard --> socket
//! socket --> the same shard --> hub::core (ws::inbound, protocol: SUBSCRIBE, ...)
//! ```
//!
//! - [`server`]: starts everything ([`server::start`]) and drains it.
//! - [`node`]: what a node runs, decided once from its role.
//! - [`http`]: `/ws` (token checked before the upgrade), health, metrics.
//! - [`upgrade`]: a connection's first request read before hyper: `/ws` straight to a shard.
//! - [`dashboard`]: the live page at `/`, compiled into the binary.
//! - [`auth`]: tokens to sessions; the one seam to wherever accounts live.
//! - [`hub`]: the I/O-free core of every hub rule, and the shard threads that drive
//!   it with sockets.
//! - [`conn`]: a connection's socket (plain or TLS) and limits.
//! - [`protocol`]: client messages and replies (JSON).
//! - [`ws`]: WebSocket frames, sans-IO.
//! - [`metrics`]: Prometheus exposition.
//! - [`config`]: `signalcast.toml` and its defaults.

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod dashboard;
pub mod demo;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod ws;

pub use config::Config;
pub use server::{Running, StartError, start, start_on};
