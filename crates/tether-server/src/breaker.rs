//! A circuit breaker: time in, decisions out, no I/O. One type protects every remote thing
//! tether calls: each backend proxy endpoint (`proxy`) and each Redis shard of the engine
//! (`broker::redis`).
//!
//! Closed, it lets every call through and counts outcomes in a fixed window; it opens when
//! at least [`Settings::min_calls`] calls in the window failed at a ratio of
//! [`Settings::failure_ratio`] or more, when [`Settings::consecutive_failures`] calls failed in
//! a row, or when calls have waited [`Settings::stall`] with no answer at all (a frozen peer:
//! this trips long before the first call's own deadline, so calls do not pile up waiting for
//! it). Open, it refuses every call at once (the caller answers with the protocol's temporary
//! error and the client backs off, instead of piling onto something that is down) for
//! [`Settings::open_for`]. Then it is half-open: one probe call at a time goes through; a
//! success closes it, a failure opens it again.
//!
//! A failure is what says the remote side is unwell: a transport error, a timeout, an HTTP
//! status other than 200. An answer the remote side chose (a backend's `error`) is a success
//! here.

use std::time::Duration;

use parking_lot::Mutex;
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
    /// Failed calls in a row that open it, whatever the window says (0: off).
    pub(crate) consecutive_failures: u32,
    /// Calls waiting this long with no call answered meanwhile open it (`None`: off).
    pub(crate) stall: Option<Duration>,
    /// How long it stays open before probing.
    pub(crate) open_for: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.5,
            consecutive_failures: 0,
            stall: None,
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

/// How an admitted call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It worked (or the remote side answered with a choice of its own).
    Success,
    /// The remote side failed it, or could not be reached.
    Failure,
    /// No answer within the call's deadline.
    Timeout,
}

/// A change of state the caller reports (a log line, a metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// It opened (from closed, or again after a failed probe).
    Opened,
    /// A probe succeeded: it closed.
    Closed,
}

/// One remote endpoint's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: Settings,
    state: State,
    /// Closed: when the current window began. Open: when it opened.
    since: Instant,
    calls: u32,
    failures: u32,
    /// Failed calls since the last success.
    consecutive: u32,
    probing: bool,
    /// Admitted calls not yet recorded.
    in_flight: u32,
    /// Since when calls have been waiting with none answered (`None` when none waits).
    waiting_since: Option<Instant>,
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
            consecutive: 0,
            probing: false,
            in_flight: 0,
            waiting_since: None,
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

    /// Calls admitted and not yet recorded.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Asks to make a call at `now`; the transition is the breaker opening on a stall noticed
    /// now.
    pub(crate) fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        let mut transition = None;
        if self.state == State::Closed
            && let (Some(stall), Some(since)) = (self.settings.stall, self.waiting_since)
            && now.saturating_duration_since(since) >= stall
        {
            self.open(now);
            transition = Some(Transition::Opened);
        }
        let admit = match self.state(now) {
            State::Closed => Admit::Call,
            State::Open => Admit::Refuse,
            State::HalfOpen if self.probing => Admit::Refuse,
            State::HalfOpen => {
                self.state = State::HalfOpen;
                self.probing = true;
                Admit::Probe
            }
        };
        if admit != Admit::Refuse {
            if self.in_flight == 0 {
                self.waiting_since = Some(now);
            }
            self.in_flight += 1;
        }
        (admit, transition)
    }

    /// Records the outcome of a call that was admitted as `admit`.
    pub(crate) fn record(
        &mut self,
        admit: Admit,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        if admit == Admit::Refuse {
            return None;
        }
        // An answer (anything but a timeout): whatever still waits, waits from now.
        self.leave((outcome != Outcome::Timeout).then_some(now));
        let failed = outcome != Outcome::Success;
        if admit == Admit::Probe {
            self.probing = false;
            return Some(if failed {
                self.open(now);
                Transition::Opened
            } else {
                self.close(now);
                Transition::Closed
            });
        }
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
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        let by_ratio = self.calls >= self.settings.min_calls
            && f64::from(self.failures) >= self.settings.failure_ratio * f64::from(self.calls);
        let in_a_row = self.settings.consecutive_failures > 0
            && self.consecutive >= self.settings.consecutive_failures;
        (by_ratio || in_a_row).then(|| {
            self.open(now);
            Transition::Opened
        })
    }

    /// Forgets a call admitted as `admit` whose caller went away before it ended: it says
    /// nothing of the remote side, but no longer waits (and a probe may go again).
    pub(crate) fn abandon(&mut self, admit: Admit) {
        if admit == Admit::Refuse {
            return;
        }
        self.leave(None);
        if admit == Admit::Probe {
            self.probing = false;
        }
    }

    /// One admitted call no longer waits; `answered_at` is when the remote side answered it
    /// (`None`: it did not), from which the calls still waiting wait.
    fn leave(&mut self, answered_at: Option<Instant>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.waiting_since = None;
        } else if answered_at.is_some() {
            self.waiting_since = answered_at;
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.since = now;
        self.consecutive = 0;
    }

    fn close(&mut self, now: Instant) {
        self.state = State::Closed;
        self.since = now;
        self.calls = 0;
        self.failures = 0;
        self.consecutive = 0;
    }
}

/// A call the breaker let through. [`Ticket::finish`] records how it went; dropped before
/// that (its caller was cancelled), the call is abandoned, so that a lost probe or a call
/// that no longer waits cannot wedge the breaker.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    breaker: &'a Mutex<Breaker>,
    admit: Admit,
    finished: bool,
}

/// Asks `breaker` to make a call at `now`: the ticket, or `None` when it refuses; and the
/// transition to report, if the asking opened it.
pub(crate) fn call(
    breaker: &Mutex<Breaker>,
    now: Instant,
) -> (Option<Ticket<'_>>, Option<Transition>) {
    let (admit, transition) = breaker.lock().admit(now);
    let ticket = (admit != Admit::Refuse).then_some(Ticket {
        breaker,
        admit,
        finished: false,
    });
    (ticket, transition)
}

impl Ticket<'_> {
    /// Records the call's outcome at `now`: the transition to report, if any.
    pub(crate) fn finish(mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        self.finished = true;
        self.breaker.lock().record(self.admit, outcome, now)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.lock().abandon(self.admit);
        }
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
            consecutive_failures: 0,
            stall: None,
            open_for: Duration::from_secs(5),
        }
    }

    fn outcome(failed: bool) -> Outcome {
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    #[test]
    fn failures_under_the_minimum_or_the_ratio_keep_it_closed() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        // Three failures: under the minimum of four calls.
        for _ in 0..3 {
            assert_eq!(breaker.admit(t0).0, Admit::Call);
            assert_eq!(breaker.record(Admit::Call, Outcome::Failure, t0), None);
        }
        // A new window forgets them; one failure in four calls is under the ratio.
        let t1 = t0 + Duration::from_secs(11);
        for failed in [true, false, false, false] {
            assert_eq!(breaker.record(Admit::Call, outcome(failed), t1), None);
        }
        assert_eq!(breaker.state(t1), State::Closed);
    }

    #[test]
    fn it_opens_refuses_probes_once_and_closes_on_a_good_probe() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        let outcomes = [false, true, true];
        for failed in outcomes {
            assert_eq!(breaker.record(Admit::Call, outcome(failed), t0), None);
        }
        assert_eq!(
            breaker.record(Admit::Call, Outcome::Failure, t0),
            Some(Transition::Opened),
            "3 failures in 4 calls"
        );
        assert_eq!(breaker.admit(t0 + Duration::from_secs(1)).0, Admit::Refuse);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(later), State::HalfOpen);
        assert_eq!(breaker.admit(later).0, Admit::Probe);
        assert_eq!(breaker.admit(later).0, Admit::Refuse, "one probe at a time");
        // A call admitted before it opened reports late: it changes nothing.
        assert_eq!(breaker.record(Admit::Call, Outcome::Failure, later), None);
        assert_eq!(
            breaker.record(Admit::Probe, Outcome::Success, later),
            Some(Transition::Closed)
        );
        assert_eq!(breaker.admit(later).0, Admit::Call);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_period() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(settings(), t0);
        for _ in 0..4 {
            breaker.record(Admit::Call, Outcome::Failure, t0);
        }
        let probe_at = t0 + Duration::from_secs(6);
        assert_eq!(breaker.admit(probe_at).0, Admit::Probe);
        assert_eq!(
            breaker.record(Admit::Probe, Outcome::Failure, probe_at),
            Some(Transition::Opened)
        );
        assert_eq!(
            breaker.admit(probe_at + Duration::from_secs(4)).0,
            Admit::Refuse
        );
        assert_eq!(
            breaker.admit(probe_at + Duration::from_secs(5)).0,
            Admit::Probe
        );
    }

    #[test]
    fn failures_in_a_row_open_it_before_the_window_has_enough_calls() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(
            Settings {
                consecutive_failures: 3,
                min_calls: 100,
                ..settings()
            },
            t0,
        );
        for outcome in [Outcome::Timeout, Outcome::Timeout, Outcome::Success] {
            let (admit, _) = breaker.admit(t0);
            assert_eq!(breaker.record(admit, outcome, t0), None);
        }
        let mut transitions = Vec::new();
        for _ in 0..3 {
            let (admit, _) = breaker.admit(t0);
            transitions.push(breaker.record(admit, Outcome::Failure, t0));
        }
        assert_eq!(transitions, [None, None, Some(Transition::Opened)]);
        assert_eq!(breaker.admit(t0).0, Admit::Refuse);
    }

    #[test]
    fn calls_waiting_past_the_stall_with_no_answer_open_it_at_the_next_admit() {
        let t0 = Instant::now();
        let stall = Duration::from_millis(100);
        let mut breaker = Breaker::new(
            Settings {
                stall: Some(stall),
                ..settings()
            },
            t0,
        );
        // Answers keep coming: calls that overlap for longer than the stall are fine.
        let (first, _) = breaker.admit(t0);
        let (second, _) = breaker.admit(t0 + Duration::from_millis(60));
        breaker.record(first, Outcome::Success, t0 + Duration::from_millis(90));
        let (third, none) = breaker.admit(t0 + Duration::from_millis(150));
        assert_eq!((third, none), (Admit::Call, None));
        assert_eq!(breaker.in_flight(), 2);
        // Then nothing answers for the stall: the next call opens it and is refused.
        let frozen = t0 + Duration::from_millis(190);
        assert_eq!(
            breaker.admit(frozen),
            (Admit::Refuse, Some(Transition::Opened))
        );
        assert_eq!(breaker.in_flight(), 2, "a refused call never counts");
        // The calls waiting when it opened time out later and change nothing.
        assert_eq!(breaker.record(second, Outcome::Timeout, frozen), None);
        assert_eq!(breaker.record(third, Outcome::Timeout, frozen), None);
        assert_eq!(breaker.in_flight(), 0);
        // The peer answers again: the probe closes it, and an idle breaker never stalls.
        let later = frozen + Duration::from_secs(5);
        let (probe, _) = breaker.admit(later);
        assert_eq!(probe, Admit::Probe);
        assert_eq!(
            breaker.record(probe, Outcome::Success, later),
            Some(Transition::Closed)
        );
        assert_eq!(
            breaker.admit(later + Duration::from_secs(60)),
            (Admit::Call, None)
        );
    }

    #[test]
    fn a_cancelled_probe_lets_another_probe_go_and_stops_waiting() {
        let t0 = Instant::now();
        let breaker = Mutex::new(Breaker::new(
            Settings {
                stall: Some(Duration::from_millis(100)),
                ..settings()
            },
            t0,
        ));
        for _ in 0..4 {
            let (ticket, _) = call(&breaker, t0);
            ticket.expect("closed").finish(Outcome::Failure, t0);
        }
        let later = t0 + Duration::from_secs(5);
        let (probe, _) = call(&breaker, later);
        assert!(probe.is_some(), "half-open: a probe");
        assert!(call(&breaker, later).0.is_none(), "one probe at a time");
        drop(probe);
        assert_eq!(breaker.lock().in_flight(), 0);
        let (again, _) = call(&breaker, later);
        assert_eq!(
            again
                .expect("another probe")
                .finish(Outcome::Success, later),
            Some(Transition::Closed)
        );
        // An abandoned call does not stall an idle breaker either.
        drop(call(&breaker, later).0);
        let (next, opened) = call(&breaker, later + Duration::from_secs(1));
        assert!(next.is_some() && opened.is_none());
    }
}
