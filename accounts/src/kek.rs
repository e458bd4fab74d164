//! Envelope encryption of the signing keys at rest.
//!
//! Each private key is sealed with its own random data key (AES-256-GCM), and the data
//! key is sealed with the key-encryption key (KEK), which never touches the database:
//! it comes from the environment or a file (a Kubernetes Secret), and is stretched
//! with HKDF-SHA256 so that any 32+ byte secret makes a full-strength key. The key id
//! is the additional data of both seals, so a sealed key cannot be moved to another
//! row. A database dump alone yields no private key.
//!
//! Sealed layout (version 1): `1 | kek id (8) | nonce (12) | sealed data key (32 + 16)
//! | nonce (12) | sealed private key (n + 16)`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;

const VERSION: u8 = 1;
const TAG: usize = 16;
const KEY: usize = 32;
const ID: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("the key-encryption key must be at least 32 bytes (got {0})")]
    Short(usize),
    #[error("a signing key is sealed with another key-encryption key ({0}); this one is {1}")]
    OtherKek(String, String),
    #[error("a sealed signing key is damaged or does not belong to its row")]
    Damaged,
    #[error("no randomness")]
    Random,
}

/// The key-encryption key.
pub struct Kek {
    key: LessSafeKey,
    id: [u8; ID],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &crate::secret::hex(&self.id)).finish_non_exhaustive()
    }
}

fn aes(key: &[u8]) -> Result<LessSafeKey, KekError> {
    UnboundKey::new(&AES_256_GCM, key).map(LessSafeKey::new).map_err(|_| KekError::Damaged)
}

fn random<const N: usize>() -> Result<[u8; N], KekError> {
    crate::secret::random().ok_or(KekError::Random)
}

impl Kek {
    /// A KEK from a secret of 32 bytes or more (surrounding whitespace ignored, so a
    /// file with a trailing newline works).
    pub fn from_secret(secret: &[u8]) -> Result<Self, KekError> {
        let secret = secret.trim_ascii();
        if secret.len() < 32 {
            return Err(KekError::Short(secret.len()));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"signalcast-accounts kek v1").extract(secret);
        let mut key = [0u8; KEY];
        prk.expand(&[b"signing keys"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| KekError::Damaged)?;
        let mut id = [0u8; ID];
        id.copy_from_slice(&crate::secret::sha256(&key)[..ID]);
        Ok(Self { key: aes(&key)?, id })
    }

    /// The KEK's public name (a hash prefix), stored with what it sealed.
    pub fn id(&self) -> String {
        crate::secret::hex(&self.id)
    }

    /// Seals `secret` for the row named `aad`.
    pub fn seal(&self, secret: &[u8], aad: &str) -> Result<Vec<u8>, KekError> {
        let dek: [u8; KEY] = random()?;
        let (n1, n2): ([u8; NONCE_LEN], [u8; NONCE_LEN]) = (random()?, random()?);
        let mut wrapped = dek.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n1),
                Aad::from(aad.as_bytes()),
                &mut wrapped,
            )
            .map_err(|_| KekError::Damaged)?;
        let mut sealed = secret.to_vec();
        aes(&dek)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n2),
                Aad::from(aad.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| KekError::Damaged)?;
        let mut out = Vec::with_capacity(1 + ID + 2 * NONCE_LEN + wrapped.len() + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&n1);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&n2);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for the row named `aad`.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, KekError> {
        let head = 1 + ID + NONCE_LEN + KEY + TAG + NONCE_LEN;
        if sealed.len() < head + TAG || sealed[0] != VERSION {
            return Err(KekError::Damaged);
        }
        let id = &sealed[1..1 + ID];
        if id != self.id {
            return Err(KekError::OtherKek(crate::secret::hex(id), self.id()));
        }
        let mut at = 1 + ID;
        let mut take = |n: usize| {
            let part = &sealed[at..at + n];
            at += n;
            part
        };
        let n1 = take(NONCE_LEN);
        let mut wrapped = take(KEY + TAG).to_vec();
        let n2 = take(NONCE_LEN);
        let mut body = sealed[at..].to_vec();
        let nonce = |n: &[u8]| Nonce::try_assume_unique_for_key(n).map_err(|_| KekError::Damaged);
        let dek = self
            .key
            .open_in_place(nonce(n1)?, Aad::from(aad.as_bytes()), &mut wrapped)
            .map_err(|_| KekError::Damaged)?;
        let plain = aes(dek)?
            .open_in_place(nonce(n2)?, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| KekError::Damaged)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a key-encryption key of 32 bytes or more\n";

    #[test]
    fn seals_open_only_with_their_kek_and_their_row() {
        let kek = Kek::from_secret(SECRET).unwrap();
        let sealed = kek.seal(b"private key bytes", "kid-1").unwrap();
        assert!(!sealed.windows(17).any(|w| w == b"private key bytes"), "no cleartext");
        assert_eq!(kek.open(&sealed, "kid-1").unwrap(), b"private key bytes");
        assert!(matches!(kek.open(&sealed, "kid-2"), Err(KekError::Damaged)), "moved to another row");
        let other = Kek::from_secret(b"another key-encryption key, 32+ bytes").unwrap();
        assert!(matches!(other.open(&sealed, "kid-1"), Err(KekError::OtherKek(..))));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(kek.open(&flipped, "kid-1"), Err(KekError::Damaged)));
        assert!(matches!(kek.open(&sealed[..20], "kid-1"), Err(KekError::Damaged)));
        assert!(matches!(Kek::from_secret(b"too short"), Err(KekError::Short(9))));
        assert_eq!(Kek::from_secret(SECRET).unwrap().id(), kek.id(), "the same secret, the same KEK");
    }
}
