//! Per-sink circuit breaker: a pure state machine; the caller passes the current time.

use std::time::{Duration, Instant};

use super::BreakerConfig;

/// Whether a delivery may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The delivery may go ahead (normally, or as the one trial of a half-open breaker).
    Allowed,
    /// The breaker is open; the next trial is allowed this much later.
    Rejected { retry_in: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_started: Instant },
}

/// Opens after `failure_threshold` consecutive failed deliveries, fails fast for `open_for`,
/// then lets one trial through: its success closes the breaker, its failure reopens it.
/// A trial that never reports back (its caller gave up) is replaced after `open_for`.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker with the configured threshold and open period.
    pub(crate) fn new(config: &BreakerConfig) -> Self {
        CircuitBreaker {
            failure_threshold: config.failure_threshold,
            open_for: Duration::from_millis(config.open_ms),
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Decides whether a delivery may start at `now`, moving an expired open breaker to half-open.
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        let next_trial = match self.state {
            State::Closed { .. } => return Admission::Allowed,
            State::Open { until } => until,
            State::HalfOpen { trial_started } => trial_started + self.open_for,
        };
        if now < next_trial {
            return Admission::Rejected {
                retry_in: next_trial - now,
            };
        }
        self.state = State::HalfOpen { trial_started: now };
        Admission::Allowed
    }

    /// Records a delivery that succeeded.
    pub(crate) fn record_success(&mut self) {
        self.state = State::Closed {
            consecutive_failures: 0,
        };
    }

    /// Records a delivery that failed at `now`.
    pub(crate) fn record_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed {
                consecutive_failures,
            } if consecutive_failures.saturating_add(1) < self.failure_threshold => State::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            _ => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// Whether calls are currently failing fast or waiting for a trial.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(&BreakerConfig {
            failure_threshold: threshold,
            open_ms: OPEN.as_millis() as u64,
        })
    }

    fn rejected(retry_in: Duration) -> Admission {
        Admission::Rejected { retry_in }
    }

    #[test]
    fn stays_closed_below_the_threshold() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Allowed);
            b.record_failure(t0);
        }
        assert!(!b.is_open());
        assert_eq!(b.admit(t0), Admission::Allowed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = breaker(2);
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        assert!(!b.is_open());
        b.record_failure(t0);
        assert!(b.is_open());
    }

    #[test]
    fn opens_at_the_threshold_and_fails_fast_until_the_period_ends() {
        let t0 = Instant::now();
        let mut b = breaker(2);
        b.record_failure(t0);
        b.record_failure(t0);
        assert!(b.is_open());
        assert_eq!(b.admit(t0), rejected(OPEN));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), rejected(Duration::from_secs(20)));
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.record_failure(t0);
        let t1 = t0 + OPEN;
        assert_eq!(b.admit(t1), Admission::Allowed);
        assert!(b.is_open());
        assert_eq!(b.admit(t1), rejected(OPEN));
        assert_eq!(
            b.admit(t1 + Duration::from_secs(1)),
            rejected(OPEN - Duration::from_secs(1))
        );
    }

    #[test]
    fn successful_trial_closes_the_breaker() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.record_failure(t0);
        assert_eq!(b.admit(t0 + OPEN), Admission::Allowed);
        b.record_success();
        assert!(!b.is_open());
        assert_eq!(b.admit(t0 + OPEN), Admission::Allowed);
        assert_eq!(b.admit(t0 + OPEN), Admission::Allowed);
    }

    #[test]
    fn failed_trial_reopens_for_a_full_period() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let t1 = t0 + OPEN + Duration::from_secs(5);
        assert_eq!(b.admit(t1), Admission::Allowed);
        b.record_failure(t1);
        assert!(b.is_open());
        assert_eq!(b.admit(t1), rejected(OPEN));
        assert_eq!(b.admit(t1 + OPEN), Admission::Allowed);
    }

    #[test]
    fn an_abandoned_trial_is_replaced_after_a_period() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        b.record_failure(t0);
        assert_eq!(b.admit(t0 + OPEN), Admission::Allowed);
        assert_eq!(b.admit(t0 + OPEN * 2), Admission::Allowed);
        assert_eq!(b.admit(t0 + OPEN * 2), rejected(OPEN));
    }
}
