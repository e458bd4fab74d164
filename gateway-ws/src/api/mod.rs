//! The gateway's HTTP API under `/v1` (docs/gateway-openapi.yaml): history and the live
//! list of signals for trading clients (their JWT as `Authorization: Bearer`), and HTTP
//! ingest for producers (their id and key as HTTP Basic).
//!
//! - [`signals`]: `GET /v1/signals/history`, `GET /v1/signals/live`.
//! - [`sources`]: `GET /v1/sources`, `GET /v1/signals/stats` (the scoreboard).
//! - [`ingest`]: `POST /v1/signals`, `POST /v1/ticks`.
//! - [`rate`]: per-user and per-producer rates (429 with `Retry-After`).
//! - [`time`]: the RFC 3339 times `from` and `to` accept.

pub mod ingest;
pub mod rate;
pub mod signals;
pub mod sources;
pub mod time;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, ORIGIN, RETRY_AFTER, VARY,
};
use hyper::{Method, Request, Response, StatusCode};

use crate::server::App;

pub type Body = Full<Bytes>;

/// Every route of the API (method, path): what the router below serves, and what
/// `tests/openapi.rs` holds against docs/gateway-openapi.yaml, both ways.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/signals/history"),
    ("get", "/v1/signals/live"),
    ("get", "/v1/signals/stats"),
    ("get", "/v1/sources"),
    ("post", "/v1/signals"),
    ("post", "/v1/ticks"),
];

/// A JSON answer.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The error shape every HTTP API of signalcast uses.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, serde_json::json!({"error": code, "message": message}).to_string())
}

/// 429 with the seconds to wait.
pub fn too_many(code: &str, message: &str, retry_after: std::time::Duration) -> Response<Body> {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, code, message);
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

/// Serves one request to `/v1/…`.
pub async fn handle(req: Request<Incoming>, peer: Option<IpAddr>, app: Arc<App>) -> Response<Body> {
    let _ = peer;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let readable = matches!(
        path.as_str(),
        "/v1/signals/history" | "/v1/signals/live" | "/v1/signals/stats" | "/v1/sources"
    );
    if readable {
        // Browsers read history from other origins only where allowed_origins says so.
        let origin = req.headers().get(ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok());
        if let Err(e) = app.admission.check_origin(origin.as_deref(), host) {
            return error(StatusCode::FORBIDDEN, "origin_not_allowed", &e.to_string());
        }
        let mut response = match method {
            Method::OPTIONS => preflight(),
            Method::GET if path == "/v1/sources" => sources::scoreboard(&req, &app).await,
            Method::GET if path == "/v1/signals/stats" => sources::symbol_stats(&req, &app).await,
            Method::GET => signals::serve(&req, &app, path == "/v1/signals/live").await,
            _ => not_allowed("GET"),
        };
        if let Some(o) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) {
            let h = response.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(VARY, HeaderValue::from_static("Origin"));
        }
        return response;
    }
    match path.as_str() {
        "/v1/signals" | "/v1/ticks" if method == Method::POST => {
            ingest::serve(req, &app, path == "/v1/ticks").await
        }
        "/v1/signals" | "/v1/ticks" => not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such API route (docs/gateway-openapi.yaml)"),
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &format!("use {allow}"));
    r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A browser's CORS preflight for a history read with a bearer token.
fn preflight() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, OPTIONS"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization"));
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}
