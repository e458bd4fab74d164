//! The engine's main job on the embedded default: no config, no external services.
//!
//! ```text
//! cargo run -p signalcast-engine --example demo
//! ```
//!
//! Starts the engine and its TCP feed on 127.0.0.1 (an ephemeral port), connects the
//! dev producer from `fixtures/producers.toml` over real TCP, replays
//! `fixtures/ticks.jsonl` and `fixtures/signals.jsonl` (re-stamped to now, in time
//! order), and prints what the pipeline did with them: per-tier channel heads, drops by
//! reason, and one SIGNAL_UPDATE as a trading client would receive it.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use engine::config::{EngineConfig, FeedConfig};
use engine::feed::{Producer, ProducerConfig, StaticKeys};
use engine::model::{Signal, Tick, Tier, UnixNanos};
use engine::pipeline::DropReason;
use engine::policy::TierPolicy;
use engine::{Engine, feed};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::main]
async fn main() {
    let policy = TierPolicy::from_toml(&fixture("tiers.toml")).unwrap();
    let keys = StaticKeys::from_toml(&fixture("producers.toml")).unwrap();
    let engine = Engine::start(EngineConfig::default(), policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(feed::run(
        listener,
        engine.feed_context(Arc::new(keys), FeedConfig::default()),
        std::future::pending(),
    ));
    println!("engine feed listening on {addr}");

    let producer =
        Producer::connect(ProducerConfig::new(addr.to_string(), "demo", "dev-demo-7f3c9a51e2b84d06"))
            .await
            .unwrap();
    let signals: Vec<Signal> =
        fixture("signals.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ticks: Vec<Tick> = fixture("ticks.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    // The recorded hour in its order, as fast as it goes, each event stamped with the
    // time it is sent (the recorded times have long expired).
    let mut events: Vec<(i64, Result<Tick, Signal>)> = ticks
        .into_iter()
        .map(|t| (t.ts.0, Ok(t)))
        .chain(signals.iter().map(|s| (s.generated_at.0, Err(s.clone()))))
        .collect();
    events.sort_by_key(|(at, _)| *at);

    let started = Instant::now();
    for (_, e) in &events {
        let now = UnixNanos::now();
        match e {
            Ok(t) => producer.send_tick(&Tick { ts: now, ..*t }).await.unwrap(),
            Err(s) => producer.send_signal(&s.restamped(now)).await.unwrap(),
        }
    }
    producer.flush().await.unwrap();
    let took = started.elapsed();

    println!(
        "\nreplayed {} events ({} signals) in {took:.2?}; all acknowledged",
        events.len(),
        signals.len()
    );
    println!("\n{:<22} {:>8}", "channel", "head");
    for t in Tier::ALL {
        println!("{:<22} {:>8}", engine.channels.live(t).name(), engine.channels.live(t).head());
    }
    println!("\n{:<22} {:>8}", "dropped", "count");
    for r in DropReason::ALL {
        println!("{:<22} {:>8}", r.as_str(), engine.stats.drops(r));
    }
    let mut out = Vec::new();
    let log = engine.channels.live(Tier::Premium);
    let _ = log.read_after(log.head().saturating_sub(1), &mut out, 1);
    if let Some(m) = out.first() {
        let v: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        println!(
            "\nlast message on {} (epoch {}):\n{}",
            log.name(),
            log.epoch(),
            serde_json::to_string_pretty(&v).unwrap()
        );
    }
    println!("\nsignals_free's delayed view releases them 30 s after ingest; this demo exits now.");
}
