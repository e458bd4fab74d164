//! Writes seed inputs for the fuzz targets (fuzz/) that hand-written files cannot be:
//! valid rkyv frames and record values built from the fixtures.
//!
//! `cargo run -p signalcast-engine --example fuzz_seeds -- fuzz/corpus`
#![allow(clippy::print_stdout)]

use std::path::Path;

use engine::feed::codec::{ApiKey, FrameKind, Hello, ProducerMessage, write_frame};
use engine::model::{Category, MarketSnapshot, Signal, Tick, UnixNanos};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);
    let signal: Signal = serde_json::from_str(
        include_str!("../../fixtures/signals.jsonl").lines().next().unwrap_or_default(),
    )?;
    let tick: Tick =
        serde_json::from_str(include_str!("../../fixtures/ticks.jsonl").lines().next().unwrap_or_default())?;
    let hello = ProducerMessage::Hello(Hello {
        producer_id: "model-alpha".into(),
        api_key: ApiKey("dev-alpha-0c1d2e3f4a5b6c7d".into()),
        version: 1,
    });
    let messages = [
        hello,
        ProducerMessage::Signal { producer_seq: 1, sent_at: Some(UnixNanos(1)), signal: signal.clone() },
        ProducerMessage::Tick(tick),
        ProducerMessage::Heartbeat,
    ];

    let frames = root.join("feed_frames");
    std::fs::create_dir_all(&frames)?;
    let mut session = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let mut one = Vec::new();
        m.encode(&mut one);
        session.extend_from_slice(&one);
        std::fs::write(frames.join(format!("seed-{i}")), &one)?;
    }
    std::fs::write(frames.join("seed-session"), &session)?;
    let mut unknown = Vec::new();
    write_frame(&mut unknown, FrameKind::Ack, &[0; 8]);
    std::fs::write(frames.join("seed-wrong-direction"), &unknown)?;

    let values = root.join("kafka_value");
    std::fs::create_dir_all(&values)?;
    let mut json_signal = vec![0u8];
    json_signal.extend(serde_json::to_vec(&signal)?);
    std::fs::write(values.join("seed-json-signal"), &json_signal)?;
    let mut json_tick = vec![1u8];
    json_tick.extend(serde_json::to_vec(&tick)?);
    std::fs::write(values.join("seed-json-tick"), &json_tick)?;
    for (i, m) in messages[1..3].iter().enumerate() {
        let mut frame = Vec::new();
        m.encode(&mut frame);
        let mut rkyv = vec![2u8];
        rkyv.extend_from_slice(&frame[5..]); // a value is a frame's payload
        std::fs::write(values.join(format!("seed-rkyv-{i}")), &rkyv)?;
    }
    // Relayed signals.<tier> values: the first byte picks the sc-category header
    // (fuzz_targets/kafka_relay.rs), the rest is what an engine writes.
    let relay = root.join("kafka_relay");
    std::fs::create_dir_all(&relay)?;
    let pick = 1 + [Category::Equity, Category::Crypto, Category::Forex, Category::Commodity]
        .iter()
        .position(|c| *c == signal.category)
        .unwrap_or(0) as u8;
    let market = MarketSnapshot {
        bid: tick.bid,
        ask: tick.ask,
        last: tick.last,
        volume: tick.volume,
        tick_ts: tick.ts,
        tick_age_ms: 3,
    };
    for (name, m) in [("seed-data-market", Some(&market)), ("seed-data-no-market", None)] {
        let mut data = vec![pick];
        let (at, sent) = (UnixNanos(1_795_416_858_124_000_000), Some(UnixNanos(1_795_416_858_123_900_000)));
        engine::pipeline::encode::signal_data(&mut data, &signal, m, at, at, sent);
        std::fs::write(relay.join(name), &data)?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
