//! `signalcast`: the one binary. `serve` (default), `token`, `produce`, `version`.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::feed::{Producer, ProducerConfig};
use engine::model::{Tier, UnixNanos};
use gateway::Config;
use gateway::demo::{Event, Ids, Pace, replay};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Low-latency trading-signal distribution: producers in over TCP, trading clients out
/// over WebSocket, each seeing what their tier entitles them to.
#[derive(Parser, Debug, Clone)]
#[command(name = "signalcast", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Without one, every default applies: the embedded
    /// default (127.0.0.1, fixtures, demo producer).
    #[arg(long, short, env = "SIGNALCAST_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Run the server (the default).
    Serve {
        /// Take tokens and live entitlements from the accounts sidecar at this URL
        /// (http://host:port) instead of the fixture accounts.
        #[arg(long, env = "SIGNALCAST_AUTH__ACCOUNTS_URL")]
        accounts_url: Option<String>,
        /// The bearer token the sidecar expects from gateways.
        #[arg(long, env = "SIGNALCAST_AUTH__ACCOUNTS_GATEWAY_TOKEN", hide_env_values = true)]
        accounts_gateway_token: Option<String>,
        /// What this node runs: all (default, one node), engine or gateway (scale-out on
        /// Kafka; see docs/deploy.md).
        #[arg(long, value_enum, env = "SIGNALCAST_ROLE")]
        role: Option<gateway::config::Role>,
        /// Kafka bootstrap servers (host:port,…): consume raw-signals and market-data,
        /// and with --role engine|gateway scale out on signals.<tier>.
        #[arg(long, env = "SIGNALCAST_KAFKA__BROKERS")]
        kafka_brokers: Option<String>,
        /// Where a single node keeps its signal store (default: signalcast-data under
        /// the working directory). One process per directory.
        #[arg(long, env = "SIGNALCAST_STORE__DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Mint a dev token (HS256, embedded default) for a fixture user.
    Token {
        /// User id from the accounts file, e.g. u-premium-1.
        #[arg(long, short)]
        user: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs, 24 h).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Replay a file of signals and ticks (JSON lines) into a TCP feed at a given rate.
    Produce {
        /// The feed address.
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: String,
        /// Producer id. Not `demo`: the built-in demo producer keeps its own connection,
        /// and a second connection under one id replaces the first.
        #[arg(long, default_value = "model-alpha")]
        producer: String,
        /// API key (default: the dev key of --producer from fixtures/producers.toml).
        #[arg(long, env = "SIGNALCAST_PRODUCER_KEY", hide_env_values = true)]
        key: Option<String>,
        /// JSON lines, each a signal or a tick (a line with `bid`, `ask` and `last`; the
        /// field names of docs/kafka.md); default: the embedded fixtures. Times are
        /// restamped to the moment of sending. A file's signals keep their ids on the
        /// first pass (a rerun after a crash is de-duplicated by the engine); passes
        /// beyond the file's end get new ones.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Signals per second (0 = as fast as acknowledgements allow).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Stop after this many signals (default: the whole file once).
        #[arg(long)]
        count: Option<u64>,
        /// The feed speaks TLS (`[tls] feed = true`): trust the CA certificates of this
        /// PEM file, and verify the host of --addr.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
    /// Fill the PostgreSQL signal store from the `signals.<tier>` topics (scale-out on
    /// Kafka: one archiver per cluster; docs/store.md). Runs until SIGTERM / Ctrl-C.
    Archive {
        /// Kafka bootstrap servers (host:port,…); the rest of [kafka] (SASL, TLS, topic
        /// prefix) comes from the configuration.
        #[arg(long, env = "SIGNALCAST_KAFKA__BROKERS")]
        kafka_brokers: Option<String>,
        /// The PostgreSQL store: postgres://user[:password]@host:port/db (or libpq
        /// key=value). Its migrations are applied at start.
        #[arg(long, env = "SIGNALCAST_ARCHIVE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Verify the database server's certificate against this CA file (PEM); TLS is
        /// then required whatever sslmode the URL names.
        #[arg(long, env = "SIGNALCAST_ARCHIVE_DATABASE_CA_FILE")]
        database_ca_file: Option<PathBuf>,
        /// Serve Prometheus metrics (records, lag per tier, commits, pruning) on
        /// `GET /metrics` at this address (default: none).
        #[arg(long, env = "SIGNALCAST_ARCHIVE_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Print the version.
    Version,
}

/// Errors end the process with one line (the cause chain joined), whatever
/// RUST_BACKTRACE says: an operator reads it in a log.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("Error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGNALCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Only the commands that use settings load them: `version` and `produce` start
    // whatever the environment holds.
    let load = || Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"));
    let default = Command::Serve {
        accounts_url: None,
        accounts_gateway_token: None,
        role: None,
        kafka_brokers: None,
        data_dir: None,
    };
    match cli.command.clone().unwrap_or(default) {
        Command::Version => {
            println!("signalcast {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Token { user, ttl } => {
            let config = load()?;
            config.check_secrets().map_err(|e| anyhow::anyhow!("{e}"))?;
            let auth = gateway::server::dev_auth(&config)?;
            let ttl = Duration::from_secs(ttl.unwrap_or(config.auth.token_ttl_secs));
            println!("{}", auth.mint(&user, ttl).with_context(|| format!("user {user}"))?);
            Ok(())
        }
        Command::Serve { accounts_url, accounts_gateway_token, role, kafka_brokers, data_dir } => {
            let mut config = load()?;
            if let Some(role) = role {
                config.role = role;
            }
            if let Some(dir) = data_dir {
                config.store.data_dir = dir;
            }
            if let Some(brokers) = kafka_brokers {
                config.kafka.brokers = brokers;
            }
            if accounts_url.is_some() {
                config.auth.accounts_url = accounts_url;
            }
            if let Some(t) = accounts_gateway_token {
                config.auth.accounts_gateway_token = t;
            }
            runtime(config.workers)?.block_on(serve(config))
        }
        Command::Archive { kafka_brokers, database_url, database_ca_file, metrics_listen } => {
            let mut config = load()?;
            if let Some(brokers) = kafka_brokers {
                config.kafka.brokers = brokers;
            }
            anyhow::ensure!(
                !config.kafka.brokers.is_empty(),
                "signalcast archive reads Kafka: give --kafka-brokers (or [kafka] brokers)"
            );
            let retention = config.store.retention();
            runtime(2)?.block_on(archive(
                config.kafka,
                database_url,
                database_ca_file,
                retention,
                metrics_listen,
            ))
        }
        Command::Produce { addr, producer, key, file, rate, count, tls_ca } => {
            let tls = tls_ca.as_deref().map(gateway::tls::connector).transpose()?;
            runtime(1)?.block_on(produce(addr, producer, key, file, rate, count, tls))
        }
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = gateway::start(config.clone()).await?;
    let scheme = if running.tls { "wss" } else { "ws" };
    let feed = running.feed_addr.map_or_else(|| "none".to_owned(), |a| format!("tcp://{a}"));
    let http = if running.tls { "https" } else { "http" };
    let metrics = running.metrics_addr.unwrap_or(running.http_addr);
    // Ready lines go to stdout, which may be a pipe whose reader has gone (`| head`):
    // a failed write must not panic the main thread and take the server down.
    macro_rules! say {
        ($($arg:tt)*) => {{
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }};
    }
    say!(
        "\nsignalcast {} ({} role) on {http}://{}  (feed: {feed})",
        env!("CARGO_PKG_VERSION"),
        config.role.as_str(),
        running.http_addr,
    );
    say!("metrics: {http}://{metrics}/metrics");
    if let Some(path) = &running.store_path {
        say!("signal store: {}", path.display());
    }
    say!("");
    let ttl = Duration::from_secs(config.auth.token_ttl_secs);
    // Ready-made tokens only for the public dev secret on loopback: anything else has
    // real users, who get tokens from the sidecar or `signalcast token`.
    let dev = running.app.dev_tokens.is_some() && running.http_addr.ip().is_loopback();
    for tier in Tier::ALL.into_iter().filter(|_| dev) {
        let user =
            running.dev_auth.accounts().iter().find(|a| a.tier == tier && !a.suspended && a.real_time_access);
        if let Some(user) = user {
            let token = running.dev_auth.mint(&user.id, ttl)?;
            say!("{tier:<10} {}: {scheme}://{}/ws?token={token}", user.id, running.http_addr);
        }
    }
    if dev {
        say!("\nthen send: {{\"type\":\"SUBSCRIBE\",\"channel\":\"signals_premium\"}}\n");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    running.shutdown().await;
    Ok(())
}

/// `signalcast archive`: the brokers and the database are checked at start (a wrong
/// SASL password or an unreachable database stops it with that said), then the topics
/// are archived until a shutdown signal; progress is in PostgreSQL, so a restart resumes.
async fn archive(
    kafka: engine::config::KafkaConfig,
    url: String,
    ca: Option<PathBuf>,
    retention: Option<std::time::Duration>,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let check = kafka.clone();
    tokio::task::spawn_blocking(move || engine::kafka::check_brokers(&check))
        .await?
        .with_context(|| format!("the Kafka brokers {}", kafka.brokers))?;
    let store = store::PgStore::connect(&url, ca.as_deref()).await?;
    tracing::info!(brokers = %kafka.brokers, "archiving signals.<tier> into PostgreSQL");
    let options = store::archiver::ArchiveOptions { retention, ..Default::default() };
    let stats = std::sync::Arc::new(store::archiver::ArchiveStats::default());
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(%addr, "archiver metrics on GET /metrics");
        tokio::spawn(serve_archive_metrics(listener, std::sync::Arc::clone(&stats)));
    }
    store::archiver::run_with(kafka, store, options, stats, shutdown_signal()).await?;
    Ok(())
}

/// `GET /metrics` of the archiver: one request per connection, its head read within 5 s
/// and 8 KiB, at most 32 connections at once (a scraper needs one).
async fn serve_archive_metrics(
    listener: tokio::net::TcpListener,
    stats: std::sync::Arc<store::archiver::ArchiveStats>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else { continue };
        let stats = std::sync::Arc::clone(&stats);
        tokio::spawn(async move {
            let _permit = permit;
            let mut head = Vec::with_capacity(1024);
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, kind, body) = if head.starts_with(b"GET /metrics ") {
                ("200 OK", gateway::metrics::CONTENT_TYPE, gateway::metrics::archive_exposition(stats))
            } else {
                ("404 Not Found", "text/plain", "GET /metrics only\n".to_owned())
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn produce(
    addr: String,
    producer_id: String,
    key: Option<String>,
    file: Option<PathBuf>,
    rate: f64,
    count: Option<u64>,
    tls: Option<tokio_rustls::TlsConnector>,
) -> anyhow::Result<()> {
    let key = match key {
        Some(k) => k,
        None => engine::feed::StaticKeys::from_toml(gateway::config::fixtures::PRODUCERS)?
            .key_of(&producer_id)
            .map(str::to_owned)
            .with_context(|| format!("no dev key for producer {producer_id}; pass --key"))?,
    };
    let events: Vec<Event> = match &file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            gateway::demo::parse_events(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?
        }
        None => gateway::demo::events(),
    };
    let total = count.unwrap_or(events.iter().filter(|e| matches!(e, Event::Signal(_))).count() as u64);
    let mut config = ProducerConfig::new(addr.clone(), producer_id, key);
    config.tls = tls;
    let p = Producer::connect(config).await?;
    println!(
        "producing {total} signals to {addr} at {} signals/s",
        if rate > 0.0 { rate.to_string() } else { "max".into() }
    );
    let started = Instant::now();
    // A file's first pass keeps its ids (a rerun after a crash repeats nothing); the
    // embedded fixtures are new signals every time.
    let ids = if file.is_some() { Ids::KeepFirstPass } else { Ids::Fresh };
    let salt = u128::from(UnixNanos::now().0.unsigned_abs());
    let pace = Pace { rate, count: Some(total), ids, salt };
    let mut last_report = Instant::now();
    let sent = replay(&p, &events, pace, std::future::pending(), |sent| {
        if last_report.elapsed() >= Duration::from_secs(1) || sent == total {
            last_report = Instant::now();
            println!("  {sent}/{total} sent, {} acknowledged", p.acked());
        }
    })
    .await?;
    p.flush().await?;
    let took = started.elapsed();
    println!(
        "done: {sent} signals in {took:.2?} ({:.0}/s), all acknowledged",
        sent as f64 / took.as_secs_f64()
    );
    p.close().await?;
    Ok(())
}
