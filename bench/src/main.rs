//! `signalcast-bench`: latency, fan-out, memory and connect scenarios, and `compare`.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;

use bench::report::{self, Results};
use bench::scenarios;
use bench::targets::Target;
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
    /// signalcast targets: the filter each subscriber's SUBSCRIBE carries (JSON, as in
    /// docs/protocol.md), e.g. '{"min_confidence":75}' (matches everything) or
    /// '{"symbols":["RELIANCE"]}'. Other targets ignore it.
    #[arg(long, value_parser = json_object)]
    filter: Option<String>,
    /// signalcast targets: subscribers offer permessage-deflate (as browsers and Python
    /// `websockets` do) and inflate what comes compressed (with context takeover, when
    /// the server opted in, each connection keeps its window). Light client only.
    /// (Every light-client row reports WebSocket frame bytes per delivery; under
    /// `--tls` each TLS record adds 22 bytes to that.)
    #[arg(long)]
    deflate: bool,
    /// What signalcast's publisher sends: `padded` (one signal padded to the size) or
    /// `fixtures` (the embedded fixtures' signals in turn, with market snapshots: the
    /// mix compression is measured on).
    #[arg(long, value_enum, default_value = "padded")]
    mix: bench::targets::Mix,
    /// What the peers and the reference send: `pad` (a small JSON envelope padded to the
    /// size, the default) or `signal` (the bytes of signalcast's SIGNAL_UPDATE of the
    /// padded mix, market snapshot and all, with their own seq and send time): the same
    /// work for clients that parse every message, whichever server they read.
    #[arg(long, value_enum, default_value = "pad")]
    peer_body: bench::targets::PeerBody,
    /// signalcast and the peers serve WSS (TLS 1.3, a certificate made for the run;
    /// nginx on 8092) and subscribers connect through rustls, a full handshake each.
    /// Either client mode; not the reference or signalcast-kafka.
    #[arg(long)]
    tls: bool,
    /// signalcast authenticates on the accounts sidecar, as a deployment does:
    /// PostgreSQL (initdb) and `signalcast-accounts` start beside it, and every client
    /// presents an EdDSA access token from a login (the embedded default's are HS256).
    /// Needs `cargo build --release -p signalcast-accounts`.
    #[arg(long)]
    accounts: bool,
}

/// A JSON object, as written.
fn json_object(s: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(_)) => Ok(s.to_owned()),
        Ok(_) => Err("a filter is a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
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
    /// What the signal store costs producers: acknowledged signals/s over the TCP feed,
    /// ACK latency at 1,000/s, and HTTP ingest signals/s over keep-alive.
    Ingest {
        /// Signals for the throughput runs.
        #[arg(long, default_value_t = 200_000)]
        signals: u64,
        /// Signals per HTTP request (JSON lines).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// What a market tick costs the server: ticks at `rate` over the TCP feed, over
    /// `symbols` symbols, with `subscribers` price subscribers watching `watch` symbols
    /// each at `max_frequency`: server CPU per tick taken, price deliveries/s.
    Ticks {
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        #[arg(long, default_value_t = 1_000)]
        symbols: usize,
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        watch: usize,
        /// Updates per second per symbol (1, 2, 5, 10, 25, 50; the bench user is premium:
        /// at most 50).
        #[arg(long, default_value_t = 1)]
        max_frequency: u32,
        /// Seconds measured (after one of warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// A reconnect storm: `count` subscribers on one node (store on) while signals are
    /// published at `rate`; the node is killed and started again, every subscriber
    /// reconnects at once with since/epoch: the time until all are back, recovered or
    /// not, server CPU, and any seq received twice or skipped.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Client worker processes (at least one per 15,000 connections).
        #[arg(long, default_value_t = 2)]
        processes: usize,
        /// Signals per second published throughout (each goes to every subscriber: at
        /// 10,000 subscribers, 5/s is 50,000 deliveries a second).
        #[arg(long, default_value_t = 5)]
        rate: u64,
        /// A broker, an engine node and two gateways (tansu on PATH or in cargo's bin):
        /// the gateway the subscribers are on is killed, they move to the other.
        #[arg(long)]
        scale_out: bool,
    },
    /// (internal) a storm's client worker process.
    #[command(hide = true)]
    StormWorker { spec: String },
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
            scenarios::write_docs(&results, &docs, &suite)
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
                // The store is on, as in production; a fresh one per server unless given.
                if std::env::var_os("SIGNALCAST_STORE__DATA_DIR").is_none() {
                    let dir =
                        std::env::temp_dir().join(format!("signalcast-bench-data-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    config.store.data_dir = dir;
                }
                let _running = gateway::start(config).await?;
                std::future::pending::<()>().await;
                Ok(())
            })
        }
        Cmd::Ingest { signals, batch } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bench::ingest::run(signals, batch)),
        Cmd::StormWorker { spec } => bench::storm::worker(serde_json::from_str(&spec)?),
        Cmd::Storm { count, processes, rate, scale_out } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bench::storm::run(count, processes, rate, scale_out)),
        Cmd::Ticks { rate, symbols, subscribers, watch, max_frequency, duration } => {
            let spec = bench::ticks::Spec { rate, symbols, subscribers, watch, max_frequency, duration };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(bench::ticks::run(spec))
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
        bench::run::set_options(bench::run::Options {
            client: common.client,
            filter: common.filter.clone(),
            deflate: common.deflate,
            mix: common.mix,
            peer_body: common.peer_body,
            tls: common.tls,
            accounts: common.accounts,
        })?;
    }
    let json = match cmd {
        Cmd::Soak { targets, connections, churn, rate, duration, sample, processes, json } => {
            return scenarios::soak(targets, connections, churn, rate, duration, sample, processes, json)
                .await;
        }
        Cmd::Stalled { common, subscribers, percent, rate, duration } => {
            scenarios::stalled(
                &mut results,
                &common.targets,
                common.processes,
                subscribers,
                percent,
                rate,
                duration,
            )
            .await;
            common.json
        }
        Cmd::Latency { common, subscribers, rates, sizes, duration, warmup } => {
            for t in &common.targets {
                scenarios::latency_windows(
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
                scenarios::fanout_steps(
                    &mut results,
                    *t,
                    subscribers,
                    &rates,
                    size,
                    duration,
                    common.processes,
                )
                .await;
            }
            println!("{}", report::fanout_summary(&results.windows));
            println!("{}", report::windows_table(&results.windows));
            common.json
        }
        Cmd::Memory { common, counts } => {
            scenarios::memory_rows(&mut results, &common.targets, &counts, common.processes).await;
            println!("{}", report::memory_table(&results.memory));
            common.json
        }
        Cmd::Connect { common, count } => {
            scenarios::connect_rows(&mut results, &common.targets, count, common.processes).await;
            println!("{}", report::connect_table(&results.connect));
            common.json
        }
        Cmd::Compare { common, suite, docs } => {
            scenarios::compare(&mut results, &common.targets, common.processes, &suite).await;
            scenarios::write_docs(&results, &docs, &suite)?;
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
