//! The JSON that trading clients receive, written by hand on the hot path.
//!
//! A signal's `data` object is written once; each channel's SIGNAL_UPDATE is then the
//! envelope (`type`, `channel`, `seq`) around a copy of those bytes. Symbols and
//! exchanges are restricted to characters that need no escaping (see `InlineStr`), and
//! `analysis` is validated JSON copied verbatim, so nothing here escapes strings. The
//! tests check the output against the serde model (`EnrichedSignal`).

use crate::model::{MarketSnapshot, Price, Signal, Tick, UnixNanos};

fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn price(out: &mut Vec<u8>, p: Price) {
    out.push(b'"');
    out.extend_from_slice(p.format(&mut [0; 24]).as_bytes());
    out.push(b'"');
}

fn micros(out: &mut Vec<u8>, t: UnixNanos) {
    int(out, t.as_micros());
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.extend_from_slice(k.as_bytes());
}

/// Writes the `data` object of a SIGNAL_UPDATE.
pub fn signal_data(
    out: &mut Vec<u8>,
    s: &Signal,
    market: Option<&MarketSnapshot>,
    ingest_ts: UnixNanos,
    routed_ts: UnixNanos,
    sent_ts: Option<UnixNanos>,
) {
    let mut uuid = uuid::Uuid::encode_buffer();
    key(out, "{\"id\":\"");
    key(out, s.id.hyphenated().encode_lower(&mut uuid));
    key(out, "\",\"source_id\":\"");
    key(out, s.source_id.hyphenated().encode_lower(&mut uuid));
    key(out, "\",\"source_type\":\"");
    key(out, s.source_type.as_str());
    key(out, "\",\"symbol\":\"");
    out.extend_from_slice(s.symbol.as_bytes());
    key(out, "\",\"exchange\":\"");
    out.extend_from_slice(s.exchange.as_bytes());
    key(out, "\",\"category\":\"");
    key(out, s.category.as_str());
    key(out, "\",\"signal_type\":\"");
    key(out, s.signal_type.as_str());
    key(out, "\",\"entry_price\":");
    price(out, s.entry_price);
    key(out, ",\"target_price\":");
    price(out, s.target_price);
    key(out, ",\"stop_loss\":");
    price(out, s.stop_loss);
    key(out, ",\"quantity_recommended\":");
    match s.quantity_recommended {
        Some(q) => int(out, q),
        None => key(out, "null"),
    }
    key(out, ",\"confidence\":");
    key(out, s.confidence.format(&mut [0; 8]));
    key(out, ",\"generated_at\":");
    micros(out, s.generated_at);
    key(out, ",\"expires_at\":");
    micros(out, s.expires_at);
    key(out, ",\"market\":");
    match market {
        Some(m) => {
            key(out, "{\"bid\":");
            price(out, m.bid);
            key(out, ",\"ask\":");
            price(out, m.ask);
            key(out, ",\"last\":");
            price(out, m.last);
            key(out, ",\"volume\":");
            int(out, m.volume);
            key(out, ",\"tick_ts\":");
            micros(out, m.tick_ts);
            key(out, ",\"tick_age_ms\":");
            int(out, m.tick_age_ms);
            out.push(b'}');
        }
        None => key(out, "null"),
    }
    key(out, ",\"ingest_ts\":");
    micros(out, ingest_ts);
    key(out, ",\"routed_ts\":");
    micros(out, routed_ts);
    key(out, ",\"sent_ts\":");
    match sent_ts {
        Some(t) => micros(out, t),
        None => key(out, "null"),
    }
    key(out, ",\"analysis\":");
    match &s.analysis {
        Some(a) => key(out, a.as_str()),
        None => key(out, "null"),
    }
    key(out, OPEN_TAIL);
}

/// How a routed signal's `data` ends: its status, open.
const OPEN_TAIL: &str = ",\"status\":\"open\"}";

/// The `data` of a close: the signal's `data` as routed (`routed`) with its new status
/// and its `outcome`.
pub fn close_data(out: &mut Vec<u8>, routed: &[u8], close: &crate::outcome::Close) {
    out.clear();
    // The routed data ends with the open status (or, stored before statuses existed,
    // with the object's brace alone).
    let body =
        routed.strip_suffix(OPEN_TAIL.as_bytes()).or_else(|| routed.strip_suffix(b"}")).unwrap_or(routed);
    out.extend_from_slice(body);
    outcome_tail(out, close.status, close.entry, close.exit, close.return_pct, close.closed_at);
}

/// Ends a signal's `data` (its body written, without its closing brace) with `status`
/// and `outcome`.
pub fn outcome_tail(
    out: &mut Vec<u8>,
    status: crate::outcome::Status,
    entry: Option<Price>,
    exit: Option<Price>,
    return_pct: Option<i64>,
    closed_at: UnixNanos,
) {
    key(out, ",\"status\":\"");
    key(out, status.as_str());
    key(out, OUTCOME_KEY);
    opt_price(out, entry);
    key(out, ",\"exit_price\":");
    opt_price(out, exit);
    key(out, ",\"return_pct\":");
    opt_price(out, return_pct.and_then(Price::from_raw));
    key(out, ",\"closed_at\":");
    micros(out, closed_at);
    key(out, "}}");
}

/// `data` as [`signal_data`] wrote it, without its open status (and closing brace):
/// where [`outcome_tail`] goes.
pub fn strip_open(data: &mut Vec<u8>) {
    if data.ends_with(OPEN_TAIL.as_bytes()) {
        data.truncate(data.len() - OPEN_TAIL.len());
    }
}

/// Whether `data`, as this encoder wrote it, is a close's ([`close_data`]): a signal's
/// ends with its open status, a close's with its outcome (the last field, so only the
/// tail is looked at). A producer's `analysis` comes before the status: whatever it
/// holds, an open signal's data still ends with `"status":"open"}`.
pub fn is_close(data: &[u8]) -> bool {
    if data.ends_with(OPEN_TAIL.as_bytes()) {
        return false;
    }
    // The outcome object is at most ~140 bytes (three 4-decimal prices and a time).
    let tail = &data[data.len().saturating_sub(200)..];
    tail.windows(OUTCOME_KEY.len()).any(|w| w == OUTCOME_KEY.as_bytes())
}

const OUTCOME_KEY: &str = "\",\"outcome\":{\"entry_price\":";

fn opt_price(out: &mut Vec<u8>, p: Option<crate::model::Price>) {
    match p {
        Some(p) => price(out, p),
        None => key(out, "null"),
    }
}

/// Writes the full SIGNAL_UPDATE for one channel into `out`, around an already
/// written `data` object.
pub fn signal_update(out: &mut Vec<u8>, channel: &str, seq: u64, data: &[u8]) {
    const HEAD: &str = "{\"type\":\"SIGNAL_UPDATE\",\"channel\":\"";
    const SEQ: &str = "\",\"seq\":";
    const DATA: &str = ",\"data\":";
    out.clear();
    key(out, HEAD);
    key(out, channel);
    key(out, SEQ);
    int(out, seq);
    key(out, DATA);
    out.extend_from_slice(data);
    out.push(b'}');
}

/// A PRICE_UPDATE for `prices_general`.
/// A `PRICE_UPDATE` of `t`; `conflated`: how many updates of the symbol this one stands
/// for at the subscriber's rate (1: none merged).
pub fn price_update(out: &mut Vec<u8>, t: &Tick, conflated: u64) {
    key(out, "{\"type\":\"PRICE_UPDATE\",\"channel\":\"prices_general\",\"data\":{\"symbol\":\"");
    out.extend_from_slice(t.symbol.as_bytes());
    key(out, "\",\"exchange\":\"");
    out.extend_from_slice(t.exchange.as_bytes());
    key(out, "\",\"bid\":");
    price(out, t.bid);
    key(out, ",\"ask\":");
    price(out, t.ask);
    key(out, ",\"last\":");
    price(out, t.last);
    key(out, ",\"volume\":");
    int(out, t.volume);
    key(out, ",\"ts\":");
    micros(out, t.ts);
    key(out, ",\"conflated\":");
    int(out, conflated);
    key(out, "}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnrichedSignal, Tick};

    fn signal(analysis: bool) -> Signal {
        let mut v = serde_json::json!({
            "id":"6f1c2a0e-5b7d-4c1e-9a43-2f0d9e8b7c61","source_id":"3b9d0c52-7a4e-4f0a-8d5e-1c2b3a4d5e6f",
            "source_type":"ai_model","symbol":"M&M","exchange":"NSE","category":"equity","signal_type":"buy",
            "entry_price":"2456.7500","target_price":"2520.0000","stop_loss":"2420.0000",
            "confidence":90.0,"generated_at":1795400000123456_i64,"expires_at":1795403600000000_i64});
        if analysis {
            v["analysis"] = serde_json::json!({"z": [1, "two", {"three": null}], "a": "é\"q"});
            v["quantity_recommended"] = 50.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn data_matches_the_serde_model_exactly() {
        let market = MarketSnapshot {
            bid: "2456.5".parse().unwrap(),
            ask: "2457".parse().unwrap(),
            last: "2456.8".parse().unwrap(),
            volume: 1_250_000,
            tick_ts: UnixNanos(1_795_400_000_100_000_000),
            tick_age_ms: 23,
        };
        for (s, m, sent) in [
            (signal(true), Some(market), Some(UnixNanos(1_795_400_000_123_999_999))),
            (signal(false), None, None),
        ] {
            let mut out = Vec::new();
            signal_data(
                &mut out,
                &s,
                m.as_ref(),
                UnixNanos(1_795_400_000_124_000_000),
                UnixNanos(1_795_400_000_124_100_000),
                sent,
            );
            let parsed: EnrichedSignal = serde_json::from_slice(&out).unwrap();
            let expected = EnrichedSignal {
                signal: s.clone(),
                market: m,
                ingest_ts: UnixNanos(1_795_400_000_124_000_000),
                routed_ts: UnixNanos(1_795_400_000_124_100_000),
                sent_ts: sent.map(|t| UnixNanos(t.as_micros() * 1000)),
            };
            assert_eq!(parsed, expected);
            let text = std::str::from_utf8(&out).unwrap();
            assert!(text.contains("\"confidence\":90.00,"), "{text}");
            assert!(text.contains("\"entry_price\":\"2456.7500\""));
            let mut env = Vec::new();
            signal_update(&mut env, "signals_free", 42, &out);
            let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
            assert_eq!(
                (v["type"].as_str(), v["channel"].as_str(), v["seq"].as_u64()),
                (Some("SIGNAL_UPDATE"), Some("signals_free"), Some(42))
            );
            assert_eq!(v["data"], serde_json::from_slice::<serde_json::Value>(&out).unwrap());
        }
    }

    #[test]
    fn price_update_is_the_tick() {
        let t = Tick {
            symbol: crate::model::Symbol::new("BTC-USDT").unwrap(),
            exchange: crate::model::Exchange::new("BINANCE").unwrap(),
            bid: "1".parse().unwrap(),
            ask: "2".parse().unwrap(),
            last: "1.5".parse().unwrap(),
            volume: 7,
            ts: UnixNanos(5_000),
        };
        let mut out = Vec::new();
        price_update(&mut out, &t, 3);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "PRICE_UPDATE");
        let mut data = v["data"].clone();
        assert_eq!(data.as_object_mut().unwrap().remove("conflated"), Some(3.into()));
        assert_eq!(serde_json::from_value::<Tick>(data).unwrap(), t);
    }

    #[test]
    fn an_analysis_cannot_make_an_open_signal_look_closed() {
        let mut s = crate::testkit::signal(1, 9_500, crate::model::Category::Equity);
        s.analysis = Some(
            crate::model::Analysis::from_json(r#"{"a":"","outcome":{"entry_price":"1.0000"}}"#.to_owned())
                .unwrap(),
        );
        let mut data = Vec::new();
        signal_data(&mut data, &s, None, UnixNanos(1), UnixNanos(2), None);
        assert!(String::from_utf8_lossy(&data).contains(r#"","outcome":{"entry_price":"#));
        assert!(!is_close(&data), "still an open signal");
    }
}
