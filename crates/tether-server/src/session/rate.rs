//! A connection's command rate limit, sans-IO: a token bucket refilled lazily from `now`,
//! and a count of rejections that turns persistent abuse into a disconnect.
//!
//! A command over the rate gets error 111 (temporary: the SDK retries with backoff); a client
//! that keeps sending regardless — `disconnect_after` rejections within `window` — is closed
//! with 3013. The state is a handful of numbers in the session; no timer runs.

use crate::config::CommandRateLimit;

/// What to do with one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Allow,
    /// Answer it with error 111.
    Reject,
    /// Close the connection with 3013.
    Disconnect,
}

/// Rate state of one connection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CommandLimiter {
    /// Tokens left; meaningful once `at_ms` is set.
    tokens: f64,
    /// Node-clock time of the last refill; 0 = never used (the bucket starts full).
    at_ms: u64,
    /// Rejections since `window_start_ms`.
    rejections: u32,
    window_start_ms: u64,
}

impl CommandLimiter {
    /// Charges one command at `now_ms` (node clock, milliseconds).
    pub(crate) fn check(&mut self, limit: &CommandRateLimit, now_ms: u64) -> Verdict {
        if limit.rate <= 0.0 {
            return Verdict::Allow;
        }
        let burst = f64::from(limit.burst);
        if self.at_ms == 0 {
            self.tokens = burst;
        } else {
            let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * limit.rate).min(burst);
        }
        // `max(1)` keeps "never used" distinct from a refill at clock 0.
        self.at_ms = self.at_ms.max(now_ms).max(1);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if limit.disconnect_after == 0 {
            return Verdict::Reject;
        }
        let window = limit.window.as_millis() as u64;
        if self.rejections == 0 || now_ms.saturating_sub(self.window_start_ms) >= window {
            self.window_start_ms = now_ms;
            self.rejections = 0;
        }
        self.rejections += 1;
        if self.rejections >= limit.disconnect_after {
            Verdict::Disconnect
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(rate: f64, burst: u32, disconnect_after: u32) -> CommandRateLimit {
        CommandRateLimit {
            rate,
            burst,
            disconnect_after,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = limit(10.0, 5, 0);
        let mut c = CommandLimiter::default();
        for _ in 0..5 {
            assert_eq!(c.check(&l, 1000), Verdict::Allow);
        }
        assert_eq!(c.check(&l, 1000), Verdict::Reject);
        // 10 per second: one token every 100 ms.
        assert_eq!(c.check(&l, 1050), Verdict::Reject);
        assert_eq!(c.check(&l, 1100), Verdict::Allow);
        assert_eq!(c.check(&l, 1100), Verdict::Reject);
        // A long pause refills up to the burst, no further.
        let allowed = (0..20)
            .filter(|_| c.check(&l, 60_000) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn persistent_rejections_disconnect() {
        let l = limit(1.0, 1, 3);
        let mut c = CommandLimiter::default();
        assert_eq!(c.check(&l, 5), Verdict::Allow);
        assert_eq!(c.check(&l, 5), Verdict::Reject);
        assert_eq!(c.check(&l, 5), Verdict::Reject);
        assert_eq!(c.check(&l, 5), Verdict::Disconnect);
    }

    #[test]
    fn rejections_are_counted_per_window() {
        let l = limit(0.001, 1, 3);
        let mut c = CommandLimiter::default();
        assert_eq!(c.check(&l, 1), Verdict::Allow);
        assert_eq!(c.check(&l, 1), Verdict::Reject);
        assert_eq!(c.check(&l, 2), Verdict::Reject);
        // The window passed: counting starts over.
        assert_eq!(c.check(&l, 20_000), Verdict::Reject);
        assert_eq!(c.check(&l, 20_001), Verdict::Reject);
        assert_eq!(c.check(&l, 20_002), Verdict::Disconnect);
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let l = limit(0.0, 0, 1);
        let mut c = CommandLimiter::default();
        assert!((0..10_000).all(|_| c.check(&l, 7) == Verdict::Allow));
    }
}
