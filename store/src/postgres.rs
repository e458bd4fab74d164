//! The PostgreSQL backend: the same logical schema as [`crate::sqlite`], in the schema
//! `signals` (migrations/postgres), and the same methods, async.
//!
//! Connections come from a pool (tokio-postgres through deadpool, as in accounts/), in
//! clear or over TLS verified against a CA file. The migrations are compiled in and
//! applied at [`PgStore::connect`], all in one transaction under a transaction-scoped
//! advisory lock: two processes starting at once apply them once, and the second waits
//! for the first. Applied versions are kept in `signals.schema_migrations` with the
//! SHA-256 of their SQL; one edited after it was applied stops the start.
//!
//! A batch is appended in one transaction with two statements whatever its size (the
//! rows travel as arrays): idempotent by signal id, and a channel row (tier, seq) is
//! written at most once. Positions (`pos`, the keyset order) are taken only by rows that
//! are new, so the same appends give the same positions, and cursors, as SQLite.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use engine::model::{Category, Tier, UnixNanos};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{ClosedSignal, Cursor, Item, Page, Query, Routed, StoreError, Stored};

/// (version, name, SQL), in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "signals", include_str!("../migrations/postgres/V1__signals.sql")),
    (2, "outcomes", include_str!("../migrations/postgres/V2__outcomes.sql")),
];

/// The advisory lock key of the store's migrator (another key than accounts/' own).
const MIGRATION_LOCK: i64 = 0x5167_6e61_6c73;

/// Connections the pool holds by default: the archiver's writer and a few readers.
const DEFAULT_POOL_SIZE: usize = 8;

/// Where a row that cannot be read back came from, for [`StoreError::Corrupt`].
const WHERE: &str = "PostgreSQL signals.trading_signals";

/// See the module docs. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore").field("size", &status.size).field("available", &status.available).finish()
    }
}

/// The SHA-256 of a migration's SQL, hex.
fn checksum(sql: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sql.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A time of the signal's own (generated, expires) for a TIMESTAMPTZ column
/// (microseconds: PostgreSQL's precision).
fn system_time(t: UnixNanos) -> SystemTime {
    let n = t.0;
    if n >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(n.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt { path: WHERE.to_owned(), reason: reason.to_owned() }
}

fn tier_of(t: i16) -> Result<Tier, StoreError> {
    usize::try_from(t).ok().and_then(|t| Tier::ALL.get(t).copied()).ok_or_else(|| corrupt("an unknown tier"))
}

fn tier_index(t: Tier) -> i16 {
    // Four tiers: the index always fits.
    t.index() as i16
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string), over TLS verified
    /// against `ca_file` when given (then TLS is required, whatever `sslmode` the URL
    /// names), and applies the migrations that are not applied yet.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        Self::connect_with(url, ca_file, DEFAULT_POOL_SIZE).await
    }

    /// [`Self::connect`] with a pool of `pool_size` connections.
    pub async fn connect_with(
        url: &str,
        ca_file: Option<&Path>,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let store = Self::pool(url, ca_file, pool_size)?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store that only reads (a gateway's history), with credentials that may only
    /// read: no migration is attempted; the first query fails clearly if the schema is
    /// not there yet (the archiver creates it).
    pub async fn connect_reader(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let store = Self::pool(url, ca_file, DEFAULT_POOL_SIZE)?;
        // One round trip now, so that a wrong URL or password stops the start.
        let client = store.pool.get().await.map_err(|e| StoreError::Settings(e.to_string()))?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(store)
    }

    fn pool(url: &str, ca_file: Option<&Path>, pool_size: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Settings(format!("invalid database url: {e}")))?;
        // Fast recycling: pooled connections hold no session state worth resetting.
        let recycling = || ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match ca_file {
            None => Manager::from_config(config, NoTls, recycling()),
            Some(path) => {
                let tls = ::tls::client_config(path)
                    .map_err(|e| StoreError::Settings(format!("database CA file {}: {e}", path.display())))?;
                config.ssl_mode(SslMode::Require);
                Manager::from_config(config, MakeRustlsConnect::new((*tls).clone()), recycling())
            }
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Settings(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Applies the migrations that are not applied yet; returns how many were.
    async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Held to the commit: a second process waits here, then finds them applied.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS signals;
             CREATE TABLE IF NOT EXISTS signals.schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 checksum   TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let mut applied = 0;
        for (version, name, sql) in MIGRATIONS {
            let carried = checksum(sql);
            let done = tx
                .query_opt("SELECT checksum FROM signals.schema_migrations WHERE version = $1", &[version])
                .await?;
            match done.map(|row| row.get::<_, String>(0)) {
                None => {
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO signals.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        &[version, name, &carried],
                    )
                    .await?;
                    applied += 1;
                    tracing::info!(version, name, "signal store migration applied");
                }
                Some(recorded) if recorded != carried => {
                    return Err(StoreError::MigrationEdited { version: *version, name: (*name).to_owned() });
                }
                Some(_) => {}
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Appends a batch in one transaction; returns how many signals were new (a signal
    /// id already stored is left as it is: appending is idempotent by id; its channel
    /// rows not yet stored are added).
    pub async fn append(&self, batch: &[Routed]) -> Result<usize, StoreError> {
        self.append_with_offsets(batch, &[], &[]).await
    }

    /// Stores `batch`, then `closes` (of signals in it or stored before; a close of a
    /// signal not stored is passed over, as is a second close of one), in one
    /// transaction; as [`SqliteStore::append_all`](crate::SqliteStore::append_all).
    pub async fn append_all(&self, batch: &[Routed], closes: &[ClosedSignal]) -> Result<usize, StoreError> {
        self.append_with_offsets(batch, closes, &[]).await
    }

    /// [`Self::append`], and in the same transaction the archiver's progress: for each
    /// (topic, partition), the next offset to read (never moved back).
    pub(crate) async fn append_with_offsets(
        &self,
        batch: &[Routed],
        closes: &[ClosedSignal],
        offsets: &[(String, i32, i64)],
    ) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let added = insert(&tx, batch).await?;
        if !closes.is_empty() {
            insert_closes(&tx, closes).await?;
        }
        if !offsets.is_empty() {
            let topics: Vec<&str> = offsets.iter().map(|(t, _, _)| t.as_str()).collect();
            let partitions: Vec<i32> = offsets.iter().map(|(_, p, _)| *p).collect();
            let next: Vec<i64> = offsets.iter().map(|(_, _, o)| *o).collect();
            tx.execute(
                "INSERT INTO signals.archive_offsets (topic, partition, next_offset)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])
                 ON CONFLICT (topic, partition) DO UPDATE
                 SET next_offset = GREATEST(signals.archive_offsets.next_offset, excluded.next_offset)",
                &[&topics, &partitions, &next],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Removes up to `max_rows` of the oldest signals routed and expired before `before`
    /// (a signal that may still close is kept), with their closes and channel rows, in
    /// one transaction; returns how many went. The archiver
    /// calls it in short transactions so that pruning never holds its commits back.
    pub async fn prune(&self, before: UnixNanos, max_rows: usize) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let old = tx
            .query(
                // Only signals that can no longer close (expired before the bound too).
                "SELECT pos, id FROM signals.trading_signals WHERE routed_ts < $1 AND expires_at < $3
                 ORDER BY routed_ts, pos LIMIT $2 FOR UPDATE",
                &[&before.0, &(max_rows as i64), &system_time(before)],
            )
            .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let positions: Vec<i64> = old.iter().map(|r| r.get(0)).collect();
        let ids: Vec<uuid::Uuid> = old.iter().map(|r| r.get(1)).collect();
        // Channel rows name both the signal and its close: they go first.
        tx.execute("DELETE FROM signals.signal_channels WHERE pos = ANY($1)", &[&positions]).await?;
        tx.execute("DELETE FROM signals.signal_events WHERE signal_id = ANY($1)", &[&ids]).await?;
        let gone =
            tx.execute("DELETE FROM signals.trading_signals WHERE pos = ANY($1)", &[&positions]).await?;
        tx.commit().await?;
        Ok(gone as usize)
    }

    /// The archiver's progress: (topic, partition, next offset to read).
    pub async fn archive_offsets(&self) -> Result<Vec<(String, i32, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT topic, partition, next_offset FROM signals.archive_offsets ORDER BY topic, partition",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Records the epoch of `tier`'s log.
    pub async fn set_epoch(&self, tier: Tier, epoch: u64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO signals.channel_epochs (tier, epoch) VALUES ($1, $2)
                 ON CONFLICT (tier) DO UPDATE SET epoch = excluded.epoch",
                &[&tier_index(tier), &(epoch as i64)],
            )
            .await?;
        Ok(())
    }

    /// The epoch recorded for `tier`, if any.
    pub async fn epoch(&self, tier: Tier) -> Result<Option<u64>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt("SELECT epoch FROM signals.channel_epochs WHERE tier = $1", &[&tier_index(tier)])
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    /// The highest seq stored for `tier` (0 if none).
    pub async fn head(&self, tier: Tier) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT MAX(seq) FROM signals.signal_channels WHERE tier = $1", &[&tier_index(tier)])
            .await?;
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0) as u64)
    }

    /// Up to `limit` messages of `tier` with seq above `after`, in seq order.
    pub async fn after(&self, tier: Tier, after: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                // A close's seq names its event: its data, and its time (µs) as routed
                // and ingest time.
                "SELECT c.seq, COALESCE(e.data, s.data),
                        COALESCE((extract(epoch FROM e.at) * 1000000)::int8 * 1000, s.routed_ts),
                        COALESCE((extract(epoch FROM e.at) * 1000000)::int8 * 1000, s.ingest_ts),
                        s.category, s.id, c.event_pos IS NOT NULL
                 FROM signals.signal_channels c JOIN signals.trading_signals s ON s.pos = c.pos
                 LEFT JOIN signals.signal_events e ON e.event_pos = c.event_pos
                 WHERE c.tier = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3",
                &[&tier_index(tier), &(after as i64), &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Stored {
                    seq: r.get::<_, i64>(0) as u64,
                    data: r.get(1),
                    routed_ts: UnixNanos(r.get(2)),
                    ingest_ts: UnixNanos(r.get(3)),
                    category: r.get::<_, &str>(4).parse().map_err(|_| corrupt("an unknown category"))?,
                    outcome: r.get(6),
                    id: r.get(5),
                })
            })
            .collect()
    }

    /// Every stored signal with its status, for the scoreboard (as
    /// [`SqliteStore::score_rows`](crate::SqliteStore::score_rows)); the return is read
    /// out of the close's data.
    pub async fn score_rows(
        &self,
        symbol: Option<(&str, Option<&str>)>,
    ) -> Result<Vec<crate::scoreboard::ScoreRow>, StoreError> {
        let client = self.pool.get().await?;
        let mut sql = String::from(
            "SELECT s.source_id, s.source_type, s.category, s.signal_type, s.routed_ts,
                    COALESCE(e.kind, 'open'), e.data::jsonb #>> '{outcome,return_pct}',
                    (s.confidence_level * 100)::bigint
             FROM signals.trading_signals s
             LEFT JOIN signals.signal_events e ON e.signal_id = s.id
                  AND e.kind IN ('target_hit', 'stop_hit', 'expired', 'closed')",
        );
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let (sym, exch);
        if let Some((symbol, exchange)) = symbol {
            sym = symbol.to_owned();
            sql.push_str(" WHERE s.symbol = $1");
            args.push(&sym);
            if let Some(e) = exchange {
                exch = e.to_owned();
                sql.push_str(" AND s.exchange = $2");
                args.push(&exch);
            }
        }
        let rows = client.query(&sql, &args).await?;
        rows.iter()
            .map(|r| {
                let text = |i: usize| r.get::<_, &str>(i);
                Ok(crate::scoreboard::ScoreRow {
                    source_id: r.get(0),
                    source_type: text(1).to_owned(),
                    category: text(2).parse().map_err(|_| corrupt("an unknown category"))?,
                    signal_type: text(3).parse().map_err(|_| corrupt("an unknown signal type"))?,
                    routed_ts: UnixNanos(r.get(4)),
                    status: text(5).parse().map_err(|()| corrupt("an unknown status"))?,
                    return_pct: r.get::<_, Option<&str>>(6).and_then(crate::scoreboard::parse_return),
                    confidence: r.get(7),
                })
            })
            .collect()
    }

    /// The ids of the last `n` signals stored, newest first (the de-duplication window).
    pub async fn recent_ids(&self, n: usize) -> Result<Vec<uuid::Uuid>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT id FROM signals.trading_signals ORDER BY pos DESC LIMIT $1", &[&(n as i64)])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A page of history, newest first (routed time, then insertion order): the same
    /// filters, order and cursors as [`crate::SqliteStore::history`].
    pub async fn history(&self, q: &Query) -> Result<Page, StoreError> {
        // An item is the signal's latest form: its last event (an outcome) or as routed.
        // A delayed caller sees only closes made before its bound ($1, always given).
        let seen = "e.at < $1";
        let mut sql = format!(
            "SELECT s.pos, s.routed_ts, COALESCE((SELECT e.data FROM signals.signal_events e
                 WHERE e.signal_id = s.id AND {seen} ORDER BY e.event_pos DESC LIMIT 1), s.data)
             FROM signals.trading_signals s WHERE true"
        );
        let bound =
            q.events_before.map_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40), system_time);
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(bound)];
        let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(t) = q.tier {
            arg(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM signals.signal_channels c WHERE c.pos = s.pos AND c.tier <= ?)",
                Box::new(tier_index(t)),
            );
        }
        if !q.categories.is_empty() && q.categories.len() < Category::ALL.len() {
            let categories: Vec<String> = q.categories.iter().map(|c| c.as_str().to_owned()).collect();
            arg(&mut sql, " AND s.category = ANY(?)", Box::new(categories));
        }
        if let Some(v) = &q.symbol {
            arg(&mut sql, " AND s.symbol = ?", Box::new(v.clone()));
        }
        if let Some(v) = &q.exchange {
            arg(&mut sql, " AND s.exchange = ?", Box::new(v.clone()));
        }
        if let Some(v) = q.signal_type {
            arg(&mut sql, " AND s.signal_type = ?", Box::new(v.as_str().to_owned()));
        }
        if let Some(v) = q.source {
            arg(&mut sql, " AND s.source_id = ?", Box::new(v));
        }
        match q.status {
            None => {}
            Some(crate::Status::Open) => sql.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM signals.signal_events e WHERE e.signal_id = s.id
                   AND e.kind IN ('target_hit', 'stop_hit', 'expired', 'closed') AND {seen})"
            )),
            Some(closed) => arg(
                &mut sql,
                &format!(
                    " AND EXISTS (SELECT 1 FROM signals.signal_events e WHERE e.signal_id = s.id AND {seen} AND e.kind = ?)"
                ),
                Box::new(closed.as_str().to_owned()),
            ),
        }
        if let Some(v) = q.active_at {
            arg(&mut sql, " AND s.expires_at > ?", Box::new(system_time(v)));
        }
        if let Some(v) = q.from {
            arg(&mut sql, " AND s.routed_ts >= ?", Box::new(v.0));
        }
        if let Some(v) = q.to {
            arg(&mut sql, " AND s.routed_ts < ?", Box::new(v.0));
        }
        if let Some(c) = q.cursor {
            arg(&mut sql, " AND (s.routed_ts, s.pos) < (?", Box::new(c.routed_ts));
            arg(&mut sql, ", ?)", Box::new(c.pos));
        }
        let limit = q.limit.max(1);
        arg(&mut sql, " ORDER BY s.routed_ts DESC, s.pos DESC LIMIT ?", Box::new(limit as i64 + 1));
        let client = self.pool.get().await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let stmt = client.prepare_cached(&sql).await?;
        let mut rows: Vec<(i64, i64, String)> =
            client.query(&stmt, &params).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let more = rows.len() > limit;
        rows.truncate(limit);
        // Every item's channels in one query.
        let positions: Vec<i64> = rows.iter().map(|(pos, _, _)| *pos).collect();
        let mut channels: HashMap<i64, Vec<(Tier, u64)>> = HashMap::with_capacity(rows.len());
        let channel_rows = client
            .query(
                "SELECT pos, tier, seq FROM signals.signal_channels
                 WHERE pos = ANY($1) AND event_pos IS NULL ORDER BY pos, tier",
                &[&positions],
            )
            .await?;
        for r in &channel_rows {
            let tier = tier_of(r.get(1))?;
            if q.tier.is_none_or(|max| tier <= max) {
                channels.entry(r.get(0)).or_default().push((tier, r.get::<_, i64>(2) as u64));
            }
        }
        let next =
            rows.last().filter(|_| more).map(|(pos, routed, _)| Cursor { routed_ts: *routed, pos: *pos });
        let items = rows
            .into_iter()
            .map(|(pos, routed, data)| Item {
                data,
                routed_ts: UnixNanos(routed),
                channels: channels.remove(&pos).unwrap_or_default(),
            })
            .collect();
        Ok(Page { items, next })
    }
}

/// The batch's rows as arrays, one entry per signal id (the first one's fields), and
/// every channel row of the batch.
async fn insert(tx: &impl GenericClient, batch: &[Routed]) -> Result<usize, StoreError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut first: HashMap<uuid::Uuid, ()> = HashMap::with_capacity(batch.len());
    let unique: Vec<&Routed> = batch.iter().filter(|r| first.insert(r.signal.id, ()).is_none()).collect();
    let ids: Vec<uuid::Uuid> = unique.iter().map(|r| r.signal.id).collect();
    let source_ids: Vec<uuid::Uuid> = unique.iter().map(|r| r.signal.source_id).collect();
    let source_types: Vec<&str> = unique.iter().map(|r| r.signal.source_type.as_str()).collect();
    let producers: Vec<Option<&str>> = unique.iter().map(|r| r.producer.as_deref()).collect();
    let symbols: Vec<&str> = unique.iter().map(|r| r.signal.symbol.as_str()).collect();
    let exchanges: Vec<&str> = unique.iter().map(|r| r.signal.exchange.as_str()).collect();
    let categories: Vec<&str> = unique.iter().map(|r| r.signal.category.as_str()).collect();
    let types: Vec<&str> = unique.iter().map(|r| r.signal.signal_type.as_str()).collect();
    let entry: Vec<i64> = unique.iter().map(|r| r.signal.entry_price.raw()).collect();
    let target: Vec<i64> = unique.iter().map(|r| r.signal.target_price.raw()).collect();
    let stop: Vec<i64> = unique.iter().map(|r| r.signal.stop_loss.raw()).collect();
    let quantity: Vec<Option<i64>> =
        unique.iter().map(|r| r.signal.quantity_recommended.map(i64::from)).collect();
    let confidence: Vec<i32> = unique.iter().map(|r| i32::from(r.signal.confidence.hundredths())).collect();
    let generated: Vec<SystemTime> = unique.iter().map(|r| system_time(r.signal.generated_at)).collect();
    let expires: Vec<SystemTime> = unique.iter().map(|r| system_time(r.signal.expires_at)).collect();
    let analysis: Vec<Option<&str>> =
        unique.iter().map(|r| r.signal.analysis.as_ref().map(|a| a.as_str())).collect();
    let market: Vec<Option<&str>> = unique.iter().map(|r| r.market.as_deref()).collect();
    let ingest: Vec<i64> = unique.iter().map(|r| r.ingest_ts.0).collect();
    let routed: Vec<i64> = unique.iter().map(|r| r.routed_ts.0).collect();
    let data: Vec<&str> = unique.iter().map(|r| r.data.as_str()).collect();
    // Ids already stored are filtered before the insert so that they take no position
    // (an identity value is drawn for every row an INSERT tries); ON CONFLICT covers a
    // concurrent writer of the same id.
    let added = tx
        .execute(
            "INSERT INTO signals.trading_signals (id, source_id, source_type, producer_id, symbol, exchange,
                 category, signal_type, entry_price, target_price, stop_loss, quantity_recommended,
                 confidence_level, generated_at, expires_at, analysis_data, market_conditions, ingest_ts,
                 routed_ts, data)
             SELECT u.id, u.source_id, u.source_type, u.producer_id, u.symbol, u.exchange, u.category,
                 u.signal_type, u.entry_price::numeric / 10000, u.target_price::numeric / 10000,
                 u.stop_loss::numeric / 10000, u.quantity, u.confidence::numeric / 100, u.generated_at,
                 u.expires_at, u.analysis::jsonb, u.market::jsonb, u.ingest_ts, u.routed_ts, u.data
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                 $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int4[],
                 $14::timestamptz[], $15::timestamptz[], $16::text[], $17::text[], $18::int8[], $19::int8[],
                 $20::text[])
                 WITH ORDINALITY AS u(id, source_id, source_type, producer_id, symbol, exchange, category,
                 signal_type, entry_price, target_price, stop_loss, quantity, confidence, generated_at,
                 expires_at, analysis, market, ingest_ts, routed_ts, data, ord)
             WHERE NOT EXISTS (SELECT 1 FROM signals.trading_signals t WHERE t.id = u.id)
             ORDER BY u.ord
             ON CONFLICT (id) DO NOTHING",
            &[
                &ids,
                &source_ids,
                &source_types,
                &producers,
                &symbols,
                &exchanges,
                &categories,
                &types,
                &entry,
                &target,
                &stop,
                &quantity,
                &confidence,
                &generated,
                &expires,
                &analysis,
                &market,
                &ingest,
                &routed,
                &data,
            ],
        )
        .await?;
    let mut tiers = Vec::new();
    let mut seqs = Vec::new();
    let mut of = Vec::new();
    for r in batch {
        for (tier, seq) in &r.channels {
            tiers.push(tier_index(*tier));
            seqs.push(*seq as i64);
            of.push(r.signal.id);
        }
    }
    if !tiers.is_empty() {
        tx.execute(
            "INSERT INTO signals.signal_channels (tier, seq, pos)
             SELECT c.tier, c.seq, t.pos
             FROM unnest($1::int2[], $2::int8[], $3::uuid[]) AS c(tier, seq, id)
             JOIN signals.trading_signals t ON t.id = c.id
             ON CONFLICT DO NOTHING",
            &[&tiers, &seqs, &of],
        )
        .await?;
    }
    Ok(added as usize)
}

/// Closes' event rows, then their channel rows (the close's seqs, naming its event).
async fn insert_closes(
    tx: &tokio_postgres::Transaction<'_>,
    closes: &[ClosedSignal],
) -> Result<(), StoreError> {
    let ids: Vec<uuid::Uuid> = closes.iter().map(|c| c.id).collect();
    let kinds: Vec<&str> = closes.iter().map(|c| c.status.as_str()).collect();
    let at: Vec<SystemTime> = closes.iter().map(|c| system_time(c.closed_at)).collect();
    let data: Vec<&str> = closes.iter().map(|c| c.data.as_str()).collect();
    tx.execute(
        "INSERT INTO signals.signal_events (signal_id, kind, at, data)
         SELECT u.id, u.kind, u.at, u.data
         FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) AS u(id, kind, at, data)
         WHERE EXISTS (SELECT 1 FROM signals.trading_signals t WHERE t.id = u.id)
         ON CONFLICT (signal_id) WHERE kind IN ('target_hit', 'stop_hit', 'expired', 'closed') DO NOTHING",
        &[&ids, &kinds, &at, &data],
    )
    .await?;
    let (mut tiers, mut seqs, mut of) = (Vec::new(), Vec::new(), Vec::new());
    for c in closes {
        for (tier, seq) in &c.channels {
            tiers.push(tier_index(*tier));
            seqs.push(*seq as i64);
            of.push(c.id);
        }
    }
    if !tiers.is_empty() {
        tx.execute(
            "INSERT INTO signals.signal_channels (tier, seq, pos, event_pos)
             SELECT c.tier, c.seq, t.pos, e.event_pos
             FROM unnest($1::int2[], $2::int8[], $3::uuid[]) AS c(tier, seq, id)
             JOIN signals.trading_signals t ON t.id = c.id
             JOIN signals.signal_events e ON e.signal_id = c.id
                  AND e.kind IN ('target_hit', 'stop_hit', 'expired', 'closed')
             -- A close stored already gets the channels it did not have; a seq it has stays.
             WHERE NOT EXISTS (SELECT 1 FROM signals.signal_channels x
                               WHERE x.event_pos = e.event_pos AND x.tier = c.tier)
             ON CONFLICT DO NOTHING",
            &[&tiers, &seqs, &of],
        )
        .await?;
    }
    Ok(())
}
