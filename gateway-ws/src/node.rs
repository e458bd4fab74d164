//! What a node runs, decided once from its role and settings (docs/deploy.md). Every
//! other place asks the [`Plan`] instead of matching on the role itself.

use crate::config::{Config, Role};

/// The Kafka side of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaPart {
    /// No brokers configured (single node, the default).
    Off,
    /// One node that also takes `raw-signals` and `market-data` (role `all` with brokers).
    Ingest,
    /// An engine node: ingest, then routed signals to `signals.<tier>`, which are the
    /// channel logs; recently routed ids are read back at start.
    Publish,
    /// A gateway node: every `signals.<tier>` relayed into local logs, with their
    /// offsets as seqs, the topics' epochs and history read-back.
    Relay,
}

/// What a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub role: Role,
    /// The producers' TCP feed (not on a gateway node: its seqs are the topics').
    pub feed: bool,
    /// WebSocket clients on `/ws` (not on an engine node).
    pub clients: bool,
    pub kafka: KafkaPart,
    /// Tokens, rights and producer keys come from the accounts sidecar.
    pub sidecar: bool,
    /// The durable signal store in the data directory (one node: with Kafka in
    /// scale-out, the topics are the log).
    pub store: bool,
    /// The built-in demo producer (one node, embedded accounts: its key is a fixture
    /// key the sidecar does not know).
    pub demo: bool,
}

/// A role that cannot run with these settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("role {0} needs Kafka: pass --kafka-brokers (or set [kafka] brokers)")]
pub struct NeedsKafka(pub &'static str);

impl Plan {
    pub fn of(config: &Config) -> Result<Self, NeedsKafka> {
        let role = config.role;
        let brokers = config.kafka.enabled();
        let kafka = match (role, brokers) {
            (Role::All, false) => KafkaPart::Off,
            (Role::All, true) => KafkaPart::Ingest,
            (Role::Engine, true) => KafkaPart::Publish,
            (Role::Gateway, true) => KafkaPart::Relay,
            (other, false) => return Err(NeedsKafka(other.as_str())),
        };
        let sidecar = config.auth.accounts_url.is_some();
        Ok(Self {
            role,
            feed: role != Role::Gateway,
            clients: role != Role::Engine,
            kafka,
            sidecar,
            store: role == Role::All && config.store.enabled,
            demo: config.demo.enabled && !sidecar && role == Role::All,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(role: Role, brokers: bool, sidecar: bool) -> Result<Plan, NeedsKafka> {
        let mut c = Config { role, ..Config::default() };
        if brokers {
            c.kafka.brokers = "127.0.0.1:9092".into();
        }
        if sidecar {
            c.auth.accounts_url = Some("http://127.0.0.1:8081".into());
        }
        Plan::of(&c)
    }

    #[test]
    fn each_role_runs_what_docs_deploy_says() {
        let one = plan(Role::All, false, false).unwrap();
        assert_eq!((one.feed, one.clients, one.kafka, one.demo), (true, true, KafkaPart::Off, true));
        let one_kafka = plan(Role::All, true, true).unwrap();
        assert_eq!((one_kafka.kafka, one_kafka.demo, one_kafka.sidecar), (KafkaPart::Ingest, false, true));
        let engine = plan(Role::Engine, true, true).unwrap();
        assert_eq!(
            (engine.feed, engine.clients, engine.kafka, engine.demo),
            (true, false, KafkaPart::Publish, false)
        );
        let gateway = plan(Role::Gateway, true, false).unwrap();
        assert_eq!(
            (gateway.feed, gateway.clients, gateway.kafka, gateway.demo),
            (false, true, KafkaPart::Relay, false)
        );
        assert_eq!(plan(Role::Engine, false, false), Err(NeedsKafka("engine")));
        assert_eq!(plan(Role::Gateway, false, true), Err(NeedsKafka("gateway")));
    }
}
