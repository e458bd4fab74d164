//! Kafka record values: what a producer in any language writes to `raw-signals` and
//! `market-data`. Sans-IO, so that it can be tested and fuzzed without a broker.
//!
//! A value is JSON (the field names of docs/kafka.md, as in `fixtures/*.jsonl`) unless the
//! record's `content-type` header says `application/x-rkyv`: then it is the payload of
//! the TCP feed's SIGNAL or TICK frame (docs/feed-protocol.md), without the frame header.

use rkyv::util::AlignedVec;

use crate::feed::codec::{FrameKind, ProducerMessage};
use crate::model::{Signal, Tick, UnixNanos};

/// Largest value accepted, JSON or rkyv. A signal is a few hundred bytes plus at most
/// `max_analysis_bytes` of analysis.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The encodings a value may have, from its `content-type` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Rkyv,
}

impl ContentType {
    pub const RKYV: &'static str = "application/x-rkyv";

    /// No header means JSON; so does `application/json` (parameters ignored).
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, ValueError> {
        let Some(v) = value else { return Ok(Self::Json) };
        let essence = v.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json") {
            Ok(Self::Json)
        } else if essence.eq_ignore_ascii_case(Self::RKYV.as_bytes()) {
            Ok(Self::Rkyv)
        } else {
            Err(ValueError::ContentType(String::from_utf8_lossy(v).chars().take(100).collect()))
        }
    }
}

/// Why a record is poison (it goes to the dead-letter topic with [`ValueError::code`]
/// and this message in headers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("empty value")]
    Empty,
    #[error("value is {0} bytes, over the limit of {MAX_VALUE_BYTES}")]
    TooLarge(usize),
    #[error("unsupported content-type {0:?} (use application/json or application/x-rkyv)")]
    ContentType(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Rkyv(String),
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("invalid tick: {0}")]
    InvalidTick(String),
}

impl ValueError {
    /// A short stable code for the `error.code` header and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge(_) => "too_large",
            Self::ContentType(_) => "content_type",
            Self::Json(_) => "invalid_json",
            Self::Rkyv(_) => "invalid_archive",
            Self::InvalidSignal(_) => "invalid_signal",
            Self::InvalidTick(_) => "invalid_tick",
        }
    }
}

fn check_size(value: &[u8]) -> Result<(), ValueError> {
    match value.len() {
        0 => Err(ValueError::Empty),
        n if n > MAX_VALUE_BYTES => Err(ValueError::TooLarge(n)),
        _ => Ok(()),
    }
}

/// A `raw-signals` value: the signal and, for rkyv, the producer's send time if it set one.
pub fn decode_signal(
    value: &[u8],
    content_type: ContentType,
    max_analysis_bytes: usize,
    scratch: &mut AlignedVec,
) -> Result<(Signal, Option<UnixNanos>), ValueError> {
    check_size(value)?;
    let (signal, sent_at) = match content_type {
        ContentType::Json => {
            let s: Signal = serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))?;
            (s, None)
        }
        ContentType::Rkyv => {
            match ProducerMessage::decode(FrameKind::Signal, value, scratch, max_analysis_bytes) {
                Ok(ProducerMessage::Signal { sent_at, signal, .. }) => (signal, sent_at),
                Ok(_) => return Err(ValueError::Rkyv("not a signal".into())),
                Err(e) => return Err(ValueError::Rkyv(e.to_string())),
            }
        }
    };
    signal.validate(max_analysis_bytes).map_err(|e| ValueError::InvalidSignal(e.to_string()))?;
    Ok((signal, sent_at))
}

/// A `market-data` value.
pub fn decode_tick(
    value: &[u8],
    content_type: ContentType,
    scratch: &mut AlignedVec,
) -> Result<Tick, ValueError> {
    check_size(value)?;
    let tick = match content_type {
        ContentType::Json => {
            serde_json::from_slice::<Tick>(value).map_err(|e| ValueError::Json(e.to_string()))?
        }
        ContentType::Rkyv => match ProducerMessage::decode(FrameKind::Tick, value, scratch, 0) {
            Ok(ProducerMessage::Tick(t)) => t,
            Ok(_) => return Err(ValueError::Rkyv("not a tick".into())),
            Err(e) => return Err(ValueError::Rkyv(e.to_string())),
        },
    };
    tick.validate().map_err(|e| ValueError::InvalidTick(e.to_string()))?;
    Ok(tick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::codec::encode_signal;

    fn fixture_signal() -> Signal {
        let line = include_str!("../../../fixtures/signals.jsonl").lines().next().unwrap_or_default();
        serde_json::from_str(line).expect("fixture signal")
    }

    #[test]
    fn json_and_rkyv_values_decode_to_the_same_signal() {
        let s = fixture_signal();
        let mut scratch = AlignedVec::new();
        let json = serde_json::to_vec(&s).unwrap();
        let (from_json, sent) = decode_signal(&json, ContentType::Json, 4096, &mut scratch).unwrap();
        assert_eq!(from_json, s);
        assert_eq!(sent, None);

        let mut frame = Vec::new();
        encode_signal(&mut frame, 7, Some(UnixNanos(42)), &s);
        // A value is the frame's payload: without the 4-byte length and the kind byte.
        let (from_rkyv, sent) = decode_signal(&frame[5..], ContentType::Rkyv, 4096, &mut scratch).unwrap();
        assert_eq!(from_rkyv, s);
        assert_eq!(sent, Some(UnixNanos(42)));
    }

    #[test]
    fn poison_values_get_a_reason() {
        let mut scratch = AlignedVec::new();
        let cases: [(&[u8], ContentType, &str); 6] = [
            (b"", ContentType::Json, "empty"),
            (b"{not json", ContentType::Json, "invalid_json"),
            (b"{\"id\":1}", ContentType::Json, "invalid_json"),
            (b"\x01\x02\x03", ContentType::Rkyv, "invalid_archive"),
            (&[b' '; MAX_VALUE_BYTES + 1], ContentType::Json, "too_large"),
            (b"[]", ContentType::Json, "invalid_json"),
        ];
        for (value, ct, code) in cases {
            let err = decode_signal(value, ct, 4096, &mut scratch).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        let mut s = fixture_signal();
        s.expires_at = s.generated_at;
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            decode_signal(&json, ContentType::Json, 4096, &mut scratch).unwrap_err().code(),
            "invalid_signal"
        );
    }

    #[test]
    fn ticks_decode_and_negative_prices_are_refused() {
        let line = include_str!("../../../fixtures/ticks.jsonl").lines().next().unwrap_or_default();
        let mut scratch = AlignedVec::new();
        let t = decode_tick(line.as_bytes(), ContentType::Json, &mut scratch).unwrap();
        assert_eq!(t.symbol.as_str(), "RELIANCE");
        let bad = line.replace("\"bid\":\"2458.4000\"", "\"bid\":\"-1.0000\"");
        assert_eq!(
            decode_tick(bad.as_bytes(), ContentType::Json, &mut scratch).unwrap_err().code(),
            "invalid_tick"
        );
    }

    #[test]
    fn content_type_header() {
        assert_eq!(ContentType::from_header(None), Ok(ContentType::Json));
        assert_eq!(ContentType::from_header(Some(b"application/json; charset=utf-8")), Ok(ContentType::Json));
        assert_eq!(ContentType::from_header(Some(b"Application/X-Rkyv")), Ok(ContentType::Rkyv));
        assert_eq!(ContentType::from_header(Some(b"text/csv")).unwrap_err().code(), "content_type");
    }

    #[test]
    fn the_documented_json_schema_matches_the_model() {
        // docs/kafka.md carries the schema producers in other languages code against.
        let doc = include_str!("../../../docs/kafka.md");
        let start = doc.find("```json\n").expect("a json block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        let schema: serde_json::Value = serde_json::from_str(&doc[start..end]).expect("valid JSON");
        let props: std::collections::BTreeSet<&str> =
            schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let required: Vec<&str> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../../fixtures/signals.jsonl").lines().next().unwrap())
                .unwrap();
        let fields: std::collections::BTreeSet<&str> =
            fixture.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(props, fields, "schema properties are the model's fields");
        let mut minimal = fixture.clone();
        for optional in fields.iter().filter(|f| !required.contains(f)) {
            minimal.as_object_mut().unwrap().remove(*optional);
        }
        let mut scratch = AlignedVec::new();
        decode_signal(minimal.to_string().as_bytes(), ContentType::Json, 4096, &mut scratch)
            .expect("only the required fields are required");
        for field in &required {
            let mut without = fixture.clone();
            without.as_object_mut().unwrap().remove(*field);
            assert!(
                decode_signal(without.to_string().as_bytes(), ContentType::Json, 4096, &mut scratch).is_err(),
                "{field} is required"
            );
        }
    }
}
