//! The gateway on the sidecar: EdDSA tokens from a real login, and live rights changes
//! (upgrade, downgrade, suspension) reaching a connected client within a second, with
//! the sidecar killed and restarted in between.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws, wait: Duration) -> Option<Result<Value, Option<u16>>> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return Some(Err(None)),
            Ok(Some(Ok(Message::Text(t)))) => return Some(Ok(serde_json::from_str(t.as_str()).unwrap())),
            Ok(Some(Ok(Message::Close(c)))) => return Some(Err(c.map(|c| u16::from(c.code)))),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until a message of `kind` arrives (within `wait`), returning everything read.
async fn until(ws: &mut Ws, kind: &str, wait: Duration) -> Vec<Value> {
    let end = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match next(ws, left).await {
            Some(Ok(v)) => {
                let done = v["type"] == kind;
                seen.push(v);
                if done {
                    return seen;
                }
            }
            _ => break,
        }
    }
    panic!("no {kind} within {wait:?}; got {seen:?}");
}

async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    ws.send(Message::text(json!({"type": "SUBSCRIBE", "channel": channel}).to_string())).await.unwrap();
    loop {
        let v = next(ws, Duration::from_secs(5)).await.unwrap().unwrap();
        if v["type"] == "SUBSCRIBED" || v["type"] == "ERROR" {
            return v;
        }
    }
}

fn admin(s: &Sidecar, method: &str, path: &str, body: Value) -> u16 {
    http(s.addr, method, path, Some(ADMIN), Some(&body)).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_change_on_a_live_connection_within_a_second() {
    let db = Postgres::start();
    let port = free_port();
    let mut sidecar = Sidecar::start_on(&db, port);
    for tier in ["basic", "premium", "enterprise"] {
        admin(&sidecar, "POST", "/v1/admin/plans", json!({"id": tier, "name": tier, "tier": tier}));
    }
    let user =
        json!({"id": "u-live", "email": "live@example.com", "password": "pass-word-9", "plan": "premium"});
    assert_eq!(admin(&sidecar, "POST", "/v1/admin/users", user), 201);

    let mut config = gateway::Config::default();
    config.demo.enabled = false;
    config.shards = 2;
    config.auth.accounts_url = Some(format!("http://{}", sidecar.addr));
    config.auth.accounts_gateway_token = GATEWAY.to_owned();
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::start_on(config, http_l, feed_l).await.unwrap();
    let ready = || http(gw.http_addr, "GET", "/health/ready", None, None).0;
    let until_ready = Instant::now() + Duration::from_secs(10);
    while ready() != 200 {
        assert!(Instant::now() < until_ready, "gateway never followed the sidecar");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, tokens) = http(
        sidecar.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({"email": "live@example.com", "password": "pass-word-9"})),
    );
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let url = format!("ws://{}/ws?token={token}", gw.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let welcome = next(&mut ws, Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(welcome["data"]["tier"], "premium", "{welcome}");
    assert_eq!(subscribe(&mut ws, "signals_premium").await["type"], "SUBSCRIBED");
    assert_eq!(subscribe(&mut ws, "signals_enterprise").await["type"], "ERROR");

    // Upgrade: the higher channel opens on the same connection.
    assert_eq!(
        admin(
            &sidecar,
            "POST",
            "/v1/admin/subscriptions",
            json!({"user_id": "u-live", "plan_id": "enterprise"})
        ),
        200
    );
    let seen = until(&mut ws, "SYSTEM_MESSAGE", Duration::from_secs(1)).await;
    assert_eq!(seen.last().unwrap()["data"]["event"], "entitlements_changed", "{seen:?}");
    assert_eq!(subscribe(&mut ws, "signals_enterprise").await["type"], "SUBSCRIBED");

    // Downgrade: channels above basic go at once, with ERROR and UNSUBSCRIBED.
    assert_eq!(
        admin(&sidecar, "POST", "/v1/admin/subscriptions", json!({"user_id": "u-live", "plan_id": "basic"})),
        200
    );
    let mut unsubscribed = Vec::new();
    let end = Instant::now() + Duration::from_secs(1);
    while unsubscribed.len() < 2 {
        let left = end.checked_duration_since(Instant::now()).expect("both channels within 1 s");
        let v = next(&mut ws, left).await.expect("within 1 s").unwrap();
        if v["type"] == "UNSUBSCRIBED" {
            assert_eq!(v["reason"], "entitlement", "{v}");
            unsubscribed.push(v["channel"].as_str().unwrap().to_owned());
        }
    }
    unsubscribed.sort();
    assert_eq!(unsubscribed, ["signals_enterprise", "signals_premium"]);

    // The sidecar dies: the connection lives on (PING answered), readiness drops.
    sidecar.kill();
    ws.send(Message::text(r#"{"type":"PING"}"#)).await.unwrap();
    assert_eq!(until(&mut ws, "PONG", Duration::from_secs(2)).await.last().unwrap()["type"], "PONG");
    let until_down = Instant::now() + Duration::from_secs(5);
    while ready() != 503 {
        assert!(Instant::now() < until_down, "readiness still says ready with the sidecar gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A change made while it is down (straight in the database) arrives once it is back.
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .execute("UPDATE user_management.users SET status = 'suspended' WHERE id = 'u-live'", &[])
        .await
        .unwrap();
    let _sidecar = Sidecar::start_on(&db, port);
    let end = Instant::now() + Duration::from_secs(8);
    let code = loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("suspension applied after the sidecar returned");
        match next(&mut ws, left).await {
            Some(Ok(_)) => {}
            Some(Err(code)) => break code,
            None => panic!("no close"),
        }
    };
    assert_eq!(code, Some(4003), "a suspended user is disconnected with 4003");
    // And the old token no longer opens a connection.
    let refused = tokio_tungstenite::connect_async(&url).await;
    assert!(refused.is_err(), "a suspended user's token is refused");
    gw.shutdown().await;
}
