//! The sidecar's HTTP API (docs/openapi.yaml).
//!
//! - `auth`: login, refresh (rotating), logout, `/v1/me`.
//! - `admin`: users, plans, subscriptions, signal subscriptions, suspension, producer
//!   keys, signing key rotation; behind the admin token.
//! - `feed`: the snapshot (producer keys, suspended users) and the entitlement change
//!   stream, for gateways; behind the
//!   gateway token.
//! - here: state, errors, the JWKS, health and metrics.

mod admin;
mod audit;
mod auth;
mod feed;
mod guard;
mod serve;

pub use guard::LoginLimits;
pub use serve::HttpLimits;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{RwLock, watch};

use crate::keys::{self, Keys};

/// Sidecar settings.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    /// Bearer token of the admin endpoints.
    pub admin_token: String,
    /// Bearer token gateways present to read the change feed and producer keys.
    pub gateway_token: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a request waits for a database connection before 503.
    pub pool_wait: Duration,
    pub login: LoginLimits,
    pub http: HttpLimits,
    /// Seals the signing keys at rest (crate::kek).
    pub kek: Arc<crate::kek::Kek>,
    /// HTTPS on both listeners: the certificate and key PEM files (re-read when they
    /// change). `None`: plain HTTP, for loopback only (main.rs refuses otherwise).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// PostgreSQL over TLS, its certificate verified against this CA file.
    pub database_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("pool_size", &self.pool_size)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("pool_wait", &self.pool_wait)
            .field("login", &self.login)
            .field("http", &self.http)
            .field("kek", &self.kek)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(
        database_url: impl Into<String>,
        admin_token: impl Into<String>,
        gateway_token: impl Into<String>,
        kek: crate::kek::Kek,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            pool_size: 16,
            admin_token: admin_token.into(),
            gateway_token: gateway_token.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            pool_wait: Duration::from_secs(5),
            login: LoginLimits::default(),
            http: HttpLimits::default(),
            kek: Arc::new(kek),
            tls: None,
            database_ca_file: None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    logins: AtomicU64,
    login_failures: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    reuse_detected: AtomicU64,
    feed_streams: AtomicU64,
    jwks_requests: AtomicU64,
}

pub(crate) struct App {
    pool: deadpool_postgres::Pool,
    keys: RwLock<Keys>,
    config: Config,
    head: watch::Receiver<i64>,
    counters: Counters,
    guard: guard::LoginGuard,
}

type Shared = Arc<App>;

/// An API error: status, a stable code and a message (never a secret, never SQL).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, for 429 and 503.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message) }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, axum::Json(json!({"error": self.code, "message": self.message}))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "database unavailable");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "accounts database unavailable")
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        unavailable(e)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => ApiError::conflict("already exists"),
            Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => ApiError::not_found("referenced record"),
            Some(c) if *c == SqlState::CHECK_VIOLATION => ApiError::bad_request("a field is out of range"),
            _ => unavailable(e),
        }
    }
}

impl From<crate::keys::KeyError> for ApiError {
    fn from(e: crate::keys::KeyError) -> Self {
        match &e {
            crate::keys::KeyError::Unknown(_) => return ApiError::not_found("signing key in force"),
            crate::keys::KeyError::Last(_) => return ApiError::conflict(e.to_string()),
            _ => {}
        }
        tracing::error!(error = %e, "signing keys");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "signing failed")
    }
}

/// Random bytes, or a 500 if the system has none to give.
fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    crate::secret::random()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no randomness"))
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn require(headers: &HeaderMap, secret: &str) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if !secret.is_empty() && same_secret(t, secret) => Ok(()),
        _ => Err(ApiError::unauthorized("a valid bearer token is required")),
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Tls(#[from] ::tls::TlsError),
}

/// The routes in one table: the routers are built from it, and [`ROUTES`] (method,
/// path) is what `tests/openapi.rs` holds against docs/openapi.yaml, both ways. Paths
/// under [`ADMIN`] are served on the admin listener only, the others on the public one.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:expr,)*) => {
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn routes(mut router: Router<Arc<App>>, admin: bool) -> Router<Arc<App>> {
            $(
                if $path.starts_with(ADMIN) == admin {
                    router = router.route($path, axum::routing::$method($handler));
                }
            )*
            router
        }
    };
}

/// Decodes `body` as the JSON body of the route `method path` (a path of [`ROUTES`])
/// and checks it, exactly as that route's handler does before it touches the database;
/// `Err` carries the status and message a client would get. Routes without a body
/// accept anything. (The fuzz target `sidecar_bodies` drives this with any bytes.)
pub fn decode_body(method: &str, path: &str, body: &[u8]) -> Result<(), (u16, String)> {
    use axum::Json;
    fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (u16, String)> {
        Json::<T>::from_bytes(body).map(|Json(t)| t).map_err(|e| (e.status().as_u16(), e.body_text()))
    }
    let checked = |r: Result<(), ApiError>| r.map_err(|e| (e.status.as_u16(), e.message));
    match (method, path) {
        ("post", "/v1/auth/login") => parse::<auth::Login>(body).map(drop),
        ("post", "/v1/auth/refresh" | "/v1/auth/logout") => parse::<auth::RefreshToken>(body).map(drop),
        ("post", "/v1/admin/users") => checked(parse::<admin::NewUser>(body)?.validate()),
        ("put", "/v1/admin/users/{id}/signal-subscription") => {
            checked(parse::<admin::SignalSubscription>(body)?.validate())
        }
        ("post", "/v1/admin/plans") => checked(parse::<admin::NewPlan>(body)?.validate()),
        ("post", "/v1/admin/subscriptions") => parse::<admin::NewSubscription>(body).map(drop),
        ("post", "/v1/admin/producer-keys") => parse::<admin::NewProducerKey>(body).map(drop),
        ("put", "/v1/admin/producers/{producer_id}") => parse::<admin::ProducerRightsBody>(body).map(drop),
        _ => Ok(()),
    }
}

/// The admin API's path prefix.
pub const ADMIN: &str = "/v1/admin/";

routes! {
    post "/v1/auth/login" => auth::login,
    post "/v1/auth/refresh" => auth::refresh,
    post "/v1/auth/logout" => auth::logout,
    get "/v1/me" => auth::me,
    post "/v1/admin/users" => admin::create_user,
    get "/v1/admin/users/{id}" => admin::get_user,
    post "/v1/admin/users/{id}/suspend" => admin::suspend,
    post "/v1/admin/users/{id}/reactivate" => admin::reactivate,
    put "/v1/admin/users/{id}/signal-subscription" => admin::set_signal_subscription,
    post "/v1/admin/plans" => admin::create_plan,
    post "/v1/admin/subscriptions" => admin::subscribe,
    post "/v1/admin/producer-keys" => admin::issue_producer_key,
    delete "/v1/admin/producer-keys/{id}" => admin::revoke_producer_key,
    put "/v1/admin/producers/{producer_id}" => admin::set_producer_rights,
    post "/v1/admin/signing-keys/rotate" => admin::rotate_signing_key,
    post "/v1/admin/signing-keys/{kid}/retire" => admin::retire_signing_key,
    get "/v1/gateway/snapshot" => feed::snapshot,
    get "/v1/gateway/changes" => feed::changes,
    get "/.well-known/jwks.json" => jwks,
    get "/health/live" => || async { "ok\n" },
    get "/health/ready" => ready,
    get "/metrics" => metrics,
}

/// The public API (auth, JWKS, the gateways' feed, health, metrics) and the admin API,
/// each served on its own listener.
#[derive(Debug)]
pub struct Routers {
    pub public: Router,
    pub admin: Router,
}

/// Connects, migrates, loads keys; returns the routers.
pub async fn app(config: Config) -> Result<Routers, StartError> {
    let db_tls = crate::db::DbTls::from_ca(config.database_ca_file.as_deref())?;
    let pool = crate::db::pool(&config.database_url, config.pool_size, config.pool_wait, &db_tls)?;
    crate::db::migrate(&pool).await?;
    let sealed = keys::seal_cleartext(&pool, &config.kek).await?;
    if sealed > 0 {
        tracing::info!(sealed, "signing keys stored in clear are now sealed");
    }
    let keys = keys::load(&pool, &config.kek).await?;
    let head = crate::changes::follow(db_tls.config(&config.database_url)?, db_tls);
    let guard = guard::LoginGuard::new(&config.login);
    tracing::info!(permits = guard.permits(), "password verifications at once");
    let app =
        Arc::new(App { pool, keys: RwLock::new(keys), config, head, counters: Counters::default(), guard });
    tokio::spawn(refresh_keys(Arc::downgrade(&app)));
    let http = app.config.http;
    let common = |r: Router<Arc<App>>| {
        r.fallback(|| async { ApiError::not_found("endpoint") })
            .layer(axum::middleware::from_fn_with_state(http.request_timeout, serve::deadline))
            .layer(axum::extract::DefaultBodyLimit::max(http.max_body))
    };
    let public = common(routes(Router::new(), false)).with_state(Arc::clone(&app));
    // The admin token is checked, and the action recorded, around the handler: before
    // any body is read or parsed.
    let admin = common(
        routes(Router::new(), true)
            .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&app), audit::admin_gate)),
    )
    .with_state(app);
    Ok(Routers { public, admin })
}

/// Serves the public API on `listener` and the admin API on `admin` until `shutdown`
/// resolves; then open connections get [`HttpLimits::shutdown_grace`] to finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let limits = config.http;
    let tls = match &config.tls {
        Some((cert, key)) => Some(::tls::acceptor(cert, key)?),
        None => None,
    };
    let routers = app(config).await?;
    let (stop_tx, stop) = watch::channel(false);
    let acceptor = tls.as_ref().map(|(a, _)| a.clone());
    let public = tokio::spawn(serve::serve(listener, routers.public, limits, stop.clone(), acceptor.clone()));
    let admin = tokio::spawn(serve::serve(admin, routers.admin, limits, stop.clone(), acceptor));
    if let Some((_, cert)) = tls {
        // A renewed certificate is served from the next handshake on.
        let mut stop = stop;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
                match cert.reload_if_changed() {
                    Ok(true) => tracing::info!("TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one")
                    }
                }
            }
        });
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(public, admin);
    Ok(())
}

async fn jwks(State(app): State<Shared>) -> Response {
    app.counters.jwks_requests.fetch_add(1, Ordering::Relaxed);
    // From memory: an unauthenticated endpoint must not cost a database read. The keys
    // are reloaded when the change log moves (a rotation by any sidecar writes to it)
    // and once a minute (`refresh_keys`).
    let jwks = app.keys.read().await.jwks().clone();
    ([(header::CACHE_CONTROL, "max-age=60")], axum::Json(jwks)).into_response()
}

/// Reloads the signing keys from the database whenever the change log moves, and once
/// a minute; ends when the app is gone.
async fn refresh_keys(app: std::sync::Weak<App>) {
    let Some(mut head) = app.upgrade().map(|a| a.head.clone()) else { return };
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(60), head.changed()).await {
            return; // the change feed is gone: so is the app
        }
        let Some(app) = app.upgrade() else { return };
        match keys::load(&app.pool, &app.config.kek).await {
            Ok(keys) => *app.keys.write().await = keys,
            Err(e) => tracing::warn!(error = %e, "cannot reload signing keys; serving the ones in memory"),
        }
    }
}

async fn ready(State(app): State<Shared>) -> Response {
    let check = async { app.pool.get().await.ok()?.query_one("SELECT 1", &[]).await.ok() };
    match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Some(_)) => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

async fn metrics(State(app): State<Shared>) -> Response {
    let c = &app.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let status = app.pool.status();
    let now = Snapshot {
        logins: [get(&c.logins), get(&c.login_failures)],
        refreshes: [get(&c.refreshes), get(&c.refresh_failures)],
        reuse: get(&c.reuse_detected),
        streams: get(&c.feed_streams),
        jwks: get(&c.jwks_requests),
        position: *app.head.borrow(),
        db: [status.size as i64, status.available as i64],
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(now));
    let mut body = String::with_capacity(2048);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

/// The counters at one scrape, encoded by `prometheus-client`.
#[derive(Debug)]
struct Snapshot {
    /// ok, refused
    logins: [u64; 2],
    refreshes: [u64; 2],
    reuse: u64,
    streams: u64,
    jwks: u64,
    position: i64,
    /// open, idle
    db: [i64; 2],
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        for (name, help, [ok, refused]) in [
            ("signalcast_accounts_logins", "Logins, by result.", self.logins),
            ("signalcast_accounts_refreshes", "Refresh-token exchanges, by result.", self.refreshes),
        ] {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(ok).encode(f.encode_family(&[("result", "ok")])?)?;
            ConstCounter::new(refused).encode(f.encode_family(&[("result", "refused")])?)?;
        }
        for (name, help, v) in [
            (
                "signalcast_accounts_refresh_reuse",
                "Refresh tokens presented twice (the family is revoked).",
                self.reuse,
            ),
            ("signalcast_accounts_change_streams", "Change-feed streams opened by gateways.", self.streams),
            ("signalcast_accounts_jwks_requests", "JWKS documents served.", self.jwks),
        ] {
            let m = ConstCounter::new(v);
            m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        let m = ConstGauge::new(self.position);
        m.encode(enc.encode_descriptor(
            "signalcast_accounts_change_position",
            "Position of the latest change in the feed.",
            None,
            m.metric_type(),
        )?)?;
        let mut f = enc.encode_descriptor(
            "signalcast_accounts_db_connections",
            "Database pool connections, by state.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.db[0]).encode(f.encode_family(&[("state", "open")])?)?;
        ConstGauge::new(self.db[1]).encode(f.encode_family(&[("state", "idle")])?)
    }
}

#[cfg(test)]
mod tests {
    use super::decode_body;

    #[test]
    fn bodies_are_decoded_and_checked_as_their_handlers_do() {
        let ok = |m, p, b: &str| assert_eq!(decode_body(m, p, b.as_bytes()), Ok(()), "{m} {p} {b}");
        let refused = |m, p, b: &str| {
            let (status, why) = decode_body(m, p, b.as_bytes()).unwrap_err();
            assert!((400..500).contains(&status), "{m} {p} {b}: {status} {why}");
            why
        };
        ok("post", "/v1/auth/login", r#"{"email":"a@b.c","password":"x"}"#);
        refused("post", "/v1/auth/login", r#"{"email":"a@b.c"}"#);
        refused("post", "/v1/auth/refresh", "not json");
        ok("post", "/v1/admin/users", r#"{"id":"u","email":"e","password":"12345678"}"#);
        let why = refused("post", "/v1/admin/users", r#"{"id":"u","email":"e","password":"1234567"}"#);
        assert!(why.contains("8 characters"), "{why}");
        let why = refused(
            "post",
            "/v1/admin/users",
            r#"{"id":"u","email":"e","password":"12345678","categories":["gold"]}"#,
        );
        assert!(why.contains("gold"), "{why}");
        refused(
            "put",
            "/v1/admin/users/{id}/signal-subscription",
            r#"{"categories":["x"],"real_time_access":true}"#,
        );
        ok("post", "/v1/admin/plans", r#"{"id":"p","name":"P","tier":"basic"}"#);
        refused("post", "/v1/admin/plans", r#"{"id":"p","name":"P","tier":"platinum"}"#);
        ok("get", "/health/live", "anything at all");
        // Every route that takes a body refuses an empty one.
        for (m, p) in super::ROUTES {
            if decode_body(m, p, b"{}").is_err() {
                refused(m, p, "");
            }
        }
    }
}
