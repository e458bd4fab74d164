//! The SQLite store against real files in a temporary directory.

use engine::model::{Category, SignalType, Tier, UnixNanos};
use engine::testkit::signal_at;

use super::*;
use crate::Status;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let n = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "signalcast-store-{name}-{}-{}",
            std::process::id(),
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const T0: i64 = 1_795_400_000_000_000_000;

/// Signal `n` on `symbol`, routed at T0 + n ms into `channels`.
fn routed(n: u128, symbol: &str, category: Category, channels: &[(Tier, u64)]) -> Routed {
    let at = UnixNanos(T0 + n as i64 * 1_000_000);
    let signal = signal_at(n, 9_000, symbol, "NSE", category, at);
    Routed {
        data: format!(r#"{{"id":"{}","n":{n}}}"#, signal.id),
        signal,
        producer: Some("model-alpha".into()),
        market: Some(r#"{"last":"100.0000"}"#.into()),
        ingest_ts: at,
        routed_ts: at,
        channels: channels.to_vec(),
    }
}

fn ns(page: &Page) -> Vec<u64> {
    page.items
        .iter()
        .map(|i| {
            let at = i.data.find("\"n\":").unwrap() + 4;
            i.data[at..i.data.len() - 1].parse().unwrap()
        })
        .collect()
}

#[test]
fn a_batch_is_stored_with_its_channels_and_appending_it_again_changes_nothing() {
    let dir = TempDir::new("append");
    let mut store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    let batch = [
        routed(1, "RELIANCE", Category::Equity, &[(Tier::Enterprise, 1), (Tier::Premium, 1)]),
        routed(2, "TCS", Category::Equity, &[(Tier::Enterprise, 2)]),
    ];
    assert_eq!(store.append(&batch).unwrap(), 2);
    assert_eq!(store.append(&batch).unwrap(), 0, "idempotent by signal id");
    assert_eq!((store.head(Tier::Enterprise).unwrap(), store.head(Tier::Premium).unwrap()), (2, 1));
    assert_eq!(store.head(Tier::Free).unwrap(), 0);
    let after = store.after(Tier::Enterprise, 0, 10).unwrap();
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(after[0].data, batch[0].data, "the data as encoded");
    assert_eq!((after[1].category, after[1].id), (Category::Equity, batch[1].signal.id));
    assert_eq!(store.recent_ids(1).unwrap(), [batch[1].signal.id]);
    assert_eq!(store.after(Tier::Enterprise, 1, 10).unwrap().len(), 1);

    // Reopened (a restart): everything is still there, the epoch too.
    store.set_epoch(Tier::Enterprise, 0xfeed).unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.0, Durability::Process).unwrap();
    assert_eq!(store.head(Tier::Enterprise).unwrap(), 2);
    assert_eq!(store.epoch(Tier::Enterprise).unwrap(), Some(0xfeed));
    assert_eq!(store.epoch(Tier::Free).unwrap(), None);
}

#[test]
fn history_is_newest_first_filtered_by_what_the_caller_may_see_and_pages_without_gap_or_repeat() {
    let dir = TempDir::new("history");
    let mut store = SqliteStore::open(&dir.0, Durability::Process).unwrap();
    // 250 signals: every third a crypto signal on BTC that only reached enterprise.
    let batch: Vec<Routed> = (1..=250u128)
        .map(|n| {
            if n % 3 == 0 {
                routed(n, "BTC-USDT", Category::Crypto, &[(Tier::Enterprise, n as u64)])
            } else {
                routed(
                    n,
                    "RELIANCE",
                    Category::Equity,
                    &[(Tier::Enterprise, n as u64), (Tier::Free, n as u64)],
                )
            }
        })
        .collect();
    store.append(&batch).unwrap();

    let mut q = Query { limit: 100, ..Query::default() };
    let mut seen = Vec::new();
    loop {
        let page = store.history(&q).unwrap();
        seen.extend(ns(&page));
        match page.next {
            Some(c) => q.cursor = Some(Cursor::decode(&c.encode()).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, (1..=250).rev().collect::<Vec<u64>>(), "newest first, each once");

    // A free-tier caller sees only what entered signals_free, with that seq only.
    let free = store.history(&Query { tier: Some(Tier::Free), limit: 5, ..Query::default() }).unwrap();
    assert_eq!(ns(&free), [250, 248, 247, 245, 244]);
    assert_eq!(free.items[0].channels, [(Tier::Free, 250)]);
    let premium_view = Query { tier: Some(Tier::Premium), limit: 500, ..Query::default() };
    assert_eq!(store.history(&premium_view).unwrap().items.len(), 167);

    let crypto = Query { categories: vec![Category::Crypto], limit: 3, ..Query::default() };
    assert_eq!(ns(&store.history(&crypto).unwrap()), [249, 246, 243]);
    let btc =
        Query { symbol: Some("BTC-USDT".into()), exchange: Some("NSE".into()), limit: 2, ..Query::default() };
    assert_eq!(ns(&store.history(&btc).unwrap()), [249, 246]);
    let sells = Query { signal_type: Some(SignalType::Sell), limit: 500, ..Query::default() };
    assert!(store.history(&sells).unwrap().items.len() < 250);
    let range = Query {
        from: Some(UnixNanos(T0 + 10_000_000)),
        to: Some(UnixNanos(T0 + 13_000_000)),
        limit: 50,
        ..Query::default()
    };
    assert_eq!(ns(&store.history(&range).unwrap()), [12, 11, 10], "from inclusive, to exclusive");
    assert!(matches!(Cursor::decode("not-a-cursor"), Err(StoreError::BadCursor)));
}

#[test]
fn a_file_that_is_not_a_store_is_refused_with_its_path() {
    let dir = TempDir::new("corrupt");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("signals.db"), vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&dir.0, Durability::Full).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("signals.db"), "{err}");
}

#[test]
fn a_data_directory_that_cannot_be_created_is_refused_with_its_path() {
    let dir = TempDir::new("blocked");
    std::fs::write(&dir.0, b"a file where the directory should be").unwrap();
    let err = SqliteStore::open(&dir.0.join("data"), Durability::Full).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("data"), "{err}");
    let _ = std::fs::remove_file(&dir.0);
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused_and_readers_are_not() {
    let dir = TempDir::new("lock");
    let mut store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    let err = SqliteStore::open(&dir.0, Durability::Full).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use by another signalcast process"), "{err}");
    store.append(&[routed(1, "RELIANCE", Category::Equity, &[(Tier::Premium, 1)])]).unwrap();
    let reader = SqliteStore::open_reader(&dir.0).unwrap();
    assert_eq!(reader.count().unwrap(), 1, "a reader sees the writer's commits");
    drop(store);
    SqliteStore::open(&dir.0, Durability::Full).expect("the lock goes with its writer");
}

#[test]
fn a_full_store_fails_the_commit_whole_and_takes_the_batch_once_there_is_room() {
    let dir = TempDir::new("full");
    let settings = Settings { durability: Durability::Full, max_bytes: 256 * 1024 };
    let mut store = SqliteStore::open_with(&dir.0, settings).unwrap();
    let mut n = 0u128;
    let err = loop {
        let batch: Vec<Routed> = (0..50)
            .map(|_| {
                n += 1;
                let mut r = routed(n, "RELIANCE", Category::Equity, &[(Tier::Enterprise, n as u64)]);
                r.data = format!(r#"{{"id":"{}","n":{n},"pad":"{}"}}"#, r.signal.id, "x".repeat(400));
                r
            })
            .collect();
        match store.append(&batch) {
            Ok(_) => assert!(n < 100_000, "the cap never bit"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Full), "{err}");
    let stored = store.count().unwrap();
    assert_eq!(stored % 50, 0, "a failed batch leaves nothing behind: {stored}");
    assert_eq!(store.head(Tier::Enterprise).unwrap(), stored, "heads are the committed ones");
}

#[test]
fn pruning_removes_the_oldest_and_never_lowers_a_head() {
    let dir = TempDir::new("prune");
    let mut store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    for t in Tier::ALL {
        store.set_epoch(t, 7).unwrap();
    }
    let batch: Vec<Routed> =
        (1..=10).map(|n| routed(n, "RELIANCE", Category::Equity, &[(Tier::Premium, n as u64)])).collect();
    store.append(&batch).unwrap();
    // Routed at T0 + n ms, expiring an hour later: nothing that may still close goes.
    assert_eq!(store.prune(UnixNanos(T0 + 6_000_000), 3).unwrap(), 0, "all still open");
    // Expired before T0 + 1 h 6 ms: 1..=5 go, three at a time.
    let before = UnixNanos(T0 + 3_600_000_000_000 + 6_000_000);
    assert_eq!(store.prune(before, 3).unwrap(), 3);
    assert_eq!(store.prune(before, 3).unwrap(), 2);
    assert_eq!(store.prune(before, 3).unwrap(), 0);
    assert_eq!(store.count().unwrap(), 5);
    assert_eq!(store.after(Tier::Premium, 0, 100).unwrap().first().map(|m| m.seq), Some(6));
    // Everything goes: the head stays, so the next signal cannot take seq 1 again.
    store.prune(UnixNanos(i64::MAX), 100).unwrap();
    assert_eq!(store.count().unwrap(), 0);
    assert_eq!(store.head(Tier::Premium).unwrap(), 10);
    // A close of a signal pruned meanwhile is passed over, not an error that would stop
    // the node's commits.
    let late = close_of(3, Status::Expired, &[(Tier::Premium, 11)]);
    assert_eq!(store.append_all(&[], &[late]).unwrap(), 0);
    assert_eq!(store.head(Tier::Premium).unwrap(), 11, "its seq still counts");
}

fn close_of(n: u128, status: Status, channels: &[(Tier, u64)]) -> ClosedSignal {
    ClosedSignal {
        id: uuid::Uuid::from_u128(n),
        status,
        entry: "100".parse().ok(),
        exit: "110".parse().ok(),
        return_pct: Some(100_000),
        closed_at: UnixNanos(T0 + 60_000_000_000),
        data: format!(r#"{{"id":"{}","status":"{}","n":{n}}}"#, uuid::Uuid::from_u128(n), status.as_str()),
        channels: channels.to_vec(),
    }
}

#[test]
fn closes_take_their_channels_seqs_and_are_read_back_in_order_with_the_signals() {
    let dir = TempDir::new("closes");
    let mut store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    let p = Tier::Premium;
    store
        .append_all(
            &[routed(1, "TCS", Category::Equity, &[(p, 1)]), routed(2, "TCS", Category::Equity, &[(p, 2)])],
            &[close_of(1, Status::TargetHit, &[(p, 3)])],
        )
        .unwrap();
    store.append_all(&[routed(3, "TCS", Category::Equity, &[(p, 4)])], &[]).unwrap();
    // A second close of the same signal is passed over: a signal closes once.
    store.append_all(&[], &[close_of(1, Status::StopHit, &[(p, 9)])]).unwrap();
    assert_eq!(store.head(p).unwrap(), 4, "the close's seq counts in the head");

    let back = store.after(p, 1, 10).unwrap();
    let seqs: Vec<(u64, bool)> = back.iter().map(|m| (m.seq, m.outcome)).collect();
    assert_eq!(seqs, [(2, false), (3, true), (4, false)]);
    assert_eq!(back[1].id, uuid::Uuid::from_u128(1));
    assert!(back[1].data.contains("target_hit"));

    // History shows each signal's latest form; `status` filters on it.
    let q = |status| Query { tier: Some(p), status, limit: 10, ..Query::default() };
    let all = store.history(&q(None)).unwrap();
    assert_eq!(ns(&all), [3, 2, 1]);
    assert!(all.items[2].data.contains("\"status\":\"target_hit\""), "{}", all.items[2].data);
    assert_eq!(ns(&store.history(&q(Some(Status::Open))).unwrap()), [3, 2]);
    assert_eq!(ns(&store.history(&q(Some(Status::TargetHit))).unwrap()), [1]);
    assert!(store.history(&q(Some(Status::StopHit))).unwrap().items.is_empty());
    // A delayed caller's view: a close made after its bound is not shown yet.
    let delayed = |status| Query { events_before: Some(UnixNanos(T0 + 59_000_000_000)), ..q(status) };
    let before_close = store.history(&delayed(None)).unwrap();
    assert!(!before_close.items[2].data.contains("target_hit"), "{}", before_close.items[2].data);
    assert_eq!(ns(&store.history(&delayed(Some(Status::Open))).unwrap()), [3, 2, 1]);
    assert!(store.history(&delayed(Some(Status::TargetHit))).unwrap().items.is_empty());

    // What a restart tracks again: the signals with no close.
    let open = store.open_signals(UnixNanos(T0), 10).unwrap();
    let ids: Vec<u128> = open.iter().map(|t| t.id.as_u128()).collect();
    assert_eq!(ids, [2, 3], "oldest first");
    assert_eq!(open[0].entry, None, "its data carries no market snapshot");
    assert_eq!(open[0].tiers, 1 << Tier::Premium.index());
    assert_eq!(open[0].signal_type, SignalType::Buy);
    assert_eq!(store.open_signals(UnixNanos(T0), 1).unwrap().len(), 1, "at most the limit, newest kept");
    assert!(
        store.open_signals(UnixNanos(T0 + 7_200_000_000_000), 10).unwrap().is_empty(),
        "expired long ago"
    );
}

#[test]
fn a_store_of_the_generated_columns_schema_keeps_every_row_seq_and_close_through_the_rebuild() {
    let dir = TempDir::new("migrate-v5");
    let p = Tier::Premium;
    let with_json = |n: u128, seq: u64| {
        let mut r = routed(n, "TCS", Category::Equity, &[(p, seq), (Tier::Enterprise, seq)]);
        r.data = format!(
            r#"{{"id":"{}","analysis":{{"model":"m{n}"}},"market":{{"last":"10{n}.0000"}},"n":{n}}}"#,
            r.signal.id
        );
        r
    };
    let q = Query { tier: Some(p), limit: 10, ..Query::default() };
    let before = {
        // What a store written by the version before this schema holds.
        let mut old = SqliteStore::open_at(&dir.0, Settings::default(), 4).unwrap();
        old.append_all(&[with_json(1, 1), with_json(2, 2)], &[close_of(1, Status::TargetHit, &[(p, 3)])])
            .unwrap();
        old.append(&[with_json(3, 4)]).unwrap();
        let generated: String = old
            .conn
            .query_row("SELECT analysis_data FROM trading_signals WHERE pos = 2", [], |r| r.get(0))
            .unwrap();
        assert_eq!(generated, r#"{"model":"m2"}"#, "the old schema's generated column");
        old.history(&q).unwrap()
    };

    let mut store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    let version: usize = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len());
    let after = store.history(&q).unwrap();
    assert_eq!(ns(&after), ns(&before), "the same signals, in the same order");
    assert_eq!(
        after.items.iter().map(|i| &i.data).collect::<Vec<_>>(),
        before.items.iter().map(|i| &i.data).collect::<Vec<_>>()
    );
    assert_eq!(store.head(p).unwrap(), 4, "the seqs, the close's included");
    let enterprise: Vec<u64> = store.after(Tier::Enterprise, 0, 10).unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(enterprise, [1, 2, 4], "every channel's seqs");
    let back: Vec<(u64, bool)> = store.after(p, 0, 10).unwrap().iter().map(|m| (m.seq, m.outcome)).collect();
    assert_eq!(back, [(1, false), (2, false), (3, true), (4, false)]);

    // The columns the source architecture names, for SQL readers, out of `data`.
    let (analysis, market): (String, String) = store
        .conn
        .query_row(
            "SELECT analysis_data, market_conditions FROM trading_signals_json WHERE pos = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((analysis.as_str(), market.as_str()), (r#"{"model":"m2"}"#, r#"{"last":"102.0000"}"#));

    // Appending goes on after the last pos, a seq is still never given twice, foreign
    // keys are back on (a close of a signal never stored is passed over), and a
    // second open migrates nothing.
    store.append(&[with_json(4, 5)]).unwrap();
    assert_eq!(store.append(&[with_json(5, 5)]).unwrap(), 0, "seq 5 of premium is taken: not stored");
    let fk: i64 = store.conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
    assert_eq!(fk, 1);
    store.append_all(&[], &[close_of(99, Status::StopHit, &[(p, 6)])]).unwrap();
    assert_eq!(store.head(p).unwrap(), 5, "the close of an unknown signal took nothing");
    drop(store);
    let store = SqliteStore::open(&dir.0, Durability::Full).unwrap();
    assert_eq!(ns(&store.history(&q).unwrap()), [4, 3, 2, 1]);
}
