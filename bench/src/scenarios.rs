//! The scenarios of `signalcast-bench` (its `main.rs` only reads the command line):
//! latency windows, fan-out steps, memory and connect rows, the stalled and soak runs,
//! the `compare` suite, and writing docs/PERFORMANCE.md from its results.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::report::{self, Results};
use crate::run::{self, Row, Session};
use crate::targets::{self, Target};

/// `soak`: steady and churning subscribers for `duration` seconds, per target.
#[allow(clippy::too_many_arguments)]
pub async fn soak(
    targets: Vec<Target>,
    connections: usize,
    churn: usize,
    rate: f64,
    duration: u64,
    sample: u64,
    processes: usize,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for t in targets {
        let steady = connections.saturating_sub(churn);
        let every = Duration::from_secs(sample.max(1));
        let r = run::soak(t, steady, churn, rate, Duration::from_secs(duration), every, processes).await?;
        println!("{}", soak_summary(&r, t));
        reports.push(r);
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
        println!("results: {}", path.display());
    }
    Ok(())
}

/// `stalled`: each target without and with `percent` of the subscribers never reading.
pub async fn stalled(
    results: &mut Results,
    targets: &[Target],
    processes: usize,
    subscribers: usize,
    percent: usize,
    rate: f64,
    duration: u64,
) {
    let stalled = subscribers * percent.min(100) / 100;
    let mut lines = vec![
        "| target | stalled | healthy | p50 ms | p99 ms | p99.9 ms | healthy loss | closed 4008 |".to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    for t in targets {
        let mut p99 = Vec::new();
        for stall in [0, stalled] {
            let row = stalled_window(*t, subscribers, stall, rate, duration, processes).await;
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
}

#[allow(clippy::too_many_arguments)]
pub async fn latency_windows(
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
pub fn soak_summary(r: &run::SoakReport, t: Target) -> String {
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
pub async fn stalled_window(
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

pub async fn fanout_steps(
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

pub async fn memory_rows(results: &mut Results, targets: &[Target], counts: &[usize], processes: usize) {
    for &t in targets {
        for &n in counts {
            match run::memory(t, n, processes).await {
                Ok(r) => results.memory.push(r),
                Err(e) => results.skipped.push((t, format!("memory {n}: {e:#}"))),
            }
        }
    }
}

pub async fn connect_rows(results: &mut Results, targets: &[Target], count: usize, processes: usize) {
    for &t in targets {
        match run::connect(t, count, processes).await {
            Ok(r) => results.connect.push(r),
            Err(e) => results.skipped.push((t, format!("connect: {e:#}"))),
        }
    }
}

pub async fn compare(results: &mut Results, targets: &[Target], processes: usize, suite: &str) {
    let full = suite == "full";
    let p = processes;
    for &t in targets {
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
    memory_rows(results, targets, counts, p).await;
    connect_rows(results, targets, if full { 5_000 } else { 1_000 }, p).await;
    results.machine = machine();
    results.date = today();
    results.versions = versions().await;
}

pub fn machine() -> String {
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

pub fn today() -> String {
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

pub async fn versions() -> Vec<(String, String)> {
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
    let ws = targets::peers_dir().join("node-ws/node_modules/ws/package.json");
    if let Some(version) = std::fs::read_to_string(ws)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|p| p["version"].as_str().map(str::to_owned))
    {
        v.push(("npm ws".to_owned(), version));
    }
    v
}

pub fn write_docs(results: &Results, docs: &std::path::Path, suite: &str) -> anyhow::Result<()> {
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
