//! Signed `raw-signals` records: who wrote a record, proven with the producer's key.
//!
//! A producer adds three headers to each record:
//!
//! - `signalcast-producer`: its producer id (as in the producers file or the sidecar);
//! - `signalcast-signed-at`: milliseconds since the Unix epoch, decimal;
//! - `signalcast-signature`: lowercase hex of HMAC-SHA256, keyed by SHA-256 of the
//!   producer's API key, over
//!   `"signalcast-kafka-v1\n" producer "\n" signed_at "\n" len(key) "\n" key value`
//!   (`len(key)` decimal; no key = length 0).
//!
//! The HMAC key is SHA-256 of the API key, not the key itself, because that is all
//! the accounts sidecar holds; the TCP feed's HELLO still needs the key itself.
//! Sans-IO, so that it can be tested and fuzzed without a broker.

use std::time::Duration;

use aws_lc_rs::{digest, hmac};

use super::value::ValueError;
use crate::feed::ProducerAuth;

pub const PRODUCER_HEADER: &str = "signalcast-producer";
pub const SIGNED_AT_HEADER: &str = "signalcast-signed-at";
pub const SIGNATURE_HEADER: &str = "signalcast-signature";

/// How far a producer's clock may run ahead of the engine's.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(60);

/// The HMAC key of a producer: SHA-256 of its API key.
pub fn signing_key(api_key: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, api_key.as_bytes()).as_ref());
    out
}

fn tag(signing_key: &[u8; 32], producer: &str, signed_at: &str, key: &[u8], value: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, signing_key));
    for part in [b"signalcast-kafka-v1\n".as_slice(), producer.as_bytes(), b"\n", signed_at.as_bytes(), b"\n"]
    {
        ctx.update(part);
    }
    ctx.update(itoa::Buffer::new().format(key.len()).as_bytes());
    ctx.update(b"\n");
    ctx.update(key);
    ctx.update(value);
    ctx.sign()
}

/// The `signalcast-signature` header of a record (producers' side; the tests and tools
/// use it).
pub fn sign(signing_key: &[u8; 32], producer: &str, signed_at_ms: u64, key: &[u8], value: &[u8]) -> String {
    let signed_at = itoa::Buffer::new().format(signed_at_ms).to_owned();
    tag(signing_key, producer, &signed_at, key, value).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The three headers as they came with a record (each `None` when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Claimed<'a> {
    pub producer: Option<&'a [u8]>,
    pub signed_at: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

/// Checks that a record was signed by a known producer within `max_age` of `now_ms`;
/// returns the producer id. The signature is compared in constant time.
pub fn verify(
    auth: &dyn ProducerAuth,
    claimed: Claimed<'_>,
    key: &[u8],
    value: &[u8],
    now_ms: u64,
    max_age: Duration,
) -> Result<String, ValueError> {
    let (Some(producer), Some(signed_at), Some(signature)) =
        (claimed.producer, claimed.signed_at, claimed.signature)
    else {
        return Err(ValueError::Unsigned);
    };
    let producer = std::str::from_utf8(producer)
        .ok()
        .filter(|p| !p.is_empty() && p.len() <= 128 && !p.contains('\n'))
        .ok_or_else(|| {
            ValueError::UnknownProducer(String::from_utf8_lossy(producer).chars().take(64).collect())
        })?;
    let signed_at_str = std::str::from_utf8(signed_at)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(ValueError::BadSignature("signalcast-signed-at is not a decimal number"))?;
    let signed_at_ms: u64 = signed_at_str
        .parse()
        .map_err(|_| ValueError::BadSignature("signalcast-signed-at is out of range"))?;
    let mac = unhex(signature).ok_or(ValueError::BadSignature("signalcast-signature is not hex"))?;
    let keys = auth.signing_keys(producer);
    if keys.is_empty() {
        return Err(ValueError::UnknownProducer(producer.to_owned()));
    }
    // Any of the producer's active keys (two during a rotation).
    let valid = keys.iter().any(|k| {
        let expected = tag(k, producer, signed_at_str, key, value);
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &mac).is_ok()
    });
    if !valid {
        return Err(ValueError::BadSignature(
            "the signature does not match the record and the producer's key",
        ));
    }
    // Checked after the MAC: only a genuine record learns that it is stale.
    let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    let ahead_ms = u64::try_from(MAX_CLOCK_AHEAD.as_millis()).unwrap_or(u64::MAX);
    if signed_at_ms.saturating_add(max_age_ms) < now_ms || signed_at_ms > now_ms.saturating_add(ahead_ms) {
        return Err(ValueError::StaleSignature { signed_at_ms, now_ms });
    }
    Ok(producer.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::StaticKeys;

    const NOW: u64 = 1_800_000_000_000;

    fn keys() -> StaticKeys {
        StaticKeys::new([("p1".to_owned(), "key-1".to_owned())])
    }

    fn claimed<'a>(producer: &'a str, at: &'a str, sig: &'a str) -> Claimed<'a> {
        Claimed {
            producer: Some(producer.as_bytes()),
            signed_at: Some(at.as_bytes()),
            signature: Some(sig.as_bytes()),
        }
    }

    #[test]
    fn a_record_signed_with_the_producers_key_verifies_and_nothing_else_does() {
        let k = signing_key("key-1");
        let sig = sign(&k, "p1", NOW, b"RELIANCE", b"{}");
        let at = NOW.to_string();
        let max = Duration::from_secs(600);
        assert_eq!(verify(&keys(), claimed("p1", &at, &sig), b"RELIANCE", b"{}", NOW, max).unwrap(), "p1");
        let code = |c: Claimed<'_>, key: &[u8], value: &[u8], now: u64| {
            verify(&keys(), c, key, value, now, max).unwrap_err().code()
        };
        assert_eq!(code(Claimed::default(), b"RELIANCE", b"{}", NOW), "unsigned");
        assert_eq!(code(claimed("p2", &at, &sig), b"RELIANCE", b"{}", NOW), "unknown_producer");
        // Another value, another key (partition), another time, another producer's key.
        assert_eq!(code(claimed("p1", &at, &sig), b"RELIANCE", b"{ }", NOW), "bad_signature");
        assert_eq!(code(claimed("p1", &at, &sig), b"TCS", b"{}", NOW), "bad_signature");
        assert_eq!(
            code(claimed("p1", &(NOW + 1).to_string(), &sig), b"RELIANCE", b"{}", NOW),
            "bad_signature"
        );
        let other = sign(&signing_key("key-2"), "p1", NOW, b"RELIANCE", b"{}");
        assert_eq!(code(claimed("p1", &at, &other), b"RELIANCE", b"{}", NOW), "bad_signature");
        assert_eq!(code(claimed("p1", &at, "zz"), b"RELIANCE", b"{}", NOW), "bad_signature");
        assert_eq!(code(claimed("p1", "-1", &sig), b"RELIANCE", b"{}", NOW), "bad_signature");
        // Key and value boundaries are part of what is signed.
        let split = sign(&k, "p1", NOW, b"AB", b"C");
        assert_eq!(code(claimed("p1", &at, &split), b"A", b"BC", NOW), "bad_signature");
        // A captured record replayed after max_age, or signed too far ahead.
        assert_eq!(code(claimed("p1", &at, &sig), b"RELIANCE", b"{}", NOW + 601_000), "stale_signature");
        assert_eq!(code(claimed("p1", &at, &sig), b"RELIANCE", b"{}", NOW - 61_000), "stale_signature");
    }

    #[test]
    fn the_signature_matches_an_independent_hmac() {
        // The same bytes a producer in another language signs (docs/kafka.md's Python).
        let k = signing_key("key-1");
        let msg = b"signalcast-kafka-v1\np1\n1800000000000\n3\nKEY{\"a\":1}";
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), msg);
        let hex: String = expected.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sign(&k, "p1", NOW, b"KEY", b"{\"a\":1}"), hex);
    }
}
