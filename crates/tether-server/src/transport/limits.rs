//! Admission of client connections: the global and per-IP connection limits and the
//! connection rate, checked before a WebSocket upgrade or when a raw TCP socket is accepted.
//!
//! [`Admission::admit`] either refuses (the caller answers 503 or closes the socket) or hands
//! out a [`Slot`], an RAII guard that holds the connection's place in both counts until it is
//! dropped, on every exit path of the connection's task. API requests on the HTTP port are
//! not client connections and are never counted, so a full node can still be published to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::ClientConfig;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// `client.connection_limit` connections are open.
    #[error("connection limit reached")]
    ConnectionLimit,
    /// `client.ip_connection_limit` connections from this address are open.
    #[error("connection limit for this address reached")]
    IpConnectionLimit,
    /// Over `client.connection_rate_limit`.
    #[error("connection rate limit reached")]
    Rate,
    /// The node is draining for shutdown.
    #[error("server is shutting down")]
    Draining,
}

/// Connection counts and the connection-rate bucket of one node. Clone = refcount bump.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `client.connection_limit`; 0 = off.
    max_total: usize,
    /// `client.ip_connection_limit`; 0 = off.
    max_per_ip: usize,
    /// Open client connections (those holding a [`Slot`]).
    total: AtomicUsize,
    /// Open client connections by address; an address leaves the map at zero, so it holds
    /// only addresses with a live connection. Only touched when the per-IP limit is on.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `None` when `client.connection_rate_limit` is 0.
    rate: Option<Mutex<TokenBucket>>,
}

/// A client connection's place in the counts; released on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as it is dropped"]
pub(crate) struct Slot {
    shared: Arc<Shared>,
    /// Set when the per-IP count was incremented for this address.
    ip: Option<IpAddr>,
}

impl Admission {
    /// Limits from the client config.
    pub(crate) fn new(config: &ClientConfig) -> Self {
        let rate = config.connection_rate_limit;
        Self {
            shared: Arc::new(Shared {
                max_total: config.connection_limit,
                max_per_ip: config.ip_connection_limit,
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
                rate: (rate > 0).then(|| {
                    Mutex::new(TokenBucket::new(
                        f64::from(rate),
                        f64::from(rate),
                        Instant::now(),
                    ))
                }),
            }),
        }
    }

    /// Takes a slot for a new client connection from `ip`, or says why not. The rate is
    /// charged only for connections that pass the count limits.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<Slot, Refused> {
        let shared = &self.shared;
        let total = shared.total.fetch_add(1, Ordering::AcqRel) + 1;
        // From here on `slot` undoes what was counted if we refuse.
        let mut slot = Slot {
            shared: shared.clone(),
            ip: None,
        };
        if shared.max_total > 0 && total > shared.max_total {
            return Err(Refused::ConnectionLimit);
        }
        if shared.max_per_ip > 0 {
            let mut per_ip = shared.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            slot.ip = Some(ip);
            if *count > shared.max_per_ip {
                drop(per_ip);
                return Err(Refused::IpConnectionLimit);
            }
        }
        if let Some(rate) = &shared.rate
            && !rate.lock().try_take(now)
        {
            return Err(Refused::Rate);
        }
        Ok(slot)
    }

    /// Open client connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.shared.total.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self.shared.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A token bucket refilled lazily from the time it is asked at: two numbers, no timer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admission(total: usize, per_ip: usize, rate: u32) -> Admission {
        Admission::new(&ClientConfig {
            connection_limit: total,
            ip_connection_limit: per_ip,
            connection_rate_limit: rate,
            ..ClientConfig::default()
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn global_limit_counts_open_slots_and_releases_on_drop() {
        let a = admission(2, 0, 0);
        let now = Instant::now();
        let s1 = a.admit(ip(1), now).unwrap();
        let s2 = a.admit(ip(2), now).unwrap();
        assert_eq!(a.admit(ip(3), now).unwrap_err(), Refused::ConnectionLimit);
        // A refusal does not leak a count.
        assert_eq!(a.open(), 2);
        drop(s1);
        let _s3 = a.admit(ip(3), now).unwrap();
        drop(s2);
        assert_eq!(a.open(), 1);
    }

    #[test]
    fn per_ip_limit_is_per_address() {
        let a = admission(0, 2, 0);
        let now = Instant::now();
        let _a1 = a.admit(ip(1), now).unwrap();
        let a2 = a.admit(ip(1), now).unwrap();
        assert_eq!(a.admit(ip(1), now).unwrap_err(), Refused::IpConnectionLimit);
        let _b1 = a.admit(ip(2), now).unwrap();
        drop(a2);
        let _a3 = a.admit(ip(1), now).unwrap();
        drop(_a1);
        drop(_a3);
        drop(_b1);
        assert!(
            a.shared.per_ip.lock().is_empty(),
            "addresses leave the map at zero"
        );
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let a = admission(0, 0, 2);
        let now = Instant::now();
        let _s1 = a.admit(ip(1), now).unwrap();
        let _s2 = a.admit(ip(1), now).unwrap();
        assert_eq!(a.admit(ip(1), now).unwrap_err(), Refused::Rate);
        let later = now + Duration::from_millis(500);
        let _s3 = a.admit(ip(1), later).unwrap();
        assert_eq!(a.admit(ip(1), later).unwrap_err(), Refused::Rate);
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn bucket_never_exceeds_its_burst() {
        let now = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, now);
        let later = now + Duration::from_secs(60);
        let taken = (0..10).filter(|_| b.try_take(later)).count();
        assert_eq!(taken, 3);
        // Time going backwards (it cannot with Instant, but a stale `now` can) adds nothing.
        assert!(!b.try_take(now));
    }
}
