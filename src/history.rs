//! What the caller learns when the layer gives up: every attempt, and why retrying stopped.

use std::error::Error;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::{Code, Status};

use crate::code::code_name;
use crate::kind::FailureKind;

/// Why the layer stopped retrying a call.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The last outcome's code is not retryable, and the request may have reached the server.
    NotRetryable,
    /// The last outcome's code is a fail-fast code: retrying cannot help.
    FailFast,
    /// The policy's maximum number of attempts was reached.
    AttemptsExhausted,
    /// The retry throttle (or budget) had no room for another retry.
    Throttled,
    /// The call's deadline expired, or the next backoff would have ended past it.
    Deadline,
    /// The request was larger than the replay buffer allows, so it could not be sent again.
    BufferLimit,
    /// The server's pushback said not to retry.
    Pushback,
    /// The backoff schedule ended.
    BackoffExhausted,
    /// Not a stop: a retry passed. The history of a call that succeeded after failed attempts,
    /// found in its response's extensions.
    Succeeded,
}

impl StopReason {
    /// A short phrase for messages, such as `attempts exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not retryable",
            StopReason::FailFast => "fail-fast code",
            StopReason::AttemptsExhausted => "attempts exhausted",
            StopReason::Throttled => "retries throttled",
            StopReason::Deadline => "deadline",
            StopReason::BufferLimit => "request too large to replay",
            StopReason::Pushback => "server pushback said stop",
            StopReason::BackoffExhausted => "backoff schedule ended",
            StopReason::Succeeded => "succeeded",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt of a call, as the layer saw it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub(crate) number: u32,
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) kind: FailureKind,
    pub(crate) never_sent: bool,
    pub(crate) transparent: bool,
    pub(crate) started_at: Duration,
    pub(crate) duration: Duration,
    pub(crate) delay_before: Duration,
}

impl AttemptRecord {
    /// The attempt's number, 1 for the first.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The status code this attempt ended with.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The status message this attempt ended with.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether the request certainly never reached the server's application.
    pub fn never_sent(&self) -> bool {
        self.never_sent
    }

    /// Whether this attempt was a transparent retry (gRFC A6): sent again at once, without
    /// counting, because the server refused the stream before its application saw it.
    pub fn transparent(&self) -> bool {
        self.transparent
    }

    /// When the attempt started, counted from the start of the call.
    pub fn started_at(&self) -> Duration {
        self.started_at
    }

    /// How long the attempt took.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The backoff waited before this attempt (zero for the first).
    pub fn delay_before(&self) -> Duration {
        self.delay_before
    }
}

/// The history of a call that needed more than one attempt.
///
/// When the layer gives up, the history is attached to the caller's [`Status`], which keeps the
/// last attempt's code and message unchanged; the history is its
/// [`source`](std::error::Error::source). Read it with [`CallHistory::of`]:
///
/// ```
/// # fn handle(status: tonic::Status) {
/// use tonic_retry::CallHistory;
///
/// if let Some(history) = CallHistory::of(&status) {
///     eprintln!("{history}");
///     for attempt in history.attempts() {
///         eprintln!("attempt {}: {} ({})", attempt.number(), attempt.code(), attempt.kind());
///     }
/// }
/// # }
/// ```
///
/// When a retry heals the call, the response carries the history in its extensions, so that a
/// caller can log what it took (a call that passed at first carries none):
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::{CallHistory, RetryLayer, RetryPolicy};
/// use tonic_retry::backoff::ExponentialBackoff;
/// // Your generated client; here the test proto's `Echo` service.
/// use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
/// # use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // A server that answers UNAVAILABLE twice, then OK.
/// # let server = ScriptedServer::start(Script::new().then_n(
/// #     Method::Say, 2, Action::fail(tonic::Code::Unavailable, "warming up"))).await;
/// # let channel = lazy_channel(server.addr());
/// # let quick = ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?;
/// # let layer = RetryLayer::builder().default_policy(RetryPolicy::builder().backoff(quick).build()?).build()?;
/// let mut client = EchoClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
///
/// let response = client.say(SayRequest::default()).await?;
/// if let Some(history) = response.extensions().get::<CallHistory>() {
///     // "tonic_retry.test.Echo/Say succeeded after 3 attempts in ..."
///     tracing::info!(attempts = history.attempt_count(), "{history}");
///     assert!(history.succeeded());
///     assert_eq!(history.attempts().len(), 2, "the two that failed");
/// }
/// # assert!(response.extensions().get::<CallHistory>().is_some());
///
/// // A call that passed at once carries nothing, and costs nothing.
/// let response = client.say(SayRequest::default()).await?;
/// assert!(response.extensions().get::<CallHistory>().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CallHistory {
    pub(crate) path: String,
    pub(crate) target: Option<String>,
    /// The attempts that failed (every attempt, when the call failed).
    pub(crate) attempts: Vec<AttemptRecord>,
    /// Attempts sent, transparent retries included.
    pub(crate) sent: u32,
    pub(crate) stop: StopReason,
    pub(crate) elapsed: Duration,
    pub(crate) cause: Option<Status>,
}

impl CallHistory {
    /// The history attached to `status` by the retry layer, if any: the status of a call the
    /// layer gave up on carries it (and keeps the last attempt's code and message unchanged).
    ///
    /// Here a call to a port where nothing listens: the connection is refused, which never
    /// reaches a server and is always retried, until the attempts run out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic::transport::Channel;
    /// use tonic_retry::{CallHistory, FailureKind, RetryLayer, RetryPolicy, StopReason};
    /// use tonic_retry::backoff::ExponentialBackoff;
    /// // Your generated client; here the test proto's `Echo` service.
    /// use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let addr = tonic_retry_testkit::unused_addr(); // 127.0.0.1, a port nothing listens on
    /// let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    /// let policy = RetryPolicy::builder()
    ///     .max_attempts(3)
    ///     .backoff(ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0)?)
    ///     .build()?;
    /// let layer = RetryLayer::builder().default_policy(policy).build()?;
    /// let mut client = EchoClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
    ///
    /// let status = client.say(SayRequest::default()).await.unwrap_err();
    /// assert_eq!(status.code(), tonic::Code::Unavailable); // as tonic alone would say
    /// let history = CallHistory::of(&status).expect("the layer gave up");
    /// assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);
    /// assert_eq!(history.attempt_count(), 3);
    /// assert_eq!(history.last().unwrap().kind(), FailureKind::ConnectionRefused);
    /// assert!(history.attempts().iter().all(|attempt| attempt.never_sent()));
    /// // "tonic_retry.test.Echo/Say failed (connection refused) after 3 attempts in ...",
    /// // every attempt, and a hint of what to check.
    /// eprintln!("{history}");
    /// # Ok(()) }
    /// ```
    pub fn of(status: &Status) -> Option<&CallHistory> {
        find_in_sources(status)
    }

    /// The call's path, `package.Service/Method`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the call went, when the layer knows: the request's authority, or the target named
    /// with [`RetryLayerBuilder::target`](crate::RetryLayerBuilder::target). A tonic `Channel`
    /// adds the address below the layer, so without either the history cannot name it.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// Every attempt that failed, in order: every attempt of a call that failed; all but the
    /// last of a call that succeeded.
    pub fn attempts(&self) -> &[AttemptRecord] {
        &self.attempts
    }

    /// The last attempt that failed.
    pub fn last(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }

    /// Attempts sent, transparent retries and the one that passed included.
    pub fn attempt_count(&self) -> u32 {
        self.sent
    }

    /// Whether a retry healed the call.
    pub fn succeeded(&self) -> bool {
        self.stop == StopReason::Succeeded
    }

    /// Why retrying stopped ([`StopReason::Succeeded`] when a retry passed).
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }

    /// Time from the call's start to giving up, or to the response that passed.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// What to check next, for the last attempt's kind of failure.
    pub fn hint(&self) -> &'static str {
        self.last()
            .map_or("no attempt was made", |attempt| attempt.kind.hint())
    }
}

impl fmt::Display for CallHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.sent;
        let plural = if count == 1 { "" } else { "s" };
        f.write_str(&self.path)?;
        if let Some(target) = &self.target {
            write!(f, " to {target}")?;
        }
        if self.succeeded() {
            write!(
                f,
                " succeeded after {count} attempt{plural} in {:.1?}",
                self.elapsed
            )?;
        } else {
            let kind = self.last().map_or("no attempt", |a| a.kind.as_str());
            write!(
                f,
                " failed ({kind}) after {count} attempt{plural} in {:.1?}; stopped: {}",
                self.elapsed, self.stop,
            )?;
        }
        for attempt in &self.attempts {
            if attempt.started_at.is_zero() {
                write!(f, "\n  #{} at the start", attempt.number)?;
            } else {
                write!(f, "\n  #{} at +{:.1?}", attempt.number, attempt.started_at)?;
            }
            if !attempt.delay_before.is_zero() {
                write!(f, " (after {:.1?} backoff)", attempt.delay_before)?;
            }
            if attempt.transparent {
                f.write_str(" (transparent retry)")?;
            }
            write!(f, ": {} {}", code_name(attempt.code), attempt.kind)?;
            if !attempt.message.is_empty() {
                // The message is the peer's text: its control characters are escaped, so that a
                // server cannot start a line of its own in the caller's log.
                f.write_str(": ")?;
                for c in attempt.message.chars() {
                    if c.is_control() {
                        write!(f, "{}", c.escape_default())?;
                    } else {
                        f.write_char(c)?;
                    }
                }
            }
        }
        if self.succeeded() {
            return Ok(());
        }
        write!(f, "\n  hint: {}", self.hint())
    }
}

/// The first error of type `T` in `status`'s source chain.
pub(crate) fn find_in_sources<T: Error + 'static>(status: &Status) -> Option<&T> {
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        source = err.source();
    }
    None
}

/// The status the caller gets when retrying (or reopening) stops: `last`'s code, message,
/// details and metadata unchanged, so `match status.code()` keeps working, with the history as
/// its source. `history` receives `last` itself when `last` carries a source chain worth keeping
/// (a transport error's).
pub(crate) fn with_history<H>(last: Status, history: impl FnOnce(Option<Status>) -> H) -> Status
where
    H: Error + Send + Sync + 'static,
{
    let mut caller = Status::with_details_and_metadata(
        last.code(),
        last.message().to_owned(),
        Bytes::copy_from_slice(last.details()),
        last.metadata().clone(),
    );
    let cause = last.source().is_some().then_some(last);
    caller.set_source(Arc::new(history(cause)));
    caller
}

impl Error for CallHistory {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_ref()
            .map(|status| status as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_message_cannot_start_a_line_of_its_own() {
        let history = CallHistory {
            path: "pkg.Svc/Method".into(),
            target: None,
            attempts: vec![AttemptRecord {
                number: 1,
                code: Code::Unavailable,
                message: "down\nERROR forged line\r\u{1b}[31m".into(),
                kind: FailureKind::ServerStatus,
                never_sent: false,
                transparent: false,
                started_at: Duration::ZERO,
                duration: Duration::from_millis(3),
                delay_before: Duration::ZERO,
            }],
            sent: 1,
            stop: StopReason::AttemptsExhausted,
            elapsed: Duration::from_millis(3),
            cause: None,
        };
        let shown = history.to_string();
        let attempt_line = shown.lines().find(|line| line.contains("#1")).unwrap();
        assert!(
            attempt_line.ends_with(r"down\nERROR forged line\r\u{1b}[31m"),
            "{shown}"
        );
        assert!(!shown.contains("\nERROR"), "{shown}");
        assert_eq!(
            history.attempts()[0].message(),
            "down\nERROR forged line\r\u{1b}[31m"
        );
    }
}
