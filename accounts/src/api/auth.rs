//! Login, refresh, logout, and a user's own record.
//!
//! Refresh tokens rotate: each use returns a new one and retires the old; presenting a
//! retired token again means it was stolen or replayed, and the whole login (family)
//! is revoked. Tokens are stored as SHA-256 only.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::guard::Refused;
use super::{ApiError, App, Shared, bearer};
use crate::claims::{AUDIENCE, AccessClaims};
use crate::entitlements::{self, Entitlements};

#[derive(Deserialize)]
pub(crate) struct Login {
    email: String,
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct RefreshToken {
    refresh_token: String,
}

use super::random;

fn sha256(token: &str) -> Vec<u8> {
    crate::secret::sha256(token.as_bytes())
}

fn now() -> i64 {
    engine::model::UnixNanos::now().0 / 1_000_000_000
}

fn invalid_credentials() -> ApiError {
    // One answer for an unknown email and a wrong password.
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "email or password is wrong")
}

fn invalid_refresh() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "refresh token is invalid, expired or revoked",
    )
}

/// An access token for `e`, plus a new refresh token in `family`, stored.
async fn issue(
    app: &App,
    client: &impl deadpool_postgres::GenericClient,
    e: &Entitlements,
    family: &[u8],
) -> Result<Value, ApiError> {
    let iat = now();
    let ttl = app.config.access_ttl.as_secs() as i64;
    let claims = AccessClaims {
        sub: e.id.clone(),
        tier: e.tier,
        categories: e.categories.clone(),
        rt: e.real_time,
        max_signals_per_day: e.max_signals_per_day,
        exp: iat + ttl,
        iat,
        jti: crate::secret::hex(&random::<16>()?),
        aud: AUDIENCE.to_owned(),
    };
    let access = app.keys.read().await.sign(&claims)?;
    let refresh = URL_SAFE_NO_PAD.encode(random::<32>()?);
    let refresh_ttl = app.config.refresh_ttl.as_secs_f64();
    client
        .execute(
            "INSERT INTO auth.refresh_tokens (token_hash, user_id, family, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            &[&sha256(&refresh), &e.id, &family, &refresh_ttl],
        )
        .await?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "refresh_token": refresh,
        "refresh_expires_in": app.config.refresh_ttl.as_secs(),
    }))
}

pub(crate) async fn login(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    // Refused before any database or hashing work (api::guard).
    let address = peer.ip();
    let permit = app.guard.admit(address, &req.email, Instant::now()).map_err(|r| {
        app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
        match r {
            Refused::Busy => {
                ApiError::too_many("busy", "too many logins at once; retry shortly", r.retry_after())
            }
            Refused::BackOff(_) => ApiError::too_many(
                "too_many_attempts",
                "too many failed logins; retry later",
                r.retry_after(),
            ),
        }
    })?;
    // The connection goes back to the pool before the (slow) verification.
    let row = app
        .pool
        .get()
        .await?
        .query_opt(
            "SELECT id, password_hash, status FROM user_management.users WHERE email = $1",
            &[&req.email],
        )
        .await?;
    let (id, stored, status): (Option<String>, String, String) = match &row {
        Some(r) => (Some(r.get(0)), r.get(1), r.get(2)),
        None => (None, crate::password::decoy().to_owned(), String::new()),
    };
    let password = req.password;
    let matches = tokio::task::spawn_blocking(move || {
        let ok = crate::password::verify(&password, &stored);
        drop(permit);
        ok
    })
    .await
    .unwrap_or(false);
    let Some(id) = id.filter(|_| matches) else {
        app.guard.failed(address, &req.email, Instant::now());
        app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
        return Err(invalid_credentials());
    };
    app.guard.succeeded(&req.email);
    if status != "active" {
        app.counters.login_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(StatusCode::FORBIDDEN, "suspended", "account suspended"));
    }
    let client = app.pool.get().await?;
    let e = entitlements::of(&client, &id).await?.ok_or_else(invalid_credentials)?;
    let body = issue(&app, &client, &e, &random::<16>()?).await?;
    app.counters.logins.fetch_add(1, Ordering::Relaxed);
    Ok(Json(body))
}

pub(crate) async fn refresh(
    State(app): State<Shared>,
    Json(req): Json<RefreshToken>,
) -> Result<Json<Value>, ApiError> {
    let result = rotate(&app, &req.refresh_token).await;
    let counter = if result.is_ok() { &app.counters.refreshes } else { &app.counters.refresh_failures };
    counter.fetch_add(1, Ordering::Relaxed);
    result.map(Json)
}

async fn rotate(app: &App, token: &str) -> Result<Value, ApiError> {
    let mut client = app.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT user_id, family, rotated_at IS NOT NULL OR revoked_at IS NOT NULL, expires_at < now()
             FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&sha256(token)],
        )
        .await?;
    let Some(row) = row else { return Err(invalid_refresh()) };
    let (user, family, spent, expired): (String, Vec<u8>, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if spent {
        // Replay of a rotated (or revoked) token: revoke every token of that login.
        tx.execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now() WHERE family = $1 AND revoked_at IS NULL",
            &[&family],
        )
        .await?;
        tx.commit().await?;
        app.counters.reuse_detected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%user, "refresh token reused: login revoked");
        return Err(invalid_refresh());
    }
    if expired {
        return Err(invalid_refresh());
    }
    let e = entitlements::of(&tx, &user).await?.ok_or_else(invalid_refresh)?;
    if e.status != "active" {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "suspended", "account suspended"));
    }
    tx.execute("UPDATE auth.refresh_tokens SET rotated_at = now() WHERE token_hash = $1", &[&sha256(token)])
        .await?;
    let body = issue(app, &tx, &e, &family).await?;
    tx.commit().await?;
    Ok(body)
}

pub(crate) async fn logout(
    State(app): State<Shared>,
    Json(req): Json<RefreshToken>,
) -> Result<StatusCode, ApiError> {
    app.pool
        .get()
        .await?
        .execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now()
             WHERE family = (SELECT family FROM auth.refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL",
            &[&sha256(&req.refresh_token)],
        )
        .await?;
    // The same answer whether or not the token existed.
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own record (by their access token): never anyone else's.
pub(crate) async fn me(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Entitlements>, ApiError> {
    let token = bearer(&headers).ok_or_else(|| ApiError::unauthorized("an access token is required"))?;
    let claims =
        app.keys.read().await.verify(token).ok_or_else(|| ApiError::unauthorized("invalid access token"))?;
    let client = app.pool.get().await?;
    entitlements::of(&client, &claims.sub).await?.map(Json).ok_or_else(|| ApiError::not_found("user"))
}
