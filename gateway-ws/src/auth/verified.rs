//! Access tokens this gateway has verified already. A client that reconnects presents
//! the token it had (in a reconnect storm, every client at once), and an EdDSA check
//! costs about 38 µs here against a hash lookup; the signature of a given token does
//! not change, so what is remembered is that it was good, its key id and its claims.
//!
//! Nothing else is taken on trust: the caller checks that the key is still published,
//! and suspension and the latest rights apply on every use, as for a token seen for the
//! first time. An entry is used only before its token's `exp` (plus the validation's
//! leeway). Keys are SHA-256 digests of the token: a match is the same token.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::Claims;

/// Tokens remembered at most; past it, expired ones are dropped, and all of them if
/// that frees no more than an eighth (the next connections verify again). About 200 bytes
/// each: 13 MB when full.
pub const CAPACITY: usize = 65_536;

/// The digest a token is remembered under.
pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// See the module docs.
#[derive(Debug)]
pub struct Verified {
    tokens: Mutex<HashMap<Digest, (String, Claims)>>,
    capacity: usize,
    leeway_s: i64,
}

impl Verified {
    /// Remembers at most `capacity` tokens, each until its `exp` + `leeway_s`.
    pub fn new(capacity: usize, leeway_s: i64) -> Self {
        Self { tokens: Mutex::default(), capacity, leeway_s }
    }

    /// The key id and claims of a token verified before and not expired at `now_s`.
    pub fn get(&self, token: &Digest, now_s: i64) -> Option<(String, Claims)> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let (kid, claims) = tokens.get(token)?;
        if claims.exp + self.leeway_s <= now_s {
            // Expired: the full check says so, with its own error.
            tokens.remove(token);
            return None;
        }
        Some((kid.clone(), claims.clone()))
    }

    /// A token whose signature (by key `kid`) and claims were just verified.
    pub fn insert(&self, token: Digest, kid: String, claims: Claims, now_s: i64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= self.capacity && !tokens.contains_key(&token) {
            let leeway = self.leeway_s;
            tokens.retain(|_, (_, c)| c.exp + leeway > now_s);
            // Unless the sweep freed more than an eighth, start over: a cache full of
            // live tokens would otherwise sweep (under the lock) on every insert.
            if tokens.len() >= self.capacity - self.capacity / 8 {
                tokens.clear();
            }
        }
        tokens.insert(token, (kid, claims));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::model::{Category, Tier};

    fn claims(sub: &str, exp: i64) -> Claims {
        Claims {
            sub: sub.into(),
            tier: Tier::Premium,
            categories: vec![Category::Equity],
            rt: true,
            max_signals_per_day: None,
            exp,
            iat: 0,
            jti: format!("jti-{sub}"),
            aud: "signalcast".into(),
        }
    }

    #[test]
    fn a_token_is_known_by_its_exact_bytes_until_it_expires() {
        let v = Verified::new(10, 5);
        v.insert(digest("token-a"), "k1".into(), claims("a", 100), 0);
        assert_eq!(v.get(&digest("token-a"), 50), Some(("k1".into(), claims("a", 100))));
        assert_eq!(v.get(&digest("token-a "), 50), None, "another token, one byte more");
        assert_eq!(v.get(&digest("token-b"), 50), None);
        assert!(v.get(&digest("token-a"), 104).is_some(), "within the leeway");
        assert_eq!(v.get(&digest("token-a"), 105), None, "expired");
        assert_eq!(v.len(), 0, "an expired entry is dropped when found");
    }

    #[test]
    fn at_capacity_expired_tokens_go_first_then_everything() {
        let v = Verified::new(3, 0);
        v.insert(digest("old"), "k".into(), claims("old", 10), 0);
        v.insert(digest("b"), "k".into(), claims("b", 1_000), 0);
        v.insert(digest("c"), "k".into(), claims("c", 1_000), 0);
        // Full: the expired one makes room.
        v.insert(digest("d"), "k".into(), claims("d", 1_000), 20);
        assert_eq!(v.len(), 3);
        assert!(v.get(&digest("b"), 20).is_some() && v.get(&digest("d"), 20).is_some());
        // Full of live ones: all go, and the new one is kept.
        v.insert(digest("e"), "k".into(), claims("e", 1_000), 20);
        assert_eq!(v.len(), 1);
        assert!(v.get(&digest("e"), 20).is_some());
        // The same token again is no new entry.
        v.insert(digest("e"), "k".into(), claims("e", 1_000), 20);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn a_sweep_that_frees_little_starts_over_rather_than_sweep_at_every_insert() {
        let v = Verified::new(16, 0);
        v.insert(digest("soon"), "k".into(), claims("soon", 10), 0);
        for n in 0..15 {
            v.insert(digest(&format!("live-{n}")), "k".into(), claims("live", 1_000), 0);
        }
        // Full; one expired of 16 frees less than an eighth: everything goes.
        v.insert(digest("new"), "k".into(), claims("new", 1_000), 20);
        assert_eq!(v.len(), 1);
        // With three expired of 16 the sweep is enough: the live ones stay.
        for n in 0..3 {
            v.insert(digest(&format!("short-{n}")), "k".into(), claims("short", 30), 20);
        }
        for n in 0..12 {
            v.insert(digest(&format!("long-{n}")), "k".into(), claims("long", 1_000), 20);
        }
        assert_eq!(v.len(), 16);
        v.insert(digest("later"), "k".into(), claims("later", 1_000), 40);
        assert_eq!(v.len(), 14, "the 3 expired went, 13 live and the new one are kept");
    }
}
