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
    http(s.admin_addr, method, path, Some(ADMIN), Some(&body)).0
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

    config.store.data_dir = std::env::temp_dir().join(format!(
        "signalcast-accounts-test-{}-{}",
        std::process::id(),
        engine::model::UnixNanos::now().0
    ));
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

    // A producer key issued by the sidecar opens the feed (once the gateway has it), for
    // a producer bound to the test kit's source.
    let bind = json!({"sources": [signal(1, 8_000).source_id]});
    assert_eq!(
        http(sidecar.admin_addr, "PUT", "/v1/admin/producers/model-live", Some(ADMIN), Some(&bind)).0,
        200
    );
    let (st, key) = http(
        sidecar.admin_addr,
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
        http(sidecar.admin_addr, "DELETE", &format!("/v1/admin/producer-keys/{id}"), Some(ADMIN), None).0,
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
    let (st, _) = http(sidecar.admin_addr, "POST", "/v1/admin/signing-keys/rotate", Some(ADMIN), None);
    assert_eq!(st, 200);
    assert_eq!(
        http(sidecar.admin_addr, "POST", "/v1/admin/users/u-live/reactivate", Some(ADMIN), None).0,
        200
    );
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
    assert_eq!(
        http(sidecar.admin_addr, "POST", "/v1/admin/users/u-live/reactivate", Some(ADMIN), None).0,
        200
    );
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
    assert_eq!(http(sidecar.admin_addr, "POST", "/v1/admin/users/u-live/suspend", Some(ADMIN), None).0, 200);
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

/// [3/10] 1: 200 clients logging in as fast as they can for 20 s while an admin suspends a connected user: the suspension reaches the
/// gateway's open connection within 2 s, and the sidecar's memory stays under its idle
/// RSS plus 20 MiB per verification permit (argon2id takes 19 MiB each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_neither_delays_a_suspension_nor_blows_the_sidecars_memory() {
    const PERMITS: u64 = 2;
    let db = Postgres::start();
    let sidecar = Sidecar::start_with(&db, free_port(), &["--login-permits", &PERMITS.to_string()]);
    admin(
        &sidecar,
        "POST",
        "/v1/admin/plans",
        json!({"id": "premium", "name": "premium", "tier": "premium"}),
    );
    for (id, email) in [
        ("u-target", "target@example.com"),
        ("u-busy0", "busy0@example.com"),
        ("u-busy1", "busy1@example.com"),
    ] {
        let user = json!({"id": id, "email": email, "password": "pass-word-9", "plan": "premium"});
        assert_eq!(admin(&sidecar, "POST", "/v1/admin/users", user), 201);
    }
    let gw = gateway_on(&sidecar).await;
    let login = |email: &str, password: &str| {
        http(
            sidecar.addr,
            "POST",
            "/v1/auth/login",
            None,
            Some(&json!({"email": email, "password": password})),
        )
    };
    let (_, tokens) = login("target@example.com", "pass-word-9");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", gw.http_addr)).await.unwrap();
    assert_eq!(next(&mut ws, Duration::from_secs(5)).await.unwrap().unwrap()["data"]["event"], "welcome");
    let idle = sidecar.rss();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let addr = sidecar.addr;
    let flood: Vec<_> = (0..200)
        .map(|k: usize| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(20);
                while Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // The right password: the expensive path all the way, and no
                    // failure for the throttles to stop (their rules have unit tests),
                    // so the hashing bound alone holds the line for the whole 20 s.
                    let body =
                        json!({"email": format!("busy{}@example.com", k % 2), "password": "pass-word-9"});
                    let (status, _) = http(addr, "POST", "/v1/auth/login", None, Some(&body));
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    let mut peak = idle;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        peak = peak.max(sidecar.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The suspension, in the thick of it.
    let suspended_at = Instant::now();
    let (status, _) =
        http(sidecar.admin_addr, "POST", "/v1/admin/users/u-target/suspend", Some(ADMIN), Some(&json!({})));
    assert_eq!(status, 200, "the admin API answers during the flood");
    let seen = until(&mut ws, "SYSTEM_MESSAGE", Duration::from_secs(2)).await;
    assert_eq!(seen.last().unwrap()["data"]["event"], "suspended", "{seen:?}");
    let took = suspended_at.elapsed();
    assert!(took <= Duration::from_secs(2), "suspension reached the connection after {took:?}");

    while started.elapsed() < Duration::from_secs(20) {
        peak = peak.max(sidecar.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let bound = idle + PERMITS * 20 * 1024 * 1024;
    eprintln!("login flood: idle {} MiB, peak {} MiB, answers {statuses:?}", idle >> 20, peak >> 20);
    assert!(peak <= bound, "peak RSS {} MiB over idle {} MiB + {PERMITS} x 20 MiB", peak >> 20, idle >> 20);
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "some logins still succeed: {statuses:?}");
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "the rest are told to retry: {statuses:?}");
    // On two cores the 200 client threads crowd out the server's accept loop now and
    // then: a connect may time out (the client's 2 s), rarely.
    let total: u64 = statuses.values().sum();
    let failed = statuses.get(&0).copied().unwrap_or(0);
    assert!(failed * 1000 < total, "{failed} of {total} connections failed: {statuses:?}");
    assert_eq!(statuses.get(&500), None, "{statuses:?}");
}

/// A sample of `addr`'s `/metrics` (the first series starting with `series`).
fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A token in the sidecar's shape (EdDSA, a key id) that no key signed.
fn unknown_key_token(k: usize) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": format!("no-such-key-{k}")}));
    let claims =
        b64(&json!({"sub": "u-x", "tier": "enterprise", "exp": 4_000_000_000u64, "aud": "signalcast"}));
    format!("{header}.{claims}.{}", "A".repeat(86))
}

/// [3/10] 5: tokens naming unknown keys, sent as fast as upgrades go, cost the sidecar
/// at most one JWKS fetch per few seconds, and the sidecar answers JWKS from memory
/// (here: while its signing-key table is locked), picking up another sidecar's
/// rotation through the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_do_not_amplify_into_jwks_fetches_and_jwks_needs_no_database_read() {
    let db = Postgres::start();
    let sidecar = Sidecar::start(&db);
    let other = Sidecar::start(&db);
    let gw = gateway_on(&sidecar).await;
    let before = metric(sidecar.addr, "signalcast_accounts_jwks_requests_total");
    let started = Instant::now();
    let mut refused = 0;
    for k in 0..300 {
        let r = tokio_tungstenite::connect_async(format!(
            "ws://{}/ws?token={}",
            gw.http_addr,
            unknown_key_token(k)
        ))
        .await;
        if matches!(&r, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401) {
            refused += 1;
        }
    }
    // Let any fetch the flood asked for happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetches = metric(sidecar.addr, "signalcast_accounts_jwks_requests_total") - before;
    let took = started.elapsed();
    assert_eq!(refused, 300);
    let allowed = 1.0 + (took.as_secs_f64() / gateway::auth::KID_MISS_EVERY.as_secs_f64()).floor();
    assert!(
        fetches <= allowed,
        "{fetches} JWKS fetches for 300 unknown key ids in {took:?} (at most {allowed})"
    );

    // JWKS from memory: the key table locked by a long transaction does not stall it.
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("BEGIN; LOCK TABLE auth.signing_keys IN ACCESS EXCLUSIVE MODE;").await.unwrap();
    let addr = sidecar.addr;
    let served = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || {
            (0..20).map(|_| http(addr, "GET", "/.well-known/jwks.json", None, None).0).collect::<Vec<_>>()
        }),
    )
    .await
    .expect("20 JWKS answers within 2 s while the key table is locked")
    .unwrap();
    assert!(served.iter().all(|s| *s == 200), "{served:?}");
    client.batch_execute("ROLLBACK").await.unwrap();

    // A rotation by the other sidecar reaches this one's JWKS through the change log.
    let (st, rotated) =
        http(other.admin_addr, "POST", "/v1/admin/signing-keys/rotate", Some(ADMIN), Some(&json!({})));
    assert_eq!(st, 200);
    let kid = rotated["kid"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, jwks) = http(sidecar.addr, "GET", "/.well-known/jwks.json", None, None);
        if jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid.as_str()) {
            break;
        }
        assert!(Instant::now() < until, "the other sidecar's new key is not served within 2 s: {jwks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn login(s: &Sidecar, email: &str, password: &str) -> String {
    let (st, tokens) =
        http(s.addr, "POST", "/v1/auth/login", None, Some(&json!({"email": email, "password": password})));
    assert_eq!(st, 200, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_owned()
}

async fn welcome_tier(gw: &gateway::Running, token: &str) -> (Ws, String) {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", gw.http_addr)).await.unwrap();
    let welcome = next(&mut ws, Duration::from_secs(5)).await.unwrap().unwrap();
    let tier = welcome["data"]["tier"].as_str().unwrap().to_owned();
    (ws, tier)
}

/// [4/10] 1 and 6: a token issued before a downgrade opens only the new tier — on a
/// gateway that saw the change live, on one started after it (from the snapshot), and
/// through REFRESH; and only producers granted the right may send ticks, the right
/// following the sidecar live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_cannot_undo_a_downgrade_and_ticks_need_the_producers_right() {
    let db = Postgres::start();
    let sidecar = Sidecar::start(&db);
    for tier in ["basic", "premium"] {
        admin(&sidecar, "POST", "/v1/admin/plans", json!({"id": tier, "name": tier, "tier": tier}));
    }
    let user =
        json!({"id": "u-down", "email": "down@example.com", "password": "pass-word-9", "plan": "premium"});
    assert_eq!(admin(&sidecar, "POST", "/v1/admin/users", user), 201);
    let live = gateway_on(&sidecar).await;
    // Tokens carry whole seconds: keep the change a second after the premium token.
    let premium = login(&sidecar, "down@example.com", "pass-word-9");
    let (mut held, tier) = welcome_tier(&live, &premium).await;
    assert_eq!(tier, "premium");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        admin(&sidecar, "POST", "/v1/admin/subscriptions", json!({"user_id": "u-down", "plan_id": "basic"})),
        200
    );
    let seen = until(&mut held, "SYSTEM_MESSAGE", Duration::from_secs(2)).await;
    assert_eq!(seen.last().unwrap()["data"]["event"], "entitlements_changed");

    // Reconnecting with the token issued before the downgrade: basic, not premium.
    let (mut again, tier) = welcome_tier(&live, &premium).await;
    assert_eq!(tier, "basic", "the old token's premium claim is overridden");
    assert_eq!(subscribe(&mut again, "signals_premium").await["code"], "forbidden");
    assert_eq!(subscribe(&mut again, "signals_basic").await["type"], "SUBSCRIBED");
    // REFRESH with it on a connection opened with a fresh (basic) token: still basic.
    let fresh = login(&sidecar, "down@example.com", "pass-word-9");
    let (mut ws, tier) = welcome_tier(&live, &fresh).await;
    assert_eq!(tier, "basic");
    ws.send(Message::text(json!({"type": "REFRESH", "token": premium}).to_string())).await.unwrap();
    let seen = until(&mut ws, "SYSTEM_MESSAGE", Duration::from_secs(2)).await;
    assert_eq!(seen.last().unwrap()["data"]["event"], "token_refreshed", "{seen:?}");
    assert_eq!(subscribe(&mut ws, "signals_premium").await["code"], "forbidden");
    // A gateway that starts after the change learns it from the snapshot.
    let later = gateway_on(&sidecar).await;
    let (_, tier) = welcome_tier(&later, &premium).await;
    assert_eq!(tier, "basic", "a gateway started after the downgrade");

    // Ticks: a producer without the right is refused; granted live, its ticks move prices.
    let (st, key) = http(
        sidecar.admin_addr,
        "POST",
        "/v1/admin/producer-keys",
        Some(ADMIN),
        Some(&json!({"producer_id": "feed-x"})),
    );
    assert_eq!(st, 201);
    let key = key["key"].as_str().unwrap().to_owned();
    let feed = later.feed_addr.expect("a feed").to_string();
    let connect = || {
        engine::feed::Producer::connect(engine::feed::ProducerConfig::new(
            feed.clone(),
            "feed-x",
            key.clone(),
        ))
    };
    let until_key = Instant::now() + Duration::from_secs(5);
    let producer = loop {
        match connect().await {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < until_key, "the key never opened the feed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let tick = || engine::testkit::tick("RELIANCE", "NSE", "2456.80");
    let refused = async {
        for _ in 0..50 {
            if let Err(e) = producer.send_tick(&tick()).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a producer without the right kept sending ticks");
    }
    .await;
    assert!(
        matches!(&refused, engine::feed::ProducerError::Refused { code, .. } if code == "forbidden_tick"),
        "{refused}"
    );
    let (mut prices, _) = welcome_tier(&later, &fresh).await;
    assert_eq!(subscribe(&mut prices, "prices_general").await["type"], "SUBSCRIBED");
    let put = |ticks: bool| {
        http(
            sidecar.admin_addr,
            "PUT",
            "/v1/admin/producers/feed-x",
            Some(ADMIN),
            Some(&json!({"ticks": ticks})),
        )
        .0
    };
    assert_eq!(put(true), 200);
    // Granted: a tick (from a new connection, until the right has reached the gateway)
    // moves the price clients see.
    let until_granted = Instant::now() + Duration::from_secs(5);
    'granted: loop {
        assert!(Instant::now() < until_granted, "the granted producer's tick never became a price");
        let p = connect().await.unwrap();
        let _ = p.send_tick(&tick()).await;
        while let Some(Ok(v)) = next(&mut prices, Duration::from_millis(300)).await {
            if v["type"] == "PRICE_UPDATE" && v["data"]["last"] == "2456.8000" {
                break 'granted;
            }
        }
    }
    assert_eq!(
        http(
            sidecar.admin_addr,
            "PUT",
            "/v1/admin/producers/feed-x",
            Some(ADMIN),
            Some(&json!({"ticks": "yes"}))
        )
        .0,
        422,
        "a malformed right is refused"
    );

    // Sources: feed-x is bound to none, so its signals are refused; bound (live), they
    // route. The tick right it was granted stays (each field is left as it was).
    let p = connect().await.unwrap();
    let refused =
        match p.send_signal(&engine::testkit::signal(90, 9_500, engine::model::Category::Equity)).await {
            Err(e) => e,
            Ok(()) => p.flush().await.expect_err("a signal of a source feed-x is not bound to"),
        };
    assert!(
        matches!(&refused, engine::feed::ProducerError::Refused { code, .. } if code == "foreign_source"),
        "{refused}"
    );
    let source = engine::testkit::signal(90, 9_500, engine::model::Category::Equity).source_id.to_string();
    let (st, body) = http(
        sidecar.admin_addr,
        "PUT",
        "/v1/admin/producers/feed-x",
        Some(ADMIN),
        Some(&json!({"sources": [source, "not-a-uuid"]})),
    );
    assert_eq!(st, 400, "{body}");
    let (st, body) = http(
        sidecar.admin_addr,
        "PUT",
        "/v1/admin/producers/feed-x",
        Some(ADMIN),
        Some(&json!({"sources": [source]})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (body["ticks"].as_bool(), body["sources"][0].as_str()),
        (Some(true), Some(source.as_str())),
        "{body}"
    );
    let (mut signals, _) = welcome_tier(&later, &fresh).await;
    assert_eq!(subscribe(&mut signals, "signals_basic").await["type"], "SUBSCRIBED");
    let until_bound = Instant::now() + Duration::from_secs(5);
    'bound: loop {
        assert!(Instant::now() < until_bound, "the bound producer's signal never arrived");
        let p = connect().await.unwrap();
        if p.send_signal(&engine::testkit::signal(91, 9_500, engine::model::Category::Equity)).await.is_ok()
            && p.flush().await.is_ok()
        {
            while let Some(Ok(v)) = next(&mut signals, Duration::from_millis(300)).await {
                if v["type"] == "SIGNAL_UPDATE" {
                    break 'bound;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live.shutdown().await;
    later.shutdown().await;
}
