//! Producer -> engine -> WebSocket clients of every tier: each gets exactly its tier's
//! signals, enriched, in seq order; category masks and delays hold; refusals send no data.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use engine::model::{Category, Tier, UnixNanos};
use engine::policy::TierPolicy;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_receives_exactly_its_signals_enriched_and_in_order() {
    let server = start(config()).await;
    let users = [
        ("u-free-1", Tier::Free),
        ("u-basic-1", Tier::Basic),
        ("u-premium-1", Tier::Premium),
        ("u-enterprise-1", Tier::Enterprise),
    ];
    let mut clients = Vec::new();
    for (user, tier) in users {
        let mut c = Client::connect(&url(&server, &token(&server, user))).await;
        let sub = c.subscribe(&format!("signals_{tier}")).await;
        assert_eq!(sub["type"], "SUBSCRIBED", "{sub}");
        assert_eq!(sub["seq"], 0);
        assert!(sub["epoch"].as_str().unwrap().len() == 16);
        clients.push((c, tier));
    }
    // A basic user who only trades crypto, and a premium user without real-time access.
    let mut crypto = Client::connect(&url(&server, &token(&server, "u-basic-crypto"))).await;
    crypto.subscribe("signals_basic").await;
    let mut delayed = Client::connect(&url(&server, &token(&server, "u-premium-delayed"))).await;
    delayed.subscribe("signals_premium").await;

    let p = producer(&server).await;
    p.send_tick(&tick("RELIANCE", "NSE", "2456.80")).await.unwrap();
    let confidences = [9_900, 9_000, 8_999, 8_500, 8_499, 7_600, 7_501, 7_500, 5_000, 9_300];
    let categories = [Category::Equity, Category::Crypto, Category::Forex, Category::Commodity];
    let mut sent = Vec::new();
    for n in 0..40u128 {
        let s = signal(n + 1, confidences[n as usize % 10], categories[n as usize % 4]);
        p.send_signal(&s).await.unwrap();
        sent.push(s);
    }
    p.flush().await.unwrap();
    let policy = TierPolicy::from_toml(FAST_TIERS).unwrap();

    for (c, tier) in &mut clients {
        let expected: Vec<u128> = sent
            .iter()
            .filter(|s| policy.passes_global(s.confidence) && policy.admits(*tier, s.confidence))
            .map(|s| s.id.as_u128())
            .collect();
        let got = c.signals(expected.len()).await;
        assert_eq!(
            got.iter().map(id_of).collect::<Vec<_>>(),
            expected,
            "{tier}: exactly its signals, in order"
        );
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["channel"], format!("signals_{tier}"));
            assert_eq!(m["seq"], i as u64 + 1, "{tier}: gap-free seq");
            let s = sent.iter().find(|s| s.id.as_u128() == id_of(m)).unwrap();
            assert_eq!(m["data"]["generated_at"], s.generated_at.as_micros(), "generated_at intact");
            assert_eq!(m["data"]["entry_price"], "2456.7500");
            if s.category == Category::Equity {
                assert_eq!(m["data"]["market"]["last"], "2456.8000", "enriched with the RELIANCE tick");
            } else {
                assert!(m["data"]["market"].is_null());
            }
        }
        c.no_signal_within(Duration::from_millis(300)).await;
    }

    // Category mask: crypto only, seq increasing but not contiguous.
    let expected: Vec<u128> = sent
        .iter()
        .filter(|s| {
            s.category == Category::Crypto
                && policy.passes_global(s.confidence)
                && policy.admits(Tier::Basic, s.confidence)
        })
        .map(|s| s.id.as_u128())
        .collect();
    let got = crypto.signals(expected.len()).await;
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), expected);
    assert!(got.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(got.iter().all(|m| m["data"]["category"] == "crypto"));
    crypto.no_signal_within(Duration::from_millis(200)).await;

    // No real-time access: the delayed view, same seq, at least 1 s after ingest.
    let got = delayed.signals(1).await;
    let lag_us = UnixNanos::now().as_micros() - got[0]["data"]["ingest_ts"].as_i64().unwrap();
    assert!(lag_us >= 1_000_000, "delivered {lag_us} µs after ingest");
    assert_eq!(got[0]["seq"], 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_get_an_error_and_never_a_byte_of_data() {
    let server = start(config()).await;
    let mut c = Client::connect(&url(&server, &token(&server, "u-basic-1"))).await;
    for (channel, code) in [
        ("signals_premium", "forbidden"),
        ("signals_enterprise", "forbidden"),
        ("user_u-premium-1", "forbidden"),
        ("signals_gold", "unknown_channel"),
    ] {
        let r = c.subscribe(channel).await;
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("ERROR"), Some(code)), "{channel}: {r}");
        assert_eq!(r["channel"], channel);
    }
    assert_eq!(c.subscribe("user_u-basic-1").await["type"], "SUBSCRIBED");
    let p = producer(&server).await;
    for n in 1..=10 {
        // 80.00: premium and enterprise only.
        p.send_signal(&signal(n, 8_000, Category::Equity)).await.unwrap();
    }
    p.flush().await.unwrap();
    c.no_signal_within(Duration::from_millis(500)).await;

    // The connection stays usable after ERRORs, and unsubscribing works.
    c.send(json!({"type": "PING"})).await;
    assert_eq!(c.next_of(&["PONG"]).await["type"], "PONG");
    c.send(json!({"type": "UNSUBSCRIBE", "channel": "user_u-basic-1"})).await;
    let u = c.next_of(&["UNSUBSCRIBED"]).await;
    assert_eq!((u["channel"].as_str(), u["reason"].as_str()), (Some("user_u-basic-1"), Some("client")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_stops_deliveries_and_tells_the_user() {
    let server = start(config()).await;
    // u-premium-capped: 5 signals a day.
    let mut c = Client::connect(&url(&server, &token(&server, "u-premium-capped"))).await;
    c.subscribe("user_u-premium-capped").await;
    c.subscribe("signals_premium").await;
    let p = producer(&server).await;
    for n in 1..=8 {
        p.send_signal(&signal(n, 9_500, Category::Forex)).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut got = BTreeSet::new();
    let mut notice = None;
    while got.len() < 5 || notice.is_none() {
        let m = c.next_of(&["SIGNAL_UPDATE", "NOTIFICATION"]).await;
        if m["type"] == "NOTIFICATION" {
            notice = Some(m);
        } else {
            got.insert(id_of(&m));
        }
    }
    assert_eq!(got, (1..=5).collect());
    let notice = notice.unwrap();
    assert_eq!(notice["channel"], "user_u-premium-capped");
    assert_eq!(notice["data"]["event"], "quota_exhausted");
    c.no_signal_within(Duration::from_millis(300)).await;
    // With the day's quota spent, a SUBSCRIBE to a signal channel says so, on any
    // connection of the user, and subscribes nothing.
    let mut other = Client::connect(&url(&server, &token(&server, "u-premium-capped"))).await;
    let refused = other.subscribe("signals_basic").await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str(), refused["channel"].as_str()),
        (Some("ERROR"), Some("quota_exhausted"), Some("signals_basic")),
        "{refused}"
    );
    p.send_signal(&signal(9, 9_500, Category::Forex)).await.unwrap();
    p.flush().await.unwrap();
    other.no_signal_within(Duration::from_millis(300)).await;
    // Other channels still subscribe.
    assert_eq!(other.subscribe("prices_general").await["type"], "SUBSCRIBED");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_latency_counts_live_deliveries_and_keeps_delays_apart() {
    let server = start(config()).await; // free tier delayed 1 s
    let p = producer(&server).await;
    let mut live = Client::connect(&url(&server, &token(&server, "u-premium-1"))).await;
    live.subscribe("signals_free").await;
    let mut delayed = Client::connect(&url(&server, &token(&server, "u-free-1"))).await;
    delayed.subscribe("signals_free").await;
    p.send_signal(&signal(1, 9_500, Category::Equity)).await.unwrap();
    p.flush().await.unwrap();
    live.signals(1).await;
    delayed.signals(1).await;
    let m = metrics_once(
        &server,
        "signalcast_deferred_delivery_latency_seconds_count{kind=\"delayed_view\"}",
        1.0,
    )
    .await;
    assert_eq!(sample(&m, "signalcast_delivery_latency_seconds_count"), Some(1.0), "the live one only");
    assert_eq!(
        sample(&m, "signalcast_delivery_latency_seconds_bucket{le=\"0.5\"}"),
        Some(1.0),
        "no second of delay in the live histogram"
    );
    assert_eq!(
        sample(&m, "signalcast_deferred_delivery_latency_seconds_count{kind=\"delayed_view\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "signalcast_deferred_delivery_latency_seconds_bucket{le=\"0.5\",kind=\"delayed_view\"}"),
        Some(0.0),
        "the delayed view waited its second"
    );
    // A resume replay is counted apart too.
    let epoch = live.subscribe("signals_premium").await["epoch"].as_str().unwrap().to_owned();
    p.send_signal(&signal(2, 9_500, Category::Equity)).await.unwrap();
    p.flush().await.unwrap();
    live.signals(1).await;
    let mut again = Client::connect(&url(&server, &token(&server, "u-premium-1"))).await;
    again.send(serde_json::json!({"type": "SUBSCRIBE", "channel": "signals_premium", "since": 0, "epoch": epoch})).await;
    again.signals(2).await;
    let m = metrics_once(&server, "signalcast_deferred_delivery_latency_seconds_count{kind=\"replay\"}", 2.0)
        .await;
    assert_eq!(sample(&m, "signalcast_deferred_delivery_latency_seconds_count{kind=\"replay\"}"), Some(2.0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_conflated_per_symbol_and_end_on_the_latest_tick() {
    let server = start(config()).await;
    let p = producer(&server).await;
    p.send_tick(&tick("GOLD", "MCX", "72000")).await.unwrap();
    p.send_signal(&signal(1, 9_000, Category::Commodity)).await.unwrap();
    p.flush().await.unwrap();
    let mut c = Client::connect(&url(&server, &token(&server, "u-free-1"))).await;
    assert_eq!(c.subscribe("prices_general").await["type"], "SUBSCRIBED");
    let first = c.next_of(&["PRICE_UPDATE"]).await;
    assert_eq!(
        (first["data"]["symbol"].as_str(), first["data"]["last"].as_str()),
        (Some("GOLD"), Some("72000.0000")),
        "the latest price first"
    );

    // A burst of 500 ticks for one symbol: the client gets the latest, not a backlog.
    for i in 1..=500 {
        p.send_tick(&tick("GOLD", "MCX", &format!("{}", 72_000 + i))).await.unwrap();
    }
    p.send_signal(&signal(2, 9_000, Category::Commodity)).await.unwrap();
    p.flush().await.unwrap();
    let mut updates = 0;
    loop {
        let m = c.next_of(&["PRICE_UPDATE"]).await;
        updates += 1;
        if m["data"]["last"] == "72500.0000" {
            break;
        }
    }
    assert!(updates < 100, "{updates} updates for 500 ticks: conflated");
    assert!(
        c.try_next(std::time::Duration::from_millis(200)).await.is_none(),
        "nothing after the latest price"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let get = |path: &'static str| {
        let addr = server.http_addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/health/live").await.starts_with("HTTP/1.1 200"));
    assert!(get("/health/ready").await.starts_with("HTTP/1.1 200"));
    assert!(get("/ws").await.starts_with("HTTP/1.1 426"), "a plain GET on /ws is told to upgrade");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    let mut c = Client::connect(&url(&server, &token(&server, "u-premium-1"))).await;
    c.subscribe("signals_premium").await;
    let p = producer(&server).await;
    p.send_signal(&signal(1, 9_000, Category::Equity)).await.unwrap();
    c.signals(1).await;
    let metrics = get("/metrics").await;
    for line in [
        "signalcast_connections{tier=\"premium\"} 1",
        "signalcast_signals_delivered_total{tier=\"premium\"} 1",
        "signalcast_drops_total{reason=\"below_confidence\"} 0",
        "signalcast_feed_producers_connected 1",
        "signalcast_slow_consumer_closes_total 0",
        "signalcast_delivery_latency_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    server.shutdown().await;
}

/// The soak watches these from outside; an operator watches them on /metrics. The
/// test and the server share a process, so 50 connections are 100 descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_gauges_count_the_memory_and_descriptors_the_process_holds() {
    let server = start(config()).await;
    let token = token(&server, "u-premium-1");
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(&url(&server, &token)).await);
    }
    let metrics = server.app.metrics();
    let gauge = |name: &str| -> u64 {
        common::sample(&metrics, &format!("{name} "))
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}")) as u64
    };
    let (open, max) = (gauge("process_open_fds"), gauge("process_max_fds"));
    assert!((100..=max).contains(&open), "open descriptors {open}, limit {max}");
    assert!(gauge("process_resident_memory_bytes") > 1 << 20);
    assert!(gauge("process_virtual_memory_bytes") > gauge("process_resident_memory_bytes"));
    drop(clients);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_fewer_rights_applies_at_once() {
    let server = start(config()).await;
    let accounts = gateway::auth::Accounts::from_toml(gateway::config::fixtures::ACCOUNTS).unwrap();
    let user = accounts.get("u-premium-1").unwrap();
    let mut c = Client::connect(&url(&server, &token(&server, "u-premium-1"))).await;
    c.subscribe("user_u-premium-1").await;
    c.subscribe("signals_premium").await;
    c.subscribe("signals_basic").await;
    let p = producer(&server).await;
    p.send_signal(&signal(1, 9_000, Category::Equity)).await.unwrap();
    assert_eq!(c.signals(2).await.iter().map(id_of).collect::<Vec<_>>(), vec![1, 1]);

    // Downgraded to basic, and no more real-time access.
    let now = UnixNanos::now().0 / 1_000_000_000;
    let mut claims = gateway::auth::DevAuth::claims_for(user, now, Duration::from_secs(3600));
    claims.tier = Tier::Basic;
    claims.rt = false;
    c.send(json!({"type": "REFRESH", "token": server.dev_auth.sign(&claims).unwrap()})).await;
    let upd = c.next_of(&["USER_UPDATE"]).await;
    assert_eq!(
        (upd["channel"].as_str(), upd["data"]["tier"].as_str()),
        (Some("user_u-premium-1"), Some("basic"))
    );
    assert_eq!(upd["data"]["real_time"], false);
    let e = c.next_of(&["ERROR"]).await;
    assert_eq!((e["code"].as_str(), e["channel"].as_str()), (Some("forbidden"), Some("signals_premium")));
    let u = c.next_of(&["UNSUBSCRIBED"]).await;
    assert_eq!((u["channel"].as_str(), u["reason"].as_str()), (Some("signals_premium"), Some("entitlement")));

    p.send_signal(&signal(2, 9_000, Category::Equity)).await.unwrap();
    let got = c.signals(1).await;
    assert_eq!(
        (got[0]["channel"].as_str(), id_of(&got[0])),
        (Some("signals_basic"), 2),
        "premium is gone, basic goes on"
    );
    let lag_us = UnixNanos::now().as_micros() - got[0]["data"]["ingest_ts"].as_i64().unwrap();
    assert!(lag_us >= 1_000_000, "now served from the delayed view ({lag_us} µs)");
    assert_eq!(got[0]["seq"], 2, "same seq numbering, nothing repeated");
    c.no_signal_within(Duration::from_millis(1_500)).await;
    server.shutdown().await;
}
