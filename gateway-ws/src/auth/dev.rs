//! The embedded default: HS256 tokens signed with a dev secret.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{AUDIENCE, Account, Accounts, AuthError, Authenticator, Claims, Session};
use engine::model::Category;

/// Verifies (and, for the `token` command and tests, mints) HS256 tokens for the
/// fixture accounts. Only HS256 is accepted: `alg: none` and every other algorithm are
/// refused by construction.
pub struct DevAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    accounts: Accounts,
}

impl std::fmt::Debug for DevAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAuth").field("users", &self.accounts.iter().count()).finish_non_exhaustive()
    }
}

impl DevAuth {
    pub fn new(secret: &[u8], accounts: Accounts) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            accounts,
        }
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The claims a token for `account` carries, valid for `ttl` from `now` (Unix s).
    pub fn claims_for(account: &Account, now: i64, ttl: Duration) -> Claims {
        Claims {
            sub: account.id.clone(),
            tier: account.tier,
            categories: Category::ALL.iter().copied().filter(|c| account.categories.contains(*c)).collect(),
            rt: account.real_time_access,
            max_signals_per_day: account.max_signals_per_day,
            exp: now + ttl.as_secs() as i64,
            iat: now,
            jti: format!("{:016x}", engine::channels::Epoch::random().0),
            aud: AUDIENCE.to_owned(),
        }
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// A token for the fixture user `user_id`.
    pub fn mint(&self, user_id: &str, ttl: Duration) -> Result<String, AuthError> {
        let account = self.accounts.get(user_id).ok_or(AuthError::UnknownUser)?;
        self.sign(&Self::claims_for(account, unix_now(), ttl))
    }
}

pub(crate) fn unix_now() -> i64 {
    engine::model::UnixNanos::now().0 / 1_000_000_000
}

impl Authenticator for DevAuth {
    fn authenticate(&self, token: &str) -> Result<Session, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            }
        })?;
        let account = self.accounts.get(&data.claims.sub).ok_or(AuthError::UnknownUser)?;
        if account.suspended {
            return Err(AuthError::Suspended);
        }
        Ok(data.claims.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::model::Tier;

    fn auth() -> DevAuth {
        DevAuth::new(
            b"test-secret",
            Accounts::from_toml(include_str!("../../../fixtures/accounts.toml")).unwrap(),
        )
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_account() {
        let a = auth();
        for acc in a.accounts().iter().filter(|a| !a.suspended) {
            let s = a.authenticate(&a.mint(&acc.id, Duration::from_secs(60)).unwrap()).unwrap();
            assert_eq!(
                (s.user_id.as_str(), s.tier, s.categories),
                (acc.id.as_str(), acc.tier, acc.categories)
            );
        }
        assert!(a.accounts().iter().any(|a| a.tier == Tier::Free));
    }

    #[test]
    fn forged_and_stale_tokens_are_refused() {
        let a = auth();
        let acc = a.accounts().iter().find(|a| a.tier == Tier::Premium && !a.suspended).unwrap().clone();
        let now = unix_now();
        let mut c = DevAuth::claims_for(&acc, now, Duration::from_secs(60));
        c.exp = now - 120;
        assert_eq!(a.authenticate(&a.sign(&c).unwrap()), Err(AuthError::Expired));
        let mut c = DevAuth::claims_for(&acc, now, Duration::from_secs(60));
        c.aud = "someone-else".into();
        assert!(matches!(a.authenticate(&a.sign(&c).unwrap()), Err(AuthError::Invalid(_))));
        let other = DevAuth::new(b"other-secret", a.accounts().clone());
        assert!(matches!(
            a.authenticate(&other.mint(&acc.id, Duration::from_secs(60)).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        // alg: none and tampered claims: tests/limits.rs (bad_tokens_get_401_before_any_upgrade).
        assert!(matches!(a.authenticate("garbage"), Err(AuthError::Invalid(_))));
        let suspended = a.accounts().iter().find(|a| a.suspended).unwrap();
        let t = a.sign(&DevAuth::claims_for(suspended, now, Duration::from_secs(60))).unwrap();
        assert_eq!(a.authenticate(&t), Err(AuthError::Suspended));
    }
}
