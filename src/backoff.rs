//! Backoff schedules: how long to wait before each retry.
//!
//! A [`RetryPolicy`](crate::RetryPolicy) or [`ResumePolicy`](crate::ResumePolicy) takes any
//! [`BackoffSchedule`]; [`ExponentialBackoff`] is gRFC A6's, the default.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ConfigError;

// The adapter is a part of this module (not a sibling that this module re-exports), so the two
// do not import each other.
#[cfg(feature = "backoff")]
mod backoff_crate;

#[cfg(feature = "backoff")]
#[cfg_attr(docsrs, doc(cfg(feature = "backoff")))]
pub use self::backoff_crate::BackoffCrateSchedule;

/// A backoff schedule: the delay before each retry.
///
/// Schedules are stateless, so one schedule serves every call: the layer tells it which retry
/// this is and hands it a uniform random sample for jitter. Server pushback restarts the count
/// (gRFC A6), which a stateless schedule gets for free.
///
/// [`ExponentialBackoff`] is gRFC A6's schedule; write your own for anything else:
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::RetryPolicy;
/// use tonic_retry::backoff::BackoffSchedule;
///
/// /// A fixed list of delays, without jitter; no retry after the last.
/// #[derive(Debug)]
/// struct Steps(&'static [Duration]);
///
/// impl BackoffSchedule for Steps {
///     fn delay(&self, retry: u32, _random: f64) -> Option<Duration> {
///         let index = usize::try_from(retry.checked_sub(1)?).ok()?;
///         self.0.get(index).copied()
///     }
/// }
///
/// const STEPS: &[Duration] = &[Duration::from_millis(10), Duration::from_millis(500)];
/// let policy = RetryPolicy::builder().backoff(Steps(STEPS)).build()?;
/// assert_eq!(policy.backoff().delay(2, 0.5), Some(Duration::from_millis(500)));
/// assert_eq!(policy.backoff().delay(3, 0.5), None); // the call stops: backoff schedule ended
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
pub trait BackoffSchedule: fmt::Debug + Send + Sync + 'static {
    /// The delay before retry number `retry` (1 for the first retry), given `random`, a uniform
    /// sample in `[0, 1)`. `None` means: do not retry again.
    fn delay(&self, retry: u32, random: f64) -> Option<Duration>;
}

/// gRFC A6's exponential backoff: before retry `n`, wait
/// `min(initial * multiplier^(n-1), max) * random(0.8, 1.2)`.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::backoff::{BackoffSchedule, ExponentialBackoff};
///
/// let backoff = ExponentialBackoff::new(
///     Duration::from_millis(100),
///     Duration::from_secs(1),
///     2.0,
/// )?;
/// // The third retry's base delay is 400 ms; jitter keeps it within 320..480 ms.
/// let delay = backoff.delay(3, 0.5).unwrap();
/// assert_eq!(delay, Duration::from_millis(400));
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl ExponentialBackoff {
    /// The jitter of gRFC A6: each delay is scaled by a factor drawn from `1 ± JITTER`.
    pub const JITTER: f64 = 0.2;

    /// A schedule from `initial` growing by `multiplier` up to `max`.
    ///
    /// Both durations must be positive, `max` at least `initial`, and the multiplier finite and
    /// positive (gRFC A6; a multiplier below 1 shrinks the delays, which is allowed; a huge one
    /// reaches `max` at the first growth). Any durations are taken, up to `Duration::MAX` (as "no
    /// cap"): every delay is computed with saturating arithmetic, so no duration, retry number or
    /// multiplier overflows, and the layer and resumable streams add delays to the clock with
    /// checked arithmetic.
    pub fn new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
    ) -> Result<ExponentialBackoff, ConfigError> {
        if initial.is_zero() {
            return Err(ConfigError::new("initial_backoff", "0s", "must be > 0"));
        }
        if max.is_zero() {
            return Err(ConfigError::new("max_backoff", "0s", "must be > 0"));
        }
        if max < initial {
            return Err(ConfigError::new(
                "max_backoff",
                format!("{max:?}"),
                format!("must be >= initial_backoff ({initial:?})"),
            ));
        }
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(ConfigError::new(
                "backoff_multiplier",
                multiplier.to_string(),
                "must be > 0",
            ));
        }
        Ok(ExponentialBackoff {
            initial,
            max,
            multiplier,
        })
    }

    /// A schedule with no delay at all: retries follow each other at once. For tests and for
    /// benchmarks of the retry path itself.
    ///
    /// ```
    /// use tonic_retry::RetryPolicy;
    /// use tonic_retry::backoff::ExponentialBackoff;
    ///
    /// let in_tests = RetryPolicy::builder().backoff(ExponentialBackoff::immediate()).build()?;
    /// # let _ = in_tests;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub const fn immediate() -> ExponentialBackoff {
        ExponentialBackoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 1.0,
        }
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay before jitter.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The growth factor between delays.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The delay before retry `retry` without jitter: `min(initial * multiplier^(retry-1), max)`.
    /// Any `retry` is fine: past `max` the delay stays at `max` (`retry` 0 reads as 1).
    pub fn base_delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        // Too large (or infinite) is past `max`; `max` is also the answer for NaN, which a
        // validated multiplier cannot give but a clamp must not turn into zero.
        Duration::try_from_secs_f64(seconds).map_or(self.max, |delay| delay.min(self.max))
    }
}

impl Default for ExponentialBackoff {
    /// 100 ms, doubling, at most 5 s.
    fn default() -> Self {
        ExponentialBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl BackoffSchedule for ExponentialBackoff {
    /// Any `random` is fine: it is clamped to `[0, 1]`, and NaN means no jitter. The jittered
    /// delay saturates at `Duration::MAX` rather than overflow (`Duration::mul_f64` panics).
    fn delay(&self, retry: u32, random: f64) -> Option<Duration> {
        let random = if random.is_nan() {
            0.5
        } else {
            random.clamp(0.0, 1.0)
        };
        let factor = 1.0 - Self::JITTER + 2.0 * Self::JITTER * random;
        let seconds = self.base_delay(retry).as_secs_f64() * factor;
        Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }
}

/// The source of jitter: a SplitMix64 sequence on one atomic counter, shared by every clone of a
/// layer. Lock-free, allocation-free, and seedable so that tests can replay a schedule.
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    pub(crate) fn seeded(seed: u64) -> Jitter {
        Jitter {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn from_entropy() -> Jitter {
        Jitter::seeded(RandomState::new().build_hasher().finish())
    }

    /// A uniform sample in `[0, 1)`.
    pub(crate) fn next_unit(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits make an exact f64 in [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validation_names_the_field() {
        let zero = ExponentialBackoff::new(Duration::ZERO, Duration::from_secs(1), 2.0);
        assert_eq!(zero.unwrap_err().field(), "initial_backoff");
        let small_max =
            ExponentialBackoff::new(Duration::from_secs(2), Duration::from_secs(1), 2.0);
        assert_eq!(small_max.unwrap_err().field(), "max_backoff");
        let bad = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(1), -1.0);
        let err = bad.unwrap_err();
        assert_eq!(err.field(), "backoff_multiplier");
        assert!(err.to_string().contains("-1"), "{err}");
    }

    #[test]
    fn jitter_is_uniform_enough_and_seedable() {
        let a = Jitter::seeded(7);
        let b = Jitter::seeded(7);
        let samples: Vec<f64> = (0..1000).map(|_| a.next_unit()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        assert_eq!(samples[0], b.next_unit());
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }

    /// `delay` is `base` scaled by a factor in `1 ± JITTER` (give or take float rounding).
    fn within_jitter(delay: Duration, base: Duration) -> bool {
        let ratio = delay.as_secs_f64() / base.as_secs_f64();
        (0.8 - 1e-12..=1.2 + 1e-12).contains(&ratio)
    }

    /// Issue 10 §3: `Duration::MAX` panicked in `mul_f64` at the first retry.
    #[test]
    fn extreme_schedules_saturate_instead_of_panicking() {
        let widest = ExponentialBackoff::new(Duration::MAX, Duration::MAX, f64::MAX).unwrap();
        let uncapped = ExponentialBackoff::new(Duration::from_secs(1), Duration::MAX, 2.0).unwrap();
        let limit = Duration::from_secs(315_576_000_000);
        let long = ExponentialBackoff::new(limit, limit, f64::MAX).unwrap();
        let steep =
            ExponentialBackoff::new(Duration::from_nanos(1), Duration::from_secs(1), f64::MAX)
                .unwrap();
        let randoms = [
            0.0,
            0.5,
            1.0,
            -1.0,
            2.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for retry in [0, 1, 2, 3, 1000, u32::MAX - 1, u32::MAX] {
            assert_eq!(widest.base_delay(retry), Duration::MAX);
            assert_eq!(long.base_delay(retry), limit);
            for random in randoms {
                let delay = long.delay(retry, random).unwrap();
                assert!(
                    within_jitter(delay, limit),
                    "{delay:?} at {retry}, {random}"
                );
                // Past `Duration::MAX` the jittered delay saturates there.
                let delay = widest.delay(retry, random).unwrap();
                assert!(delay >= Duration::MAX.mul_f64(0.79), "{delay:?}");
                let _ = uncapped.delay(retry, random).unwrap();
            }
        }
        assert_eq!(widest.delay(1, 1.0), Some(Duration::MAX));
        assert_eq!(uncapped.delay(200, 1.0), Some(Duration::MAX));
        assert_eq!(steep.base_delay(1), Duration::from_nanos(1));
        assert_eq!(steep.base_delay(2), Duration::from_secs(1));
        assert_eq!(
            steep.delay(u32::MAX, 1.0),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(
            steep.delay(u32::MAX, f64::NAN),
            Some(Duration::from_secs(1))
        );
    }

    proptest! {
        #[test]
        fn any_settings_build_or_fail_cleanly_and_every_delay_is_bounded(
            initial in any::<u64>(),
            max in any::<u64>(),
            nanos in 0u32..1_000_000_000,
            multiplier in any::<f64>(),
            retry in any::<u32>(),
            random in any::<f64>(),
        ) {
            let initial = Duration::new(initial, nanos);
            let max = Duration::new(max, nanos);
            if let Ok(backoff) = ExponentialBackoff::new(initial, max, multiplier) {
                let delay = backoff.delay(retry, random).unwrap();
                prop_assert!(delay.as_secs_f64() <= max.as_secs_f64() * (1.2 + 1e-12));
            }
        }

        #[test]
        fn every_delay_is_within_a6_bounds(
            initial_ms in 1u64..10_000,
            extra_ms in 0u64..100_000,
            multiplier in 0.1f64..10.0,
            retry in 1u32..64,
            random in 0.0f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let backoff = ExponentialBackoff::new(initial, max, multiplier).unwrap();
            let expected = (initial.as_secs_f64() * multiplier.powi(retry as i32 - 1))
                .min(max.as_secs_f64());
            let delay = backoff.delay(retry, random).unwrap().as_secs_f64();
            prop_assert!(delay >= expected * 0.8 - 1e-6, "{delay} < 0.8 x {expected}");
            prop_assert!(delay <= expected * 1.2 + 1e-6, "{delay} > 1.2 x {expected}");
        }

        #[test]
        fn huge_retry_numbers_do_not_panic(retry in any::<u32>(), random in any::<f64>()) {
            let delay = ExponentialBackoff::default().delay(retry, random).unwrap();
            prop_assert!(delay <= Duration::from_secs(6));
        }
    }
}
