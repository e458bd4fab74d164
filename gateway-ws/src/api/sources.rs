//! `GET /v1/sources` (the scoreboard per source) and `GET /v1/signals/stats?symbol=…`
//! (one symbol's figures): what the sources' calls became (docs/outcomes.md).
//!
//! Every authenticated user may read both: they are counts and returns over every
//! routed signal as the caller may see them ([`store::scoreboard::Viewer`]: closed
//! signals for everyone, an open one only once the caller's own channels carried it and
//! its delay released it). Each request takes one of the caller's
//! `api_requests_per_minute`. The scoreboard reads every stored signal, so the rows of
//! one read are counted for every caller for [`SCOREBOARD_MAX_AGE`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::model::{Exchange, Symbol, UnixNanos};
use hyper::{Request, Response, StatusCode};
use store::scoreboard::{ScoreRow, Viewer};

use super::signals::{authorize, caller_delay};
use super::{Body, error, json};
use crate::auth::Session;
use crate::server::App;

/// How old the rows of a served scoreboard may be.
pub const SCOREBOARD_MAX_AGE: Duration = Duration::from_secs(10);

/// The rows of one scoreboard read.
pub type Rows = Arc<Vec<ScoreRow>>;

/// What `session` may count, now.
fn viewer(session: &Session, app: &App) -> Viewer {
    let policy = &app.engine.policy;
    let delay = i64::try_from(caller_delay(session, policy).as_nanos()).unwrap_or(i64::MAX);
    Viewer {
        min_confidence: i64::from(policy.rule(session.tier).min_confidence.hundredths()),
        categories: session.categories,
        released_by: UnixNanos(UnixNanos::now().0.saturating_sub(delay)),
    }
}

/// `GET /v1/sources`.
pub async fn scoreboard<B>(req: &Request<B>, app: &Arc<App>) -> Response<Body> {
    let session = match authorize(req, app) {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("/v1/sources takes no parameters (got {q:?})"),
        );
    }
    let Some(source) = app.store.clone() else { return no_store() };
    let rows = {
        // One read at a time; those waiting get its rows.
        let mut cached = app.scoreboard.lock().await;
        match cached.as_ref() {
            Some((at, rows)) if at.elapsed() < SCOREBOARD_MAX_AGE => Arc::clone(rows),
            _ => {
                let Ok(_permit) = app.store_reads.acquire().await else {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "draining", "server shutting down");
                };
                match source.score_rows(None).await {
                    Ok(rows) => {
                        let rows = Arc::new(rows);
                        *cached = Some((Instant::now(), Arc::clone(&rows)));
                        rows
                    }
                    Err(e) => return unreadable(&e),
                }
            }
        }
    };
    let viewer = viewer(&session, app);
    // Counting a million rows takes a while: not on the connections' threads.
    match tokio::task::spawn_blocking(move || {
        store::scoreboard::sources(rows.iter(), &viewer, UnixNanos::now())
    })
    .await
    {
        Ok(body) => json(StatusCode::OK, body.to_string()),
        Err(e) => unreadable(&e.to_string()),
    }
}

/// `GET /v1/signals/stats?symbol=…[&exchange=…]`.
pub async fn symbol_stats<B>(req: &Request<B>, app: &Arc<App>) -> Response<Body> {
    let session = match authorize(req, app) {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let (symbol, exchange) = match parse(req.uri().query().unwrap_or("")) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    let Some(source) = app.store.clone() else { return no_store() };
    let Ok(_permit) = app.store_reads.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "draining", "server shutting down");
    };
    match source.score_rows(Some((symbol.clone(), exchange.clone()))).await {
        Ok(rows) => {
            let body = store::scoreboard::symbol(&symbol, exchange.as_deref(), &rows, &viewer(&session, app));
            json(StatusCode::OK, body.to_string())
        }
        Err(e) => unreadable(&e),
    }
}

/// `symbol` (required) and `exchange`, checked as the feed checks them.
fn parse(query: &str) -> Result<(String, Option<String>), String> {
    let (mut symbol, mut exchange) = (None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "symbol" if symbol.is_none() => {
                Symbol::new(&v).map_err(|e| format!("symbol: {e}"))?;
                symbol = Some(v.into_owned());
            }
            "exchange" if exchange.is_none() => {
                Exchange::new(&v).map_err(|e| format!("exchange: {e}"))?;
                exchange = Some(v.into_owned());
            }
            "symbol" | "exchange" => return Err(format!("{k} is given twice")),
            other => return Err(format!("unknown parameter {other:?} (symbol, exchange)")),
        }
    }
    Ok((symbol.ok_or("symbol is required: /v1/signals/stats?symbol=RELIANCE")?, exchange))
}

fn no_store() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_store",
        "this node has no signal store to read from ([store] database_url on gateways; docs/deploy.md)",
    )
}

fn unreadable(e: &str) -> Response<Body> {
    tracing::warn!(error = %e, "scoreboard read failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the signal store could not be read")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn symbol_is_required_and_checked() {
        assert_eq!(parse("symbol=RELIANCE&exchange=NSE"), Ok(("RELIANCE".into(), Some("NSE".into()))));
        assert_eq!(parse("symbol=EUR%2FUSD"), Ok(("EUR/USD".into(), None)));
        assert!(parse("").unwrap_err().contains("symbol is required"));
        assert!(parse("symbol=a%22b").unwrap_err().starts_with("symbol:"));
        assert!(parse("symbol=A&symbol=B").unwrap_err().contains("twice"));
        assert!(parse("symbol=A&tier=x").unwrap_err().contains("unknown parameter"));
    }
}
