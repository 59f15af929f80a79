//! A connection's command rate limit, sans-IO: a token bucket refilled lazily from `now`,
//! and a count of rejections that turns persistent abuse into a disconnect.
//!
//! A command over the rate gets error 111 (temporary: the SDK retries with backoff); a client
//! that keeps sending regardless — `disconnect_after` rejections within `window` — is closed
//! with 3013. The state is a handful of numbers in the session (20 bytes, since every
//! connection carries it); no timer runs.

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
///
/// Times are the node clock's milliseconds truncated to 32 bits and compared with wrapping
/// arithmetic: exact for gaps under 49 days. A connection silent for longer may get a
/// smaller refill than it earned on its next command, never a larger one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CommandLimiter {
    /// Tokens left; meaningful once `used`.
    tokens: f32,
    /// Node-clock time (ms, truncated) of the last refill.
    at_ms: u32,
    /// Rejections since `window_start_ms`.
    rejections: u32,
    window_start_ms: u32,
    /// Charged at least once (before that, the bucket is full).
    used: bool,
}

impl CommandLimiter {
    /// Charges one command at `now_ms` (node clock, milliseconds).
    pub(crate) fn check(&mut self, limit: &CommandRateLimit, now_ms: u64) -> Verdict {
        if limit.rate <= 0.0 {
            return Verdict::Allow;
        }
        let now = now_ms as u32;
        let burst = limit.burst as f32;
        if self.used {
            let elapsed = now.wrapping_sub(self.at_ms) as f32 / 1000.0;
            self.tokens = (self.tokens + elapsed * limit.rate as f32).min(burst);
        } else {
            self.tokens = burst;
            self.used = true;
        }
        self.at_ms = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if limit.disconnect_after == 0 {
            return Verdict::Reject;
        }
        let window = limit.window.as_millis().min(u128::from(u32::MAX)) as u32;
        if self.rejections == 0 || now.wrapping_sub(self.window_start_ms) >= window {
            self.window_start_ms = now;
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

    #[test]
    fn refills_across_the_32_bit_clock_wrap() {
        let l = limit(10.0, 2, 0);
        let mut c = CommandLimiter::default();
        let before_wrap = u64::from(u32::MAX) - 50;
        assert_eq!(c.check(&l, before_wrap), Verdict::Allow);
        assert_eq!(c.check(&l, before_wrap), Verdict::Allow);
        assert_eq!(c.check(&l, before_wrap), Verdict::Reject);
        // 150 ms later, past the wrap: one token came back.
        assert_eq!(c.check(&l, before_wrap + 150), Verdict::Allow);
        assert_eq!(c.check(&l, before_wrap + 150), Verdict::Reject);
    }
}
