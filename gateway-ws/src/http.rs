//! HTTP on the gateway port: `/ws` (upgrade), `/health/live`, `/health/ready`,
//! `/metrics`, and the dashboard (`/`, `/assets/…`, `/dev/tokens`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, ORIGIN,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::auth::AccountsState;
use crate::auth::AuthError;
use crate::conn::Io;
use crate::dashboard;
use crate::hub::Attach;
use crate::server::App;

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn no_store(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A dashboard file: revalidated on every load (a new binary serves new files), and
/// only the page's own scripts may run in it.
fn page(a: dashboard::Asset) -> Response<Body> {
    let mut r = respond(StatusCode::OK, a.content_type, a.body);
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    let body = json!({"error": error, "message": message}).to_string();
    respond(status, "application/json", body)
}

/// Serves one HTTP/1.1 connection (plain or TLS), with upgrades. Public for the
/// upgrade-request fuzz target (fuzz/), which drives it over an in-memory stream.
pub async fn serve<I>(io: I, peer: Option<IpAddr>, app: Arc<App>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + app.handshake_timeout;
    serve_within(io, peer, app, deadline).await;
}

/// [`serve`], with the request headers due by `deadline` (what is left of the budget
/// the TLS handshake started).
pub async fn serve_within<I>(io: I, peer: Option<IpAddr>, app: Arc<App>, deadline: tokio::time::Instant)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(std::time::Duration::from_millis(1));
    let svc = service_fn(move |req| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(route(req, peer, app)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that trickles its request headers (slowloris) is cut off.
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn route(req: Request<Incoming>, peer: Option<IpAddr>, app: Arc<App>) -> Response<Body> {
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET is served");
    }
    match req.uri().path() {
        "/ws" if !app.plan.clients => json_error(
            StatusCode::NOT_FOUND,
            "engine_node",
            "this node runs the engine role; connect to a gateway",
        ),
        "/ws" => websocket(req, peer, app),
        "/health/live" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/health/ready" if app.is_draining() => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        "/health/ready" => match app.accounts_state() {
            None | Some(AccountsState::Live) => respond(StatusCode::OK, "text/plain", "ready\n"),
            // Tokens still verify with the keys held, so clients can (re)connect here.
            Some(AccountsState::Degraded) => respond(
                StatusCode::OK,
                "text/plain",
                "ready, degraded: accounts feed down; tokens verify with cached keys, \
                 rights changes wait for the feed\n",
            ),
            Some(AccountsState::NotSynced) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no signing keys or snapshot from the accounts sidecar yet\n",
            ),
        },
        "/metrics" => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, app.metrics()),
        "/dev/tokens" => match &app.dev_tokens {
            Some((auth, ttl)) => {
                no_store(respond(StatusCode::OK, "application/json", dashboard::dev_tokens(auth, *ttl)))
            }
            None => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "dev tokens exist only on the embedded default (public dev secret, no accounts sidecar)",
            ),
        },
        path => match dashboard::asset(path) {
            Some(a) => page(a),
            None => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        },
    }
}

fn websocket(mut req: Request<Incoming>, peer: Option<IpAddr>, app: Arc<App>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return json_error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "connect with a WebSocket client",
        );
    }
    // A page of another site may not open a socket with a user's token.
    let origin = req.headers().get(ORIGIN).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok());
    if let Err(e) = app.admission.check_origin(origin.as_deref(), host) {
        return json_error(StatusCode::FORBIDDEN, "origin_not_allowed", &e.to_string());
    }
    let token = query_token(req.uri().query()).or_else(|| bearer(req.headers().get(AUTHORIZATION)));
    // The token is checked before the upgrade: a bad one never gets a WebSocket.
    let session = match token.ok_or(AuthError::Missing).and_then(|t| app.auth.authenticate(&t)) {
        Ok(s) => s,
        Err(e) => {
            app.stats.auth_failed();
            return json_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
        }
    };
    if app.is_draining() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server shutting down; connect elsewhere",
        );
    }
    let admitted = match app.admission.admit(peer, &session.user_id) {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", &e.to_string()),
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_upgrade", &e.to_string()),
    };
    app.stats.upgraded();
    tokio::spawn(async move {
        let attach = match upgrade.await {
            Ok(ws) => into_io(ws.into_inner().into_inner()),
            Err(e) => Err(std::io::Error::other(e)),
        };
        match attach {
            Ok((io, input)) => {
                if let Err(e) = app.hub.attach(Attach { io, input, session, admitted: Some(admitted) }) {
                    tracing::warn!(error = %e, "websocket dropped after the upgrade");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Takes the socket (and TLS state) back from hyper for a hub shard to own, with the
/// bytes hyper read past the request.
fn into_io(upgraded: Upgraded) -> std::io::Result<(Io, BytesMut)> {
    let to_mio = |s: TcpStream| s.into_std().map(mio::net::TcpStream::from_std);
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            return Ok((Io::plain(to_mio(parts.io.into_inner())?), BytesMut::from(&parts.read_buf[..])));
        }
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            let (sock, tls) = parts.io.into_inner().into_inner();
            Ok((Io::tls(to_mio(sock)?, tls), BytesMut::from(&parts.read_buf[..])))
        }
        Err(_) => Err(std::io::Error::other("upgraded connection of an unknown kind")),
    }
}

/// `token=` from the query string, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token=")).map(percent_decode).filter(|t| !t.is_empty())
}

fn bearer(v: Option<&HeaderValue>) -> Option<String> {
    let v = v?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_query_and_header() {
        assert_eq!(query_token(Some("a=1&token=abc.def-g_h&b=2")).as_deref(), Some("abc.def-g_h"));
        assert_eq!(query_token(Some("token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(query_token(Some("token=")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(bearer(Some(&HeaderValue::from_static("Bearer xyz"))).as_deref(), Some("xyz"));
        assert_eq!(bearer(Some(&HeaderValue::from_static("Basic xyz"))), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
