//! The PostgreSQL pool and the embedded migrations.
//!
//! Migrations are SQL files compiled into the binary and applied at start, in order,
//! each in its own transaction, under an advisory lock so that two sidecars starting at
//! once do not race. Applied versions are recorded in `public.schema_migrations`.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// (version, name, SQL), in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "init", include_str!("../migrations/V1__init.sql"))];

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
}

/// A pool of `size` connections to `url` (a libpq-style URL or key=value string).
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let config: tokio_postgres::Config = url.parse().map_err(DbError::Url)?;
    // Fast recycling: pooled connections never LISTEN (the change feed has its own
    // connection) and hold no session state worth resetting.
    let manager =
        Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager).max_size(size).build()?)
}

/// Applies the migrations that are not applied yet; returns how many were.
pub async fn migrate(pool: &Pool) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = apply(&mut client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    result
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<usize, DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.schema_migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done =
            tx.query_opt("SELECT 1 FROM public.schema_migrations WHERE version = $1", &[version]).await?;
        if done.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            applied += 1;
            tracing::info!(version, name, "migration applied");
        }
        tx.commit().await?;
    }
    Ok(applied)
}
