//! Faults under a steady stream: the accounts sidecar SIGKILLed and PostgreSQL crashed
//! (`pg_ctl stop -m immediate`), then both brought back, while clients that logged in
//! through the sidecar follow their channels. The ledger check is the one every fault
//! test shares (gateway-ws/tests/ledger): every signal exactly once, nothing missing
//! without a `recovered: false`. Here nobody should even need to reconnect.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
#[path = "../../gateway-ws/tests/ledger/mod.rs"]
mod ledger;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A valid signal, id `n`, 80.00 (premium and enterprise).
fn signal(n: u128) -> engine::model::Signal {
    engine::testkit::signal(n, 8_000, engine::model::Category::Equity)
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_and_postgres_dying_cost_connected_clients_nothing() {
    let db = Postgres::start();
    let port = free_port();
    let mut sidecar = Sidecar::start_on(&db, port);
    for tier in ["premium", "enterprise"] {
        http(
            sidecar.admin_addr,
            "POST",
            "/v1/admin/plans",
            Some(ADMIN),
            Some(&json!({"id": tier, "name": tier, "tier": tier})),
        );
    }
    let users = [("u-ent", "enterprise", "signals_enterprise"), ("u-prem", "premium", "signals_premium")];
    for (id, plan, _) in users {
        let user =
            json!({"id": id, "email": format!("{id}@example.com"), "password": "pass-word-9", "plan": plan});
        assert_eq!(http(sidecar.admin_addr, "POST", "/v1/admin/users", Some(ADMIN), Some(&user)).0, 201);
    }

    let gw = gateway_on(&sidecar).await;
    let ready = || http(gw.http_addr, "GET", "/health/ready", None, None).0;

    const N: u128 = 400;
    let produced: Vec<u128> = (1..=N).collect();
    let mut followers = Vec::new();
    for (id, _, channel) in users {
        let login = json!({"email": format!("{id}@example.com"), "password": "pass-word-9"});
        let (status, tokens) = http(sidecar.addr, "POST", "/v1/auth/login", None, Some(&login));
        assert_eq!(status, 200, "{tokens}");
        let url = format!("ws://{}/ws?token={}", gw.http_addr, tokens["access_token"].as_str().unwrap());
        let mut s = ledger::Subscriber::new(channel);
        s.connect(&url).await.unwrap();
        let progress = s.progress.clone();
        followers.push((channel, progress, tokio::spawn(s.follow(vec![url], N, Duration::from_secs(90)))));
    }

    // The dev producer key of the gateway's fixtures is not in use with the sidecar: a
    // key issued by it, to a producer bound to the test kit's source.
    let bind =
        json!({"sources": [engine::testkit::signal(1, 9_500, engine::model::Category::Equity).source_id]});
    assert_eq!(
        http(sidecar.admin_addr, "PUT", "/v1/admin/producers/steady", Some(ADMIN), Some(&bind)).0,
        200
    );
    let (st, key) = http(
        sidecar.admin_addr,
        "POST",
        "/v1/admin/producer-keys",
        Some(ADMIN),
        Some(&json!({"producer_id": "steady"})),
    );
    assert_eq!(st, 201);
    let key = key["key"].as_str().unwrap().to_owned();
    let feed = gw.feed_addr.unwrap().to_string();
    let until_key = Instant::now() + Duration::from_secs(5);
    let producer = loop {
        let cfg = engine::feed::ProducerConfig::new(feed.clone(), "steady", key.clone());
        match engine::feed::Producer::connect(cfg).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < until_key, "the issued key never opened the feed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let feeding = tokio::spawn(async move {
        for n in 1..=N {
            producer.send_signal(&signal(n)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        producer.flush().await.unwrap();
    });

    let progress = followers[0].1.clone();
    wait_for("signals before the faults", 60, || progress.load(Ordering::Relaxed) >= 100).await;
    sidecar.kill(); // SIGKILL
    db.stop(); // immediate: a crash, recovery on the next start
    // Degraded, still ready: the cached keys verify tokens, so clients can reconnect here.
    let feed_up = || {
        gw.app
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("signalcast_accounts_feed_up ").map(str::to_owned))
    };
    wait_for("the metric reports the feed gone", 10, || feed_up().as_deref() == Some("0")).await;
    assert_eq!(ready(), 200, "a degraded gateway stays ready");
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gw.http_addr).unwrap();
        s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(body.contains("ready, degraded: accounts feed down"), "{body}");
    wait_for("signals while both are down", 60, || progress.load(Ordering::Relaxed) >= 250).await;
    db.restart();
    let _sidecar = Sidecar::start_on(&db, port);
    wait_for("the feed back once the sidecar is", 20, || feed_up().as_deref() == Some("1")).await;
    assert_eq!(ready(), 200);
    feeding.await.unwrap();

    for (channel, _, task) in followers {
        let ledger = task.await.unwrap().ledger;
        let v = ledger.verify(&produced).unwrap_or_else(|e| panic!("{channel}: {e}"));
        println!("sidecar and postgres down, {channel}: {v:?}");
        assert_eq!((v.delivered, v.resumes, v.told), (N as usize, 0, 0), "{channel}: every signal once");
    }
    gw.shutdown().await;
}
