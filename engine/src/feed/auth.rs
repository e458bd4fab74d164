//! Producer API keys.
//!
//! The embedded default reads `fixtures/producers.toml` (dev-only keys); the accounts
//! sidecar provides another [`ProducerAuth`] later. Keys are compared in constant time
//! and never logged.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Decides whether a HELLO's key is valid for its producer id.
pub trait ProducerAuth: Send + Sync + fmt::Debug {
    fn verify(&self, producer_id: &str, api_key: &str) -> bool;

    /// Whether `producer_id` may send market ticks. Ticks move the price every client
    /// sees (and which signal outcomes follow), so only producers granted the right
    /// may send them; the rest are refused with `forbidden_tick`.
    fn may_send_ticks(&self, producer_id: &str) -> bool;

    /// Whether `producer_id` is bound to signal source `source_id`: only a source's own
    /// producers may publish under its id, so that no one can close another source's
    /// signals or fake its record (docs/outcomes.md). Others are refused with
    /// `foreign_source`.
    fn may_publish_as(&self, producer_id: &str, source_id: &uuid::Uuid) -> bool;

    /// SHA-256 of each active API key of `producer_id`: the keys that sign its Kafka
    /// records (`kafka::signing`). Empty for an unknown producer, or when this source
    /// cannot tell (then signed records are refused, never accepted unchecked).
    fn signing_keys(&self, producer_id: &str) -> Vec<[u8; 32]> {
        let _ = producer_id;
        Vec::new()
    }

    /// Changes whenever keys may have been revoked: connected producers are verified
    /// again then, and cut if their key no longer holds. `None`: keys never change.
    fn revisions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A fixed table of producer ids and keys.
pub struct StaticKeys {
    keys: HashMap<String, String>,
    /// Producers that may send ticks.
    ticks: std::collections::HashSet<String>,
    /// The signal sources each producer is bound to.
    sources: HashMap<String, std::collections::HashSet<uuid::Uuid>>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys").field("producers", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

/// Why a keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid producer keys file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("producer {0:?} is listed twice")]
    Duplicate(String),
    #[error("producer {producer:?}: source {source_id:?} is not a UUID")]
    Source { producer: String, source_id: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    producer: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    api_key: String,
    /// May send market ticks (default: no).
    #[serde(default)]
    ticks: bool,
    /// The signal sources (`source_id`s) it may publish under (default: none).
    #[serde(default)]
    sources: Vec<String>,
}

impl StaticKeys {
    /// Producers that may send signals only (see [`StaticKeys::with_ticks`]).
    pub fn new<I: IntoIterator<Item = (String, String)>>(entries: I) -> Self {
        Self { keys: entries.into_iter().collect(), ticks: Default::default(), sources: HashMap::new() }
    }

    /// Binds `producer` to signal sources `sources` (see [`ProducerAuth::may_publish_as`]).
    #[must_use]
    pub fn with_sources<I: IntoIterator<Item = uuid::Uuid>>(mut self, producer: &str, sources: I) -> Self {
        self.sources.entry(producer.to_owned()).or_default().extend(sources);
        self
    }

    /// Grants the right to send ticks to `producers`.
    #[must_use]
    pub fn with_ticks<I: IntoIterator<Item = String>>(mut self, producers: I) -> Self {
        self.ticks.extend(producers);
        self
    }

    /// `[[producer]] id = "…" api_key = "…" ticks = true|false sources = ["<uuid>", …]`
    /// entries (`ticks`: may send market ticks, default false; `sources`: the signal
    /// sources it may publish under, default none).
    pub fn from_toml(text: &str) -> Result<Self, KeysError> {
        let file: KeysFile = toml::from_str(text)?;
        let mut keys = HashMap::new();
        let mut ticks = std::collections::HashSet::new();
        let mut sources: HashMap<String, std::collections::HashSet<uuid::Uuid>> = HashMap::new();
        for e in file.producer {
            if e.ticks {
                ticks.insert(e.id.clone());
            }
            for s in &e.sources {
                let id = uuid::Uuid::parse_str(s)
                    .map_err(|_| KeysError::Source { producer: e.id.clone(), source_id: s.clone() })?;
                sources.entry(e.id.clone()).or_default().insert(id);
            }
            if keys.insert(e.id.clone(), e.api_key).is_some() {
                return Err(KeysError::Duplicate(e.id));
            }
        }
        Ok(Self { keys, ticks, sources })
    }

    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeysError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    /// The key of `producer_id` (the dev tools use it to connect their own producer).
    pub fn key_of(&self, producer_id: &str) -> Option<&str> {
        self.keys.get(producer_id).map(String::as_str)
    }

    /// Producer ids known to this table.
    pub fn producer_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl ProducerAuth for StaticKeys {
    fn verify(&self, producer_id: &str, api_key: &str) -> bool {
        self.keys.get(producer_id).is_some_and(|k| constant_time_eq(k.as_bytes(), api_key.as_bytes()))
    }

    fn may_send_ticks(&self, producer_id: &str) -> bool {
        self.ticks.contains(producer_id)
    }

    fn may_publish_as(&self, producer_id: &str, source_id: &uuid::Uuid) -> bool {
        self.sources.get(producer_id).is_some_and(|s| s.contains(source_id))
    }

    fn signing_keys(&self, producer_id: &str) -> Vec<[u8; 32]> {
        self.keys.get(producer_id).map(|k| crate::kafka::signing::signing_key(k)).into_iter().collect()
    }
}

/// Compares without an early exit, so timing tells nothing about where keys differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_keys_load_and_verify() {
        let keys = StaticKeys::from_toml(include_str!("../../../fixtures/producers.toml")).unwrap();
        let id = keys.producer_ids().next().unwrap().to_owned();
        assert!(!keys.verify(&id, "wrong"));
        assert!(!keys.verify("nobody", ""));
        assert!(
            StaticKeys::from_toml("[[producer]]\nid='a'\napi_key='k'\n[[producer]]\nid='a'\napi_key='j'")
                .is_err()
        );
        let k = StaticKeys::new([("a".to_owned(), "k".to_owned())]);
        assert!(k.verify("a", "k") && !k.verify("a", "kk"));
        assert!(!k.may_send_ticks("a"), "signals only unless granted");
        assert!(StaticKeys::new([]).with_ticks(["a".to_owned()]).may_send_ticks("a"));
        let file = StaticKeys::from_toml(
            "[[producer]]\nid='t'\napi_key='k'\nticks=true\n[[producer]]\nid='s'\napi_key='j'",
        )
        .unwrap();
        assert!(file.may_send_ticks("t") && !file.may_send_ticks("s") && !file.may_send_ticks("nobody"));
        assert!(!format!("{k:?}").contains("\"k\""));
    }

    #[test]
    fn a_producer_publishes_only_under_the_sources_it_is_bound_to() {
        let a = uuid::Uuid::from_u128(0xa);
        let file = StaticKeys::from_toml(&format!(
            "[[producer]]\nid='m'\napi_key='k'\nsources=['{a}']\n[[producer]]\nid='n'\napi_key='j'"
        ))
        .unwrap();
        assert!(file.may_publish_as("m", &a));
        assert!(!file.may_publish_as("m", &uuid::Uuid::from_u128(0xb)), "another source");
        assert!(!file.may_publish_as("n", &a), "a producer bound to no source publishes under none");
        let err = StaticKeys::from_toml("[[producer]]\nid='m'\napi_key='k'\nsources=['nope']").unwrap_err();
        assert_eq!(err.to_string(), r#"producer "m": source "nope" is not a UUID"#);
        let built = StaticKeys::new([("m".to_owned(), "k".to_owned())]).with_sources("m", [a]);
        assert!(built.may_publish_as("m", &a) && !built.may_publish_as("x", &a));
    }
}
