//! Who may open a WebSocket, checked before the upgrade: the Origin allowlist, and the
//! number of open connections per client IP and per user.
//!
//! Counts change only when a connection opens or closes (never per message), so one
//! mutex is enough. An [`Admitted`] travels with the connection into its hub shard and
//! gives its place back when the connection is dropped, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The limits (0 or empty: none).
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    pub max_per_ip: usize,
    pub max_per_user: usize,
    /// Exact `Origin` values allowed; requests without an Origin (non-browser clients)
    /// are not affected.
    pub allowed_origins: Vec<String>,
}

/// Why a connection was refused (the HTTP answer says which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("origin {0:?} is not allowed")]
    Origin(String),
    #[error("more than {0} connections from this address")]
    PerIp(usize),
    #[error("more than {0} connections for this user")]
    PerUser(usize),
}

#[derive(Debug, Default)]
struct Counts {
    ips: HashMap<IpAddr, usize>,
    users: HashMap<String, usize>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Admission {
    config: AdmissionConfig,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self { config, counts: Mutex::default() }
    }

    /// `host` is the request's Host header: a page served by this gateway (its own
    /// dashboard) is same-origin and always allowed, whatever the allowlist says.
    pub fn check_origin(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Refused> {
        let same_origin = |o: &str| {
            let authority = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
            authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h)))
        };
        match origin {
            Some(o)
                if !self.config.allowed_origins.is_empty()
                    && !self.config.allowed_origins.iter().any(|a| a == o)
                    && !same_origin(o) =>
            {
                Err(Refused::Origin(o.chars().take(200).collect()))
            }
            _ => Ok(()),
        }
    }

    /// Takes a place for a connection of `user` from `ip`, or says which limit is full.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>, user: &str) -> Result<Admitted, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (per_ip, per_user) = (self.config.max_per_ip, self.config.max_per_user);
        if let Some(ip) = ip
            && per_ip > 0
            && c.ips.get(&ip).copied().unwrap_or(0) >= per_ip
        {
            return Err(Refused::PerIp(per_ip));
        }
        if per_user > 0 && c.users.get(user).copied().unwrap_or(0) >= per_user {
            return Err(Refused::PerUser(per_user));
        }
        if let Some(ip) = ip {
            *c.ips.entry(ip).or_default() += 1;
        }
        *c.users.entry(user.to_owned()).or_default() += 1;
        Ok(Admitted { admission: Arc::clone(self), ip, user: user.to_owned() })
    }

    fn release(&self, ip: Option<IpAddr>, user: &str) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        // Entries go when they reach zero: the maps hold only open connections.
        if let Some(ip) = ip
            && let Some(n) = c.ips.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.ips.remove(&ip);
            }
        }
        if let Some(n) = c.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.users.remove(user);
            }
        }
    }
}

/// A connection's place; released on drop.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    user: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.ip, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_ip_and_user_and_given_back_on_drop() {
        let a = Arc::new(Admission::new(AdmissionConfig {
            max_per_ip: 2,
            max_per_user: 2,
            ..Default::default()
        }));
        let (ip1, ip2): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = a.admit(Some(ip1), "u").unwrap();
        let _second = a.admit(Some(ip1), "v").unwrap();
        assert_eq!(a.admit(Some(ip1), "w").unwrap_err(), Refused::PerIp(2));
        let _third = a.admit(Some(ip2), "u").unwrap();
        assert_eq!(a.admit(Some(ip2), "u").unwrap_err(), Refused::PerUser(2));
        drop(first);
        a.admit(Some(ip1), "u").unwrap();
        assert!(a.counts.lock().unwrap().ips.len() <= 2);
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_sent() {
        let open = Admission::new(AdmissionConfig::default());
        assert!(open.check_origin(Some("https://anything"), None).is_ok());
        let closed = Admission::new(AdmissionConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..Default::default()
        });
        assert!(closed.check_origin(Some("https://app.example"), Some("gw.example")).is_ok());
        assert!(closed.check_origin(None, Some("gw.example")).is_ok());
        assert_eq!(
            closed.check_origin(Some("https://evil.example"), Some("gw.example")),
            Err(Refused::Origin("https://evil.example".into()))
        );
        // The gateway's own dashboard is same-origin: never blocked by the allowlist.
        assert!(closed.check_origin(Some("https://gw.example:8443"), Some("gw.example:8443")).is_ok());
        assert!(closed.check_origin(Some("http://GW.example"), Some("gw.example")).is_ok());
        assert!(closed.check_origin(Some("https://gw.example.evil"), Some("gw.example")).is_err());
    }
}
