//! Clients nobody here wrote (Python `websockets`), and WSS end to end.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use engine::model::Category;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite;

const PY_CLIENT: &str = r#"
import asyncio, json, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send(json.dumps({"type": "SUBSCRIBE", "channel": "signals_enterprise"}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if m["type"] == "SUBSCRIBED":
                # Negotiated by default: its SUBSCRIBE went compressed, the answers come so.
                print("SUBSCRIBED", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
            if m["type"] == "SIGNAL_UPDATE":
                print(json.dumps(m), flush=True)
                if m["seq"] == 2:
                    return
asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_websockets_client_receives_a_signal() {
    python_client_receives_a_signal(
        config(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_websockets_client_takes_context_takeover_when_it_is_opted_in() {
    let mut cfg = config();
    cfg.deflate_context_takeover = true;
    cfg.deflate_window_bits = 10;
    python_client_receives_a_signal(
        cfg,
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
    )
    .await;
}

/// Python `websockets` (its default offer) negotiates `answer` with a server of
/// `config` and reads a signal through it.
async fn python_client_receives_a_signal(config: gateway::Config, answer: &str) {
    let ok =
        std::process::Command::new("python3").args(["-c", "import websockets"]).status().map(|s| s.success());
    assert!(
        matches!(ok, Ok(true)),
        "python3 with the websockets package is required (scripts/test.sh installs it)"
    );
    let server = start(config).await;
    let script = temp_file("client.py", PY_CLIENT);
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(url(&server, &token(&server, "u-enterprise-1")))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line)).await.unwrap().unwrap();
    assert_eq!(
        line.trim(),
        format!("SUBSCRIBED {answer}"),
        "python websockets negotiates permessage-deflate"
    );
    // Two: with context takeover the second is compressed against the first.
    let p = producer(&server).await;
    for (seq, id) in [(1, 42), (2, 43)] {
        p.send_signal(&signal(id, 9_100, Category::Crypto)).await.unwrap();
        line.clear();
        tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line)).await.unwrap().unwrap();
        let m: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (m["type"].as_str(), m["channel"].as_str(), m["seq"].as_u64()),
            (Some("SIGNAL_UPDATE"), Some("signals_enterprise"), Some(seq))
        );
        assert_eq!(id_of(&m), id);
    }
    assert!(child.wait().await.unwrap().success());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_test_certificate_works_end_to_end() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut cfg = config();
    cfg.tls = Some(serving(&cert));
    cfg.metrics_listen = Some("127.0.0.1:0".into());
    let server = start(cfg).await;
    assert!(server.tls);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = format!("wss://localhost:{}/ws?token={}", server.http_addr.port(), token(&server, "u-basic-1"));
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(client))),
    )
    .await
    .unwrap();
    ws.send(tungstenite::Message::text(json!({"type": "SUBSCRIBE", "channel": "signals_basic"}).to_string()))
        .await
        .unwrap();
    let p = producer(&server).await;
    let mut sent = false;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        let tungstenite::Message::Text(t) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "SUBSCRIBED" && !sent {
            p.send_signal(&signal(7, 8_800, Category::Equity)).await.unwrap();
            sent = true;
        }
        if v["type"] == "SIGNAL_UPDATE" {
            assert_eq!(id_of(&v), 7);
            break;
        }
    }
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.http_addr.port()))
            .await
            .is_err()
    );

    // The metrics listener speaks TLS with the same certificate (the manifests' scrape
    // scheme is https), and nothing in plain HTTP.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = server.metrics_addr.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client(&[&cert], &[&rustls::version::TLS13]));
    let tcp = tokio::net::TcpStream::connect(metrics).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await; // a peer that closes without close_notify is fine here
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("signalcast_connections"), "{out}");
    let mut plain = tokio::net::TcpStream::connect(metrics).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("signalcast_connections"), "metrics in plain HTTP");
    server.shutdown().await;
}

/// Serves WSS with `cert` (files written for the test; reloaded every 5 s).
fn serving(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> gateway::config::TlsConfig {
    gateway::config::TlsConfig {
        cert: temp_file("cert.pem", &cert.cert.pem()),
        key: temp_file("key.pem", &cert.signing_key.serialize_pem()),
        reload_interval_ms: 5_000,
        feed: false,
    }
}

/// A TLS client that trusts `roots`, offers only `versions` and never resumes.
fn tls_client(
    roots: &[&rcgen::CertifiedKey<rcgen::KeyPair>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.cert.der().clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    // Full handshakes only: a resumed session shows the certificate of its first one.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Connects over WSS and returns the socket and the certificate the server presented.
async fn wss(server: &gateway::Running, client: Arc<rustls::ClientConfig>) -> (Ws, Vec<u8>) {
    let url = format!("wss://localhost:{}/ws?token={}", server.http_addr.port(), token(server, "u-basic-1"));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(client)),
    )
    .await
    .unwrap();
    let presented = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => {
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
        _ => panic!("not TLS"),
    };
    (ws, presented)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_over_tls_1_2_and_1_3() {
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) =
        (temp_file("cert.pem", &first.cert.pem()), temp_file("key.pem", &first.signing_key.serialize_pem()));
    let mut cfg = config();
    cfg.tls = Some(gateway::config::TlsConfig {
        cert: cert.clone(),
        key: key.clone(),
        reload_interval_ms: 100,
        feed: false,
    });
    let server = start(cfg).await;
    let both = tls_client(&[&first, &renewed], rustls::DEFAULT_VERSIONS);

    let (mut old, presented) = wss(&server, Arc::clone(&both)).await;
    assert_eq!(presented, first.cert.der().to_vec());

    // Renewal as cert-manager or certbot does it: new files in place.
    std::fs::write(&key, renewed.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert, renewed.cert.pem()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_ws, presented) = wss(&server, Arc::clone(&both)).await;
        if presented == renewed.cert.der().to_vec() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was not served within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made before the renewal goes on.
    old.send(tungstenite::Message::text(json!({"type": "PING"}).to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), old.next()).await.unwrap().unwrap().unwrap();
        if let tungstenite::Message::Text(t) = msg
            && t.as_str().contains("PONG")
        {
            break;
        }
    }
    // TLS 1.2 and 1.3 are both served (rustls has nothing older to offer).
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (_ws, presented) = wss(&server, tls_client(&[&renewed], &[version])).await;
        assert_eq!(presented, renewed.cert.der().to_vec());
    }
    server.shutdown().await;
}

/// [3/10] 2: the producers' feed over TLS (`[tls] feed = true`), with the gateway's own
/// certificate: a producer that verifies it publishes; one that speaks plain TCP, or
/// trusts another CA, gets nowhere (and a key sent in clear would never be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_speaks_tls_to_producers_that_verify_it() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = temp_file("cert.pem", &cert.cert.pem());
    let mut cfg = config();
    cfg.tls = Some(gateway::config::TlsConfig {
        cert: ca.clone(),
        key: temp_file("key.pem", &cert.signing_key.serialize_pem()),
        reload_interval_ms: 5_000,
        feed: true,
    });
    let server = start(cfg).await;
    let feed = format!("localhost:{}", server.feed_addr.unwrap().port());
    let producer_with = |tls: Option<tokio_rustls::TlsConnector>| {
        let mut c = engine::feed::ProducerConfig::new(feed.clone(), PRODUCER.0, PRODUCER.1);
        c.tls = tls;
        c.connect_timeout = Duration::from_secs(2);
        engine::feed::Producer::connect(c)
    };
    let p =
        producer_with(Some(gateway::tls::connector(&ca).unwrap())).await.expect("a verified TLS producer");
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{}/ws?token={}", server.http_addr.port(), token(&server, "u-enterprise-1")),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(gateway::tls::client_config(&ca).unwrap())),
    )
    .await
    .unwrap();
    let mut c = Client::from_ws(ws).await;
    c.subscribe("signals_enterprise").await;
    p.send_signal(&signal(77, 9_500, Category::Crypto)).await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(id_of(&c.signals(1).await[0]), 77, "over TLS end to end");

    let plain = tokio::time::timeout(Duration::from_secs(10), producer_with(None)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plain producer is not served");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = temp_file("other.pem", &other.cert.pem());
    let fooled = tokio::time::timeout(
        Duration::from_secs(10),
        producer_with(Some(gateway::tls::connector(&other_ca).unwrap())),
    )
    .await;
    assert!(!matches!(fooled, Ok(Ok(_))), "a producer trusting another CA does not send its key");
    server.shutdown().await;
}

/// A raw WebSocket client that shows the frame bits (RSV1), which the client libraries
/// hide: upgrade request with `headers`, then whole server frames.
struct RawWs {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    /// The upgrade response's head.
    head: String,
    /// Keeps its window across messages when the server does (context takeover).
    inflater: gateway::ws::deflate::Inflater,
    /// Payload bytes of the last message read, as sent.
    last_wire: usize,
}

impl RawWs {
    async fn connect(server: &gateway::Running, user: &str, headers: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(server.http_addr).await.unwrap();
        let token = token(server, user);
        let req = format!(
            "GET /ws?token={token}&subscribe=signals_enterprise HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
            server.http_addr
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                buf.drain(..end + 4);
                let context =
                    head.contains("permessage-deflate") && !head.contains("server_no_context_takeover");
                let inflater = if context {
                    gateway::ws::deflate::Inflater::keeping_context()
                } else {
                    gateway::ws::deflate::Inflater::default()
                };
                return Self { stream, buf, head, inflater, last_wire: 0 };
            }
        }
    }

    fn extensions(&self) -> Option<String> {
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("sec-websocket-extensions:").map(|v| v.trim().to_owned())
        })
    }

    /// The next data frame: (RSV1 set, payload).
    async fn next(&mut self) -> (bool, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b1 & 0x80, 0, "server frames are not masked");
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
                    }
                    126 => (usize::MAX, 0),
                    127 => panic!("no message here is that large"),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    assert_eq!(b0 & 0x80, 0x80, "one frame per message");
                    return (b0 & 0x40 != 0, payload);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message as text, inflated if it came compressed; and whether it did.
    async fn next_text(&mut self) -> (bool, String) {
        let (compressed, payload) = self.next().await;
        self.last_wire = payload.len();
        let text = if compressed {
            let mut out = Vec::new();
            self.inflater.inflate(&payload, 1 << 20, &mut out).unwrap();
            out
        } else {
            payload
        };
        (compressed, String::from_utf8(text).unwrap())
    }

    /// Reads until a SIGNAL_UPDATE.
    async fn signal(&mut self) -> (bool, String) {
        loop {
            let (compressed, text) = self.next_text().await;
            if text.contains("\"SIGNAL_UPDATE\"") {
                return (compressed, text);
            }
            assert!(!compressed, "only channel messages go compressed: {text}");
        }
    }
}

const CHROMIUM_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_gives_the_same_message_compressed_once_to_whoever_offered_it() {
    let server = start(config()).await;
    let mut plain = RawWs::connect(&server, "u-enterprise-1", "").await;
    let mut a = RawWs::connect(&server, "u-enterprise-1", CHROMIUM_OFFER).await;
    let mut b = RawWs::connect(&server, "u-enterprise-1", CHROMIUM_OFFER).await;
    let safari_15_2 = "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.2 Safari/605.1.15\r\n";
    let mut safari =
        RawWs::connect(&server, "u-enterprise-1", &format!("{CHROMIUM_OFFER}{safari_15_2}")).await;
    assert_eq!(plain.extensions(), None, "nothing offered, nothing answered");
    let shared =
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover".to_owned());
    assert_eq!(a.extensions(), shared);
    assert_eq!(b.extensions(), shared);
    assert_eq!(safari.extensions(), None, "Safari 15.0–15.3 cannot take it");

    let p = producer(&server).await;
    p.send_signal(&signal(7, 9_100, Category::Crypto)).await.unwrap();
    let (plain_compressed, plain_text) = plain.signal().await;
    assert!(!plain_compressed);
    let (a_compressed, a_text) = a.signal().await;
    let (b_compressed, b_text) = b.signal().await;
    assert!(a_compressed && b_compressed, "the signal goes compressed to both");
    assert_eq!(a_text, plain_text, "inflated, the same message byte for byte");
    assert_eq!(b_text, plain_text);
    assert!(!safari.signal().await.0);
    server.shutdown().await;

    // Refused by the operator: no answer, nothing compressed.
    let mut cfg = config();
    cfg.permessage_deflate = false;
    let server = start(cfg).await;
    let mut c = RawWs::connect(&server, "u-enterprise-1", CHROMIUM_OFFER).await;
    assert_eq!(c.extensions(), None);
    producer(&server).await.send_signal(&signal(8, 9_100, Category::Crypto)).await.unwrap();
    assert!(!c.signal().await.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_takeover_when_opted_in_compresses_each_connections_stream_on_its_own() {
    let mut cfg = config();
    cfg.deflate_context_takeover = true;
    cfg.deflate_window_bits = 12;
    let server = start(cfg).await;
    let mut plain = RawWs::connect(&server, "u-enterprise-1", "").await;
    let mut a = RawWs::connect(&server, "u-enterprise-1", CHROMIUM_OFFER).await;
    let mut b = RawWs::connect(&server, "u-enterprise-1", CHROMIUM_OFFER).await;
    let no_context = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n";
    let mut shared = RawWs::connect(&server, "u-enterprise-1", no_context).await;
    let context =
        Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=12".to_owned());
    assert_eq!(a.extensions(), context);
    assert_eq!(b.extensions(), context);
    assert_eq!(
        shared.extensions().as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "a client that asks for no context gets the shared mode"
    );
    let p = producer(&server).await;
    // `a` reads every message as it comes; `b` only after all of them went out: each
    // stream is its own, in order, and inflates only with the window kept across
    // messages (the inflater would fail on a message compressed against another window).
    let mut texts = Vec::new();
    let mut sizes = Vec::new();
    for n in 0..5 {
        p.send_signal(&signal(100 + n, 9_100, Category::Crypto)).await.unwrap();
        let (_, text) = plain.signal().await;
        let (compressed, got) = a.signal().await;
        assert!(compressed);
        assert_eq!(got, text, "inflated, the same message byte for byte");
        sizes.push(a.last_wire);
        let (_, shared_text) = shared.signal().await;
        assert_eq!(shared_text, text);
        // The shared copy is compressed on its own: never smaller than a message that
        // can refer back to the ones before it.
        if n > 0 {
            assert!(
                a.last_wire * 2 < shared.last_wire,
                "context: {} vs shared {}",
                a.last_wire,
                shared.last_wire
            );
        }
        texts.push(text);
    }
    assert!(
        sizes[1..].iter().all(|s| s * 2 < sizes[0]),
        "later messages refer back to earlier ones: {sizes:?}"
    );
    let mut later = Vec::new();
    for _ in 0..5 {
        let (compressed, text) = b.signal().await;
        assert!(compressed);
        later.push(text);
    }
    assert_eq!(later, texts);
    server.shutdown().await;
}

/// A client frame sent right behind the upgrade request, its TLS record cut in two
/// across the moment the server takes the connection over from the HTTP layer, is read
/// whole; then a signal arrives and close_notify ends the connection. Over TLS 1.3
/// (records sealed by the shard, the keys taken out of rustls) and 1.2 (rustls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_pipelined_behind_the_upgrade_is_read_whole_over_tls_1_3_and_1_2() {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut cfg = config();
    cfg.tls = Some(serving(&cert));
    let server = start(cfg).await;
    let p = producer(&server).await;
    for (n, version) in [&rustls::version::TLS13, &rustls::version::TLS12].into_iter().enumerate() {
        let connector = tokio_rustls::TlsConnector::from(tls_client(&[&cert], &[version]));
        let tcp = tokio::net::TcpStream::connect(server.http_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (mut tcp, mut conn) = connector.connect(name, tcp).await.unwrap().into_inner();
        let request = format!(
            "GET /ws?token={}&subscribe=signals_enterprise HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            token(&server, "u-enterprise-1")
        );
        let seal = |conn: &mut rustls::ClientConnection, plain: &[u8]| {
            conn.writer().write_all(plain).unwrap();
            let mut wire = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            wire
        };
        let head = seal(&mut conn, request.as_bytes());
        let ping = br#"{"type":"PING"}"#;
        let mask = [7u8, 1, 9, 3];
        let mut frame = vec![0x81, 0x80 | ping.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(ping.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let frame = seal(&mut conn, &frame);
        tcp.write_all(&[&head[..], &frame[..7]].concat()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(&frame[7..]).await.unwrap();

        // Reads plaintext until `want` is in it.
        let mut plain = Vec::new();
        let mut read_until = async |conn: &mut rustls::ClientConnection, want: &str| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !String::from_utf8_lossy(&plain).contains(want) {
                let mut chunk = [0u8; 16 * 1024];
                let got = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await;
                let k = got.unwrap_or_else(|_| panic!("no {want} over {version:?}")).unwrap();
                assert!(k > 0, "closed before {want} over {version:?}");
                conn.read_tls(&mut &chunk[..k]).unwrap();
                conn.process_new_packets().unwrap();
                let _ = conn.reader().read_to_end(&mut plain);
            }
        };
        read_until(&mut conn, "HTTP/1.1 101").await;
        read_until(&mut conn, "PONG").await;
        p.send_signal(&signal(40 + n as u128, 8_800, Category::Equity)).await.unwrap();
        read_until(&mut conn, "SIGNAL_UPDATE").await;
        assert_eq!(conn.protocol_version(), Some(version.version));

        // close_notify from the client: the server closes its side too.
        conn.send_close_notify();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        tcp.write_all(&wire).await.unwrap();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "the server kept a closed connection open over {version:?}");
    }
    server.shutdown().await;
}
