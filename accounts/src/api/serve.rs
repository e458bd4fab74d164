//! The sidecar's HTTP listeners, with the limits a server facing the network needs:
//! a connection cap, a deadline for the request head (slowloris), a deadline for each
//! handler, a body cap, and a shutdown that does not wait forever for the change
//! feed's endless streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::ApiError;

/// HTTP limits of both listeners (docs/accounts.md).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections at once per listener; past it a new connection is closed at once.
    pub max_connections: usize,
    /// Time allowed for a request's head (request line and headers).
    pub header_timeout: Duration,
    /// Time allowed for a handler to produce its response (a stream's head counts, not
    /// its body).
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// On shutdown, how long open connections get to finish.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body: 64 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A handler that takes longer than the request timeout gets 503 and is dropped.
pub(crate) async fn deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long")
            .into_response(),
    }
}

/// One HTTP/1.1 connection, until it ends or the server stops (then within the grace).
async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    mut closing: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = stopped(&mut closing) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.shutdown_grace, conn.as_mut()).await;
        }
    }
}

/// Until `flag` turns true (or its sender is gone). The guard `wait_for` returns is not
/// `Send`, so it is dropped here, not held across the caller's awaits.
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop` turns
/// true, then gives open connections `shutdown_grace` to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; closing a new connection");
            continue; // dropped: closed
        };
        let (router, closing, tls) = (router.clone(), closing.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(stream, peer, router, limits, closing).await,
                // The handshake counts against the same deadline as a request's head.
                Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, peer, router, limits, closing).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
    // Stop: every connection finishes its request in flight (streams end now), within
    // the grace period.
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(limits.shutdown_grace, async {
        let _ = slots.acquire_many(limits.max_connections as u32).await;
    })
    .await;
}
