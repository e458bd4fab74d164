//! A served certificate that is re-read when its files change, so that a renewed
//! certificate (cert-manager, certbot) is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::TlsError;

/// The served certificate, swapped in place by [`ReloadingCert::reload_if_changed`];
/// handshakes in progress keep the one they started with.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Modification times of (cert, key) when they were read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

fn stamp(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    (crate::modified(cert), crate::modified(key))
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), reason: e.to_string() })?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), reason: e.to_string() })?;
    let signing = provider.key_provider.load_private_key(der)?;
    let certified = CertifiedKey::new(certs, signing);
    // A key that does not match its certificate would fail every handshake: refuse it.
    certified.keys_match()?;
    Ok(certified)
}

impl ReloadingCert {
    /// Reads the pair once; fails if either is unreadable or they do not match.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let stamp = stamp(cert, key);
        let loaded = Loaded { key: Arc::new(load(cert, key, &provider)?), stamp };
        Ok(Self { cert: cert.to_owned(), key: key.to_owned(), provider, current: RwLock::new(loaded) })
    }

    /// Re-reads the pair if either file changed since the last read. A pair that does
    /// not load (half-written, mismatched) leaves the served one in place and is tried
    /// again next time. Returns whether a new certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert, &self.key);
        if now == self.read().stamp {
            return Ok(false);
        }
        let key = Arc::new(load(&self.cert, &self.key, &self.provider)?);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Loaded { key, stamp: now };
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read().key))
    }
}

/// A TLS acceptor (TLS 1.3 and 1.2, ALPN http/1.1) serving the pair at these paths, and
/// the handle that reloads it.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<ReloadingCert>), TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&resolver.provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The WebSocket shards seal TLS 1.3 records themselves once the upgrade is done,
    // with the traffic keys taken out of rustls (gateway-ws `conn::record`).
    config.enable_secret_extraction = true;
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}
