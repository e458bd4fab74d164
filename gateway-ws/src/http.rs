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
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use engine::channels::ChannelName;

use crate::auth::AccountsState;
use crate::auth::AuthError;
use crate::conn::Io;
use crate::dashboard;
use crate::hub::{Attach, AttachError};
use crate::server::App;
use crate::upgrade::{self, Head, Prefixed, Socket};

pub(crate) type Body = Full<Bytes>;

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

/// A refused upgrade: the response to send instead of the 101.
fn refusal(status: StatusCode, error: &str, message: &str) -> Box<Response<Body>> {
    Box::new(json_error(status, error, message))
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    let body = json!({"error": error, "message": message}).to_string();
    respond(status, "application/json", body)
}

/// Serves one HTTP/1.1 connection (plain or TLS), with upgrades. Public for the
/// upgrade-request fuzz target (fuzz/), which drives it over an in-memory stream.
pub async fn serve<I: Socket>(io: I, peer: Option<IpAddr>, app: Arc<App>) {
    let deadline = tokio::time::Instant::now() + app.handshake_timeout;
    serve_within(io, BytesMut::new(), peer, app, deadline).await;
}

/// What [`arrive`] did with a plain socket.
pub(crate) enum Arrived {
    /// Upgraded and handed to a shard, refused (the answer is on its way), or gone.
    Done,
    /// Not taken here: to be served by a task ([`serve_within`]), with the bytes read.
    Serve(std::net::TcpStream, BytesMut),
}

/// A plain socket just accepted: when its first request is already in (most clients
/// send it right behind the TCP handshake, and under a storm of connections it is
/// there by the time the socket is accepted) and is an upgrade to `/ws`, it is checked
/// and handed to a shard here, in the accept loop: no task, and the socket is never
/// registered with tokio.
pub(crate) fn arrive(stream: std::net::TcpStream, peer: std::net::SocketAddr, app: &Arc<App>) -> Arrived {
    let mut chunk = [0u8; 4096];
    let n = match std::io::Read::read(&mut &stream, &mut chunk) {
        Ok(0) => return Arrived::Done,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Arrived::Serve(stream, BytesMut::new());
        }
        Err(_) => return Arrived::Done,
    };
    let mut read = BytesMut::from(&chunk[..n]);
    let (req, rest) = match upgrade::parse(&read) {
        upgrade::Parsed::Request(req, len) if is_websocket_route(&req, app) => (req, read.split_off(len)),
        _ => return Arrived::Serve(stream, read),
    };
    match accept_websocket(&req, Some(peer.ip()), app) {
        Ok(accepted) => accepted.attach_io(Io::plain(mio::net::TcpStream::from_std(stream)), rest, app),
        Err(refused) => {
            tokio::spawn(async move {
                if let Ok(mut io) = tokio::net::TcpStream::from_std(stream) {
                    upgrade::refuse(&mut io, *refused).await;
                }
            });
        }
    }
    Arrived::Done
}

/// A request this node answers with a WebSocket (on a gateway, `GET /ws`).
fn is_websocket_route<B>(req: &Request<B>, app: &App) -> bool {
    req.method() == Method::GET && req.uri().path() == "/ws" && app.plan.clients
}

/// [`serve`], with the request headers due by `deadline` (what is left of the budget
/// the TLS handshake started).
pub async fn serve_within<I: Socket>(
    mut io: I,
    read: BytesMut,
    peer: Option<IpAddr>,
    app: Arc<App>,
    deadline: tokio::time::Instant,
) {
    // The first request is read here: an upgrade to /ws goes straight to a shard
    // (crate::upgrade), anything else to hyper with the bytes put back.
    let prefix = match tokio::time::timeout_at(deadline, upgrade::read_head(&mut io, read)).await {
        Err(_) => return tracing::debug!("request headers timed out"),
        Ok(Head::Gone) => return,
        Ok(Head::Hyper(bytes)) => bytes,
        Ok(Head::Request(req, mut read, len)) if is_websocket_route(&req, &app) => {
            let rest = read.split_off(len);
            return match accept_websocket(&req, peer, &app) {
                Ok(accepted) => accepted.attach(io, rest, false, &app),
                Err(refused) => upgrade::refuse(&mut io, *refused).await,
            };
        }
        Ok(Head::Request(_, read, _)) => read.freeze(),
    };
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
        .serve_connection(TokioIo::new(Prefixed::new(prefix, io)), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
    // hyper ends the connection as soon as it has written the 101 and handed the socket
    // to the upgrade, so the hand-off to a shard goes on in this task.
    let taken = accepted.lock().ok().and_then(|mut a| a.take());
    if let Some((on_upgrade, accepted)) = taken {
        match on_upgrade.await.map_err(std::io::Error::other).and_then(|u| {
            let parts =
                u.downcast::<TokioIo<Prefixed<I>>>().map_err(|_| std::io::Error::other("not our stream"))?;
            // hyper read `read_buf` from the stream before what is left of the prefix.
            let (unread, io) = parts.io.into_inner().into_parts();
            let mut input = BytesMut::from(&parts.read_buf[..]);
            input.extend_from_slice(&unread);
            Ok((io, input))
        }) {
            Ok((io, input)) => accepted.attach(io, input, true, &app),
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    }
}

/// Where the `/ws` route leaves an accepted upgrade for the connection's task.
type Slot = Arc<std::sync::Mutex<Option<(hyper::upgrade::OnUpgrade, Accepted)>>>;

/// An upgrade request that passed every check: what the 101 says and what the shard
/// needs besides the socket.
pub(crate) struct Accepted {
    session: crate::auth::Session,
    admitted: crate::admission::Admitted,
    subscribe: Vec<ChannelName>,
    deflate: Option<crate::ws::deflate::Agreed>,
    /// The 101's headers beside `Connection` and `Upgrade`.
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
}

impl Accepted {
    /// Hands the socket to a shard, which writes the 101 ahead of WELCOME unless hyper
    /// already answered the request (`answered`).
    fn attach<I: Socket>(self, io: I, input: BytesMut, answered: bool, app: &App) {
        match io.into_shard(input) {
            Ok((io, input)) if answered => self.hand_over(io, input, None, app),
            Ok((io, input)) => self.attach_io(io, input, app),
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    }

    /// [`Accepted::attach`] of a request not yet answered, the socket taken out of
    /// tokio already.
    fn attach_io(self, io: Io, input: BytesMut, app: &App) {
        let mut head =
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n".to_vec();
        for (name, value) in &self.headers {
            upgrade::header(&mut head, name.as_str(), value.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        self.hand_over(io, input, Some(head.into()), app);
    }

    fn hand_over(self, io: Io, input: BytesMut, preamble: Option<Arc<[u8]>>, app: &App) {
        let Self { session, admitted, subscribe, deflate, headers: _ } = self;
        let attach = Attach { io, input, preamble, session, admitted: Some(admitted), subscribe, deflate };
        match app.hub.attach(attach) {
            Ok(()) => {}
            Err(AttachError::Busy(a)) => {
                app.stats.hub_was_busy();
                tracing::warn!(user = %a.session.user_id, "every hub shard is full; websocket turned away (hub_busy)");
                a.refuse_busy();
            }
            Err(e @ AttachError::Stopped) => tracing::warn!(error = %e, "websocket dropped at the upgrade"),
        }
    }

    /// The 101 for hyper to write.
    fn response(&self) -> Response<Body> {
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
        for (name, value) in &self.headers {
            h.insert(name.clone(), value.clone());
        }
        r
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

fn websocket(mut req: Request<Incoming>, peer: Option<IpAddr>, app: Arc<App>, slot: &Slot) -> Response<Body> {
    match accept_websocket(&req, peer, &app) {
        Ok(accepted) => {
            let response = accepted.response();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some((hyper::upgrade::on(&mut req), accepted));
            }
            response
        }
        Err(refused) => *refused,
    }
}

/// Every check of a WebSocket upgrade request, in order: upgrade headers, origin,
/// token (read, then verified), `?subscribe=`, draining, the per-address and per-user
/// limits, the key; then the subprotocol and permessage-deflate answers. A refusal is
/// the response to send.
pub(crate) fn accept_websocket<B>(
    req: &Request<B>,
    peer: Option<IpAddr>,
    app: &App,
) -> Result<Accepted, Box<Response<Body>>> {
    if !is_upgrade_request(req.headers()) {
        return Err(refusal(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "connect with a WebSocket client",
        ));
    }
    // A page of another site may not open a socket with a user's token.
    let origin = req.headers().get(ORIGIN).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok());
    if let Err(e) = app.admission.check_origin(origin.as_deref(), host) {
        return Err(refusal(StatusCode::FORBIDDEN, "origin_not_allowed", &e.to_string()));
    }
    let token = request_token(req).map_err(|e| refusal(StatusCode::BAD_REQUEST, e.code(), &e.to_string()))?;
    let subscribe = query_subscribe(req.uri().query(), app.max_subscriptions)
        .map_err(|msg| refusal(StatusCode::BAD_REQUEST, "bad_subscribe", &msg))?;
    // The token is checked before the upgrade: a bad one never gets a WebSocket.
    let session = match token.value.ok_or(AuthError::Missing).and_then(|t| app.auth.authenticate(&t)) {
        Ok(s) => s,
        Err(e) => {
            app.stats.auth_failed();
            return Err(refusal(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()));
        }
    };
    if app.is_draining() {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server shutting down; connect elsewhere",
        ));
    }
    let admitted = app
        .admission
        .admit(peer, &session.user_id)
        .map_err(|e| refusal(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", &e.to_string()))?;
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return Err(refusal(StatusCode::BAD_REQUEST, "bad_upgrade", "Sec-WebSocket-Key header is missing"));
    };
    if req.headers().get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(refusal(StatusCode::BAD_REQUEST, "bad_upgrade", "Sec-WebSocket-Version must be 13"));
    }
    let mut headers = Vec::with_capacity(3);
    if let Ok(accept) = HeaderValue::from_str(&upgrade::accept_key(key.as_bytes())) {
        headers.push((SEC_WEBSOCKET_ACCEPT, accept));
    }
    // Only the protocol name is echoed, never the token entry the client offered beside
    // it (a browser fails a connection whose answer names a protocol it did not offer,
    // or names none when it offered some).
    if token.v1_offered {
        headers.push((SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL)));
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
        headers.push((SEC_WEBSOCKET_EXTENSIONS, answer));
        app.stats.deflate_upgraded();
        deflate = Some(n.agreed);
    }
    app.stats.upgraded();
    Ok(Accepted { session, admitted, subscribe, deflate, headers })
}

/// `Connection: upgrade` and `Upgrade: websocket`, each among the comma-separated
/// values of its headers, in any case.
fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let has = |name: hyper::header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.as_bytes().split(|&c| c == b',').any(|x| x.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
        })
    };
    has(hyper::header::CONNECTION, "upgrade") && has(hyper::header::UPGRADE, "websocket")
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
