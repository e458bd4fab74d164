//! The SQLite backend: one file, `signals.db`, in the data directory.
//!
//! One writer (the pipeline's store thread) appends a batch per transaction: the batch's
//! rows become durable together at the commit (group commit), and only then may its
//! producers be acknowledged. WAL mode lets readers (history, resumes) read while the
//! writer appends.

use std::path::{Path, PathBuf};

use engine::model::{Category, SignalType, Tier, UnixNanos};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter};

use super::{ClosedSignal, Cursor, Item, Page, Query, Routed, StoreError};

/// The schema, in order; the applied count is SQLite's `user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/V1__signals.sql"),
    include_str!("../migrations/sqlite/V2__heads.sql"),
    include_str!("../migrations/sqlite/V3__quota.sql"),
    include_str!("../migrations/sqlite/V4__outcomes.sql"),
    include_str!("../migrations/sqlite/V5__no_generated_columns.sql"),
];

/// The column of `tier`'s seq in `trading_signals`.
fn seq_column(tier: Tier) -> &'static str {
    match tier {
        Tier::Free => "seq_free",
        Tier::Basic => "seq_basic",
        Tier::Premium => "seq_premium",
        Tier::Enterprise => "seq_enterprise",
    }
}

/// One quota charge: `user` was charged for message `seq` of log `log` on UTC `day`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub day: u32,
    pub user: String,
    pub log: u8,
    pub seq: u64,
}

/// Event kinds that close a signal (its outcome, [`crate::Status`]).
const CLOSING: &str = "('target_hit', 'stop_hit', 'expired', 'closed')";

/// One channel message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    /// The SIGNAL_UPDATE data.
    pub data: String,
    pub category: Category,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    pub id: uuid::Uuid,
    /// A signal's close rather than the signal.
    pub outcome: bool,
}

/// When a commit is on the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before it returns (`synchronous = FULL`): an ACK survives a
    /// power loss.
    #[default]
    Full,
    /// Commits are in the write-ahead log, fsynced at checkpoints (`synchronous =
    /// NORMAL`): an ACK survives the process's crash, not the machine's.
    Process,
}

/// How the writer opens the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub durability: Durability,
    /// The most the file may grow to, in bytes (0: as far as the disk allows). Past it a
    /// commit fails as on a full disk.
    pub max_bytes: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The writer holds the data directory's lock for as long as it lives: a second
    /// process on the same directory is refused at start instead of interleaving seqs.
    _lock: Option<std::fs::File>,
}

/// Maps a write error to what it means for the operator.
fn write_error(e: rusqlite::Error, path: &Path) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full,
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::NotWritable { path: path.display().to_string(), reason: e.to_string() }
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.display().to_string(), reason: e.to_string() }
        }
        _ => StoreError::Sqlite(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`. A directory that cannot be created
    /// or written, or a file that is not a store, is an error naming the path.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(dir, Settings { durability, ..Settings::default() })
    }

    /// [`SqliteStore::open`] with every setting. Takes the data directory's lock (the
    /// `LOCK` file): one writer per directory.
    pub fn open_with(dir: &Path, settings: Settings) -> Result<Self, StoreError> {
        Self::open_at(dir, settings, MIGRATIONS.len())
    }

    /// [`open_with`](Self::open_with), the schema migrated up to version `target` (an
    /// older binary's store, for the migrations' tests).
    fn open_at(dir: &Path, settings: Settings, target: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source })?;
        let lock_path = dir.join("LOCK");
        let not_writable =
            |reason: String| StoreError::NotWritable { path: lock_path.display().to_string(), reason };
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| not_writable(e.to_string()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse { path: dir.display().to_string() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(not_writable(e.to_string())),
        }
        let path = dir.join("signals.db");
        let conn = Connection::open(&path).map_err(|e| write_error(e, &path))?;
        let sync = match settings.durability {
            Durability::Full => "FULL",
            Durability::Process => "NORMAL",
        };
        // journal_mode answers with a row; WAL needs a writable directory, so this is
        // where a read-only one shows.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| write_error(e, &path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWritable {
                path: path.display().to_string(),
                reason: format!("write-ahead logging unavailable (journal mode {mode})"),
            });
        }
        // Checkpoints are not the writer's: `checkpoint` runs them from another thread
        // (the WAL would otherwise be copied into the database inside a commit, on the
        // pipeline's thread, every 4 MiB). The writer still checkpoints past 64 MiB of
        // log, for users of the store that run none.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 16384; PRAGMA cache_size = -65536;"
        ))
        .map_err(|e| write_error(e, &path))?;
        let mut store = Self { conn, path, _lock: Some(lock) };
        store.migrate_to(target)?;
        if settings.max_bytes > 0 {
            let page: u64 = store.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (settings.max_bytes / page.max(1)).max(1);
            let _: i64 =
                store.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
        }
        Ok(store)
    }

    /// A connection that only reads (history, resumes from before the ring), beside the
    /// writer: WAL lets it read committed batches while the writer appends.
    pub fn open_reader(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("signals.db");
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| write_error(e, &path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn, path, _lock: None })
    }

    /// Removes up to `max_rows` of the oldest signals routed and expired before `before`
    /// (a signal that may still close is kept), with their channel rows and events, in
    /// one transaction. The channels' heads are kept first,
    /// so that a seq is never reused. Returns how many signals went.
    pub fn prune(&mut self, before: UnixNanos, max_rows: usize) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let err = |e| write_error(e, &path);
        let tx = self.conn.transaction().map_err(err)?;
        for tier in Tier::ALL {
            let col = seq_column(tier);
            tx.execute(
                &format!(
                    "UPDATE channel_epochs SET pruned_head = MAX(pruned_head,
                     COALESCE((SELECT MAX({col}) FROM trading_signals), 0),
                     COALESCE((SELECT MAX({col}) FROM signal_events), 0)) WHERE tier = ?1"
                ),
                [tier.index()],
            )
            .map_err(err)?;
        }
        // Only signals that can no longer close (expired before the bound too): a close
        // always finds its signal, and stays with it.
        let oldest = "SELECT pos FROM trading_signals WHERE routed_ts < ?1 AND expires_at < ?1
                      ORDER BY routed_ts, pos LIMIT ?2";
        let args = params![before.0, max_rows as i64];
        tx.execute(
            &format!(
                "DELETE FROM signal_events WHERE signal_id IN
                 (SELECT id FROM trading_signals WHERE pos IN ({oldest}))"
            ),
            args,
        )
        .map_err(err)?;
        let gone =
            tx.execute(&format!("DELETE FROM trading_signals WHERE pos IN ({oldest})"), args).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(gone)
    }

    /// A connection that writes beside the pipeline's writer (quota charges), in the
    /// same process: SQLite serializes the two writers' transactions.
    pub fn open_side(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("signals.db");
        let conn = Connection::open(&path).map_err(|e| write_error(e, &path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn, path, _lock: None })
    }

    /// Records quota charges (idempotent), and forgets days before `keep_from`.
    pub fn charge(&mut self, charges: &[Charge], keep_from: u32) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| write_error(e, &path);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO quota_charges (day, user_id, log, seq) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for c in charges {
                insert.execute(params![c.day, c.user, c.log, c.seq as i64]).map_err(err)?;
            }
        }
        tx.execute("DELETE FROM quota_charges WHERE day < ?1", [keep_from]).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Every charge of `day`.
    pub fn charges(&self, day: u32) -> Result<Vec<Charge>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user_id, log, seq FROM quota_charges WHERE day = ?1 ORDER BY user_id, log, seq",
        )?;
        let rows = stmt.query_map([day], |r| {
            Ok(Charge { day, user: r.get(0)?, log: r.get(1)?, seq: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Copies the write-ahead log into the database where no reader needs it (a passive
    /// checkpoint: never waits for readers or the writer), so that the log stays short.
    /// Run it from a connection beside the writer, about once a second.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let _: (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(())
    }

    /// Signals stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM trading_signals", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the migrations up to the `target`th. Foreign keys are off meanwhile (a
    /// migration that rebuilds a table needs them off, and they cannot change inside a
    /// transaction) and checked before each commit.
    fn migrate_to(&mut self, target: usize) -> Result<(), StoreError> {
        let path = self.path.clone();
        let applied: usize = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| write_error(e, &path))?;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                reason: format!("schema version {applied} is newer than this binary's {}", MIGRATIONS.len()),
            });
        }
        if applied >= target {
            return Ok(());
        }
        if applied > 0 {
            // An upgrade of a store in use: a rebuild takes time in proportion to it.
            let signals: i64 =
                self.conn.query_row("SELECT COUNT(*) FROM trading_signals", [], |r| r.get(0)).unwrap_or(0);
            tracing::info!(from = applied, to = target, signals, path = %path.display(), "migrating the signal store's schema");
        }
        self.conn.execute_batch("PRAGMA foreign_keys = OFF").map_err(|e| write_error(e, &path))?;
        let migrated = (|| {
            let err = |e| write_error(e, &path);
            for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(applied) {
                let tx = self.conn.transaction().map_err(err)?;
                tx.execute_batch(sql).map_err(err)?;
                let broken: i64 = tx
                    .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
                    .map_err(err)?;
                if broken > 0 {
                    return Err(StoreError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("migration {} leaves {broken} rows with a dangling reference", i + 1),
                    });
                }
                tx.pragma_update(None, "user_version", i + 1).map_err(err)?;
                tx.commit().map_err(err)?;
            }
            Ok(())
        })();
        let on = self.conn.execute_batch("PRAGMA foreign_keys = ON");
        migrated?;
        on.map_err(|e| write_error(e, &path))
    }

    /// Appends a batch in one transaction; returns how many signals were new (a signal
    /// id already stored is left as it is: appending is idempotent by id).
    pub fn append(&mut self, batch: &[Routed]) -> Result<usize, StoreError> {
        self.append_all(batch, &[])
    }

    /// Stores `batch`, then `closes` (of signals in it or stored before), in one
    /// transaction. A close already stored is passed over (a signal closes once).
    /// Returns how many signals were new.
    pub fn append_all(&mut self, batch: &[Routed], closes: &[ClosedSignal]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| write_error(e, &path))?;
        let mut added = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO trading_signals (id, source_id, source_type, producer_id, symbol,
                     exchange, category, signal_type, entry_price, target_price, stop_loss,
                     quantity_recommended, confidence_level, generated_at, expires_at, ingest_ts,
                     routed_ts, created_at, data, seq_free, seq_basic, seq_premium, seq_enterprise)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20, ?21, ?22, ?23)",
                )
                .map_err(|e| write_error(e, &path))?;
            // A stored id gets the channels it did not have (an archiver's append of the
            // same signal from another tier's topic); a seq it has stays.
            let mut more = tx
                .prepare_cached(
                    "UPDATE trading_signals SET seq_free = COALESCE(seq_free, ?2),
                     seq_basic = COALESCE(seq_basic, ?3), seq_premium = COALESCE(seq_premium, ?4),
                     seq_enterprise = COALESCE(seq_enterprise, ?5) WHERE id = ?1",
                )
                .map_err(|e| write_error(e, &path))?;
            let created = UnixNanos::now().0;
            for r in batch {
                let s = &r.signal;
                let id = s.id.hyphenated().to_string();
                let mut seqs: [Option<i64>; 4] = [None; 4];
                for (tier, seq) in &r.channels {
                    seqs[tier.index()] = Some(*seq as i64);
                }
                let new = insert
                    .execute(params![
                        id,
                        s.source_id.hyphenated().to_string(),
                        s.source_type.as_str(),
                        r.producer,
                        s.symbol.as_str(),
                        s.exchange.as_str(),
                        s.category.as_str(),
                        s.signal_type.as_str(),
                        s.entry_price.raw(),
                        s.target_price.raw(),
                        s.stop_loss.raw(),
                        s.quantity_recommended,
                        s.confidence.hundredths(),
                        s.generated_at.0,
                        s.expires_at.0,
                        r.ingest_ts.0,
                        r.routed_ts.0,
                        created,
                        r.data,
                        seqs[0],
                        seqs[1],
                        seqs[2],
                        seqs[3],
                    ])
                    .map_err(|e| write_error(e, &path))?;
                added += new;
                if new == 0 && !r.channels.is_empty() {
                    more.execute(params![id, seqs[0], seqs[1], seqs[2], seqs[3]])
                        .map_err(|e| write_error(e, &path))?;
                }
            }
            if !closes.is_empty() {
                let mut close = tx
                    .prepare_cached(
                        // A close of a signal no longer stored (pruned) is passed over: the
                        // foreign key would refuse it, and a refused commit stops the node.
                        "INSERT OR IGNORE INTO signal_events (signal_id, kind, at, data, entry_price,
                         exit_price, return_pct, seq_free, seq_basic, seq_premium, seq_enterprise)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
                         WHERE EXISTS (SELECT 1 FROM trading_signals WHERE id = ?1)",
                    )
                    .map_err(|e| write_error(e, &path))?;
                // A close stored already gets the channels it did not have (another
                // tier's topic); a seq it has stays.
                let mut more = tx
                    .prepare_cached(&format!(
                        "UPDATE signal_events SET seq_free = COALESCE(seq_free, ?2),
                         seq_basic = COALESCE(seq_basic, ?3), seq_premium = COALESCE(seq_premium, ?4),
                         seq_enterprise = COALESCE(seq_enterprise, ?5) WHERE signal_id = ?1 AND kind IN {CLOSING}"
                    ))
                    .map_err(|e| write_error(e, &path))?;
                for c in closes {
                    let mut seqs: [Option<i64>; 4] = [None; 4];
                    for (tier, seq) in &c.channels {
                        seqs[tier.index()] = Some(*seq as i64);
                    }
                    let new = close
                        .execute(params![
                            c.id.hyphenated().to_string(),
                            c.status.as_str(),
                            c.closed_at.0,
                            c.data,
                            c.entry.map(|p| p.raw()),
                            c.exit.map(|p| p.raw()),
                            c.return_pct,
                            seqs[0],
                            seqs[1],
                            seqs[2],
                            seqs[3],
                        ])
                        .map_err(|e| write_error(e, &path))?;
                    if new == 0
                        && more
                            .execute(params![
                                c.id.hyphenated().to_string(),
                                seqs[0],
                                seqs[1],
                                seqs[2],
                                seqs[3]
                            ])
                            .map_err(|e| write_error(e, &path))?
                            == 0
                    {
                        // Its signal is gone: the seqs it took still count in the heads,
                        // so that none is given again after a restart.
                        for (tier, seq) in &c.channels {
                            tx.execute(
                                "UPDATE channel_epochs SET pruned_head = MAX(pruned_head, ?2) WHERE tier = ?1",
                                params![tier.index(), *seq as i64],
                            )
                            .map_err(|e| write_error(e, &path))?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(|e| write_error(e, &path))?;
        Ok(added)
    }

    /// Records the epoch of `tier`'s log (kept across restarts).
    pub fn set_epoch(&mut self, tier: Tier, epoch: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO channel_epochs (tier, epoch) VALUES (?1, ?2)
                 ON CONFLICT (tier) DO UPDATE SET epoch = excluded.epoch",
                params![tier.index(), epoch as i64],
            )
            .map_err(|e| write_error(e, &self.path))?;
        Ok(())
    }

    /// The epoch recorded for `tier`, if any.
    pub fn epoch(&self, tier: Tier) -> Result<Option<u64>, StoreError> {
        let e: Option<i64> = self
            .conn
            .query_row("SELECT epoch FROM channel_epochs WHERE tier = ?1", [tier.index()], |r| r.get(0))
            .optional()?;
        Ok(e.map(|e| e as u64))
    }

    /// The highest seq `tier` has given (0 if none), pruned messages included.
    pub fn head(&self, tier: Tier) -> Result<u64, StoreError> {
        let col = seq_column(tier);
        let head: Option<i64> = self.conn.query_row(
            &format!(
                "SELECT MAX(COALESCE((SELECT MAX({col}) FROM trading_signals), 0),
                            COALESCE((SELECT MAX({col}) FROM signal_events), 0),
                            COALESCE((SELECT pruned_head FROM channel_epochs WHERE tier = ?1), 0))"
            ),
            [tier.index()],
            |r| r.get(0),
        )?;
        Ok(head.unwrap_or(0) as u64)
    }

    /// Up to `limit` messages of `tier` with seq above `after`, in seq order. What a ring
    /// is rebuilt from, and a resume from before the ring is served from.
    pub fn after(&self, tier: Tier, after: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let col = seq_column(tier);
        // Signals and closes share the channel's seqs: each side in seq order, at most
        // `limit` of each, then merged.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT {col}, data, routed_ts, ingest_ts, category, id, 0 FROM trading_signals
               WHERE {col} > ?1 ORDER BY {col} LIMIT ?2)
             UNION ALL
             SELECT * FROM (SELECT e.{col}, e.data, e.at, e.at, s.category, s.id, 1
               FROM signal_events e JOIN trading_signals s ON s.id = e.signal_id
               WHERE e.{col} > ?1 ORDER BY e.{col} LIMIT ?2)
             ORDER BY 1 LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, bool>(6)?,
            ))
        })?;
        let bad = |what: &str| StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason: what.to_owned(),
        };
        let mut out = Vec::new();
        for row in rows {
            let (seq, data, routed, ingest, category, id, outcome) = row?;
            out.push(Stored {
                outcome,
                seq: seq as u64,
                data,
                routed_ts: UnixNanos(routed),
                ingest_ts: UnixNanos(ingest),
                category: category.parse().map_err(|_| bad("an unknown category"))?,
                id: uuid::Uuid::parse_str(&id).map_err(|_| bad("a signal id that is not a UUID"))?,
            });
        }
        Ok(out)
    }

    /// The ids of the last `n` signals stored, newest first (the de-duplication window).
    pub fn recent_ids(&self, n: usize) -> Result<Vec<uuid::Uuid>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT id FROM trading_signals ORDER BY pos DESC LIMIT ?1")?;
        let ids = stmt.query_map([n as i64], |r| r.get::<_, String>(0))?;
        Ok(ids.filter_map(Result::ok).filter_map(|id| uuid::Uuid::parse_str(&id).ok()).collect())
    }

    /// A page of history, newest first (routed time, then insertion order).
    pub fn history(&self, q: &Query) -> Result<Page, StoreError> {
        // An item is the signal's latest form: its last event (an outcome) or as routed.
        // A delayed caller sees only closes made before its bound (?1, always given).
        let seen = "e.at < ?1";
        let mut sql = format!(
            "SELECT s.pos, s.routed_ts, COALESCE((SELECT e.data FROM signal_events e
                 WHERE e.signal_id = s.id AND {seen} ORDER BY e.event_pos DESC LIMIT 1), s.data),
                 s.seq_free, s.seq_basic, s.seq_premium, s.seq_enterprise
             FROM trading_signals s WHERE 1 = 1"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![q.events_before.map_or(i64::MAX, |t| t.0).into()];
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(t) = q.tier {
            // Entered a channel up to the caller's tier.
            let cols: Vec<String> =
                Tier::ALL[..=t.index()].iter().map(|t| format!("s.{} IS NOT NULL", seq_column(*t))).collect();
            sql.push_str(&format!(" AND ({})", cols.join(" OR ")));
        }
        if !q.categories.is_empty() && q.categories.len() < Category::ALL.len() {
            sql.push_str(" AND s.category IN (");
            for (i, c) in q.categories.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                arg(&mut sql, "?", c.as_str().to_owned().into());
            }
            sql.push(')');
        }
        if let Some(v) = &q.symbol {
            arg(&mut sql, " AND s.symbol = ?", v.clone().into());
        }
        if let Some(v) = &q.exchange {
            arg(&mut sql, " AND s.exchange = ?", v.clone().into());
        }
        if let Some(v) = q.signal_type {
            arg(&mut sql, " AND s.signal_type = ?", sig(v).into());
        }
        if let Some(v) = q.source {
            arg(&mut sql, " AND s.source_id = ?", v.hyphenated().to_string().into());
        }
        match q.status {
            None => {}
            Some(crate::Status::Open) => sql.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM signal_events e WHERE e.signal_id = s.id AND e.kind IN {CLOSING}
                   AND {seen})"
            )),
            Some(closed) => {
                // (`arg` numbers every `?` of its clause: the bound's goes in after.)
                arg(
                    &mut sql,
                    " AND EXISTS (SELECT 1 FROM signal_events e WHERE e.signal_id = s.id AND e.kind = ?",
                    closed.as_str().to_owned().into(),
                );
                sql.push_str(&format!(" AND {seen})"));
            }
        }
        if let Some(v) = q.active_at {
            arg(&mut sql, " AND s.expires_at > ?", v.0.into());
        }
        if let Some(v) = q.from {
            arg(&mut sql, " AND s.routed_ts >= ?", v.0.into());
        }
        if let Some(v) = q.to {
            arg(&mut sql, " AND s.routed_ts < ?", v.0.into());
        }
        if let Some(c) = q.cursor {
            arg(&mut sql, " AND (s.routed_ts, s.pos) < (?", c.routed_ts.into());
            arg(&mut sql, ", ?)", c.pos.into());
        }
        let limit = q.limit.max(1);
        arg(&mut sql, " ORDER BY s.routed_ts DESC, s.pos DESC LIMIT ?", (limit as i64 + 1).into());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        type Row = (i64, i64, String, [Option<i64>; 4]);
        let mut rows: Vec<Row> = stmt
            .query_map(params_from_iter(args.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?]))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next =
            rows.last().filter(|_| more).map(|(pos, routed, _, _)| Cursor { routed_ts: *routed, pos: *pos });
        let items = rows
            .into_iter()
            .map(|(_, routed, data, seqs)| Item {
                data,
                routed_ts: UnixNanos(routed),
                channels: Tier::ALL
                    .into_iter()
                    .zip(seqs)
                    .filter(|(t, _)| q.tier.is_none_or(|max| *t <= max))
                    .filter_map(|(t, seq)| seq.map(|s| (t, s as u64)))
                    .collect(),
            })
            .collect();
        Ok(Page { items, next })
    }
}

impl SqliteStore {
    /// The signals still open (no close stored) that expire after `expiring_after`,
    /// newest last, at most `limit`: what a restarted node tracks again. Each comes with
    /// the tiers that carried it and its data as routed.
    pub fn open_signals(
        &self,
        expiring_after: UnixNanos,
        limit: usize,
    ) -> Result<Vec<engine::outcome::Tracked>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT s.id, s.source_id, s.symbol, s.exchange, s.category, s.signal_type,
                    s.target_price, s.stop_loss, s.expires_at, json_extract(s.data, '$.market.last'),
                    s.seq_free, s.seq_basic, s.seq_premium, s.seq_enterprise, s.data, s.pos
             FROM trading_signals s
             WHERE s.expires_at > ?1 AND NOT EXISTS
                   (SELECT 1 FROM signal_events e WHERE e.signal_id = s.id AND e.kind IN {CLOSING})
             ORDER BY s.pos DESC LIMIT ?2) ORDER BY pos"
        ))?;
        let bad = |what: String| StoreError::Corrupt { path: self.path.display().to_string(), reason: what };
        let rows = stmt.query_map(params![expiring_after.0, limit as i64], |r| {
            let mut tiers = 0u8;
            for (i, col) in (10..14).enumerate() {
                if r.get::<_, Option<i64>>(col)?.is_some() {
                    tiers |= 1 << i;
                }
            }
            Ok((
                [r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                [r.get::<_, i64>(6)?, r.get(7)?, r.get(8)?],
                r.get::<_, Option<String>>(9)?,
                tiers,
                r.get::<_, String>(14)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ([id, source, symbol, exchange, category, kind], [target, stop, expires], last, tiers, data) =
                row?;
            let price =
                |raw: i64| engine::model::Price::from_raw(raw).ok_or_else(|| bad(format!("price {raw}")));
            out.push(engine::outcome::Tracked {
                id: uuid::Uuid::parse_str(&id).map_err(|e| bad(format!("id {id:?}: {e}")))?,
                source_id: uuid::Uuid::parse_str(&source)
                    .map_err(|e| bad(format!("source {source:?}: {e}")))?,
                symbol: engine::model::Symbol::new(&symbol)
                    .map_err(|e| bad(format!("symbol {symbol:?}: {e}")))?,
                exchange: engine::model::Exchange::new(&exchange)
                    .map_err(|e| bad(format!("exchange {exchange:?}: {e}")))?,
                category: category.parse().map_err(|_| bad(format!("category {category:?}")))?,
                signal_type: kind.parse().map_err(|_| bad(format!("signal type {kind:?}")))?,
                target: price(target)?,
                stop: price(stop)?,
                expires_at: UnixNanos(expires),
                entry: last.as_deref().and_then(|l| l.parse().ok()),
                tiers,
                data: data.into_bytes().into(),
            });
        }
        Ok(out)
    }
}

impl SqliteStore {
    /// Every stored signal with its status, for the scoreboard; only `symbol`'s (on
    /// `exchange`, when given) for a symbol's figures.
    pub fn score_rows(
        &self,
        symbol: Option<(&str, Option<&str>)>,
    ) -> Result<Vec<crate::scoreboard::ScoreRow>, StoreError> {
        let mut sql = format!(
            "SELECT s.source_id, s.source_type, s.category, s.signal_type, s.routed_ts,
                    COALESCE(e.kind, 'open'), e.return_pct, s.confidence_level
             FROM trading_signals s
             LEFT JOIN signal_events e ON e.signal_id = s.id AND e.kind IN {CLOSING}"
        );
        let mut args: Vec<String> = Vec::new();
        if let Some((symbol, exchange)) = symbol {
            sql.push_str(" WHERE s.symbol = ?1");
            args.push(symbol.to_owned());
            if let Some(e) = exchange {
                sql.push_str(" AND s.exchange = ?2");
                args.push(e.to_owned());
            }
        }
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let bad = |what: String| StoreError::Corrupt { path: self.path.display().to_string(), reason: what };
        let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
            Ok((
                [r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?],
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ([source, source_type, category, kind, status], routed, return_pct, confidence) = row?;
            out.push(crate::scoreboard::ScoreRow {
                source_id: uuid::Uuid::parse_str(&source)
                    .map_err(|e| bad(format!("source {source:?}: {e}")))?,
                source_type,
                category: category.parse().map_err(|_| bad(format!("category {category:?}")))?,
                signal_type: kind.parse().map_err(|_| bad(format!("signal type {kind:?}")))?,
                routed_ts: UnixNanos(routed),
                status: status.parse().map_err(|()| bad(format!("status {status:?}")))?,
                return_pct,
                confidence,
            });
        }
        Ok(out)
    }
}

fn sig(t: SignalType) -> String {
    t.as_str().to_owned()
}

#[cfg(test)]
mod tests;
