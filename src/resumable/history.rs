//! What the caller learns when a resumable stream gives up: the failures in a row that led to
//! it, each with its kind, time and the backoff that followed.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};

use crate::code::code_name;
use crate::history::StopReason;
use crate::kind::FailureKind;
use crate::resumable::budget::ReopenBudget;

/// One failure of a resumable stream, and the reopen it led to (if any).
#[derive(Debug, Clone)]
pub struct ReopenRecord {
    pub(crate) failure: u32,
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) kind: FailureKind,
    pub(crate) at: Duration,
    pub(crate) delivered: u64,
    pub(crate) delay: Option<Duration>,
}

impl ReopenRecord {
    /// This failure's number in its run of failures in a row: 1 for the failure that broke a
    /// flowing stream (or the first open), 2 for the first reopen that failed too, and so on.
    pub fn failure(&self) -> u32 {
        self.failure
    }

    /// The status code the stream (or the attempt to open it) ended with.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The status message the stream ended with.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind of failure, named from the status's source chain or its code.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// When the failure happened, counted from the creation of the stream.
    pub fn at(&self) -> Duration {
        self.at
    }

    /// Messages this open of the call delivered before it failed (0 for a failed reopen).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The backoff waited before reopening, or `None` if the stream was not reopened after
    /// this failure (it gave up).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }
}

impl fmt::Display for ReopenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failure #{} at +{:?} after {} message{}: {} {}",
            self.failure,
            self.at,
            self.delivered,
            if self.delivered == 1 { "" } else { "s" },
            code_name(self.code),
            self.kind,
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        match self.delay {
            Some(delay) => write!(f, "; reopened after {delay:?}"),
            None => f.write_str("; not reopened"),
        }
    }
}

/// The history of a resumable stream that gave up, attached to the last error [`Status`] it
/// yields.
///
/// The `Status` keeps the last failure's code and message unchanged; this history is its
/// [`source`](std::error::Error::source). Read it with [`ResumeHistory::of`]:
///
/// ```
/// # fn handle(status: tonic::Status) {
/// use tonic_retry::resume::ResumeHistory;
///
/// if let Some(history) = ResumeHistory::of(&status) {
///     eprintln!("{history}");
///     for failure in history.failures() {
///         eprintln!("{}: {} ({:?} backoff)", failure.kind(), failure.code(), failure.delay());
///     }
/// }
/// # }
/// ```
///
/// Here a server that answers every open with UNAVAILABLE:
///
/// ```
/// use std::time::Duration;
/// use futures::StreamExt;
/// use tonic_retry::{ResumableStream, ResumePolicy};
/// use tonic_retry::backoff::ExponentialBackoff;
/// use tonic_retry::resume::ResumeHistory;
/// // Your generated client; here the test proto's `Count(CountRequest) returns (stream Numbered)`.
/// use tonic_retry_testkit::pb::{CountRequest, echo_client::EchoClient};
/// # use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = ScriptedServer::start(Script::new().default_action(
/// #     Method::Count, Action::fail(tonic::Code::Unavailable, "down for maintenance"))).await;
/// # let client = EchoClient::new(lazy_channel(server.addr()));
/// let policy = ResumePolicy::builder()
///     .max_failed_reopens(2)
///     .backoff(ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?)
///     .build()?;
/// let stream = ResumableStream::with_policy(
///     policy,
///     move |cursor: Option<u64>| {
///         let mut client = client.clone();
///         let request = CountRequest { start_after: cursor.unwrap_or(0), count: 10, padding_len: 0 };
///         async move { client.count(request).await }
///     },
///     |message| message.seq,
/// );
/// let mut stream = std::pin::pin!(stream);
/// let status = stream.next().await.expect("the last error").unwrap_err();
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// let history = ResumeHistory::of(&status).expect("the stream gave up");
/// assert_eq!(history.failures().len(), 3); // the first open and two reopens
/// assert_eq!(history.delivered(), 0);
/// assert!(stream.next().await.is_none(), "and it ends");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResumeHistory {
    pub(crate) failures: Vec<ReopenRecord>,
    pub(crate) stop: StopReason,
    /// Set when the reopen budget was what stopped the stream.
    pub(crate) budget: Option<ReopenBudget>,
    pub(crate) reopens: u64,
    pub(crate) delivered: u64,
    pub(crate) elapsed: Duration,
    pub(crate) cause: Option<Status>,
}

impl ResumeHistory {
    /// The history attached to `status` by a resumable stream, if any.
    pub fn of(status: &Status) -> Option<&ResumeHistory> {
        crate::history::find_in_sources(status)
    }

    /// The most recent failures (at most 32), oldest first; the last is the one the caller's
    /// status reports. Each says how many messages its open delivered, so a stream cut after
    /// every few messages shows as such; [`ReopenRecord::failure`] numbers the failures of
    /// each run in a row.
    pub fn failures(&self) -> &[ReopenRecord] {
        &self.failures
    }

    /// The last failure.
    pub fn last(&self) -> Option<&ReopenRecord> {
        self.failures.last()
    }

    /// Why the stream stopped reopening: [`StopReason::AttemptsExhausted`] when the bound on
    /// failed reopens in a row was reached, [`StopReason::Throttled`] when the
    /// [reopen budget](crate::resume::ReopenBudget) was spent (see
    /// [`reopen_budget_spent`](ResumeHistory::reopen_budget_spent)) or a shared throttle vetoed
    /// the reopen, [`StopReason::BackoffExhausted`], or [`StopReason::NotRetryable`] /
    /// [`StopReason::FailFast`] for a status that ends the stream after failed reopens.
    pub fn stop_reason(&self) -> StopReason {
        self.stop
    }

    /// The stream's own reopen budget was spent: it was reopened more often than its progress
    /// paid for (a server that cuts it after every few messages). The budget it had.
    pub fn reopen_budget_spent(&self) -> Option<ReopenBudget> {
        self.budget
    }

    /// Reopens made over the stream's whole life.
    pub fn reopens(&self) -> u64 {
        self.reopens
    }

    /// Messages delivered over the stream's whole life.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Time from the creation of the stream to giving up.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// What to check next, for the last failure's kind.
    pub fn hint(&self) -> &'static str {
        self.last()
            .map_or("no failure was recorded", |failure| failure.kind.hint())
    }
}

impl fmt::Display for ResumeHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.last().map_or("no failure", |r| r.kind.as_str());
        write!(
            f,
            "resumable stream failed ({kind}) after {} reopen{} and {} message{} in {:?}; \
             stopped: {}",
            self.reopens,
            if self.reopens == 1 { "" } else { "s" },
            self.delivered,
            if self.delivered == 1 { "" } else { "s" },
            self.elapsed,
            self.stop,
        )?;
        if let Some(budget) = self.budget {
            write!(
                f,
                " (reopen budget spent: {} reopen{} banked at most, one paid back every {} \
                 message{}; the server cut the stream more often than it made progress)",
                budget.reopens(),
                if budget.reopens() == 1 { "" } else { "s" },
                budget.messages_per_reopen(),
                if budget.messages_per_reopen() == 1 {
                    ""
                } else {
                    "s"
                },
            )?;
        }
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        write!(f, "\n  hint: {}", self.hint())
    }
}

impl Error for ResumeHistory {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .as_ref()
            .map(|status| status as &(dyn Error + 'static))
    }
}
