//! An adapter for the `backoff` crate's `ExponentialBackoff` (feature `backoff`).
//!
//! The `backoff` crate is unmaintained (RUSTSEC-2025-0012); it stays behind this feature so that
//! users who already configure it can keep their settings, and nothing on the core path uses it.

use std::time::Duration;

use super::BackoffSchedule;

/// A [`BackoffSchedule`] that follows a `backoff::ExponentialBackoff`'s settings.
///
/// The delay before retry `n` is the crate's interval `n` (`initial_interval`, then times
/// `multiplier` per retry, at most `max_interval`), randomized by `randomization_factor` with
/// the layer's jitter sample, so that a seeded layer replays its delays. `max_elapsed_time`, if
/// set, ends the retries of a call once its delays so far plus this one would pass it (the time
/// spent in attempts is not the schedule's to know: the call's deadline bounds that).
///
/// The schedule is computed from the template's fields, never by running the crate's stateful
/// iterator: that iterator reads a wall clock, draws its own randomness, takes `n` steps for
/// retry `n` (four billion for `u32::MAX`) and panics when a huge interval is added to its
/// elapsed time. Here any settings and any retry number give a delay without panicking.
///
/// ```
/// # #[cfg(feature = "backoff")] {
/// use tonic_retry::backoff::BackoffCrateSchedule;
/// let schedule = BackoffCrateSchedule::new(backoff::ExponentialBackoff::default());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BackoffCrateSchedule {
    template: backoff::ExponentialBackoff,
}

/// Retries whose earlier delays are summed one by one for `max_elapsed_time`; past it the
/// last interval stands for the rest (the layer itself never passes
/// [`MAX_ATTEMPTS_LIMIT`](crate::policy::MAX_ATTEMPTS_LIMIT)).
const EXACT_STEPS: u32 = 1024;

impl BackoffCrateSchedule {
    /// Wraps a configured `backoff::ExponentialBackoff`.
    pub fn new(template: backoff::ExponentialBackoff) -> BackoffCrateSchedule {
        BackoffCrateSchedule { template }
    }

    /// The crate's interval before retry `retry`, before randomization.
    fn interval(&self, retry: u32) -> Duration {
        let template = &self.template;
        if retry <= 1 {
            return template.initial_interval;
        }
        let exponent = i32::try_from(retry - 1).unwrap_or(i32::MAX);
        let seconds = template.initial_interval.as_secs_f64() * template.multiplier.powi(exponent);
        // Too large, infinite, negative or NaN (an odd multiplier): the crate's overflow check
        // gives `max_interval` there too.
        Duration::try_from_secs_f64(seconds).map_or(template.max_interval, |interval| {
            interval.min(template.max_interval)
        })
    }

    /// The sum of the intervals before retry `retry`, saturating.
    fn elapsed_before(&self, retry: u32) -> Duration {
        let exact = retry.min(EXACT_STEPS);
        let mut elapsed = Duration::ZERO;
        for earlier in 1..exact {
            elapsed = elapsed.saturating_add(self.interval(earlier));
        }
        let rest = retry - exact;
        elapsed.saturating_add(self.interval(exact).saturating_mul(rest))
    }
}

impl BackoffSchedule for BackoffCrateSchedule {
    fn delay(&self, retry: u32, random: f64) -> Option<Duration> {
        let retry = retry.max(1);
        let spread = match self.template.randomization_factor {
            factor if factor.is_nan() => 0.0,
            factor => factor.clamp(0.0, 1.0),
        };
        let random = if random.is_nan() {
            0.5
        } else {
            random.clamp(0.0, 1.0)
        };
        let factor = 1.0 - spread + 2.0 * spread * random;
        let seconds = self.interval(retry).as_secs_f64() * factor;
        let delay = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        match self.template.max_elapsed_time {
            Some(budget) if self.elapsed_before(retry).saturating_add(delay) > budget => None,
            _ => Some(delay),
        }
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

    #[test]
    fn randomization_uses_the_layers_sample() {
        let template = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            randomization_factor: 0.5,
            multiplier: 2.0,
            max_interval: Duration::from_secs(1),
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        let schedule = BackoffCrateSchedule::new(template);
        assert_eq!(schedule.delay(2, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(schedule.delay(2, 0.5), Some(Duration::from_millis(200)));
        assert_eq!(schedule.delay(2, 1.0), Some(Duration::from_millis(300)));
    }

    #[test]
    fn max_elapsed_time_bounds_the_sum_of_the_delays() {
        let template = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            randomization_factor: 0.0,
            multiplier: 2.0,
            max_interval: Duration::from_secs(1),
            max_elapsed_time: Some(Duration::from_millis(700)),
            ..backoff::ExponentialBackoff::default()
        };
        let schedule = BackoffCrateSchedule::new(template);
        // 100 + 200 + 400 = 700: the third fits, the fourth (800 more) does not.
        assert_eq!(schedule.delay(3, 0.0), Some(Duration::from_millis(400)));
        assert_eq!(schedule.delay(4, 0.0), None);
    }

    /// The crate's own iterator took `retry` steps (hung at `u32::MAX`) and panicked adding a
    /// huge interval to its elapsed time.
    #[test]
    fn extreme_settings_and_retry_numbers_do_not_hang_or_panic() {
        for (initial, max, multiplier, elapsed) in [
            (
                Duration::MAX,
                Duration::MAX,
                2.0,
                Some(Duration::from_secs(1)),
            ),
            (Duration::MAX, Duration::MAX, f64::MAX, None),
            (
                Duration::from_nanos(1),
                Duration::MAX,
                f64::NAN,
                Some(Duration::MAX),
            ),
            (
                Duration::from_secs(1),
                Duration::ZERO,
                -3.0,
                Some(Duration::ZERO),
            ),
        ] {
            let schedule = BackoffCrateSchedule::new(backoff::ExponentialBackoff {
                current_interval: initial,
                initial_interval: initial,
                randomization_factor: f64::INFINITY,
                multiplier,
                max_interval: max,
                max_elapsed_time: elapsed,
                ..backoff::ExponentialBackoff::default()
            });
            for retry in [0, 1, 2, 1000, u32::MAX] {
                for random in [0.0, 1.0, f64::NAN] {
                    let _ = schedule.delay(retry, random);
                }
            }
        }
    }
}
