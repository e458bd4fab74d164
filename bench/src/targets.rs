//! The servers under test: how to start them, how a client subscribes, how to publish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use engine::feed::{Producer, ProducerConfig};
use engine::model::{
    Analysis, Category, Confidence, Exchange, Price, Signal, SignalType, SourceType, Symbol, UnixNanos,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::process::{Child, Command};

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// signalcast: TCP feed in, JWT-authenticated WebSocket clients out, tiers on.
    Signalcast,
    /// signalcast scaled out: an engine node (TCP feed in) and a gateway node (clients)
    /// with a Kafka-protocol broker (tansu, in memory) between them. CPU and RSS are
    /// the gateway's.
    SignalcastKafka,
    /// The raw pre-framed broadcast reference (the floor).
    Reference,
    /// Node.js 20 + npm ws 8.23.
    NodeWs,
    /// nats-server with its websocket listener.
    Nats,
    /// nginx with the nchan module.
    Nchan,
}

impl Target {
    pub const ALL: [Self; 6] =
        [Self::Signalcast, Self::SignalcastKafka, Self::Reference, Self::NodeWs, Self::Nats, Self::Nchan];

    /// Speaks signalcast's protocol (JWT, SUBSCRIBE, PING; TCP feed for publishing).
    pub fn is_signalcast(self) -> bool {
        matches!(self, Self::Signalcast | Self::SignalcastKafka)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Signalcast => "signalcast",
            Self::SignalcastKafka => "signalcast-kafka",
            Self::Reference => "reference",
            Self::NodeWs => "node-ws",
            Self::Nats => "nats",
            Self::Nchan => "nchan",
        }
    }

    fn peer(self) -> Option<&'static str> {
        match self {
            Self::NodeWs => Some("node-ws"),
            Self::Nats => Some("nats"),
            Self::Nchan => Some("nchan"),
            Self::Signalcast | Self::SignalcastKafka | Self::Reference => None,
        }
    }
}

/// Where and how a client subscribes (passed to worker processes as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub target: Target,
    pub addr: SocketAddr,
    pub path: String,
    /// WSS: the certificate (PEM) the server presents, which clients trust.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

/// A running server under test.
#[derive(Debug)]
pub struct Server {
    pub target: Target,
    pub endpoint: Endpoint,
    /// Where publishers connect.
    pub publish: SocketAddr,
    /// Root of the server's process tree (for CPU and RSS).
    pub pid: u32,
    child: Option<Child>,
    /// Processes the target needs besides the measured one (broker, engine node).
    helpers: Vec<Child>,
    /// Scale-out with more than one gateway: the others' client endpoints and pids.
    pub others: Vec<(Endpoint, u32)>,
    _dir: Option<TempDir>,
    /// WSS (`--tls`): the certificate served and its folder.
    tls: Option<(Certificate, TempDir)>,
    /// `--accounts`: the sidecar and its database (stopped after the server).
    _accounts: Option<crate::accounts::Accounts>,
    /// Variables the server is started with (kept for a restart).
    env: Vec<(String, String)>,
}

/// A folder removed on drop (tansu reads `.env` from its working directory).
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tansu broker binary: on PATH or in cargo's bin folder (scripts/test.sh installs it).
fn tansu() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("tansu")).find(|p| p.is_file()));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .or_else(|| cargo_home.map(|h| h.join("bin/tansu")).filter(|p| p.is_file()))
        .context("tansu is not installed: cargo install tansu --locked --features dynostore")
}

static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The `signalcast-bench` binary that runs servers and workers. Tests, whose own
/// executable is the test harness, point this at `CARGO_BIN_EXE_signalcast-bench`.
pub fn set_exe(path: impl Into<PathBuf>) {
    let _ = EXE.set(path.into());
}

pub fn exe() -> std::io::Result<PathBuf> {
    match EXE.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe(),
    }
}

/// The folder of the peers' configs and script.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// A server certificate and its key, PEM files in `dir`.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// With `--tls`, a certificate for one server (`tag` tells servers apart) and its
/// folder, removed with the server.
fn run_certificate(tag: u16) -> anyhow::Result<Option<(Certificate, TempDir)>> {
    if !crate::run::options().tls {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("signalcast-bench-tls-{}-{tag}", std::process::id()));
    Ok(Some((certificate(&dir)?, TempDir(dir))))
}

/// A self-signed certificate for `localhost` (what WSS clients dial), written to `dir`.
pub fn certificate(dir: &std::path::Path) -> anyhow::Result<Certificate> {
    std::fs::create_dir_all(dir)?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let c = Certificate { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&c.cert, made.cert.pem())?;
    std::fs::write(&c.key, made.signing_key.serialize_pem())?;
    Ok(c)
}

/// This binary's `serve-signalcast` or `serve-reference` on `ws` and `publish`, with the
/// signal store in `data` (unless SIGNALCAST_STORE__DATA_DIR says where), serving WSS
/// with `tls`.
fn spawn_server(
    exe: &std::path::Path,
    sub: &str,
    ws: SocketAddr,
    publish: SocketAddr,
    data: Option<&TempDir>,
    tls: Option<&Certificate>,
    env: &[(String, String)],
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args([sub, "--ws", &ws.to_string(), "--publish", &publish.to_string()]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = data {
        cmd.env("SIGNALCAST_STORE__DATA_DIR", &dir.0);
    }
    if let Some(c) = tls {
        cmd.env("SIGNALCAST_TLS__CERT", &c.cert).env("SIGNALCAST_TLS__KEY", &c.key);
    }
    cmd.stdout(std::process::Stdio::null()).kill_on_drop(true).spawn()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} did not open")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A premium dev token with every tier feature in force: JWT verified, category mask
/// checked, and a daily quota counted on every delivery, set high enough (all bench
/// clients are one user) that a run never exhausts it.
pub fn bench_token() -> anyhow::Result<String> {
    let auth = gateway::server::dev_auth(&gateway::Config::default())?;
    let account = auth.accounts().get("u-premium-1").context("fixture user u-premium-1")?;
    let now = UnixNanos::now().0 / 1_000_000_000;
    let mut claims = gateway::auth::DevAuth::claims_for(account, now, Duration::from_secs(24 * 3600));
    claims.max_signals_per_day = Some(u32::MAX);
    Ok(auth.sign(&claims)?)
}

impl Server {
    /// Starts `target` (signalcast and the reference as child processes of this
    /// binary, peers through `peers/peers.sh`).
    pub async fn start(target: Target) -> anyhow::Result<Self> {
        let exe = exe()?;
        if target == Target::SignalcastKafka {
            anyhow::ensure!(
                !crate::run::options().tls,
                "--tls: the scaled-out target has no WSS variant here"
            );
            return Self::start_scaled_out(&exe, 1).await;
        }
        anyhow::ensure!(
            !(target == Target::Reference && crate::run::options().tls),
            "--tls: the raw reference has no TLS variant (not built)"
        );
        let mut data = None;
        let tls_files;
        let mut accounts = None;
        let mut env = Vec::new();
        let (endpoint, publish, child, pid) = match target {
            Target::Signalcast | Target::Reference => {
                let (ws, publish) = (free_port()?, free_port()?);
                let sub = if target == Target::Signalcast { "serve-signalcast" } else { "serve-reference" };
                if target == Target::Signalcast && std::env::var_os("SIGNALCAST_STORE__DATA_DIR").is_none() {
                    // The server's signal store, removed with the server (a run of a
                    // million signals leaves gigabytes).
                    let dir = std::env::temp_dir()
                        .join(format!("signalcast-bench-data-{}-{ws}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    data = Some(TempDir(dir));
                }
                // `--tls`: signalcast serves WSS with a certificate made for this server.
                let tls = if target == Target::Signalcast { run_certificate(ws)? } else { None };
                // `--accounts`: signalcast takes the sidecar's tokens.
                if target == Target::Signalcast && crate::run::options().accounts {
                    anyhow::ensure!(!crate::run::options().tls, "--accounts: with --tls, not built");
                    let a = crate::accounts::Accounts::start(&exe).await?;
                    env = a.gateway_env();
                    accounts = Some(a);
                }
                let child = spawn_server(
                    &exe,
                    sub,
                    local(ws),
                    local(publish),
                    data.as_ref(),
                    tls.as_ref().map(|t| &t.0),
                    &env,
                )?;
                let pid = child.id().context("child pid")?;
                wait_port(local(ws)).await?;
                wait_port(local(publish)).await?;
                if accounts.is_some() {
                    crate::accounts::Accounts::wait_ready(local(ws)).await?;
                }
                let path = match (&accounts, target) {
                    (Some(a), _) => format!("/ws?token={}", a.token),
                    (None, Target::Signalcast) => format!("/ws?token={}", bench_token()?),
                    (None, _) => "/".into(),
                };
                let tls_ca = tls.as_ref().map(|t| t.0.cert.clone());
                tls_files = tls;
                (Endpoint { target, addr: local(ws), path, tls_ca }, local(publish), Some(child), pid)
            }
            peer => {
                let name = peer.peer().context("peer")?;
                // `--tls`: the peer serves WSS (peers.sh reads PEERS_TLS_DIR).
                let tls = run_certificate(0)?;
                let mut start = Command::new("bash");
                start.arg(peers_dir().join("peers.sh")).args(["start", name]);
                if let Some((_, dir)) = &tls {
                    start.env("PEERS_TLS_DIR", &dir.0);
                }
                let ok = start.status().await?;
                if !ok.success() {
                    bail!("{name} is not available (bench/peers/peers.sh install)");
                }
                let pid: u32 =
                    std::fs::read_to_string(peers_dir().join(name).join("run/pid"))?.trim().parse()?;
                let (ws, path, publish) = match peer {
                    Target::NodeWs => (8084, "/bench".to_owned(), 9084),
                    Target::Nats => (8081, "/".to_owned(), 4222),
                    // nginx serves WSS beside the plain port its publisher uses.
                    _ if tls.is_some() => (8092, "/sub/bench".to_owned(), 8082),
                    _ => (8082, "/sub/bench".to_owned(), 8082),
                };
                let tls_ca = tls.as_ref().map(|t| t.0.cert.clone());
                tls_files = tls;
                (Endpoint { target, addr: local(ws), path, tls_ca }, local(publish), None, pid)
            }
        };
        Ok(Self {
            target,
            endpoint,
            publish,
            pid,
            child,
            helpers: Vec::new(),
            others: Vec::new(),
            _dir: data,
            tls: tls_files,
            _accounts: accounts,
            env,
        })
    }

    /// A broker, an engine node and `gateways` gateway nodes; clients on the first
    /// gateway (the others in [`Server::others`]), the publisher on the engine's feed.
    pub async fn start_scaled_out(exe: &std::path::Path, gateways: usize) -> anyhow::Result<Self> {
        let kafka = local(free_port()?);
        let dir =
            TempDir(std::env::temp_dir().join(format!("signalcast-bench-tansu-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0)?;
        let url = format!("tcp://{kafka}");
        let broker = Command::new(tansu()?)
            .current_dir(&dir.0)
            .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_port(kafka).await?;
        let node = |role: &str, ws: u16, publish: u16| -> std::io::Result<Child> {
            Command::new(exe)
                .args([
                    "serve-signalcast",
                    "--ws",
                    &local(ws).to_string(),
                    "--publish",
                    &local(publish).to_string(),
                ])
                .env("SIGNALCAST_ROLE", role)
                .env("SIGNALCAST_KAFKA__BROKERS", kafka.to_string())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
        };
        let (engine_ws, feed) = (free_port()?, free_port()?);
        let engine = node("engine", engine_ws, feed)?;
        wait_port(local(feed)).await?;
        let path = format!("/ws?token={}", bench_token()?);
        let mut helpers = vec![engine, broker];
        let mut first = None;
        let mut others = Vec::new();
        for _ in 0..gateways.max(1) {
            let ws = free_port()?;
            let gateway = node("gateway", ws, free_port()?)?;
            let pid = gateway.id().context("gateway pid")?;
            wait_port(local(ws)).await?;
            let endpoint = Endpoint {
                target: Target::SignalcastKafka,
                addr: local(ws),
                path: path.clone(),
                tls_ca: None,
            };
            if first.is_none() {
                first = Some((endpoint, pid, gateway));
            } else {
                others.push((endpoint, pid));
                helpers.push(gateway);
            }
        }
        let (endpoint, pid, gateway) = first.context("a gateway")?;
        Ok(Self {
            target: Target::SignalcastKafka,
            endpoint,
            publish: local(feed),
            pid,
            child: Some(gateway),
            helpers,
            others,
            _dir: Some(dir),
            tls: None,
            _accounts: None,
            env: Vec::new(),
        })
    }

    /// Kills the node clients are on (SIGKILL), leaving the rest running.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Kills the signalcast server (SIGKILL: an unclean stop, nothing flushed on the way
    /// out) and starts it again on the same addresses and the same store; returns once
    /// it accepts connections again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.target == Target::Signalcast, "only a single signalcast node restarts here");
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        let child = spawn_server(
            &exe()?,
            "serve-signalcast",
            self.endpoint.addr,
            self.publish,
            self._dir.as_ref(),
            self.tls.as_ref().map(|t| &t.0),
            &self.env,
        )?;
        self.pid = child.id().context("child pid")?;
        self.child = Some(child);
        wait_port(self.endpoint.addr).await
    }

    pub async fn stop(mut self) {
        for mut h in self.helpers.drain(..) {
            let _ = h.kill().await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        } else if let Some(name) = self.target.peer() {
            let _ =
                Command::new("bash").arg(peers_dir().join("peers.sh")).args(["stop", name]).status().await;
        }
    }

    /// Waits until the server has registered `n` subscribers, where it can tell
    /// (nchan registers WebSocket subscribers asynchronously).
    pub async fn settle(&self, n: usize) {
        if self.target != Target::Nchan {
            return;
        }
        for _ in 0..300 {
            if nchan_subscribers().await.unwrap_or(0) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A sample of signalcast's `/metrics` on `addr` (a series without labels).
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let value =
        out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).context("no such series")?;
    Ok(value.trim().parse()?)
}

async fn nchan_subscribers() -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(local(8082)).await?;
    s.write_all(b"GET /nchan_status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let line = out.lines().find(|l| l.starts_with("subscribers:")).context("no subscribers line")?;
    Ok(line.trim_start_matches("subscribers:").trim().parse()?)
}

/// What the peers and the reference publish (`--peer-body`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PeerBody {
    /// A small envelope padded to the size ([`padded_payload`]).
    #[default]
    Pad,
    /// signalcast's own SIGNAL_UPDATE of the padded mix ([`signal_payload`]).
    Signal,
}

/// A peer message of about `size` bytes that carries its send time like signalcast's
/// does, shaped as `--peer-body` says.
pub fn peer_payload(seq: u64, size: usize) -> Vec<u8> {
    match crate::run::options().peer_body {
        PeerBody::Pad => padded_payload(seq, size),
        PeerBody::Signal => signal_payload(seq, size),
    }
}

/// The SIGNAL_UPDATE a signalcast subscriber of `signals_premium` gets for the padded
/// mix at `size` (the bench's signal, routed with the bench's tick as its market
/// snapshot), with `seq` and the send time now: a peer sending it costs its clients what
/// signalcast's messages cost them.
pub fn signal_payload(seq: u64, size: usize) -> Vec<u8> {
    let now = UnixNanos::now();
    let (mut s, _) = bench_signal(size);
    s.id = uuid::Uuid::from_u128(u128::from(seq));
    premium_update(&s, Some(&bench_tick(now)), seq, now)
}

/// `s` as signalcast's `signals_premium` subscribers get it, routed `now` with `tick`'s
/// market snapshot, under `seq`.
fn premium_update(s: &Signal, tick: Option<&engine::model::Tick>, seq: u64, now: UnixNanos) -> Vec<u8> {
    let market = tick.map(|t| engine::pipeline::enrich::snapshot(t, now));
    let mut data = Vec::new();
    engine::pipeline::encode::signal_data(&mut data, s, market.as_ref(), now, now, Some(now));
    let mut text = Vec::new();
    engine::pipeline::encode::signal_update(&mut text, "signals_premium", seq, &data);
    text
}

/// The tick the padded mix's publisher sends first: the market snapshot its signals
/// are routed with.
fn bench_tick(ts: UnixNanos) -> engine::model::Tick {
    engine::model::Tick {
        symbol: Symbol::new("RELIANCE").unwrap_or_else(|_| unreachable!()),
        exchange: Exchange::new("NSE").unwrap_or_else(|_| unreachable!()),
        bid: Price::from_raw(24_567_000).unwrap_or_default(),
        ask: Price::from_raw(24_568_000).unwrap_or_default(),
        last: Price::from_raw(24_567_500).unwrap_or_default(),
        volume: 1_000,
        ts,
    }
}

/// A small JSON envelope padded with `x` to `size` bytes.
pub fn padded_payload(seq: u64, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"type":"SIGNAL_UPDATE","channel":"signals_premium","seq":{seq},"data":{{"sent_ts":{},"pad":""#,
        crate::proto::now_us()
    );
    let tail = "\"}}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(head.as_bytes());
    v.resize(v.len() + pad, b'x');
    v.extend_from_slice(tail.as_bytes());
    v
}

/// Publishes messages into a target.
#[derive(Debug)]
pub enum Publisher {
    Signalcast {
        producer: Producer,
        /// Sent in turn, each with a new id.
        templates: Vec<Signal>,
        nonce: u128,
    },
    Lines {
        stream: TcpStream,
        prefix: &'static [u8],
    },
    /// NATS and nchan answer the publisher (INFO and PONG; HTTP responses): a task
    /// reads and discards that so the server never blocks on us.
    Nats {
        stream: OwnedWriteHalf,
        _drain: Drain,
    },
    Nchan {
        stream: OwnedWriteHalf,
        _drain: Drain,
    },
}

/// What signalcast's publisher sends (`--mix`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// One signal, its `analysis` padded with `x` to the window's size: the same bytes
    /// for every target. Compresses unrealistically well.
    #[default]
    Padded,
    /// The embedded fixtures' signals in turn (their own analysis text, each with the
    /// market snapshot of its symbol): what compression is measured on. Peers get
    /// padded messages of the mix's mean size.
    Fixtures,
}

/// The fixture signals as the bench publishes them (every tier's channels take them:
/// equity, confidence at least the bench signal's; no exits), the latest fixture tick of each
/// symbol, and the mean size of their SIGNAL_UPDATEs.
pub fn fixture_mix() -> (Vec<Signal>, usize, Vec<engine::model::Tick>) {
    let now = UnixNanos::now();
    let floor = bench_signal(0).0.confidence;
    let mut signals = Vec::new();
    let mut ticks = std::collections::HashMap::new();
    for e in gateway::demo::events() {
        match e {
            gateway::demo::Event::Tick(t) => {
                ticks.insert(t.symbol, engine::model::Tick { ts: now, ..t });
            }
            // An exit closes the source's open signals of its symbol: those closes would
            // be deliveries carrying an earlier signal's send time.
            gateway::demo::Event::Signal(s) if s.signal_type == SignalType::Exit => {}
            gateway::demo::Event::Signal(s) => signals.push(Signal {
                category: Category::Equity,
                confidence: s.confidence.max(floor),
                generated_at: now,
                expires_at: now.plus_nanos(24 * 3_600_000_000_000),
                ..*s
            }),
        }
    }
    let mut total = 0;
    for s in &signals {
        total += premium_update(s, ticks.get(&s.symbol), 1_000_000, now).len();
    }
    let mean = total.checked_div(signals.len()).unwrap_or(0);
    (signals, mean, ticks.into_values().collect())
}

/// The signal the bench publishes into signalcast: passes every tier, equity (in the
/// bench user's categories), with `analysis` padding so the SIGNAL_UPDATE is about
/// `size` bytes. Returns the signal and the size clients will actually see: counted
/// with the market snapshot it is routed with (the publisher sends [`bench_tick`]
/// first), which the peers' messages of that size must match.
pub fn bench_signal(size: usize) -> (Signal, usize) {
    let now = UnixNanos::now();
    let mut s = Signal {
        id: uuid::Uuid::nil(),
        source_id: uuid::Uuid::from_u128(0xbe7c4),
        source_type: SourceType::Algorithm,
        symbol: Symbol::new("RELIANCE").unwrap_or_else(|_| unreachable!()),
        exchange: Exchange::new("NSE").unwrap_or_else(|_| unreachable!()),
        category: Category::Equity,
        signal_type: SignalType::Buy,
        entry_price: Price::from_raw(24_567_500).unwrap_or_default(),
        target_price: Price::from_raw(25_200_000).unwrap_or_default(),
        stop_loss: Price::from_raw(24_200_000).unwrap_or_default(),
        quantity_recommended: Some(50),
        confidence: Confidence::new(9_500).unwrap_or(Confidence::MAX),
        generated_at: now,
        expires_at: now.plus_nanos(24 * 3_600_000_000_000),
        analysis: None,
    };
    let base = premium_update(&s, Some(&bench_tick(now)), 1_000_000, now).len();
    if size > base + 2 {
        // `null` becomes `"xxx…"`: 2 quotes + k bytes instead of 4.
        let k = size - base + 2;
        s.analysis = Analysis::from_json(format!("\"{}\"", "x".repeat(k))).ok();
        return (s, size);
    }
    (s, base)
}

/// Aborts its task when dropped.
#[derive(Debug)]
pub struct Drain(tokio::task::JoinHandle<()>);

impl Drop for Drain {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn nodelay(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn drained(addr: SocketAddr) -> anyhow::Result<(OwnedWriteHalf, Drain)> {
    let stream = nodelay(addr).await?;
    let (mut rd, wr) = stream.into_split();
    let task = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    Ok((wr, Drain(task)))
}

impl Publisher {
    pub async fn connect(server: &Server, size: usize, mix: Mix) -> anyhow::Result<Self> {
        Ok(match server.target {
            Target::Signalcast | Target::SignalcastKafka => {
                let cfg =
                    ProducerConfig::new(server.publish.to_string(), "bench", "dev-bench-1234567890abcdef");
                let producer = Producer::connect(cfg).await?;
                let (templates, ticks) = match mix {
                    Mix::Padded => (vec![bench_signal(size).0], vec![bench_tick(UnixNanos::now())]),
                    Mix::Fixtures => {
                        let (signals, _, ticks) = fixture_mix();
                        (signals, ticks)
                    }
                };
                // The market snapshot each signal is routed with.
                for t in &ticks {
                    producer.send_tick(t).await?;
                }
                if templates.is_empty() {
                    bail!("no signal to publish");
                }
                let nonce = u128::from(UnixNanos::now().0 as u64) << 64;
                Self::Signalcast { producer, templates, nonce }
            }
            Target::Reference => Self::Lines { stream: nodelay(server.publish).await?, prefix: b"" },
            Target::NodeWs => Self::Lines { stream: nodelay(server.publish).await?, prefix: b"bench " },
            Target::Nats => {
                let (stream, drain) = drained(server.publish).await?;
                let mut p = Self::Nats { stream, _drain: drain };
                if let Self::Nats { stream, .. } = &mut p {
                    stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").await?;
                }
                p
            }
            Target::Nchan => {
                let (stream, drain) = drained(server.publish).await?;
                Self::Nchan { stream, _drain: drain }
            }
        })
    }

    /// Publishes message `seq` of `size` bytes, stamped now.
    pub async fn publish(&mut self, seq: u64, size: usize) -> anyhow::Result<()> {
        match self {
            Self::Signalcast { producer, templates, nonce } => {
                let mut s = templates[(seq % templates.len() as u64) as usize].clone();
                s.id = uuid::Uuid::from_u128(*nonce | u128::from(seq));
                // The producer stamps its send time when it writes the frame.
                producer.send_signal(&s).await?;
            }
            Self::Lines { stream, prefix } => {
                let mut line = prefix.to_vec();
                line.extend_from_slice(&peer_payload(seq, size));
                line.push(b'\n');
                stream.write_all(&line).await?;
            }
            Self::Nats { stream, .. } => {
                let p = peer_payload(seq, size);
                let mut msg = format!("PUB bench.ch1 {}\r\n", p.len()).into_bytes();
                msg.extend_from_slice(&p);
                msg.extend_from_slice(b"\r\n");
                stream.write_all(&msg).await?;
            }
            Self::Nchan { stream, .. } => {
                let p = peer_payload(seq, size);
                let mut req = format!(
                    "POST /pub/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    p.len()
                )
                .into_bytes();
                req.extend_from_slice(&p);
                stream.write_all(&req).await?;
            }
        }
        Ok(())
    }

    /// Waits until everything published is in the server (signalcast: acknowledged).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if let Self::Signalcast { producer, .. } = self {
            producer.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_body_is_a_signal_update_with_its_market_and_send_time() {
        let before = crate::proto::now_us();
        let body = signal_payload(42, 735);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((v["type"].as_str(), v["seq"].as_u64()), (Some("SIGNAL_UPDATE"), Some(42)));
        assert_eq!(v["data"]["symbol"], "RELIANCE");
        assert!(v["data"]["market"].is_object(), "{v}");
        assert!(v["data"]["analysis"].as_str().is_some_and(|a| a.starts_with("xx")), "padded: {v}");
        let sent = crate::proto::sent_us(&body).expect("a send time");
        assert!(sent >= before && sent <= crate::proto::now_us(), "{sent}");
        // The size signalcast's subscribers see (the seq's digits aside), and the
        // padded envelope of that size.
        let seen = bench_signal(735).1;
        assert_eq!(seen, 735);
        assert!(body.len().abs_diff(seen) <= 8, "{} against {seen}", body.len());
        assert_eq!(padded_payload(42, seen).len(), seen);
    }
}
