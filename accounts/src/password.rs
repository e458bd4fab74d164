//! Passwords: argon2id (the argon2 crate's defaults: 19 MiB, 2 passes, 1 lane, OWASP's
//! minimum), hashed and verified off the async threads.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString, rand_core::OsRng};

/// A PHC string for `password`.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The most memory a stored hash may ask a verification for: a row written by anything
/// but `hash` (a restored dump, a hand edit) cannot make a login allocate gigabytes.
const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Argon2 working memory, kept between verifications: a verification reuses a block
/// array another one finished with, so the sidecar holds at most one per verification
/// that ever ran at once (bounded by `--login-permits`), allocated once, instead of
/// allocating and freeing 19 MiB per login (which the allocator gives back to the
/// system only later, so bursts of logins overshot the bound).
static MEMORY: std::sync::Mutex<Vec<Vec<argon2::Block>>> = std::sync::Mutex::new(Vec::new());

/// True if `password` matches `phc`. A malformed stored hash, or one asking for more
/// than [`MAX_MEMORY_KIB`], is a mismatch.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else { return false };
    let (Ok(params), Ok(algorithm)) =
        (argon2::Params::try_from(&h), argon2::Algorithm::try_from(h.algorithm))
    else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    if params.m_cost() > MAX_MEMORY_KIB {
        return false;
    }
    let blocks = params.block_count();
    let lock = || MEMORY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut memory = lock().pop().unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    let hashed =
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks]);
    lock().push(memory);
    // `Output`'s equality is constant-time.
    hashed.is_ok() && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// A hash to verify against when the user does not exist, so that an unknown email
/// costs the same time as a wrong password.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy password that matches nothing").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = super::hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("correct horse.", &h));
        assert!(!super::verify("x", "not a phc string"));
    }

    #[test]
    fn verification_agrees_with_the_crates_own_and_refuses_greedy_parameters() {
        use argon2::password_hash::PasswordVerifier;
        let h = super::hash("tr0ub4dor&3").unwrap();
        let parsed = argon2::password_hash::PasswordHash::new(&h).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"tr0ub4dor&3", &parsed).is_ok());
        assert!(super::verify("tr0ub4dor&3", &h));
        // Other parameters than the defaults verify too (memory grows to fit).
        let salt = argon2::password_hash::SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let params = argon2::Params::new(32 * 1024, 3, 1, None).unwrap();
        let other = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let h2 =
            argon2::password_hash::PasswordHasher::hash_password(&other, b"pw", &salt).unwrap().to_string();
        assert!(super::verify("pw", &h2) && !super::verify("pW", &h2));
        // A stored hash asking for 1 GiB is refused, not computed.
        let greedy = h2.replace("m=32768", "m=1048576");
        assert!(!super::verify("pw", &greedy));
    }
}
