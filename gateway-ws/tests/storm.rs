//! Reconnect storms against the real binary in its own process: what the defaults
//! admit. Alone in its test binary, so that nothing else competes for the two cores or
//! the descriptors while 10,000 sockets open on each side.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

/// An upgrade with `token` over a raw socket: the status line's code and the socket (to
/// keep the connection open), or 0 when the server closed without an answer.
async fn raw_upgrade(addr: &str, token: &str) -> (u16, Option<tokio::net::TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return (0, None) };
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, None);
    }
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return (0, None),
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
    }
    let code = std::str::from_utf8(&head[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, Some(s))
}

/// [4/10] 3: the default door (a cap on sockets before their upgrade, in total and per
/// address) lets 10,000 clients reconnecting at once through one address in: a load
/// balancer in front of a gateway looks like that. The server is the real binary in its
/// own process (10,000 sockets on each side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_admit_10000_clients_reconnecting_from_one_address() {
    let (_child, url) = common::serve_default(&[("SIGNALCAST_DEMO__ENABLED", "false")]).await;
    let rest = url.strip_prefix("ws://").unwrap();
    let (addr, token) = rest.split_once("/ws?token=").unwrap();
    let (addr, token) = (std::sync::Arc::new(addr.to_owned()), std::sync::Arc::new(token.to_owned()));
    const N: usize = 10_000;
    let started = Instant::now();
    let clients: Vec<_> = (0..N)
        .map(|_| {
            let (addr, token) = (std::sync::Arc::clone(&addr), std::sync::Arc::clone(&token));
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), raw_upgrade(&addr, &token))
                    .await
                    .unwrap_or((0, None))
            })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    let mut held = Vec::with_capacity(N);
    for c in clients {
        let (code, sock) = c.await.unwrap();
        *codes.entry(code).or_insert(0usize) += 1;
        held.extend(sock);
    }
    assert_eq!(codes.get(&101), Some(&N), "every client upgraded, none turned away: {codes:?}");
    eprintln!("10,000 upgrades from one address in {:?}", started.elapsed());
    drop(held);
}
