//! `signalcast-accounts bootstrap`: the first plan, user and producer key of a new
//! deployment, created through a running sidecar's admin API (so the same checks,
//! hashing and change feed apply as to any later change).
//!
//! The administrator is whoever holds the admin token the sidecar was started with;
//! there is no admin account to create. What bootstrap creates is printed once: the
//! user's password and the producer key are stored only as hashes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What to create.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sidecar, `http://host:port`.
    pub url: String,
    pub admin_token: String,
    pub tier: engine::model::Tier,
    pub user_id: String,
    pub email: String,
    /// None: a random one is generated (and printed).
    pub password: Option<String>,
    pub producer_id: String,
    /// The signal sources (`source_id`) the producer may publish under.
    pub sources: Vec<String>,
}

/// What was created, to show the operator once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub plan_id: String,
    /// False when the plan existed already (bootstrap is safe to rerun for it).
    pub plan_created: bool,
    pub user_id: String,
    pub password: String,
    pub producer_id: String,
    pub producer_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the sidecar URL must be http://host:port, not {0:?}")]
    Url(String),
    #[error("cannot reach the sidecar at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{what}: the sidecar answered {status}: {body}")]
    Refused { what: &'static str, status: StatusCode, body: String },
    #[error("no randomness for a password")]
    Random,
}

/// Creates the plan (if missing), the user on it and a producer key.
pub async fn run(p: &Plan) -> Result<Created, BootstrapError> {
    let addr = p
        .url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/').to_owned())
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| BootstrapError::Url(p.url.clone()))?;
    let tier = p.tier.as_str();
    let plan = json!({"id": tier, "name": format!("{tier} (bootstrap)"), "tier": tier});
    let (status, body) = call(&addr, &p.admin_token, "/v1/admin/plans", &plan).await?;
    let plan_created = match status {
        StatusCode::CREATED => true,
        StatusCode::CONFLICT => false,
        status => return Err(BootstrapError::Refused { what: "plan", status, body: body.to_string() }),
    };
    let password = match &p.password {
        Some(pw) => pw.clone(),
        None => URL_SAFE_NO_PAD.encode(crate::secret::random::<18>().ok_or(BootstrapError::Random)?),
    };
    let user = json!({"id": p.user_id, "email": p.email, "password": password, "plan": tier});
    let (status, body) = call(&addr, &p.admin_token, "/v1/admin/users", &user).await?;
    if status != StatusCode::CREATED {
        return Err(BootstrapError::Refused { what: "user", status, body: body.to_string() });
    }
    // Bound before its key exists: the key's first change event already carries them.
    let rights = json!({"sources": p.sources});
    let path = format!("/v1/admin/producers/{}", p.producer_id);
    let (status, body) = call_with(Method::PUT, &addr, &p.admin_token, &path, &rights).await?;
    if status != StatusCode::OK {
        return Err(BootstrapError::Refused { what: "producer sources", status, body: body.to_string() });
    }
    let key = json!({"producer_id": p.producer_id});
    let (status, body) = call(&addr, &p.admin_token, "/v1/admin/producer-keys", &key).await?;
    let producer_key = match (status, body["key"].as_str()) {
        (StatusCode::CREATED, Some(k)) => k.to_owned(),
        _ => return Err(BootstrapError::Refused { what: "producer key", status, body: body.to_string() }),
    };
    Ok(Created {
        plan_id: tier.to_owned(),
        plan_created,
        user_id: p.user_id.clone(),
        password,
        producer_id: p.producer_id.clone(),
        producer_key,
    })
}

/// One admin POST over HTTP/1.1 (hyper's client), 10 s for the whole exchange, the
/// answer capped at 64 KiB.
async fn call(
    addr: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), BootstrapError> {
    call_with(Method::POST, addr, token, path, body).await
}

async fn call_with(
    method: Method,
    addr: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), BootstrapError> {
    let unreachable = |message: String| BootstrapError::Unreachable { addr: addr.to_owned(), message };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unreachable(e.to_string()))?;
        let res = send.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
        let status = res.status();
        let bytes = Limited::new(res.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
}
