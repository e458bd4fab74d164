//! Scripted ticks against a set of signals: every rule of the module docs.

use super::*;

const T0: UnixNanos = UnixNanos(1_795_400_000_000_000_000);
const SEC: i64 = 1_000_000_000;

fn p(s: &str) -> Price {
    s.parse().unwrap()
}

fn sym(s: &str) -> Symbol {
    Symbol::new(s).unwrap()
}

fn nse() -> Exchange {
    Exchange::new("NSE").unwrap()
}

fn source(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0xa000 + n)
}

/// Signal `n` of `source`: `kind` on RELIANCE/NSE, entry known or not, an hour to live.
fn tracked(n: u128, src: u128, kind: SignalType, entry: Option<&str>, target: &str, stop: &str) -> Tracked {
    Tracked {
        id: uuid::Uuid::from_u128(n),
        source_id: source(src),
        symbol: sym("RELIANCE"),
        exchange: nse(),
        category: Category::Equity,
        signal_type: kind,
        target: p(target),
        stop: p(stop),
        expires_at: UnixNanos(T0.0 + 3_600 * SEC),
        entry: entry.map(p),
        tiers: 0b1100,
        data: format!(r#"{{"id":"{n}","status":"open"}}"#).into_bytes().into(),
    }
}

fn tick(t: &mut Tracker, last: &str, secs: i64) -> Vec<Close> {
    let mut out = Vec::new();
    t.on_tick(&sym("RELIANCE"), &nse(), p(last), UnixNanos(T0.0 + secs * SEC), &mut out);
    out
}

fn open(t: &mut Tracker, s: Tracked) -> Vec<Close> {
    let mut out = Vec::new();
    t.open(s, T0, &mut out).unwrap();
    out
}

/// (id, status, entry, exit, return) of a close.
type Summary = (u128, &'static str, Option<String>, Option<String>, Option<i64>);

fn summary(closes: &[Close]) -> Vec<Summary> {
    closes
        .iter()
        .map(|c| {
            (
                c.signal.id.as_u128(),
                c.status.as_str(),
                c.entry.map(|p| p.to_string()),
                c.exit.map(|p| p.to_string()),
                c.return_pct,
            )
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn a_buy_closes_at_the_first_tick_at_or_beyond_its_target_at_that_ticks_price() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    assert!(tick(&mut t, "109.9999", 1).is_empty(), "below the target, above the stop: open");
    assert!(tick(&mut t, "95.0001", 2).is_empty());
    // A gap past the level fills at the tick, not at the level.
    let c = tick(&mut t, "112.5", 3);
    assert_eq!(summary(&c), [(1, "target_hit", s("100.0000"), s("112.5000"), Some(125_000))]);
    assert_eq!(c[0].closed_at, UnixNanos(T0.0 + 3 * SEC));
    assert!(tick(&mut t, "200", 4).is_empty(), "closed once");
    assert!(t.is_empty());
}

#[test]
fn a_level_reached_exactly_closes_and_stops_are_below_for_a_buy_above_for_a_sell() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    open(&mut t, tracked(2, 1, SignalType::Sell, Some("100"), "90", "105"));
    let c = tick(&mut t, "95", 1);
    assert_eq!(summary(&c), [(1, "stop_hit", s("100.0000"), s("95.0000"), Some(-50_000))]);
    let c = tick(&mut t, "105", 2);
    assert_eq!(summary(&c), [(2, "stop_hit", s("100.0000"), s("105.0000"), Some(-50_000))]);

    open(&mut t, tracked(3, 1, SignalType::Sell, Some("100"), "90", "105"));
    let c = tick(&mut t, "89", 3);
    assert_eq!(summary(&c), [(3, "target_hit", s("100.0000"), s("89.0000"), Some(110_000))]);
}

#[test]
fn with_no_snapshot_the_entry_is_the_first_tick_after_routing() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, None, "110", "95"));
    assert!(tick(&mut t, "101", 1).is_empty(), "this tick is the entry");
    let c = tick(&mut t, "111.1", 2);
    assert_eq!(summary(&c), [(1, "target_hit", s("101.0000"), s("111.1000"), Some(100_000))]);
    // The first tick may already be at a level: it fills and closes at once.
    open(&mut t, tracked(2, 1, SignalType::Buy, None, "110", "95"));
    let c = tick(&mut t, "94", 3);
    assert_eq!(summary(&c), [(2, "stop_hit", s("94.0000"), s("94.0000"), Some(0))]);
}

#[test]
fn at_expiry_an_open_signal_closes_at_the_last_known_price_or_with_no_exit() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    let mut no_tick = tracked(2, 1, SignalType::Sell, None, "90", "105");
    no_tick.symbol = sym("TCS");
    no_tick.expires_at = UnixNanos(T0.0 + 60 * SEC);
    open(&mut t, no_tick);
    tick(&mut t, "103", 10);
    assert_eq!(t.next_expiry(), Some(UnixNanos(T0.0 + 60 * SEC)));

    let mut out = Vec::new();
    t.expire(UnixNanos(T0.0 + 59 * SEC), &mut out);
    assert!(out.is_empty(), "not before expires_at");
    t.expire(UnixNanos(T0.0 + 60 * SEC), &mut out);
    assert_eq!(summary(&out), [(2, "expired", None, None, None)], "no tick ever seen: no exit, no return");
    out.clear();
    t.expire(UnixNanos(T0.0 + 7_200 * SEC), &mut out);
    assert_eq!(summary(&out), [(1, "expired", s("100.0000"), s("103.0000"), Some(30_000))]);
    assert_eq!(out[0].closed_at, UnixNanos(T0.0 + 3_600 * SEC), "closed at its expiry");
    assert!(t.is_empty());
}

#[test]
fn an_exit_closes_its_own_sources_positions_on_the_symbol_at_the_current_last() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    open(&mut t, tracked(2, 1, SignalType::Sell, Some("100"), "90", "105"));
    open(&mut t, tracked(3, 2, SignalType::Buy, Some("100"), "110", "95")); // another source
    open(&mut t, tracked(4, 1, SignalType::Hold, Some("100"), "110", "95")); // informational
    let mut other_symbol = tracked(5, 1, SignalType::Buy, Some("50"), "60", "40");
    other_symbol.symbol = sym("TCS");
    open(&mut t, other_symbol);
    tick(&mut t, "102", 1);

    let c = open(&mut t, tracked(6, 1, SignalType::Exit, Some("102"), "1", "1"));
    assert_eq!(
        summary(&c),
        [
            (1, "closed", s("100.0000"), s("102.0000"), Some(20_000)),
            (2, "closed", s("100.0000"), s("102.0000"), Some(-20_000)),
        ]
    );
    assert_eq!(t.len(), 4, "the other source's buy, the hold, TCS and the exit itself stay open");
    assert!(tick(&mut t, "120", 2).iter().all(|c| c.signal.id.as_u128() == 3), "only source 2's buy is left");

    // Informational signals expire with no return.
    let mut out = Vec::new();
    t.expire(UnixNanos(T0.0 + 3_600 * SEC), &mut out);
    let mut got = summary(&out);
    got.sort();
    assert_eq!(
        got,
        [
            (4, "expired", s("100.0000"), None, None),
            (5, "expired", s("50.0000"), s("50.0000"), Some(0)),
            (6, "expired", s("102.0000"), None, None),
        ]
    );
}

#[test]
fn a_tick_of_another_symbol_or_exchange_closes_nothing() {
    let mut t = Tracker::new(100);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    let mut out = Vec::new();
    t.on_tick(&sym("TCS"), &nse(), p("500"), T0, &mut out);
    t.on_tick(&sym("RELIANCE"), &Exchange::new("BSE").unwrap(), p("500"), T0, &mut out);
    assert!(out.is_empty());
    assert_eq!(t.len(), 1);
}

#[test]
fn a_tick_closes_exactly_the_levels_it_crosses_among_many() {
    let mut t = Tracker::new(10_000);
    // Targets at 101, 102, … 200; stops far below.
    for n in 1..=100u32 {
        open(&mut t, tracked(u128::from(n), 1, SignalType::Buy, Some("100"), &format!("{}", 100 + n), "50"));
    }
    let c = tick(&mut t, "110.5", 1);
    let mut ids: Vec<u128> = c.iter().map(|c| c.signal.id.as_u128()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    assert_eq!(t.len(), 90);
    let c = tick(&mut t, "50", 2);
    assert_eq!(c.len(), 90, "every stop at once");
    assert!(c.iter().all(|c| c.status == Status::StopHit));
}

#[test]
fn beyond_its_bound_a_signal_is_refused_and_closes_free_room() {
    let mut t = Tracker::new(2);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "95"));
    open(&mut t, tracked(2, 1, SignalType::Buy, Some("100"), "120", "95"));
    let mut out = Vec::new();
    assert_eq!(
        t.open(tracked(3, 1, SignalType::Buy, Some("100"), "110", "95"), T0, &mut out),
        Err(AtCapacity(2))
    );
    tick(&mut t, "111", 1);
    assert!(t.open(tracked(3, 1, SignalType::Buy, Some("100"), "130", "95"), T0, &mut out).is_ok());
    assert_eq!(t.len(), 2);
}

#[test]
fn closed_signals_leave_no_expiry_entries_beyond_the_bound() {
    let mut t = Tracker::new(100);
    for n in 0..10_000u128 {
        open(&mut t, tracked(n, 1, SignalType::Buy, Some("100"), "110", "95"));
        tick(&mut t, "111", 1);
        tick(&mut t, "100", 1);
    }
    assert!(t.is_empty());
    assert!(t.expiry.len() <= 1_024 + 1, "{} stale expiry entries", t.expiry.len());
}

#[test]
fn returns_have_four_decimals_rounded_half_away_from_zero() {
    let r = |k, e: &str, x: &str| return_pct(k, Some(p(e)), Some(p(x)));
    assert_eq!(r(SignalType::Buy, "2456.75", "2520"), Some(25_745)); // 2.574539… → 2.5745
    assert_eq!(r(SignalType::Sell, "2456.75", "2520"), Some(-25_745));
    assert_eq!(r(SignalType::Buy, "3", "4"), Some(333_333)); // 33.33333…
    assert_eq!(r(SignalType::Buy, "3", "5"), Some(666_667)); // 66.66666… → up
    assert_eq!(r(SignalType::Sell, "3", "5"), Some(-666_667));
    assert_eq!(r(SignalType::Hold, "3", "5"), None);
    assert_eq!(return_pct(SignalType::Buy, None, Some(p("5"))), None);
}

#[test]
fn a_tick_after_the_expiry_closes_it_as_expired_not_as_hit() {
    let mut t = Tracker::new(100);
    let mut sig = tracked(1, 1, SignalType::Buy, Some("100"), "110", "95");
    sig.expires_at = UnixNanos(T0.0 + 60 * SEC);
    open(&mut t, sig);
    // The expiry has passed when this tick is taken, before the stage's timer ran.
    let c = tick(&mut t, "120", 61);
    assert_eq!(summary(&c), [(1, "expired", s("100.0000"), s("100.0000"), Some(0))]);
    assert_eq!(c[0].closed_at, UnixNanos(T0.0 + 60 * SEC));
}

#[test]
fn a_slot_reused_after_a_close_is_not_mistaken_for_the_entry_it_waited_for() {
    let mut t = Tracker::new(100);
    // Waits for its entry, then expires: its slot is free, its pending pair stale.
    let mut first = tracked(1, 1, SignalType::Buy, None, "110", "95");
    first.expires_at = UnixNanos(T0.0 + SEC);
    open(&mut t, first);
    let mut out = Vec::new();
    t.expire(UnixNanos(T0.0 + SEC), &mut out);
    assert_eq!(summary(&out), [(1, "expired", None, None, None)]);
    // The next signal takes the slot, with its own entry.
    open(&mut t, tracked(2, 1, SignalType::Buy, Some("100"), "110", "95"));
    assert!(tick(&mut t, "105", 2).is_empty(), "105 is no entry for signal 2: it has one");
    let c = tick(&mut t, "111", 3);
    assert_eq!(summary(&c), [(2, "target_hit", s("100.0000"), s("111.0000"), Some(110_000))]);
    // Thousands of entries closed before any tick (the book kept alive by one that
    // waits on) leave a bounded list of stale pairs.
    open(&mut t, tracked(3, 1, SignalType::Sell, None, "90", "105"));
    for n in 10..3_010u128 {
        let mut sig = tracked(n, 1, SignalType::Sell, None, "90", "105");
        sig.expires_at = UnixNanos(T0.0 + 10 * SEC + n as i64);
        open(&mut t, sig);
        t.expire(UnixNanos(T0.0 + 10 * SEC + n as i64), &mut out);
    }
    let book = &t.books[&(sym("RELIANCE"), nse())];
    assert_eq!(book.count, 1);
    assert!(book.pending.len() <= 2 + 16, "{} pairs", book.pending.len());
}

#[test]
fn a_reopened_exit_closes_nothing_again_and_the_newest_snapshot_is_the_last_price() {
    let mut t = Tracker::new(100);
    t.reopen(tracked(1, 1, SignalType::Buy, Some("100"), "110", "95")).unwrap();
    t.reopen(tracked(2, 1, SignalType::Exit, Some("104"), "1", "1")).unwrap();
    assert_eq!(t.len(), 2, "the exit applied before the restart is not applied again");
    let mut out = Vec::new();
    t.expire(UnixNanos(T0.0 + 3_600 * SEC), &mut out);
    let got = summary(&out);
    assert!(got.contains(&(1, "expired", s("100.0000"), s("104.0000"), Some(40_000))), "{got:?}");
}

#[test]
fn a_return_beyond_four_decimal_fields_is_unknown() {
    assert_eq!(return_pct(SignalType::Buy, "0.0001".parse().ok(), "99999999999".parse().ok()), None);
}

#[test]
fn a_moved_book_leaves_with_its_entries_and_closes_nothing_here_afterwards() {
    let mut t = Tracker::new(10);
    open(&mut t, tracked(1, 1, SignalType::Buy, None, "110", "90"));
    open(&mut t, tracked(2, 1, SignalType::Sell, Some("100"), "90", "110"));
    let mut other = tracked(3, 1, SignalType::Buy, Some("50"), "60", "40");
    other.symbol = sym("INFY");
    open(&mut t, other);
    // The first tick fills the buy's entry; nothing closes.
    assert!(tick(&mut t, "101", 1).is_empty());
    let keys = [(sym("RELIANCE"), nse())].into_iter().collect();
    let moved = t.take_books(&keys);
    assert_eq!(moved.iter().map(|m| m.id.as_u128()).collect::<Vec<_>>(), [1, 2], "oldest first");
    assert_eq!(moved[0].entry, Some(p("101")), "the entry a tick gave it goes along");
    assert_eq!(t.len(), 1);
    // Its levels and its expiry left with it: a tick past them and the clock close nothing.
    assert!(tick(&mut t, "200", 2).is_empty());
    let mut out = Vec::new();
    t.expire(UnixNanos(i64::MAX), &mut out);
    assert_eq!(summary(&out).len(), 1, "only INFY's signal was still here to expire");
    // Taken back, they track as before (on the node that now holds the partition).
    let mut back = Tracker::new(10);
    for m in moved {
        back.reopen(m).unwrap();
    }
    assert_eq!(summary(&tick(&mut back, "111", 3)).len(), 2, "the buy's target and the sell's stop");
}

#[test]
fn an_id_is_tracked_once_and_one_closed_elsewhere_is_forgotten_without_a_close() {
    let mut t = Tracker::new(10);
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "90"));
    open(&mut t, tracked(1, 1, SignalType::Buy, Some("100"), "110", "90"));
    t.reopen(tracked(1, 1, SignalType::Buy, Some("100"), "110", "90")).unwrap();
    open(&mut t, tracked(2, 1, SignalType::Buy, Some("100"), "120", "80"));
    assert_eq!(t.len(), 2, "the same id opened three times is one signal");
    assert!(t.contains(uuid::Uuid::from_u128(1)));
    assert!(t.forget(uuid::Uuid::from_u128(1)));
    assert!(!t.forget(uuid::Uuid::from_u128(1)), "forgotten once");
    assert_eq!(t.len(), 1);
    // Its level went with it: a tick past it closes only what is left there.
    assert!(tick(&mut t, "111", 1).is_empty());
    assert_eq!(summary(&tick(&mut t, "121", 2)).len(), 1);
}

#[test]
fn a_copy_from_another_tiers_topic_adds_its_tier_to_the_close_even_at_capacity() {
    let mut t = Tracker::new(1);
    let mut enterprise = tracked(1, 1, SignalType::Buy, Some("100"), "110", "90");
    enterprise.tiers = 0b1000;
    t.reopen(enterprise).unwrap();
    // The premium topic's copy of the same signal, read after it was tracked here: the
    // tracker is full, but this is no new signal.
    let mut premium = tracked(1, 1, SignalType::Buy, Some("100"), "110", "90");
    premium.tiers = 0b0100;
    t.reopen(premium).expect("a copy of a tracked id is not refused for capacity");
    assert_eq!(t.len(), 1);
    let closes = tick(&mut t, "111", 1);
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].signal.tiers, 0b1100, "the close goes to both tiers' channels");
}
