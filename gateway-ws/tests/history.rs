//! The HTTP API of the signal store, against the real server: history and live with a
//! client's token and rights, and HTTP ingest with a producer's credentials, answered
//! once stored.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use engine::model::Category;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request on its own connection: (status, headers in lower case, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn get_json(server: &gateway::Running, token: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(server.http_addr, "GET", path, &[("Authorization", &auth)], "").await;
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}")))
}

fn ids(page: &Value) -> Vec<u128> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| uuid::Uuid::parse_str(i["id"].as_str().unwrap()).unwrap().as_u128())
        .collect()
}

/// Sends signals on the TCP feed and waits for their ACK (stored).
async fn publish(server: &gateway::Running, signals: &[engine::model::Signal]) {
    let p = common::producer(server).await;
    for s in signals {
        p.send_signal(s).await.unwrap();
    }
    p.flush().await.unwrap();
    p.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_with_the_callers_rights_and_pages_without_gap_or_repeat() {
    let server = common::start(common::config()).await;
    // 1..=6 equity at 95.00 (every tier), 7 crypto at 80.00 (premium and enterprise),
    // 8 on another symbol.
    let mut signals: Vec<_> = (1..=6).map(|n| common::signal(n, 9_500, Category::Equity)).collect();
    signals.push(common::signal(7, 8_000, Category::Crypto));
    signals.push(engine::testkit::signal_on(8, 9_500, "TCS", "NSE", Category::Equity));
    publish(&server, &signals).await;
    let premium = common::token(&server, "u-premium-1");

    let (status, page) = get_json(&server, &premium, "/v1/signals/history").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [8, 7, 6, 5, 4, 3, 2, 1], "newest first");
    assert_eq!(page["next"], Value::Null);
    let first = &page["items"][7];
    assert_eq!(first["symbol"], "RELIANCE");
    assert_eq!(first["channels"]["signals_premium"], 1, "{first}");
    assert_eq!(first["channels"]["signals_free"], 1);
    assert!(first["channels"].get("signals_enterprise").is_none(), "only channels the caller may read");
    assert!(page["items"][1]["channels"].get("signals_free").is_none(), "80.00 is below free's bar");

    // Keyset pages of 3: all eight, once each, in order.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/signals/history?limit=3&cursor={c}"),
            None => "/v1/signals/history?limit=3".into(),
        };
        let (_, page) = get_json(&server, &premium, &path).await;
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [8, 7, 6, 5, 4, 3, 2, 1]);

    let (_, page) = get_json(&server, &premium, "/v1/signals/history?symbol=TCS").await;
    assert_eq!(ids(&page), [8]);
    let (_, page) = get_json(&server, &premium, "/v1/signals/history?category=crypto").await;
    assert_eq!(ids(&page), [7]);
    let (_, page) = get_json(&server, &premium, "/v1/signals/history?status=target_hit").await;
    assert_eq!(ids(&page), Vec::<u128>::new(), "no outcome yet");

    // Basic: no 80.00 signal; crypto-only: only crypto (none at 85+ here).
    let (_, page) = get_json(&server, &common::token(&server, "u-basic-1"), "/v1/signals/history").await;
    assert_eq!(ids(&page), [8, 6, 5, 4, 3, 2, 1]);
    let (_, page) = get_json(&server, &common::token(&server, "u-basic-crypto"), "/v1/signals/history").await;
    assert_eq!(ids(&page), Vec::<u128>::new());
    // Free users are delayed (1 s here): nothing younger than the delay.
    let (_, page) = get_json(&server, &common::token(&server, "u-free-1"), "/v1/signals/history").await;
    assert!(ids(&page).len() < 7, "{page}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, page) = get_json(&server, &common::token(&server, "u-free-1"), "/v1/signals/history").await;
    assert_eq!(ids(&page), [8, 6, 5, 4, 3, 2, 1], "after the delay");

    // Live: open and unexpired only.
    let mut expired = common::signal(9, 9_500, Category::Equity);
    expired.expires_at = engine::model::UnixNanos(engine::model::UnixNanos::now().0 + 300_000_000);
    publish(&server, &[expired]).await;
    let (_, page) = get_json(&server, &premium, "/v1/signals/live?limit=2").await;
    assert_eq!(ids(&page), [9, 8]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, page) = get_json(&server, &premium, "/v1/signals/live?limit=2").await;
    assert_eq!(ids(&page), [8, 7], "9 has expired");
    // The history filters, bar status (always open), apply to live too.
    let (_, page) = get_json(&server, &premium, "/v1/signals/live?symbol=TCS").await;
    assert_eq!(ids(&page), [8]);
    let (_, page) = get_json(&server, &premium, "/v1/signals/live?category=crypto&limit=5").await;
    assert_eq!(ids(&page), [7]);

    // Errors in the shape the HTTP APIs use.
    for (path, code) in [
        ("/v1/signals/history?limit=0", "bad_request"),
        ("/v1/signals/history?limit=501", "bad_request"),
        ("/v1/signals/history?category=stocks", "bad_request"),
        ("/v1/signals/history?source=nope", "bad_request"),
        ("/v1/signals/history?from=yesterday", "bad_request"),
        ("/v1/signals/history?cursor=zz", "bad_request"),
        ("/v1/signals/history?colour=red", "bad_request"),
        ("/v1/signals/live?status=closed", "bad_request"),
    ] {
        let (status, body) = get_json(&server, &premium, path).await;
        assert_eq!((status, body["error"].as_str().unwrap()), (400, code), "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _, body) = http(server.http_addr, "GET", "/v1/signals/history", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) =
        http(server.http_addr, "GET", "/v1/signals/history", &[("Authorization", "Bearer not-a-jwt")], "")
            .await;
    assert_eq!(status, 401);
    let from = "1970-01-01T00:00:00Z";
    let (status, page) =
        get_json(&server, &premium, &format!("/v1/signals/history?from={from}&limit=1")).await;
    assert_eq!((status, ids(&page)), (200, vec![9]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_rate_limited_per_user_and_charges_todays_signals_to_the_quota() {
    let mut config = common::config();
    let tiers = common::FAST_TIERS.replace("[premium]\n", "[premium]\napi_requests_per_minute = 4\n");
    config.policy_file = Some(common::temp_file("tiers.toml", &tiers));
    let server = common::start(config).await;
    let signals: Vec<_> = (1..=8).map(|n| common::signal(n, 9_500, Category::Equity)).collect();
    publish(&server, &signals).await;
    // u-premium-capped may receive 5 signals a day: history gives today's 5 newest and
    // withholds the rest; the quota is then spent on the socket too.
    let capped = common::token(&server, "u-premium-capped");
    let (status, page) = get_json(&server, &capped, "/v1/signals/history").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), [8, 7, 6, 5, 4]);
    assert_eq!(page["withheld"], 3);
    let (_, again) = get_json(&server, &capped, "/v1/signals/history").await;
    assert_eq!(ids(&again), [8, 7, 6, 5, 4], "what was charged is read again for free");
    let mut c = common::Client::connect(&common::url(&server, &capped)).await;
    let answer = c.subscribe("signals_premium").await;
    assert_eq!(answer["code"], "quota_exhausted", "{answer}");

    let premium = common::token(&server, "u-premium-1");
    for _ in 0..4 {
        assert_eq!(get_json(&server, &premium, "/v1/signals/history?limit=1").await.0, 200);
    }
    let auth = format!("Bearer {premium}");
    let (status, head, body) =
        http(server.http_addr, "GET", "/v1/signals/history", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "rate_limited");
    // Another user has a bucket of their own.
    assert_eq!(
        get_json(&server, &common::token(&server, "u-enterprise-1"), "/v1/signals/history").await.0,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_read_history_from_allowed_origins_only() {
    let mut config = common::config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = common::start(config).await;
    let auth = format!("Bearer {}", common::token(&server, "u-premium-1"));
    let (status, head, _) = http(
        server.http_addr,
        "GET",
        "/v1/signals/history",
        &[("Authorization", &auth), ("Origin", "https://app.example.com")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("access-control-allow-origin: https://app.example.com"), "{head}");
    let (status, head, _) = http(
        server.http_addr,
        "OPTIONS",
        "/v1/signals/history",
        &[("Origin", "https://app.example.com"), ("Access-Control-Request-Headers", "authorization")],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-headers: authorization"), "{head}");
    let (status, _, body) = http(
        server.http_addr,
        "GET",
        "/v1/signals/history",
        &[("Authorization", &auth), ("Origin", "https://evil.example.net")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    server.shutdown().await;
}

fn basic(id: &str, key: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_per_item_once_stored_and_never_routes_a_retry_twice() {
    let server = common::start(common::config()).await;
    let auth = basic(common::PRODUCER.0, common::PRODUCER.1);
    let one = serde_json::to_string(&common::signal(1, 9_500, Category::Equity)).unwrap();
    let (status, _, body) = http(
        server.http_addr,
        "POST",
        "/v1/signals",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &one,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    assert_eq!(v["results"][0]["id"], "00000000-0000-0000-0000-000000000001");
    // Answered once stored: history has it at once.
    let premium = common::token(&server, "u-premium-1");
    assert_eq!(ids(&get_json(&server, &premium, "/v1/signals/history").await.1), [1]);

    // JSON lines: a retry of 1, a new one, a malformed line, an invalid signal, one below the bar.
    let mut low = common::signal(4, 7_000, Category::Equity);
    low.id = uuid::Uuid::from_u128(4);
    let mut bad = serde_json::to_value(common::signal(3, 9_500, Category::Equity)).unwrap();
    bad["confidence"] = json!(150.0);
    let lines = [
        one.clone(),
        serde_json::to_string(&common::signal(2, 9_500, Category::Equity)).unwrap(),
        "{not json".to_owned(),
        bad.to_string(),
        serde_json::to_string(&low).unwrap(),
    ]
    .join("\n");
    let (status, _, body) = http(
        server.http_addr,
        "POST",
        "/v1/signals",
        &[("Authorization", &auth), ("Content-Type", "application/x-ndjson")],
        &lines,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r: Vec<Value> = serde_json::from_str::<Value>(&body).unwrap()["results"].as_array().unwrap().clone();
    let statuses: Vec<&str> = r.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["duplicate", "accepted", "refused", "refused", "refused"], "{body}");
    assert_eq!(r[2]["error"], "invalid_json");
    assert_eq!(r[3]["id"], "00000000-0000-0000-0000-000000000003");
    assert_eq!(r[4]["error"], "below_confidence", "{body}");
    assert_eq!(ids(&get_json(&server, &premium, "/v1/signals/history").await.1), [2, 1]);

    // Credentials, rights, media type, size.
    let post = |auth: String, path: &'static str, ct: &'static str, body: String| {
        let addr = server.http_addr;
        async move { http(addr, "POST", path, &[("Authorization", &auth), ("Content-Type", ct)], &body).await }
    };
    let wrong = basic(common::PRODUCER.0, "not-the-key");
    assert_eq!(post(wrong, "/v1/signals", "application/json", one.clone()).await.0, 401);
    let tick = r#"{"symbol":"RELIANCE","exchange":"NSE","bid":"2456.5","ask":"2457","last":"2456.75","volume":100,"ts":1}"#;
    let analyst = basic("analyst-desk", "dev-desk-8899aabbccddeeff");
    let (status, _, body) = post(analyst, "/v1/ticks", "application/json", tick.to_owned()).await;
    assert_eq!(status, 403, "a producer without the tick right: {body}");
    assert_eq!(post(auth.clone(), "/v1/signals", "text/plain", one.clone()).await.0, 415);
    let huge = "x".repeat((1 << 20) + 1);
    assert_eq!(post(auth.clone(), "/v1/signals", "application/json", huge).await.0, 413);
    let (status, _, body) = post(auth.clone(), "/v1/ticks", "application/json", tick.to_owned()).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_ring_is_read_back_from_the_store() {
    let mut config = common::config();
    config.engine.ring_capacity = 4;
    let server = common::start(config).await;
    let signals: Vec<_> = (1..=12).map(|n| common::signal(n, 9_500, Category::Equity)).collect();
    publish(&server, &signals).await;
    let epoch = server.engine.channels.live(engine::model::Tier::Premium).epoch();
    let mut c = common::Client::connect(&common::url(&server, &common::token(&server, "u-premium-1"))).await;
    c.send(
        json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 2, "epoch": epoch.to_string()}),
    )
    .await;
    let sub = c.next_of(&["SUBSCRIBED", "ERROR"]).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let got: Vec<(u64, u128)> =
        c.signals(10).await.iter().map(|m| (m["seq"].as_u64().unwrap(), common::id_of(m))).collect();
    assert_eq!(got, (3..=12).map(|n| (n, u128::from(n))).collect::<Vec<_>>(), "seqs 3..=12, in order");
    server.shutdown().await;
}
