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
                return
asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_websockets_client_receives_a_signal() {
    let ok =
        std::process::Command::new("python3").args(["-c", "import websockets"]).status().map(|s| s.success());
    assert!(
        matches!(ok, Ok(true)),
        "python3 with the websockets package is required (scripts/test.sh installs it)"
    );
    let server = start(config()).await;
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
        "SUBSCRIBED permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "python websockets negotiates permessage-deflate, shared"
    );
    let p = producer(&server).await;
    p.send_signal(&signal(42, 9_100, Category::Crypto)).await.unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(20), out.read_line(&mut line)).await.unwrap().unwrap();
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (m["type"].as_str(), m["channel"].as_str(), m["seq"].as_u64()),
        (Some("SIGNAL_UPDATE"), Some("signals_enterprise"), Some(1))
    );
    assert_eq!(id_of(&m), 42);
    assert!(child.wait().await.unwrap().success());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_test_certificate_works_end_to_end() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut cfg = config();
    cfg.tls = Some(gateway::config::TlsConfig {
        cert: temp_file("cert.pem", &cert.cert.pem()),
        key: temp_file("key.pem", &cert.signing_key.serialize_pem()),
        reload_interval_ms: 5_000,
        feed: false,
    });
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
