//! `signalcast-bench ticks`: what a market tick costs the server. A signalcast server (a
//! child process, embedded default, store on, `SIGNALCAST_*` variables apply) takes
//! `rate` ticks a second over `symbols` symbols on the TCP feed, while `subscribers`
//! clients each watch `watch` of those symbols on `prices_general` at `max_frequency`
//! updates per second per symbol. Reported: the server's CPU (user + system, from
//! /proc) divided by the ticks it took in the window (its own `signalcast_ticks_received`
//! counter), and the price deliveries the clients counted.
//!
//! A tick's path in the server: the feed's frame decode, the single-writer stage (tick
//! book, outcome check), and each hub shard's price turn (a frame per (symbol, rate)
//! that changed and has watchers, queued to those watchers, written in their sweep).
#![allow(clippy::print_stdout)] // a bench's report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BytesMut};
use engine::feed::{Producer, ProducerConfig};
use engine::model::{Exchange, Price, Symbol, Tick, UnixNanos};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto::{client_frame, next_frame, ws_connect};
use crate::stats::cpu_secs;
use crate::targets::{Server, Target, metric};

/// A producer the fixtures let send ticks.
const PRODUCER: (&str, &str) = ("model-alpha", "dev-alpha-0c1d2e3f4a5b6c7d");

/// What `signalcast-bench ticks` runs.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub rate: u64,
    pub symbols: usize,
    pub subscribers: usize,
    pub watch: usize,
    pub max_frequency: u32,
    pub duration: u64,
}

fn symbol(i: usize) -> String {
    format!("TK{i:04}")
}

fn tick(i: usize, n: u64) -> anyhow::Result<Tick> {
    // The price walks within ±0.5% of 100 so that every tick changes it.
    let last = 1_000_000 - 5_000 + (n.wrapping_mul(7_919) % 10_000) as i64;
    let price = |raw: i64| Price::from_raw(raw).context("a price in range");
    Ok(Tick {
        symbol: Symbol::new(&symbol(i))?,
        exchange: Exchange::new("NSE")?,
        bid: price(last - 100)?,
        ask: price(last + 100)?,
        last: price(last)?,
        volume: n,
        ts: UnixNanos::now(),
    })
}

/// One price subscriber: upgrades, subscribes to its watchlist, counts PRICE_UPDATEs.
async fn subscriber(
    server: &Server,
    watch: Vec<String>,
    max_frequency: u32,
    prices: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (mut s, mut buf, _) = ws_connect(server.endpoint.addr, &server.endpoint.path, "").await?;
    let sub = serde_json::json!({
        "type": "SUBSCRIBE",
        "channel": "prices_general",
        "filter": {"symbols": watch},
        "max_frequency": max_frequency,
    });
    s.write_all(&client_frame(1, sub.to_string().as_bytes())).await?;
    // Up to SUBSCRIBED (WELCOME comes first).
    let deadline = Instant::now() + Duration::from_secs(10);
    'ack: loop {
        while let Some((_, from, to)) = next_frame(&buf) {
            let subscribed = buf[from..to].windows(12).any(|w| w == b"\"SUBSCRIBED\"");
            let refused = buf[from..to].windows(7).any(|w| w == b"\"ERROR\"");
            if refused {
                anyhow::bail!("refused: {}", String::from_utf8_lossy(&buf[from..to]));
            }
            buf.advance(to);
            if subscribed {
                break 'ack;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no SUBSCRIBED in 10 s");
        if s.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed before SUBSCRIBED");
        }
    }
    Ok(tokio::spawn(async move {
        let mut buf: BytesMut = buf;
        loop {
            while let Some((_, from, to)) = next_frame(&buf) {
                if buf[from..to].starts_with(b"{\"type\":\"PRICE_UPDATE\"") {
                    prices.fetch_add(1, Ordering::Relaxed);
                }
                buf.advance(to);
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }))
}

/// Sends ticks at `rate` a second, round-robin over the symbols, until `stop`.
async fn send_ticks(p: &Producer, spec: Spec, stop: Instant, sent: &mut u64) -> anyhow::Result<()> {
    // In steps of 1 ms: as many ticks as bring the count to rate × elapsed.
    let started = Instant::now();
    let first = *sent;
    let mut next = started;
    while Instant::now() < stop {
        next += Duration::from_millis(1);
        let due = first + (spec.rate as u128 * next.duration_since(started).as_millis() / 1_000) as u64;
        while *sent < due {
            p.send_tick(&tick((*sent % spec.symbols as u64) as usize, *sent)?).await?;
            *sent += 1;
        }
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

pub async fn run(spec: Spec) -> anyhow::Result<()> {
    anyhow::ensure!(spec.symbols > 0 && spec.watch <= spec.symbols, "--watch at most --symbols");
    let server = Server::start(Target::Signalcast).await?;
    let p =
        Producer::connect(ProducerConfig::new(server.publish.to_string(), PRODUCER.0, PRODUCER.1)).await?;
    // Every symbol once, so that watchlists name known symbols.
    let mut sent = 0u64;
    for i in 0..spec.symbols {
        p.send_tick(&tick(i, 0)?).await?;
        sent += 1;
    }
    p.flush().await?;

    let prices = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(spec.subscribers);
    for c in 0..spec.subscribers {
        // Consecutive symbols from a spread start: every symbol is watched about equally.
        let start = c.wrapping_mul(7_919) % spec.symbols;
        let watch = (0..spec.watch).map(|k| symbol((start + k) % spec.symbols)).collect();
        clients.push(subscriber(&server, watch, spec.max_frequency, Arc::clone(&prices)).await?);
    }

    // One second to reach the steady state, then the window.
    let warm = Instant::now() + Duration::from_secs(1);
    send_ticks(&p, spec, warm, &mut sent).await?;
    let addr = server.endpoint.addr;
    let own = std::process::id();
    let (cpu0, client0) = (cpu_secs(&[server.pid]), cpu_secs(&[own]));
    let taken0 = metric(addr, "signalcast_ticks_received_total").await.context("ticks received")?;
    let (prices0, sent0, started) = (prices.load(Ordering::Relaxed), sent, Instant::now());
    send_ticks(&p, spec, started + Duration::from_secs(spec.duration), &mut sent).await?;
    p.flush().await?;
    let took = started.elapsed().as_secs_f64();
    let taken = metric(addr, "signalcast_ticks_received_total").await? - taken0;
    let (cpu, client) = (cpu_secs(&[server.pid]) - cpu0, cpu_secs(&[own]) - client0);
    let delivered = prices.load(Ordering::Relaxed) - prices0;

    println!(
        "ticks: {} symbols, {} subscribers watching {} each at max_frequency {}",
        spec.symbols, spec.subscribers, spec.watch, spec.max_frequency
    );
    println!(
        "| ticks sent/s | ticks taken/s | price deliveries/s | server CPU | server µs per tick | \
         server µs per delivery | client+producer CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0}% | {:.3} | {} | {:.0}% |",
        (sent - sent0) as f64 / took,
        taken / took,
        delivered as f64 / took,
        100.0 * cpu / took,
        cpu * 1e6 / taken.max(1.0),
        if delivered > 0 { format!("{:.2}", cpu * 1e6 / delivered as f64) } else { "–".into() },
        100.0 * client / took,
    );
    for c in clients {
        c.abort();
    }
    p.close().await?;
    server.stop().await;
    Ok(())
}
