//! Real parts for the accounts tests: a throwaway PostgreSQL cluster (initdb + pg_ctl
//! on a free port, removed on drop) and the real `signalcast-accounts` binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "pg.rs"]
mod pg;
pub use pg::{Postgres, free_port};

pub const ADMIN: &str = "admin-token-for-tests-0123456789";
pub const GATEWAY: &str = "gateway-token-for-tests-0123456789";
pub const KEK: &str = "key-encryption-key-for-the-tests-0123456789";

/// The real sidecar binary on a free port.
pub struct Sidecar {
    child: Child,
    /// The public API.
    pub addr: SocketAddr,
    /// The admin API (its own listener).
    pub admin_addr: SocketAddr,
}

impl Sidecar {
    pub fn start(db: &Postgres) -> Self {
        Self::start_on(db, free_port())
    }

    pub fn start_on(db: &Postgres, port: u16) -> Self {
        Self::start_with(db, port, &[])
    }

    /// [`start_on`](Self::start_on) with more `serve` arguments.
    pub fn start_with(db: &Postgres, port: u16, args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
            .args(["serve", "--listen", &addr.to_string(), "--access-ttl-secs", "900"])
            .args(["--admin-listen", &admin_addr.to_string()])
            .args(args)
            .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db.url())
            .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN)
            .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY)
            .env("SIGNALCAST_ACCOUNTS_KEK", KEK)
            .env("SIGNALCAST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self { child, addr, admin_addr };
        let until = Instant::now() + Duration::from_secs(30);
        let tls = args.contains(&"--tls-cert");
        let live = |s: &Self| {
            if tls {
                // Over TLS the answer is checked by the test; here, the port answers.
                TcpStream::connect(s.addr).is_ok() && TcpStream::connect(s.admin_addr).is_ok()
            } else {
                http(s.addr, "GET", "/health/live", None, None).0 == 200
            }
        };
        while !live(&s) {
            assert!(Instant::now() < until, "sidecar did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The sidecar's resident memory now, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// SIGTERM, then how long the process took to exit (`None`: not within `wait`).
    pub fn terminate(&mut self, wait: Duration) -> Option<Duration> {
        let began = Instant::now();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        while began.elapsed() < wait {
            if self.child.try_wait().unwrap().is_some() {
                return Some(began.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A certificate for `localhost` (self-signed: it is its own CA), and its key, as PEM
/// files in a fresh directory.
pub struct TestCert {
    pub dir: PathBuf,
    pub pair: rcgen::CertifiedKey<rcgen::KeyPair>,
}

impl TestCert {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("signalcast-{name}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let pair = rcgen::generate_simple_self_signed(names).unwrap();
        std::fs::write(dir.join("cert.pem"), pair.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), pair.signing_key.serialize_pem()).unwrap();
        Self { dir, pair }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`http`] over TLS to `localhost:<port of addr>`, trusting only `ca`'s certificate;
/// status 0 when the handshake (or anything else) fails.
pub fn https(
    addr: SocketAddr,
    ca: &TestCert,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.pair.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let Ok(sock) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return (0, Value::Null) };
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    exchange(&mut s, "localhost", method, path, bearer, body)
}

/// Writes one request on `s` (Connection: close) and reads the answer to its end.
fn exchange(
    s: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, Value::Null);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// One HTTP/1.1 request (Connection: close); returns (status, JSON body or Null).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, Value::Null);
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(&mut s, &addr.to_string(), method, path, bearer, body)
}

/// Reads server-sent events from a stream opened with `GET path`.
pub struct Events {
    s: TcpStream,
    buf: String,
}

impl Events {
    pub fn open(addr: SocketAddr, path: &str, bearer: &str) -> Self {
        let mut s = TcpStream::connect(addr).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        Self { s, buf: String::new() }
    }

    /// The next event's data as JSON, or None after `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<Value> {
        let until = Instant::now() + wait;
        loop {
            if let Some(at) = self.buf.find("data: ")
                && let Some(end) = self.buf[at..].find('\n')
            {
                let line = self.buf[at + 6..at + end].trim().to_owned();
                self.buf.drain(..at + end);
                return serde_json::from_str(&line).ok();
            }
            let left = until.checked_duration_since(Instant::now())?;
            self.s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(_) => return None,
            }
        }
    }
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A gateway following `sidecar`, ready.
pub async fn gateway_on(sidecar: &Sidecar) -> gateway::Running {
    let mut config = gateway::Config::default();
    config.store.data_dir = std::env::temp_dir().join(format!(
        "signalcast-accounts-test-{}-{}",
        std::process::id(),
        engine::model::UnixNanos::now().0
    ));
    config.demo.enabled = false;
    config.auth.accounts_url = Some(format!("http://{}", sidecar.addr));
    config.auth.accounts_gateway_token = GATEWAY.to_owned();
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::start_on(config, http_l, feed_l).await.unwrap();
    let until_ready = Instant::now() + Duration::from_secs(10);
    while http(gw.http_addr, "GET", "/health/ready", None, None).0 != 200 {
        assert!(Instant::now() < until_ready, "gateway never followed the sidecar");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}
