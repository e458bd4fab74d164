//! Trust anchors from a CA file, re-read when the file changes: a link verifies the
//! certificate chain and the name of whoever answers against them, and a rotated CA
//! (a new bundle written over the old) is trusted from the next handshake on, without
//! a restart. A bundle that does not load leaves the previous anchors in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::TlsError;

#[derive(Debug)]
struct Anchors {
    verifier: Arc<WebPkiServerVerifier>,
    stamp: Option<SystemTime>,
}

/// A certificate verifier whose trust anchors are the certificates of a PEM file,
/// re-read when its modification time changes (checked at each handshake).
#[derive(Debug)]
pub struct ReloadingRoots {
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Anchors>,
}

fn load(path: &Path, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let err = |reason: String| TlsError::Ca { path: path.display().to_string(), reason };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| err(e.to_string()))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| err(e.to_string()))
}

impl ReloadingRoots {
    /// Reads the bundle once; fails if it is unreadable or holds no certificate.
    pub fn new(path: &Path) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let stamp = crate::modified(path);
        let verifier = load(path, &provider)?;
        Ok(Self { path: path.to_owned(), provider, current: RwLock::new(Anchors { verifier, stamp }) })
    }

    /// The verifier in force, after re-reading the bundle if it changed.
    fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        let now = crate::modified(&self.path);
        {
            let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.stamp == now {
                return Arc::clone(&current.verifier);
            }
        }
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Half-written or broken: keep trusting what we trusted, try again next time.
        if let Ok(verifier) = load(&self.path, &self.provider) {
            *current = Anchors { verifier, stamp: now };
        }
        Arc::clone(&current.verifier)
    }
}

impl ServerCertVerifier for ReloadingRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// A client configuration (TLS 1.3 and 1.2) trusting the certificates of `ca`, re-read
/// when the file changes.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = Arc::new(ReloadingRoots::new(ca)?);
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&roots.provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous() // a verifier of our own; it delegates every check to webpki
        .with_custom_certificate_verifier(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A tokio connector trusting the certificates of `ca` ([`client_config`]).
pub fn connector(ca: &Path) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(client_config(ca)?))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use rustls::pki_types::PrivateKeyDer;

    use super::*;

    type Pair = rcgen::CertifiedKey<rcgen::KeyPair>;

    fn pair() -> Pair {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap()
    }

    /// One TLS exchange with a server presenting `server`, from a client trusting the
    /// file `ca` (with `config`).
    fn exchange(server: &Pair, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let chain = vec![server.cert.der().clone()];
        let key = PrivateKeyDer::try_from(server.signing_key.serialize_der()).unwrap();
        let server_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let serving = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server_config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut b = [0u8; 1];
            if tls.read_exact(&mut b).is_ok() {
                let _ = tls.write_all(&b);
            }
        });
        let conn = rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        let result =
            tls.write_all(b"x").and_then(|()| tls.read_exact(&mut [0u8; 1])).map_err(|e| e.to_string());
        drop(tls);
        let _ = serving.join();
        result
    }

    #[test]
    fn a_link_trusts_its_ca_file_and_follows_it_when_it_changes() {
        let (ours, theirs) = (pair(), pair());
        let ca = std::env::temp_dir().join(format!("signalcast-tls-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, ours.cert.pem()).unwrap();
        let config = client_config(&ca).unwrap();
        assert_eq!(exchange(&ours, Arc::clone(&config)), Ok(()));
        let refused = exchange(&theirs, Arc::clone(&config)).unwrap_err();
        assert!(refused.contains("certificate"), "{refused}");
        // A rotated CA file is trusted from the next handshake on; the old one is not.
        // (Modification times may not move within a clock tick: wait for one.)
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&ca, theirs.cert.pem()).unwrap();
        assert_eq!(exchange(&theirs, Arc::clone(&config)), Ok(()));
        assert!(exchange(&ours, Arc::clone(&config)).is_err());
        // A broken bundle leaves the anchors in force.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert_eq!(exchange(&theirs, Arc::clone(&config)), Ok(()));
        let _ = std::fs::remove_file(&ca);
        assert!(matches!(client_config(&ca), Err(TlsError::Ca { .. })), "a missing file is an error");
    }
}
