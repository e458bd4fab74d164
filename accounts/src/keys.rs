//! Ed25519 signing keys: kept in PostgreSQL (so restarts and several sidecars share
//! them), the newest unretired one signs, every unretired one is published in the JWKS.

use std::collections::HashMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::claims::{AUDIENCE, AccessClaims};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("stored key {0} is not a valid Ed25519 PKCS#8 key")]
    Stored(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The keys in force.
pub struct Keys {
    signing: (String, EncodingKey),
    verifying: HashMap<String, DecodingKey>,
    jwks: Value,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.signing.0)
            .field("published", &self.verifying.len())
            .finish()
    }
}

fn kid_of(public: &[u8]) -> String {
    crate::secret::hex(&crate::secret::sha256(public)[..8])
}

/// Makes a new key and stores it; it signs from now on.
pub async fn rotate(pool: &deadpool_postgres::Pool) -> Result<String, KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let public = pair.public_key().as_ref().to_vec();
    let kid = kid_of(&public);
    pool.get()
        .await?
        .execute(
            "INSERT INTO auth.signing_keys (kid, pkcs8, public_key) VALUES ($1, $2, $3)",
            &[&kid, &pkcs8.as_ref(), &public],
        )
        .await?;
    tracing::info!(%kid, "new signing key");
    Ok(kid)
}

/// Loads the keys in force, making the first one if there is none.
pub async fn load(pool: &deadpool_postgres::Pool) -> Result<Keys, KeyError> {
    let query = "SELECT kid, pkcs8, public_key FROM auth.signing_keys WHERE retired_at IS NULL
                 ORDER BY created_at DESC, kid";
    let mut rows = pool.get().await?.query(query, &[]).await?;
    if rows.is_empty() {
        rotate(pool).await?;
        rows = pool.get().await?.query(query, &[]).await?;
    }
    let mut signing = None;
    let mut verifying = HashMap::new();
    let mut published = Vec::new();
    for row in rows {
        let (kid, pkcs8, public): (String, Vec<u8>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        if signing.is_none() {
            signing = Some((kid.clone(), EncodingKey::from_ed_der(&pkcs8)));
        }
        verifying.insert(kid.clone(), DecodingKey::from_ed_der(&public));
        published.push(json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": kid, "x": URL_SAFE_NO_PAD.encode(&public),
        }));
    }
    let signing = signing.ok_or(KeyError::Generate)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 5;
    Ok(Keys { signing, verifying, jwks: json!({ "keys": published }), validation })
}

impl Keys {
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing.0.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.signing.1)?)
    }

    /// Verifies an access token this sidecar issued.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let key = self.verifying.get(&kid)?;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).ok().map(|d| d.claims)
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    pub fn kid(&self) -> &str {
        &self.signing.0
    }
}
