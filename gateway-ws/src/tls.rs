//! WSS and the links to the sidecar: the shared TLS crate (`signalcast-tls`).

pub use ::tls::*;
