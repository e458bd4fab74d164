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
use crate::kek::{Kek, KekError};

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
    #[error("signing key {0}: {1}")]
    Sealed(String, KekError),
    #[error("no such signing key in force: {0}")]
    Unknown(String),
    #[error("{0} is the only signing key in force; rotate first")]
    Last(String),
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

/// Makes a new key and stores it, sealed with `kek`; it signs from now on.
pub async fn rotate(pool: &deadpool_postgres::Pool, kek: &Kek) -> Result<String, KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let public = pair.public_key().as_ref().to_vec();
    let kid = kid_of(&public);
    let sealed = kek.seal(pkcs8.as_ref(), &kid).map_err(|e| KeyError::Sealed(kid.clone(), e))?;
    pool.get()
        .await?
        .execute(
            "INSERT INTO auth.signing_keys (kid, sealed, public_key) VALUES ($1, $2, $3)",
            &[&kid, &sealed, &public],
        )
        .await?;
    tracing::info!(%kid, kek = %kek.id(), "new signing key");
    Ok(kid)
}

/// Seals every private key still stored in clear (written before keys were sealed),
/// retired ones included, and erases the clear copy; returns how many.
pub async fn seal_cleartext(pool: &deadpool_postgres::Pool, kek: &Kek) -> Result<usize, KeyError> {
    let client = pool.get().await?;
    let rows = client.query("SELECT kid, pkcs8 FROM auth.signing_keys WHERE pkcs8 IS NOT NULL", &[]).await?;
    for row in &rows {
        let (kid, pkcs8): (String, Vec<u8>) = (row.get(0), row.get(1));
        let sealed = kek.seal(&pkcs8, &kid).map_err(|e| KeyError::Sealed(kid.clone(), e))?;
        client
            .execute(
                "UPDATE auth.signing_keys SET sealed = $2, pkcs8 = NULL WHERE kid = $1",
                &[&kid, &sealed],
            )
            .await?;
        tracing::info!(%kid, kek = %kek.id(), "signing key sealed at rest");
    }
    Ok(rows.len())
}

/// Retires `kid`: no longer published, so gateways stop accepting its tokens. The last
/// key in force cannot be retired (rotate first).
pub async fn retire(pool: &deadpool_postgres::Pool, kid: &str) -> Result<(), KeyError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let live: Vec<String> = tx
        .query("SELECT kid FROM auth.signing_keys WHERE retired_at IS NULL FOR UPDATE", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !live.iter().any(|k| k == kid) {
        return Err(KeyError::Unknown(kid.to_owned()));
    }
    if live.len() == 1 {
        return Err(KeyError::Last(kid.to_owned()));
    }
    tx.execute("UPDATE auth.signing_keys SET retired_at = now() WHERE kid = $1", &[&kid]).await?;
    tx.commit().await?;
    tracing::info!(%kid, "signing key retired");
    Ok(())
}

/// Loads the keys in force (opening the signing one with `kek`), making the first one
/// if there is none.
pub async fn load(pool: &deadpool_postgres::Pool, kek: &Kek) -> Result<Keys, KeyError> {
    let query = "SELECT kid, sealed, public_key FROM auth.signing_keys WHERE retired_at IS NULL
                 ORDER BY created_at DESC, kid";
    let mut rows = pool.get().await?.query(query, &[]).await?;
    if rows.is_empty() {
        rotate(pool, kek).await?;
        rows = pool.get().await?.query(query, &[]).await?;
    }
    let mut signing = None;
    let mut verifying = HashMap::new();
    let mut published = Vec::new();
    for row in rows {
        let (kid, sealed, public): (String, Option<Vec<u8>>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        if signing.is_none() {
            let sealed = sealed.ok_or_else(|| KeyError::Stored(kid.clone()))?;
            let pkcs8 = kek.open(&sealed, &kid).map_err(|e| KeyError::Sealed(kid.clone(), e))?;
            Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Stored(kid.clone()))?;
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
