//! `signalcast-accounts seed --file fixtures/accounts.toml`: the dev users, one plan
//! per tier, their signal subscriptions. Idempotent: a second run updates in place.

use serde::Deserialize;

/// The file's shape (the gateway's embedded default reads the same file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<User>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    id: String,
    email: String,
    tier: engine::model::Tier,
    categories: Vec<engine::model::Category>,
    #[serde(default = "yes")]
    real_time_access: bool,
    #[serde(default)]
    max_signals_per_day: Option<u32>,
    #[serde(default)]
    suspended: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("accounts file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("password hashing failed")]
    Hash,
}

/// Loads `toml` (accounts.toml) with `password` for every user; returns the count.
pub async fn seed(pool: &deadpool_postgres::Pool, toml: &str, password: &str) -> Result<usize, SeedError> {
    let file: File = toml::from_str(toml)?;
    let hash = crate::password::hash(password).map_err(|_| SeedError::Hash)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for tier in engine::model::Tier::ALL {
        let (id, name) = (tier.as_str(), format!("{} (seeded)", tier.as_str()));
        tx.execute(
            "INSERT INTO finance.subscription_plans (id, name, tier) VALUES ($1, $2, $1) ON CONFLICT (id) DO NOTHING",
            &[&id, &name],
        )
        .await?;
    }
    for u in &file.user {
        let status = if u.suspended { "suspended" } else { "active" };
        tx.execute(
            "INSERT INTO user_management.users (id, email, password_hash, status) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET email = $2, password_hash = $3, status = $4, updated_at = now()",
            &[&u.id, &u.email, &hash, &status],
        )
        .await?;
        let categories: Vec<&str> = u.categories.iter().map(|c| c.as_str()).collect();
        let limit = u.max_signals_per_day.and_then(|l| i32::try_from(l).ok());
        tx.execute(
            "INSERT INTO signals.signal_subscriptions (user_id, categories, max_signals_per_day, real_time_access)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET categories = $2, max_signals_per_day = $3,
                 real_time_access = $4, updated_at = now()",
            &[&u.id, &categories, &limit, &u.real_time_access],
        )
        .await?;
        tx.execute(
            "UPDATE finance.user_subscriptions SET status = 'cancelled', ended_at = now()
             WHERE user_id = $1 AND status = 'active' AND plan_id <> $2",
            &[&u.id, &u.tier.as_str()],
        )
        .await?;
        tx.execute(
            "INSERT INTO finance.user_subscriptions (user_id, plan_id)
             SELECT $1, $2 WHERE NOT EXISTS (
                 SELECT 1 FROM finance.user_subscriptions WHERE user_id = $1 AND status = 'active')",
            &[&u.id, &u.tier.as_str()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(file.user.len())
}
