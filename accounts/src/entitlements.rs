//! What a user may receive, computed from the tables: the tier of their active
//! subscription's plan (free without one), their signal subscription (categories,
//! real-time access, daily limit), their status.

pub use contract::Entitlements;
use engine::model::{Category, Tier};

const QUERY: &str = "
    SELECT u.id, u.email, u.status, COALESCE(p.tier, 'free'),
           COALESCE(s.categories, ARRAY['equity','crypto','forex','commodity']),
           COALESCE(s.real_time_access, true), s.max_signals_per_day,
           (SELECT EXTRACT(EPOCH FROM MAX(c.at))::bigint FROM auth.entitlement_changes c
             WHERE c.user_id = u.id)
    FROM user_management.users u
    LEFT JOIN finance.user_subscriptions us ON us.user_id = u.id AND us.status = 'active'
    LEFT JOIN finance.subscription_plans p ON p.id = us.plan_id
    LEFT JOIN signals.signal_subscriptions s ON s.user_id = u.id
    WHERE u.id = $1";

/// The entitlements of `user_id`, if the user exists.
pub async fn of(
    client: &impl deadpool_postgres::GenericClient,
    user_id: &str,
) -> Result<Option<Entitlements>, tokio_postgres::Error> {
    let Some(row) = client.query_opt(QUERY, &[&user_id]).await? else { return Ok(None) };
    let tier: String = row.get(3);
    let categories: Vec<String> = row.get(4);
    let limit: Option<i32> = row.get(6);
    Ok(Some(Entitlements {
        id: row.get(0),
        email: row.get(1),
        status: row.get(2),
        // The table's CHECKs admit only valid names.
        tier: tier.parse().unwrap_or(Tier::Free),
        categories: Category::ALL
            .into_iter()
            .filter(|c| categories.iter().any(|k| k == c.as_str()))
            .collect(),
        real_time: row.get(5),
        max_signals_per_day: limit.and_then(|l| u32::try_from(l).ok()),
        changed_at: row.get(7),
    }))
}
