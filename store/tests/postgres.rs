//! The PostgreSQL store against a real server (initdb + pg_ctl, tests/common/pg.rs), and
//! one logical schema checked: the same scenario against SqliteStore and PgStore gives
//! the same heads, `after` rows, recent ids, epochs, history pages and cursors.
#![allow(clippy::unwrap_used)]

mod common;

use common::pg::Postgres;
use common::{T0, TempDir, routed};
use engine::model::{Category, SignalType, Tier, UnixNanos};
use store::{ClosedSignal, Cursor, Durability, Page, PgStore, Query, Routed, SqliteStore, Status};

/// The scenario: batches with re-appends, a duplicate id inside a batch that brings one
/// more channel, signals routed at the same instant (ordered by insertion), four symbols,
/// three categories, two sources, buys and sells.
fn batches() -> Vec<Vec<Routed>> {
    let mut seqs = [0u64; 4];
    let mut next = |t: Tier| {
        seqs[t.index()] += 1;
        (t, seqs[t.index()])
    };
    let mut all = Vec::new();
    for chunk in 0..6u128 {
        let mut batch = Vec::new();
        for i in 1..=40u128 {
            let n = chunk * 40 + i;
            let (symbol, category) = match n % 4 {
                0 => ("BTC-USDT", Category::Crypto),
                1 => ("RELIANCE", Category::Equity),
                2 => ("TCS", Category::Equity),
                _ => ("EURUSD", Category::Forex),
            };
            let mut channels = vec![next(Tier::Enterprise), next(Tier::Premium)];
            if !n.is_multiple_of(3) {
                channels.push(next(Tier::Basic));
            }
            if n.is_multiple_of(2) {
                channels.push(next(Tier::Free));
            }
            // Every tenth shares its routed instant with the one before.
            let ms = if n.is_multiple_of(10) { n as i64 - 1 } else { n as i64 };
            batch.push(routed(n, ms, symbol, category, &channels));
        }
        all.push(batch);
    }
    // A duplicate of signal 5 in the last batch, bringing a channel it did not have.
    let mut dup = all[0][4].clone();
    dup.channels = vec![next(Tier::Free)];
    all[5].push(dup);
    all
}

/// Closes of some signals of `batches` (docs/outcomes.md), each taking the next seq of
/// every channel its signal entered, in close order.
fn closes(batches: &[Vec<Routed>]) -> Vec<ClosedSignal> {
    let mut heads = [0u64; 4];
    for (tier, seq) in batches.iter().flatten().flat_map(|r| r.channels.iter()) {
        heads[tier.index()] = heads[tier.index()].max(*seq);
    }
    let statuses = [Status::TargetHit, Status::StopHit, Status::Expired, Status::Closed, Status::TargetHit];
    [3u128, 8, 15, 22, 5]
        .iter()
        .zip(statuses)
        .map(|(&n, status)| {
            let signal = batches.iter().flatten().find(|r| r.signal.id.as_u128() == n).unwrap();
            let mut tiers: Vec<Tier> = batches
                .iter()
                .flatten()
                .filter(|r| r.signal.id.as_u128() == n)
                .flat_map(|r| r.channels.iter().map(|(t, _)| *t))
                .collect();
            tiers.sort();
            tiers.dedup();
            let channels = tiers
                .into_iter()
                .map(|t| {
                    heads[t.index()] += 1;
                    (t, heads[t.index()])
                })
                .collect();
            ClosedSignal {
                id: signal.signal.id,
                status,
                entry: "100".parse().ok(),
                exit: "104.5".parse().ok(),
                return_pct: Some(45_000),
                // Whole microseconds: PostgreSQL keeps a close's time to the µs.
                closed_at: UnixNanos(T0 + 900_000_000_000 + n as i64 * 1_000),
                data: format!(r#"{{"id":"{}","status":"{}","n":{n}}}"#, signal.signal.id, status.as_str()),
                channels,
            }
        })
        .collect()
}

fn queries() -> Vec<Query> {
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query { limit: 7, ..Query::default() };
        f(&mut q);
        q
    };
    vec![
        q(&|_| {}),
        q(&|q| q.limit = 100),
        q(&|q| q.tier = Some(Tier::Free)),
        q(&|q| q.tier = Some(Tier::Basic)),
        q(&|q| q.tier = Some(Tier::Enterprise)),
        q(&|q| q.categories = vec![Category::Crypto]),
        q(&|q| q.categories = vec![Category::Equity, Category::Forex]),
        q(&|q| q.symbol = Some("TCS".into())),
        q(&|q| {
            q.symbol = Some("RELIANCE".into());
            q.exchange = Some("NSE".into());
        }),
        q(&|q| q.exchange = Some("NYSE".into())),
        q(&|q| q.signal_type = Some(SignalType::Sell)),
        q(&|q| q.source = Some(uuid::Uuid::from_u128(0xbeef))),
        q(&|q| {
            q.from = Some(UnixNanos(T0 + 30_000_000));
            q.to = Some(UnixNanos(T0 + 90_000_000));
        }),
        q(&|q| q.status = Some(store::Status::Open)),
        q(&|q| q.status = Some(store::Status::TargetHit)),
        q(&|q| {
            q.status = Some(store::Status::Closed);
            q.tier = Some(Tier::Premium);
        }),
        // A delayed caller's bound, between the closes' times.
        q(&|q| q.events_before = Some(UnixNanos(T0 + 900_000_000_000 + 10_000))),
        q(&|q| {
            q.status = Some(store::Status::Open);
            q.events_before = Some(UnixNanos(T0 + 900_000_000_000 + 10_000));
        }),
        q(&|q| q.active_at = Some(UnixNanos(T0))),
        q(&|q| {
            q.tier = Some(Tier::Basic);
            q.categories = vec![Category::Equity];
            q.signal_type = Some(SignalType::Buy);
            q.from = Some(UnixNanos(T0 + 20_000_000));
        }),
    ]
}

/// Every page of `q`, following the cursors.
fn sqlite_pages(s: &SqliteStore, q: &Query) -> Vec<Page> {
    let mut q = q.clone();
    let mut pages = Vec::new();
    loop {
        let page = s.history(&q).unwrap();
        let next = page.next;
        pages.push(page);
        match next {
            Some(c) => q.cursor = Some(c),
            None => return pages,
        }
    }
}

async fn pg_pages(s: &PgStore, q: &Query) -> Vec<Page> {
    let mut q = q.clone();
    let mut pages = Vec::new();
    loop {
        let page = s.history(&q).await.unwrap();
        let next = page.next;
        pages.push(page);
        match next {
            // Through the opaque form, as a client passes it back.
            Some(c) => q.cursor = Some(Cursor::decode(&c.encode()).unwrap()),
            None => return pages,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_logical_schema_the_same_scenario_gives_the_same_answers_on_sqlite_and_postgres() {
    let pg = Postgres::start();
    let dir = TempDir::new("same");
    let mut lite = SqliteStore::open(&dir.0, Durability::Process).unwrap();
    let post = PgStore::connect(&pg.url(), None).await.unwrap();

    for (i, batch) in batches().iter().enumerate() {
        let a = lite.append(batch).unwrap();
        let b = post.append(batch).await.unwrap();
        assert_eq!((i, a), (i, b), "new signals in batch {i}");
        // Appending a batch again changes nothing, on both.
        if i % 2 == 1 {
            assert_eq!(lite.append(batch).unwrap(), 0);
            assert_eq!(post.append(batch).await.unwrap(), 0);
        }
    }
    // Closes: after their signals, with the next seqs; a second close of the same
    // signal (another tier's topic, a replay) is passed over on both.
    let closes = closes(&batches());
    assert_eq!(lite.append_all(&[], &closes[..3]).unwrap(), 0);
    post.append_all(&[], &closes[..3]).await.unwrap();
    lite.append_all(&[], &closes[2..]).unwrap();
    post.append_all(&[], &closes[2..]).await.unwrap();
    let again = ClosedSignal {
        status: Status::StopHit,
        channels: vec![(Tier::Enterprise, 999)],
        ..closes[0].clone()
    };
    lite.append_all(&[], std::slice::from_ref(&again)).unwrap();
    post.append_all(&[], std::slice::from_ref(&again)).await.unwrap();
    lite.set_epoch(Tier::Premium, u64::MAX - 7).unwrap();
    post.set_epoch(Tier::Premium, u64::MAX - 7).await.unwrap();

    for tier in Tier::ALL {
        assert_eq!(lite.head(tier).unwrap(), post.head(tier).await.unwrap(), "head of {tier:?}");
        assert_eq!(lite.epoch(tier).unwrap(), post.epoch(tier).await.unwrap(), "epoch of {tier:?}");
        for (after, limit) in [(0, 1000), (0, 5), (17, 9), (10_000, 5)] {
            assert_eq!(
                lite.after(tier, after, limit).unwrap(),
                post.after(tier, after, limit).await.unwrap(),
                "after({tier:?}, {after}, {limit})"
            );
        }
    }
    assert_eq!(post.head(Tier::Enterprise).await.unwrap(), 245, "240 signals and 5 closes");
    let tail = post.after(Tier::Enterprise, 240, 10).await.unwrap();
    assert_eq!(
        tail.iter().map(|m| (m.seq, m.outcome)).collect::<Vec<_>>(),
        (241..=245).map(|s| (s, true)).collect::<Vec<_>>()
    );
    assert!(tail[0].data.contains("target_hit"), "{}", tail[0].data);
    assert_eq!(post.epoch(Tier::Premium).await.unwrap(), Some(u64::MAX - 7));
    assert_eq!(post.epoch(Tier::Free).await.unwrap(), None);
    assert_eq!(lite.recent_ids(50).unwrap(), post.recent_ids(50).await.unwrap());

    for q in queries() {
        let a = sqlite_pages(&lite, &q);
        let b = pg_pages(&post, &q).await;
        assert!(!a.is_empty());
        assert_eq!(a, b, "the pages of {q:?}");
        assert_eq!(
            a.iter().map(|p| p.next.map(|c| c.encode())).collect::<Vec<_>>(),
            b.iter().map(|p| p.next.map(|c| c.encode())).collect::<Vec<_>>(),
            "the cursors of {q:?}"
        );
    }
    // A cursor of one backend continues on the other.
    let q = Query { limit: 10, ..Query::default() };
    let first = lite.history(&q).unwrap();
    let cursor = Some(Cursor::decode(&first.next.unwrap().encode()).unwrap());
    assert_eq!(
        lite.history(&Query { cursor, ..q.clone() }).unwrap(),
        post.history(&Query { cursor, ..q }).await.unwrap()
    );
    // The duplicate's extra channel was added to signal 5 on both.
    let five = Query { symbol: Some("RELIANCE".into()), limit: 500, ..Query::default() };
    let item = |p: &Page| p.items.iter().find(|i| i.data.contains("\"n\":5}")).unwrap().channels.clone();
    let channels = item(&post.history(&five).await.unwrap());
    assert_eq!(channels, item(&lite.history(&five).unwrap()));
    assert_eq!(channels.len(), 4, "{channels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_columns_have_the_source_architecture_types_and_values() {
    let pg = Postgres::start();
    let post = PgStore::connect(&pg.url(), None).await.unwrap();
    let r = routed(4, 4, "BTC-USDT", Category::Crypto, &[(Tier::Enterprise, 1), (Tier::Free, 1)]);
    assert_eq!(post.append(std::slice::from_ref(&r)).await.unwrap(), 1);

    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT id::text, source_id::text, symbol, exchange, category, signal_type, entry_price::text,
                    target_price::text, stop_loss::text, quantity_recommended, confidence_level::text,
                    extract(epoch FROM generated_at)::text, expires_at - generated_at = interval '1 hour',
                    analysis_data->>'rsi', market_conditions->>'last', producer_id, ingest_ts, routed_ts,
                    created_at > now() - interval '1 minute', data
             FROM signals.trading_signals",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), r.signal.id.to_string());
    assert_eq!(row.get::<_, String>(1), r.signal.source_id.to_string());
    assert_eq!((row.get::<_, &str>(2), row.get::<_, &str>(3)), ("BTC-USDT", "NSE"));
    assert_eq!((row.get::<_, &str>(4), row.get::<_, &str>(5)), ("crypto", "buy"));
    assert_eq!(
        (row.get::<_, &str>(6), row.get::<_, &str>(7), row.get::<_, &str>(8)),
        ("2456.7500", "2520.0000", "2420.0000"),
        "DECIMAL(15,4)"
    );
    assert_eq!(row.get::<_, Option<i64>>(9), Some(50));
    assert_eq!(row.get::<_, &str>(10), "90.00", "DECIMAL(5,2)");
    assert_eq!(row.get::<_, String>(11), "1795400000.004000", "TIMESTAMPTZ to the microsecond");
    assert!(row.get::<_, bool>(12));
    assert_eq!(row.get::<_, &str>(13), "71.5", "analysis_data is JSONB");
    assert_eq!(row.get::<_, &str>(14), "100.0000", "market_conditions is JSONB");
    assert_eq!(row.get::<_, Option<&str>>(15), Some("model-alpha"));
    assert_eq!((row.get::<_, i64>(16), row.get::<_, i64>(17)), (r.ingest_ts.0, r.routed_ts.0));
    assert!(row.get::<_, bool>(18));
    assert_eq!(row.get::<_, &str>(19), r.data);
    let types: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = 'signals' AND table_name = 'trading_signals'
               AND column_name IN ('id', 'entry_price', 'confidence_level', 'generated_at', 'analysis_data')
             ORDER BY column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let types: Vec<(&str, &str)> = types.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        types,
        [
            ("analysis_data", "jsonb"),
            ("confidence_level", "numeric"),
            ("entry_price", "numeric"),
            ("generated_at", "timestamp with time zone"),
            ("id", "uuid"),
        ]
    );
    // Later facts go in their own rows.
    client
        .execute(
            "INSERT INTO signals.signal_events (signal_id, kind, at, data) VALUES ($1, 'outcome', now(), '{}')",
            &[&r.signal.id],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_when_processes_start_at_once_and_again_is_a_no_op() {
    let pg = Postgres::start();
    let url = pg.url();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect_with(&url, None, 1).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let again = PgStore::connect(&url, None).await.unwrap();
    assert_eq!(again.head(Tier::Free).await.unwrap(), 0);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let n: i64 =
        client.query_one("SELECT count(*) FROM signals.schema_migrations", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "each migration once");

    // An applied migration edited afterwards stops the start, named.
    client
        .execute("UPDATE signals.schema_migrations SET checksum = 'x' WHERE version = 1", &[])
        .await
        .unwrap();
    let err = PgStore::connect(&url, None).await.unwrap_err();
    assert!(err.to_string().contains("V1__signals"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_and_a_bad_url_are_clear_errors() {
    let port = common::pg::free_port();
    let err =
        PgStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"), None).await.unwrap_err();
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    assert!(err.to_string().contains("refused"), "the cause is told: {err}");
    let err = PgStore::connect("postgres://:not-a-port/x", None).await.unwrap_err();
    assert!(err.to_string().contains("invalid database url"), "{err}");
    let err = PgStore::connect(
        "postgres://postgres@127.0.0.1/x",
        Some(std::path::Path::new("/nonexistent/ca.pem")),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_server_is_verified_against_the_ca_file() {
    let dir = TempDir::new("pg-tls");
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let server = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    let other = rcgen::generate_simple_self_signed(names).unwrap();
    let (ca, other_ca) = (dir.0.join("ca.pem"), dir.0.join("other.pem"));
    std::fs::write(&ca, server.cert.pem()).unwrap();
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    // A cluster that accepts TLS only.
    let pg = Postgres::start_tls(&server.cert.pem(), &server.signing_key.serialize_pem());

    let store = PgStore::connect(&pg.url(), Some(&ca)).await.unwrap();
    let r = routed(1, 1, "TCS", Category::Equity, &[(Tier::Enterprise, 1)]);
    assert_eq!(store.append(&[r]).await.unwrap(), 1);
    assert_eq!(store.head(Tier::Enterprise).await.unwrap(), 1);

    // Another CA: the chain is verified, the server refused.
    let err = PgStore::connect(&pg.url(), Some(&other_ca)).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // No CA file: in clear, which this cluster refuses.
    assert!(PgStore::connect(&pg.url(), None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_the_oldest_with_their_closes_and_channels_the_same_on_both() {
    let pg = Postgres::start();
    let dir = TempDir::new("prune");
    let mut lite = SqliteStore::open(&dir.0, Durability::Process).unwrap();
    let post = PgStore::connect(&pg.url(), None).await.unwrap();
    let all = batches();
    for batch in &all {
        lite.append(batch).unwrap();
        post.append(batch).await.unwrap();
    }
    let closes = closes(&all);
    lite.append_all(&[], &closes).unwrap();
    post.append_all(&[], &closes).await.unwrap();
    // Expired (an hour after routing) before T0 + 1 h 100 ms: signals 1..=99 (and 100,
    // routed at 99 ms); 30 at a time. Later ones may still close: kept.
    let before = UnixNanos(T0 + 3_600_000_000_000 + 100_000_000);
    assert_eq!(post.prune(before, 30).await.unwrap(), 30);
    assert_eq!(lite.prune(before, 30).unwrap(), 30);
    let mut pruned = 30;
    loop {
        let (a, b) = (lite.prune(before, 30).unwrap(), post.prune(before, 30).await.unwrap());
        assert_eq!(a, b);
        pruned += a;
        if a < 30 {
            break;
        }
    }
    assert_eq!(pruned, 100, "every signal expired before the bound, and nothing after it");
    assert_eq!(post.prune(before, 30).await.unwrap(), 0);
    let q = Query { limit: 500, tier: Some(Tier::Enterprise), ..Query::default() };
    let (a, b) = (lite.history(&q).unwrap(), post.history(&q).await.unwrap());
    assert_eq!(a, b);
    assert_eq!(b.items.len(), 140, "240 - 100");
    // The closes of pruned signals (3, 8, 15, 22, 5) are gone with them; none is left
    // to read back.
    let tail = post.after(Tier::Enterprise, 240, 10).await.unwrap();
    assert!(tail.is_empty(), "{tail:?}");
}
