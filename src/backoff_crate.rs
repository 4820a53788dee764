//! An adapter for the `backoff` crate's `ExponentialBackoff` (feature `backoff`).
//!
//! The `backoff` crate is unmaintained (RUSTSEC-2025-0012); it stays behind this feature so that
//! users who already configure it can keep their settings, and nothing on the core path uses it.

use std::time::Duration;

use crate::backoff::Backoff;

/// A [`Backoff`] that replays a `backoff::ExponentialBackoff`'s schedule.
///
/// Every call replays the schedule from a fresh copy, so calls never share its state.
/// `max_elapsed_time`, if set, is measured from the start of each call's retries.
///
/// ```
/// # #[cfg(feature = "backoff")] {
/// use tonic_retry::BackoffCrateSchedule;
/// let schedule = BackoffCrateSchedule::new(backoff::ExponentialBackoff::default());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BackoffCrateSchedule {
    template: backoff::ExponentialBackoff,
}

impl BackoffCrateSchedule {
    /// Wraps a configured `backoff::ExponentialBackoff`.
    pub fn new(template: backoff::ExponentialBackoff) -> BackoffCrateSchedule {
        BackoffCrateSchedule { template }
    }
}

impl Backoff for BackoffCrateSchedule {
    fn delay(&self, retry: u32, _random: f64) -> Option<Duration> {
        use backoff::backoff::Backoff as _;
        let mut schedule = self.template.clone();
        // The template's clock started when it was built; without a reset its
        // `max_elapsed_time` would end every call's retries once the process is that old.
        schedule.reset();
        let mut delay = None;
        for _ in 0..retry.max(1) {
            delay = Some(schedule.next_backoff()?);
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_the_crate_schedule() {
        let template = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            randomization_factor: 0.0,
            multiplier: 2.0,
            max_interval: Duration::from_secs(1),
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        let schedule = BackoffCrateSchedule::new(template);
        assert_eq!(schedule.delay(1, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(schedule.delay(3, 0.0), Some(Duration::from_millis(400)));
        assert_eq!(schedule.delay(10, 0.0), Some(Duration::from_secs(1)));
    }
}
