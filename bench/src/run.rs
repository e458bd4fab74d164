//! Orchestration: start a target, fill worker processes with subscribers, publish at a
//! fixed rate, and account for every message, CPU second and byte of memory.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::stats::{self, Percentiles};
use crate::targets::{Endpoint, Mix, Publisher, Server, Target, bench_signal};
use crate::worker::{ClientMode, Ready, Report, WorkerSpec, histogram};

/// Connections per worker process at most: the descriptor limit is 20,000 per process.
pub const MAX_CONNS_PER_WORKER: usize = 15_000;

/// A client worker process (this binary's hidden `worker` or `storm-worker`), talked to
/// one line each way over stdin and stdout.
pub(crate) struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    /// A `worker` process for `spec`.
    fn start(exe: &std::path::Path, spec: &WorkerSpec) -> anyhow::Result<Self> {
        Self::spawn(exe, "worker", &serde_json::to_string(spec)?)
    }

    /// This binary's `command` with its JSON `spec`.
    pub(crate) fn spawn(exe: &std::path::Path, command: &str, spec: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args([command, spec])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        Ok(Self { child, stdin, lines })
    }

    /// Sends one command line.
    pub(crate) async fn say(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Its next line, `<prefix> {json}`, within `deadline`.
    pub(crate) async fn answer<T: serde::de::DeserializeOwned>(
        &mut self,
        prefix: &str,
        deadline: Duration,
    ) -> anyhow::Result<T> {
        let line = tokio::time::timeout(deadline, self.lines.next_line()).await??;
        let json = line.as_deref().and_then(|l| l.strip_prefix(prefix)?.strip_prefix(' '));
        Ok(serde_json::from_str(json.with_context(|| format!("no {prefix}"))?)?)
    }

    /// Its READY line, once it has connected.
    async fn ready(&mut self, deadline: Duration) -> anyhow::Result<Ready> {
        self.answer("READY", deadline).await
    }
}

/// Client worker processes holding the subscribers.
pub struct Workers {
    procs: Vec<Proc>,
    pub ready: Ready,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("processes", &self.procs.len()).field("ready", &self.ready).finish()
    }
}

/// How this run's subscribers and publisher behave (`--client`, `--filter`, `--deflate`,
/// `--mix`): set once from the command line, read by every window.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub client: ClientMode,
    /// signalcast targets: the filter each SUBSCRIBE carries.
    pub filter: Option<String>,
    /// signalcast targets: subscribers offer permessage-deflate (light client only).
    pub deflate: bool,
    /// What signalcast's publisher sends.
    pub mix: Mix,
    /// What the peers' and the reference's publishers send.
    pub peer_body: crate::targets::PeerBody,
    /// signalcast and the peers serve WSS (either client mode).
    pub tls: bool,
    /// signalcast takes the accounts sidecar's EdDSA tokens (PostgreSQL and the sidecar
    /// started beside it) instead of the embedded default's HS256 ones.
    pub accounts: bool,
}

static OPTIONS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();

/// Sets the run's options (the first call wins).
pub fn set_options(options: Options) -> anyhow::Result<()> {
    if options.deflate && options.client != ClientMode::Light {
        bail!("--deflate is measured with the light client (it inflates what it reads); drop --client");
    }
    let _ = OPTIONS.set(options);
    Ok(())
}

pub fn options() -> &'static Options {
    static DEFAULT: std::sync::OnceLock<Options> = std::sync::OnceLock::new();
    OPTIONS.get().unwrap_or_else(|| DEFAULT.get_or_init(Options::default))
}

impl Workers {
    /// `total` subscribers over `processes` processes (more if needed for the limit).
    pub async fn spawn(endpoint: &Endpoint, total: usize, processes: usize) -> anyhow::Result<Self> {
        Self::spawn_with_stalled(endpoint, total, 0, processes).await
    }

    /// As [`Workers::spawn`], with `stalled` of the `total` never reading after they
    /// subscribe (spread over the processes).
    pub async fn spawn_with_stalled(
        endpoint: &Endpoint,
        total: usize,
        stalled: usize,
        processes: usize,
    ) -> anyhow::Result<Self> {
        let n = processes.max(total.div_ceil(MAX_CONNS_PER_WORKER)).max(1);
        let exe = crate::targets::exe()?;
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let conns = total / n + usize::from(i < total % n);
            let stall = stalled / n + usize::from(i < stalled % n);
            let spec = WorkerSpec {
                endpoint: endpoint.clone(),
                conns,
                concurrency: 100,
                stalled: stall,
                churn: false,
                client: options().client,
                filter: options().filter.clone(),
                deflate: options().deflate,
            };
            procs.push(Proc::start(&exe, &spec)?);
        }
        let mut ready = Ready::default();
        let deadline = Duration::from_secs(60 + total as u64 / 100);
        for p in &mut procs {
            let r = p.ready(deadline).await.context("workers did not connect in time")?;
            ready.connected += r.connected;
            ready.stalled += r.stalled;
            ready.failed += r.failed;
            ready.connect_secs = ready.connect_secs.max(r.connect_secs);
            if ready.first_error.is_none() {
                ready.first_error = r.first_error;
            }
        }
        Ok(Self { procs, ready })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    async fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.say(cmd).await?;
        }
        Ok(())
    }

    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.send("RESET").await
    }

    /// Everything recorded since the last reset, merged over the workers.
    pub async fn report(&mut self, stop: bool) -> anyhow::Result<(Report, hdrhistogram::Histogram<u64>)> {
        self.send(if stop { "STOP" } else { "REPORT" }).await?;
        let mut total = Report::default();
        let mut hist = histogram();
        for p in &mut self.procs {
            let r: Report = p.answer("REPORT", Duration::from_secs(60)).await?;
            total.received += r.received;
            total.wire_bytes += r.wire_bytes;
            total.lost_conns += r.lost_conns;
            for (v, c) in r.hist {
                hist.record_n(v, c)?;
            }
        }
        Ok((total, hist))
    }

    pub async fn stop(mut self) {
        let _ = self.report(true).await;
        for p in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        }
    }
}

/// One measured window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub target: Target,
    pub subscribers: usize,
    /// Messages per second published.
    pub rate: f64,
    /// Bytes of each message's payload (the JSON text).
    pub size: usize,
    pub published: u64,
    pub expected: u64,
    pub received: u64,
    pub loss: u64,
    pub latency_us: Percentiles,
    pub deliveries_per_sec: f64,
    /// Server CPU seconds per delivery, in µs: how close it is to the kernel floor.
    pub server_us_per_delivery: f64,
    /// Share of one core used by the server and by the load clients in the window.
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// Bytes on the wire per delivered message (frame headers included, compressed
    /// frames as sent); 0 where the client does not count them (NATS, tungstenite).
    #[serde(default)]
    pub wire_bytes_per_delivery: f64,
    /// The server's resident memory at the end of the window (KiB).
    #[serde(default)]
    pub server_rss_kib: u64,
}

/// Progress on stderr (a bar for the publishing window).
pub fn progress(label: &str, done: u64, total: u64) {
    use std::io::Write;
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width) as usize;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r  {label:<40} [{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(width as usize - filled)
    );
    if done >= total {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

/// Publishes `rate` messages/s for `duration`; returns how many.
async fn publish_for(
    p: &mut Publisher,
    rate: f64,
    size: usize,
    duration: Duration,
    seq: &mut u64,
    label: &str,
) -> anyhow::Result<u64> {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let start = tokio::time::Instant::now();
    let mut last = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        *seq += 1;
        p.publish(*seq, size).await?;
        if !label.is_empty() && last.elapsed() > Duration::from_millis(250) {
            last = Instant::now();
            progress(label, i, total);
        }
    }
    if !label.is_empty() {
        progress(label, total, total);
    }
    p.flush().await?;
    Ok(total)
}

/// A target with its subscribers connected, ready for measured windows.
#[derive(Debug)]
pub struct Session {
    pub server: Server,
    pub workers: Workers,
    seq: u64,
}

impl Session {
    pub async fn open(target: Target, subscribers: usize, processes: usize) -> anyhow::Result<Self> {
        Self::open_with_stalled(target, subscribers, 0, processes).await
    }

    /// A session where `stalled` of the subscribers never read after subscribing.
    pub async fn open_with_stalled(
        target: Target,
        subscribers: usize,
        stalled: usize,
        processes: usize,
    ) -> anyhow::Result<Self> {
        let server = Server::start(target).await?;
        let workers = Workers::spawn_with_stalled(&server.endpoint, subscribers, stalled, processes).await?;
        if workers.ready.connected == 0 {
            bail!("{}: no subscriber connected: {:?}", target.name(), workers.ready.first_error);
        }
        server.settle(workers.ready.connected).await;
        Ok(Self { server, workers, seq: 0 })
    }

    /// Warm up, then measure one window at `rate` msgs/s of `size` bytes.
    pub async fn window(
        &mut self,
        scenario: &str,
        rate: f64,
        size: usize,
        duration: Duration,
        warmup: Duration,
    ) -> anyhow::Result<Row> {
        let target = self.server.target;
        // Every target gets messages of the size signalcast's clients see.
        let mix = options().mix;
        let size = match mix {
            Mix::Padded => bench_signal(size).1,
            Mix::Fixtures => crate::targets::fixture_mix().1,
        };
        let actual_size = size;
        let mut publisher = Publisher::connect(&self.server, size, mix).await?;
        if !warmup.is_zero() {
            publish_for(&mut publisher, rate, size, warmup, &mut self.seq, "").await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.workers.reset().await?;
        let pids = [self.server.pid];
        let clients = self.workers.pids();
        let (s0, c0, t0) = (stats::cpu_secs(&pids), stats::cpu_secs(&clients), Instant::now());
        let label =
            format!("{scenario} {} {}x{rate}/s {actual_size}B", target.name(), self.workers.ready.connected);
        let published = publish_for(&mut publisher, rate, size, duration, &mut self.seq, &label).await?;
        // Let the last messages arrive: a loss is what has not arrived after 2 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let (s1, c1) = (stats::cpu_secs(&pids), stats::cpu_secs(&clients));
        let server_rss_kib = stats::rss_kib(self.server.pid);
        let (report, hist) = self.workers.report(false).await?;
        // Stalled subscribers are not expected to receive: the rows are the healthy ones.
        let subscribers = self.workers.ready.connected - self.workers.ready.stalled;
        let expected = published * subscribers as u64;
        let server_secs = s1 - s0;
        Ok(Row {
            scenario: scenario.into(),
            target,
            subscribers,
            rate,
            size: actual_size,
            published,
            expected,
            received: report.received,
            loss: expected.saturating_sub(report.received),
            latency_us: Percentiles::of(&hist),
            deliveries_per_sec: report.received as f64 / duration.as_secs_f64(),
            server_us_per_delivery: if report.received > 0 {
                server_secs * 1e6 / report.received as f64
            } else {
                0.0
            },
            server_cpu: server_secs / elapsed,
            client_cpu: (c1 - c0) / elapsed,
            wire_bytes_per_delivery: if report.received > 0 {
                report.wire_bytes as f64 / report.received as f64
            } else {
                0.0
            },
            server_rss_kib,
        })
    }

    pub async fn close(self) {
        self.workers.stop().await;
        self.server.stop().await;
    }
}

impl Workers {
    /// `total` connections that keep closing and reconnecting (see the worker's churn).
    pub async fn spawn_churn(endpoint: &Endpoint, total: usize) -> anyhow::Result<Self> {
        let spec = WorkerSpec {
            endpoint: endpoint.clone(),
            conns: total,
            concurrency: 100,
            stalled: 0,
            churn: true,
            client: ClientMode::Light,
            filter: options().filter.clone(),
            deflate: false,
        };
        let mut p = Proc::start(&crate::targets::exe()?, &spec)?;
        let ready = p.ready(Duration::from_secs(120)).await?;
        Ok(Self { procs: vec![p], ready })
    }
}

/// One sample of a soak: the server's resident memory and descriptors at `secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakSample {
    pub secs: u64,
    pub rss_kib: u64,
    pub fds: u64,
}

/// A soak: steady subscribers that must miss nothing, churning connections beside
/// them, signals at a steady rate; the server sampled throughout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakReport {
    pub steady: usize,
    pub churning: usize,
    pub reconnects: u64,
    pub window: Row,
    pub samples: Vec<SoakSample>,
}

pub async fn soak(
    target: Target,
    steady: usize,
    churning: usize,
    rate: f64,
    duration: Duration,
    sample_every: Duration,
    processes: usize,
) -> anyhow::Result<SoakReport> {
    let mut session = Session::open(target, steady, processes).await?;
    let mut churn = Workers::spawn_churn(&session.server.endpoint, churning).await?;
    let pid = session.server.pid;
    let started = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(sample_every);
        loop {
            tick.tick().await;
            samples.push(SoakSample {
                secs: started.elapsed().as_secs(),
                rss_kib: stats::rss_kib(pid),
                fds: stats::fds(pid),
            });
            if started.elapsed() >= duration {
                return samples;
            }
        }
    });
    let window = session.window("soak", rate, 0, duration, Duration::ZERO).await;
    let samples = sampler.await.unwrap_or_default();
    let (churned, _) = churn.report(true).await?;
    session.close().await;
    Ok(SoakReport { steady, churning, reconnects: churned.received, window: window?, samples })
}

/// Server memory per idle subscriber at `count` subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryRow {
    pub target: Target,
    pub connections: usize,
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    pub kib_per_connection: f64,
}

pub async fn memory(target: Target, count: usize, processes: usize) -> anyhow::Result<MemoryRow> {
    let server = Server::start(target).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = stats::rss_kib(server.pid);
    let workers = Workers::spawn(&server.endpoint, count, processes).await?;
    server.settle(workers.ready.connected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = stats::rss_kib(server.pid);
    let n = workers.ready.connected;
    workers.stop().await;
    server.stop().await;
    Ok(MemoryRow {
        target,
        connections: n,
        rss_idle_kib: idle,
        rss_kib: rss,
        kib_per_connection: rss.saturating_sub(idle) as f64 / n.max(1) as f64,
    })
}

/// Connections established (upgraded and subscribed) per second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectRow {
    pub target: Target,
    pub connections: usize,
    pub failed: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Server CPU per connection, µs (accept to subscribed; the clients' process start
    /// falls in the same span, the server is idle for it).
    #[serde(default)]
    pub server_us_per_connection: f64,
}

pub async fn connect(target: Target, count: usize, processes: usize) -> anyhow::Result<ConnectRow> {
    let server = Server::start(target).await?;
    let cpu0 = stats::cpu_secs(&[server.pid]);
    let workers = Workers::spawn(&server.endpoint, count, processes).await?;
    let server_secs = stats::cpu_secs(&[server.pid]) - cpu0;
    let r = workers.ready.clone();
    workers.stop().await;
    server.stop().await;
    Ok(ConnectRow {
        target,
        connections: r.connected,
        failed: r.failed,
        seconds: r.connect_secs,
        per_second: r.connected as f64 / r.connect_secs.max(1e-9),
        server_us_per_connection: server_secs * 1e6 / r.connected.max(1) as f64,
    })
}
