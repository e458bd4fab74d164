//! `signalcast-bench storm`: a reconnect storm. `count` subscribers of `signals_premium`
//! on a single signalcast node (store on) while a producer publishes at `rate`; the node
//! is killed (SIGKILL) and started again on the same store, and every subscriber
//! reconnects at once (retrying every 20–70 ms while the port is closed) with the `since`
//! and `epoch` it last saw. With `--scale-out`: a broker, an engine node and two gateways;
//! the gateway the subscribers are on is killed and they move to the other. Reported:
//! the time from the kill until every subscriber is subscribed again, how many were told
//! `recovered: true`, the server's CPU (the restarted node's from its start; in
//! scale-out the other gateway's from the kill), and — after more publishing — any seq
//! received twice or skipped, and whether every subscriber ends on the same last seq.
//!
//! The subscribers run in worker processes (this binary's hidden `storm-worker`), which
//! answer `STATUS` on stdin with a line `STATUS {…}` and exit on `STOP`.
#![allow(clippy::print_stdout)] // a bench's report

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::proto::{client_frame, next_frame, now_us, ws_connect};
use crate::run::{MAX_CONNS_PER_WORKER, Proc};
use crate::stats::cpu_secs;
use crate::targets::{Endpoint, Publisher, Server, Target};

/// One worker process's subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormSpec {
    /// Where subscribers connect: the first, then (after a drop or a failed attempt)
    /// the next in turn, as a client with a list of gateways does.
    pub endpoints: Vec<Endpoint>,
    pub conns: usize,
}

/// What a worker's subscribers saw so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Subscribed once (the first time).
    pub connected: usize,
    /// Connections the server closed (or that failed) after they were subscribed.
    pub dropped: usize,
    /// Subscribed again after a drop: told `recovered: true`, or not.
    pub recovered: usize,
    pub not_recovered: usize,
    /// When the last one was subscribed again (µs since the epoch).
    pub last_back_us: i64,
    /// SIGNAL_UPDATEs received, seqs received again, and seqs skipped.
    pub received: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// The lowest and highest seq the subscribers last saw.
    pub min_last: u64,
    pub max_last: u64,
    /// Attempts that failed (port closed, refused, cut), and the first few reasons.
    pub failed_attempts: u64,
    pub errors: Vec<String>,
}

/// Where a subscriber stands on the channel.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    epoch: Option<u64>,
    last: u64,
}

#[derive(Debug, Default)]
struct Shared {
    status: Status,
    lasts: Vec<u64>,
}

/// The numeric value of `"key":` in `text`, if any (the frames' own fields, before `data`).
fn number(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// Connects, subscribes (resuming from `cursor` when it has an epoch) and reads up to
/// SUBSCRIBED: returns the socket, what came after it, and whether it recovered.
async fn open(
    ep: &Endpoint,
    cursor: &mut Cursor,
) -> std::io::Result<(tokio::net::TcpStream, BytesMut, bool)> {
    let (mut s, mut buf, _) = ws_connect(ep.addr, &ep.path, "").await?;
    let sub = match cursor.epoch {
        Some(e) => format!(
            r#"{{"type":"SUBSCRIBE","channel":"signals_premium","since":{},"epoch":"{e:016x}"}}"#,
            cursor.last
        ),
        None => r#"{"type":"SUBSCRIBE","channel":"signals_premium"}"#.to_owned(),
    };
    s.write_all(&client_frame(1, sub.as_bytes())).await?;
    loop {
        while let Some((_, from, to)) = next_frame(&buf) {
            let frame = &buf[from..to];
            if frame.windows(12).any(|w| w == b"\"SUBSCRIBED\"") {
                let v: serde_json::Value = serde_json::from_slice(frame).map_err(std::io::Error::other)?;
                let epoch = v["epoch"].as_str().and_then(|e| u64::from_str_radix(e, 16).ok());
                let recovered = v["recovered"].as_bool() == Some(true);
                if !recovered {
                    // A fresh start: from the channel's head.
                    cursor.last = v["seq"].as_u64().unwrap_or(0);
                }
                cursor.epoch = epoch;
                buf.advance(to);
                return Ok((s, buf, recovered));
            }
            if frame.windows(7).any(|w| w == b"\"ERROR\"") {
                return Err(std::io::Error::other(String::from_utf8_lossy(frame).into_owned()));
            }
            buf.advance(to);
        }
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_buf(&mut buf)).await?;
        if read? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One subscriber, for ever: subscribed, reading, and subscribed again when dropped.
async fn subscriber(endpoints: Rc<Vec<Endpoint>>, n: usize, shared: Rc<RefCell<Shared>>) {
    let mut cursor = Cursor::default();
    let mut first = true;
    let mut attempt: u64 = 0;
    let mut at = 0;
    loop {
        let (mut s, mut buf, recovered) = loop {
            match open(&endpoints[at % endpoints.len()], &mut cursor).await {
                Ok(c) => break c,
                Err(e) => {
                    {
                        let mut sh = shared.borrow_mut();
                        sh.status.failed_attempts += 1;
                        let e = e.to_string();
                        if sh.status.errors.len() < 5 && !sh.status.errors.contains(&e) {
                            sh.status.errors.push(e);
                        }
                    }
                    attempt += 1;
                    at += 1;
                    // 20–70 ms, spread per subscriber and attempt.
                    let jitter = (n as u64).wrapping_mul(7_919).wrapping_add(attempt * 104_729) % 50;
                    tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
                }
            }
        };
        {
            let mut sh = shared.borrow_mut();
            if first {
                sh.status.connected += 1;
            } else if recovered {
                sh.status.recovered += 1;
                sh.status.last_back_us = sh.status.last_back_us.max(now_us());
            } else {
                sh.status.not_recovered += 1;
                sh.status.last_back_us = sh.status.last_back_us.max(now_us());
            }
            sh.lasts[n] = cursor.last;
        }
        first = false;
        // Read until the server goes away.
        loop {
            while let Some((op, from, to)) = next_frame(&buf) {
                let frame = &buf[from..to];
                if op == 0x1
                    && frame.starts_with(b"{\"type\":\"SIGNAL_UPDATE\"")
                    && let Some(seq) = number(frame, b"\"seq\":")
                {
                    let mut sh = shared.borrow_mut();
                    sh.status.received += 1;
                    if seq <= cursor.last {
                        sh.status.duplicates += 1;
                    } else {
                        sh.status.gaps += seq - cursor.last - 1;
                        cursor.last = seq;
                        sh.lasts[n] = seq;
                    }
                }
                buf.advance(to);
            }
            match s.read_buf(&mut buf).await {
                Ok(k) if k > 0 => {}
                _ => break,
            }
        }
        shared.borrow_mut().status.dropped += 1;
        at += 1;
    }
}

/// The hidden `storm-worker` command.
pub fn worker(spec: StormSpec) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        anyhow::ensure!(!spec.endpoints.is_empty(), "no endpoint");
        let shared = Rc::new(RefCell::new(Shared { lasts: vec![0; spec.conns], ..Shared::default() }));
        let endpoints = Rc::new(spec.endpoints);
        for n in 0..spec.conns {
            tokio::task::spawn_local(subscriber(Rc::clone(&endpoints), n, Rc::clone(&shared)));
            // The first connections in steps, as a client fleet comes up.
            if n % 100 == 99 {
                tokio::task::yield_now().await;
            }
        }
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            match line.trim() {
                "STATUS" => {
                    let status = {
                        let sh = shared.borrow();
                        let mut st = sh.status.clone();
                        st.min_last = sh.lasts.iter().copied().min().unwrap_or(0);
                        st.max_last = sh.lasts.iter().copied().max().unwrap_or(0);
                        st
                    };
                    say(&format!("STATUS {}", serde_json::to_string(&status)?));
                }
                "STOP" => break,
                _ => {}
            }
        }
        Ok(())
    })
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Every worker's status, summed (lowest and highest seq over all).
async fn status(workers: &mut [Proc]) -> anyhow::Result<Status> {
    let mut total = Status { min_last: u64::MAX, ..Status::default() };
    for w in workers.iter_mut() {
        w.say("STATUS").await?;
    }
    for w in workers.iter_mut() {
        let s: Status = w.answer("STATUS", Duration::from_secs(30)).await?;
        total.connected += s.connected;
        total.dropped += s.dropped;
        total.recovered += s.recovered;
        total.not_recovered += s.not_recovered;
        total.last_back_us = total.last_back_us.max(s.last_back_us);
        total.received += s.received;
        total.duplicates += s.duplicates;
        total.gaps += s.gaps;
        total.min_last = total.min_last.min(s.min_last);
        total.max_last = total.max_last.max(s.max_last);
        total.failed_attempts += s.failed_attempts;
        for e in s.errors {
            if total.errors.len() < 8 && !total.errors.contains(&e) {
                total.errors.push(e);
            }
        }
    }
    Ok(total)
}

/// Polls until `done` holds or `limit` passes.
async fn until(
    workers: &mut [Proc],
    limit: Duration,
    done: impl Fn(&Status) -> bool,
) -> anyhow::Result<Status> {
    let started = Instant::now();
    loop {
        let s = status(workers).await?;
        if done(&s) || started.elapsed() > limit {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes `rate` signals a second until `stop` says so; returns how many.
async fn publish(
    mut p: Publisher,
    rate: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut seq = 0u64;
    let step = Duration::from_secs(1) / rate.max(1) as u32;
    let mut next = tokio::time::Instant::now();
    while !*stop.borrow() {
        seq += 1;
        p.publish(seq, 0).await?;
        next += step;
        tokio::time::sleep_until(next).await;
    }
    p.flush().await?;
    Ok(seq)
}

pub async fn run(count: usize, processes: usize, rate: u64, scale_out: bool) -> anyhow::Result<()> {
    let exe = crate::targets::exe()?;
    let mut server = if scale_out {
        Server::start_scaled_out(&exe, 2).await?
    } else {
        Server::start(Target::Signalcast).await?
    };
    let mut endpoints = vec![server.endpoint.clone()];
    endpoints.extend(server.others.iter().map(|(e, _)| e.clone()));
    let n = processes.max(count.div_ceil(MAX_CONNS_PER_WORKER)).max(1);
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let spec = StormSpec { endpoints: endpoints.clone(), conns: count / n + usize::from(i < count % n) };
        workers.push(Proc::spawn(&exe, "storm-worker", &serde_json::to_string(&spec)?)?);
    }
    let s = until(&mut workers, Duration::from_secs(120), |s| s.connected >= count).await?;
    anyhow::ensure!(s.connected >= count, "only {} of {count} subscribed", s.connected);
    eprintln!("{count} subscribed; publishing {rate}/s");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publisher =
        tokio::spawn(publish(Publisher::connect(&server, 0, crate::targets::Mix::Padded).await?, rate, stop));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = status(&mut workers).await?;

    // Single node: the node restarted, its CPU from its start. Scale-out: the first
    // gateway killed, the other's CPU from the kill.
    let other = server.others.first().map(|(_, pid)| *pid);
    let other_cpu0 = other.map(|pid| cpu_secs(&[pid])).unwrap_or(0.0);
    let killed_us = now_us();
    let killed = Instant::now();
    if scale_out {
        server.kill().await?;
    } else {
        server.restart().await?;
    }
    let up = killed.elapsed();
    let back =
        until(&mut workers, Duration::from_secs(60), |s| s.recovered + s.not_recovered >= count).await?;
    anyhow::ensure!(
        back.recovered + back.not_recovered >= count,
        "only {} of {count} subscribed again within 60 s ({} failed attempts: {:?})",
        back.recovered + back.not_recovered,
        back.failed_attempts,
        back.errors
    );
    let server_cpu = match other {
        Some(pid) => cpu_secs(&[pid]) - other_cpu0,
        None => cpu_secs(&[server.pid]),
    };
    let all_back_ms = (back.last_back_us - killed_us) as f64 / 1_000.0;
    eprintln!(
        "back: {} recovered, {} not, {} failed attempts {:?}; publishing 3 s more",
        back.recovered, back.not_recovered, back.failed_attempts, back.errors
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let published = publisher.await??;
    // Let the last ones arrive.
    let end = until(&mut workers, Duration::from_secs(10), |s| s.min_last == s.max_last).await?;
    for w in &mut workers {
        let _ = w.say("STOP").await;
    }
    server.stop().await;

    let (setup, cpu) = if scale_out {
        (
            "a broker, an engine, two gateways; the first gateway killed",
            "the other gateway's CPU, kill → all back",
        )
    } else {
        ("one node, killed and restarted on its store", "server CPU, start → all back")
    };
    println!(
        "storm: {count} subscribers of signals_premium, {setup}; {rate} signals/s published ({published} in all)"
    );
    println!(
        "| subscribers | node killed → accepting again | killed → all subscribed again | recovered: true | \
         not recovered | {cpu} | received twice | skipped | last seq, lowest / highest |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {count} | {} | {all_back_ms:.0} ms | {} | {} | {server_cpu:.2} s | {} | {} | {} / {} |",
        // Scale-out: the other gateway never stopped accepting.
        if scale_out { "–".to_owned() } else { format!("{:.0} ms", up.as_secs_f64() * 1e3) },
        back.recovered,
        back.not_recovered,
        end.duplicates - before.duplicates,
        end.gaps - before.gaps,
        end.min_last,
        end.max_last,
    );
    Ok(())
}
