//! Retry throttling: what keeps a brief outage from becoming a retry storm.
//!
//! Five attempts per call is five times the load on a server that is already failing. gRFC A6
//! bounds retries with a token bucket shared by every call of a channel; tower's
//! [`Budget`](tower::retry::budget::Budget)s (Finagle-style, such as `TpsBudget`) bound them as a
//! fraction of recent requests. Either can gate this layer's retries.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tower::retry::budget::Budget;

use crate::error::ConfigError;

/// Fixed point: tokens are counted in thousandths, so A6's three-decimal `tokenRatio` is exact.
const SCALE: u32 = 1000;

/// gRFC A6 retry throttling: a token bucket shared by every clone of a layer.
///
/// Each failed attempt with a retryable code takes one token, each success gives back
/// `token_ratio`; retries (never first attempts) are allowed only while the bucket holds more
/// than half of `max_tokens`. Lock-free: one atomic, fixed-point arithmetic.
///
/// Clones share the bucket: pass one to the layer
/// ([`RetryLayerBuilder::throttle`](crate::RetryLayerBuilder::throttle)) and to resumable
/// streams ([`ResumePolicyBuilder::throttle`](crate::resume::ResumePolicyBuilder::throttle)) so that
/// they draw on the same tokens, and an outage that fails every call does not also turn every
/// open stream into a reopen storm.
///
/// ```
/// use tonic_retry::{ResumePolicy, RetryLayer, RetryThrottle};
///
/// let throttle = RetryThrottle::new(10.0, 0.1)?;
/// let layer = RetryLayer::builder().throttle(throttle.clone()).build()?;
/// let streams = ResumePolicy::builder().throttle(throttle.clone()).build()?;
/// # let _ = (layer, streams);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
///
/// The bucket's arithmetic:
///
/// ```
/// use tonic_retry::RetryThrottle;
///
/// let throttle = RetryThrottle::new(10.0, 0.1)?;
/// assert!(throttle.allows_retry());
/// for _ in 0..5 {
///     throttle.record_failure();
/// }
/// assert!(!throttle.allows_retry(), "5 of 10 tokens left is not more than half");
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryThrottle {
    bucket: Arc<Bucket>,
}

struct Bucket {
    milli_tokens: AtomicU32,
    max: u32,
    ratio: u32,
}

impl RetryThrottle {
    /// A bucket of `max_tokens` in (0, 1000], refilled by `token_ratio` (> 0, at most 1000) per
    /// success. Both are kept to three decimal places (gRFC A6), rounded, and each must be at
    /// least 0.001 once rounded. The bucket starts full.
    ///
    /// ```
    /// use tonic_retry::RetryThrottle;
    ///
    /// let throttle = RetryThrottle::new(100.0, 0.5)?;
    /// assert_eq!(throttle.tokens(), 100.0);
    /// let err = RetryThrottle::new(0.0, 0.1).unwrap_err();
    /// assert_eq!(err.field(), "max_tokens");
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<RetryThrottle, ConfigError> {
        let (max, ratio) = bucket_settings(max_tokens, token_ratio, ("max_tokens", "token_ratio"))?;
        Ok(RetryThrottle::from_bucket(max, ratio))
    }

    fn from_bucket(max: u32, ratio: u32) -> RetryThrottle {
        RetryThrottle {
            bucket: Arc::new(Bucket {
                milli_tokens: AtomicU32::new(max),
                max,
                ratio,
            }),
        }
    }

    /// gRPC's usual setting: 10 tokens, 0.1 back per success; the same as
    /// `RetryThrottle::new(10.0, 0.1)` or a service config's
    /// `"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}`.
    pub fn grpc_default() -> RetryThrottle {
        RetryThrottle::from_bucket(10 * SCALE, SCALE / 10)
    }

    /// Tokens in the bucket now.
    pub fn tokens(&self) -> f64 {
        f64::from(self.bucket.milli_tokens.load(Ordering::Relaxed)) / f64::from(SCALE)
    }

    /// Whether a retry may be sent now.
    pub fn allows_retry(&self) -> bool {
        self.bucket.milli_tokens.load(Ordering::Relaxed) > self.bucket.max / 2
    }

    /// An attempt failed with a retryable code: take a token.
    pub fn record_failure(&self) {
        let _ =
            self.bucket
                .milli_tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                    Some(tokens.saturating_sub(SCALE))
                });
    }

    /// An attempt succeeded: give back `token_ratio`.
    pub fn record_success(&self) {
        let Bucket { max, ratio, .. } = *self.bucket;
        let _ =
            self.bucket
                .milli_tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                    (tokens < max).then(|| (tokens + ratio).min(max))
                });
    }
}

impl fmt::Debug for RetryThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryThrottle")
            .field("tokens", &self.tokens())
            .field(
                "max_tokens",
                &(f64::from(self.bucket.max) / f64::from(SCALE)),
            )
            .field(
                "token_ratio",
                &(f64::from(self.bucket.ratio) / f64::from(SCALE)),
            )
            .finish()
    }
}

/// The one validation of a bucket's settings, shared by [`RetryThrottle::new`] and the
/// service config's `retryThrottling` (which names the fields `maxTokens` and `tokenRatio`):
/// whatever one accepts, the other builds. Returns the bucket size and the refill per success in
/// thousandths of a token.
pub(crate) fn bucket_settings(
    max_tokens: f64,
    token_ratio: f64,
    (max_tokens_field, token_ratio_field): (&str, &str),
) -> Result<(u32, u32), ConfigError> {
    let thousandths = |value: f64, field: &str| -> Result<u32, ConfigError> {
        if !(value > 0.0 && value <= 1000.0) {
            return Err(ConfigError::new(
                field,
                value.to_string(),
                "must be in (0, 1000]",
            ));
        }
        let scaled = (value * f64::from(SCALE)).round();
        if scaled < 1.0 {
            // Positive, yet nothing once kept to three decimals: a bucket of 0 would never allow
            // a retry, a refill of 0 would never give a token back.
            return Err(ConfigError::new(
                field,
                value.to_string(),
                "must be at least 0.001 (three decimal places are kept)",
            ));
        }
        // In [1, 1_000_000]: the conversion is exact.
        Ok(scaled as u32)
    };
    Ok((
        thousandths(max_tokens, max_tokens_field)?,
        thousandths(token_ratio, token_ratio_field)?,
    ))
}

/// What gates a layer's retries.
pub(crate) enum RetryGate {
    Unlimited,
    Throttle(RetryThrottle),
    Budget(Box<dyn Budget + Send + Sync>),
}

impl RetryGate {
    /// A call started (tower budgets earn their retries from requests).
    pub(crate) fn on_call(&self) {
        if let RetryGate::Budget(budget) = self {
            budget.deposit();
        }
    }

    /// An attempt failed with a retryable code (or a server pushback).
    pub(crate) fn on_retryable_failure(&self) {
        if let RetryGate::Throttle(throttle) = self {
            throttle.record_failure();
        }
    }

    /// Asks for one retry; a budget spends it.
    pub(crate) fn permit_retry(&self) -> bool {
        match self {
            RetryGate::Unlimited => true,
            RetryGate::Throttle(throttle) => throttle.allows_retry(),
            RetryGate::Budget(budget) => budget.withdraw(),
        }
    }

    pub(crate) fn throttle(&self) -> Option<&RetryThrottle> {
        match self {
            RetryGate::Throttle(throttle) => Some(throttle),
            _ => None,
        }
    }
}

impl fmt::Debug for RetryGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryGate::Unlimited => f.write_str("Unlimited"),
            RetryGate::Throttle(throttle) => throttle.fmt(f),
            RetryGate::Budget(_) => f.write_str("Budget(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a6_bucket_arithmetic() {
        let throttle = RetryThrottle::new(10.0, 0.1).unwrap();
        for _ in 0..4 {
            throttle.record_failure();
        }
        assert!(throttle.allows_retry(), "6 > 5");
        throttle.record_failure();
        assert!(!throttle.allows_retry(), "5 is not > 5");
        throttle.record_success();
        assert!(throttle.allows_retry(), "5.1 > 5");
        for _ in 0..1000 {
            throttle.record_success();
        }
        assert_eq!(throttle.tokens(), 10.0);
        for _ in 0..1000 {
            throttle.record_failure();
        }
        assert_eq!(throttle.tokens(), 0.0);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            RetryThrottle::new(0.0, 0.1).unwrap_err().field(),
            "max_tokens"
        );
        assert_eq!(
            RetryThrottle::new(1001.0, 0.1).unwrap_err().field(),
            "max_tokens"
        );
        assert_eq!(
            RetryThrottle::new(f64::NAN, 0.1).unwrap_err().field(),
            "max_tokens"
        );
        assert_eq!(
            RetryThrottle::new(10.0, 0.0).unwrap_err().field(),
            "token_ratio"
        );
        assert_eq!(
            RetryThrottle::new(10.0, -1.0).unwrap_err().field(),
            "token_ratio"
        );
        assert!(RetryThrottle::new(1000.0, 0.001).is_ok());
        for (max_tokens, token_ratio, field) in [
            (10.0, 1e-10, "token_ratio"),
            (10.0, 0.0004, "token_ratio"),
            (10.0, f64::INFINITY, "token_ratio"),
            (10.0, f64::NAN, "token_ratio"),
            (1e-10, 0.1, "max_tokens"),
            (f64::INFINITY, 0.1, "max_tokens"),
            (f64::NEG_INFINITY, 0.1, "max_tokens"),
        ] {
            let err = RetryThrottle::new(max_tokens, token_ratio).unwrap_err();
            assert_eq!(err.field(), field, "{max_tokens}, {token_ratio}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_settings_build_or_fail_cleanly(max_tokens: f64, token_ratio: f64) {
            if let Ok(throttle) = RetryThrottle::new(max_tokens, token_ratio) {
                throttle.record_failure();
                throttle.record_success();
                proptest::prop_assert!(throttle.tokens() <= 1000.0);
            }
        }
    }

    #[test]
    fn clones_share_the_bucket() {
        let throttle = RetryThrottle::grpc_default();
        let clone = throttle.clone();
        clone.record_failure();
        assert_eq!(throttle.tokens(), 9.0);
    }
}
