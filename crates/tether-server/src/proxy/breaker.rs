//! A circuit breaker per proxy endpoint: time in, decisions out, no I/O.
//!
//! Closed, it lets every call through and counts outcomes in a fixed window; when at least
//! [`Settings::min_calls`] calls in the window failed at a ratio of
//! [`Settings::failure_ratio`] or more, it opens. Open, it refuses every call at once (the
//! client gets the protocol's temporary error and backs off, instead of piling onto a backend
//! that is down) for [`Settings::open_for`]. Then it is half-open: one probe call at a time
//! goes through; a success closes it, a failure opens it again.
//!
//! Failures are what says the backend is unwell: a transport error, a timeout, an HTTP status
//! other than 200. An `error` or `disconnect` the backend chose is an answer, not a failure.

use std::time::Duration;

use tokio::time::Instant;

/// How a breaker decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Settings {
    /// Length of the counting window while closed.
    pub(crate) window: Duration,
    /// Fewest calls in a window that may open the breaker.
    pub(crate) min_calls: u32,
    /// Share of failed calls in the window that opens it.
    pub(crate) failure_ratio: f64,
    /// How long it stays open before probing.
    pub(crate) open_for: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe at a time goes through.
    HalfOpen,
}

/// Whether a call may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Yes, as usual.
    Call,
    /// Yes, as the half-open breaker's probe: its outcome decides.
    Probe,
    /// No: the breaker is open (or its probe is out).
    Refuse,
}

/// A change of state the caller reports (a log line, a metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// It opened (from closed, or again after a failed probe).
    Opened,
    /// A probe succeeded: it closed.
    Closed,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: Settings,
    state: State,
    /// Closed: when the current window began. Open: when it opened.
    since: Instant,
    calls: u32,
    failures: u32,
    probing: bool,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            state: State::Closed,
            since: now,
            calls: 0,
            failures: 0,
            probing: false,
        }
    }

    /// The current state (an open breaker whose time is up reads as half-open).
    pub(crate) fn state(&self, now: Instant) -> State {
        match self.state {
            State::Open if now.saturating_duration_since(self.since) >= self.settings.open_for => {
                State::HalfOpen
            }
            state => state,
        }
    }

    /// Asks to make a call at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        match self.state(now) {
            State::Closed => Admit::Call,
            State::Open => Admit::Refuse,
            State::HalfOpen if self.probing => Admit::Refuse,
            State::HalfOpen => {
                self.state = State::HalfOpen;
                self.probing = true;
                Admit::Probe
            }
        }
    }

    /// Records the outcome of a call that was admitted as `admit`.
    pub(crate) fn record(
        &mut self,
        admit: Admit,
        failed: bool,
        now: Instant,
    ) -> Option<Transition> {
        match admit {
            Admit::Refuse => None,
            Admit::Probe => {
                self.probing = false;
                if failed {
                    self.open(now);
                    Some(Transition::Opened)
                } else {
                    self.close(now);
                    Some(Transition::Closed)
                }
            }
            Admit::Call => {
                if self.state != State::Closed {
                    // A call admitted before the breaker opened: the probe decides now.
                    return None;
                }
                if now.saturating_duration_since(self.since) >= self.settings.window {
                    self.since = now;
                    self.calls = 0;
                    self.failures = 0;
                }
                self.calls += 1;
                self.failures += u32::from(failed);
                let tripped = self.calls >= self.settings.min_calls
                    && f64::from(self.failures)
                        >= self.settings.failure_ratio * f64::from(self.calls);
                tripped.then(|| {
                    self.open(now);
                    Transition::Opened
                })
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.since = now;
    }

    fn close(&mut self, now: Instant) {
        self.state = State::Closed;
        self.since = now;
        self.calls = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn failures_under_the_minimum_or_the_ratio_keep_it_closed() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        // Three failures: under the minimum of four calls.
        for _ in 0..3 {
            assert_eq!(breaker.admit(t0), Admit::Call);
            assert_eq!(breaker.record(Admit::Call, true, t0), None);
        }
        // A new window forgets them; one failure in four calls is under the ratio.
        let t1 = t0 + Duration::from_secs(11);
        for failed in [true, false, false, false] {
            assert_eq!(breaker.record(Admit::Call, failed, t1), None);
        }
        assert_eq!(breaker.state(t1), State::Closed);
    }

    #[test]
    fn it_opens_refuses_probes_once_and_closes_on_a_good_probe() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        let outcomes = [false, true, true];
        for failed in outcomes {
            assert_eq!(breaker.record(Admit::Call, failed, t0), None);
        }
        assert_eq!(
            breaker.record(Admit::Call, true, t0),
            Some(Transition::Opened),
            "3 failures in 4 calls"
        );
        assert_eq!(breaker.admit(t0 + Duration::from_secs(1)), Admit::Refuse);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(later), State::HalfOpen);
        assert_eq!(breaker.admit(later), Admit::Probe);
        assert_eq!(breaker.admit(later), Admit::Refuse, "one probe at a time");
        // A call admitted before it opened reports late: it changes nothing.
        assert_eq!(breaker.record(Admit::Call, true, later), None);
        assert_eq!(
            breaker.record(Admit::Probe, false, later),
            Some(Transition::Closed)
        );
        assert_eq!(breaker.admit(later), Admit::Call);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_period() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        for _ in 0..4 {
            breaker.record(Admit::Call, true, t0);
        }
        let probe_at = t0 + Duration::from_secs(6);
        assert_eq!(breaker.admit(probe_at), Admit::Probe);
        assert_eq!(
            breaker.record(Admit::Probe, true, probe_at),
            Some(Transition::Opened)
        );
        assert_eq!(
            breaker.admit(probe_at + Duration::from_secs(4)),
            Admit::Refuse
        );
        assert_eq!(
            breaker.admit(probe_at + Duration::from_secs(5)),
            Admit::Probe
        );
    }
}
