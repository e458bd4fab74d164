//! Who is connecting and what they may receive.
//!
//! Every WebSocket connection carries a JWT. [`Authenticator`] is the one seam between
//! the gateway and wherever accounts live: the embedded default ([`DevAuth`]: HS256
//! tokens with a dev secret, users from `fixtures/accounts.toml`), or the accounts
//! sidecar ([`SidecarAuth`]: EdDSA, JWKS, change feed).

mod accounts;
mod client;
mod dev;
mod sidecar;
mod verified;

pub use accounts::{Account, Accounts, AccountsError};
pub use dev::DevAuth;
pub use sidecar::{
    AccountsState, Entitlements, KID_MISS_EVERY, OnChange, SidecarAuth, SidecarError, SidecarLink,
};

use engine::model::{CategoryMask, Tier};

/// Token claims and their audience: one definition for the gateway and the sidecar.
pub use contract::{AUDIENCE, Claims};

/// An authenticated connection's rights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub tier: Tier,
    pub categories: CategoryMask,
    pub real_time: bool,
    pub max_signals_per_day: Option<u32>,
    /// Unix seconds; the connection lives past it only with a REFRESH.
    pub expires_at: i64,
}

impl From<Claims> for Session {
    fn from(c: Claims) -> Self {
        Self {
            user_id: c.sub,
            tier: c.tier,
            categories: c.categories.into_iter().collect(),
            real_time: c.rt,
            max_signals_per_day: c.max_signals_per_day,
            expires_at: c.exp,
        }
    }
}

/// Why a token was refused (the HTTP 401 body says which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: offer it as the subprotocol signalcast.token.<JWT> (with signalcast.v1), or use ?token= or Authorization: Bearer"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("unknown user")]
    UnknownUser,
    #[error("account suspended")]
    Suspended,
}

/// Verifies tokens into sessions. Called once per connection and per REFRESH, never
/// per message; implementations verify locally (no network call).
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    fn authenticate(&self, token: &str) -> Result<Session, AuthError>;
}
