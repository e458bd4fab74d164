//! A signal channel's filter (SUBSCRIBE `filter`): which of the channel's messages a
//! subscription wants. Parsed and normalized once per SUBSCRIBE; checked against each
//! message's fields, read once per message from its data (the engine's encoder writes
//! them in a fixed order), so live messages, replays, snapshots and closes all pass the
//! same test.

use std::collections::HashSet;
use std::sync::Arc;

use engine::model::{Category, CategoryMask, Exchange, SignalType, Symbol};
use serde_json::{Value, json};

/// Limits of one filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Symbols in the watchlist (the tier's `watchlist_symbols`).
    pub symbols: usize,
    /// Sources.
    pub sources: usize,
}

/// A normalized filter. Every part is optional: absent, it lets everything through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Sorted by text, deduplicated: a symbol on any exchange (`None`) or on one.
    pub symbols: Vec<(Symbol, Option<Exchange>)>,
    pub categories: Option<CategoryMask>,
    /// Bit `code` of each signal type.
    pub types: Option<u8>,
    /// Sorted, deduplicated.
    pub sources: Vec<uuid::Uuid>,
    /// Hundredths.
    pub min_confidence: Option<u16>,
}

/// What a filter is checked against: a signal's fields, read from its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    pub source_id: uuid::Uuid,
    pub symbol: &'a str,
    pub exchange: &'a str,
    pub category: Category,
    pub signal_type: SignalType,
    /// Hundredths.
    pub confidence: u16,
}

impl<'a> Fields<'a> {
    /// Reads the fields out of a SIGNAL_UPDATE's `data` as the engine encodes it;
    /// `None` for anything else (a filter then lets nothing through).
    pub fn of(data: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(data).ok()?;
        // The fields come in this order, before the analysis (where a producer's own
        // keys could look the same): each search starts where the last one ended, so
        // the data is read once, up to `confidence`.
        let mut at = 0;
        let mut value = |key: &str, last: bool| -> Option<&'a str> {
            let start = at + text[at..].find(key)? + key.len();
            let rest = &text[start..];
            // A string ends at its quote; the number (the last field read) at , or }.
            let len = if last { rest.find([',', '}'])? } else { rest.find('"')? };
            at = start + len;
            Some(&rest[..len])
        };
        let source_id = uuid::Uuid::parse_str(value("\"source_id\":\"", false)?).ok()?;
        let symbol = value("\"symbol\":\"", false)?;
        let exchange = value("\"exchange\":\"", false)?;
        let category = value("\"category\":\"", false)?.parse().ok()?;
        let signal_type = value("\"signal_type\":\"", false)?.parse().ok()?;
        let confidence = confidence_hundredths(value("\"confidence\":", true)?)?;
        Some(Self { source_id, symbol, exchange, category, signal_type, confidence })
    }
}

/// `"TCS"` (any exchange) or `"NSE:TCS"`.
fn symbol_of(s: &str) -> Result<(Symbol, Option<Exchange>), String> {
    let (exchange, symbol) = match s.split_once(':') {
        Some((e, sym)) => (Some(Exchange::new(e).map_err(|e| format!("{s:?}: exchange {e}"))?), sym),
        None => (None, s),
    };
    Ok((Symbol::new(symbol).map_err(|e| format!("{s:?}: symbol {e}"))?, exchange))
}

/// Sorted by the text (an inline string's own order is by length first: not what
/// [`Filter::matches`] searches by), deduplicated.
fn sort_symbols(symbols: &mut Vec<(Symbol, Option<Exchange>)>) {
    symbols.sort_by(|a, b| {
        (a.0.as_str(), a.1.as_ref().map(Exchange::as_str))
            .cmp(&(b.0.as_str(), b.1.as_ref().map(Exchange::as_str)))
    });
    symbols.dedup();
}

/// `87.25` (as the encoder writes a confidence) in hundredths.
fn confidence_hundredths(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 2 || int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u16 = if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().ok()? };
    int.parse::<u16>().ok()?.checked_mul(100)?.checked_add(frac).filter(|v| *v <= 10_000)
}

impl Filter {
    /// Whether a message with `fields` passes.
    pub fn matches(&self, f: &Fields<'_>) -> bool {
        if let Some(c) = self.categories
            && !c.contains(f.category)
        {
            return false;
        }
        if let Some(t) = self.types
            && t & (1 << f.signal_type.code()) == 0
        {
            return false;
        }
        if let Some(min) = self.min_confidence
            && f.confidence < min
        {
            return false;
        }
        if !self.sources.is_empty() && self.sources.binary_search(&f.source_id).is_err() {
            return false;
        }
        self.names(f.symbol, f.exchange)
    }

    /// Whether the watchlist names `symbol` on `exchange` (no symbols: every one).
    pub fn names(&self, symbol: &str, exchange: &str) -> bool {
        if self.symbols.is_empty() {
            return true;
        }
        // Sorted by symbol then exchange (None first): the symbol's run holds both forms.
        let start = self.symbols.partition_point(|(s, _)| s.as_str() < symbol);
        self.symbols[start..]
            .iter()
            .take_while(|(s, _)| s.as_str() == symbol)
            .any(|(_, e)| e.as_ref().is_none_or(|e| e.as_str() == exchange))
    }

    /// Whether the watchlist names `symbol` on `exchange` (no symbols: every one).
    pub fn watches(&self, symbol: &engine::model::Symbol, exchange: &Exchange) -> bool {
        self.names(symbol.as_str(), exchange.as_str())
    }

    /// A filter of symbols only (what `prices_general` takes).
    pub fn symbols_only(&self) -> bool {
        self.categories.is_none()
            && self.types.is_none()
            && self.sources.is_empty()
            && self.min_confidence.is_none()
    }

    /// The filter a SUBSCRIBE asks for, given the subscription's `current` one: a filter
    /// with only `add_symbols` and/or `remove_symbols` changes the current watchlist (a
    /// watchlist larger than one message holds is built in steps); any other replaces
    /// the whole filter ([`Filter::parse`]).
    pub fn update(
        current: Option<&Filter>,
        v: &Value,
        limits: Limits,
        allowed: CategoryMask,
    ) -> Result<Self, String> {
        let obj = v.as_object().ok_or("filter must be an object")?;
        let steps = ["add_symbols", "remove_symbols"];
        if !obj.keys().any(|k| steps.contains(&k.as_str())) {
            return Self::parse(v, limits, allowed);
        }
        if let Some(k) = obj.keys().find(|k| !steps.contains(&k.as_str())) {
            return Err(format!("{k:?} cannot go with add_symbols or remove_symbols"));
        }
        let mut f = current.cloned().unwrap_or_default();
        let list = |key: &str| -> Result<Vec<(Symbol, Option<Exchange>)>, String> {
            let Some(value) = obj.get(key) else { return Ok(Vec::new()) };
            let list = value.as_array().ok_or(format!("filter.{key} must be an array of strings"))?;
            if list.len() > 2 * limits.symbols {
                return Err(format!("at most {} symbols in a watchlist on your tier", limits.symbols));
            }
            list.iter()
                .map(|s| symbol_of(s.as_str().ok_or(format!("filter.{key} must be an array of strings"))?))
                .collect()
        };
        let (add, remove) = (list("add_symbols")?, list("remove_symbols")?);
        let had = !f.symbols.is_empty();
        f.symbols.retain(|s| !remove.contains(s));
        // An empty list means every symbol: removing the last one must not turn a
        // watchlist into the whole channel.
        if had && f.symbols.is_empty() && add.is_empty() {
            return Err(
                "remove_symbols would empty the watchlist: send filter {} for every symbol, or UNSUBSCRIBE"
                    .into(),
            );
        }
        f.symbols.extend(add);
        sort_symbols(&mut f.symbols);
        if f.symbols.len() > limits.symbols {
            return Err(format!("at most {} symbols in a watchlist on your tier", limits.symbols));
        }
        Ok(f)
    }

    /// Parses a SUBSCRIBE's `filter` object within `limits`; `categories` must be a
    /// subset of `allowed` (the user's), `min_confidence` is in percent (two decimals).
    pub fn parse(v: &Value, limits: Limits, allowed: CategoryMask) -> Result<Self, String> {
        let obj = v.as_object().ok_or("filter must be an object")?;
        let mut f = Filter::default();
        for (key, value) in obj {
            match key.as_str() {
                "symbols" => {
                    let list = value.as_array().ok_or("filter.symbols must be an array of strings")?;
                    let too_many =
                        || format!("at most {} symbols in a watchlist on your tier", limits.symbols);
                    // (Repeats are allowed, within reason: the message's size bounds them.)
                    if list.len() > 2 * limits.symbols {
                        return Err(too_many());
                    }
                    for s in list {
                        f.symbols.push(symbol_of(
                            s.as_str().ok_or("filter.symbols must be an array of strings")?,
                        )?);
                    }
                    sort_symbols(&mut f.symbols);
                    if f.symbols.len() > limits.symbols {
                        return Err(too_many());
                    }
                }
                "categories" => {
                    let list = value.as_array().ok_or("filter.categories must be an array of strings")?;
                    let mut mask = CategoryMask::NONE;
                    for c in list {
                        let name = c.as_str().ok_or("filter.categories must be an array of strings")?;
                        let c: Category = name.parse().map_err(|_| format!("unknown category {name:?}"))?;
                        if !allowed.contains(c) {
                            return Err(format!("category {name:?} is not one of yours"));
                        }
                        mask = mask.with(c);
                    }
                    f.categories = Some(mask);
                }
                "signal_types" => {
                    let list = value.as_array().ok_or("filter.signal_types must be an array of strings")?;
                    let mut mask = 0u8;
                    for t in list {
                        let name = t.as_str().ok_or("filter.signal_types must be an array of strings")?;
                        let t: SignalType =
                            name.parse().map_err(|_| format!("unknown signal type {name:?}"))?;
                        mask |= 1 << t.code();
                    }
                    f.types = Some(mask);
                }
                "sources" => {
                    let list = value.as_array().ok_or("filter.sources must be an array of UUIDs")?;
                    if list.len() > limits.sources {
                        return Err(format!("at most {} sources in a filter", limits.sources));
                    }
                    for s in list {
                        let id = s.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok());
                        f.sources.push(id.ok_or_else(|| format!("filter.sources: {s} is not a UUID"))?);
                    }
                    f.sources.sort();
                    f.sources.dedup();
                }
                "min_confidence" => {
                    let n = value.as_f64().filter(|n| (0.0..=100.0).contains(n));
                    let n = n.ok_or("filter.min_confidence must be a number from 0 to 100")?;
                    f.min_confidence = Some((n * 100.0).round() as u16);
                }
                other => return Err(format!("unknown filter field {other:?}")),
            }
        }
        Ok(f)
    }

    /// The normalized filter, as SUBSCRIBED echoes it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({});
        if !self.symbols.is_empty() {
            let symbols: Vec<String> = self
                .symbols
                .iter()
                .map(|(s, e)| {
                    e.as_ref()
                        .map_or_else(|| s.as_str().to_owned(), |e| format!("{}:{}", e.as_str(), s.as_str()))
                })
                .collect();
            v["symbols"] = json!(symbols);
        }
        if let Some(mask) = self.categories {
            let names: Vec<&str> =
                Category::ALL.iter().filter(|c| mask.contains(**c)).map(|c| c.as_str()).collect();
            v["categories"] = json!(names);
        }
        if let Some(t) = self.types {
            let names: Vec<&str> =
                SignalType::ALL.iter().filter(|s| t & (1 << s.code()) != 0).map(|s| s.as_str()).collect();
            v["signal_types"] = json!(names);
        }
        if !self.sources.is_empty() {
            v["sources"] = json!(self.sources.iter().map(|s| s.hyphenated().to_string()).collect::<Vec<_>>());
        }
        if let Some(m) = self.min_confidence {
            v["min_confidence"] = json!(f64::from(m) / 100.0);
        }
        v
    }
}

/// The filters of one hub shard's subscriptions, each distinct filter once: equal
/// filters (bots on the same watchlist, every dashboard on its default) share one `Arc`,
/// so they are held once and the fan-out, which remembers the last few filters it
/// checked against a message, checks them once per message instead of once per
/// recipient.
///
/// Bounded: a filter no subscription holds any more is dropped when the set reaches
/// twice the size it had after the last purge (and at least [`Interner::PURGE_MIN`]),
/// so it holds at most about twice the distinct filters in use.
#[derive(Debug)]
pub struct Interner {
    set: HashSet<Arc<Filter>>,
    purge_at: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self { set: HashSet::new(), purge_at: Self::PURGE_MIN }
    }
}

impl Interner {
    /// The set's size below which nothing is purged.
    pub const PURGE_MIN: usize = 64;

    /// The shared copy of `filter`.
    pub fn intern(&mut self, filter: Filter) -> Arc<Filter> {
        if let Some(f) = self.set.get(&filter) {
            return Arc::clone(f);
        }
        if self.set.len() >= self.purge_at {
            // Held only here: no subscription uses it any more.
            self.set.retain(|f| Arc::strong_count(f) > 1);
            self.purge_at = (self.set.len() * 2).max(Self::PURGE_MIN);
        }
        let f = Arc::new(filter);
        self.set.insert(Arc::clone(&f));
        f
    }

    /// Distinct filters held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { symbols: 3, sources: 2 };

    fn data(symbol: &str, exchange: &str, kind: &str, confidence: &str, category: &str) -> String {
        format!(
            r#"{{"id":"6f1c2a0e-5b7d-4c1e-9a43-2f0d9e8b7c61","source_id":"00000000-0000-0000-0000-00000000feed","source_type":"algorithm","symbol":"{symbol}","exchange":"{exchange}","category":"{category}","signal_type":"{kind}","entry_price":"1.0000","target_price":"2.0000","stop_loss":"0.5000","quantity_recommended":null,"confidence":{confidence},"generated_at":1,"expires_at":2,"market":null,"ingest_ts":1,"routed_ts":1,"sent_ts":null,"analysis":{{"symbol":"FAKE","confidence":99.99}},"status":"open"}}"#
        )
    }

    fn filter(v: Value) -> Result<Filter, String> {
        Filter::parse(&v, LIMITS, CategoryMask::ALL)
    }

    #[test]
    fn fields_are_read_from_the_encoders_data_not_from_the_analysis() {
        let d = data("TCS", "NSE", "sell", "87.25", "equity");
        let f = Fields::of(d.as_bytes()).unwrap();
        assert_eq!((f.symbol, f.exchange, f.confidence), ("TCS", "NSE", 8_725));
        assert_eq!((f.category, f.signal_type), (Category::Equity, SignalType::Sell));
        assert_eq!(f.source_id, uuid::Uuid::from_u128(0xfeed));
        assert_eq!(Fields::of(b"{\"nope\":1}"), None);
        assert_eq!(confidence_hundredths("100"), Some(10_000));
        assert_eq!(confidence_hundredths("100.01"), None);
        assert_eq!(confidence_hundredths("9.5"), Some(950));
    }

    #[test]
    fn each_part_filters_and_absent_parts_pass_everything() {
        let d = data("TCS", "NSE", "sell", "87.25", "equity");
        let f = Fields::of(d.as_bytes()).unwrap();
        assert!(Filter::default().matches(&f));
        assert!(filter(json!({"symbols": ["TCS"]})).unwrap().matches(&f));
        assert!(filter(json!({"symbols": ["NSE:TCS"]})).unwrap().matches(&f));
        assert!(!filter(json!({"symbols": ["BSE:TCS"]})).unwrap().matches(&f), "another exchange");
        assert!(!filter(json!({"symbols": ["INFY", "RELIANCE"]})).unwrap().matches(&f));
        // Among others of every length, before and after it in either order.
        assert!(filter(json!({"symbols": ["AAPL", "TCS", "ZZ"]})).unwrap().matches(&f));
        assert!(filter(json!({"categories": ["equity"]})).unwrap().matches(&f));
        assert!(!filter(json!({"categories": ["crypto"]})).unwrap().matches(&f));
        assert!(filter(json!({"signal_types": ["buy", "sell"]})).unwrap().matches(&f));
        assert!(!filter(json!({"signal_types": ["buy"]})).unwrap().matches(&f));
        assert!(filter(json!({"min_confidence": 87.25})).unwrap().matches(&f));
        assert!(!filter(json!({"min_confidence": 87.26})).unwrap().matches(&f));
        assert!(filter(json!({"sources": ["00000000-0000-0000-0000-00000000feed"]})).unwrap().matches(&f));
        assert!(!filter(json!({"sources": [uuid::Uuid::from_u128(1).to_string()]})).unwrap().matches(&f));
    }

    #[test]
    fn a_bad_or_oversized_filter_is_refused_with_its_reason() {
        for (v, why) in [
            (json!([]), "must be an object"),
            (json!({"symbols": "TCS"}), "array of strings"),
            (json!({"symbols": ["A", "B", "C", "D"]}), "at most 3 symbols"),
            (json!({"symbols": ["A", "A", "A", "A", "A", "A", "A"]}), "at most 3 symbols"),
            (json!({"symbols": ["a\"b"]}), "symbol"),
            (json!({"categories": ["stocks"]}), "unknown category"),
            (json!({"signal_types": ["short"]}), "unknown signal type"),
            (json!({"sources": ["x"]}), "not a UUID"),
            (json!({"min_confidence": 101}), "from 0 to 100"),
            (json!({"symbol": ["TCS"]}), "unknown filter field"),
        ] {
            let err = filter(v.clone()).unwrap_err();
            assert!(err.contains(why), "{v}: {err}");
        }
        let basic_crypto = CategoryMask::NONE.with(Category::Crypto);
        let err = Filter::parse(&json!({"categories": ["equity"]}), LIMITS, basic_crypto).unwrap_err();
        assert!(err.contains("not one of yours"), "{err}");
    }

    #[test]
    fn the_echo_is_normalized() {
        let f = filter(json!({"symbols": ["TCS", "NSE:TCS", "TCS", "AAPL"], "min_confidence": 85,
                              "signal_types": ["sell", "buy"], "categories": ["forex", "equity"]}))
        .unwrap();
        assert_eq!(
            f.to_json(),
            json!({"symbols": ["AAPL", "TCS", "NSE:TCS"], "categories": ["equity", "forex"],
                   "signal_types": ["buy", "sell"], "min_confidence": 85.0})
        );
        assert_eq!(filter(f.to_json()).unwrap(), f, "the echo parses back to the same filter");
    }

    #[test]
    fn a_watchlist_is_built_in_steps_and_a_full_filter_replaces() {
        let all = CategoryMask::ALL;
        let f = filter(json!({"symbols": ["TCS"], "min_confidence": 85})).unwrap();
        let f = Filter::update(Some(&f), &json!({"add_symbols": ["AAPL", "NSE:INFY"]}), LIMITS, all).unwrap();
        assert_eq!(f.to_json(), json!({"symbols": ["AAPL", "NSE:INFY", "TCS"], "min_confidence": 85.0}));
        let f = Filter::update(Some(&f), &json!({"remove_symbols": ["TCS"]}), LIMITS, all).unwrap();
        assert_eq!(f.to_json()["symbols"], json!(["AAPL", "NSE:INFY"]));
        let err = Filter::update(Some(&f), &json!({"add_symbols": ["X", "Y"]}), LIMITS, all).unwrap_err();
        assert!(err.contains("at most 3"), "{err}");
        let err =
            Filter::update(Some(&f), &json!({"add_symbols": ["X"], "symbols": []}), LIMITS, all).unwrap_err();
        assert!(err.contains("cannot go with"), "{err}");
        let replaced = Filter::update(Some(&f), &json!({"signal_types": ["buy"]}), LIMITS, all).unwrap();
        assert_eq!(replaced.to_json(), json!({"signal_types": ["buy"]}), "a full filter replaces the whole");
    }

    #[test]
    fn equal_filters_are_held_once_and_unused_ones_are_dropped() {
        let mut set = Interner::default();
        let watch = |n: usize| filter(json!({"symbols": [format!("S{n}")]})).unwrap();
        let a = set.intern(watch(1));
        let b = set.intern(watch(1));
        assert!(Arc::ptr_eq(&a, &b), "an equal filter is the same Arc");
        assert!(!Arc::ptr_eq(&a, &set.intern(watch(2))));
        // Filters nobody holds are dropped once the set doubles past its floor; held
        // ones stay.
        let held: Vec<_> = (0..10).map(|n| set.intern(watch(100 + n))).collect();
        for n in 0..1_000 {
            drop(set.intern(watch(1_000 + n)));
        }
        assert!(set.len() <= 2 * Interner::PURGE_MIN, "bounded: {}", set.len());
        for (n, f) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(f, &set.intern(watch(100 + n))), "a held filter stays shared");
        }
        assert!(Arc::ptr_eq(&a, &set.intern(watch(1))));
    }
}
