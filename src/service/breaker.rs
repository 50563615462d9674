//! A circuit breaker for one service: a pure state machine driven by explicit instants.
//!
//! Closed: every call goes through; `failures` consecutive failures open it. Open: calls are
//! refused without touching the network until `open_for` has passed. Half-open: one trial call
//! goes through and the others are refused; its success closes the breaker, its failure opens it
//! again. A trial whose result never arrives (its caller was cancelled) is replaced by a new
//! trial after another `open_for`, so the breaker cannot stay half-open for ever.

use std::time::{Duration, Instant};

use serde::Serialize;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before a trial call.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One trial call is (or may be) under way.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order of the `state` label's values.
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The state's name as reported (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes: the breaker is closed.
    Allowed,
    /// Yes, as the one trial of a half-open breaker.
    Trial,
    /// No: the breaker is open (or a trial is under way); try again in `retry_in`.
    Refused {
        /// Until the breaker lets a trial through.
        retry_in: Duration,
    },
}

impl Admission {
    /// Whether the call may go ahead.
    pub fn allowed(self) -> bool {
        !matches!(self, Self::Refused { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_since: Instant },
}

/// The breaker of one service.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings: BreakerSettings {
                failures: settings.failures.max(1),
                ..settings
            },
            state: State::Closed { failures: 0 },
        }
    }

    /// The current state (an open breaker whose time is up reports `HalfOpen`).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`; a trial admission must be followed by [`Breaker::record`].
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now < until => Admission::Refused {
                retry_in: until - now,
            },
            State::Open { .. } => {
                self.state = State::HalfOpen { trial_since: now };
                Admission::Trial
            }
            State::HalfOpen { trial_since } => {
                let stale = trial_since + self.settings.open_for;
                if now >= stale {
                    self.state = State::HalfOpen { trial_since: now };
                    Admission::Trial
                } else {
                    Admission::Refused {
                        retry_in: stale - now,
                    }
                }
            }
        }
    }

    /// Records the result of an admitted call: `ok` is false for failures that say the service
    /// is unwell (connection errors, timeouts, 408, 429, 5xx).
    pub fn record(&mut self, ok: bool, now: Instant) {
        self.state = match (self.state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.settings.failures => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // A late failure of a call admitted before the breaker opened keeps it open as it is.
            (State::Open { until }, false) => State::Open { until },
            (State::Closed { .. } | State::HalfOpen { .. }, false) => State::Open {
                until: now + self.settings.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            open_for: OPEN_FOR,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.admit(t0), Admission::Allowed, "a success reset the count");
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admission::Refused {
                retry_in: Duration::from_secs(6)
            }
        );
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_success_closes() {
        let t0 = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.record(false, t0));
        let later = t0 + OPEN_FOR;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Trial);
        assert!(!b.admit(later).allowed(), "only one trial at a time");
        b.record(true, later + Duration::from_millis(5));
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_trial_opens_again_for_the_full_period() {
        let t0 = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.record(false, t0));
        let trial = t0 + OPEN_FOR + Duration::from_secs(1);
        assert_eq!(b.admit(trial), Admission::Trial);
        b.record(false, trial);
        assert_eq!(
            b.admit(trial + Duration::from_secs(1)),
            Admission::Refused {
                retry_in: OPEN_FOR - Duration::from_secs(1)
            }
        );
        assert_eq!(b.admit(trial + OPEN_FOR), Admission::Trial);
    }

    #[test]
    fn a_trial_that_never_reports_is_replaced() {
        let t0 = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.record(false, t0));
        assert_eq!(b.admit(t0 + OPEN_FOR), Admission::Trial);
        assert!(!b.admit(t0 + OPEN_FOR + OPEN_FOR / 2).allowed());
        assert_eq!(b.admit(t0 + OPEN_FOR * 2), Admission::Trial);
    }

    #[test]
    fn late_failures_do_not_extend_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| b.record(false, t0));
        b.record(false, t0 + Duration::from_secs(9));
        assert_eq!(b.admit(t0 + OPEN_FOR), Admission::Trial);
    }
}
