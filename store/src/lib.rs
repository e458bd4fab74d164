//! The durable signal store: every routed signal, append-only, with the market snapshot it
//! was routed with and each channel and seq it entered; later facts about a signal (its
//! outcome) in rows of their own.
//!
//! One logical schema, two backends: SQLite (a file in the data directory, compiled in:
//! the embedded default needs no server) and PostgreSQL for deployments. The store is
//! what a restarted node rebuilds its channels from (epochs, heads, rings), what history
//! is read from, and what an ACK waits for.
//!
//! - [`sqlite`]: the SQLite backend.
//! - [`postgres`]: the PostgreSQL backend (schema `signals`), the same methods, async.
//! - [`archive`]: the store as the pipeline's archive (fan-out follows the commit).
//! - [`archiver`]: with Kafka, the process that fills the PostgreSQL store from the
//!   `signals.<tier>` topics (the topics stay the log).
//! - [`Routed`]: what the pipeline hands the store for one routed signal.
//! - [`Query`], [`Page`]: history, newest first, keyset-paginated.

pub mod archive;
pub mod archiver;
pub mod history;
pub mod postgres;
mod readers;
pub mod scoreboard;
pub mod sqlite;

use engine::model::{Category, Signal, SignalType, Tier, UnixNanos};

pub use archive::StoreArchive;
pub use history::StoreHistory;
pub use postgres::PgStore;
pub use readers::Readers;
pub use sqlite::{Charge, Durability, Settings, SqliteStore, Stored};

/// One routed signal as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub signal: Signal,
    /// The producer that sent it (`None` for records whose producer is not known).
    pub producer: Option<String>,
    /// The `data` object of its SIGNAL_UPDATE, as the engine encoded it.
    pub data: String,
    /// The market snapshot it was routed with, as JSON (`None`: no tick was known).
    /// PostgreSQL stores it in its own column; SQLite reads it out of `data` and
    /// ignores this.
    pub market: Option<String>,
    pub ingest_ts: UnixNanos,
    pub routed_ts: UnixNanos,
    /// Each channel (tier) it entered, with its seq there.
    pub channels: Vec<(Tier, u64)>,
}

/// A signal's close as stored: a later fact about it, in its own row
/// (`signal_events`), with the seq its SIGNAL_UPDATE took on each channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedSignal {
    pub id: uuid::Uuid,
    pub status: Status,
    pub entry: Option<engine::model::Price>,
    pub exit: Option<engine::model::Price>,
    /// Ten-thousandths of a percent.
    pub return_pct: Option<i64>,
    pub closed_at: UnixNanos,
    /// The `data` of its SIGNAL_UPDATE (the signal with its status and outcome).
    pub data: String,
    pub channels: Vec<(Tier, u64)>,
}

/// Why the store failed. Opening names the path and what to do; writing says whether
/// the disk is full or read-only, since the node then stops acknowledging.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error(
        "the signal store {path} cannot be written ({reason}): give the process a writable \
         data directory (--data-dir, [store] data_dir)"
    )]
    NotWritable { path: String, reason: String },
    #[error("the signal store {path} is not a signalcast store, or is damaged: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the disk holding the signal store is full (or the store reached its max_size_mb)")]
    Full,
    #[error(
        "the data directory {path} is in use by another signalcast process: give each \
         process its own (--data-dir, [store] data_dir)"
    )]
    InUse { path: String },
    #[error("the signal store failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a bad history cursor")]
    BadCursor,
    #[error("the PostgreSQL signal store failed: {}", chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the PostgreSQL signal store cannot be reached: {}", chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A database URL that does not parse, a CA file that cannot be read.
    #[error("the PostgreSQL signal store's settings: {0}")]
    Settings(String),
    /// An applied migration's SQL is not what this binary carries.
    #[error(
        "signal store migration V{version}__{name} was applied with another checksum: applied \
         migrations must not be edited; add a new one"
    )]
    MigrationEdited { version: i32, name: String },
}

/// An error and its causes, `: `-separated (tokio-postgres's errors name only their
/// kind, "db error", and keep the server's message as their source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A history request: what the caller may see and what they ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only signals that entered a channel at or below this tier (the caller's).
    pub tier: Option<Tier>,
    /// Only signals of these categories (empty: all).
    pub categories: Vec<Category>,
    pub symbol: Option<String>,
    pub exchange: Option<String>,
    pub signal_type: Option<SignalType>,
    pub source: Option<uuid::Uuid>,
    /// Only signals whose latest status is this.
    pub status: Option<Status>,
    /// Only signals that have not expired at this time.
    pub active_at: Option<UnixNanos>,
    /// Routed at or after / strictly before (ns since the epoch).
    pub from: Option<UnixNanos>,
    pub to: Option<UnixNanos>,
    /// Items per page.
    pub limit: usize,
    /// Where the previous page ended ([`Page::next`]).
    /// Closes made at or after this are not shown yet (a delayed caller's view: a
    /// signal shows as it was routed, and `status` filters on what was known then).
    pub events_before: Option<UnixNanos>,
    pub cursor: Option<Cursor>,
}

/// Where a signal stands: `open` from routing, then closed once by its outcome.
pub use engine::outcome::Status;

/// One history item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The SIGNAL_UPDATE `data`.
    pub data: String,
    pub routed_ts: UnixNanos,
    /// The seq it had on each channel it entered.
    pub channels: Vec<(Tier, u64)>,
}

/// A page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// Where the next (older) page starts, if there may be one.
    pub next: Option<Cursor>,
}

/// A position in the store's order (routed time, then insertion), opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    routed_ts: i64,
    pos: i64,
}

impl Cursor {
    /// The opaque form clients pass back: hex of both numbers.
    pub fn encode(&self) -> String {
        format!("{:016x}{:016x}", self.routed_ts as u64, self.pos as u64)
    }

    pub fn decode(s: &str) -> Result<Self, StoreError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BadCursor);
        }
        let part =
            |r: std::ops::Range<usize>| u64::from_str_radix(&s[r], 16).map_err(|_| StoreError::BadCursor);
        Ok(Self { routed_ts: part(0..16)? as i64, pos: part(16..32)? as i64 })
    }
}
