//! The admin API's door: the admin token is checked before the handler runs (so before
//! any request body is read or parsed), and every call that passed it is recorded —
//! in the log and in `auth.admin_audit` — with who made it, what it did, on what, and
//! how it ended.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Shared, require};

/// Largest response body read back to find the id a call created.
const MAX_READ_BACK: usize = 64 * 1024;

pub(crate) async fn admin_gate(State(app): State<Shared>, req: Request, next: Next) -> Response {
    if let Err(e) = require(req.headers(), &app.config.admin_token) {
        return e.into_response();
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let actor = format!("admin-token@{}", peer.as_deref().unwrap_or("unknown"));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let action = format!("{} {route}", req.method());
    let ids = path_ids(&route, req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    // Without ids in the path, the target is what the call created (its answer's id).
    let (response, target) = if ids.is_empty() && status.is_success() {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, MAX_READ_BACK).await {
            Ok(bytes) => {
                let target = created_id(&bytes).unwrap_or_else(|| "-".into());
                (Response::from_parts(parts, axum::body::Body::from(bytes)), target)
            }
            Err(_) => (Response::from_parts(parts, axum::body::Body::empty()), "-".into()),
        }
    } else {
        (response, if ids.is_empty() { "-".into() } else { ids.join("/") })
    };
    tracing::info!(%actor, %action, %target, status = status.as_u16(), "admin action");
    let recorded = async {
        app.pool
            .get()
            .await?
            .execute(
                "INSERT INTO auth.admin_audit (actor, action, target, status) VALUES ($1, $2, $3, $4)",
                &[&actor, &action, &target, &i32::from(status.as_u16())],
            )
            .await
            .map_err(super::ApiError::from)
    };
    if let Err(e) = recorded.await {
        tracing::error!(%action, %target, error = %e.message, "admin action not recorded in the audit table");
    }
    response
}

/// The values of a route's `{param}` segments in `path`, in order.
fn path_ids(route: &str, path: &str) -> Vec<String> {
    route
        .split('/')
        .zip(path.split('/'))
        .filter(|(r, _)| r.starts_with('{'))
        .map(|(_, p)| p.to_owned())
        .collect()
}

/// The id an admin call's answer names (`id`, `kid`, `producer_id`, `user_id`).
fn created_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["id", "kid", "producer_id", "user_id"].iter().find_map(|k| v[k].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_come_from_the_path_or_the_answer() {
        assert_eq!(super::path_ids("/v1/admin/users/{id}/suspend", "/v1/admin/users/u-9/suspend"), ["u-9"]);
        assert!(super::path_ids("/v1/admin/users", "/v1/admin/users").is_empty());
        assert_eq!(super::created_id(br#"{"kid":"k-2","x":1}"#).as_deref(), Some("k-2"));
        assert_eq!(super::created_id(br#"{"id":"u-1","email":"a@b"}"#).as_deref(), Some("u-1"));
        assert_eq!(super::created_id(b"not json"), None);
    }
}
