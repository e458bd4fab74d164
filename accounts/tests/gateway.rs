//! The gateway on the sidecar: EdDSA tokens from a real login, producer keys issued and
//! revoked by the sidecar, and live rights changes (upgrade, downgrade, suspension)
//! reaching a connected client within a second, with signals flowing and the sidecar
//! killed and restarted in between.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn base64url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

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

/// A fixture signal made current, with a fresh id and the given confidence (hundredths).
fn signal(n: u128, confidence: u16) -> engine::model::Signal {
    engine::testkit::signal(n, confidence, engine::model::Category::Equity)
}

/// The next SIGNAL_UPDATE (skipping anything else), or None within `wait`.
async fn next_signal(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let end = Instant::now() + wait;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match next(ws, left).await? {
            Ok(v) if v["type"] == "SIGNAL_UPDATE" => return Some(v),
            Ok(_) => {}
            Err(code) => panic!("closed {code:?} while waiting for a signal"),
        }
    }
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

    // Algorithm confusion: the same claims, signed HS256 with the sidecar's public key
    // (from its JWKS) as the HMAC secret, under the real key id. Refused before upgrade.
    let (_, jwks) = http(sidecar.addr, "GET", "/.well-known/jwks.json", None, None);
    let jwk = &jwks["keys"][0];
    let public = base64url_decode(jwk["x"].as_str().unwrap());
    let claims: Value = serde_json::from_slice(&base64url_decode(token.split('.').nth(1).unwrap())).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = jwk["kid"].as_str().map(str::to_owned);
    let forged =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(&public)).unwrap();
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={forged}", gw.http_addr)).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "HS256 under the EdDSA key id is refused: {refused:?}"
    );

    let url = format!("ws://{}/ws?token={token}", gw.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let welcome = next(&mut ws, Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(welcome["data"]["tier"], "premium", "{welcome}");
    assert_eq!(subscribe(&mut ws, "signals_premium").await["type"], "SUBSCRIBED");
    assert_eq!(subscribe(&mut ws, "signals_enterprise").await["type"], "ERROR");

    // A producer key issued by the sidecar opens the feed (once the gateway has it).
    let (st, key) = http(
        sidecar.addr,
        "POST",
        "/v1/admin/producer-keys",
        Some(ADMIN),
        Some(&json!({"producer_id": "model-live"})),
    );
    assert_eq!(st, 201);
    let key = key["key"].as_str().unwrap().to_owned();
    let feed = gw.feed_addr.expect("a feed").to_string();
    let until_key = Instant::now() + Duration::from_secs(5);
    let producer = loop {
        match engine::feed::Producer::connect(engine::feed::ProducerConfig::new(
            feed.clone(),
            "model-live",
            key.clone(),
        ))
        .await
        {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < until_key, "the sidecar's producer key never opened the feed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    producer.send_signal(&signal(1, 8_000)).await.unwrap();
    let got = next_signal(&mut ws, Duration::from_secs(5)).await.expect("a premium signal");
    assert_eq!(got["channel"], "signals_premium");

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
    // Nothing more from the lost channels: a premium-only signal (80.00 < basic's 85.00)
    // never arrives, a signal for every tier arrives on signals_basic only.
    assert_eq!(subscribe(&mut ws, "signals_basic").await["type"], "SUBSCRIBED");
    producer.send_signal(&signal(2, 8_000)).await.unwrap();
    producer.send_signal(&signal(3, 9_500)).await.unwrap();
    let got = next_signal(&mut ws, Duration::from_secs(5)).await.expect("the all-tier signal");
    assert_eq!(
        (got["channel"].as_str(), got["data"]["id"].as_str()),
        (Some("signals_basic"), Some(uuid::Uuid::from_u128(3).to_string().as_str())),
        "{got}"
    );
    assert!(next_signal(&mut ws, Duration::from_millis(300)).await.is_none(), "no data from a lost channel");

    // The sidecar dies: signals keep flowing to the connection; the gateway is degraded
    // but stays ready (its cached keys still verify tokens: clients can reconnect).
    sidecar.kill();
    producer.send_signal(&signal(4, 9_600)).await.unwrap();
    let got = next_signal(&mut ws, Duration::from_secs(5)).await.expect("signals flow with the sidecar down");
    assert_eq!(got["data"]["id"], uuid::Uuid::from_u128(4).to_string());
    let until_down = Instant::now() + Duration::from_secs(5);
    while !gw.app.metrics().contains("signalcast_accounts_feed_up 0") {
        assert!(Instant::now() < until_down, "the feed is still reported up with the sidecar gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready(), 200, "degraded, still ready");
    let again = format!("ws://{}/ws?token={token}", gw.http_addr);
    let (mut second, _) = tokio_tungstenite::connect_async(&again).await.expect("a reconnect while degraded");
    let _ = second.close(None).await;
    // A change made while it is down (straight in the database) arrives once it is back.
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .execute("UPDATE user_management.users SET status = 'suspended' WHERE id = 'u-live'", &[])
        .await
        .unwrap();
    let sidecar = Sidecar::start_on(&db, port);
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

    // Revoking the producer's key cuts its live connection.
    let (_, snap) = http(sidecar.addr, "GET", "/v1/gateway/snapshot", Some(GATEWAY), None);
    assert_eq!(snap["keys"].as_array().unwrap().len(), 1);
    let id = {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT id FROM auth.producer_keys WHERE producer_id = 'model-live'", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(
        http(sidecar.addr, "DELETE", &format!("/v1/admin/producer-keys/{id}"), Some(ADMIN), None).0,
        204
    );
    let until_cut = Instant::now() + Duration::from_secs(2);
    let mut n = 10;
    loop {
        n += 1;
        match producer.send_signal(&signal(n, 9_500)).await {
            Err(engine::feed::ProducerError::Refused { code, .. }) => {
                assert_eq!(code, "key_revoked");
                break;
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(()) => {
                assert!(Instant::now() < until_cut, "the revoked producer is still connected");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // A signing key rotation: tokens of the new key open connections at once, tokens of
    // the old one still do.
    let (st, _) = http(sidecar.addr, "POST", "/v1/admin/signing-keys/rotate", Some(ADMIN), None);
    assert_eq!(st, 200);
    assert_eq!(http(sidecar.addr, "POST", "/v1/admin/users/u-live/reactivate", Some(ADMIN), None).0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, fresh) = http(
        sidecar.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({"email": "live@example.com", "password": "pass-word-9"})),
    );
    let fresh_url = format!("ws://{}/ws?token={}", gw.http_addr, fresh["access_token"].as_str().unwrap());
    assert!(tokio_tungstenite::connect_async(&fresh_url).await.is_ok(), "a token of the new key is accepted");
    assert!(tokio_tungstenite::connect_async(&url).await.is_ok(), "a token of the old key still is");

    // Reactivated, the user logs in again; suspended through the admin API, the new
    // connection is closed with 4003 within a second.
    assert_eq!(http(sidecar.addr, "POST", "/v1/admin/users/u-live/reactivate", Some(ADMIN), None).0, 200);
    let (st, tokens) = http(
        sidecar.addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({"email": "live@example.com", "password": "pass-word-9"})),
    );
    assert_eq!(st, 200);
    let url = format!("ws://{}/ws?token={}", gw.http_addr, tokens["access_token"].as_str().unwrap());
    let until_back = Instant::now() + Duration::from_secs(2);
    let mut ws = loop {
        // The gateway learns of the reactivation from the feed.
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(_) => {
                assert!(Instant::now() < until_back, "reactivated user still refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    next(&mut ws, Duration::from_secs(2)).await.unwrap().unwrap();
    assert_eq!(http(sidecar.addr, "POST", "/v1/admin/users/u-live/suspend", Some(ADMIN), None).0, 200);
    let end = Instant::now() + Duration::from_secs(1);
    let code = loop {
        let left = end.checked_duration_since(Instant::now()).expect("4003 within 1 s of the admin call");
        match next(&mut ws, left).await {
            Some(Ok(_)) => {}
            Some(Err(code)) => break code,
            None => panic!("no close within 1 s"),
        }
    };
    assert_eq!(code, Some(4003));
    gw.shutdown().await;
}
