//! Tokens and live entitlements from the accounts sidecar (`signalcast-accounts`).
//!
//! Access tokens are EdDSA JWTs verified here against the sidecar's JWKS (fetched at
//! start, refreshed every minute and when a token names an unknown key, so a key
//! rotation needs no restart). The sidecar's change feed (server-sent events with a
//! resumable position) is followed in the background: each change goes to the hub
//! (upgrade, downgrade, suspension of live connections) and suspended users are
//! refused at once. Producer API keys for the TCP feed come from it too (SHA-256
//! only); a revocation cuts the producer's live connection. If the sidecar or its database is down, connections keep
//! streaming, issued tokens keep verifying, and readiness reports the feed as down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Notify;

use super::client::{Endpoint, HttpError, get_json, stream_events};
use super::verified::{self, Verified};
use super::{AUDIENCE, AuthError, Authenticator, Claims, Session};
use contract::{Change, ChangeEvent, Snapshot};

/// A user's rights as the change feed reports them (the contract's type).
pub use contract::Entitlements;

/// Where changes go (the hub).
pub type OnChange = Arc<dyn Fn(&Entitlements) + Send + Sync>;

/// The fastest the JWKS is fetched again because a token named an unknown key.
pub const KID_MISS_EVERY: Duration = Duration::from_secs(5);

/// Clock skew allowed on `exp` and `nbf`, seconds.
const LEEWAY_S: u64 = 5;

pub struct SidecarAuth {
    /// Where the sidecar is, and the TLS that verifies it.
    endpoint: Endpoint,
    gateway_token: String,
    keys: RwLock<HashMap<String, DecodingKey>>,
    suspended: RwLock<HashSet<String>>,
    validation: Validation,
    /// Tokens verified already: a reconnecting client's costs a lookup.
    verified: Verified,
    /// A rotation was announced: fetch the JWKS now.
    rotated: Notify,
    /// A token named a key we do not know: fetch the JWKS, at most once per
    /// [`KID_MISS_EVERY`] (unauthenticated clients can send such tokens at will).
    kid_miss: Notify,
    feed_up: AtomicBool,
    /// The change feed was up at least once (so the keys and the snapshot are in).
    was_up: AtomicBool,
    /// Producer id -> SHA-256 (hex) of each active API key.
    producers: RwLock<HashMap<String, HashSet<String>>>,
    /// Producers that may send ticks.
    tick_producers: RwLock<HashSet<String>>,
    /// The signal sources each producer may publish under.
    sources: RwLock<HashMap<String, HashSet<uuid::Uuid>>>,
    /// Users whose rights changed recently enough for a token issued before the change
    /// to be alive: their current rights, which override such a token.
    changed: RwLock<Changed>,
    /// Bumped when producer keys change: connected producers are verified again.
    revision: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for SidecarAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarAuth").field("sidecar", &self.endpoint.to_string()).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("accounts url must look like https://host:port (or http:// on loopback), got {0:?}")]
    Url(String),
    #[error(
        "accounts url {0} is plain http to a host that is not loopback: the JWKS, the snapshot and \
         the change feed could be forged on the way (use https:// with accounts_ca_file, or set \
         accounts_insecure_plain_http if something else adds TLS)"
    )]
    PlainHttp(String),
    #[error(
        "accounts url {0} is https: accounts_ca_file (the CA that signed the sidecar's certificate) is required"
    )]
    NoCa(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// How the gateway reaches the sidecar (the `auth` settings).
#[derive(Debug, Clone, Copy)]
pub struct SidecarLink<'a> {
    /// `https://host:port`, or `http://host:port` on loopback.
    pub url: &'a str,
    /// The bearer token the sidecar expects from gateways.
    pub gateway_token: &'a str,
    /// PEM trust anchors for an https url, re-read when the file changes.
    pub ca_file: Option<&'a std::path::Path>,
    /// Allow plain http to a host that is not loopback.
    pub insecure_plain_http: bool,
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl SidecarAuth {
    /// Starts following the sidecar. Returns at once; keys arrive in the background
    /// (tokens are refused until they do).
    pub fn start(link: SidecarLink<'_>, on_change: OnChange) -> Result<Arc<Self>, SidecarError> {
        let url = link.url;
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err(SidecarError::Url(url.to_owned())),
        };
        let addr = Some(rest.trim_end_matches('/').to_owned())
            .filter(|a| a.contains(':') && !a.contains('/'))
            .ok_or_else(|| SidecarError::Url(url.to_owned()))?;
        let connector = if tls {
            let ca = link.ca_file.ok_or_else(|| SidecarError::NoCa(url.to_owned()))?;
            Some(crate::tls::connector(ca)?)
        } else {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            if !is_loopback(host) && !link.insecure_plain_http {
                return Err(SidecarError::PlainHttp(url.to_owned()));
            }
            None
        };
        let gateway_token = link.gateway_token;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        let me = Arc::new(Self {
            endpoint: Endpoint::new(addr, connector),
            gateway_token: gateway_token.to_owned(),
            keys: RwLock::new(HashMap::new()),
            suspended: RwLock::new(HashSet::new()),
            validation,
            verified: Verified::new(verified::CAPACITY, LEEWAY_S as i64),
            rotated: Notify::new(),
            kid_miss: Notify::new(),
            feed_up: AtomicBool::new(false),
            was_up: AtomicBool::new(false),
            producers: RwLock::new(HashMap::new()),
            tick_producers: RwLock::new(HashSet::new()),
            sources: RwLock::new(HashMap::new()),
            changed: RwLock::new(Changed::default()),
            revision: tokio::sync::watch::Sender::new(0),
        });
        tokio::spawn(Arc::clone(&me).keep_keys());
        tokio::spawn(Arc::clone(&me).follow(on_change));
        Ok(me)
    }

    /// What the gateway can do with what it has from the sidecar.
    pub fn state(&self) -> AccountsState {
        let keys = self.read_keys().len();
        let up = self.feed_up.load(Ordering::Acquire);
        if keys == 0 {
            AccountsState::NotSynced
        } else if up {
            AccountsState::Live
        } else if self.was_up.load(Ordering::Acquire) {
            AccountsState::Degraded
        } else {
            AccountsState::NotSynced
        }
    }

    /// Signing keys held (from the JWKS).
    pub fn key_count(&self) -> usize {
        self.read_keys().len()
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, DecodingKey>> {
        read(&self.keys)
    }

    async fn keep_keys(self: Arc<Self>) {
        loop {
            match get_json(&self.endpoint, "/.well-known/jwks.json", None).await {
                Ok(jwks) => {
                    let keys = parse_jwks(&jwks);
                    if !keys.is_empty() {
                        *write(&self.keys) = keys;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the accounts JWKS; keeping the keys we have")
                }
            }
            let fetched = tokio::time::Instant::now();
            let wait = if self.read_keys().is_empty() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(60)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.rotated.notified() => {}
                () = self.kid_miss.notified() => tokio::time::sleep_until(fetched + KID_MISS_EVERY).await,
            }
        }
    }

    async fn follow(self: Arc<Self>, on_change: OnChange) {
        let mut after: i64 = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.follow_once(&mut after, &on_change).await;
            if self.feed_up.swap(false, Ordering::AcqRel) {
                self.was_up.store(true, Ordering::Release);
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "accounts change feed lost; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Loads the snapshot (producer keys, suspended users), then follows the stream
    /// from `after` (the snapshot's position the first time) until it breaks.
    async fn follow_once(&self, after: &mut i64, on_change: &OnChange) -> Result<(), HttpError> {
        let snap = get_json(&self.endpoint, "/v1/gateway/snapshot", Some(&self.gateway_token)).await?;
        let snap: Snapshot = serde_json::from_value(snap).map_err(|e| HttpError::Body(e.to_string()))?;
        let mut producers: HashMap<String, HashSet<String>> = HashMap::new();
        for k in snap.keys {
            producers.entry(k.producer_id).or_default().insert(k.key_sha256);
        }
        *write(&self.producers) = producers;
        *write(&self.tick_producers) =
            snap.producers.iter().filter(|p| p.ticks).map(|p| p.producer_id.clone()).collect();
        *write(&self.sources) =
            snap.producers.into_iter().map(|p| (p.producer_id, parse_sources(&p.sources))).collect();
        *write(&self.suspended) = snap.suspended.into_iter().collect();
        write(&self.changed).load(snap.recent, snap.token_ttl_secs);
        self.revision.send_modify(|r| *r += 1);
        if *after == 0 {
            *after = snap.position;
        }
        let path = format!("/v1/gateway/changes?after={after}");
        stream_events(&self.endpoint, &path, &self.gateway_token, &self.feed_up, |data| {
            let Ok(event) = serde_json::from_str::<ChangeEvent>(data) else {
                tracing::warn!("unreadable change event from the accounts sidecar; skipped");
                return;
            };
            *after = (*after).max(event.position);
            match event.change {
                Change::User { user: Some(e), .. } => {
                    let mut suspended = write(&self.suspended);
                    if e.is_active() {
                        suspended.remove(&e.id);
                    } else {
                        suspended.insert(e.id.clone());
                    }
                    drop(suspended);
                    write(&self.changed).insert(e.clone());
                    on_change(&e);
                }
                // A user that no longer exists: its tokens cannot be refreshed; what is
                // connected ends with its token.
                Change::User { user: None, .. } => {}
                Change::Producer { producer_id, keys, ticks, sources } => {
                    write(&self.sources).insert(producer_id.clone(), parse_sources(&sources));
                    let keys: HashSet<String> = keys.into_iter().map(|k| k.key_sha256).collect();
                    let mut tick_producers = write(&self.tick_producers);
                    if ticks {
                        tick_producers.insert(producer_id.clone());
                    } else {
                        tick_producers.remove(&producer_id);
                    }
                    drop(tick_producers);
                    write(&self.producers).insert(producer_id, keys);
                    self.revision.send_modify(|r| *r += 1);
                }
                Change::Keys => self.rotated.notify_one(),
            }
        })
        .await
    }
}

/// The gateway's standing with the accounts sidecar (`/health/ready`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountsState {
    /// No signing keys yet, or the first snapshot is not in: tokens cannot be checked.
    NotSynced,
    /// Keys held and the change feed connected.
    Live,
    /// The change feed is down but the cached keys still verify tokens: clients can
    /// connect and reconnect; logins and rights changes wait for the feed.
    Degraded,
}

/// The sidecar checks each source is a UUID before storing it; one that is not binds
/// nothing.
fn parse_sources(sources: &[String]) -> HashSet<uuid::Uuid> {
    sources.iter().filter_map(|s| uuid::Uuid::parse_str(s).ok()).collect()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl engine::feed::ProducerAuth for SidecarAuth {
    fn verify(&self, producer_id: &str, api_key: &str) -> bool {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, api_key.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        read(&self.producers).get(producer_id).is_some_and(|keys| keys.contains(&hex))
    }

    fn may_send_ticks(&self, producer_id: &str) -> bool {
        read(&self.tick_producers).contains(producer_id)
    }

    fn may_publish_as(&self, producer_id: &str, source_id: &uuid::Uuid) -> bool {
        read(&self.sources).get(producer_id).is_some_and(|s| s.contains(source_id))
    }

    /// The sidecar's SHA-256 of each key is the HMAC key of signed Kafka records.
    fn signing_keys(&self, producer_id: &str) -> Vec<[u8; 32]> {
        let decode = |hex: &str| -> Option<[u8; 32]> {
            let mut out = [0u8; 32];
            if hex.len() != 64 {
                return None;
            }
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        };
        read(&self.producers)
            .get(producer_id)
            .map(|keys| keys.iter().filter_map(|k| decode(k)).collect())
            .unwrap_or_default()
    }

    fn revisions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.revision.subscribe())
    }
}

/// Users' current rights from the change feed, kept while a token issued before the
/// change may be alive (`token_ttl` plus a minute), then forgotten: memory is bounded
/// by the users changed within a token's lifetime, not by every user ever changed.
#[derive(Debug, Default)]
struct Changed {
    by_user: HashMap<String, Entitlements>,
    token_ttl_secs: u64,
    pruned_at: i64,
}

impl Changed {
    fn load(&mut self, recent: Vec<Entitlements>, token_ttl_secs: u64) {
        self.token_ttl_secs = token_ttl_secs;
        self.by_user = recent.into_iter().map(|e| (e.id.clone(), e)).collect();
    }

    fn insert(&mut self, e: Entitlements) {
        let now = engine::model::UnixNanos::now().0 / 1_000_000_000;
        if now - self.pruned_at >= 60 && self.token_ttl_secs > 0 {
            self.pruned_at = now;
            let ttl = i64::try_from(self.token_ttl_secs).unwrap_or(i64::MAX);
            let keep_after = now.saturating_sub(ttl).saturating_sub(60);
            self.by_user.retain(|_, e| e.changed_at.is_none_or(|t| t > keep_after));
        }
        self.by_user.insert(e.id.clone(), e);
    }

    /// `session` (from a token issued at `iat`) with the user's current rights when they
    /// changed at or after `iat`.
    fn clamp(&self, mut session: Session, iat: i64) -> Session {
        if let Some(e) = self.by_user.get(&session.user_id)
            && iat <= e.changed_at.unwrap_or(i64::MAX)
        {
            session.tier = e.tier;
            session.categories = e.categories.iter().copied().collect();
            session.real_time = e.real_time;
            session.max_signals_per_day = e.max_signals_per_day;
        }
        session
    }
}

fn parse_jwks(jwks: &Value) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for k in jwks["keys"].as_array().into_iter().flatten() {
        if k["kty"] != "OKP" || k["crv"] != "Ed25519" {
            continue;
        }
        if let (Some(kid), Some(x)) = (k["kid"].as_str(), k["x"].as_str())
            && let Ok(key) = DecodingKey::from_ed_components(x)
        {
            keys.insert(kid.to_owned(), key);
        }
    }
    keys
}

impl Authenticator for SidecarAuth {
    fn authenticate(&self, token: &str) -> Result<Session, AuthError> {
        let digest = verified::digest(token);
        let now = engine::model::UnixNanos::now().0 / 1_000_000_000;
        let claims = match self.verified.get(&digest, now) {
            // Verified before, by a key still published.
            Some((kid, claims)) if self.read_keys().contains_key(&kid) => claims,
            _ => {
                let (kid, claims) = self.verify(token)?;
                self.verified.insert(digest, kid, claims.clone(), now);
                claims
            }
        };
        if read(&self.suspended).contains(&claims.sub) {
            return Err(AuthError::Suspended);
        }
        let iat = claims.iat;
        // A token issued before the user's last change carries old rights (a
        // downgrade would be undone by reconnecting): the current ones apply.
        Ok(read(&self.changed).clamp(Session::from(claims), iat))
    }
}

impl SidecarAuth {
    /// The full check of a token: its signature by a published key, and its claims.
    /// Returns the key id with the claims.
    fn verify(&self, token: &str) -> Result<(String, Claims), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid("only EdDSA tokens are accepted".into()));
        }
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("no key id".into()))?;
        let keys = self.read_keys();
        let Some(key) = keys.get(&kid) else {
            // Maybe a rotation we have not heard of: look again soon (this token
            // is refused now).
            self.kid_miss.notify_one();
            return Err(AuthError::Invalid("unknown signing key".into()));
        };
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        Ok((kid, claims))
    }
}
