//! How a resumable stream reopens: which failures, how often, how long apart, and what may veto
//! a reopen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::backoff::{BackoffSchedule, ExponentialBackoff};
use crate::code::CodeSet;
use crate::error::ConfigError;
use crate::resumable::budget::ReopenBudget;
use crate::resumable::history::ReopenRecord;
use crate::retry_policy::{DEFAULT_FAIL_FAST_CODES, DEFAULT_RETRYABLE_CODES};
use crate::throttle::RetryThrottle;

/// The default bound on reopens in a row that deliver no message before the stream gives up.
pub const DEFAULT_MAX_FAILED_REOPENS: u32 = 5;

/// The default size of the [reopen budget](ResumePolicyBuilder::reopen_budget), in reopens
/// (raised to [`max_failed_reopens`](ResumePolicyBuilder::max_failed_reopens) when that is
/// larger and no budget is set).
pub const DEFAULT_REOPEN_BUDGET: u32 = 10;

/// The default progress that pays for one reopen: this many delivered messages.
pub const DEFAULT_MESSAGES_PER_REOPEN: u32 = 10;

/// Something shared between calls that may veto a reopen: the hook for a retry throttle shared
/// with the [`RetryLayer`](crate::RetryLayer), so a server-wide outage does not turn every open
/// stream into a reopen storm.
///
/// [`RetryThrottle`] implements it, and its clones share one bucket: give a clone to the layer
/// ([`RetryLayerBuilder::throttle`](crate::RetryLayerBuilder::throttle)) and one to each
/// stream's policy ([`ResumePolicyBuilder::throttle`]).
///
/// ```
/// use tonic_retry::{ResumePolicy, RetryLayer, RetryThrottle};
///
/// let throttle = RetryThrottle::grpc_default();
/// let layer = RetryLayer::builder().throttle(throttle.clone()).build()?;
/// let policy = ResumePolicy::builder().throttle(throttle.clone()).build()?;
/// // A failure the stream records is one the layer sees, and the other way round.
/// throttle.record_failure();
/// assert_eq!(layer.throttle().unwrap().tokens(), 9.0);
/// # let _ = policy;
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
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
/// `RST_STREAM`, GOAWAY, an HTTP/2 keepalive timeout, a stream that ends without `grpc-status`
/// trailers, a connection refused while reopening, ...), when it ends with one of the
/// [retryable codes](ResumePolicyBuilder::retryable_codes) (default UNAVAILABLE), when an open
/// got no response headers within the [idle timeout](ResumePolicyBuilder::idle_timeout), or
/// when a server that promised a [heartbeat](ResumePolicyBuilder::heartbeat_timeout) broke the
/// promise. It is never reopened on a [fail-fast code](ResumePolicyBuilder::fail_fast_codes),
/// on another status the server sent, or after a clean end.
///
/// Two bounds stop the reopens, whichever comes first:
/// [`max_failed_reopens`](ResumePolicyBuilder::max_failed_reopens) reopens in a row that
/// deliver nothing, and the [reopen budget](ReopenBudget), which progress refills but only up
/// to its size, so a server that cuts the stream after every message cannot keep it reopening
/// for ever.
///
/// # Quiet streams and dead connections
///
/// A stream on which the server has nothing to say is healthy, however long it stays quiet: it
/// is never reopened or ended for being quiet. A *dead* connection under it (a NAT, firewall or
/// load balancer that dropped it without FIN or RST) looks the same from the stream, so it is
/// the transport's job to notice: enable **HTTP/2 keepalive on the endpoint** (a ping every
/// interval, the connection failed when the ack does not come within the keepalive timeout,
/// pings sent while idle too). The stream then ends with a keepalive failure, which is a
/// transport failure: it is reopened, and since the channel dropped the dead connection, the
/// reopen goes out on a new one. Without keepalive, a blackholed stream waits for ever, as a
/// plain tonic stream would; an idle timeout alone cannot help, because a reopen through the
/// same channel would go down the same dead connection.
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::ResumePolicy;
/// use tonic_retry::backoff::ExponentialBackoff;
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
/// let err = ResumePolicy::builder().reopen_budget(10, 0).build().unwrap_err();
/// assert_eq!(err.field(), "reopen_budget.messages_per_reopen");
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ResumePolicy {
    pub(crate) max_failed_reopens: u32,
    /// `None`: the default, sized from `max_failed_reopens`.
    pub(crate) reopen_budget: Option<ReopenBudget>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) heartbeat_timeout: Option<Duration>,
    pub(crate) backoff: Arc<dyn BackoffSchedule>,
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

    /// The reopen budget: how many reopens the bucket holds and how much progress pays one
    /// back.
    pub fn reopen_budget(&self) -> ReopenBudget {
        self.reopen_budget.unwrap_or(ReopenBudget {
            reopens: DEFAULT_REOPEN_BUDGET.max(self.max_failed_reopens),
            messages_per_reopen: DEFAULT_MESSAGES_PER_REOPEN,
        })
    }

    /// The longest wait for the response headers of an open before it is presumed hung and
    /// the call reopened. Once open, a quiet stream is never ended for being quiet.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The longest silence the server promised never to keep: a longer one is a stall, and the
    /// call is reopened.
    pub fn heartbeat_timeout(&self) -> Option<Duration> {
        self.heartbeat_timeout
    }

    /// The watchdog on an open: the shorter of the two timeouts set, if any (response headers
    /// are a sign of life for both).
    pub(crate) fn open_timeout(&self) -> Option<Duration> {
        match (self.idle_timeout, self.heartbeat_timeout) {
            (Some(idle), Some(heartbeat)) => Some(idle.min(heartbeat)),
            (idle, heartbeat) => idle.or(heartbeat),
        }
    }

    /// The backoff schedule between reopens.
    pub fn backoff(&self) -> &dyn BackoffSchedule {
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
    /// Five failed reopens in a row at most, a budget of ten reopens refilled by one every ten
    /// messages, 100 ms doubling to 5 s with A6 jitter, no idle or heartbeat timeout,
    /// UNAVAILABLE reopened, UNIMPLEMENTED, PERMISSION_DENIED and UNAUTHENTICATED ending the
    /// stream.
    fn default() -> Self {
        ResumePolicy {
            max_failed_reopens: DEFAULT_MAX_FAILED_REOPENS,
            reopen_budget: None,
            idle_timeout: None,
            heartbeat_timeout: None,
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
            .field("reopen_budget", &self.reopen_budget())
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
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
    /// with a [`ResumeHistory`](crate::resume::ResumeHistory); at least 1. A reopen fails when it ends
    /// before delivering a message; once a message arrives the count starts again.
    pub fn max_failed_reopens(mut self, reopens: u32) -> Self {
        self.policy.max_failed_reopens = reopens;
        self
    }

    /// The reopen budget (see [`ReopenBudget`]): the bucket holds `reopens` reopens, each
    /// reopen takes one, and every `messages_per_reopen` messages delivered give one back, up
    /// to `reopens`. Both must be at least 1. The default holds
    /// [`DEFAULT_REOPEN_BUDGET`] reopens (or `max_failed_reopens`, if larger) refilled by one
    /// every [`DEFAULT_MESSAGES_PER_REOPEN`] messages.
    ///
    /// ```
    /// use tonic_retry::ResumePolicy;
    ///
    /// // 20 reopens in hand; every 100 messages delivered pay one back.
    /// let policy = ResumePolicy::builder().reopen_budget(20, 100).build()?;
    /// assert_eq!(policy.reopen_budget().reopens(), 20);
    /// assert_eq!(policy.reopen_budget().messages_per_reopen(), 100);
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn reopen_budget(mut self, reopens: u32, messages_per_reopen: u32) -> Self {
        self.policy.reopen_budget = Some(ReopenBudget {
            reopens,
            messages_per_reopen,
        });
        self
    }

    /// Reopen an open that got no response headers within `timeout`: a call stuck before the
    /// server answered (a server that accepts and never answers, or an open sent down a dead
    /// connection). Must be positive; `Duration::MAX` waits for ever.
    ///
    /// Once the response headers arrived the call is open, and a quiet stream is healthy: it is
    /// not reopened nor ended however long it stays quiet. A connection that died under it is
    /// detected by HTTP/2 keepalive on the endpoint (see
    /// [`ResumePolicy`#quiet-streams-and-dead-connections](ResumePolicy#quiet-streams-and-dead-connections)),
    /// and a server that promised to send something regularly by the
    /// [heartbeat timeout](ResumePolicyBuilder::heartbeat_timeout).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.policy.idle_timeout = Some(timeout);
        self
    }

    /// No idle timeout (the default): an open is waited on until the transport fails it.
    pub fn no_idle_timeout(mut self) -> Self {
        self.policy.idle_timeout = None;
        self
    }

    /// The server promises to send a message at least every `timeout` (a heartbeat): a longer
    /// silence means the call stalled on a live connection (the server's handler is stuck, which
    /// keepalive cannot see), and the call is reopened, as a failure. Must be positive;
    /// `Duration::MAX` waits for ever. Only for servers that keep such a promise: with any
    /// other, a quiet stream would be reopened.
    ///
    /// It bounds the wait for the response headers of an open too (the shorter of the two
    /// timeouts applies there). The silence is noticed between one and two timeouts after the
    /// last message: the clock is not read per message, which keeps the happy path as cheap as
    /// a raw stream.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::ResumePolicy;
    ///
    /// // The server sends a heartbeat message at least every 5 s.
    /// let policy = ResumePolicy::builder()
    ///     .heartbeat_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// assert_eq!(policy.heartbeat_timeout(), Some(Duration::from_secs(5)));
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.policy.heartbeat_timeout = Some(timeout);
        self
    }

    /// The backoff schedule between reopens, such as an [`ExponentialBackoff`]; retry number
    /// `n` is the `n`th reopen in a row. A schedule that returns `None` ends the stream. A
    /// delay too long for the clock to represent (`Duration::MAX`) waits for ever.
    pub fn backoff(mut self, backoff: impl BackoffSchedule) -> Self {
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
        if let Some(budget) = policy.reopen_budget {
            if budget.reopens == 0 {
                return Err(ConfigError::new(
                    "reopen_budget.reopens",
                    "0",
                    "must be >= 1 (a stream that is never reopened needs no wrapper)",
                ));
            }
            if budget.messages_per_reopen == 0 {
                return Err(ConfigError::new(
                    "reopen_budget.messages_per_reopen",
                    "0",
                    "must be >= 1 (a reopen that costs no progress is not bounded)",
                ));
            }
        }
        for (field, timeout) in [
            ("idle_timeout", policy.idle_timeout),
            ("heartbeat_timeout", policy.heartbeat_timeout),
        ] {
            if timeout.is_some_and(|timeout| timeout.is_zero()) {
                return Err(ConfigError::new(field, "0s", "must be > 0"));
            }
        }
        policy.retryable.reject_ok("retryable_codes")?;
        policy.fail_fast.reject_ok("fail_fast_codes")?;
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
        let budget = policy.reopen_budget();
        assert_eq!(budget.reopens(), DEFAULT_REOPEN_BUDGET);
        assert_eq!(budget.messages_per_reopen(), DEFAULT_MESSAGES_PER_REOPEN);
    }

    #[test]
    fn the_default_budget_allows_the_failed_reopens_asked_for() {
        let policy = ResumePolicy::builder()
            .max_failed_reopens(50)
            .build()
            .unwrap();
        assert_eq!(policy.reopen_budget().reopens(), 50);
        let policy = ResumePolicy::builder()
            .max_failed_reopens(50)
            .reopen_budget(3, 1)
            .build()
            .unwrap();
        assert_eq!(
            policy.reopen_budget().reopens(),
            3,
            "an explicit budget is kept"
        );
    }

    #[test]
    fn extreme_values_build() {
        let policy = ResumePolicy::builder()
            .max_failed_reopens(u32::MAX)
            .reopen_budget(u32::MAX, u32::MAX)
            .idle_timeout(Duration::MAX)
            .heartbeat_timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(
            policy.reopen_budget().capacity(),
            u64::from(u32::MAX) * u64::from(u32::MAX)
        );
        assert_eq!(policy.open_timeout(), Some(Duration::MAX));
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
                ResumePolicy::builder().heartbeat_timeout(Duration::ZERO),
                "heartbeat_timeout",
            ),
            (
                ResumePolicy::builder().reopen_budget(0, 10),
                "reopen_budget.reopens",
            ),
            (
                ResumePolicy::builder().reopen_budget(10, 0),
                "reopen_budget.messages_per_reopen",
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
