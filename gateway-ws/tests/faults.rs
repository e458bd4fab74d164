//! Faults with real processes, in single-node mode: a producer process killed
//! mid-batch and rerun, and the `signalcast` server itself stopped (SIGTERM, then
//! SIGKILL) and started again under connected clients. Every subscriber is checked by
//! the same ledger (tests/ledger): every signal of its channel exactly once, or a
//! `recovered: false` where something went missing; nothing silently missing.
//! The Kafka broker restart is in tests/kafka.rs, the sidecar and PostgreSQL ones in
//! accounts/tests/faults.rs; docs/RELIABILITY.md says how each fault is injected.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
mod ledger;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::feed::{Producer, ProducerConfig};
use engine::model::Category;
use ledger::{Event, Ledger, Subscriber};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    common::sample(&common::get(addr, "/metrics").await.unwrap_or_default(), series).unwrap_or(0.0)
}

/// Waits until `n` signals have reached the first subscriber.
async fn progress_reaches(s: &std::sync::atomic::AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "{what}: only {} signals in 60 s", s.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(name: &str, ledgers: &[(&str, &Ledger)], produced: &[u128]) -> Vec<ledger::Verdict> {
    ledgers
        .iter()
        .map(|(who, l)| {
            let v = l.verify(produced).unwrap_or_else(|e| panic!("{name}, {who}: {e}"));
            println!("{name}, {who}: {v:?}");
            v
        })
        .collect()
}

/// Confidence 90.00 for every third signal (every tier from free up takes it), 80.00
/// otherwise (premium and enterprise only).
fn confidence(n: u128) -> u16 {
    if n.is_multiple_of(3) { 9_000 } else { 8_000 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_process_killed_mid_batch_and_rerun_repeats_nothing_and_loses_nothing() {
    let server = common::start(common::config()).await;
    const N: u128 = 600;
    let lines: Vec<String> = (1..=N)
        .map(|n| serde_json::to_string(&common::signal(n, confidence(n), Category::Equity)).unwrap())
        .collect();
    let file = common::temp_file("signals.jsonl", &lines.join("\n"));
    let all: Vec<u128> = (1..=N).collect();
    let high: Vec<u128> = all.iter().copied().filter(|n| confidence(*n) >= 8_500).collect();

    let mut followers = Vec::new();
    for (user, channel, expected) in [
        ("u-enterprise-1", "signals_enterprise", &all),
        ("u-premium-1", "signals_premium", &all),
        ("u-basic-1", "signals_basic", &high),
    ] {
        let url = common::url(&server, &common::token(&server, user));
        let mut s = Subscriber::new(channel);
        s.connect(&url).await.unwrap();
        let progress = s.progress.clone();
        let last = *expected.last().unwrap();
        let task = tokio::spawn(s.follow(vec![url], last, Duration::from_secs(90)));
        followers.push((channel, expected, progress, task));
    }
    let feed = server.feed_addr.unwrap().to_string();
    let produce = |rate: &str| {
        Command::new(env!("CARGO_BIN_EXE_signalcast"))
            .args(["produce", "--addr", &feed, "--producer", "model-alpha", "--rate", rate])
            .arg("--file")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut first = produce("300");
    progress_reaches(&followers[0].2, 200, "the first producer run").await;
    common::kill(&first, "-KILL"); // mid-batch: no goodbye; its unacknowledged frames die with it
    first.wait().unwrap();
    let received_before = metric(server.http_addr, "signalcast_signals_received_total").await;

    // The same file again, as fast as acknowledgements allow.
    let rerun = produce("0").wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&rerun.stdout);
    assert!(rerun.status.success() && out.contains("all acknowledged"), "{out}");

    for (channel, expected, _, task) in followers {
        let ledger = task.await.unwrap().ledger;
        let v = &report("producer killed", &[(channel, &ledger)], expected)[0];
        assert_eq!(
            (v.delivered, v.told, v.missed_when_told, v.resumes),
            (expected.len(), 0, 0, 0),
            "{channel}: every signal once, no reconnect needed"
        );
    }
    let dups = metric(server.http_addr, "signalcast_drops_total{reason=\"duplicate_id\"}").await;
    println!("the first run had {received_before} signals in; the rerun's repeats dropped by id: {dups}");
    assert!(dups >= 200.0, "the rerun sent the first part again and the engine dropped it: {dups}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_loses_nothing_it_acknowledged_and_resumes_its_clients() {
    let http: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let feed: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let data = common::data_dir();
    let server = common::Server::start(http, feed, &data).await;
    const N: u128 = 900;
    let produced: Vec<u128> = (1..=N).collect();

    let mut followers = Vec::new();
    let mut first_progress = None;
    for (user, channel) in [
        ("u-enterprise-1", "signals_enterprise"),
        ("u-enterprise-1", "signals_premium"),
        ("u-premium-1", "signals_premium"),
    ] {
        let mut s = Subscriber::new(channel);
        let url = common::dev_url(http, user);
        s.connect(&url).await.unwrap();
        first_progress.get_or_insert_with(|| s.progress.clone());
        followers.push((channel, tokio::spawn(s.follow(vec![url], N, Duration::from_secs(120)))));
    }
    // A producer that outlives the servers: it reconnects and resends from its last ACK.
    let mut cfg = ProducerConfig::new(feed.to_string(), common::PRODUCER.0, common::PRODUCER.1);
    cfg.reconnect_max = Duration::from_millis(200);
    let producer = Producer::connect(cfg).await.unwrap();
    let feeding = tokio::spawn(async move {
        for n in 1..=N {
            producer.send_signal(&common::signal(n, 8_000, Category::Equity)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        producer.flush().await.unwrap();
        producer
    });

    let progress = first_progress.unwrap();
    progress_reaches(&progress, 250, "before the SIGTERM").await;
    server.stop("-TERM").await; // drain: notice, 1001, acknowledgements flushed
    let server = common::Server::start(http, feed, &data).await;
    progress_reaches(&progress, 550, "before the SIGKILL").await;
    server.stop("-KILL").await; // no drain, no goodbye
    let server = common::Server::start(http, feed, &data).await;
    let producer = feeding.await.unwrap();
    println!("producer reconnects: {}", producer.reconnects());
    let acked = producer.acked();

    let mut ledgers = Vec::new();
    for (channel, f) in followers {
        ledgers.push((channel, f.await.unwrap().ledger));
    }
    let refs: Vec<(&str, &Ledger)> = ledgers.iter().map(|(c, l)| (*c, l)).collect();
    for (v, (_, l)) in report("server restarted twice", &refs, &produced).iter().zip(&ledgers) {
        // The store keeps the epoch, the ring and the ids: every resume recovers, and
        // every signal arrives exactly once (the producer's resends were dropped by id).
        assert!(v.resumes >= 2, "a resume after each restart: {v:?}");
        assert_eq!((v.told, v.missed_when_told, v.repeated_when_told), (0, 0, 0), "{v:?}");
        assert_eq!(v.delivered, N as usize, "each signal once: {v:?}");
        assert!(v.close_codes.contains(&Some(1001)), "the SIGTERM drained with 1001: {v:?}");
        let drained = l.events.iter().any(|e| matches!(e, Event::Ended { code: Some(1001) }));
        assert!(drained);
        let recovered =
            l.events.iter().filter(|e| matches!(e, Event::Subscribed { recovered: Some(true), .. })).count();
        assert_eq!(recovered, v.resumes, "every resume answered recovered: true");
    }
    drop(server); // SIGKILL: the store must hold what was acknowledged without a drain
    let store = store::SqliteStore::open_reader(&data).unwrap();
    assert_eq!(acked, N as u64, "the producer's last ACK");
    assert_eq!(store.count().unwrap(), N as u64, "every acknowledged signal is in the store, once");
    let stored: std::collections::HashSet<u128> = store
        .after(engine::model::Tier::Enterprise, 0, 10_000)
        .unwrap()
        .iter()
        .map(|m| m.id.as_u128())
        .collect();
    assert!(produced.iter().all(|id| stored.contains(id)), "each produced id is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_does_not_give_users_their_days_quota_again() {
    let http: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let feed: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let data = common::data_dir();
    let server = common::Server::start(http, feed, &data).await;
    let publish = |range: std::ops::RangeInclusive<u128>| async move {
        let p =
            Producer::connect(ProducerConfig::new(feed.to_string(), common::PRODUCER.0, common::PRODUCER.1))
                .await
                .unwrap();
        for n in range {
            p.send_signal(&common::signal(n, 9_500, Category::Equity)).await.unwrap();
        }
        p.flush().await.unwrap();
        p.close().await.unwrap();
    };
    // u-premium-capped may receive 5 a day; it receives 3 live.
    let mut c = common::Client::connect(&common::dev_url(http, "u-premium-capped")).await;
    assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
    publish(1..=3).await;
    let got: Vec<u128> = c.signals(3).await.iter().map(common::id_of).collect();
    assert_eq!(got, [1, 2, 3]);
    // Charges reach the store within a second; then the process dies without a word.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.stop("-KILL").await;

    let server = common::Server::start(http, feed, &data).await;
    publish(4..=8).await;
    // After the restart 3 of the 5 are still spent: history gives the 3 already charged
    // (free) and 2 new ones, and withholds the other 3.
    let token = common::dev_url(http, "u-premium-capped").split("token=").nth(1).unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!(
        "GET /v1/signals/history HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let ids: Vec<u128> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| uuid::Uuid::parse_str(i["id"].as_str().unwrap()).unwrap().as_u128())
        .collect();
    assert_eq!(ids, [8, 7, 3, 2, 1], "{body}");
    assert_eq!(body["withheld"], 3);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_stops_acknowledging_and_acknowledges_nothing_it_did_not_store() {
    let http: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let feed: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let data = common::data_dir();
    // A store capped at 1 MiB fills after some hundreds of signals.
    let server =
        common::Server::start_with(http, feed, &data, &[("SIGNALCAST_STORE__MAX_SIZE_MB", "1")]).await;
    let mut c = common::Client::connect(&common::dev_url(http, "u-enterprise-1")).await;
    assert_eq!(c.subscribe("signals_enterprise").await["type"], "SUBSCRIBED");
    let p = std::sync::Arc::new(
        Producer::connect(ProducerConfig::new(feed.to_string(), common::PRODUCER.0, common::PRODUCER.1))
            .await
            .unwrap(),
    );
    let sender = std::sync::Arc::clone(&p);
    let sending = tokio::spawn(async move {
        for n in 1..=5_000u128 {
            let mut s = common::signal(n, 9_500, Category::Equity);
            s.analysis =
                engine::model::Analysis::from_json(format!(r#"{{"notes":"{}"}}"#, "x".repeat(500))).ok();
            if sender.send_signal(&s).await.is_err() {
                break;
            }
        }
    });
    // The node says it is not ready once a commit fails, and the ACKs stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = common::get(http, "/health/ready").await.unwrap_or_default();
        if ready.starts_with("HTTP/1.1 503") {
            assert!(ready.contains("signal store cannot commit"), "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "the store never filled: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(http, "signalcast_store_failures_total").await >= 1.0);
    assert_eq!(metric(http, "signalcast_store_stalled").await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // How many got in depends on how the stage merged its batches into commits (a
    // refused commit is all or nothing): some, never all.
    let stored = store::SqliteStore::open_reader(&data).unwrap().count().unwrap();
    assert!((1..5_000).contains(&stored), "{stored} stored");
    // Every delivery was stored first: the client got exactly the stored ones, in order.
    let mut got = Vec::new();
    while let Some(m) = c.try_next(Duration::from_millis(300)).await {
        if m["type"] == "SIGNAL_UPDATE" {
            got.push(common::id_of(&m));
        }
    }
    assert_eq!(got, (1..=u128::from(stored)).collect::<Vec<_>>(), "delivered = stored");
    assert!(p.acked() <= stored, "acknowledged {} of {stored} stored", p.acked());
    assert!(p.acked() > 0);
    sending.abort();
    server.stop("-KILL").await;
    // What the producer was told is stored is in the store after the crash.
    let after = store::SqliteStore::open_reader(&data).unwrap().count().unwrap();
    assert_eq!(after, stored, "nothing beyond what was committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_commit_fills_the_ingest_queue_and_the_feed_stops_taking_signals() {
    let http: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let feed: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let data = common::data_dir();
    let server = common::Server::start_with(
        http,
        feed,
        &data,
        &[("SIGNALCAST_STORE__MAX_SIZE_MB", "1"), ("SIGNALCAST_ENGINE__INGEST_QUEUE", "8")],
    )
    .await;
    // The producer's own bound out of the way: what stops it must be the server.
    let mut cfg = ProducerConfig::new(feed.to_string(), common::PRODUCER.0, common::PRODUCER.1);
    cfg.max_in_flight = 1_000_000;
    let p = Producer::connect(cfg).await.unwrap();
    let total = 100_000usize;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&sent);
    let sending = tokio::spawn(async move {
        for n in 1..=total {
            let mut s = common::signal(n as u128, 9_500, Category::Equity);
            s.analysis =
                engine::model::Analysis::from_json(format!(r#"{{"notes":"{}"}}"#, "x".repeat(200))).ok();
            if p.send_signal(&s).await.is_err() {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    // The store fills; the stage holds what it routed for the commit that cannot come,
    // up to its bound, then waits; the queue behind it fills; the feed stops reading.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(http, "signalcast_store_stalled").await < 1.0
        || metric(http, "signalcast_ingest_queue_depth").await < 8.0
    {
        assert!(
            Instant::now() < deadline,
            "no stall with a full queue ({} sent)",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the producer is held back: its sends stop going through (TCP back-pressure,
    // then its own queue), well short of what it had to send.
    let mut before = sent.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == before {
            break;
        }
        assert!(Instant::now() < deadline, "the producer was never held back ({now} sent)");
        before = now;
    }
    println!("held back after {before} of {total} signals");
    assert!(before < total, "all {total} went through a stalled store");
    assert_eq!(
        metric(http, "signalcast_ingest_queue_depth").await,
        8.0,
        "still full, nothing dropped from it"
    );
    sending.abort();
    server.stop("-KILL").await;
}

// The checker itself: each rule fails the ledgers it is meant to fail.

fn sub(epoch: &str, head: u64, recovered: Option<bool>) -> Event {
    Event::Subscribed { epoch: epoch.into(), head, recovered }
}

fn sig(seq: u64, id: u128) -> Event {
    Event::Signal { seq, id }
}

fn ledger(events: Vec<Event>) -> Ledger {
    Ledger { events }
}

#[test]
fn the_ledger_passes_exactly_once_and_told_gaps() {
    let produced = [1, 2, 3, 4, 5];
    let clean = ledger(vec![sub("a", 0, None), sig(1, 1), sig(2, 2), sig(3, 3), sig(4, 4), sig(5, 5)]);
    assert_eq!(clean.verify(&produced).unwrap().delivered, 5);
    let resumed = ledger(vec![
        sub("a", 0, None),
        sig(1, 1),
        sig(2, 2),
        Event::Ended { code: Some(4008) },
        sub("a", 4, Some(true)),
        sig(3, 3),
        sig(4, 4),
        sig(5, 5),
    ]);
    let v = resumed.verify(&produced).unwrap();
    assert_eq!((v.resumes, v.told, v.close_codes), (1, 0, vec![Some(4008)]));
    assert_eq!(resumed.resume_point(), Some(("a".into(), 5)));
    // A restart, the client back after the new process routed two: told, 3 and 4 lost.
    let lost = ledger(vec![
        sub("a", 0, None),
        sig(1, 1),
        sig(2, 2),
        Event::Ended { code: None },
        sub("b", 2, Some(false)),
        sig(3, 5),
    ]);
    let v = lost.verify(&produced).unwrap();
    assert_eq!((v.told, v.missed_when_told, v.repeated_when_told), (1, 2, 0));
    // A restart, the client back first: the producer resends 2 (routed, not acknowledged).
    let repeated = ledger(vec![
        sub("a", 0, None),
        sig(1, 1),
        sig(2, 2),
        Event::Ended { code: None },
        sub("b", 0, Some(false)),
        sig(1, 2),
        sig(2, 3),
        sig(3, 4),
        sig(4, 5),
    ]);
    let v = repeated.verify(&produced).unwrap();
    assert_eq!((v.told, v.missed_when_told, v.repeated_when_told), (1, 0, 1));
}

#[test]
fn the_ledger_fails_every_silent_loss_and_every_repeat() {
    let produced = [1, 2, 3, 4];
    let cases = [
        ("a silent gap", vec![sub("a", 0, None), sig(1, 1), sig(2, 3), sig(3, 4)], "silently missing"),
        ("a seq skip", vec![sub("a", 0, None), sig(1, 1), sig(3, 2)], "seq 3 after 1"),
        ("a repeat", vec![sub("a", 0, None), sig(1, 1), sig(2, 1)], "twice"),
        ("the tail", vec![sub("a", 0, None), sig(1, 1), sig(2, 2), sig(3, 3)], "never arrived"),
        ("an unknown id", vec![sub("a", 0, None), sig(1, 9)], "never produced"),
        (
            "recovered into another epoch",
            vec![sub("a", 0, None), sig(1, 1), sub("b", 1, Some(true)), sig(2, 2)],
            "another epoch",
        ),
        (
            "a recovered resume that skips",
            vec![sub("a", 0, None), sig(1, 1), sub("a", 3, Some(true)), sig(3, 3)],
            "seq 3 after 1",
        ),
        (
            "a repeat after a told gap in the same epoch",
            vec![sub("a", 0, None), sig(1, 1), sig(2, 2), sub("a", 2, Some(false)), sig(3, 2)],
            "twice",
        ),
        ("a resubscription without since", vec![sub("a", 0, None), sub("a", 0, None)], "without since"),
        ("out of order", vec![sub("a", 0, None), sig(1, 2), sig(2, 1)], "silently missing"),
    ];
    for (what, events, expect) in cases {
        let err = ledger(events).verify(&produced).expect_err(what);
        assert!(err.contains(expect), "{what}: {err}");
    }
}
