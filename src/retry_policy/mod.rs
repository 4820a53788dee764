//! The retry policy of one service or method, and its builder.

mod decide;
mod hedging;
mod table;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::backoff::{BackoffSchedule, ExponentialBackoff};
use crate::code::CodeSet;
use crate::error::ConfigError;

pub use self::decide::MAX_SERVER_DELAY;
pub(crate) use self::decide::{Decision, Progress, debits_throttle, decide};
pub use self::hedging::{HedgingPolicy, HedgingPolicyBuilder, MAX_HEDGED_ATTEMPTS};
pub(crate) use self::table::{PolicyTable, PolicyTableBuilder, split_path};
pub(crate) use self::table::{validate_method, validate_service};

/// The codes retried by default: UNAVAILABLE only, as in gRPC's own examples.
pub const DEFAULT_RETRYABLE_CODES: CodeSet = CodeSet::of(&[Code::Unavailable]);

/// The codes that fail at once by default, even when listed as retryable: retrying cannot fix a
/// missing service or method, or a caller who is not allowed.
pub const DEFAULT_FAIL_FAST_CODES: CodeSet = CodeSet::of(&[
    Code::Unimplemented,
    Code::PermissionDenied,
    Code::Unauthenticated,
]);

/// The default number of attempts, the first included (gRFC A6's cap).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The most attempts a [`RetryPolicy`] may make per call, the first included: more is a
/// [`ConfigError`], not a silent clamp.
///
/// A retry multiplies the load on a server that is already failing; 100 attempts is already a
/// hundredfold. A larger number (such as `u32::MAX`, meant as "until it works") is almost always a
/// wish for "until the deadline": set a deadline (`grpc-timeout` or
/// [`call_timeout`](RetryPolicyBuilder::call_timeout)) and a count up to this limit. gRPC itself
/// caps service-config policies at 5 ([`DEFAULT_MAX_ATTEMPTS`]), and so does
/// [`ServiceConfig::from_json`](crate::ServiceConfig::from_json).
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The default per-call replay buffer: requests up to this size can be sent again (grpc-go's
/// default).
pub const DEFAULT_BUFFER_LIMIT: usize = 256 * 1024;

/// How one service's or method's calls are retried.
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::RetryPolicy;
/// use tonic_retry::backoff::ExponentialBackoff;
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(4)
///     .backoff(ExponentialBackoff::new(
///         Duration::from_millis(50),
///         Duration::from_secs(2),
///         2.0,
///     )?)
///     .retryable_codes([Code::Unavailable, Code::ResourceExhausted])
///     .attempt_timeout(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(policy.max_attempts(), 4);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
///
/// Give it to the layer for every call ([`default_policy`](crate::RetryLayerBuilder::default_policy)),
/// for a service ([`service`](crate::RetryLayerBuilder::service)) or for a method
/// ([`method`](crate::RetryLayerBuilder::method)), or read it from a gRPC service config
/// ([`ServiceConfig`](crate::ServiceConfig)).
///
/// # For one call
///
/// A `RetryPolicy` in a request's extensions replaces the layer's policy for that call only:
/// never retry a call that must not run twice, or retry one read harder, without building
/// another channel. Everything else stays the layer's: its throttle or budget, its counters,
/// its hook. The call's deadline is the request's own (`grpc-timeout`, tonic's
/// `Request::set_timeout`) or this policy's [`call_timeout`](RetryPolicyBuilder::call_timeout).
///
/// ```
/// use std::time::Duration;
/// use tonic::{Code, Request};
/// use tonic_retry::{CallHistory, RetryLayer, RetryPolicy};
/// use tonic_retry::backoff::ExponentialBackoff;
/// // Your generated client; here the test proto's `Echo` service.
/// use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
/// # use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // A server that answers UNAVAILABLE to every call.
/// # let server = ScriptedServer::start(
/// #     Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
/// # )
/// # .await;
/// # let channel = lazy_channel(server.addr());
/// let quick = ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?;
/// let layer = RetryLayer::builder()
///     .default_policy(RetryPolicy::builder().backoff(quick).build()?)
///     .build()?;
/// let mut client = EchoClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
///
/// // This call is never retried, whatever the layer's policy says.
/// let mut request = Request::new(SayRequest::default());
/// request.extensions_mut().insert(RetryPolicy::no_retries());
/// let status = client.say(request).await.unwrap_err();
/// assert_eq!(CallHistory::of(&status).unwrap().attempt_count(), 1);
///
/// // This one gets 8 attempts.
/// let mut request = Request::new(SayRequest::default());
/// request
///     .extensions_mut()
///     .insert(RetryPolicy::builder().max_attempts(8).backoff(quick).build()?);
/// let status = client.say(request).await.unwrap_err();
/// assert_eq!(CallHistory::of(&status).unwrap().attempt_count(), 8);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Arc<dyn BackoffSchedule>,
    retryable: CodeSet,
    fail_fast: CodeSet,
    attempt_timeout: Option<Duration>,
    call_timeout: Option<Duration>,
    buffer_limit: usize,
    /// Hedge the call instead of retrying it.
    hedging: Option<HedgingPolicy>,
}

impl RetryPolicy {
    /// A builder starting from the defaults (see [`RetryPolicy::default`]); to start from
    /// another policy, `RetryPolicyBuilder::from(policy)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .max_attempts(3)
    ///     .attempt_timeout(Duration::from_millis(500))
    ///     .call_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// assert_eq!(policy.call_timeout(), Some(Duration::from_secs(5)));
    ///
    /// // Every field is checked by `build`.
    /// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
    /// assert_eq!(err.to_string(), "max_attempts: must be >= 1, got 0");
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// A policy that never retries (but still diagnoses failures, and still makes gRFC A6's one
    /// transparent retry of a stream the server refused unseen).
    ///
    /// For a method that must not run twice, or for one call (see
    /// [For one call](RetryPolicy#for-one-call)):
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryPolicy};
    ///
    /// let layer = RetryLayer::builder()
    ///     .method("bank.Ledger/Transfer", RetryPolicy::no_retries())
    ///     .build()?;
    /// # let _ = layer;
    ///
    /// let mut request = tonic::Request::new(());
    /// request.extensions_mut().insert(RetryPolicy::no_retries());
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn no_retries() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// A policy that hedges calls (gRFC A6 `hedgingPolicy`) instead of retrying them: see
    /// [`HedgingPolicy`]. A method is hedged or retried, never both. To give hedged calls a
    /// deadline or another replay buffer, start a builder from it:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::{HedgingPolicy, RetryPolicy, RetryPolicyBuilder};
    ///
    /// let hedging = HedgingPolicy::builder().delay(Duration::from_millis(10)).build()?;
    /// let policy = RetryPolicyBuilder::from(RetryPolicy::hedged(hedging))
    ///     .call_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// assert!(policy.hedging().is_some());
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn hedged(hedging: HedgingPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            hedging: Some(hedging),
            ..RetryPolicy::default()
        }
    }

    /// This policy with `timeout` as its call timeout (one already checked as
    /// [`RetryPolicyBuilder::call_timeout`] checks it), or unchanged without one.
    pub(crate) fn with_call_timeout(mut self, timeout: Option<Duration>) -> RetryPolicy {
        if let Some(timeout) = timeout.filter(|timeout| !timeout.is_zero()) {
            self.call_timeout = Some(timeout);
        }
        self
    }

    /// The hedging policy, if calls are hedged rather than retried.
    pub fn hedging(&self) -> Option<&HedgingPolicy> {
        self.hedging.as_ref()
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &dyn BackoffSchedule {
        &*self.backoff
    }

    /// Codes that are retried.
    pub fn retryable_codes(&self) -> CodeSet {
        self.retryable
    }

    /// Codes that are never retried, whatever else the policy says.
    pub fn fail_fast_codes(&self) -> CodeSet {
        self.fail_fast
    }

    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The deadline given to calls that carry none (or a later one), if any.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// The largest request body, in bytes, kept for replay.
    pub fn buffer_limit(&self) -> usize {
        self.buffer_limit
    }
}

impl Default for RetryPolicy {
    /// Five attempts, 100 ms doubling to 5 s with A6 jitter, UNAVAILABLE retried, UNIMPLEMENTED,
    /// PERMISSION_DENIED and UNAUTHENTICATED failing fast, 256 KiB replay buffer.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Arc::new(ExponentialBackoff::default()),
            retryable: DEFAULT_RETRYABLE_CODES,
            fail_fast: DEFAULT_FAIL_FAST_CODES,
            attempt_timeout: None,
            call_timeout: None,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            hedging: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retryable", &self.retryable)
            .field("fail_fast", &self.fail_fast)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("buffer_limit", &self.buffer_limit)
            .field("hedging", &self.hedging)
            .finish()
    }
}

/// Builds a [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) validates every field, so the
/// order of the setters never matters. Each setter replaces its own earlier value.
///
/// Start from the defaults with [`RetryPolicy::builder`], or from another policy to change some
/// of its fields:
///
/// ```
/// use tonic_retry::{RetryPolicy, RetryPolicyBuilder};
///
/// let base = RetryPolicy::builder().max_attempts(3).build()?;
/// let patient = RetryPolicyBuilder::from(base.clone())
///     .call_timeout(std::time::Duration::from_secs(60))
///     .build()?;
/// assert_eq!(patient.max_attempts(), 3);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
    /// Whether [`retryable_codes`](Self::retryable_codes) and
    /// [`fail_fast_codes`](Self::fail_fast_codes) were both given, so that a code in both is the
    /// caller's contradiction rather than a default fail-fast code winning as documented.
    retryable_set: bool,
    fail_fast_set: bool,
    /// Whether [`max_attempts`](Self::max_attempts) was given: a hedged policy takes its attempts
    /// from its hedging policy, and says so rather than ignore it.
    max_attempts_set: bool,
}

impl From<RetryPolicy> for RetryPolicyBuilder {
    /// A builder starting from an existing policy, to change some of its fields.
    fn from(policy: RetryPolicy) -> Self {
        RetryPolicyBuilder {
            policy,
            retryable_set: false,
            fail_fast_set: false,
            max_attempts_set: false,
        }
    }
}

impl RetryPolicyBuilder {
    /// Attempts per call, the first included: at least 1 (1 means no retries), at most
    /// [`MAX_ATTEMPTS_LIMIT`] (100); [`build`](Self::build) rejects anything else.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self.max_attempts_set = true;
        self
    }

    /// Hedge calls instead of retrying them (see [`RetryPolicy::hedged`]). The retry settings
    /// (attempts, backoff, retryable codes, attempt timeout) do not apply to a hedged call; the
    /// call timeout and the replay buffer do.
    pub fn hedging(mut self, hedging: HedgingPolicy) -> Self {
        self.policy.hedging = Some(hedging);
        self
    }

    /// The backoff schedule, such as an [`ExponentialBackoff`].
    pub fn backoff(mut self, backoff: impl BackoffSchedule) -> Self {
        self.policy.backoff = Arc::new(backoff);
        self
    }

    /// The codes to retry (replacing the default, UNAVAILABLE). OK cannot be one.
    ///
    /// A code of the *default* fail-fast set (UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED)
    /// listed here still fails fast: [`build`](Self::build) leaves it out of the policy's
    /// [`retryable_codes`](RetryPolicy::retryable_codes) with a `tracing` warning, since retrying
    /// cannot fix a missing method or a caller who is not allowed. To retry one, set
    /// [`fail_fast_codes`](Self::fail_fast_codes) without it. A code given to both setters is a
    /// contradiction, and `build` rejects it.
    ///
    /// ```
    /// use tonic::Code;
    /// use tonic_retry::RetryPolicy;
    ///
    /// // PERMISSION_DENIED still fails fast (with a warning)...
    /// let policy = RetryPolicy::builder()
    ///     .retryable_codes([Code::Unavailable, Code::PermissionDenied])
    ///     .build()?;
    /// assert!(!policy.retryable_codes().contains(Code::PermissionDenied));
    ///
    /// // ...unless it is taken out of the fail-fast codes.
    /// let policy = RetryPolicy::builder()
    ///     .retryable_codes([Code::Unavailable, Code::PermissionDenied])
    ///     .fail_fast_codes([Code::Unimplemented, Code::Unauthenticated])
    ///     .build()?;
    /// assert!(policy.retryable_codes().contains(Code::PermissionDenied));
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.retryable = codes.into_iter().collect();
        self.retryable_set = true;
        self
    }

    /// The codes that fail at once (replacing the default: UNIMPLEMENTED, PERMISSION_DENIED,
    /// UNAUTHENTICATED). OK cannot be one, nor a code also given to
    /// [`retryable_codes`](Self::retryable_codes): [`build`](Self::build) rejects both.
    pub fn fail_fast_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.policy.fail_fast = codes.into_iter().collect();
        self.fail_fast_set = true;
        self
    }

    /// A timeout for each attempt, within the call's deadline: an attempt that runs out is
    /// retried like an UNAVAILABLE one. gRPC's own retry has no such timeout.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.policy.attempt_timeout = Some(timeout);
        self
    }

    /// A deadline for calls that carry none: the service config's `timeout`. A call whose own
    /// `grpc-timeout` is shorter keeps it; the server is told the deadline in `grpc-timeout`.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.policy.call_timeout = Some(timeout);
        self
    }

    /// The largest request, in bytes, kept for replay; a larger one is sent once, unbuffered.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.policy.buffer_limit = bytes;
        self
    }

    /// Validates and returns the policy.
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        let mut policy = self.policy;
        if policy.hedging.is_some() {
            let retry_setting = if self.max_attempts_set && policy.max_attempts != 1 {
                Some(("max_attempts", policy.max_attempts.to_string()))
            } else if self.retryable_set {
                Some(("retryable_codes", policy.retryable.to_string()))
            } else {
                policy
                    .attempt_timeout
                    .map(|timeout| ("attempt_timeout", format!("{timeout:?}")))
            };
            if let Some((field, value)) = retry_setting {
                return Err(ConfigError::new(
                    field,
                    value,
                    "a hedged policy does not retry: set attempts and codes on its HedgingPolicy",
                ));
            }
            // A hedged call is never retried after it commits.
            policy.max_attempts = 1;
        }
        if policy.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "0", "must be >= 1"));
        }
        if policy.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(ConfigError::new(
                "max_attempts",
                policy.max_attempts.to_string(),
                format!(
                    "must be <= {MAX_ATTEMPTS_LIMIT} (MAX_ATTEMPTS_LIMIT; bound long retrying by \
                     a deadline instead)"
                ),
            ));
        }
        policy.retryable.reject_ok("retryable_codes")?;
        policy.fail_fast.reject_ok("fail_fast_codes")?;
        let both: CodeSet = policy
            .fail_fast
            .iter()
            .filter(|code| policy.retryable.contains(*code))
            .collect();
        if !both.is_empty() {
            if self.retryable_set && self.fail_fast_set {
                return Err(ConfigError::new(
                    "fail_fast_codes",
                    both.to_string(),
                    "must not also be in retryable_codes (a code is retried or fails fast, not both)",
                ));
            }
            tracing::warn!(
                codes = %both,
                "retryable codes include fail-fast codes; they fail fast, as documented, and \
                 are not among the policy's retryable codes"
            );
            // The built policy says what it does: these are never retried.
            for code in both.iter() {
                policy.retryable = policy.retryable.without(code);
            }
        }
        if let Some(timeout) = policy.attempt_timeout
            && timeout.is_zero()
        {
            return Err(ConfigError::new("attempt_timeout", "0s", "must be > 0"));
        }
        if let Some(timeout) = policy.call_timeout
            && timeout.is_zero()
        {
            return Err(ConfigError::new("call_timeout", "0s", "must be > 0"));
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts(), 5);
        assert_eq!(policy.retryable_codes(), CodeSet::of(&[Code::Unavailable]));
        assert!(policy.fail_fast_codes().contains(Code::Unimplemented));
        assert_eq!(policy.buffer_limit(), 256 * 1024);
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (RetryPolicy::builder().max_attempts(0), "max_attempts"),
            (
                RetryPolicy::builder().max_attempts(u32::MAX),
                "max_attempts",
            ),
            (
                RetryPolicy::builder().max_attempts(MAX_ATTEMPTS_LIMIT + 1),
                "max_attempts",
            ),
            (
                RetryPolicy::builder().fail_fast_codes([Code::Ok]),
                "fail_fast_codes",
            ),
            (
                RetryPolicy::builder()
                    .fail_fast_codes([Code::Aborted, Code::Unimplemented])
                    .retryable_codes([Code::Unavailable, Code::Aborted]),
                "fail_fast_codes",
            ),
            (
                RetryPolicy::builder()
                    .retryable_codes([Code::Aborted])
                    .fail_fast_codes([Code::Aborted]),
                "fail_fast_codes",
            ),
            (
                RetryPolicy::builder().retryable_codes([Code::Ok]),
                "retryable_codes",
            ),
            (
                RetryPolicy::builder().attempt_timeout(Duration::ZERO),
                "attempt_timeout",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
        }
        let err = RetryPolicy::builder()
            .max_attempts(u32::MAX)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("must be <= 100"), "{err}");
    }

    #[test]
    fn limits_and_documented_precedence_hold() {
        let most = RetryPolicy::builder()
            .max_attempts(MAX_ATTEMPTS_LIMIT)
            .build()
            .unwrap();
        assert_eq!(most.max_attempts(), MAX_ATTEMPTS_LIMIT);
        // A default fail-fast code listed as retryable still fails fast (documented).
        let policy = RetryPolicy::builder()
            .retryable_codes([Code::Unavailable, Code::PermissionDenied])
            .build()
            .unwrap();
        assert!(policy.fail_fast_codes().contains(Code::PermissionDenied));
        assert_eq!(policy.retryable_codes(), CodeSet::of(&[Code::Unavailable]));
        // Taken out of the fail-fast codes, it is retried.
        let policy = RetryPolicy::builder()
            .retryable_codes([Code::Unavailable, Code::PermissionDenied])
            .fail_fast_codes([Code::Unimplemented])
            .build()
            .unwrap();
        assert!(!policy.fail_fast_codes().contains(Code::PermissionDenied));
        assert!(policy.retryable_codes().contains(Code::PermissionDenied));
    }
}
