//! Accounts for the embedded default, from `fixtures/accounts.toml`.

use std::collections::HashMap;

use engine::model::{Category, CategoryMask, Tier};
use serde::Deserialize;

/// One user (after the source's `user_management.users` and
/// `signals.signal_subscriptions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub tier: Tier,
    pub categories: CategoryMask,
    pub real_time_access: bool,
    pub max_signals_per_day: Option<u32>,
    pub suspended: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("invalid accounts file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("user id {0:?} is listed twice")]
    Duplicate(String),
    #[error("user id {0:?} must be 1-128 characters of [A-Za-z0-9_-]")]
    BadId(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    email: String,
    tier: Tier,
    categories: Vec<Category>,
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

/// Accounts by id, in file order.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_id: HashMap<String, usize>,
    list: Vec<Account>,
}

impl Accounts {
    pub fn from_toml(text: &str) -> Result<Self, AccountsError> {
        let file: File = toml::from_str(text)?;
        let mut a = Self::default();
        for e in file.user {
            let ok = !e.id.is_empty()
                && e.id.len() <= 128
                && e.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(AccountsError::BadId(e.id));
            }
            if a.by_id.insert(e.id.clone(), a.list.len()).is_some() {
                return Err(AccountsError::Duplicate(e.id));
            }
            a.list.push(Account {
                id: e.id,
                email: e.email,
                tier: e.tier,
                categories: e.categories.into_iter().collect(),
                real_time_access: e.real_time_access,
                max_signals_per_day: e.max_signals_per_day,
                suspended: e.suspended,
            });
        }
        Ok(a)
    }

    pub fn get(&self, id: &str) -> Option<&Account> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.list.iter()
    }
}
