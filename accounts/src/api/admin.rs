//! Admin endpoints, behind the admin token. Every change to a user's tier, categories,
//! limits or status is written by the database triggers to the change log and
//! NOTIFY'd in the same transaction (migrations/V1__init.sql).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Shared, require};
use crate::entitlements::{self, Entitlements};

fn admin(app: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    require(headers, &app.config.admin_token)
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    id: String,
    email: String,
    password: String,
    /// A plan to subscribe to at once.
    plan: Option<String>,
    categories: Option<Vec<String>>,
    real_time_access: Option<bool>,
    max_signals_per_day: Option<i32>,
}

fn check_categories(c: &[String]) -> Result<(), ApiError> {
    match c.iter().find(|k| k.parse::<engine::model::Category>().is_err()) {
        Some(bad) => Err(ApiError::bad_request(format!("unknown category {bad:?}"))),
        None => Ok(()),
    }
}

impl NewUser {
    pub(super) fn validate(&self) -> Result<(), ApiError> {
        if self.password.len() < 8 {
            return Err(ApiError::bad_request("password: at least 8 characters"));
        }
        self.categories.as_deref().map_or(Ok(()), check_categories)
    }
}

pub(crate) async fn create_user(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(u): Json<NewUser>,
) -> Result<(StatusCode, Json<Entitlements>), ApiError> {
    admin(&app, &headers)?;
    u.validate()?;
    let categories = u
        .categories
        .unwrap_or_else(|| engine::model::Category::ALL.iter().map(|c| c.as_str().to_owned()).collect());
    let password = u.password;
    let hash = tokio::task::spawn_blocking(move || crate::password::hash(&password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing failed"))?
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing failed"))?;
    let mut client = app.pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO user_management.users (id, email, password_hash) VALUES ($1, $2, $3)",
        &[&u.id, &u.email, &hash],
    )
    .await?;
    tx.execute(
        "INSERT INTO signals.signal_subscriptions (user_id, categories, max_signals_per_day, real_time_access)
         VALUES ($1, $2, $3, $4)",
        &[&u.id, &categories, &u.max_signals_per_day, &u.real_time_access.unwrap_or(true)],
    )
    .await?;
    if let Some(plan) = &u.plan {
        tx.execute(
            "INSERT INTO finance.user_subscriptions (user_id, plan_id) VALUES ($1, $2)",
            &[&u.id, plan],
        )
        .await?;
    }
    let e = entitlements::of(&tx, &u.id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(e)))
}

pub(crate) async fn get_user(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    admin(&app, &headers)?;
    let client = app.pool.get().await?;
    entitlements::of(&client, &id).await?.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

async fn set_status(app: &Shared, id: &str, status: &str) -> Result<Json<Entitlements>, ApiError> {
    let mut client = app.pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE user_management.users SET status = $2, updated_at = now() WHERE id = $1",
            &[&id, &status],
        )
        .await?;
    if n == 0 {
        return Err(ApiError::not_found("user"));
    }
    if status == "suspended" {
        // A suspended user cannot refresh their way back in.
        tx.execute(
            "UPDATE auth.refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    }
    let e = entitlements::of(&tx, id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    tx.commit().await?;
    Ok(Json(e))
}

pub(crate) async fn suspend(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    admin(&app, &headers)?;
    set_status(&app, &id, "suspended").await
}

pub(crate) async fn reactivate(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    admin(&app, &headers)?;
    set_status(&app, &id, "active").await
}

#[derive(Deserialize)]
pub(crate) struct SignalSubscription {
    categories: Vec<String>,
    real_time_access: bool,
    max_signals_per_day: Option<i32>,
}

impl SignalSubscription {
    pub(super) fn validate(&self) -> Result<(), ApiError> {
        check_categories(&self.categories)
    }
}

pub(crate) async fn set_signal_subscription(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(s): Json<SignalSubscription>,
) -> Result<Json<Entitlements>, ApiError> {
    admin(&app, &headers)?;
    s.validate()?;
    let client = app.pool.get().await?;
    client
        .execute(
            "INSERT INTO signals.signal_subscriptions (user_id, categories, max_signals_per_day, real_time_access)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET categories = $2, max_signals_per_day = $3,
                 real_time_access = $4, updated_at = now()",
            &[&id, &s.categories, &s.max_signals_per_day, &s.real_time_access],
        )
        .await?;
    entitlements::of(&client, &id).await?.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

#[derive(Deserialize)]
pub(crate) struct NewPlan {
    id: String,
    name: String,
    tier: String,
    #[serde(default)]
    price_cents: i64,
}

impl NewPlan {
    pub(super) fn validate(&self) -> Result<(), ApiError> {
        match self.tier.parse::<engine::model::Tier>() {
            Ok(_) => Ok(()),
            Err(_) => Err(ApiError::bad_request(format!("unknown tier {:?}", self.tier))),
        }
    }
}

pub(crate) async fn create_plan(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(p): Json<NewPlan>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&app, &headers)?;
    p.validate()?;
    app.pool
        .get()
        .await?
        .execute(
            "INSERT INTO finance.subscription_plans (id, name, tier, price_cents) VALUES ($1, $2, $3, $4)",
            &[&p.id, &p.name, &p.tier, &p.price_cents],
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": p.id, "name": p.name, "tier": p.tier, "price_cents": p.price_cents})),
    ))
}

#[derive(Deserialize)]
pub(crate) struct NewSubscription {
    user_id: String,
    plan_id: String,
}

/// Moves a user to a plan (upgrade or downgrade): the active subscription ends and the
/// new one starts in one transaction.
pub(crate) async fn subscribe(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(s): Json<NewSubscription>,
) -> Result<Json<Entitlements>, ApiError> {
    admin(&app, &headers)?;
    let mut client = app.pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE finance.user_subscriptions SET status = 'cancelled', ended_at = now()
         WHERE user_id = $1 AND status = 'active'",
        &[&s.user_id],
    )
    .await?;
    tx.execute(
        "INSERT INTO finance.user_subscriptions (user_id, plan_id) VALUES ($1, $2)",
        &[&s.user_id, &s.plan_id],
    )
    .await?;
    let e = entitlements::of(&tx, &s.user_id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    tx.commit().await?;
    Ok(Json(e))
}

#[derive(Deserialize)]
pub(crate) struct NewProducerKey {
    producer_id: String,
}

/// Issues a producer API key; the key is in this response only (stored hashed).
pub(crate) async fn issue_producer_key(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(k): Json<NewProducerKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&app, &headers)?;
    let key = format!("sk-{}", URL_SAFE_NO_PAD.encode(super::random::<24>()?));
    let hash = crate::secret::sha256(key.as_bytes());
    let row = app
        .pool
        .get()
        .await?
        .query_one(
            "INSERT INTO auth.producer_keys (producer_id, key_hash) VALUES ($1, $2) RETURNING id",
            &[&k.producer_id, &hash],
        )
        .await?;
    let id: i64 = row.get(0);
    Ok((StatusCode::CREATED, Json(json!({"id": id, "producer_id": k.producer_id, "key": key}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProducerRightsBody {
    ticks: Option<bool>,
    sources: Option<Vec<String>>,
}

/// The most sources one producer may be bound to.
const MAX_SOURCES: usize = 1_000;

/// Sets what producer `producer_id` may send: `ticks` (market ticks) and `sources` (the
/// signal sources it may publish under), each left as it was when absent; gateways
/// apply it to its live connections at once.
pub(crate) async fn set_producer_rights(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(producer_id): Path<String>,
    Json(r): Json<ProducerRightsBody>,
) -> Result<Json<Value>, ApiError> {
    admin(&app, &headers)?;
    if producer_id.is_empty() || producer_id.len() > 64 {
        return Err(ApiError::bad_request("producer_id must be 1 to 64 bytes"));
    }
    if r.ticks.is_none() && r.sources.is_none() {
        return Err(ApiError::bad_request("give ticks, sources or both"));
    }
    let sources = match r.sources {
        Some(list) => {
            if list.len() > MAX_SOURCES {
                return Err(ApiError::bad_request(format!("at most {MAX_SOURCES} sources per producer")));
            }
            let mut canonical = Vec::with_capacity(list.len());
            for s in &list {
                let id = uuid::Uuid::parse_str(s)
                    .map_err(|_| ApiError::bad_request(format!("source {s:?} is not a UUID")))?;
                canonical.push(id.hyphenated().to_string());
            }
            canonical.sort();
            canonical.dedup();
            Some(canonical)
        }
        None => None,
    };
    let row = app
        .pool
        .get()
        .await?
        .query_one(
            "INSERT INTO auth.producers (producer_id, ticks, sources)
             VALUES ($1, COALESCE($2::boolean, false), COALESCE($3::text[], '{}'))
             ON CONFLICT (producer_id) DO UPDATE SET ticks = COALESCE($2::boolean, auth.producers.ticks),
                 sources = COALESCE($3::text[], auth.producers.sources), updated_at = now()
             RETURNING ticks, sources",
            &[&producer_id, &r.ticks, &sources],
        )
        .await?;
    let (ticks, sources): (bool, Vec<String>) = (row.get(0), row.get(1));
    Ok(Json(json!({"producer_id": producer_id, "ticks": ticks, "sources": sources})))
}

pub(crate) async fn revoke_producer_key(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers)?;
    let n = app
        .pool
        .get()
        .await?
        .execute(
            "UPDATE auth.producer_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    if n == 0 { Err(ApiError::not_found("active producer key")) } else { Ok(StatusCode::NO_CONTENT) }
}

/// A new signing key signs from now on; older ones keep verifying (still in the JWKS).
/// A change-log entry tells gateways to fetch the JWKS at once.
pub(crate) async fn rotate_signing_key(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&app, &headers)?;
    crate::keys::rotate(&app.pool, &app.config.kek).await?;
    let keys = crate::keys::load(&app.pool, &app.config.kek).await?;
    let kid = keys.kid().to_owned();
    *app.keys.write().await = keys;
    // Then (the JWKS served now has the key) tell gateways to fetch it, with a
    // change-log entry that is neither a user nor a producer.
    app.pool.get().await?.execute("SELECT auth.record_change(NULL, NULL)", &[]).await?;
    Ok(Json(json!({"kid": kid})))
}

/// Retires a signing key: it leaves the JWKS, and a change-log entry makes gateways
/// fetch the JWKS at once, so tokens it signed stop opening connections within a
/// second. The key that signs now cannot be retired while it is the only one.
pub(crate) async fn retire_signing_key(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(kid): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&app, &headers)?;
    crate::keys::retire(&app.pool, &kid).await?;
    *app.keys.write().await = crate::keys::load(&app.pool, &app.config.kek).await?;
    app.pool.get().await?.execute("SELECT auth.record_change(NULL, NULL)", &[]).await?;
    Ok(StatusCode::NO_CONTENT)
}
