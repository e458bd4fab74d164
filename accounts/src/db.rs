//! The PostgreSQL pool and the embedded migrations.
//!
//! Migrations are SQL files compiled into the binary and applied at start, in order,
//! each in its own transaction, under an advisory lock so that two sidecars starting at
//! once do not race. Applied versions are recorded in `public.schema_migrations` with
//! the SHA-256 of their SQL: a migration edited after it was applied somewhere stops
//! the start with the version named, instead of leaving databases that differ in
//! silence. (A dozen lines here instead of refinery's or sqlx's dependency trees.)

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// (version, name, SQL), in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/V1__init.sql")),
    (2, "admin_audit", include_str!("../migrations/V2__admin_audit.sql")),
    (3, "sealed_keys", include_str!("../migrations/V3__sealed_keys.sql")),
    (4, "producer_rights", include_str!("../migrations/V4__producer_rights.sql")),
    (5, "producer_sources", include_str!("../migrations/V5__producer_sources.sql")),
];

/// An arbitrary constant: the advisory lock key of the migrator.
const MIGRATION_LOCK: i64 = 0x5167_6e61_6c63;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(tokio_postgres::Error),
    #[error("database: {0}")]
    Pg(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("database TLS: {0}")]
    Tls(String),
    /// An applied migration's SQL is not what this binary carries: write a new one.
    #[error(
        "migration V{version}__{name} was applied with checksum {applied}, but this build carries {carried}: \
         applied migrations must not be edited; add a new one"
    )]
    Edited { version: i32, name: String, applied: String, carried: String },
}

/// The SHA-256 of a migration's SQL, hex.
pub fn checksum(sql: &str) -> String {
    crate::secret::hex(&crate::secret::sha256(sql.as_bytes()))
}

/// A pool of `size` connections to `url` (a libpq-style URL or key=value string).
/// How the sidecar reaches PostgreSQL: in clear, or over TLS with the server's
/// certificate chain and name verified against a CA file (re-read when it changes).
#[derive(Clone)]
pub enum DbTls {
    Plain,
    Verified(MakeRustlsConnect),
}

impl std::fmt::Debug for DbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Verified(_) => "Verified",
        })
    }
}

impl DbTls {
    /// TLS verified against `ca` when given, else plain.
    pub fn from_ca(ca: Option<&std::path::Path>) -> Result<Self, DbError> {
        match ca {
            None => Ok(Self::Plain),
            Some(path) => {
                let config = ::tls::client_config(path).map_err(|e| DbError::Tls(e.to_string()))?;
                Ok(Self::Verified(MakeRustlsConnect::new((*config).clone())))
            }
        }
    }

    /// The URL's settings, with TLS required when it is verified (whatever `sslmode`
    /// the URL names: a CA file means the link must be encrypted).
    pub fn config(&self, url: &str) -> Result<tokio_postgres::Config, DbError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
        if let Self::Verified(_) = self {
            config.ssl_mode(SslMode::Require);
        }
        Ok(config)
    }
}

/// A pool of `size` connections; a request waits at most `wait` for one (then the
/// API answers 503), so that a burst cannot queue requests without bound.
pub fn pool(url: &str, size: usize, wait: std::time::Duration, tls: &DbTls) -> Result<Pool, DbError> {
    let config = tls.config(url)?;
    // Fast recycling: pooled connections never LISTEN (the change feed has its own
    // connection) and hold no session state worth resetting.
    let recycling = || ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match tls {
        DbTls::Plain => Manager::from_config(config, NoTls, recycling()),
        DbTls::Verified(t) => Manager::from_config(config, t.clone(), recycling()),
    };
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

/// Applies the migrations that are not applied yet; returns how many were.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    migrate_these(pool, MIGRATIONS).await
}

/// [`migrate`] with a given list (tests use it to edit one).
pub async fn migrate_these(pool: &Pool, migrations: &[(i32, &str, &str)]) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = apply(&mut client, migrations).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    result
}

async fn apply(
    client: &mut deadpool_postgres::Object,
    migrations: &[(i32, &str, &str)],
) -> Result<usize, DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.schema_migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             ALTER TABLE public.schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT",
        )
        .await?;
    let mut applied = 0;
    for (version, name, sql) in migrations {
        let carried = checksum(sql);
        let tx = client.transaction().await?;
        let done = tx
            .query_opt("SELECT checksum FROM public.schema_migrations WHERE version = $1", &[version])
            .await?;
        match done.map(|row| row.get::<_, Option<String>>(0)) {
            None => {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[version, name, &carried],
                )
                .await?;
                applied += 1;
                tracing::info!(version, name, "migration applied");
            }
            // Applied by a build that did not record checksums: record this one.
            Some(None) => {
                tx.execute(
                    "UPDATE public.schema_migrations SET checksum = $2 WHERE version = $1",
                    &[version, &carried],
                )
                .await?;
            }
            Some(Some(recorded)) if recorded != carried => {
                return Err(DbError::Edited {
                    version: *version,
                    name: (*name).to_owned(),
                    applied: recorded,
                    carried,
                });
            }
            Some(Some(_)) => {}
        }
        tx.commit().await?;
    }
    Ok(applied)
}
