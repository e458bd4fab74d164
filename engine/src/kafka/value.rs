//! Kafka record values: what a producer in any language writes to `raw-signals` and
//! `market-data`. Sans-IO, so that it can be tested and fuzzed without a broker.
//!
//! A value is JSON (the field names of docs/kafka.md, as in `fixtures/*.jsonl`) unless the
//! record's `content-type` header says `application/x-rkyv`: then it is the payload of
//! the TCP feed's SIGNAL or TICK frame (docs/feed-protocol.md), without the frame header.

use rkyv::util::AlignedVec;

use crate::feed::codec::{FrameKind, ProducerMessage};
use crate::model::{Category, EnrichedSignal, Signal, Tick, UnixNanos};
use crate::outcome::handover::PeerEvent;

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
    #[error(
        "unsigned record (signalcast-producer, signalcast-signed-at and signalcast-signature are required)"
    )]
    Unsigned,
    #[error("unknown producer {0:?}")]
    UnknownProducer(String),
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("signed at {signed_at_ms} ms, outside the accepted age at {now_ms} ms (replay, or a clock off)")]
    StaleSignature { signed_at_ms: u64, now_ms: u64 },
    #[error("producer {0:?} may not send ticks")]
    ForbiddenTick(String),
    #[error("producer {producer:?} is not bound to source {source_id}")]
    ForeignSource { producer: String, source_id: uuid::Uuid },
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
            Self::Unsigned => "unsigned",
            Self::UnknownProducer(_) => "unknown_producer",
            Self::BadSignature(_) => "bad_signature",
            Self::StaleSignature { .. } => "stale_signature",
            Self::ForbiddenTick(_) => "forbidden_tick",
            Self::ForeignSource { .. } => "foreign_source",
        }
    }

    /// The record was refused for who sent it, not for what it holds.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::Unsigned
                | Self::UnknownProducer(_)
                | Self::BadSignature(_)
                | Self::StaleSignature { .. }
                | Self::ForbiddenTick(_)
                | Self::ForeignSource { .. }
        )
    }
}

/// Why a relayed `signals.<tier>` record is dropped before it reaches any client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("value is {len} bytes, over relay_max_record_bytes = {max}")]
    TooLarge { len: usize, max: usize },
    #[error("no value")]
    Empty,
    #[error("not the data of a SIGNAL_UPDATE: {0}")]
    Shape(String),
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("the sc-category header says {header:?}, the signal {signal:?}")]
    CategoryMismatch { header: Option<Category>, signal: Category },
}

impl RelayError {
    /// A short stable code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty",
            Self::Shape(_) => "invalid_json",
            Self::InvalidSignal(_) => "invalid_signal",
            Self::CategoryMismatch { .. } => "category_mismatch",
        }
    }
}

/// A `signals.<tier>` value as the `data` a client may receive: at most `max_bytes`,
/// UTF-8 JSON of exactly the enriched signal an engine writes (docs/protocol.md), whose
/// category is the record's `sc-category`. The bytes returned are written again by the
/// engine's own encoder, so unknown fields and odd spacing never reach a client.
/// Whoever can write to `signals.<tier>` can still forge a well-formed signal: that is
/// for the broker's ACLs (docs/kafka.md).
pub fn relayed_signal(
    value: &[u8],
    category: Option<Category>,
    max_bytes: usize,
) -> Result<Vec<u8>, RelayError> {
    if value.is_empty() {
        return Err(RelayError::Empty);
    }
    if value.len() > max_bytes {
        return Err(RelayError::TooLarge { len: value.len(), max: max_bytes });
    }
    let e: EnrichedSignal = serde_json::from_slice(value).map_err(|e| RelayError::Shape(e.to_string()))?;
    // The analysis cannot be larger than the record that holds it.
    e.signal.validate(max_bytes).map_err(|e| RelayError::InvalidSignal(e.to_string()))?;
    if category != Some(e.signal.category) {
        return Err(RelayError::CategoryMismatch { header: category, signal: e.signal.category });
    }
    let mut data = Vec::with_capacity(value.len());
    crate::pipeline::encode::signal_data(
        &mut data,
        &e.signal,
        e.market.as_ref(),
        e.ingest_ts,
        e.routed_ts,
        e.sent_ts,
    );
    // A close (docs/outcomes.md): its status and outcome, checked, re-encoded as well.
    let close: Relayed = serde_json::from_slice(value).map_err(|e| RelayError::Shape(e.to_string()))?;
    match (close.status.as_deref(), close.outcome) {
        (None | Some("open"), None) => {}
        (Some(status), Some(o)) => {
            let status = status
                .parse::<crate::outcome::Status>()
                .ok()
                .filter(|s| *s != crate::outcome::Status::Open)
                .ok_or_else(|| RelayError::Shape(format!("a close with status {status:?}")))?;
            let closed_at = crate::model::UnixNanos::from_micros(o.closed_at)
                .ok_or_else(|| RelayError::Shape("closed_at out of range".into()))?;
            crate::pipeline::encode::strip_open(&mut data);
            crate::pipeline::encode::outcome_tail(
                &mut data,
                status,
                o.entry_price,
                o.exit_price,
                o.return_pct.map(crate::model::Price::raw),
                closed_at,
            );
        }
        _ => return Err(RelayError::Shape("status and outcome do not go together".into())),
    }
    Ok(data)
}

/// What a checked `signals.<tier>` value (the data [`relayed_signal`] returns) says for
/// the outcome tracker of an engine node that follows the topics: a routed signal, with
/// the bit of `tier` whose topic carried it, or a close.
pub fn peer_event(data: &[u8], tier: crate::model::Tier) -> Result<PeerEvent, RelayError> {
    let e: EnrichedSignal = serde_json::from_slice(data).map_err(|e| RelayError::Shape(e.to_string()))?;
    let close: Relayed = serde_json::from_slice(data).map_err(|e| RelayError::Shape(e.to_string()))?;
    let s = &e.signal;
    Ok(match close.outcome {
        Some(_) => PeerEvent::Close { id: s.id, key: (s.symbol, s.exchange) },
        None => PeerEvent::Open(Box::new(crate::outcome::Tracked::new(
            s,
            e.market.as_ref().map(|m| m.last),
            1 << tier.index(),
            data,
        ))),
    })
}

/// What a relayed record adds to the signal when it is a close.
#[derive(serde::Deserialize)]
struct Relayed {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    outcome: Option<RelayedOutcome>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayedOutcome {
    entry_price: Option<crate::model::Price>,
    exit_price: Option<crate::model::Price>,
    /// Percent with 4 decimals, signed: the same fixed point as a price.
    return_pct: Option<crate::model::Price>,
    closed_at: i64,
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
    fn relayed_values_are_checked_and_rewritten_by_the_engines_encoder() {
        use crate::model::MarketSnapshot;
        let s = fixture_signal();
        let mut data = Vec::new();
        let market = MarketSnapshot {
            bid: s.entry_price,
            ask: s.entry_price,
            last: s.entry_price,
            volume: 10,
            tick_ts: UnixNanos(1_000),
            tick_age_ms: 1,
        };
        crate::pipeline::encode::signal_data(
            &mut data,
            &s,
            Some(&market),
            UnixNanos(2_000),
            UnixNanos(3_000),
            None,
        );
        // What an engine writes passes unchanged.
        assert_eq!(relayed_signal(&data, Some(s.category), 8192).unwrap(), data);
        let text = String::from_utf8(data.clone()).unwrap();
        let other = if s.category == Category::Crypto { Category::Equity } else { Category::Crypto };
        let mut invalid_utf8 = data.clone();
        invalid_utf8[10] = 0xff;
        let with_extra = text.replacen('{', "{\"injected\":\"<script>\",", 1);
        let cases: Vec<(Vec<u8>, Option<Category>, &str)> = vec![
            (Vec::new(), Some(s.category), "empty"),
            (b"{\"id\": not json".to_vec(), Some(s.category), "invalid_json"),
            (invalid_utf8, Some(s.category), "invalid_json"),
            (b"[1,2,3]".to_vec(), Some(s.category), "invalid_json"),
            (text.replace("\"symbol\":", "\"symbol_\":").into_bytes(), Some(s.category), "invalid_json"),
            (data.clone(), Some(other), "category_mismatch"),
            (data.clone(), None, "category_mismatch"),
            (vec![b' '; 8193], Some(s.category), "too_large"),
        ];
        for (value, category, code) in cases {
            let err = relayed_signal(&value, category, 8192).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        // An unknown field is not passed on: the encoder writes only the known ones.
        let rewritten = relayed_signal(with_extra.as_bytes(), Some(s.category), 8192).unwrap();
        assert_eq!(rewritten, data);

        // A close passes with its status and outcome, re-encoded; a malformed one does not.
        let tracked = crate::outcome::Tracked::new(&s, Some(s.entry_price), 0b1000, &data);
        let close = crate::outcome::Close {
            signal: tracked,
            status: crate::outcome::Status::StopHit,
            entry: Some(s.entry_price),
            exit: "1.5".parse().ok(),
            return_pct: Some(-12_345),
            closed_at: UnixNanos(9_000),
        };
        let mut closed = Vec::new();
        crate::pipeline::encode::close_data(&mut closed, &data, &close);
        assert_eq!(relayed_signal(&closed, Some(s.category), 8192).unwrap(), closed);
        assert!(crate::pipeline::encode::is_close(&closed));
        // A node following the topics reads the signal as open, its close as a close.
        let PeerEvent::Open(open) = peer_event(&data, crate::model::Tier::Premium).unwrap() else {
            panic!("a routed signal reads as open")
        };
        assert_eq!(
            (open.id, open.tiers, &open.data[..]),
            (s.id, 1 << crate::model::Tier::Premium.index(), &data[..])
        );
        assert_eq!(
            peer_event(&closed, crate::model::Tier::Premium).unwrap(),
            PeerEvent::Close { id: s.id, key: (s.symbol, s.exchange) }
        );
        let text = String::from_utf8(closed).unwrap();
        for (bad, why) in [
            (text.replace("\"stop_hit\"", "\"open\""), "open with an outcome"),
            (text.replace("\"stop_hit\"", "\"won\""), "an unknown status"),
            (text.replace("\"-1.2345\"", "\"lots\""), "a return that is not a decimal"),
            (text.replace(",\"closed_at\":9", ",\"by\":\"x\",\"closed_at\":9"), "an unknown outcome field"),
        ] {
            assert_eq!(
                relayed_signal(bad.as_bytes(), Some(s.category), 8192).unwrap_err().code(),
                "invalid_json",
                "{why}"
            );
        }
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
