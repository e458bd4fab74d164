//! The gateway's HTTP client for the accounts sidecar: hyper's HTTP/1.1 client for the
//! exchange, `eventsource-stream` for the change feed's server-sent events. Every
//! request has a deadline and every body a cap, so a sidecar (or whatever answers in
//! its place) can neither hang a gateway task nor grow its memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Empty, Limited};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Connecting, and the whole of a plain request (headers and body).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON answer (the JWKS, the snapshot).
pub(super) const MAX_BODY: usize = 4 << 20;
/// A stream that sends nothing (not even the sidecar's keep-alive, every 10 s) for this
/// long is taken as dead.
pub(super) const IDLE: Duration = Duration::from_secs(30);
/// Bytes of one server-sent event (the parser buffers until the event ends).
pub(super) const MAX_EVENT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    #[error("{0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("bad response: {0}")]
    Body(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where the sidecar is and how to reach it: `host:port`, and the TLS connector that
/// verifies it (https), or none (plain http, loopback or an explicit opt-in).
pub(super) struct Endpoint {
    pub addr: String,
    host: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }
}

impl Endpoint {
    pub fn new(addr: String, tls: Option<tokio_rustls::TlsConnector>) -> Self {
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => addr.clone(),
        };
        Self { addr, host, tls }
    }
}

/// The HTTP/1.1 exchange over a connected stream (plain or TLS).
async fn handshake<IO>(io: IO) -> Result<http1::SendRequest<Empty<Bytes>>, HttpError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http1::handshake(TokioIo::new(io)).await.map_err(|e| HttpError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "accounts sidecar connection ended");
        }
    });
    Ok(sender)
}

async fn send(
    ep: &Endpoint,
    path: &str,
    bearer: Option<&str>,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpError> {
    let stream =
        tokio::net::TcpStream::connect(&ep.addr).await.map_err(|e| HttpError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut sender = match &ep.tls {
        None => handshake(stream).await?,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| HttpError::Connect(format!("{}: {e}", ep.host)))?;
            // The certificate chain and the name are verified against the CA file.
            let stream =
                tls.connect(name, stream).await.map_err(|e| HttpError::Connect(format!("TLS: {e}")))?;
            handshake(stream).await?
        }
    };
    let mut req = Request::get(path).header(hyper::header::HOST, &ep.addr);
    if let Some(t) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| HttpError::Connect(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(|e| HttpError::Connect(e.to_string()))?;
    if res.status() != StatusCode::OK {
        return Err(HttpError::Status(res.status()));
    }
    Ok(res)
}

/// GET `path` and parse the JSON answer.
pub(super) async fn get_json(ep: &Endpoint, path: &str, bearer: Option<&str>) -> Result<Value, HttpError> {
    let exchange = async {
        let res = send(ep, path, bearer).await?;
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| HttpError::Body(e.to_string()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT))?
}

/// Follows a server-sent event stream, calling `on_data` with each event's data; `up`
/// is set once the stream answers. Returns when the stream ends or breaks.
pub(super) async fn stream_events(
    ep: &Endpoint,
    path: &str,
    bearer: &str,
    up: &AtomicBool,
    mut on_data: impl FnMut(&str),
) -> Result<(), HttpError> {
    let res = tokio::time::timeout(REQUEST_TIMEOUT, send(ep, path, Some(bearer)))
        .await
        .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT))??;
    up.store(true, Ordering::Release);
    tracing::info!(sidecar = %ep, "following the accounts change feed");
    // Bytes since the last complete event: the parser buffers a partial event, so a
    // sender that never ends one is cut off at MAX_EVENT.
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&pending);
    let bytes = BodyStream::new(res.into_body()).filter_map(move |frame| {
        let out = match frame {
            Ok(f) => f.into_data().ok().map(|d| {
                if counted.fetch_add(d.len(), Ordering::Relaxed) + d.len() > MAX_EVENT {
                    Err(HttpError::Body(format!("an event over {MAX_EVENT} bytes")))
                } else {
                    Ok(d)
                }
            }),
            Err(e) => Some(Err(HttpError::Body(e.to_string()))),
        };
        std::future::ready(out)
    });
    let mut events = std::pin::pin!(bytes.eventsource());
    loop {
        match tokio::time::timeout(IDLE, events.next()).await {
            Err(_) => return Err(HttpError::Timeout(IDLE)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(HttpError::Body(e.to_string())),
            Ok(Some(Ok(event))) => {
                pending.store(0, Ordering::Relaxed);
                if !event.data.is_empty() {
                    on_data(&event.data);
                }
            }
        }
    }
}
