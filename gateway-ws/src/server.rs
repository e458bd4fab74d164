//! The whole process: engine, TCP feed, Kafka, hub shards, HTTP/WebSocket listener, demo
//! producer; started by [`start`] and stopped (drained) by [`Running::shutdown`].
//!
//! What runs depends on the node's [`Role`]: `all` (default) everything in one process,
//! Kafka optional; `engine` ingest and pipeline, routed signals to `signals.<tier>`;
//! `gateway` WebSocket clients fed from `signals.<tier>` (docs/deploy.md).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine::feed::{FeedStats, ProducerAuth, StaticKeys};
use engine::kafka::{self, IngestContext, KafkaHistory, KafkaSink, KafkaStats};
use engine::model::Tier;
use engine::policy::TierPolicy;
use engine::{Engine, EngineOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Accounts, AccountsState, Authenticator, DevAuth, OnChange, SidecarAuth};
use crate::config::{Config, fixtures};
use crate::hub::{Hub, RightsSender};
use crate::metrics::{self, GatewayStats};
use crate::node::{KafkaPart, NeedsKafka, Plan};
use crate::{demo, http, tls};

/// What request handlers share.
#[derive(Debug)]
pub struct App {
    pub engine: Arc<Engine>,
    /// Where history is read from: the node's own store, or (scale-out gateways) the
    /// PostgreSQL store the archiver fills.
    pub store: Option<crate::api::signals::HistorySource>,
    /// History reads at once.
    pub store_reads: tokio::sync::Semaphore,
    /// The rows of the last scoreboard read, and when (`GET /v1/sources` counts them
    /// for each caller for [`crate::api::sources::SCOREBOARD_MAX_AGE`]).
    pub scoreboard: tokio::sync::Mutex<Option<(std::time::Instant, crate::api::sources::Rows)>>,
    /// Per-user and per-producer rates of the HTTP API.
    pub api_rates: crate::api::rate::RateLimits,
    /// HTTP ingest, on a node that runs the engine.
    pub ingest: Option<HttpIngest>,
    pub auth: Arc<dyn Authenticator>,
    pub hub: Hub,
    pub stats: Arc<GatewayStats>,
    pub plan: Plan,
    pub admission: Arc<crate::admission::Admission>,
    exposition: metrics::Exposition,
    /// `/metrics` has a listener of its own (`metrics_listen`): the client port answers
    /// 404 for it.
    pub metrics_elsewhere: bool,
    draining: AtomicBool,
    /// The accounts sidecar, when tokens come from it.
    sidecar: Option<Arc<SidecarAuth>>,
    socket_send_buffer: Option<usize>,
    /// TLS handshake and request headers must be in within this, together.
    pub handshake_timeout: Duration,
    /// Sockets that have not finished their upgrade yet, capped in total and per address.
    pub doorway: Arc<engine::doorway::Doorway>,
    /// Client sockets at once, upgraded or not (0: no cap).
    max_connections: usize,
    /// Subscriptions per connection (`[hub] max_subscriptions`): also the most channels
    /// an upgrade request may name (`?subscribe=`).
    pub max_subscriptions: usize,
    /// How permessage-deflate offers are answered (`permessage_deflate`,
    /// `deflate_context_takeover`, `deflate_window_bits`).
    pub deflate: crate::ws::deflate::Policy,
    /// The dashboard's token picker: only when tokens are signed with the public dev
    /// secret (see [`crate::dashboard::dev_tokens`]).
    pub dev_tokens: Option<(Arc<DevAuth>, Duration)>,
}

/// What `POST /v1/signals` and `/v1/ticks` need.
#[derive(Debug)]
pub struct HttpIngest {
    pub queue: engine::pipeline::IngestSender,
    pub producers: Arc<dyn ProducerAuth>,
    pub config: crate::config::HttpIngestConfig,
}

impl App {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Where tokens come from and whether they can be checked; `None` on the embedded
    /// default (always ready).
    pub fn accounts_state(&self) -> Option<AccountsState> {
        self.sidecar.as_ref().map(|s| s.state())
    }

    /// The `/metrics` page ([`metrics::CONTENT_TYPE`]).
    pub fn metrics(&self) -> String {
        self.exposition.render()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("tier policy: {0}")]
    Policy(#[from] engine::policy::PolicyError),
    #[error("producer keys: {0}")]
    Keys(#[from] engine::feed::auth::KeysError),
    #[error("accounts: {0}")]
    Accounts(#[from] crate::auth::AccountsError),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Sidecar(#[from] crate::auth::SidecarError),
    #[error("cannot start the hub: {0}")]
    Hub(std::io::Error),
    #[error("cannot start the engine: {0}")]
    Engine(std::io::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    NeedsKafka(#[from] NeedsKafka),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A non-loopback listener with public development credentials in force.
    #[error(
        "refusing to listen on {addr} with public development credentials in force: {}. \
         Anyone who reaches {addr} could mint tokens or publish signals. Set instead: {}. \
         (To expose them anyway: unsafe_public_dev_credentials = true, \
         SIGNALCAST_UNSAFE_PUBLIC_DEV_CREDENTIALS=true.)",
        .credentials.iter().map(|c| c.0).collect::<Vec<_>>().join(", "),
        .credentials.iter().map(|c| c.1).collect::<Vec<_>>().join("; ")
    )]
    PublicDevCredentials { addr: SocketAddr, credentials: Vec<(&'static str, &'static str)> },
}

/// Refuses a listener outside loopback while public development credentials are in
/// force, unless the one opt-in says otherwise (then it is logged loudly).
fn check_exposure(config: &Config, listeners: &[SocketAddr]) -> Result<(), StartError> {
    let credentials = config.public_dev_credentials();
    let Some(&addr) = listeners.iter().find(|a| !a.ip().is_loopback()) else { return Ok(()) };
    if credentials.is_empty() {
        return Ok(());
    }
    if config.unsafe_public_dev_credentials {
        let list = credentials.iter().map(|c| c.0).collect::<Vec<_>>().join(", ");
        tracing::warn!(
            %addr,
            credentials = %list,
            "UNSAFE: public development credentials exposed beyond loopback (unsafe_public_dev_credentials)"
        );
        return Ok(());
    }
    Err(StartError::PublicDevCredentials { addr, credentials })
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    /// The producers' TCP feed; none on a gateway node.
    pub feed_addr: Option<SocketAddr>,
    /// `/metrics` on a listener of its own (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub tls: bool,
    pub engine: Arc<Engine>,
    pub app: Arc<App>,
    /// The embedded default's token issuer (to print and mint dev tokens).
    pub dev_auth: Arc<DevAuth>,
    /// The signal store's file, on a node that keeps one.
    pub store_path: Option<std::path::PathBuf>,
    stop: watch::Sender<bool>,
    /// Stops the gateway role's relay thread (a blocking Kafka poll loop) and the quota
    /// writer.
    relay_stop: Arc<AtomicBool>,
    /// Writes quota charges to the store each second; flushes once more when stopped.
    quota_writer: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

fn read(path: &std::path::Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map_err(|source| StartError::Read { path: path.display().to_string(), source })
}

/// Loads the dev accounts and returns the token issuer of the embedded default.
pub fn dev_auth(config: &Config) -> Result<DevAuth, StartError> {
    let text = match &config.accounts_file {
        Some(p) => read(p)?,
        None => fixtures::ACCOUNTS.to_owned(),
    };
    Ok(DevAuth::new(config.auth.dev_secret.as_bytes(), Accounts::from_toml(&text)?))
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). Tokio's
/// default of 1,024 overflows in a reconnect storm: the SYNs past it are dropped and
/// retried after 1, 3, 7… s, which stretched 10,000 reconnects from one address to a
/// minute.
const LISTEN_BACKLOG: i32 = 16_384;

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr: addr.to_owned(), source };
    let resolved = tokio::net::lookup_host(addr).await.map_err(err)?.next().ok_or_else(|| {
        err(std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing"))
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(resolved),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&resolved.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Binds the configured addresses and starts everything.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // Refuse before binding where the address says it all (an IP, not a host name).
    config.check_secrets()?;
    let feed = Plan::of(&config)?.feed.then_some(&config.feed_listen);
    let planned: Vec<SocketAddr> =
        [Some(&config.listen), feed].into_iter().flatten().filter_map(|a| a.parse().ok()).collect();
    check_exposure(&config, &planned)?;
    let http = bind(&config.listen).await?;
    let feed = bind(&config.feed_listen).await?;
    start_on(config, http, feed).await
}

/// Starts on listeners bound by the caller (tests bind 127.0.0.1:0).
pub async fn start_on(
    config: Config,
    http_listener: TcpListener,
    feed_listener: TcpListener,
) -> Result<Running, StartError> {
    let plan = Plan::of(&config)?;
    config.check_secrets()?;
    let local = |l: &TcpListener, addr: &str| {
        l.local_addr().map_err(|source| StartError::Bind { addr: addr.to_owned(), source })
    };
    let http_addr = local(&http_listener, &config.listen)?;
    let feed_addr = if plan.feed { Some(local(&feed_listener, &config.feed_listen)?) } else { None };
    // The metrics listener serves no credential (no tokens, no feed): any address may do.
    check_exposure(&config, &[Some(http_addr), feed_addr].into_iter().flatten().collect::<Vec<_>>())?;
    // Bound before anything starts, so that a taken port stops the server at once.
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| local(l, "metrics_listen")).transpose()?;

    let policy = match &config.policy_file {
        Some(p) => TierPolicy::load(p)?,
        None => TierPolicy::from_toml(fixtures::TIERS)?,
    };
    let tls = config.tls.as_ref().map(|t| tls::acceptor(&t.cert, &t.key)).transpose()?;
    let dev_auth = Arc::new(dev_auth(&config)?);
    // Rights changes from the accounts feed go to the hub, which starts after auth.
    // Checked before the store is opened: a link that cannot be made (no CA file, plain
    // HTTP beyond loopback) stops the start before the data directory is locked.
    let rights: Arc<OnceLock<RightsSender>> = Arc::new(OnceLock::new());
    let (auth, sidecar) = start_auth(&config, &dev_auth, &rights)?;
    let kafka_stats = Arc::new(KafkaStats::default());
    let mut options = kafka_options(&config, plan, &kafka_stats).await?;
    let handover = options.handover.clone();
    let (durable, store_path) = match plan.store {
        true => {
            let (d, path) = durable(&config)?;
            // Resumes from before the ring are read back from the store.
            let history = store::StoreHistory::start(config.store.data_dir.clone(), STORE_HISTORY_MAX)
                .map_err(StartError::Engine)?;
            options.history = Some(Arc::new(history));
            (Some(d), Some(path))
        }
        false => (None, None),
    };
    options.durable = durable;
    let engine =
        Arc::new(Engine::start_with(config.engine.clone(), policy, options).map_err(StartError::Engine)?);

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let feed_stats = match feed_addr {
        Some(_) => {
            let feed_tls = tls.as_ref().filter(|_| config.tls.as_ref().is_some_and(|t| t.feed));
            let feed_tls = feed_tls.map(|(acceptor, _)| acceptor.clone());
            start_feed(&config, &engine, sidecar.as_ref(), feed_listener, feed_tls, &stop_rx, &mut tasks)?
        }
        None => Arc::new(FeedStats::default()),
    };
    let relay_stop = Arc::new(AtomicBool::new(false));
    let kafka = KafkaParts { stats: &kafka_stats, relay_stop: &relay_stop, handover };
    start_kafka(&config, plan, &engine, sidecar.as_ref(), &kafka, &stop_rx, &mut tasks)?;

    // Tokens for the asking only where the secret is public anyway and only on loopback.
    let dev_tokens = (config.public_dev_secret()
        && (http_addr.ip().is_loopback() || config.unsafe_public_dev_credentials))
        .then(|| (Arc::clone(&dev_auth), Duration::from_secs(config.auth.token_ttl_secs)));
    let stats = Arc::new(GatewayStats::default());
    let hub =
        Hub::start(Arc::clone(&engine), Arc::clone(&auth), Arc::clone(&stats), config.hub(), config.conn())
            .map_err(StartError::Hub)?;
    let _ = rights.set(hub.rights());
    // Quota charges outlive a restart: today's are read back before the first client,
    // and new ones are written each second.
    let quota_writer = match &store_path {
        Some(_) => Some(quota_writer(&config, hub.quotas(), Arc::clone(&relay_stop))?),
        None => None,
    };
    let mut exposition =
        metrics::Exposition::new(Arc::clone(&stats), Arc::clone(&engine), feed_stats, kafka_stats);
    if let Some(s) = &sidecar {
        let (up, keys) = (Arc::clone(s), Arc::clone(s));
        exposition =
            exposition.with_accounts(move || up.state() == AccountsState::Live, move || keys.key_count());
    }
    let app = Arc::new(App {
        engine: Arc::clone(&engine),
        store: history_source(&config, plan, store_path.is_some()).await?,
        store_reads: tokio::sync::Semaphore::new(crate::api::signals::READS_AT_ONCE),
        scoreboard: tokio::sync::Mutex::new(None),
        api_rates: crate::api::rate::RateLimits::default(),
        ingest: match plan.feed {
            true => Some(HttpIngest {
                queue: engine.ingest(),
                producers: producer_auth(&config, sidecar.as_ref())?,
                config: config.http_ingest,
            }),
            false => None,
        },
        sidecar,
        auth,
        hub,
        stats,
        plan,
        admission: Arc::new(crate::admission::Admission::new(config.admission())),
        exposition,
        metrics_elsewhere: metrics_listener.is_some(),
        draining: AtomicBool::new(false),
        socket_send_buffer: config.socket_send_buffer,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms.max(1)),
        doorway: engine::doorway::Doorway::new(engine::doorway::DoorwayConfig {
            max_total: config.max_unauthenticated,
            max_per_ip: config.max_unauthenticated_per_ip,
        }),
        max_connections: config.max_connections,
        max_subscriptions: config.max_subscriptions,
        deflate: config.deflate_policy(),
        dev_tokens,
    });
    let acceptor = tls.as_ref().map(|(acceptor, _)| acceptor.clone());
    if let Some(listener) = metrics_listener {
        let (app, stop) = (Arc::clone(&app), stop_rx.clone());
        tasks.push(tokio::spawn(http::metrics_accept_loop(listener, acceptor.clone(), app, stop)));
    } else if !http_addr.ip().is_loopback() {
        tracing::info!(%http_addr, "/metrics is served on the client port; metrics_listen gives it a listener of its own");
    }
    tasks.push(tokio::spawn(accept_loop(http_listener, acceptor, Arc::clone(&app), stop_rx.clone())));
    if let (Some((_, cert)), Some(t)) = (tls.as_ref(), config.tls.as_ref()) {
        let every = Duration::from_millis(t.reload_interval_ms.max(10));
        tasks.push(tokio::spawn(reload_certificate(Arc::clone(cert), every)));
    }
    // The demo producer's key is a fixture key, which a sidecar does not know.
    if let (true, Some(addr)) = (plan.demo, feed_addr) {
        let keys = StaticKeys::from_toml(fixtures::PRODUCERS)?;
        tasks.push(tokio::spawn(demo::run(addr, config.demo.clone(), keys, stop_rx)));
    }
    tracing::info!(
        role = plan.role.as_str(),
        %http_addr,
        ?feed_addr,
        ?metrics_addr,
        tls = tls.is_some(),
        shards = app.hub.shards(),
        kafka = %config.kafka.brokers,
        "signalcast serving"
    );
    Ok(Running {
        http_addr,
        feed_addr,
        metrics_addr,
        tls: tls.is_some(),
        engine,
        app,
        dev_auth,
        store_path,
        stop,
        relay_stop,
        quota_writer,
        tasks,
        drain_timeout: Duration::from_secs(config.drain_timeout_secs),
    })
}

type Tasks = Vec<JoinHandle<()>>;

/// Where tokens are checked: the accounts sidecar (whose rights changes go to the hub
/// once it runs) or the embedded default's dev issuer.
#[allow(clippy::type_complexity)]
fn start_auth(
    config: &Config,
    dev_auth: &Arc<DevAuth>,
    rights: &Arc<OnceLock<RightsSender>>,
) -> Result<(Arc<dyn Authenticator>, Option<Arc<SidecarAuth>>), StartError> {
    let Some(url) = &config.auth.accounts_url else {
        return Ok((Arc::clone(dev_auth) as Arc<dyn Authenticator>, None));
    };
    let to_hub = Arc::clone(rights);
    let on_change: OnChange = Arc::new(move |e| {
        if let Some(hub) = to_hub.get() {
            hub.send(e);
        }
    });
    let link = crate::auth::SidecarLink {
        url,
        gateway_token: &config.auth.accounts_gateway_token,
        ca_file: config.auth.accounts_ca_file.as_deref(),
        insecure_plain_http: config.auth.accounts_insecure_plain_http,
    };
    let s = SidecarAuth::start(link, on_change)?;
    Ok((Arc::clone(&s) as Arc<dyn Authenticator>, Some(s)))
}

/// The producers' TCP feed, with keys from the sidecar (revocations cut producers) or
/// from the producers file.
fn start_feed(
    config: &Config,
    engine: &Engine,
    sidecar: Option<&Arc<SidecarAuth>>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> Result<Arc<FeedStats>, StartError> {
    let mut ctx = engine.feed_context(producer_auth(config, sidecar)?, config.feed.clone());
    ctx.tls = tls.map(engine::feed::FeedTls);
    let stats = Arc::clone(&ctx.stats);
    let mut feed_stop = stop.clone();
    tasks.push(tokio::spawn(engine::feed::run(listener, ctx, async move {
        until_set(&mut feed_stop).await;
    })));
    Ok(stats)
}

/// Producers' keys: the sidecar's (revocations apply at once) or the producers file's.
/// The TCP feed checks HELLOs with them, Kafka ingest the signatures of records.
fn producer_auth(
    config: &Config,
    sidecar: Option<&Arc<SidecarAuth>>,
) -> Result<Arc<dyn ProducerAuth>, StartError> {
    Ok(match sidecar {
        Some(s) => Arc::clone(s) as Arc<dyn ProducerAuth>,
        None => Arc::new(match &config.producers_file {
            Some(p) => StaticKeys::load(p)?,
            None => StaticKeys::from_toml(fixtures::PRODUCERS)?,
        }),
    })
}

/// What the Kafka tasks share with the rest of the node.
struct KafkaParts<'a> {
    stats: &'a Arc<KafkaStats>,
    /// Stops the threads (relay, follower).
    relay_stop: &'a Arc<AtomicBool>,
    /// Engine nodes in scale-out: the rebalances the stage applies.
    handover: Option<Arc<engine::outcome::handover::Rebalances>>,
}

/// Kafka's part of the node: the relay of `signals.<tier>` on a gateway node, ingest of
/// `raw-signals` and `market-data` elsewhere.
fn start_kafka(
    config: &Config,
    plan: Plan,
    engine: &Engine,
    sidecar: Option<&Arc<SidecarAuth>>,
    parts: &KafkaParts<'_>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Tasks,
) -> Result<(), StartError> {
    let (stats, relay_stop, handover) = (parts.stats, parts.relay_stop, &parts.handover);
    match plan.kafka {
        KafkaPart::Off => {}
        KafkaPart::Relay => {
            kafka::spawn_relay(
                &config.kafka,
                engine.ingest(),
                config.engine.ring_capacity,
                Arc::clone(stats),
                producer_auth(config, sidecar)?,
                Arc::clone(relay_stop),
            )?;
        }
        KafkaPart::Ingest | KafkaPart::Publish => {
            let ctx = IngestContext {
                ingest: engine.ingest(),
                max_analysis_bytes: config.engine.max_analysis_bytes,
                stats: Arc::clone(stats),
                producers: producer_auth(config, sidecar)?,
                handover: handover.clone(),
            };
            // An engine node in scale-out rebuilds what is open from `signals.<tier>`
            // before it takes any input record (docs/outcomes.md).
            let caught_up = match handover {
                Some(_) => Some(kafka::spawn_follower(
                    &config.kafka,
                    engine.ingest(),
                    config.engine.max_open_signals,
                    Arc::clone(relay_stop),
                )?),
                None => None,
            };
            let (cfg, mut kafka_stop) = (config.kafka.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                if let Some(caught_up) = caught_up {
                    tokio::select! {
                        _ = caught_up => {}
                        () = until_set(&mut kafka_stop) => return,
                    }
                }
                let stop = async move { until_set(&mut kafka_stop).await };
                if let Err(e) = kafka::run_ingest(cfg, ctx, stop).await {
                    tracing::error!(error = %e, "kafka ingest could not start");
                }
            }));
        }
    }
    Ok(())
}

/// What the node's plan asks of the engine: an engine node routes into Kafka (and
/// remembers what an earlier run routed there), a gateway node takes the topics' epochs.
async fn kafka_options(
    config: &Config,
    plan: Plan,
    stats: &Arc<KafkaStats>,
) -> Result<EngineOptions, StartError> {
    let mut options = EngineOptions::default();
    if plan.kafka == KafkaPart::Off {
        return Ok(options);
    }
    let cfg = config.kafka.clone();
    blocking(move || kafka::check_brokers(&cfg)).await?;
    kafka::ensure_topics(&config.kafka).await?;
    match plan.kafka {
        KafkaPart::Off | KafkaPart::Ingest => {}
        KafkaPart::Publish => {
            let (cfg, window) = (config.kafka.clone(), config.engine.dedup_window);
            options.seen_ids = blocking(move || kafka::recent_ids(&cfg, window)).await?;
            tracing::info!(ids = options.seen_ids.len(), "read back recently routed signal ids");
            options.sink = Some(Box::new(KafkaSink::new(&config.kafka, Arc::clone(stats))?));
            options.handover = (config.engine.max_open_signals > 0).then(Arc::default);
        }
        KafkaPart::Relay => {
            let cfg = config.kafka.clone();
            options.epochs = Some(blocking(move || kafka::epochs(&cfg)).await?);
            let history = KafkaHistory::start(&config.kafka, config.kafka.history_max_messages)?;
            options.history = Some(Arc::new(history));
        }
    }
    Ok(options)
}

/// Where the node's history comes from (docs/history.md).
async fn history_source(
    config: &Config,
    plan: Plan,
    own_store: bool,
) -> Result<Option<crate::api::signals::HistorySource>, StartError> {
    use crate::api::signals::HistorySource;
    if own_store {
        return Ok(Some(HistorySource::Sqlite(Arc::new(store::Readers::new(config.store.data_dir.clone())))));
    }
    match (&config.store.database_url, plan.clients) {
        (Some(url), true) => {
            let pg = store::PgStore::connect_reader(url, config.store.database_ca_file.as_deref()).await?;
            tracing::info!("history is read from the PostgreSQL signal store");
            Ok(Some(HistorySource::Postgres(pg)))
        }
        _ => Ok(None),
    }
}

/// How often quota charges are written to the store: the most a crash leaves uncounted.
const QUOTA_FLUSH: Duration = Duration::from_secs(1);

/// Reads today's quota charges back into `quotas` and starts the thread that writes new
/// ones to the store every [`QUOTA_FLUSH`] (and once more when `stop` is set), and
/// checkpoints the store's write-ahead log as often.
fn quota_writer(
    config: &Config,
    quotas: &Arc<crate::hub::QuotaBook>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    let mut side = store::SqliteStore::open_side(&config.store.data_dir)?;
    let today = crate::hub::quota::utc_day(engine::model::UnixNanos::now().0);
    let journal = quotas.journal();
    let charges = side.charges(today)?;
    tracing::info!(charges = charges.len(), "today's quota charges read back from the signal store");
    quotas.restore(today, charges.into_iter().map(|c| (c.user, c.log, c.seq)));
    let quotas = Arc::clone(quotas);
    let mut lost = 0;
    let mut flush = move |side: &mut store::SqliteStore| {
        if journal.lost() > lost {
            lost = journal.lost();
            tracing::warn!(lost, "quota charges not written to the store: a user's waiting list was full");
        }
        let rows: Vec<store::Charge> = quotas
            .journaled()
            .into_iter()
            .map(|(day, user, log, seq)| store::Charge { day, user: user.to_string(), log, seq })
            .collect();
        let today = crate::hub::quota::utc_day(engine::model::UnixNanos::now().0);
        if let Err(e) = side.charge(&rows, today.saturating_sub(1)) {
            tracing::warn!(error = %e, charges = rows.len(), "quota charges could not be stored");
        }
        // The pipeline's writer leaves checkpoints to this thread.
        if let Err(e) = side.checkpoint() {
            tracing::warn!(error = %e, "the signal store's checkpoint failed");
        }
    };
    std::thread::Builder::new()
        .name("signalcast-quota-writer".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(QUOTA_FLUSH);
                flush(&mut side);
            }
            flush(&mut side);
        })
        .map_err(StartError::Engine)
}

/// The deepest resume a single node reads back from its store (as a gateway node's
/// `kafka.history_max_messages` default).
const STORE_HISTORY_MAX: u64 = 50_000;

/// A single node's store: opened (the directory locked, the schema migrated), its
/// epochs, and how the new stage is filled from it before it takes anything.
fn durable(config: &Config) -> Result<(engine::Durable, std::path::PathBuf), StartError> {
    let dir = &config.store.data_dir;
    let mut writer = store::SqliteStore::open_with(dir, config.store.settings())?;
    let path = std::path::absolute(writer.path()).unwrap_or_else(|_| writer.path().to_owned());
    let epochs = store::archive::epochs(&mut writer)?;
    let reader = store::SqliteStore::open_reader(dir)?;
    let (ring, window, open) =
        (config.engine.ring_capacity, config.engine.dedup_window, config.engine.max_open_signals);
    let restore = Box::new(move |stage: &mut engine::pipeline::Stage| {
        let n = store::archive::restore(&reader, stage, ring, window, open).map_err(std::io::Error::other)?;
        tracing::info!(messages = n, "channels restored from the signal store");
        Ok(())
    });
    let archive = store::StoreArchive::new(writer).with_retention(config.store.retention());
    Ok((engine::Durable { epochs, archive: Box::new(archive), restore }, path))
}

/// Runs a librdkafka call that blocks (metadata, reading back) off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, kafka::KafkaError> + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Kafka(kafka::KafkaError::ClientCreation(e.to_string())))?
        .map_err(StartError::Kafka)
}

/// Checks the certificate files now and then; a renewed pair is served to new
/// handshakes at once, a broken one is logged and the old pair kept.
async fn reload_certificate(cert: Arc<tls::ReloadingCert>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match cert.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; serving the previous one")
            }
        }
    }
}

/// Resolves once the flag is set (or its sender is gone).
pub(crate) async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// The answer to a socket turned away before its request is read.
const TURNED_AWAY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Why a client socket was closed at accept.
#[derive(Debug, thiserror::Error)]
enum TurnedAway {
    #[error("{0} client connections are open")]
    Full(usize),
    #[error(transparent)]
    Door(#[from] engine::doorway::Turned),
}

impl App {
    fn admit_socket(&self, ip: std::net::IpAddr) -> Result<engine::doorway::Unauthenticated, TurnedAway> {
        let open = self.stats.open_connections() + self.doorway.inside();
        if self.max_connections > 0 && open >= self.max_connections {
            return Err(TurnedAway::Full(self.max_connections));
        }
        Ok(self.doorway.enter(ip)?)
    }
}

/// Connections taken per wake of the accept loop before it lets other tasks run.
const ACCEPT_BATCH: usize = 64;

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    // Accepted as std sockets: a plain upgrade whose request is already in (the common
    // case) goes to a shard without ever being registered with tokio (http::arrive).
    let listener = match listener.into_std().and_then(|l| {
        // SAFETY: `register` needs the descriptor to stay open, and to be the same one,
        // for as long as the AsyncFd lives. The AsyncFd owns the std listener, whose
        // OwnedFd returns the same descriptor from every `as_raw_fd` and is closed only
        // when the listener is dropped: by the AsyncFd's own drop, after it has
        // deregistered the descriptor. Nothing else holds or closes it.
        #[allow(unsafe_code)]
        unsafe {
            tokio::io::unix::AsyncFd::register(l).map_err(std::io::Error::from)
        }
    }) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot poll the client listener"),
    };
    loop {
        tokio::select! {
            ready = listener.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "client listener failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mut later = Vec::new();
                for _ in 0..ACCEPT_BATCH {
                    match guard.try_io(|l| l.get_ref().accept()) {
                        Ok(Ok((stream, peer))) => later.extend(arrive(stream, peer, tls.as_ref(), &app)),
                        Ok(Err(e)) => {
                            // Out of descriptors, most likely: give the closes time.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                        Err(_would_block) => break,
                    }
                }
                drop(guard);
                // A socket accepted the moment its handshake ended often has its request
                // in a few microseconds later: one more look after the batch, then a task.
                for Early { stream, peer, ticket } in later {
                    match http::arrive(stream, peer, &app) {
                        http::Arrived::Done => drop(ticket),
                        http::Arrived::Serve(stream, read) => spawn_serve(stream, peer, None, read, ticket, &app),
                    }
                }
                tokio::task::yield_now().await;
            },
            () = crate::server::until_set(&mut stop) => return,
        }
    }
}

/// A plain socket accepted before its client's request came in.
struct Early {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    ticket: engine::doorway::Unauthenticated,
}

/// An accepted client socket: admitted at the door or closed, then upgraded here when
/// its request is already in, else served by a task of its own; or, when not a byte of
/// the request is in yet, returned to be looked at again.
fn arrive(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<&TlsAcceptor>,
    app: &Arc<App>,
) -> Option<Early> {
    // Before its upgrade a socket only holds a place at the door: a cap in total and
    // per address, and one short budget for TLS and headers.
    let ticket = match app.admit_socket(peer.ip()) {
        Ok(t) => t,
        Err(why) => {
            tracing::debug!(%peer, %why, "client socket turned away");
            if tls.is_none() && stream.set_nonblocking(true).is_ok() {
                // Best effort, never waiting: the socket is closed next.
                let _ = std::io::Write::write(&mut &stream, TURNED_AWAY);
            }
            return None;
        }
    };
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::debug!(%peer, error = %e, "client socket dropped");
        return None;
    }
    let _ = stream.set_nodelay(true);
    if let Some(size) = app.socket_send_buffer {
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
    }
    if let Some(acceptor) = tls {
        spawn_serve(stream, peer, Some(acceptor.clone()), bytes::BytesMut::new(), ticket, app);
        return None;
    }
    match http::arrive(stream, peer, app) {
        http::Arrived::Done => None,
        http::Arrived::Serve(stream, read) if read.is_empty() => Some(Early { stream, peer, ticket }),
        http::Arrived::Serve(stream, read) => {
            spawn_serve(stream, peer, None, read, ticket, app);
            None
        }
    }
}

/// Serves a client socket in a task of its own (TLS, and requests not yet whole).
fn spawn_serve(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    read: bytes::BytesMut,
    ticket: engine::doorway::Unauthenticated,
    app: &Arc<App>,
) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => return tracing::debug!(%peer, error = %e, "client socket dropped"),
        };
        let deadline = tokio::time::Instant::now() + app.handshake_timeout;
        match tls {
            None => http::serve_within(stream, read, Some(peer.ip()), app, deadline).await,
            Some(acceptor) => match tokio::time::timeout_at(
                deadline,
                acceptor.accept(crate::conn::HandshakeStream::new(stream)),
            )
            .await
            {
                Ok(Ok(s)) => http::serve_within(s, read, Some(peer.ip()), app, deadline).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!("tls handshake timed out"),
            },
        }
        // Upgraded (the hub counts it now) or gone.
        drop(ticket);
    });
}

impl Running {
    /// Graceful drain: stop accepting, tell every client (SYSTEM_MESSAGE drain, then
    /// close 1001), give them `drain_timeout` to go, stop.
    pub async fn shutdown(self) {
        self.app.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        self.relay_stop.store(true, Ordering::Release);
        self.app.hub.drain();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while Tier::ALL.iter().map(|t| self.app.stats.connections(*t)).sum::<i64>() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        let app = Arc::clone(&self.app);
        let _ = tokio::task::spawn_blocking(move || app.hub.stop()).await;
        if let Some(w) = self.quota_writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        tracing::info!("signalcast stopped");
    }
}
