//! Reconnect delays: exponential backoff with full jitter, as a pure function.
//!
//! The ceiling grows as `min · factorⁿ` up to `max`, and the delay is drawn uniformly from
//! `[0, ceiling]` ("full jitter"), so a thousand clients dropped by the same restart spread
//! their returns over the whole window instead of arriving together. The random source is
//! injected, so tests seed it and check bounds and spread without sleeping.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter for reconnects and resubscribes.
///
/// ```
/// use std::time::Duration;
/// use rand::SeedableRng;
/// use tether_client::Backoff;
///
/// let backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5), factor: 2.0 };
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
/// assert_eq!(backoff.ceiling(30), Duration::from_secs(5));
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// assert!(backoff.delay(3, &mut rng) <= Duration::from_millis(800));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub min: Duration,
    /// Largest ceiling, reached after enough failed attempts.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt (values below 1 are treated as 1).
    pub factor: f64,
}

impl Backoff {
    /// The largest delay of retry number `attempt` (0 for the first retry).
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let grown = self.min.as_secs_f64() * factor.powi(exponent);
        let max = self.max.max(self.min);
        if !grown.is_finite() || grown >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(grown)
        }
    }

    /// A delay for retry number `attempt`, uniform in `[0, ceiling(attempt)]`.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            // Quick first retry: most drops are a single lost link.
            min: Duration::from_millis(500),
            // A client never waits longer than this between attempts, even after a long outage.
            max: Duration::from_secs(20),
            // Doubling reaches the maximum in about six attempts.
            factor: 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(3),
            factor: 2.0,
        }
    }

    #[test]
    fn ceiling_grows_by_factor_and_caps_at_max() {
        let b = backoff();
        let ceilings: Vec<u128> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3000, 3000, 3000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(3));
        let odd = Backoff {
            factor: f64::NAN,
            ..b
        };
        assert_eq!(odd.ceiling(5), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_full_jitter_within_bounds_and_spread() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(42);
        for attempt in 0..8 {
            let ceiling = b.ceiling(attempt);
            let samples: Vec<Duration> = (0..500).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling));
            let low = samples.iter().filter(|d| **d < ceiling / 4).count();
            let high = samples.iter().filter(|d| **d > ceiling * 3 / 4).count();
            // Uniform over [0, ceiling]: about a quarter in each outer quarter.
            assert!((75..=175).contains(&low), "attempt {attempt}: {low} low");
            assert!((75..=175).contains(&high), "attempt {attempt}: {high} high");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let b = backoff();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..6).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
