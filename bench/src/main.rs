//! `signalcast-bench`: latency, fan-out, memory and connect scenarios, and `compare`.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bench::report::{self, Results};
use bench::run::{self, Row, Session};
use bench::targets::{self, Target};
use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure signalcast against its peers on this machine: every loop bounded in count
/// and time, loopback only.
#[derive(Parser, Debug)]
#[command(name = "signalcast-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Targets to measure (peers must be installed: bench/peers/peers.sh install).
    #[arg(long, value_delimiter = ',', default_values = ["signalcast", "reference", "node-ws", "nats", "nchan"])]
    targets: Vec<Target>,
    /// Client worker processes (more are added to stay under 15,000 connections each).
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The subscribers: `light` (the bench's minimal client) or `tungstenite`
    /// (tokio-tungstenite, JSON parsed per message, as real Rust clients are).
    #[arg(long, value_enum, default_value = "light")]
    client: bench::worker::ClientMode,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fixed publish rates x message sizes with N subscribers: latency percentiles.
    Latency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        #[arg(long, value_delimiter = ',', default_values = ["100", "1000", "10000"])]
        rates: Vec<f64>,
        /// Message sizes in bytes; 0 is signalcast's natural SIGNAL_UPDATE (~700 B).
        #[arg(long, value_delimiter = ',', default_values = ["0", "1024"])]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// N subscribers, stepped rates: deliveries/s, loss, p99, server CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, value_delimiter = ',', default_values = ["1", "5", "10", "20", "50", "100"])]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 0)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Server RSS per idle subscribed connection.
    Memory {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_values = ["1000", "5000", "10000"])]
        counts: Vec<usize>,
    },
    /// Connections established (upgraded and subscribed) per second.
    Connect {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5_000)]
        count: usize,
    },
    /// Slow consumers: the same window without and with a share of subscribers that
    /// never read; the healthy ones' latency, and how many stalled ones signalcast closed
    /// with 4008. Small buffers make the bound arrive within the window, e.g.
    /// SIGNALCAST_OUTBOUND_BUFFER_BYTES=262144 SIGNALCAST_SOCKET_SEND_BUFFER=16384.
    Stalled {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Share of the subscribers that stall, in percent.
        #[arg(long, default_value_t = 10)]
        percent: usize,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
    /// Soak: `connections` subscribers, `churn` of them closing and reconnecting all the
    /// time, signals at `rate` for `duration` seconds; server RSS and descriptors sampled.
    /// The steady subscribers must miss nothing; RSS and descriptors must not grow past
    /// the plateau of the first fifth of the run (the first 5 minutes of 30).
    Soak {
        #[arg(long, value_delimiter = ',', default_values = ["signalcast"])]
        targets: Vec<Target>,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1_000)]
        churn: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 1_800)]
        duration: u64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 10)]
        sample: u64,
        #[arg(long, default_value_t = 2)]
        processes: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a suite over every available target; write docs/perf/ and PERFORMANCE.md.
    Compare {
        #[command(flatten)]
        common: Common,
        /// `quick` (a few minutes) or `full` (the figures of docs/PERFORMANCE.md).
        #[arg(long, default_value = "quick")]
        suite: String,
        /// The docs folder to write into.
        #[arg(long, default_value = "docs")]
        docs: PathBuf,
    },
    /// Rewrite docs/PERFORMANCE.md and docs/perf/ charts from a saved results file.
    Report {
        /// A results JSON written by `compare`.
        #[arg(long, default_value = "docs/perf/results.json")]
        from: PathBuf,
        #[arg(long, default_value = "full")]
        suite: String,
        #[arg(long, default_value = "docs")]
        docs: PathBuf,
    },
    /// (internal) signalcast on the given addresses, embedded default (plus any
    /// SIGNALCAST_* variables), no demo.
    #[command(hide = true)]
    ServeSignalcast {
        #[arg(long)]
        ws: SocketAddr,
        #[arg(long)]
        publish: SocketAddr,
    },
    /// (internal) the raw pre-framed broadcast reference.
    #[command(hide = true)]
    ServeReference {
        #[arg(long)]
        ws: SocketAddr,
        #[arg(long)]
        publish: SocketAddr,
        #[arg(long, default_value_t = 2)]
        shards: usize,
    },
    /// (internal) a client worker process.
    #[command(hide = true)]
    Worker { spec: String },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Worker { spec } => bench::worker::run(serde_json::from_str(&spec)?),
        Cmd::Report { from, suite, docs } => {
            let results: Results = serde_json::from_str(&std::fs::read_to_string(&from)?)?;
            write_docs(&results, &docs, &suite)
        }
        Cmd::ServeReference { ws, publish, shards } => {
            bench::reference::serve(
                std::net::TcpListener::bind(ws)?,
                std::net::TcpListener::bind(publish)?,
                shards,
            )?;
            Ok(())
        }
        Cmd::ServeSignalcast { ws, publish } => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
                // SIGNALCAST_* variables apply (e.g. SIGNALCAST_SHARDS=1 to compare).
                let mut config = gateway::Config::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
                config.listen = ws.to_string();
                config.feed_listen = publish.to_string();
                config.demo.enabled = false;
                let _running = gateway::start(config).await?;
                std::future::pending::<()>().await;
                Ok(())
            })
        }
        cmd => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(orchestrate(cmd)),
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

async fn orchestrate(cmd: Cmd) -> anyhow::Result<()> {
    let mut results = Results { command: command_line(), ..Results::default() };
    if let Cmd::Stalled { common, .. }
    | Cmd::Latency { common, .. }
    | Cmd::Fanout { common, .. }
    | Cmd::Memory { common, .. }
    | Cmd::Connect { common, .. }
    | Cmd::Compare { common, .. } = &cmd
    {
        bench::run::set_client_mode(common.client);
    }
    let json = match cmd {
        Cmd::Soak { targets, connections, churn, rate, duration, sample, processes, json } => {
            let mut reports = Vec::new();
            for t in targets {
                let steady = connections.saturating_sub(churn);
                let every = Duration::from_secs(sample.max(1));
                let r = run::soak(t, steady, churn, rate, Duration::from_secs(duration), every, processes)
                    .await?;
                println!("{}", soak_summary(&r, t));
                reports.push(r);
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
                println!("results: {}", path.display());
            }
            return Ok(());
        }
        Cmd::Stalled { common, subscribers, percent, rate, duration } => {
            let stalled = subscribers * percent.min(100) / 100;
            let mut lines = vec![
                "| target | stalled | healthy | p50 ms | p99 ms | p99.9 ms | healthy loss | closed 4008 |"
                    .to_owned(),
                "|---|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
            ];
            for t in &common.targets {
                let mut p99 = Vec::new();
                for stall in [0, stalled] {
                    let row = stalled_window(*t, subscribers, stall, rate, duration, common.processes).await;
                    match row {
                        Ok((row, closed)) => {
                            let ms = |us: u64| us as f64 / 1000.0;
                            lines.push(format!(
                                "| {} | {stall} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                                t.name(),
                                row.subscribers,
                                ms(row.latency_us.p50),
                                ms(row.latency_us.p99),
                                ms(row.latency_us.p999),
                                row.loss,
                                closed.map_or("–".to_owned(), |c| format!("{c:.0}")),
                            ));
                            p99.push(row.latency_us.p99 as f64);
                            results.windows.push(row);
                        }
                        Err(e) => results.skipped.push((*t, format!("stalled {stall}: {e:#}"))),
                    }
                }
                if let [base, with] = p99[..] {
                    lines.push(format!(
                        "| {} | p99 with ÷ without: {:.2} | | | | | | |",
                        t.name(),
                        with / base.max(1.0)
                    ));
                }
            }
            println!("{}", lines.join("\n"));
            common.json
        }
        Cmd::Latency { common, subscribers, rates, sizes, duration, warmup } => {
            for t in &common.targets {
                latency_windows(
                    &mut results,
                    *t,
                    subscribers,
                    &rates,
                    &sizes,
                    duration,
                    warmup,
                    common.processes,
                )
                .await;
            }
            println!("{}", report::windows_table(&results.windows));
            println!("{}", report::ratios(&results.windows));
            common.json
        }
        Cmd::Fanout { common, subscribers, rates, size, duration } => {
            for t in &common.targets {
                fanout_steps(&mut results, *t, subscribers, &rates, size, duration, common.processes).await;
            }
            println!("{}", report::fanout_summary(&results.windows));
            println!("{}", report::windows_table(&results.windows));
            common.json
        }
        Cmd::Memory { common, counts } => {
            memory_rows(&mut results, &common.targets, &counts, common.processes).await;
            println!("{}", report::memory_table(&results.memory));
            common.json
        }
        Cmd::Connect { common, count } => {
            connect_rows(&mut results, &common.targets, count, common.processes).await;
            println!("{}", report::connect_table(&results.connect));
            common.json
        }
        Cmd::Compare { common, suite, docs } => {
            compare(&mut results, &common, &suite).await;
            write_docs(&results, &docs, &suite)?;
            Some(common.json.unwrap_or_else(|| docs.join("perf/results.json")))
        }
        _ => None,
    };
    for (t, why) in &results.skipped {
        eprintln!("skipped {}: {why}", t.name());
    }
    if let Some(path) = json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
        eprintln!("results: {}", path.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn latency_windows(
    results: &mut Results,
    target: Target,
    subscribers: usize,
    rates: &[f64],
    sizes: &[usize],
    duration: u64,
    warmup: u64,
    processes: usize,
) {
    let mut session = match Session::open(target, subscribers, processes).await {
        Ok(s) => s,
        Err(e) => return results.skipped.push((target, format!("{e:#}"))),
    };
    for &size in sizes {
        for &rate in rates {
            match session
                .window("latency", rate, size, Duration::from_secs(duration), Duration::from_secs(warmup))
                .await
            {
                Ok(row) => results.windows.push(row),
                Err(e) => results.skipped.push((target, format!("latency {rate}/s: {e:#}"))),
            }
        }
    }
    session.close().await;
}

/// The soak's verdict: loss of the steady subscribers, and RSS and descriptors after the
/// first fifth of the run against that first fifth's plateau.
fn soak_summary(r: &run::SoakReport, t: Target) -> String {
    let cut = r.samples.last().map_or(0, |s| s.secs) / 5;
    let (early, late): (Vec<_>, Vec<_>) = r.samples.iter().partition(|s| s.secs <= cut);
    let max =
        |v: &[&run::SoakSample], f: fn(&run::SoakSample) -> u64| v.iter().map(|s| f(s)).max().unwrap_or(0);
    let (rss0, rss1) = (max(&early, |s| s.rss_kib), max(&late, |s| s.rss_kib));
    let (fd0, fd1) = (max(&early, |s| s.fds), max(&late, |s| s.fds));
    let mut out = vec![
        format!(
            "soak {}: {} steady + {} churning connections, {} reconnects, {} msgs/s for {} s",
            t.name(),
            r.steady,
            r.churning,
            r.reconnects,
            r.window.rate,
            r.samples.last().map_or(0, |s| s.secs)
        ),
        format!(
            "steady subscribers: {} of {} expected deliveries, loss {}; p99 {:.2} ms",
            r.window.received,
            r.window.expected,
            r.window.loss,
            r.window.latency_us.p99 as f64 / 1000.0
        ),
        format!(
            "RSS: plateau (first {cut} s) {rss0} KiB, after it at most {rss1} KiB ({:+.1}%); descriptors {fd0} -> at most {fd1}",
            (rss1 as f64 / rss0.max(1) as f64 - 1.0) * 100.0
        ),
        "| s | RSS KiB | descriptors |".to_owned(),
        "|---:|---:|---:|".to_owned(),
    ];
    let step = (r.samples.len() / 12).max(1);
    for s in r.samples.iter().step_by(step) {
        out.push(format!("| {} | {} | {} |", s.secs, s.rss_kib, s.fds));
    }
    out.join("\n")
}

/// One window with `stalled` of `subscribers` never reading; for signalcast, how many
/// connections it closed with 4008 by the end.
async fn stalled_window(
    target: Target,
    subscribers: usize,
    stalled: usize,
    rate: f64,
    duration: u64,
    processes: usize,
) -> anyhow::Result<(Row, Option<f64>)> {
    let mut session = Session::open_with_stalled(target, subscribers, stalled, processes).await?;
    let scenario = format!("stalled-{stalled}");
    let row = session.window(&scenario, rate, 0, Duration::from_secs(duration), Duration::from_secs(2)).await;
    let closed = if target.is_signalcast() {
        targets::metric(session.server.endpoint.addr, "signalcast_slow_consumer_closes_total").await.ok()
    } else {
        None
    };
    session.close().await;
    Ok((row?, closed))
}

async fn fanout_steps(
    results: &mut Results,
    target: Target,
    subscribers: usize,
    rates: &[f64],
    size: usize,
    duration: u64,
    processes: usize,
) {
    let mut session = match Session::open(target, subscribers, processes).await {
        Ok(s) => s,
        Err(e) => return results.skipped.push((target, format!("{e:#}"))),
    };
    for &rate in rates {
        match session
            .window("fanout", rate, size, Duration::from_secs(duration), Duration::from_secs(1))
            .await
        {
            Ok(row) => results.windows.push(row),
            Err(e) => {
                results.skipped.push((target, format!("fanout {rate}/s: {e:#}")));
                break;
            }
        }
    }
    session.close().await;
}

async fn memory_rows(results: &mut Results, targets: &[Target], counts: &[usize], processes: usize) {
    for &t in targets {
        for &n in counts {
            match run::memory(t, n, processes).await {
                Ok(r) => results.memory.push(r),
                Err(e) => results.skipped.push((t, format!("memory {n}: {e:#}"))),
            }
        }
    }
}

async fn connect_rows(results: &mut Results, targets: &[Target], count: usize, processes: usize) {
    for &t in targets {
        match run::connect(t, count, processes).await {
            Ok(r) => results.connect.push(r),
            Err(e) => results.skipped.push((t, format!("connect: {e:#}"))),
        }
    }
}

async fn compare(results: &mut Results, common: &Common, suite: &str) {
    let full = suite == "full";
    let p = common.processes;
    for &t in &common.targets {
        // The reference figures of docs/PERFORMANCE.md, "The floor": 1k x 50/s, 5k x 10/s, 10k x 20/s.
        let configs: &[(usize, f64)] =
            if full { &[(1_000, 50.0), (5_000, 10.0), (10_000, 20.0)] } else { &[(1_000, 50.0)] };
        for &(n, rate) in configs {
            latency_windows(results, t, n, &[rate], &[0], if full { 10 } else { 5 }, 2, p).await;
        }
        let rates: &[f64] = if full { &[100.0, 1_000.0, 10_000.0] } else { &[1_000.0] };
        latency_windows(
            results,
            t,
            if full { 100 } else { 50 },
            rates,
            &[0, 1024],
            if full { 10 } else { 5 },
            2,
            p,
        )
        .await;
        let steps: &[f64] = if full { &[1.0, 5.0, 10.0, 20.0, 50.0, 100.0] } else { &[10.0, 50.0] };
        fanout_steps(results, t, if full { 10_000 } else { 2_000 }, steps, 0, if full { 10 } else { 5 }, p)
            .await;
    }
    let counts: &[usize] = if full { &[1_000, 5_000, 10_000] } else { &[1_000] };
    memory_rows(results, &common.targets, counts, p).await;
    connect_rows(results, &common.targets, if full { 5_000 } else { 1_000 }, p).await;
    results.machine = machine();
    results.date = today();
    results.versions = versions().await;
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    format!(
        "{cores} × {cpu}, {:.0} GiB RAM, Linux {}",
        mem as f64 / 1_048_576.0,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    )
}

fn today() -> String {
    let days = engine::model::UnixNanos::now().0 / 86_400_000_000_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

async fn versions() -> Vec<(String, String)> {
    let run = |cmd: &'static str, args: &'static [&'static str]| async move {
        let out = tokio::process::Command::new(cmd).args(args).output().await.ok()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Some(text.lines().next().unwrap_or("").trim().to_owned())
    };
    let mut v = vec![("signalcast".to_owned(), env!("CARGO_PKG_VERSION").to_owned())];
    for (name, cmd, args) in [
        ("nats-server", "nats-server", &["--version"][..]),
        ("nginx (nchan module)", "nginx", &["-v"][..]),
        ("node", "node", &["--version"][..]),
    ] {
        if let Some(s) = run(cmd, args).await {
            v.push((name.to_owned(), s));
        }
    }
    let ws = bench::targets::peers_dir().join("node-ws/node_modules/ws/package.json");
    if let Some(version) = std::fs::read_to_string(ws)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|p| p["version"].as_str().map(str::to_owned))
    {
        v.push(("npm ws".to_owned(), version));
    }
    v
}

fn write_docs(results: &Results, docs: &std::path::Path, suite: &str) -> anyhow::Result<()> {
    let perf = docs.join("perf");
    std::fs::create_dir_all(&perf)?;
    let mut body = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        body,
        "## Side by side: signalcast and its peers (`compare --suite {suite}`), {}\n",
        results.date
    );
    let _ = writeln!(body, "Machine: {}. Server and load clients share these cores.\n", results.machine);
    let _ = writeln!(body, "Command: `{}`\n", results.command);
    let _ = writeln!(
        body,
        "Versions: {}\n",
        results.versions.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; ")
    );
    let _ = writeln!(
        body,
        "Latency is producer send time (stamped into the message) to client receipt, CLOCK_REALTIME µs; loss is what had not arrived 2 s after the last publish. Every target gets messages of the same size (signalcast's SIGNAL_UPDATE; `1024` pads it with `analysis`). signalcast clients are JWT-authenticated premium users with category masks and daily quotas in force.\n"
    );
    let latency: Vec<Row> = results.windows.iter().filter(|r| r.scenario == "latency").cloned().collect();
    let fanout: Vec<Row> = results.windows.iter().filter(|r| r.scenario == "fanout").cloned().collect();
    let _ = writeln!(
        body,
        "### Latency\n\n{}\n### Ratios\n\n{}",
        report::windows_table(&latency),
        report::ratios(&latency)
    );
    let mut configs: Vec<(usize, u64, usize)> =
        latency.iter().map(|r| (r.subscribers, r.rate as u64, r.size)).collect();
    configs.sort_unstable();
    configs.dedup();
    for (n, rate, size) in configs {
        let rows: Vec<&Row> = latency
            .iter()
            .filter(|r| r.subscribers == n && r.rate as u64 == rate && r.size == size)
            .collect();
        let name = format!("latency-{n}x{rate}-{size}b.svg");
        report::latency_chart(
            &perf.join(&name),
            &format!("{n} subscribers x {rate} msgs/s, {size} B"),
            &rows,
        )?;
        let _ = writeln!(body, "![latency {n}x{rate}](perf/{name})\n");
    }
    if !fanout.is_empty() {
        let _ = writeln!(
            body,
            "### Fan-out\n\n{}\n{}",
            report::fanout_summary(&fanout),
            report::windows_table(&fanout)
        );
        report::fanout_chart(
            &perf.join("fanout-deliveries.svg"),
            "deliveries per second",
            "deliveries/s",
            &fanout,
            |r| r.deliveries_per_sec,
        )?;
        report::fanout_chart(&perf.join("fanout-p99.svg"), "p99 latency", "p99 ms", &fanout, |r| {
            r.latency_us.p99 as f64 / 1000.0
        })?;
        report::fanout_chart(
            &perf.join("fanout-cpu.svg"),
            "server CPU per delivery",
            "µs per delivery",
            &fanout,
            |r| r.server_us_per_delivery,
        )?;
        let _ = writeln!(
            body,
            "![deliveries](perf/fanout-deliveries.svg)\n\n![p99](perf/fanout-p99.svg)\n\n![cpu](perf/fanout-cpu.svg)\n"
        );
    }
    if !results.memory.is_empty() {
        report::memory_chart(&perf.join("memory.svg"), &results.memory)?;
        let _ = writeln!(
            body,
            "### Memory per idle connection\n\n{}\n![memory](perf/memory.svg)\n",
            report::memory_table(&results.memory)
        );
    }
    if !results.connect.is_empty() {
        let _ = writeln!(body, "### Connections per second\n\n{}", report::connect_table(&results.connect));
    }
    if !results.skipped.is_empty() {
        let _ = writeln!(body, "### Not measured\n");
        for (t, why) in &results.skipped {
            let _ = writeln!(body, "- {}: {why}", t.name());
        }
    }
    let doc_path = docs.join("PERFORMANCE.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    std::fs::write(&doc_path, report::splice(&doc, &body)).context("writing PERFORMANCE.md")?;
    eprintln!("wrote {} and charts in {}", doc_path.display(), perf.display());
    Ok(())
}
