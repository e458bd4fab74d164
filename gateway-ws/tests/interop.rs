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
                print("SUBSCRIBED", flush=True)
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
    assert_eq!(line.trim(), "SUBSCRIBED");
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
    });
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
    server.shutdown().await;
}
