//! What keeps a login flood from taking the sidecar down.
//!
//! A password verification is argon2id with 19 MiB of memory and tens of milliseconds
//! of a core: unbounded, a few dozen concurrent logins exhaust a small pod's memory and
//! starve the refresh, JWKS and change-feed handlers of CPU and database connections.
//! So:
//!
//! - at most `permits` verifications run at once (about the core count); past that, a
//!   login is answered 429 with `Retry-After` at once, before any database work;
//! - failed logins are counted per client address and per account (the email as given,
//!   known or not, so that the answer reveals nothing); past a few, that address or
//!   account waits a back-off that doubles with each further failure, answered 429 with
//!   `Retry-After` before any hashing;
//! - the database connection is given back before hashing (`auth::login`), and the pool
//!   has a wait timeout (`db::pool`).
//!
//! Both throttles are bounded maps: when one is full of live entries, new keys are not
//! tracked (their logins still pass through the hashing bound) rather than evicting the
//! locks of keys under attack.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Login limits (settings of `signalcast-accounts serve`, docs/accounts.md).
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// Verifications at once; 0 = one per core.
    pub hashing_permits: usize,
    /// Failures from one address before it backs off.
    pub address_failures: u32,
    /// Failures on one account before it backs off.
    pub account_failures: u32,
    /// The first back-off; each further failure doubles it, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Addresses (and, apart, accounts) tracked at once.
    pub max_tracked: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            hashing_permits: 0,
            address_failures: 20,
            account_failures: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            window: Duration::from_secs(15 * 60),
            max_tracked: 100_000,
        }
    }
}

/// Why a login is not attempted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// All verification permits are in use.
    Busy,
    /// This address or account is backing off for this long.
    BackOff(Duration),
}

impl Refused {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after(self) -> u64 {
        match self {
            Self::Busy => 1,
            Self::BackOff(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
        }
        .max(1)
    }
}

#[derive(Debug)]
pub(crate) struct LoginGuard {
    hashing: Arc<Semaphore>,
    permits: usize,
    by_address: Throttle<IpAddr>,
    by_account: Throttle<String>,
}

impl LoginGuard {
    pub fn new(limits: &LoginLimits) -> Self {
        let permits = match limits.hashing_permits {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        Self {
            hashing: Arc::new(Semaphore::new(permits)),
            permits,
            by_address: Throttle::new(limits.address_failures, limits),
            by_account: Throttle::new(limits.account_failures, limits),
        }
    }

    /// Verifications that may run at once.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// May `address` try to log in to `account` now? The permit bounds the hashing;
    /// hold it until the verification is done.
    pub fn admit(
        &self,
        address: IpAddr,
        account: &str,
        now: Instant,
    ) -> Result<OwnedSemaphorePermit, Refused> {
        let wait = self.by_address.waiting(&address, now).max(self.by_account.waiting(account, now));
        if !wait.is_zero() {
            return Err(Refused::BackOff(wait));
        }
        Arc::clone(&self.hashing).try_acquire_owned().map_err(|_| Refused::Busy)
    }

    /// The login failed (wrong password or unknown account).
    pub fn failed(&self, address: IpAddr, account: &str, now: Instant) {
        self.by_address.fail(address, now);
        self.by_account.fail(account.to_owned(), now);
    }

    /// The login succeeded: the account's failures are forgotten (the address's are
    /// not: one good password does not excuse a spray from the same place).
    pub fn succeeded(&self, account: &str) {
        self.by_account.forget(account);
    }
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    last: Instant,
    until: Instant,
}

#[derive(Debug)]
struct Throttle<K> {
    entries: Mutex<HashMap<K, Entry>>,
    free: u32,
    backoff: Duration,
    max_backoff: Duration,
    window: Duration,
    max: usize,
}

impl<K: Hash + Eq> Throttle<K> {
    fn new(free: u32, limits: &LoginLimits) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            free,
            backoff: limits.backoff,
            max_backoff: limits.max_backoff,
            window: limits.window,
            max: limits.max_tracked,
        }
    }

    /// How long `key` must still wait.
    fn waiting<Q>(&self, key: &Q, now: Instant) -> Duration
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).map_or(Duration::ZERO, |e| e.until.saturating_duration_since(now))
    }

    fn fail(&self, key: K, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max && !entries.contains_key(&key) {
            let window = self.window;
            entries.retain(|_, e| e.until > now || now.saturating_duration_since(e.last) < window);
            if entries.len() >= self.max {
                return; // full of live entries: this key goes untracked (module doc)
            }
        }
        let e = entries.entry(key).or_insert(Entry { failures: 0, last: now, until: now });
        if now.saturating_duration_since(e.last) >= self.window {
            e.failures = 0;
        }
        e.failures += 1;
        e.last = now;
        if e.failures > self.free {
            let doublings = (e.failures - self.free - 1).min(20);
            let wait = self.backoff.saturating_mul(1 << doublings).min(self.max_backoff);
            e.until = now + wait;
        }
    }

    fn forget<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn limits() -> LoginLimits {
        LoginLimits { hashing_permits: 2, ..LoginLimits::default() }
    }

    #[test]
    fn verifications_past_the_permits_are_refused_busy_until_one_ends() {
        let g = LoginGuard::new(&limits());
        let now = Instant::now();
        let a = g.admit(HOME, "a@x", now).unwrap();
        let _b = g.admit(HOME, "b@x", now).unwrap();
        assert_eq!(g.admit(HOME, "c@x", now).unwrap_err(), Refused::Busy);
        drop(a);
        assert!(g.admit(HOME, "c@x", now).is_ok());
    }

    #[test]
    fn an_account_backs_off_after_five_failures_doubling_and_a_success_clears_it() {
        let g = LoginGuard::new(&limits());
        let t = Instant::now();
        for k in 0..5 {
            assert!(g.admit(AWAY, "victim@x", t).is_ok(), "failure {k} is free");
            g.failed(AWAY, "victim@x", t);
        }
        assert!(g.admit(AWAY, "victim@x", t).is_ok(), "five failures are allowed");
        g.failed(AWAY, "victim@x", t);
        assert_eq!(g.admit(HOME, "victim@x", t).unwrap_err(), Refused::BackOff(Duration::from_secs(1)));
        assert!(g.admit(HOME, "other@x", t).is_ok(), "only that account");
        let t = t + Duration::from_secs(1);
        assert!(g.admit(HOME, "victim@x", t).is_ok());
        g.failed(AWAY, "victim@x", t);
        assert_eq!(g.admit(HOME, "victim@x", t).unwrap_err().retry_after(), 2, "doubled");
        g.succeeded("victim@x");
        assert!(g.admit(HOME, "victim@x", t).is_ok());
    }

    #[test]
    fn an_address_spraying_many_accounts_backs_off_and_is_capped() {
        let g = LoginGuard::new(&limits());
        let t = Instant::now();
        for k in 0..200 {
            let account = format!("user{k}@x");
            if g.admit(AWAY, &account, t).is_err() {
                assert_eq!(k, 21, "the 21st failure sets the back-off");
                break;
            }
            g.failed(AWAY, &account, t);
        }
        assert!(matches!(g.admit(AWAY, "new@x", t), Err(Refused::BackOff(_))));
        assert!(g.admit(HOME, "new@x", t).is_ok(), "other addresses are not affected");
        // Far past the window: forgotten.
        let later = t + Duration::from_secs(16 * 60);
        assert!(g.admit(AWAY, "new@x", later).is_ok());
        for _ in 0..100 {
            g.failed(AWAY, "x@x", later);
        }
        let wait = g.admit(AWAY, "y@x", later).unwrap_err();
        assert_eq!(wait, Refused::BackOff(Duration::from_secs(15 * 60)), "capped");
    }

    #[test]
    fn a_full_throttle_keeps_its_locks_and_leaves_new_keys_untracked() {
        let g = LoginGuard::new(&LoginLimits { max_tracked: 3, account_failures: 0, ..limits() });
        let t = Instant::now();
        for k in 0..3 {
            g.failed(HOME, &format!("u{k}"), t);
        }
        g.failed(HOME, "u-new", t);
        assert!(matches!(g.admit(AWAY, "u0", t), Err(Refused::BackOff(_))), "kept");
        assert!(g.admit(AWAY, "u-new", t).is_ok(), "untracked");
    }
}
