//! `signalcast-bench ingest`: what the signal store costs producers. A signalcast server
//! (a child process, store on, `SIGNALCAST_*` variables apply, e.g.
//! `SIGNALCAST_STORE__FSYNC=process`) takes, in turn:
//!
//! 1. the TCP feed as fast as acknowledgements allow: acknowledged signals per second;
//! 2. the TCP feed at 1,000 signals/s: each signal's ACK latency (send to ACK);
//! 3. HTTP ingest over one keep-alive connection, JSON lines of `batch` signals per
//!    request: signals per second, answered once stored.
#![allow(clippy::print_stdout)] // a bench's report

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::feed::{Producer, ProducerConfig};
use engine::model::{Signal, UnixNanos};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PRODUCER: (&str, &str) = ("model-alpha", "dev-alpha-0c1d2e3f4a5b6c7d");

/// A fixture signal made new: id `n` of this run, current, routed to every tier.
fn signal(template: &Signal, run: u64, n: u64) -> Signal {
    let mut s = template.clone();
    s.id = uuid::Uuid::from_u64_pair(run, n);
    let now = UnixNanos::now();
    s.generated_at = now;
    s.expires_at = now.plus_nanos(3_600_000_000_000);
    s.confidence = engine::model::Confidence::new(9_500).unwrap_or(s.confidence);
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

pub async fn run(signals: u64, batch: usize) -> anyhow::Result<()> {
    let template: Signal =
        serde_json::from_str(gateway::config::fixtures::SIGNALS.lines().next().context("a fixture signal")?)?;
    let run = UnixNanos::now().0 as u64;
    let server = crate::targets::Server::start(crate::targets::Target::Signalcast).await?;
    let feed = server.publish;
    let http = server.endpoint.addr;

    // 1. Throughput over the TCP feed.
    let p = Producer::connect(ProducerConfig::new(feed.to_string(), PRODUCER.0, PRODUCER.1)).await?;
    let started = Instant::now();
    for n in 0..signals {
        p.send_signal(&signal(&template, run, n)).await?;
    }
    p.flush().await?;
    let took = started.elapsed();
    println!(
        "tcp feed: {signals} signals acknowledged in {took:.2?}: {:.0} acknowledged signals/s",
        signals as f64 / took.as_secs_f64()
    );

    // 2. ACK latency at 1,000/s.
    let mut lat = Vec::new();
    let base = signals;
    let mut next = Instant::now();
    for i in 0..3_000u64 {
        next += Duration::from_millis(1);
        let sent = Instant::now();
        p.send_signal(&signal(&template, run, base + i)).await?;
        p.flush().await?; // returns once the engine has acknowledged it
        lat.push(sent.elapsed());
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    lat.sort();
    println!(
        "tcp feed at 1000/s: ACK latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us (n = {})",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        percentile(&lat, 0.999).as_secs_f64() * 1e6,
        lat.len()
    );
    p.close().await?;

    // 3. HTTP ingest, keep-alive.
    let base = base + 3_000;
    let requests = (signals as usize / batch.max(1)).max(1);
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", PRODUCER.0, PRODUCER.1))
    };
    let mut conn = BufReader::new(tokio::net::TcpStream::connect(http).await?);
    let started = Instant::now();
    let mut accepted = 0usize;
    for r in 0..requests {
        let mut body = String::new();
        for k in 0..batch {
            body.push_str(&serde_json::to_string(&signal(&template, run, base + (r * batch + k) as u64))?);
            body.push('\n');
        }
        let req = format!(
            "POST /v1/signals HTTP/1.1\r\nHost: {http}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes()).await?;
        accepted += read_response(&mut conn, http).await?.matches("\"accepted\"").count();
    }
    let took = started.elapsed();
    println!(
        "http ingest, {batch} per request, keep-alive: {accepted} accepted in {took:.2?}: {:.0} signals/s",
        accepted as f64 / took.as_secs_f64()
    );
    drop(server);
    Ok(())
}

/// One HTTP/1.1 response with a Content-Length body.
async fn read_response(
    conn: &mut BufReader<tokio::net::TcpStream>,
    addr: SocketAddr,
) -> anyhow::Result<String> {
    let mut len = 0usize;
    let mut line = String::new();
    let mut status = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            anyhow::bail!("{addr} closed the connection");
        }
        if status.is_empty() {
            status = line.trim().to_owned();
        }
        let l = line.trim();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    let body = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.contains(" 200 "), "{status}: {body}");
    Ok(body)
}
