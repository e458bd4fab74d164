//! The whole process: engine, TCP feed, hub shards, HTTP/WebSocket listener, demo
//! producer; started by [`start`] and stopped (drained) by [`Running::shutdown`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine::Engine;
use engine::feed::{FeedStats, ProducerAuth, StaticKeys};
use engine::model::Tier;
use engine::policy::TierPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Accounts, Authenticator, DevAuth, OnChange, SidecarAuth};
use crate::config::{Config, fixtures};
use crate::hub::{Hub, RightsSender};
use crate::metrics::{self, GatewayStats};
use crate::{demo, http, tls};

/// What request handlers share.
#[derive(Debug)]
pub struct App {
    pub auth: Arc<dyn Authenticator>,
    pub hub: Hub,
    pub stats: Arc<GatewayStats>,
    engine: Arc<Engine>,
    feed: Arc<FeedStats>,
    draining: AtomicBool,
    /// The accounts sidecar, when tokens come from it.
    sidecar: Option<Arc<SidecarAuth>>,
    socket_send_buffer: Option<usize>,
}

impl App {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// False while the accounts change feed is down (new logins cannot be checked
    /// against live rights); connected clients are not affected.
    pub fn accounts_ready(&self) -> bool {
        self.sidecar.as_ref().is_none_or(|s| s.is_ready())
    }

    pub fn metrics(&self) -> String {
        metrics::render(&self.stats, &self.engine, &self.feed)
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
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub feed_addr: SocketAddr,
    pub tls: bool,
    pub engine: Arc<Engine>,
    pub app: Arc<App>,
    /// The embedded default's token issuer (to print and mint dev tokens).
    pub dev_auth: Arc<DevAuth>,
    stop: watch::Sender<bool>,
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

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: addr.to_owned(), source })
}

/// Binds the configured addresses and starts everything.
pub async fn start(config: Config) -> Result<Running, StartError> {
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
    let policy = match &config.policy_file {
        Some(p) => TierPolicy::load(p)?,
        None => TierPolicy::from_toml(fixtures::TIERS)?,
    };
    let keys = match &config.producers_file {
        Some(p) => StaticKeys::load(p)?,
        None => StaticKeys::from_toml(fixtures::PRODUCERS)?,
    };
    let tls = match &config.tls {
        Some(t) => Some(tls::acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let dev_auth = Arc::new(dev_auth(&config)?);
    let engine = Arc::new(Engine::start(config.engine.clone(), policy).map_err(StartError::Engine)?);
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: config.listen.clone(), source })?;
    let feed_addr = feed_listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: config.feed_listen.clone(), source })?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Rights changes from the accounts feed go to the hub, which starts after auth.
    let rights: Arc<OnceLock<RightsSender>> = Arc::new(OnceLock::new());
    let (auth, sidecar): (Arc<dyn Authenticator>, _) = match &config.auth.accounts_url {
        Some(url) => {
            let to_hub = Arc::clone(&rights);
            let on_change: OnChange = Arc::new(move |e| {
                if let Some(hub) = to_hub.get() {
                    hub.send(e);
                }
            });
            let s = SidecarAuth::start(url, &config.auth.accounts_gateway_token, on_change)?;
            (s.clone() as Arc<dyn Authenticator>, Some(s))
        }
        None => (dev_auth.clone() as Arc<dyn Authenticator>, None),
    };
    // With the sidecar, producer keys come from it (and revocations cut producers).
    let producer_auth: Arc<dyn ProducerAuth> = match &sidecar {
        Some(s) => s.clone(),
        None => Arc::new(keys),
    };
    let demo = config.demo.enabled && sidecar.is_none();
    let feed_ctx = engine.feed_context(producer_auth, config.feed.clone());
    let feed_stats = Arc::clone(&feed_ctx.stats);
    let mut feed_stop = stop_rx.clone();
    tasks.push(tokio::spawn(engine::feed::run(feed_listener, feed_ctx, async move {
        until_set(&mut feed_stop).await;
    })));

    let stats = Arc::new(GatewayStats::default());
    let hub =
        Hub::start(Arc::clone(&engine), Arc::clone(&auth), Arc::clone(&stats), config.hub(), config.conn())
            .map_err(StartError::Hub)?;
    let _ = rights.set(hub.rights());
    let app = Arc::new(App {
        sidecar,
        auth,
        hub,
        stats,
        engine: Arc::clone(&engine),
        feed: feed_stats,
        draining: AtomicBool::new(false),
        socket_send_buffer: config.socket_send_buffer,
    });
    tasks.push(tokio::spawn(accept_loop(http_listener, tls.clone(), Arc::clone(&app), stop_rx.clone())));

    // The demo producer's key is a fixture key, which a sidecar does not know.
    if demo {
        let keys = StaticKeys::from_toml(fixtures::PRODUCERS)?;
        tasks.push(tokio::spawn(demo::run(feed_addr, config.demo.clone(), keys, stop_rx)));
    }
    tracing::info!(%http_addr, %feed_addr, tls = tls.is_some(), shards = app.hub.shards(), "signalcast serving");
    Ok(Running {
        http_addr,
        feed_addr,
        tls: tls.is_some(),
        engine,
        app,
        dev_auth,
        stop,
        tasks,
        drain_timeout: Duration::from_secs(config.drain_timeout_secs),
    })
}

/// Resolves once the flag is set (or its sender is gone).
pub(crate) async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(size) = app.socket_send_buffer {
                        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
                    }
                    let app = Arc::clone(&app);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => http::serve(stream, app).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => http::serve(s, app).await,
                                    Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                                    Err(_) => tracing::debug!("tls handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = crate::server::until_set(&mut stop) => return,
        }
    }
}

impl Running {
    /// Graceful drain: stop accepting, tell every client (SYSTEM_MESSAGE drain, then
    /// close 1001), give them `drain_timeout` to go, stop.
    pub async fn shutdown(self) {
        self.app.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
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
        tracing::info!("signalcast stopped");
    }
}
