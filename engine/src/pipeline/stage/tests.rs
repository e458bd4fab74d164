//! The stage driven by hand: items in, channel logs out, no threads, no clock.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::channels::ChannelSet;
use crate::config::{EngineConfig, MissingTick};
use crate::feed::ProducerRegistry;
use crate::model::{EnrichedSignal, Exchange, Price, Signal, Symbol, Tick};
use crate::ticks::TickBook;

const T0: UnixNanos = UnixNanos(1_795_400_000_000_000_000);
const SEC: i64 = 1_000_000_000;

struct Harness {
    stage: Stage,
    channels: Arc<ChannelSet>,
    producers: Arc<ProducerRegistry>,
    stats: Arc<PipelineStats>,
}

fn harness(config: EngineConfig) -> Harness {
    let policy = Arc::new(TierPolicy::default());
    let (_book, writer) = TickBook::new(config.max_symbols);
    let channels = Arc::new(ChannelSet::new(&policy, config.ring_capacity));
    let producers = Arc::new(ProducerRegistry::default());
    let stats = Arc::new(PipelineStats::default());
    let stage = Stage::new(
        &config,
        policy,
        writer,
        Arc::clone(&channels),
        Arc::clone(&producers),
        Arc::clone(&stats),
    );
    Harness { stage, channels, producers, stats }
}

fn signal(n: u128, confidence: u16) -> Signal {
    crate::testkit::signal_at(n, confidence, "RELIANCE", "NSE", crate::model::Category::Equity, T0)
}

fn local(s: Signal) -> IngestItem {
    IngestItem::Signal(Box::new(SignalItem {
        origin: Origin::Local,
        signal: s,
        ingest_ts: T0,
        sent_ts: None,
        verdict: None,
    }))
}

fn from_producer(slot: u32, seq: u64, s: Signal) -> IngestItem {
    IngestItem::Signal(Box::new(SignalItem {
        origin: Origin::Producer { slot, seq },
        signal: s,
        ingest_ts: T0,
        sent_ts: None,
        verdict: None,
    }))
}

fn tick(last: i64, ts: UnixNanos) -> Tick {
    Tick {
        symbol: Symbol::new("RELIANCE").unwrap(),
        exchange: Exchange::new("NSE").unwrap(),
        bid: Price::from_raw(last - 500).unwrap(),
        ask: Price::from_raw(last + 500).unwrap(),
        last: Price::from_raw(last).unwrap(),
        volume: 1_250_000,
        ts,
    }
}

fn read_all(log: &crate::channels::ChannelLog) -> Vec<Message> {
    let mut out = Vec::new();
    let _ = log.read_after(0, &mut out, usize::MAX);
    out
}

fn data(m: &Message) -> EnrichedSignal {
    let v: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
    assert_eq!(v["seq"].as_u64(), Some(m.seq()));
    serde_json::from_value(v["data"].clone()).unwrap()
}

#[test]
fn routes_by_the_tier_table_and_drops_below_the_bar() {
    let mut h = harness(EngineConfig::default());
    // (confidence in hundredths, tiers expected: free, basic, premium, enterprise)
    let cases = [
        (9_900, [true, true, true, true]),
        (9_000, [true, true, true, true]),
        (8_999, [false, true, true, true]),
        (8_500, [false, true, true, true]),
        (8_499, [false, false, true, true]),
        (7_501, [false, false, true, true]),
        (7_500, [false, false, false, false]),
        (4_000, [false, false, false, false]),
    ];
    for (i, (c, _)) in cases.iter().enumerate() {
        h.stage.handle(local(signal(i as u128 + 1, *c)), T0);
    }
    h.stage.finish_batch();
    for tier in Tier::ALL {
        let got: Vec<u16> =
            read_all(h.channels.live(tier)).iter().map(|m| data(m).signal.confidence.hundredths()).collect();
        let want: Vec<u16> = cases.iter().filter(|(_, t)| t[tier.index()]).map(|(c, _)| *c).collect();
        assert_eq!(got, want, "{tier}");
        assert_eq!(h.stats.routed(tier), want.len() as u64);
    }
    assert_eq!(h.stats.drops(DropReason::BelowConfidence), 2);
}

#[test]
fn seq_is_gap_free_per_channel_and_in_the_json() {
    let mut h = harness(EngineConfig::default());
    for i in 0..500u128 {
        h.stage.handle(local(signal(i + 1, 7_600 + ((i * 37) % 2_400) as u16)), T0);
    }
    for tier in Tier::ALL {
        let msgs = read_all(h.channels.live(tier));
        assert!(!msgs.is_empty());
        for (k, m) in msgs.iter().enumerate() {
            assert_eq!(m.seq(), k as u64 + 1, "{tier}");
            assert!(data(m).signal.confidence >= TierPolicy::default().rule(tier).min_confidence);
        }
        assert_eq!(h.channels.live(tier).head(), msgs.len() as u64);
    }
}

#[test]
fn expired_signals_are_dropped() {
    let mut h = harness(EngineConfig::default());
    let mut s = signal(1, 9_500);
    s.expires_at = T0.plus_nanos(SEC);
    h.stage.handle(local(s), T0.plus_nanos(SEC));
    assert_eq!(h.stats.drops(DropReason::Expired), 1);
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 0);
}

#[test]
fn enriches_with_the_latest_tick_or_null() {
    let mut h = harness(EngineConfig::default());
    h.stage.handle(local(signal(1, 9_500)), T0);
    h.stage.handle(IngestItem::Tick(tick(24_568_000, T0.plus_nanos(SEC))), T0);
    h.stage.handle(IngestItem::Tick(tick(24_569_000, T0.plus_nanos(2 * SEC))), T0);
    // Out of order: older than what the book holds, ignored.
    h.stage.handle(IngestItem::Tick(tick(1_0000, T0.plus_nanos(SEC + 1))), T0);
    let now = T0.plus_nanos(2 * SEC + 23_500_000);
    h.stage.handle(local(signal(2, 9_500)), now);
    let msgs = read_all(h.channels.live(Tier::Premium));
    assert_eq!(data(&msgs[0]).market, None);
    let m = data(&msgs[1]).market.unwrap();
    assert_eq!((m.last.raw(), m.bid.raw(), m.ask.raw()), (24_569_000, 24_568_500, 24_569_500));
    assert_eq!((m.tick_ts, m.tick_age_ms, m.volume), (T0.plus_nanos(2 * SEC), 23, 1_250_000));
    assert_eq!(data(&msgs[1]).routed_ts, now);
    assert_eq!(h.stats.drops(DropReason::StaleTick), 1);

    let mut h = harness(EngineConfig { missing_tick: MissingTick::Drop, ..EngineConfig::default() });
    h.stage.handle(local(signal(1, 9_500)), T0);
    assert_eq!(h.stats.drops(DropReason::MissingTick), 1);
    assert_eq!(h.channels.live(Tier::Premium).head(), 0);
}

#[test]
fn a_tick_from_the_far_future_is_dropped_and_cannot_freeze_its_symbol() {
    let mut h = harness(EngineConfig::default());
    h.stage.handle(IngestItem::Tick(tick(99_990_000, UnixNanos(i64::MAX))), T0);
    h.stage.handle(IngestItem::Tick(tick(99_990_000, T0.plus_nanos(10 * SEC + 1))), T0);
    assert_eq!(h.stats.drops(DropReason::FutureTick), 2, "past the 10 s default");
    h.stage.handle(IngestItem::Tick(tick(24_568_000, T0)), T0);
    h.stage.handle(IngestItem::Tick(tick(24_569_000, T0.plus_nanos(10 * SEC))), T0);
    h.stage.handle(local(signal(1, 9_500)), T0);
    let m = data(&read_all(h.channels.live(Tier::Premium))[0]).market.unwrap();
    assert_eq!(m.last.raw(), 24_569_000, "real ticks still move the price; 10 s ahead is within bounds");
    assert_eq!(h.stats.drops(DropReason::StaleTick), 0);
}

#[test]
fn duplicates_by_producer_seq_and_by_id_are_dropped_and_acked() {
    let mut h = harness(EngineConfig::default());
    let (slot, _) = h.producers.attach("p");
    h.stage.handle(from_producer(slot.index, 1, signal(1, 9_500)), T0);
    h.stage.handle(from_producer(slot.index, 2, signal(2, 9_500)), T0);
    h.stage.handle(from_producer(slot.index, 2, signal(2, 9_500)), T0); // resend
    h.stage.handle(from_producer(slot.index, 3, signal(1, 9_500)), T0); // same id, new seq
    h.stage.handle(from_producer(slot.index, 4, signal(4, 1_000)), T0); // filtered
    assert_eq!(slot.acked(), 0, "acks go out at the end of the batch");
    h.stage.finish_batch();
    assert_eq!(slot.acked(), 4, "every taken seq is acknowledged, routed or not");
    assert_eq!(h.stats.drops(DropReason::DuplicateSeq), 1);
    assert_eq!(h.stats.drops(DropReason::DuplicateId), 1);
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 2);
}

#[test]
fn delayed_view_releases_the_same_messages_after_the_delay() {
    let mut h = harness(EngineConfig::default());
    let mut rx = h.channels.watch();
    h.stage.handle(local(signal(1, 9_500)), T0);
    h.stage.handle(local(signal(2, 9_600)), T0.plus_nanos(SEC));
    h.stage.finish_batch();
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    let view = h.channels.delayed(Tier::Free).unwrap();
    assert_eq!(view.epoch(), h.channels.live(Tier::Free).epoch());
    assert_eq!(h.stage.next_release(), Some(T0.plus_nanos(30 * SEC)));
    h.stage.release_due(T0.plus_nanos(30 * SEC - 1));
    h.stage.finish_batch();
    assert_eq!(view.head(), 0);
    assert!(!rx.has_changed().unwrap(), "no bell without news");
    h.stage.release_due(T0.plus_nanos(30 * SEC));
    h.stage.finish_batch();
    let delayed = read_all(view);
    let live = read_all(h.channels.live(Tier::Free));
    assert_eq!(delayed.len(), 2, "both were ingested at T0, so both are due");
    assert_eq!(delayed[0].frame().as_ptr(), live[0].frame().as_ptr(), "the very same encoded bytes");
    assert!(rx.has_changed().unwrap());
    // Premium's real-time users read live; its delayed view serves rt=false users.
    assert_eq!(TierPolicy::default().delayed_view(Tier::Premium), Duration::from_secs(30));
    assert_eq!(h.stage.next_release(), Some(T0.plus_nanos(3_600 * SEC)), "then the signals' expiry");
}

#[test]
fn a_full_delay_line_drops_its_oldest_and_says_so() {
    let mut h = harness(EngineConfig { delay_capacity: 2, ..EngineConfig::default() });
    for i in 1..=3 {
        h.stage.handle(local(signal(i, 9_500)), T0);
    }
    assert_eq!(h.stats.drops(DropReason::DelayOverflow), 4, "one per delayed view (4 tiers)");
    h.stage.release_due(T0.plus_nanos(31 * SEC));
    let view = h.channels.delayed(Tier::Free).unwrap();
    let mut out = Vec::new();
    assert!(view.read_after(0, &mut out, 10).is_err(), "a reader from the start lost seq 1");
    assert_eq!(view.read_after(1, &mut out, 10), Ok(3));
    assert_eq!(out.iter().map(Message::seq).collect::<Vec<_>>(), vec![2, 3]);
}

/// An archive in memory whose commits can be made to fail, and which records what the
/// rest of the world could see at each commit.
/// (signal id, producer, channels and seqs) of one archived signal.
type Entry = (u128, Option<String>, Vec<(Tier, u64)>);

#[derive(Debug)]
struct MemArchive {
    staged: Vec<Entry>,
    committed: Arc<std::sync::Mutex<Vec<Entry>>>,
    fail: Arc<std::sync::atomic::AtomicUsize>,
    /// At each commit attempt: the enterprise log's head and the producer's ack.
    seen: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    channels: Arc<ChannelSet>,
    slot: Arc<crate::feed::ProducerSlot>,
}

impl Archive for MemArchive {
    fn stage(&mut self, r: &Archived<'_>) {
        self.staged.push((r.signal.id.as_u128(), r.producer.map(str::to_owned), r.channels.to_vec()));
    }

    fn stage_close(&mut self, c: &ArchivedClose<'_>) {
        let what = format!("close: {}", c.close.status.as_str());
        self.staged.push((c.close.signal.id.as_u128(), Some(what), c.channels.to_vec()));
    }

    fn commit(&mut self) -> Result<(), String> {
        self.seen.lock().unwrap().push((self.channels.live(Tier::Enterprise).head(), self.slot.acked()));
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.fail.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return Err("disk full".into());
        }
        self.committed.lock().unwrap().append(&mut self.staged);
        Ok(())
    }
}

#[test]
fn with_an_archive_nothing_is_seen_or_acknowledged_before_the_commit_and_a_failing_one_holds_everything() {
    let h = harness(EngineConfig::default());
    let (slot, _) = h.producers.attach("p");
    let committed = Arc::default();
    let fail = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let seen = Arc::default();
    let archive = MemArchive {
        staged: Vec::new(),
        committed: Arc::clone(&committed),
        fail: Arc::clone(&fail),
        seen: Arc::clone(&seen),
        channels: Arc::clone(&h.channels),
        slot: Arc::clone(&slot),
    };
    let mut stage = h.stage.with_archive(Box::new(archive));
    stage.handle(from_producer(slot.index, 1, signal(1, 9_500)), T0);
    stage.handle(from_producer(slot.index, 2, signal(2, 8_000)), T0); // premium and up
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 0, "held until the commit");
    stage.finish_batch();
    assert_eq!(
        *seen.lock().unwrap(),
        [(0, 0), (0, 0), (0, 0)],
        "two failed commits and the good one: nothing visible, nothing acknowledged before it"
    );
    assert_eq!(h.stats.store_failures(), 2);
    let stored = committed.lock().unwrap().clone();
    assert_eq!(
        stored,
        [
            (
                1,
                Some("p".to_owned()),
                vec![(Tier::Free, 1), (Tier::Basic, 1), (Tier::Premium, 1), (Tier::Enterprise, 1)]
            ),
            (2, Some("p".to_owned()), vec![(Tier::Premium, 2), (Tier::Enterprise, 2)]),
        ],
        "each signal with the seqs it takes, in order"
    );
    assert_eq!(slot.acked(), 2);
    let live = read_all(h.channels.live(Tier::Enterprise));
    assert_eq!(live.iter().map(Message::seq).collect::<Vec<_>>(), [1, 2], "the same seqs in the log");
    assert_eq!(read_all(h.channels.live(Tier::Free)).len(), 1);

    // The next batch goes on from the committed heads.
    stage.handle(from_producer(slot.index, 3, signal(3, 9_500)), T0);
    stage.finish_batch();
    assert_eq!(committed.lock().unwrap()[2].2[3], (Tier::Enterprise, 3));
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 3);
}

/// An archive whose commits each wait for a go from the test, and which records how
/// many signals each commit took.
#[derive(Debug)]
struct GatedArchive {
    staged: usize,
    go: std::sync::mpsc::Receiver<()>,
    commits: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Archive for GatedArchive {
    fn stage(&mut self, _: &Archived<'_>) {
        self.staged += 1;
    }

    fn stage_close(&mut self, _: &ArchivedClose<'_>) {
        self.staged += 1;
    }

    fn commit(&mut self) -> Result<(), String> {
        self.go.recv().map_err(|_| "the test is gone".to_owned())?;
        self.commits.lock().unwrap().push(std::mem::take(&mut self.staged));
        Ok(())
    }
}

#[test]
fn batches_routed_while_the_store_writes_are_committed_together_and_let_out_in_order() {
    let h = harness(EngineConfig::default());
    let (slot, _) = h.producers.attach("p");
    let (go, gate) = std::sync::mpsc::channel();
    let commits = Arc::default();
    let archive = GatedArchive { staged: 0, go: gate, commits: Arc::clone(&commits) };
    let mut stage = h.stage.with_archive_thread(Box::new(archive)).unwrap();

    stage.handle(from_producer(slot.index, 1, signal(1, 9_500)), T0);
    stage.finish_batch(); // in flight, its commit waiting for a go
    for n in 2..=3 {
        stage.handle(from_producer(slot.index, n, signal(u128::from(n), 9_500)), T0);
        stage.finish_batch(); // waits behind it: the stage goes on routing
    }
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 0, "nothing seen before its commit");
    assert_eq!(slot.acked(), 0, "nothing acknowledged before its commit");

    go.send(()).unwrap();
    let waker = stage.commit_waker().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.channels.live(Tier::Enterprise).head() == 0 && std::time::Instant::now() < deadline {
        wait_for_bell(&waker);
        stage.poll_committed();
    }
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 1, "the first batch out on its own");
    assert_eq!(slot.acked(), 1, "and only its producer seq acknowledged");

    go.send(()).unwrap();
    stage.wait_committed();
    assert_eq!(*commits.lock().unwrap(), [1, 2], "the two waiting batches in one commit");
    let live = read_all(h.channels.live(Tier::Enterprise));
    assert_eq!(live.iter().map(Message::seq).collect::<Vec<_>>(), [1, 2, 3], "in seq order");
    assert_eq!(slot.acked(), 3);
}

/// Waits (bounded) for the archive thread's bell, from a test with no runtime.
fn wait_for_bell(bell: &tokio::sync::Notify) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_millis(100), bell.notified()).await;
    });
}

fn priced(symbol: &str, last: &str, at: UnixNanos) -> IngestItem {
    IngestItem::Tick(Tick { ts: at, ..crate::testkit::tick(symbol, "NSE", last) })
}

#[test]
fn a_close_follows_its_signal_on_every_channel_that_carried_it_with_new_seqs() {
    let mut h = harness(EngineConfig::default());
    h.stage.handle(priced("RELIANCE", "2456.75", T0), T0);
    h.stage.handle(local(signal(1, 8_000)), T0); // premium and enterprise; buy, target 2520
    h.stage.handle(local(signal(2, 9_500)), T0); // every tier
    h.stage.finish_batch();
    h.stage.handle(priced("RELIANCE", "2519.99", T0.plus_nanos(SEC)), T0.plus_nanos(SEC));
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 2, "not at the target yet");
    h.stage.handle(priced("RELIANCE", "2530", T0.plus_nanos(2 * SEC)), T0.plus_nanos(2 * SEC));
    h.stage.finish_batch();

    let enterprise = read_all(h.channels.live(Tier::Enterprise));
    assert_eq!(enterprise.len(), 4, "two signals, two closes");
    let close: serde_json::Value = serde_json::from_slice(enterprise[2].json()).unwrap();
    assert_eq!(close["seq"], 3);
    assert_eq!(close["data"]["id"], uuid::Uuid::from_u128(1).to_string());
    assert_eq!(close["data"]["status"], "target_hit");
    assert_eq!(
        close["data"]["outcome"],
        serde_json::json!({"entry_price": "2456.7500", "exit_price": "2530.0000", "return_pct": "2.9816",
                           "closed_at": T0.plus_nanos(2 * SEC).as_micros()})
    );
    assert!(enterprise[2].is_outcome() && !enterprise[0].is_outcome(), "a close is marked: no quota");
    let first: serde_json::Value = serde_json::from_slice(enterprise[0].json()).unwrap();
    assert_eq!(first["data"]["status"], "open");
    // Signal 1 never entered the free channel: neither does its close.
    let free = read_all(h.channels.live(Tier::Free));
    let ids: Vec<String> = free
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(m.json()).unwrap()["data"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, [uuid::Uuid::from_u128(2).to_string(), uuid::Uuid::from_u128(2).to_string()]);
    assert_eq!(h.stats.closes(crate::outcome::Status::TargetHit), 2);
    assert_eq!(h.stats.open_signals(), 0);
}

#[test]
fn with_an_archive_a_close_is_stored_after_its_signal_and_held_like_one() {
    let h = harness(EngineConfig::default());
    let (slot, _) = h.producers.attach("p");
    let committed = Arc::default();
    let archive = MemArchive {
        staged: Vec::new(),
        committed: Arc::clone(&committed),
        fail: Arc::default(),
        seen: Arc::default(),
        channels: Arc::clone(&h.channels),
        slot: Arc::clone(&slot),
    };
    let mut stage = h.stage.with_archive(Box::new(archive));
    // No tick yet: the entry is the first tick after routing, which here also hits the stop.
    stage.handle(from_producer(slot.index, 1, signal(1, 8_000)), T0);
    stage.handle(priced("RELIANCE", "2400", T0.plus_nanos(SEC)), T0.plus_nanos(SEC));
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 0, "held until the commit");
    stage.finish_batch();
    assert_eq!(
        *committed.lock().unwrap(),
        [
            (1, Some("p".to_owned()), vec![(Tier::Premium, 1), (Tier::Enterprise, 1)]),
            (1, Some("close: stop_hit".to_owned()), vec![(Tier::Premium, 2), (Tier::Enterprise, 2)]),
        ]
    );
    let live = read_all(h.channels.live(Tier::Premium));
    assert_eq!(live.iter().map(Message::seq).collect::<Vec<_>>(), [1, 2]);
    let close: serde_json::Value = serde_json::from_slice(live[1].json()).unwrap();
    assert_eq!(close["data"]["outcome"]["entry_price"], "2400.0000");
    assert_eq!(close["data"]["outcome"]["return_pct"], "0.0000");
}

#[test]
fn an_expired_signal_closes_when_the_stage_reaches_its_expiry() {
    let mut h = harness(EngineConfig::default());
    h.stage.handle(local(signal(1, 9_500)), T0);
    h.stage.finish_batch();
    let expiry = T0.plus_nanos(3_600 * SEC);
    assert_eq!(h.stage.next_release(), Some(T0.plus_nanos(30 * SEC)), "the free view's delay first");
    h.stage.release_due(T0.plus_nanos(30 * SEC));
    assert_eq!(h.stage.next_release(), Some(expiry));
    h.stage.release_due(expiry);
    h.stage.finish_batch();
    let live = read_all(h.channels.live(Tier::Basic));
    let close: serde_json::Value = serde_json::from_slice(live[1].json()).unwrap();
    assert_eq!(close["data"]["status"], "expired");
    assert_eq!(
        close["data"]["outcome"],
        serde_json::json!({"entry_price": null, "exit_price": null, "return_pct": null, "closed_at": expiry.as_micros()})
    );
}

#[test]
fn with_tracking_off_nothing_closes() {
    let mut h = harness(EngineConfig { max_open_signals: 0, ..EngineConfig::default() });
    h.stage.handle(priced("RELIANCE", "2456.75", T0), T0);
    h.stage.handle(local(signal(1, 9_500)), T0);
    h.stage.handle(priced("RELIANCE", "3000", T0), T0);
    h.stage.release_due(T0.plus_nanos(7_200 * SEC));
    h.stage.finish_batch();
    assert_eq!(h.channels.live(Tier::Enterprise).head(), 1);
}

#[test]
fn a_delayed_view_releases_a_close_after_the_same_delay_as_its_signal() {
    let mut h = harness(EngineConfig::default());
    h.stage.handle(priced("RELIANCE", "2456.75", T0), T0);
    h.stage.handle(local(signal(1, 9_500)), T0); // every tier; free reads a 30 s delayed view
    h.stage.finish_batch();
    let closed_at = T0.plus_nanos(5 * SEC);
    h.stage.handle(priced("RELIANCE", "2530", closed_at), closed_at);
    h.stage.finish_batch();
    let view = h.channels.delayed(Tier::Free).unwrap();
    h.stage.release_due(T0.plus_nanos(30 * SEC));
    assert_eq!(read_all(view).len(), 1, "the signal, 30 s after its ingest; not yet its close");
    h.stage.release_due(closed_at.plus_nanos(30 * SEC - 1));
    assert_eq!(read_all(view).len(), 1);
    h.stage.release_due(closed_at.plus_nanos(30 * SEC));
    let delayed = read_all(view);
    assert_eq!(delayed.len(), 2, "the close, 30 s after it was made");
    let close: serde_json::Value = serde_json::from_slice(delayed[1].json()).unwrap();
    assert_eq!(close["data"]["status"], "target_hit");
    assert!(delayed[1].is_outcome());
}

#[test]
fn batches_merged_while_the_store_writes_keep_one_acknowledgement_per_producer() {
    let batch = |acks: Vec<(u32, u64)>| Batch { acks, ..Batch::default() };
    let mut waiting = batch(vec![(1, 5), (2, 7)]);
    for seq in 6..100_000 {
        waiting.merge(batch(vec![(1, seq)]));
    }
    waiting.merge(batch(vec![(3, 1), (2, 8)]));
    assert_eq!(waiting.acks, [(1, 99_999), (2, 8), (3, 1)]);
}
