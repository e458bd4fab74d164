//! `GET /v1/signals/history` and `GET /v1/signals/live`: the signal store read with the
//! caller's rights, as on the socket.
//!
//! - Tier and minimum confidence: only signals that entered a channel the caller may
//!   subscribe to (`signals_<tier>` up to their own), each with the seq it had there.
//! - Categories: the token's.
//! - Delay: nothing younger than the caller's delay (the delayed view's).
//! - Daily quota: a signal routed today (UTC) is charged as a delivery would be, once per
//!   user and message: one already delivered (or read) today is free, a new one takes a
//!   place of the quota, and once it is spent today's new ones are withheld (counted in
//!   `withheld`); older days' signals are history, free.
//! - Rate: `api_requests_per_minute` of the caller's tier, per user (429 past it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::channels::ChannelName;
use engine::model::{Category, SignalType, UnixNanos};
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use store::{Cursor, Item, Query, Status};

use super::{Body, error, json, too_many};
use crate::auth::Session;
use crate::hub::quota::{Take, utc_day};
use crate::server::App;

/// Items per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// Store reads at once (each on a blocking thread): more wait their turn.
pub const READS_AT_ONCE: usize = 4;

/// Where history is read from.
#[derive(Clone, Debug)]
pub enum HistorySource {
    /// A single node's own store (read on blocking threads).
    Sqlite(Arc<store::Readers>),
    /// Scale-out: the PostgreSQL store `signalcast archive` fills.
    Postgres(store::PgStore),
}

impl HistorySource {
    /// Stored signals with their status, for the scoreboard (see
    /// [`store::SqliteStore::score_rows`]).
    pub async fn score_rows(
        &self,
        symbol: Option<(String, Option<String>)>,
    ) -> Result<Vec<store::scoreboard::ScoreRow>, String> {
        match self {
            Self::Sqlite(readers) => {
                let readers = Arc::clone(readers);
                tokio::task::spawn_blocking(move || {
                    readers.read(|s| s.score_rows(symbol.as_ref().map(|(s, e)| (s.as_str(), e.as_deref()))))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            Self::Postgres(pg) => pg
                .score_rows(symbol.as_ref().map(|(s, e)| (s.as_str(), e.as_deref())))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn page(&self, q: Query) -> Result<store::Page, String> {
        match self {
            Self::Sqlite(readers) => {
                let readers = Arc::clone(readers);
                tokio::task::spawn_blocking(move || readers.read(|s| s.history(&q)))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Self::Postgres(pg) => pg.history(&q).await.map_err(|e| e.to_string()),
        }
    }
}

/// The caller's session from `Authorization: Bearer <JWT>`, charged one request of
/// their tier's `api_requests_per_minute`; or the answer that refuses them (returned
/// as is: it is the whole response, built once per refused request).
#[allow(clippy::result_large_err)]
pub(super) fn authorize<B>(req: &Request<B>, app: &App) -> Result<Session, Response<Body>> {
    let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send your access token: Authorization: Bearer <JWT>",
        ));
    };
    let session = match app.auth.authenticate(token) {
        Ok(s) => s,
        Err(e) => {
            app.stats.auth_failed();
            return Err(error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()));
        }
    };
    let policy = &app.engine.policy;
    let per_minute = f64::from(policy.rule(session.tier).api_requests_per_minute.max(1));
    if let Err(wait) = app.api_rates.take(
        &format!("user:{}", session.user_id),
        1.0,
        per_minute / 60.0,
        per_minute,
        Instant::now(),
    ) {
        return Err(too_many(
            "rate_limited",
            &format!("at most {per_minute} requests a minute on the {} tier", session.tier),
            wait,
        ));
    }
    Ok(session)
}

/// How long after routing the caller sees a signal: its delayed view's delay, or zero
/// for a real-time caller.
pub(super) fn caller_delay(session: &Session, policy: &engine::policy::TierPolicy) -> Duration {
    let delayed = !session.real_time || !policy.rule(session.tier).delay.is_zero();
    if delayed { policy.delayed_view(session.tier) } else { Duration::ZERO }
}

/// Serves one request; `live` is the list of open, unexpired signals.
pub async fn serve<B>(req: &Request<B>, app: &Arc<App>, live: bool) -> Response<Body> {
    let session = match authorize(req, app) {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let now = UnixNanos::now();
    let policy = &app.engine.policy;
    let delay = caller_delay(&session, policy);
    let delayed = !delay.is_zero();
    let mut query = match parse_query(req.uri().query().unwrap_or(""), &session, live) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // Nothing younger than the caller's delay.
    let newest = UnixNanos(
        now.0.saturating_sub(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX)).saturating_add(1),
    );
    query.to = Some(query.to.map_or(newest, |t| UnixNanos(t.0.min(newest.0))));
    // Closes too: a delayed caller learns how a signal ended after the same delay.
    if delayed {
        query.events_before = Some(newest);
    }
    if live {
        query.status = Some(Status::Open);
        query.active_at = Some(now);
    }
    let Some(source) = app.store.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_store",
            "this node has no signal store to read history from ([store] database_url on gateways; docs/deploy.md)",
        );
    };
    let Ok(_permit) = app.store_reads.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "draining", "server shutting down");
    };
    let page = match source.page(query.clone()).await {
        Ok(page) => page,
        Err(e) => {
            tracing::warn!(error = %e, "history read failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the signal store could not be read",
            );
        }
    };
    let limit = session.max_signals_per_day.or(policy.rule(session.tier).signals_per_day);
    let today = utc_day(now.0);
    let quota = limit.map(|_| app.hub.quotas().user(&session.user_id, today));
    let log = session.tier.index() * 2
        + usize::from(delayed && app.engine.channels.delayed(session.tier).is_some());
    let mut body = String::with_capacity(256 + page.items.iter().map(|i| i.data.len() + 64).sum::<usize>());
    body.push_str("{\"items\":[");
    let (mut first, mut withheld) = (true, 0u32);
    for item in &page.items {
        if let (Some(limit), Some(q)) = (limit, &quota)
            && utc_day(item.routed_ts.0) == today
        {
            let seq = item.channels.iter().find(|(t, _)| *t == session.tier).map(|(_, s)| *s);
            if let Some(seq) = seq
                && matches!(q.take(log, seq, limit, today), Take::Exhausted { .. })
            {
                withheld += 1;
                continue;
            }
        }
        if !first {
            body.push(',');
        }
        first = false;
        push_item(&mut body, item);
    }
    body.push_str("],\"next\":");
    match page.next {
        Some(c) => {
            body.push('"');
            body.push_str(&c.encode());
            body.push('"');
        }
        None => body.push_str("null"),
    }
    if withheld > 0 {
        body.push_str(&format!(",\"withheld\":{withheld}"));
    }
    body.push('}');
    json(StatusCode::OK, body)
}

/// One item: the stored SIGNAL_UPDATE `data` (one encoder for the socket and history)
/// with `"channels"` added before its closing brace.
fn push_item(out: &mut String, item: &Item) {
    let data = item.data.trim_end();
    let Some(open) = data.strip_suffix('}') else { return };
    out.push_str(open);
    out.push_str(if open.trim_end().ends_with('{') { "\"channels\":{" } else { ",\"channels\":{" });
    for (i, (tier, seq)) in item.channels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{}\":{seq}", ChannelName::Signals(*tier)));
    }
    out.push_str("}}");
}

/// The query string, checked: every parameter known, every value valid.
fn parse_query(qs: &str, session: &Session, live: bool) -> Result<Query, String> {
    let mut q = Query {
        tier: Some(session.tier),
        categories: Category::ALL.into_iter().filter(|c| session.categories.contains(*c)).collect(),
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    let mut wanted: Option<Vec<Category>> = None;
    for (k, v) in form_urlencoded::parse(qs.as_bytes()) {
        let v = v.trim();
        let text = |what: &str| -> Result<String, String> {
            if v.is_empty() || v.len() > 64 {
                return Err(format!("{what} must be 1 to 64 characters"));
            }
            Ok(v.to_owned())
        };
        match (&*k, live) {
            ("limit", _) => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?;
            }
            ("cursor", _) => {
                q.cursor = Some(Cursor::decode(v).map_err(|_| "cursor is not one this API gave".to_owned())?)
            }
            ("symbol", _) => q.symbol = Some(text("symbol")?),
            ("exchange", _) => q.exchange = Some(text("exchange")?),
            ("category", _) => {
                let mut list = Vec::new();
                for c in v.split(',') {
                    list.push(c.trim().parse::<Category>().map_err(|_| {
                        format!(
                            "unknown category {c:?} (one of {})",
                            Category::ALL.map(|c| c.as_str()).join(", ")
                        )
                    })?);
                }
                wanted = Some(list);
            }
            ("signal_type", _) => {
                q.signal_type = Some(
                    v.parse::<SignalType>()
                        .map_err(|_| format!("unknown signal_type {v:?} (one of buy, sell, hold, exit)"))?,
                );
            }
            ("source", _) => {
                q.source = Some(uuid::Uuid::parse_str(v).map_err(|_| format!("source {v:?} is not a UUID"))?);
            }
            ("status", false) => {
                q.status = Some(v.parse::<Status>().map_err(|()| {
                    format!("unknown status {v:?} (one of {})", Status::ALL.map(Status::as_str).join(", "))
                })?);
            }
            ("from", _) => q.from = Some(super::time::parse(v)?),
            ("to", _) => q.to = Some(super::time::parse(v)?),
            (other, _) => {
                // Live lists open signals: a status other than open would find nothing.
                let known = if live {
                    "symbol, exchange, category, signal_type, source, from, to, limit, cursor"
                } else {
                    "symbol, exchange, category, signal_type, source, status, from, to, limit, cursor"
                };
                return Err(format!("unknown parameter {other:?} (known: {known})"));
            }
        }
    }
    if let Some(wanted) = wanted {
        // A subset of the caller's categories; asking for others is not an error, it
        // finds nothing the caller may not see.
        q.categories.retain(|c| wanted.contains(c));
        if q.categories.is_empty() {
            q.categories = wanted.into_iter().filter(|c| session.categories.contains(*c)).collect();
            if q.categories.is_empty() {
                return Err("none of these categories is in your subscription".into());
            }
        }
    }
    if q.categories.is_empty() {
        return Err("your subscription has no categories".into());
    }
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f.0 >= t.0
    {
        return Err("from must be before to".into());
    }
    Ok(q)
}
