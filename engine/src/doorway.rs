//! Connections that have not authenticated yet, counted and capped.
//!
//! A socket that has connected but not yet shown a key (a producer before HELLO, a
//! WebSocket client before its upgrade) costs a task, buffers and a descriptor while
//! proving nothing. Each listener lets in at most `max_total` such sockets at once, and
//! at most `max_per_ip` from one address, each for a short budget; a socket past either
//! cap is closed at once. An [`Unauthenticated`] holds the place and gives it back when
//! dropped: when the socket authenticates (and moves on to the listener's own limits) or
//! goes away. Counts change once per connection, never per message: one mutex is enough.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Caps on unauthenticated sockets (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorwayConfig {
    pub max_total: usize,
    pub max_per_ip: usize,
}

/// Why a socket was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Turned {
    #[error("{0} connections are already authenticating")]
    Full(usize),
    #[error("{0} connections from this address are already authenticating")]
    PerAddress(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Doorway {
    config: DoorwayConfig,
    counts: Mutex<Counts>,
    turned_away: AtomicU64,
}

impl Doorway {
    pub fn new(config: DoorwayConfig) -> Arc<Self> {
        Arc::new(Self { config, counts: Mutex::default(), turned_away: AtomicU64::new(0) })
    }

    /// A place for a socket from `ip`, or why not.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Unauthenticated, Turned> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let DoorwayConfig { max_total, max_per_ip } = self.config;
        let turned = if max_total > 0 && c.total >= max_total {
            Some(Turned::Full(max_total))
        } else if max_per_ip > 0 && c.by_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            Some(Turned::PerAddress(max_per_ip))
        } else {
            None
        };
        if let Some(t) = turned {
            self.turned_away.fetch_add(1, Ordering::Relaxed);
            return Err(t);
        }
        c.total += 1;
        *c.by_ip.entry(ip).or_default() += 1;
        Ok(Unauthenticated { door: Arc::clone(self), ip })
    }

    /// Sockets authenticating now.
    pub fn inside(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    /// Sockets turned away so far.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    fn leave(&self, ip: IpAddr) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        // Entries go at zero: the map holds only addresses with sockets inside.
        if let Some(n) = c.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&ip);
            }
        }
    }
}

/// A socket's place among the unauthenticated; given back on drop.
#[derive(Debug)]
pub struct Unauthenticated {
    door: Arc<Doorway>,
    ip: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.door.leave(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total_and_places_come_back() {
        let door = Doorway::new(DoorwayConfig { max_total: 3, max_per_ip: 2 });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = door.enter(a).unwrap();
        let _a2 = door.enter(a).unwrap();
        assert_eq!(door.enter(a).unwrap_err(), Turned::PerAddress(2));
        let _b1 = door.enter(b).unwrap();
        assert_eq!(door.enter(b).unwrap_err(), Turned::Full(3), "another address, but no room");
        drop(a1);
        assert_eq!(door.inside(), 2);
        let _again = door.enter(b).unwrap();
        assert_eq!(door.turned_away(), 2);
    }

    #[test]
    fn zero_means_no_cap() {
        let door = Doorway::new(DoorwayConfig { max_total: 0, max_per_ip: 0 });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..10_000).map(|_| door.enter(ip).unwrap()).collect();
        assert_eq!(door.inside(), held.len());
    }
}
