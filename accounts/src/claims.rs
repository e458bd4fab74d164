//! The access token's claims (docs/accounts.md, "Tokens"). The gateway reads the same
//! fields (`gateway::auth::Claims`); the gateway's tests against this binary keep the
//! two in step.

use serde::{Deserialize, Serialize};

/// The audience of every signalcast access token.
pub const AUDIENCE: &str = "signalcast";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub tier: engine::model::Tier,
    pub categories: Vec<engine::model::Category>,
    pub rt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_signals_per_day: Option<u32>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub aud: String,
}
