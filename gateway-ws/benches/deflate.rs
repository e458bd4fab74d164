//! What compressing a channel message costs, and what it saves, by zlib level (the
//! figures behind the shard compressor's level; docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p signalcast-gateway --bench deflate
//! ```
//!
//! The messages are the embedded fixtures' signals as SIGNAL_UPDATEs with the market
//! snapshot of their symbol, each compressed on its own as the shard does
//! (`server_no_context_takeover`). The wire ratio (compressed ÷ plain, 4 bytes of frame
//! header each) is printed once per level before its timing.
#![allow(clippy::unwrap_used, missing_docs, clippy::print_stderr)]

use criterion::{Criterion, criterion_group, criterion_main};
use engine::model::{Tick, UnixNanos};
use gateway::demo::Event;
use gateway::ws::deflate::Deflater;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture_messages() -> Vec<Vec<u8>> {
    let now = UnixNanos::now();
    let mut market = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in gateway::demo::events() {
        match e {
            Event::Tick(t) => {
                market.insert(t.symbol, engine::pipeline::enrich::snapshot(&Tick { ts: now, ..t }, now));
            }
            Event::Signal(s) => {
                let mut data = Vec::new();
                engine::pipeline::encode::signal_data(
                    &mut data,
                    &s,
                    market.get(&s.symbol),
                    now,
                    now,
                    Some(now),
                );
                let mut text = Vec::new();
                engine::pipeline::encode::signal_update(&mut text, "signals_premium", 1_000_000, &data);
                out.push(text);
            }
        }
    }
    out
}

fn deflate(c: &mut Criterion) {
    let messages = fixture_messages();
    let mut g = c.benchmark_group("deflate");
    for level in [1, 2, 6, 9] {
        let mut d = Deflater::new(level);
        let (plain, sent): (usize, usize) = messages
            .iter()
            .map(|m| (m.len() + 4, d.compress(m).map_or(m.len(), |c| c.len()) + 4))
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        eprintln!(
            "deflate level {level}: {} messages, wire bytes compressed ÷ plain = {:.3}",
            messages.len(),
            sent as f64 / plain as f64
        );
        let mut i = 0;
        g.bench_function(format!("fixture_message_level_{level}"), |b| {
            b.iter(|| {
                i = (i + 1) % messages.len();
                d.compress(std::hint::black_box(&messages[i]))
            })
        });
    }
    // Per-connection context takeover (not offered; what it would save and cost): one
    // compressor per connection that keeps its window across messages, so each message
    // also pays for the ones before it in the window. zlib's state is about
    // 2^(window+1) + 2^(mem_level+9) bytes plus ~6 KiB (window 15, level 6: ~256 KiB).
    for window in [15u8, 10] {
        let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, window);
        let mut out = Vec::with_capacity(8192);
        let (mut plain, mut sent) = (0usize, 0usize);
        for m in &messages {
            out.clear();
            c.compress_vec(m, &mut out, flate2::FlushCompress::Sync).unwrap();
            plain += m.len() + 4;
            sent += out.len() - 4 + 4;
        }
        eprintln!(
            "deflate context takeover, window {window}: wire bytes compressed ÷ plain = {:.3}",
            sent as f64 / plain as f64
        );
        let mut i = 0;
        g.bench_function(format!("fixture_message_context_window_{window}"), |b| {
            b.iter(|| {
                i = (i + 1) % messages.len();
                out.clear();
                c.compress_vec(std::hint::black_box(&messages[i]), &mut out, flate2::FlushCompress::Sync)
                    .unwrap();
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);
