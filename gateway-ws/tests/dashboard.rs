//! The dashboard's HTTP side: the page and its scripts from the binary, with a strict
//! content security policy, and the dev token picker only where tokens are public
//! anyway (the embedded default's dev secret); `/metrics`, which the page charts, on the
//! client port or on a listener of its own (`metrics_listen`). The page itself runs in
//! Chromium in clients/typescript/test/dashboard.test.ts.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_scripts_come_from_the_binary_under_a_strict_policy() {
    let server = common::start(common::config()).await;
    let (head, body) = get(server.http_addr, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body.contains("/assets/dashboard/dashboard.js"));
    for path in ["/assets/dashboard/dashboard.js", "/assets/sdk/index.js", "/assets/sdk/client.js"] {
        let (head, body) = get(server.http_addr, path).await;
        assert!(head.starts_with("http/1.1 200") && head.contains("text/javascript"), "{path}: {head}");
        assert!(!body.is_empty());
    }
    let (head, _) = get(server.http_addr, "/assets/../Cargo.toml").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_are_offered_on_the_embedded_default_only() {
    let server = common::start(common::config()).await;
    let (head, body) = get(server.http_addr, "/dev/tokens").await;
    assert!(head.starts_with("http/1.1 200") && head.contains("cache-control: no-store"), "{head}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let users: Vec<&str> = list.iter().map(|d| d["user"].as_str().unwrap()).collect();
    for user in ["u-free-1", "u-premium-1", "u-enterprise-1"] {
        assert!(users.contains(&user), "{users:?}");
    }
    // Each is a working token for its user.
    let enterprise = list.iter().find(|d| d["user"] == "u-enterprise-1").unwrap();
    let token = enterprise["token"].as_str().unwrap();
    let mut c = common::Client::connect(&common::url(&server, token)).await;
    assert_eq!(c.subscribe("signals_enterprise").await["type"], "SUBSCRIBED");
    server.shutdown().await;

    // An operator's own secret: tokens are no longer public, and none are handed out.
    let mut config = common::config();
    config.auth.dev_secret = "an-operators-own-secret-0123456789".into();
    let server = common::start(config).await;
    let (head, body) = get(server.http_addr, "/dev/tokens").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(!body.contains("eyJ"), "no token in the answer: {body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_when_one_is_set() {
    // Unset (the default): /metrics on the client port, as ever.
    let server = common::start(common::config()).await;
    assert_eq!(server.metrics_addr, None);
    let (head, body) = get(server.http_addr, "/metrics").await;
    assert!(head.starts_with("http/1.1 200") && body.contains("signalcast_connections"), "{head}");
    server.shutdown().await;

    let mut config = common::config();
    config.metrics_listen = Some("127.0.0.1:0".into());
    let server = common::start(config).await;
    let metrics = server.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics, server.http_addr);
    let tok = common::token(&server, "u-premium-1");
    let _client = common::Client::connect(&common::url(&server, &tok)).await;
    let (head, body) = get(metrics, "/metrics").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(common::sample(&body, r#"signalcast_connections{tier="premium"}"#), Some(1.0), "{body}");
    // The client port no longer shows them; the metrics port shows nothing else.
    let (head, body) = get(server.http_addr, "/metrics").await;
    assert!(head.starts_with("http/1.1 404") && body.contains("metrics_listen"), "{head}{body}");
    for path in ["/", "/dev/tokens", "/health/ready", "/ws", "/metrics/x"] {
        let (head, _) = get(metrics, path).await;
        assert!(head.starts_with("http/1.1 404"), "{path}: {head}");
    }
    let (head, _) = get(server.http_addr, "/health/ready").await;
    assert!(head.starts_with("http/1.1 200"), "the client port serves the rest: {head}");

    // Connections there are bounded: 32 held open, the next is closed at once, and a
    // freed place serves again.
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(tokio::net::TcpStream::connect(metrics).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(metrics).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0) | Err(_))), "the 33rd connection is closed: {n:?}");
    drop(held.pop());
    let scraped = async {
        loop {
            let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), scraped).await.expect("a freed place serves");
    drop(held);
    server.shutdown().await;
}
