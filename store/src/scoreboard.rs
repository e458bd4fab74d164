//! What the sources' calls became, counted: the scoreboard per source (`GET /v1/sources`)
//! and the figures of one symbol (`GET /v1/signals/stats`). Both are computed over every
//! stored signal with its status (its close, or open), whatever its tier, as a
//! [`Viewer`] may see them: a closed signal is history and counts for everyone; an open
//! one is a live call, and counts only for a reader whose own channels carried it and
//! whose delay has released it, so that no figure tells of a call a tier withholds.

use std::collections::BTreeMap;

use engine::model::{Category, CategoryMask, Price, SignalType, UnixNanos};
use serde_json::{Value, json};

use crate::Status;

/// One stored signal as the scoreboard sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreRow {
    pub source_id: uuid::Uuid,
    pub source_type: String,
    pub category: Category,
    pub signal_type: SignalType,
    pub routed_ts: UnixNanos,
    pub status: Status,
    /// Ten-thousandths of a percent (closed positions only).
    pub return_pct: Option<i64>,
    /// Hundredths.
    pub confidence: i64,
}

/// Who reads the figures (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// The reader's tier's confidence bar, in hundredths.
    pub min_confidence: i64,
    pub categories: CategoryMask,
    /// Open signals routed after this are not yet released to the reader (their delay).
    pub released_by: UnixNanos,
}

impl Viewer {
    /// Everything counts (enterprise, real time, every category).
    pub const ALL: Self =
        Self { min_confidence: 0, categories: CategoryMask::ALL, released_by: UnixNanos(i64::MAX) };

    pub fn sees(&self, row: &ScoreRow) -> bool {
        row.status != Status::Open
            || (row.confidence >= self.min_confidence
                && self.categories.contains(row.category)
                && row.routed_ts <= self.released_by)
    }
}

/// Counts and returns of a set of signals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub signals: u64,
    pub by_status: [u64; 5],
    confidence_sum: i64,
    returns: Vec<i64>,
}

impl Tally {
    pub fn add(&mut self, row: &ScoreRow) {
        self.signals += 1;
        self.by_status[row.status as usize] += 1;
        self.confidence_sum += row.confidence;
        if let Some(r) = row.return_pct {
            self.returns.push(r);
        }
    }

    pub fn count(&self, status: Status) -> u64 {
        self.by_status[status as usize]
    }

    /// target_hit ÷ (target_hit + stop_hit), with 4 decimals; `None` with neither.
    pub fn hit_rate(&self) -> Option<String> {
        let (hit, stop) = (self.count(Status::TargetHit), self.count(Status::StopHit));
        let n = hit + stop;
        (n > 0).then(|| decimal(ratio(i128::from(hit) * 10_000, i128::from(n)), 4))
    }

    /// Mean of the returns of closed positions, in percent with 4 decimals.
    pub fn mean_return(&self) -> Option<String> {
        let n = self.returns.len() as i128;
        let sum: i128 = self.returns.iter().map(|&r| i128::from(r)).sum();
        (n > 0).then(|| decimal(ratio(sum, n), 4))
    }

    /// Median of the same (the mean of the middle two for an even count).
    pub fn median_return(&mut self) -> Option<String> {
        let n = self.returns.len();
        if n == 0 {
            return None;
        }
        self.returns.sort_unstable();
        let mid = if n % 2 == 1 {
            i128::from(self.returns[n / 2])
        } else {
            ratio(i128::from(self.returns[n / 2 - 1]) + i128::from(self.returns[n / 2]), 2)
        };
        Some(decimal(mid, 4))
    }

    /// Mean confidence in percent with 2 decimals.
    pub fn mean_confidence(&self) -> Option<String> {
        (self.signals > 0)
            .then(|| decimal(ratio(i128::from(self.confidence_sum), i128::from(self.signals)), 2))
    }

    /// The JSON object a window or category shows.
    pub fn to_json(&mut self) -> Value {
        let mut v = json!({"signals": self.signals});
        for s in Status::ALL {
            v[s.as_str()] = json!(self.count(s));
        }
        v["hit_rate"] = json!(self.hit_rate());
        v["mean_return_pct"] = json!(self.mean_return());
        v["median_return_pct"] = json!(self.median_return());
        v
    }
}

/// `a / b` rounded half away from zero.
fn ratio(a: i128, b: i128) -> i128 {
    let (q, r) = (a / b, a % b);
    if 2 * r.abs() >= b.abs() { q + a.signum() * b.signum() } else { q }
}

/// `v` in units of 10^-`places`, as a decimal string.
fn decimal(v: i128, places: u32) -> String {
    let scale = 10i128.pow(places);
    let sign = if v < 0 { "-" } else { "" };
    let v = v.abs();
    format!("{sign}{}.{:0width$}", v / scale, v % scale, width = places as usize)
}

const DAY: i64 = 86_400 * 1_000_000_000;

/// The windows a source's figures are given over, by the signals' routed time.
const WINDOWS: [(&str, Option<i64>); 3] = [("day", Some(DAY)), ("week", Some(7 * DAY)), ("all", None)];

/// `GET /v1/sources`: per source, its figures over the last day, week and all time,
/// and the same per category; sources with the most signals first.
pub fn sources<'a>(rows: impl IntoIterator<Item = &'a ScoreRow>, viewer: &Viewer, now: UnixNanos) -> Value {
    #[derive(Default)]
    struct Source {
        source_type: String,
        windows: [Tally; 3],
        categories: BTreeMap<&'static str, [Tally; 3]>,
    }
    let mut by_source: BTreeMap<uuid::Uuid, Source> = BTreeMap::new();
    for row in rows.into_iter().filter(|r| viewer.sees(r)) {
        let s = by_source.entry(row.source_id).or_default();
        s.source_type.clone_from(&row.source_type);
        let per_category = s.categories.entry(row.category.as_str()).or_default();
        for (i, (_, span)) in WINDOWS.iter().enumerate() {
            if span.is_none_or(|span| row.routed_ts.0 > now.0 - span) {
                s.windows[i].add(row);
                per_category[i].add(row);
            }
        }
    }
    let window_json = |tallies: &mut [Tally; 3]| {
        let mut v = json!({});
        for (i, (name, _)) in WINDOWS.iter().enumerate() {
            v[*name] = tallies[i].to_json();
        }
        v
    };
    let mut out: Vec<(u64, Value)> = by_source
        .into_iter()
        .map(|(id, mut s)| {
            let mut categories = json!({});
            for (name, tallies) in &mut s.categories {
                categories[*name] = window_json(tallies);
            }
            let total = s.windows[2].signals;
            let v = json!({
                "source_id": id.hyphenated().to_string(),
                "source_type": s.source_type,
                "windows": window_json(&mut s.windows),
                "categories": categories,
            });
            (total, v)
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    json!({"generated_at": now.as_micros(), "sources": out.into_iter().map(|(_, v)| v).collect::<Vec<_>>()})
}

/// `GET /v1/signals/stats`: one symbol's counts by type and status, mean confidence and
/// hit rate.
pub fn symbol<'a>(
    symbol: &str,
    exchange: Option<&str>,
    rows: impl IntoIterator<Item = &'a ScoreRow>,
    viewer: &Viewer,
) -> Value {
    let mut all = Tally::default();
    let mut by_type: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for row in rows.into_iter().filter(|r| viewer.sees(r)) {
        all.add(row);
        by_type.entry(row.signal_type.as_str()).or_default().add(row);
    }
    let mut types = json!({});
    for (name, t) in &mut by_type {
        let mut v = t.to_json();
        v["mean_confidence"] = json!(t.mean_confidence());
        types[*name] = v;
    }
    let mut v = all.to_json();
    v["symbol"] = json!(symbol);
    v["exchange"] = json!(exchange);
    v["mean_confidence"] = json!(all.mean_confidence());
    v["by_type"] = types;
    v
}

/// A close's return as the data carries it ("-1.2345"), in ten-thousandths.
pub(crate) fn parse_return(s: &str) -> Option<i64> {
    s.parse::<Price>().ok().map(Price::raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: u128, category: Category, status: Status, ret: Option<i64>, age_days: i64) -> ScoreRow {
        ScoreRow {
            source_id: uuid::Uuid::from_u128(source),
            source_type: "ai_model".into(),
            category,
            signal_type: SignalType::Buy,
            routed_ts: UnixNanos(100 * DAY - age_days * DAY - 1),
            status,
            return_pct: ret,
            confidence: 8_725,
        }
    }

    #[test]
    fn windows_categories_rates_and_returns() {
        let now = UnixNanos(100 * DAY);
        let rows = vec![
            row(1, Category::Equity, Status::TargetHit, Some(25_000), 0),
            row(1, Category::Equity, Status::StopHit, Some(-10_000), 0),
            row(1, Category::Crypto, Status::TargetHit, Some(40_001), 3),
            row(1, Category::Equity, Status::Open, None, 30),
            row(1, Category::Equity, Status::Expired, Some(5_000), 30),
            row(2, Category::Forex, Status::Closed, Some(-3), 0),
        ];
        let v = sources(&rows, &Viewer::ALL, now);
        let s1 = &v["sources"][0];
        assert_eq!(s1["source_id"], uuid::Uuid::from_u128(1).to_string());
        assert_eq!(s1["windows"]["day"]["signals"], 2);
        assert_eq!(s1["windows"]["day"]["hit_rate"], "0.5000");
        assert_eq!(s1["windows"]["week"]["signals"], 3);
        assert_eq!(s1["windows"]["week"]["hit_rate"], "0.6667");
        assert_eq!(s1["windows"]["week"]["mean_return_pct"], "1.8334"); // (2.5 - 1 + 4.0001) / 3
        assert_eq!(s1["windows"]["week"]["median_return_pct"], "2.5000");
        let all = &s1["windows"]["all"];
        assert_eq!(
            (all["signals"].as_u64(), all["open"].as_u64(), all["expired"].as_u64()),
            (Some(5), Some(1), Some(1))
        );
        assert_eq!(all["median_return_pct"], "1.5000", "the mean of the middle two (0.5 and 2.5)");
        assert_eq!(s1["categories"]["crypto"]["all"]["target_hit"], 1);
        assert_eq!(s1["categories"]["equity"]["day"]["stop_hit"], 1);
        let s2 = &v["sources"][1];
        assert_eq!(s2["windows"]["all"]["closed"], 1);
        assert_eq!(s2["windows"]["all"]["hit_rate"], Value::Null, "no target or stop hit yet");
        assert_eq!(s2["windows"]["all"]["mean_return_pct"], "-0.0003");
    }

    #[test]
    fn a_symbols_figures_by_type() {
        let mut sell = row(1, Category::Equity, Status::StopHit, Some(-5), 0);
        sell.signal_type = SignalType::Sell;
        sell.confidence = 9_000;
        let rows = [row(1, Category::Equity, Status::TargetHit, Some(5), 0), sell];
        let v = symbol("RELIANCE", Some("NSE"), &rows, &Viewer::ALL);
        assert_eq!(v["signals"], 2);
        assert_eq!(v["hit_rate"], "0.5000");
        assert_eq!(v["mean_confidence"], "88.63"); // 88.625 rounds half away from zero
        assert_eq!(v["by_type"]["sell"]["stop_hit"], 1);
        assert_eq!(v["by_type"]["buy"]["mean_confidence"], "87.25");
        assert_eq!(v["exchange"], "NSE");
    }

    #[test]
    fn an_open_call_counts_only_for_a_reader_it_was_released_to_a_closed_one_for_all() {
        let now = UnixNanos(100 * DAY);
        let mut premium_open = row(1, Category::Equity, Status::Open, None, 0);
        premium_open.confidence = 9_000;
        let mut crypto_open = row(1, Category::Crypto, Status::Open, None, 0);
        crypto_open.confidence = 6_000;
        let mut premium_hit = row(1, Category::Equity, Status::TargetHit, Some(100), 0);
        premium_hit.confidence = 9_000;
        let rows = [premium_open, crypto_open, premium_hit];
        let free = Viewer {
            min_confidence: 7_500,
            categories: [Category::Equity].into_iter().collect(),
            released_by: UnixNanos(now.0 - 15 * 60 * 1_000_000_000),
        };
        let counts = |viewer: &Viewer| {
            let v = symbol("RELIANCE", Some("NSE"), &rows, viewer);
            (v["signals"].as_u64().unwrap(), v["open"].as_u64().unwrap())
        };
        // Routed a second ago: not yet released to a delayed reader; crypto is not its.
        assert_eq!(counts(&free), (1, 0), "only the closed call");
        assert_eq!(counts(&Viewer { released_by: now, ..free }), (2, 1), "released: the open equity call");
        let low_bar = Viewer { min_confidence: 5_000, categories: CategoryMask::ALL, released_by: now };
        assert_eq!(counts(&low_bar), (3, 2));
        let source = &sources(&rows, &free, now)["sources"][0]["windows"]["all"];
        assert_eq!((source["signals"].as_u64(), source["open"].as_u64()), (Some(1), Some(0)));
    }
}
