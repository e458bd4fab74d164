//! The contract between the gateway and `signalcast-accounts`: the claims of an access
//! token, a user's entitlements, and the snapshot and change events of the feed that
//! gateways follow (docs/accounts.md). Defined once, here, so that the two sides cannot
//! drift: the sidecar serializes these types and the gateway parses them.
//!
//! Serde only: no I/O, no HTTP, no database.

use engine::model::{Category, Tier};
use serde::{Deserialize, Serialize};

/// The audience every signalcast access token must name.
pub const AUDIENCE: &str = "signalcast";

/// The claims of an access token: EdDSA from the sidecar, HS256 from the embedded
/// default's dev issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tier: Tier,
    pub categories: Vec<Category>,
    /// Real-time access; `false` means the delayed feed on every tier.
    pub rt: bool,
    /// Overrides the tier's signals per day when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_signals_per_day: Option<u32>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub aud: String,
}

/// What a user may receive now, computed by the sidecar from its tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub id: String,
    #[serde(default)]
    pub email: String,
    /// `active`, or why not (`suspended`, …): anything but `active` is cut off.
    pub status: String,
    pub tier: Tier,
    pub categories: Vec<Category>,
    pub real_time: bool,
    pub max_signals_per_day: Option<u32>,
    /// Unix seconds of the user's last change. A token issued at or before it carries
    /// older rights: the gateway applies these instead (a downgrade is not undone by
    /// reconnecting with an older token). Absent: unknown, so these always apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<i64>,
}

impl Entitlements {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// One active producer API key, as gateways hold it: its SHA-256 only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerKey {
    pub producer_id: String,
    /// Hex.
    pub key_sha256: String,
}

/// `GET /v1/gateway/snapshot`: what a gateway needs besides the stream, as of
/// `position` in the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub position: i64,
    pub keys: Vec<ProducerKey>,
    /// Ids of users who are not active.
    pub suspended: Vec<String>,
    /// The current rights of every user changed within `token_ttl_secs`: tokens issued
    /// before such a change may still be alive.
    #[serde(default)]
    pub recent: Vec<Entitlements>,
    /// The longest an access token lives: a change older than this outlived every
    /// token issued before it.
    #[serde(default)]
    pub token_ttl_secs: u64,
    /// Producers with rights beyond signals (ticks).
    #[serde(default)]
    pub producers: Vec<ProducerRights>,
}

/// What a producer may send besides signals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRights {
    pub producer_id: String,
    /// May send market ticks (which move the prices every client sees).
    #[serde(default)]
    pub ticks: bool,
    /// The signal sources (`source_id` UUIDs) it may publish under.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// One event of `GET /v1/gateway/changes` (its SSE `id` is `position`). Each carries
/// current state, not a diff: applying one twice is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub position: i64,
    #[serde(flatten)]
    pub change: Change,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    /// A user's status, subscription or signal subscription; `user` is `None` when the
    /// user no longer exists.
    User { user_id: String, user: Option<Entitlements> },
    /// A producer's active keys, all of them, and its rights.
    Producer {
        producer_id: String,
        keys: Vec<ProducerKey>,
        #[serde(default)]
        ticks: bool,
        #[serde(default)]
        sources: Vec<String>,
    },
    /// The signing keys changed: fetch the JWKS.
    Keys,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn change_events_read_as_the_sidecar_writes_them() {
        let user = r#"{"position":7,"kind":"user","user_id":"u1","user":{"id":"u1","email":"a@b.c",
            "status":"suspended","tier":"premium","categories":["equity"],"real_time":true,
            "max_signals_per_day":null}}"#;
        let e: ChangeEvent = serde_json::from_str(user).unwrap();
        assert_eq!(e.position, 7);
        let Change::User { user: Some(u), .. } = &e.change else { panic!("{e:?}") };
        assert!(!u.is_active());
        assert_eq!((u.tier, u.categories.as_slice()), (Tier::Premium, &[Category::Equity][..]));
        let back: ChangeEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);

        let gone: ChangeEvent =
            serde_json::from_str(r#"{"position":8,"kind":"user","user_id":"u2","user":null}"#).unwrap();
        assert_eq!(gone.change, Change::User { user_id: "u2".into(), user: None });
        let producer: ChangeEvent = serde_json::from_str(
            r#"{"position":9,"kind":"producer","producer_id":"p","keys":[{"producer_id":"p","key_sha256":"ab"}]}"#,
        )
        .unwrap();
        assert!(matches!(producer.change, Change::Producer { ref keys, .. } if keys.len() == 1));
        let keys: ChangeEvent = serde_json::from_str(r#"{"position":10,"kind":"keys"}"#).unwrap();
        assert_eq!(keys.change, Change::Keys);
        assert!(serde_json::from_str::<ChangeEvent>(r#"{"position":1,"kind":"party"}"#).is_err());
    }
}
