//! HTTP on the gateway port: `/ws` (upgrade), `/health/live`, `/health/ready`,
//! `/metrics`, and the dashboard (`/`, `/assets/…`, `/dev/tokens`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderMap, HeaderValue, ORIGIN,
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use engine::channels::ChannelName;

use crate::auth::AccountsState;
use crate::auth::AuthError;
use crate::conn::{HandshakeStream, Io};
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
    let accepted = Slot::default();
    let svc = {
        let (app, accepted) = (Arc::clone(&app), Arc::clone(&accepted));
        service_fn(move |req| {
            let (app, accepted) = (Arc::clone(&app), Arc::clone(&accepted));
            async move {
                Ok::<_, Infallible>(if req.uri().path().starts_with("/v1/") {
                    crate::api::handle(req, peer, app).await
                } else {
                    route(req, peer, app, &accepted)
                })
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that trickles its request headers (slowloris) is cut off.
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
    // hyper ends the connection as soon as it has written the 101 and handed the socket
    // to the upgrade, so the hand-off to a shard goes on in this task.
    let taken = accepted.lock().ok().and_then(|mut a| a.take());
    if let Some(a) = taken {
        a.attach(&app).await;
    }
}

/// Where the `/ws` route leaves an accepted upgrade for the connection's task.
type Slot = Arc<std::sync::Mutex<Option<Accepted>>>;

/// An upgrade the gateway answered with 101: what the shard needs besides the socket.
struct Accepted {
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    session: crate::auth::Session,
    admitted: crate::admission::Admitted,
    subscribe: Vec<ChannelName>,
    deflate: Option<crate::ws::deflate::Agreed>,
}

impl Accepted {
    async fn attach(self, app: &App) {
        let Self { upgrade, session, admitted, subscribe, deflate } = self;
        let attach = match upgrade.await {
            Ok(ws) => into_io(ws.into_inner().into_inner()),
            Err(e) => Err(std::io::Error::other(e)),
        };
        match attach {
            Ok((io, input)) => {
                if let Err(e) = app.hub.attach(Attach {
                    io,
                    input,
                    session,
                    admitted: Some(admitted),
                    subscribe,
                    deflate,
                }) {
                    tracing::warn!(error = %e, "websocket dropped after the upgrade");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    }
}

/// Connections served at once on the metrics listener; one more is closed at once. A
/// scraper needs one; the bound keeps a flood there from costing the process a task
/// (and a socket) per connection.
const METRICS_CONNECTIONS: usize = 32;

/// The metrics listener (`metrics_listen`): `GET /metrics` and nothing else, TLS as on
/// the client port, the same header time limit.
pub(crate) async fn metrics_accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::server::until_set(&mut stop) => return,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let (app, tls) = (Arc::clone(&app), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_metrics(stream, app).await,
                Some(acceptor) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(app.handshake_timeout, acceptor.accept(stream)).await
                    {
                        serve_metrics(s, app).await;
                    }
                }
            }
        });
    }
}

async fn serve_metrics<I>(io: I, app: Arc<App>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = app.handshake_timeout;
    let svc = service_fn(move |req: Request<Incoming>| {
        let app = Arc::clone(&app);
        async move {
            Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => {
                    respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, app.metrics())
                }
                _ => json_error(StatusCode::NOT_FOUND, "not_found", "this listener serves GET /metrics only"),
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

fn route(req: Request<Incoming>, peer: Option<IpAddr>, app: Arc<App>, accepted: &Slot) -> Response<Body> {
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET is served");
    }
    match req.uri().path() {
        "/ws" if !app.plan.clients => json_error(
            StatusCode::NOT_FOUND,
            "engine_node",
            "this node runs the engine role; connect to a gateway",
        ),
        "/ws" => websocket(req, peer, app, accepted),
        "/health/live" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/health/ready" if app.is_draining() => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        "/health/ready" if app.engine.stats.store_stalled() => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the signal store cannot commit (disk full or read-only); nothing is acknowledged\n",
        ),
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
        "/metrics" if app.metrics_elsewhere => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "/metrics is served on the metrics listener (metrics_listen)",
        ),
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

fn websocket(
    mut req: Request<Incoming>,
    peer: Option<IpAddr>,
    app: Arc<App>,
    accepted: &Slot,
) -> Response<Body> {
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
    let token = match request_token(&req) {
        Ok(t) => t,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
    };
    let subscribe = match query_subscribe(req.uri().query(), app.max_subscriptions) {
        Ok(s) => s,
        Err(msg) => return json_error(StatusCode::BAD_REQUEST, "bad_subscribe", &msg),
    };
    // The token is checked before the upgrade: a bad one never gets a WebSocket.
    let session = match token.value.ok_or(AuthError::Missing).and_then(|t| app.auth.authenticate(&t)) {
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
    let (mut response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_upgrade", &e.to_string()),
    };
    // Only the protocol name is echoed, never the token entry the client offered beside
    // it (a browser fails a connection whose answer names a protocol it did not offer,
    // or names none when it offered some).
    if token.v1_offered {
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    }
    // permessage-deflate, shared (no context on either side): one compression per
    // channel message for every connection that takes it. Not for the Safari versions
    // that ignore `client_no_context_takeover` (their messages would not inflate).
    let user_agent = req.headers().get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok());
    let negotiated = if user_agent.is_some_and(crate::ws::deflate::broken_client) {
        None
    } else {
        crate::ws::deflate::negotiate(offers, app.deflate)
    };
    let mut deflate = None;
    if let Some(n) = negotiated
        && let Ok(answer) = HeaderValue::from_str(&n.response)
    {
        response.headers_mut().insert(SEC_WEBSOCKET_EXTENSIONS, answer);
        app.stats.deflate_upgraded();
        deflate = Some(n.agreed);
    }
    app.stats.upgraded();
    if let Ok(mut slot) = accepted.lock() {
        *slot = Some(Accepted { upgrade, session, admitted, subscribe, deflate });
    }
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
    match upgraded.downcast::<TokioIo<TlsStream<HandshakeStream>>>() {
        Ok(parts) => {
            let (stream, tls) = parts.io.into_inner().into_inner();
            let (sock, partial) = stream.into_parts();
            let mut input = BytesMut::from(&parts.read_buf[..]);
            let io = Io::tls(to_mio(sock)?, tls, partial, &mut input)?;
            Ok((io, input))
        }
        Err(_) => Err(std::io::Error::other("upgraded connection of an unknown kind")),
    }
}

/// The WebSocket subprotocol the gateway speaks, offered by clients in
/// `Sec-WebSocket-Protocol` and echoed in the 101.
pub const PROTOCOL: &str = "signalcast.v1";

/// The prefix of the subprotocol entry that carries the token:
/// `Sec-WebSocket-Protocol: signalcast.v1, signalcast.token.<JWT>` (a JWT is base64url
/// and dots, all valid token characters of the header). Unlike `?token=`, a header
/// stays out of the request line that proxies and access logs record.
pub const TOKEN_PROTOCOL_PREFIX: &str = "signalcast.token.";

/// The token of an upgrade request, and whether [`PROTOCOL`] was offered.
#[derive(Debug, Default)]
struct RequestToken {
    value: Option<String>,
    v1_offered: bool,
}

/// Why a request's token could not be read (HTTP 400; a token that was read but does not
/// verify is a 401).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum TokenRequestError {
    #[error(
        "the token came more than once (Sec-WebSocket-Protocol and ?token= or Authorization): send it one way only"
    )]
    Ambiguous,
    #[error("more than one signalcast.token. entry in Sec-WebSocket-Protocol")]
    TwoTokenProtocols,
    #[error("offer signalcast.v1 along with signalcast.token.<JWT> in Sec-WebSocket-Protocol")]
    NoProtocol,
    #[error("Sec-WebSocket-Protocol is not ASCII")]
    BadHeader,
}

impl TokenRequestError {
    fn code(&self) -> &'static str {
        match self {
            Self::Ambiguous | Self::TwoTokenProtocols => "ambiguous_token",
            Self::NoProtocol | Self::BadHeader => "bad_protocol",
        }
    }
}

/// Where the token is: the `signalcast.token.` subprotocol (recommended), `?token=`
/// (kept for web clients that cannot set headers either way), or `Authorization:
/// Bearer`. A subprotocol token together with either of the others is refused rather
/// than one silently preferred: two tokens on one request are a client's mistake (or a
/// proxy's addition) that should show. Between `?token=` and `Authorization`, the query
/// wins, as it always has.
fn request_token<B>(req: &Request<B>) -> Result<RequestToken, TokenRequestError> {
    let (v1_offered, header_token) = offered_protocols(req.headers())?;
    let other = query_token(req.uri().query()).or_else(|| bearer(req.headers().get(AUTHORIZATION)));
    let value = match (header_token, other) {
        (Some(_), Some(_)) => return Err(TokenRequestError::Ambiguous),
        // Without signalcast.v1 the 101 could echo nothing but the token itself.
        (Some(_), None) if !v1_offered => return Err(TokenRequestError::NoProtocol),
        (Some(t), None) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    Ok(RequestToken { value, v1_offered })
}

/// Reads every `Sec-WebSocket-Protocol` line (comma-separated entries): whether
/// [`PROTOCOL`] is among them, and the token of the one [`TOKEN_PROTOCOL_PREFIX`] entry.
/// An empty token counts as none (401 `no token`).
fn offered_protocols(headers: &HeaderMap) -> Result<(bool, Option<String>), TokenRequestError> {
    let (mut v1, mut token, mut tokens) = (false, None, 0usize);
    for line in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let line = line.to_str().map_err(|_| TokenRequestError::BadHeader)?;
        for entry in line.split(',').map(|e| e.trim_matches([' ', '\t'])) {
            if entry == PROTOCOL {
                v1 = true;
            } else if let Some(t) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
                tokens += 1;
                token = Some(t.to_owned()).filter(|t| !t.is_empty());
            }
        }
    }
    if tokens > 1 {
        return Err(TokenRequestError::TwoTokenProtocols);
    }
    Ok((v1, token))
}

/// `subscribe=` from the query string: channel names separated by commas, subscribed
/// as the connection opens (its SUBSCRIBED follow WELCOME without a round trip), as a
/// plain SUBSCRIBE would (tier, categories, quota); filters, snapshots and resumes
/// take a SUBSCRIBE message. A name that is no channel, or more than `max` names, is
/// refused before the upgrade.
fn query_subscribe(query: Option<&str>, max: usize) -> Result<Vec<ChannelName>, String> {
    let Some(list) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("subscribe="))) else {
        return Ok(Vec::new());
    };
    let list = percent_decode(list);
    let mut channels: Vec<ChannelName> = Vec::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        let channel: ChannelName = name.parse().map_err(|e| format!("subscribe: {e}"))?;
        if !channels.contains(&channel) {
            if channels.len() == max {
                return Err(format!("subscribe: at most {max} channels per connection"));
            }
            channels.push(channel);
        }
    }
    Ok(channels)
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

    fn upgrade_request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_token_subprotocol_is_read_and_ambiguity_refused() {
        let proto = "Sec-WebSocket-Protocol";
        let read = |uri: &str, headers: &[(&str, &str)]| request_token(&upgrade_request(uri, headers));
        let t = read("/ws", &[(proto, "signalcast.v1, signalcast.token.a.b-c_d")]).unwrap();
        assert_eq!((t.value.as_deref(), t.v1_offered), (Some("a.b-c_d"), true));
        // Two header lines, any order, extra protocols ignored.
        let t = read("/ws", &[(proto, "x, signalcast.token.abc"), (proto, "signalcast.v1")]).unwrap();
        assert_eq!((t.value.as_deref(), t.v1_offered), (Some("abc"), true));
        // ?token= and Bearer alone as before; signalcast.v1 may come with them.
        let t = read("/ws?token=q", &[(proto, "signalcast.v1")]).unwrap();
        assert_eq!((t.value.as_deref(), t.v1_offered), (Some("q"), true));
        let t = read("/ws?token=q", &[("Authorization", "Bearer b")]).unwrap();
        assert_eq!((t.value.as_deref(), t.v1_offered), (Some("q"), false), "the query before the header");
        let t = read("/ws", &[(proto, "signalcast.v1, signalcast.token.")]).unwrap();
        assert_eq!(t.value, None, "an empty token is none (401)");

        let both = [(proto, "signalcast.v1, signalcast.token.h")];
        assert_eq!(read("/ws?token=q", &both).unwrap_err(), TokenRequestError::Ambiguous);
        let with_bearer = [both[0], ("Authorization", "Bearer b")];
        assert_eq!(read("/ws", &with_bearer).unwrap_err(), TokenRequestError::Ambiguous);
        assert_eq!(
            read("/ws", &[(proto, "signalcast.v1, signalcast.token.a, signalcast.token.b")]).unwrap_err(),
            TokenRequestError::TwoTokenProtocols
        );
        assert_eq!(read("/ws", &[(proto, "signalcast.token.a")]).unwrap_err(), TokenRequestError::NoProtocol);
        let mut req = upgrade_request("/ws", &[]);
        req.headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_bytes(b"signalcast.v1, \xff").unwrap());
        assert_eq!(request_token(&req).unwrap_err(), TokenRequestError::BadHeader);
    }
}
