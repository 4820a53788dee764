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
/// Clones share the bucket: pass one to the layer and to resumable streams so that they draw on
/// the same tokens.
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
    /// A bucket of `max_tokens` in (0, 1000], refilled by `token_ratio` (> 0, at most three
    /// decimal places are kept) per success. It starts full.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<RetryThrottle, ConfigError> {
        if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
            return Err(ConfigError::new(
                "max_tokens",
                max_tokens.to_string(),
                "must be in (0, 1000]",
            ));
        }
        let ratio = (token_ratio * f64::from(SCALE)).round();
        if !(token_ratio.is_finite() && ratio >= 1.0 && ratio <= f64::from(1000 * SCALE)) {
            return Err(ConfigError::new(
                "token_ratio",
                token_ratio.to_string(),
                "must be in [0.001, 1000]",
            ));
        }
        let max = (max_tokens * f64::from(SCALE)).round() as u32;
        Ok(RetryThrottle::from_bucket(max, ratio as u32))
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

    /// gRPC's usual setting: 10 tokens, 0.1 back per success.
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
    }

    #[test]
    fn clones_share_the_bucket() {
        let throttle = RetryThrottle::grpc_default();
        let clone = throttle.clone();
        clone.record_failure();
        assert_eq!(throttle.tokens(), 9.0);
    }
}
