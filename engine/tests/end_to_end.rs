//! Two producers over real TCP -> ingest -> pipeline -> channel logs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use engine::config::EngineConfig;
use engine::model::{Category, Tier, UnixNanos};
use engine::pipeline::DropReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_are_enriched_filtered_routed_and_sequenced() {
    let t = start(EngineConfig::default()).await;
    let alpha = producer(t.feed_addr, "alpha").await;
    let beta = producer(t.feed_addr, "beta").await;

    // Ticks first, on the same connections as the signals that need them.
    alpha.send_tick(&tick("RELIANCE", "NSE", "2456.80")).await.unwrap();
    beta.send_tick(&tick("BTC-USDT", "BINANCE", "64000.5")).await.unwrap();
    // Same symbol on another exchange: must not be used for NSE signals.
    beta.send_tick(&tick("RELIANCE", "BSE", "1.0")).await.unwrap();

    let confidences = [9_900, 9_000, 8_999, 8_500, 8_499, 7_501, 7_500, 6_000, 9_550, 8_725];
    let mut sent = HashMap::new();
    let mut n = 0u128;
    for round in 0..20 {
        for &c in &confidences {
            n += 1;
            let (p, s) = match n % 3 {
                0 => (&alpha, equity(n, c)),
                1 => (&beta, signal(n, c, "BTC-USDT", "BINANCE", Category::Crypto)),
                _ => (&beta, signal(n, c, "EUR/USD", "FX", Category::Forex)),
            };
            p.send_signal(&s).await.unwrap();
            sent.insert(n, s);
        }
        if round == 10 {
            // An expired signal: valid on the wire, dropped by the filter.
            n += 1;
            let mut s = equity(n, 9_900);
            s.generated_at = UnixNanos(s.generated_at.0 - 7_200_000_000_000);
            s.expires_at = UnixNanos(s.generated_at.0 + 1_000_000_000);
            alpha.send_signal(&s).await.unwrap();
        }
    }
    alpha.flush().await.unwrap();
    beta.flush().await.unwrap();
    assert_eq!(alpha.acked(), alpha.last_seq(), "an ACK covers everything once it is in the logs");

    let policy = &t.engine.policy;
    for tier in Tier::ALL {
        let expected: BTreeSet<u128> = sent
            .iter()
            .filter(|(_, s)| policy.passes_global(s.confidence) && policy.admits(tier, s.confidence))
            .map(|(n, _)| *n)
            .collect();
        let log = t.engine.channels.live(tier);
        let msgs = wait_for(&t.engine, log, expected.len()).await;
        assert_eq!(msgs.len(), expected.len(), "{tier}: nothing extra");
        let got: BTreeSet<u128> = msgs.iter().map(id_of).collect();
        assert_eq!(got, expected, "{tier}: exactly the signals the table admits");
        let mut last_per_producer = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.seq(), i as u64 + 1, "{tier}: gap-free seq");
            let d = data(m);
            let id = id_of(m);
            let s = &sent[&id];
            assert_eq!(d["generated_at"].as_i64(), Some(s.generated_at.as_micros()), "generated_at intact");
            assert!(d["sent_ts"].as_i64().is_some(), "the producer's send time is carried");
            assert!(d["ingest_ts"].as_i64() <= d["routed_ts"].as_i64());
            // Each producer's signals keep their order within a channel.
            let from = if id.is_multiple_of(3) { "alpha" } else { "beta" };
            let prev = last_per_producer.insert(from, id);
            assert!(prev.is_none_or(|p| p < id), "{tier}: {from}'s order kept");
            match s.symbol.as_str() {
                "RELIANCE" => assert_eq!(d["market"]["last"], "2456.8000"),
                "BTC-USDT" => {
                    assert_eq!(d["market"]["last"], "64000.5000");
                    assert_eq!(d["market"]["bid"], "64000.4900");
                }
                _ => assert!(d["market"].is_null(), "no tick for EUR/USD: market is null"),
            }
        }
    }
    let stats = &t.engine.stats;
    assert_eq!(stats.drops(DropReason::BelowConfidence), 40, "75.00 and 60.00, 20 rounds");
    assert_eq!(stats.drops(DropReason::Expired), 1);
    assert_eq!(stats.signals_in(), n as u64);
    assert_eq!(t.feed_stats.connected(), 2);
    alpha.close().await.unwrap();
    eventually("alpha disconnected", || t.feed_stats.connected() == 1).await;
}
