//! TLS for every listener and link of signalcast: rustls with the aws-lc-rs provider
//! (the only crypto provider in the build), TLS 1.3 and 1.2 only.
//!
//! - [`server`]: a served certificate re-read when its files change (WSS, the producer
//!   feed, the accounts sidecar), so a renewed certificate is served without a restart.
//! - [`client`]: trust anchors from a CA file, re-read when it changes, for the links
//!   that must verify who answers (gateway to sidecar, producer to feed, sidecar to
//!   PostgreSQL).

pub mod client;
pub mod server;

pub use client::{ReloadingRoots, client_config, connector};
pub use server::{ReloadingCert, acceptor};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot read CA certificates {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("invalid certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Modification time of a file, if it has one.
fn modified(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}
