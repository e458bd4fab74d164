//! For gateways: a snapshot (producer keys, suspended users) and the entitlement change stream (server-sent events).
//!
//! `GET /v1/gateway/changes?after=N` streams every change after position N, oldest
//! first, as SSE events whose `id` is the position: a gateway that reconnects passes
//! the last id it saw and misses nothing (the log is durable; NOTIFY only wakes the
//! stream). Each event carries the user's current entitlements (or the producer's
//! active key hashes), not a diff: applying an event twice is harmless. A `keys` event
//! says the signing keys changed (fetch the JWKS).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use contract::{Change, ChangeEvent, ProducerKey, ProducerRights, Snapshot};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;

use super::{ApiError, App, Shared, require};
use crate::entitlements;

/// Events read from the log per query.
const BATCH: i64 = 256;

async fn active_keys(
    client: &impl deadpool_postgres::GenericClient,
    producer: Option<&str>,
) -> Result<Vec<ProducerKey>, ApiError> {
    let rows = client
        .query(
            "SELECT producer_id, key_hash FROM auth.producer_keys
             WHERE revoked_at IS NULL AND ($1::text IS NULL OR producer_id = $1) ORDER BY id",
            &[&producer],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ProducerKey {
            producer_id: r.get(0),
            key_sha256: crate::secret::hex(&r.get::<_, Vec<u8>>(1)),
        })
        .collect())
}

/// What `producer` may send besides signals of no source: ticks, and the sources it is
/// bound to.
async fn rights(
    client: &impl deadpool_postgres::GenericClient,
    producer: &str,
) -> Result<(bool, Vec<String>), ApiError> {
    let row = client
        .query_opt("SELECT ticks, sources FROM auth.producers WHERE producer_id = $1", &[&producer])
        .await?;
    Ok(row.map_or((false, Vec::new()), |r| (r.get(0), r.get(1))))
}

/// What a gateway needs besides the stream: every active producer key (SHA-256 only)
/// and the producers' rights, the suspended users, the current rights of users changed
/// recently enough for a token issued before the change to be alive, and the change-log
/// position all of it is as of.
pub(crate) async fn snapshot(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Snapshot>, ApiError> {
    require(&headers, &app.config.gateway_token)?;
    let mut client = app.pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let position: i64 =
        tx.query_one("SELECT COALESCE(MAX(position), 0) FROM auth.entitlement_changes", &[]).await?.get(0);
    let keys = active_keys(&tx, None).await?;
    let suspended: Vec<String> = tx
        .query("SELECT id FROM user_management.users WHERE status <> 'active' ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let producers = tx
        .query(
            "SELECT producer_id, ticks, sources FROM auth.producers
             WHERE ticks OR cardinality(sources) > 0 ORDER BY producer_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| ProducerRights { producer_id: r.get(0), ticks: r.get(1), sources: r.get(2) })
        .collect();
    // A minute beyond the token lifetime covers the gateways' leeway and clock skew.
    let token_ttl_secs = app.config.access_ttl.as_secs();
    let window = (token_ttl_secs + 60) as f64;
    let changed: Vec<String> = tx
        .query(
            "SELECT DISTINCT user_id FROM auth.entitlement_changes
             WHERE user_id IS NOT NULL AND at > now() - make_interval(secs => $1)",
            &[&window],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut recent = Vec::with_capacity(changed.len());
    for id in changed {
        if let Some(e) = entitlements::of(&tx, &id).await? {
            recent.push(e);
        }
    }
    tx.commit().await?;
    Ok(Json(Snapshot { position, keys, suspended, recent, token_ttl_secs, producers }))
}

#[derive(Deserialize)]
pub(crate) struct After {
    #[serde(default)]
    after: i64,
}

pub(crate) async fn changes(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<After>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    require(&headers, &app.config.gateway_token)?;
    app.counters.feed_streams.fetch_add(1, Ordering::Relaxed);
    let head = app.head.clone();
    let events = stream::unfold((app, q.after, head), |(app, mut after, mut head)| async move {
        loop {
            match read(&app, after).await {
                Ok(batch) if !batch.is_empty() => {
                    after = batch.last().map_or(after, |(p, _)| *p);
                    let events: Vec<Result<Event, Infallible>> = batch
                        .into_iter()
                        .map(|(p, data)| {
                            let data = serde_json::to_string(&data).unwrap_or_default();
                            Ok(Event::default().id(p.to_string()).event("change").data(data))
                        })
                        .collect();
                    return Some((stream::iter(events), (app, after, head)));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = ?e, "change stream read failed; retrying"),
            }
            // Wait for NOTIFY, and look again now and then in case one was missed.
            let _ = tokio::time::timeout(Duration::from_secs(5), head.changed()).await;
        }
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

async fn read(app: &App, after: i64) -> Result<Vec<(i64, ChangeEvent)>, ApiError> {
    let client = app.pool.get().await?;
    let rows = client
        .query(
            "SELECT position, user_id, producer_id FROM auth.entitlement_changes
             WHERE position > $1 ORDER BY position LIMIT $2",
            &[&after, &BATCH],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let position: i64 = r.get(0);
        let (user, producer): (Option<String>, Option<String>) = (r.get(1), r.get(2));
        let change = match (user, producer) {
            (Some(user_id), _) => {
                let user = entitlements::of(&client, &user_id).await?;
                Change::User { user_id, user }
            }
            (None, Some(producer_id)) => {
                let keys = active_keys(&client, Some(&producer_id)).await?;
                let (ticks, sources) = rights(&client, &producer_id).await?;
                Change::Producer { producer_id, keys, ticks, sources }
            }
            (None, None) => Change::Keys,
        };
        out.push((position, ChangeEvent { position, change }));
    }
    Ok(out)
}
