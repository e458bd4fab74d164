//! signalcast accounts sidecar: users, plans, subscriptions, producer keys and tokens
//! in PostgreSQL, so that the gateway's hot path never waits on a database.
//!
//! - [`api`]: the REST API (login, refresh, logout, admin), the JWKS, the entitlement
//!   change feed, health and metrics; [`run`] serves it on a listener.
//! - [`db`]: the pool and the embedded migrations (`migrations/`).
//! - [`keys`]: Ed25519 signing keys and the JWKS.
//! - [`entitlements`]: what a user may receive, from the tables.
//! - [`changes`]: LISTEN/NOTIFY, woken streams of the durable change log.
//! - [`seed`]: loads `fixtures/accounts.toml`.
//!
//! See docs/accounts.md and docs/openapi.yaml.

pub mod api;
pub mod bootstrap;
pub mod changes;
pub mod claims;
pub mod db;
pub mod entitlements;
pub mod kek;
pub mod keys;
pub mod password;
pub mod secret;
pub mod seed;

pub use api::{Config, run};
