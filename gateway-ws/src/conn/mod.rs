//! A connection's socket side: the socket itself (plain or TLS, [`Io`]) and the
//! per-connection limits. What a connection *means* — its subscriptions, its outbound
//! queue, what its client said — is the hub core's (`hub::core`); the shard that owns
//! the socket only moves bytes between the two.

mod io;
mod record;

pub use io::Io;
pub use record::HandshakeStream;

use std::time::Duration;

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Largest client message (all fragments), bytes.
    pub max_message: usize,
    /// Outbound buffer bound, bytes; past it, close 4008.
    pub outbound_limit: usize,
    /// A socket that takes nothing for this long is dropped.
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
