//! How a resumable stream reopens: which failures, how often, how long apart, and what may veto
//! a reopen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::backoff::{Backoff, ExponentialBackoff};
use crate::code::CodeSet;
use crate::error::ConfigError;
use crate::policy::{DEFAULT_FAIL_FAST_CODES, DEFAULT_RETRYABLE_CODES};
use crate::resume::history::ReopenRecord;
use crate::throttle::RetryThrottle;

/// The default bound on reopens in a row that deliver no message before the stream gives up.
pub const DEFAULT_MAX_FAILED_REOPENS: u32 = 5;

/// Something shared between calls that may veto a reopen: the hook for a retry throttle shared
/// with the [`RetryLayer`](crate::RetryLayer), so a server-wide outage does not turn every open
/// stream into a reopen storm.
///
/// [`RetryThrottle`] implements it: share one `Arc<RetryThrottle>` between streams (and, where
/// the layer lets you pass it in, with the layer).
pub trait ReopenThrottle: fmt::Debug + Send + Sync + 'static {
    /// Whether a reopen may be made now.
    fn allows_reopen(&self) -> bool;

    /// A stream failed in a way that asks for a reopen.
    fn record_failure(&self);

    /// A reopened stream delivered a message again.
    fn record_success(&self);
}

impl ReopenThrottle for RetryThrottle {
    fn allows_reopen(&self) -> bool {
        self.allows_retry()
    }

    fn record_failure(&self) {
        RetryThrottle::record_failure(self);
    }

    fn record_success(&self) {
        RetryThrottle::record_success(self);
    }
}

type ReopenHook = Arc<dyn Fn(&ReopenRecord) + Send + Sync>;

/// How a [`ResumableStream`](crate::ResumableStream) reopens its call.
///
/// A stream is reopened when it ends by a transport failure (a reset or closed connection,
/// `RST_STREAM`, GOAWAY, a keepalive timeout, a stream that ends without `grpc-status`
/// trailers, a connection refused while reopening, ...), when it ends with one of the
/// [retryable codes](ResumePolicyBuilder::retryable_codes) (default UNAVAILABLE), or when no
/// message arrived within the [idle timeout](ResumePolicyBuilder::idle_timeout). It is never
/// reopened on a [fail-fast code](ResumePolicyBuilder::fail_fast_codes), on another status the
/// server sent, or after a clean end.
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::{ExponentialBackoff, ResumePolicy};
///
/// let policy = ResumePolicy::builder()
///     .max_failed_reopens(3)
///     .idle_timeout(Duration::from_secs(30))
///     .backoff(ExponentialBackoff::new(
///         Duration::from_millis(50),
///         Duration::from_secs(2),
///         2.0,
///     )?)
///     .retryable_codes([Code::Unavailable, Code::ResourceExhausted])
///     .on_reopen(|reopen| eprintln!("stream reopened: {reopen}"))
///     .build()?;
/// assert_eq!(policy.max_failed_reopens(), 3);
///
/// let err = ResumePolicy::builder().max_failed_reopens(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_failed_reopens");
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ResumePolicy {
    pub(crate) max_failed_reopens: u32,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) backoff: Arc<dyn Backoff>,
    pub(crate) retryable: CodeSet,
    pub(crate) fail_fast: CodeSet,
    pub(crate) jitter_seed: Option<u64>,
    pub(crate) throttle: Option<Arc<dyn ReopenThrottle>>,
    pub(crate) on_reopen: Option<ReopenHook>,
}

impl ResumePolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> ResumePolicyBuilder {
        ResumePolicyBuilder {
            policy: ResumePolicy::default(),
        }
    }

    /// How many reopens in a row may fail (end before delivering a message) before the stream
    /// gives up.
    pub fn max_failed_reopens(&self) -> u32 {
        self.max_failed_reopens
    }

    /// The longest wait for a message (or for the response headers of a reopen) before the
    /// connection is presumed half-open and the call reopened.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The backoff schedule between reopens.
    pub fn backoff(&self) -> &dyn Backoff {
        &*self.backoff
    }

    /// Codes that reopen the stream when it ends with them.
    pub fn retryable_codes(&self) -> CodeSet {
        self.retryable
    }

    /// Codes that always end the stream.
    pub fn fail_fast_codes(&self) -> CodeSet {
        self.fail_fast
    }
}

impl Default for ResumePolicy {
    /// Five failed reopens in a row at most, 100 ms doubling to 5 s with A6 jitter, no idle
    /// timeout, UNAVAILABLE reopened, UNIMPLEMENTED, PERMISSION_DENIED and UNAUTHENTICATED
    /// ending the stream.
    fn default() -> Self {
        ResumePolicy {
            max_failed_reopens: DEFAULT_MAX_FAILED_REOPENS,
            idle_timeout: None,
            backoff: Arc::new(ExponentialBackoff::default()),
            retryable: DEFAULT_RETRYABLE_CODES,
            fail_fast: DEFAULT_FAIL_FAST_CODES,
            jitter_seed: None,
            throttle: None,
            on_reopen: None,
        }
    }
}

impl fmt::Debug for ResumePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumePolicy")
            .field("max_failed_reopens", &self.max_failed_reopens)
            .field("idle_timeout", &self.idle_timeout)
            .field("backoff", &self.backoff)
            .field("retryable", &self.retryable)
            .field("fail_fast", &self.fail_fast)
            .field("jitter_seed", &self.jitter_seed)
            .field("throttle", &self.throttle)
            .field("on_reopen", &self.on_reopen.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Builds a [`ResumePolicy`]; [`build`](ResumePolicyBuilder::build) validates every field.
#[derive(Debug, Clone)]
pub struct ResumePolicyBuilder {
    policy: ResumePolicy,
}

impl ResumePolicyBuilder {
    /// How many reopens in a row may fail before the stream gives up and yields the last error
    /// with a [`ResumeHistory`](crate::ResumeHistory); at least 1. A reopen fails when it ends
    /// before delivering a message; once a message arrives the count starts again.
    pub fn max_failed_reopens(mut self, reopens: u32) -> Self {
        self.policy.max_failed_reopens = reopens;
        self
    }

    /// Reopen when no message arrived for `timeout` (nor the response headers of a reopen):
    /// the only way to notice a half-open connection, which sends neither FIN nor RST. Must be
    /// positive. Choose it longer than the longest silence the server may keep on purpose.
    /// The silence is noticed between one and two timeouts after the last message: the clock
    /// is not read per message, which keeps the happy path as cheap as a raw stream.
    ///
    /// A reopen made through the same `Channel` may go out on the same (dead) connection, which
    /// the channel still believes alive: pair the idle timeout with HTTP/2 keepalive
    /// (`Endpoint::http2_keep_alive_interval` and `keep_alive_timeout`) so the channel drops
    /// it, or have the factory connect a new channel when it is called with a cursor.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.policy.idle_timeout = Some(timeout);
        self
    }

    /// No idle timeout (the default): a silent stream is waited on for ever.
    pub fn no_idle_timeout(mut self) -> Self {
        self.policy.idle_timeout = None;
        self
    }

    /// The backoff schedule between reopens, such as an [`ExponentialBackoff`]; retry number
    /// `n` is the `n`th reopen in a row. A schedule that returns `None` ends the stream.
    pub fn backoff(mut self, backoff: impl Backoff) -> Self {
        self.policy.backoff = Arc::new(backoff);
        self
    }

    /// The codes that reopen the stream (replacing the default, UNAVAILABLE). OK cannot be one.
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.retryable = codes.into_iter().collect();
        self
    }

    /// The codes that always end the stream (replacing the default: UNIMPLEMENTED,
    /// PERMISSION_DENIED, UNAUTHENTICATED). They win over every other rule.
    pub fn fail_fast_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.fail_fast = codes.into_iter().collect();
        self
    }

    /// Seeds the jitter of the backoff, so that a test can replay a schedule.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.policy.jitter_seed = Some(seed);
        self
    }

    /// A throttle that may veto reopens; a vetoed reopen ends the stream with
    /// [`StopReason::Throttled`](crate::StopReason::Throttled). Clones of a
    /// [`RetryThrottle`](crate::RetryThrottle) share one bucket, so the layer's throttle
    /// (`layer.throttle().cloned()`) and every stream's can be the same.
    pub fn throttle(mut self, throttle: impl ReopenThrottle) -> Self {
        self.policy.throttle = Some(Arc::new(throttle));
        self
    }

    /// Called on every decision to reopen, before the backoff starts: for metrics and logs.
    /// It runs inside `poll_next`, so keep it short and non-blocking.
    pub fn on_reopen(mut self, hook: impl Fn(&ReopenRecord) + Send + Sync + 'static) -> Self {
        self.policy.on_reopen = Some(Arc::new(hook));
        self
    }

    /// Validates and returns the policy.
    pub fn build(self) -> Result<ResumePolicy, ConfigError> {
        let policy = self.policy;
        if policy.max_failed_reopens == 0 {
            return Err(ConfigError::new(
                "max_failed_reopens",
                "0",
                "must be >= 1 (a stream that is never reopened needs no wrapper)",
            ));
        }
        if let Some(timeout) = policy.idle_timeout
            && timeout.is_zero()
        {
            return Err(ConfigError::new("idle_timeout", "0s", "must be > 0"));
        }
        if policy.retryable.contains(Code::Ok) {
            return Err(ConfigError::new(
                "retryable_codes",
                policy.retryable.to_string(),
                "must not contain OK",
            ));
        }
        if policy.fail_fast.contains(Code::Ok) {
            return Err(ConfigError::new(
                "fail_fast_codes",
                policy.fail_fast.to_string(),
                "must not contain OK",
            ));
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let policy = ResumePolicy::default();
        assert_eq!(policy.max_failed_reopens(), DEFAULT_MAX_FAILED_REOPENS);
        assert_eq!(policy.idle_timeout(), None);
        assert_eq!(policy.retryable_codes(), DEFAULT_RETRYABLE_CODES);
        assert!(policy.fail_fast_codes().contains(Code::PermissionDenied));
        assert!(ResumePolicy::builder().build().is_ok());
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (
                ResumePolicy::builder().max_failed_reopens(0),
                "max_failed_reopens",
            ),
            (
                ResumePolicy::builder().idle_timeout(Duration::ZERO),
                "idle_timeout",
            ),
            (
                ResumePolicy::builder().retryable_codes([Code::Unavailable, Code::Ok]),
                "retryable_codes",
            ),
            (
                ResumePolicy::builder().fail_fast_codes([Code::Ok]),
                "fail_fast_codes",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn throttle_is_shared() {
        let throttle = RetryThrottle::new(2.0, 1.0).unwrap();
        let policy = ResumePolicy::builder()
            .throttle(throttle.clone())
            .build()
            .unwrap();
        let shared = policy.throttle.as_ref().unwrap();
        assert!(shared.allows_reopen());
        shared.record_failure();
        assert!(!throttle.allows_retry());
        assert!(format!("{policy:?}").contains("RetryThrottle"));
    }
}
