//! The access token's claims: the contract crate's (docs/accounts.md, "Tokens"), which
//! the gateway verifies with the same type.

pub use contract::{AUDIENCE, Claims as AccessClaims};
