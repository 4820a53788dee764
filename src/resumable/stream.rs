//! The resumable stream: a `pin-project` state machine around the user's factory of calls.
//!
//! ```text
//!  Start ──factory(cursor)──> Opening ──headers──> Streaming ──message──> (yield, stay)
//!    ^                          │                     │ └──clean end──> Done
//!    │                          └──────error/idle─────┤
//!    │                                                v
//!    └──── timer fires ──── Backoff <──reopen── decide ──give up / not retryable──> Done
//! ```
//!
//! One `Sleep`, pinned in the struct, is the backoff timer in `Backoff`, the watchdog on an open
//! (idle timeout) in `Opening`, and the heartbeat watchdog in `Streaming` when the server
//! promised one; a quiet stream with no heartbeat promise has no timer at all. Neither the timer
//! nor the clock is touched per message: a message only bumps a counter (from which the reopen
//! budget's refills are counted at the next failure), and when the timer fires it re-arms
//! itself for another period if the counter moved since it was armed. So a broken heartbeat is
//! detected between one and two periods after the last message, and nothing is allocated or
//! read from the clock per message.
//!
//! Every instant is computed with checked arithmetic: a timeout or a backoff too long for the
//! clock (`Duration::MAX`) waits for ever instead of overflowing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::{FusedStream, Stream};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::{Response, Status, Streaming};

use crate::backoff::Jitter;
use crate::code::code_name;
use crate::deadline::arm_timer;
use crate::history::{StopReason, with_history};
use crate::kind::FailureKind;
use crate::resumable::budget::ReopenBudget;
use crate::resumable::classify::{Verdict, classify_status};
use crate::resumable::history::{ReopenRecord, ResumeHistory};
use crate::resumable::policy::ResumePolicy;

/// What the future of a [`ResumableStream`]'s factory yields on success: the opened call's
/// stream of messages.
///
/// Implemented for [`tonic::Streaming<T>`] and for the [`tonic::Response<Streaming<T>>`] a
/// generated client's streaming method returns, so a factory can return either. Implement it
/// for another stream of `Result<T, Status>` to resume that.
pub trait OpenedStream {
    /// The type of the messages.
    type Message;
    /// The stream of messages.
    type Stream: Stream<Item = Result<Self::Message, Status>>;

    /// The stream of messages of the opened call.
    fn into_stream(self) -> Self::Stream;
}

impl<T> OpenedStream for Streaming<T> {
    type Message = T;
    type Stream = Streaming<T>;

    fn into_stream(self) -> Streaming<T> {
        self
    }
}

impl<T> OpenedStream for Response<Streaming<T>> {
    type Message = T;
    type Stream = Streaming<T>;

    fn into_stream(self) -> Streaming<T> {
        self.into_inner()
    }
}

#[pin_project(project = StateProj)]
enum State<Fut, S> {
    /// The call is to be opened (first poll, or the backoff is over).
    Start,
    /// The factory's future is opening the call.
    Opening {
        #[pin]
        future: Fut,
    },
    /// Messages flow.
    Streaming {
        #[pin]
        stream: S,
    },
    /// Waiting on the timer before reopening.
    Backoff,
    /// Ended: a clean end, a status that ends the stream, or given up.
    Done,
}

impl<Fut, S> State<Fut, S> {
    fn name(&self) -> &'static str {
        match self {
            State::Start => "Start",
            State::Opening { .. } => "Opening",
            State::Streaming { .. } => "Streaming",
            State::Backoff => "Backoff",
            State::Done => "Done",
        }
    }
}

/// A streaming call that reopens itself after a transport failure and resumes after the last
/// message the caller received: nothing lost, nothing delivered twice.
///
/// It is built from a *factory*, called with the cursor of the last delivered message (`None`
/// before the first) to open the call, and a *cursor function* that takes the cursor from a
/// message. When the stream fails in a way the [`ResumePolicy`] reopens (a transport end, a
/// keepalive failure, a retryable code, an open that hung past the idle timeout), the factory is
/// called again with the last cursor after a backoff; the server is expected to send only what
/// follows it (if it may not, see [`ordered_cursor`](ResumableStream::ordered_cursor)). The
/// same wrapper serves server-streaming and bidirectional calls: for a bidirectional call the
/// factory builds a fresh outbound stream each time. A quiet stream is never reopened for being
/// quiet: pair it with HTTP/2 keepalive on the endpoint so that a dead connection is noticed
/// (see [`ResumePolicy`#quiet-streams-and-dead-connections](ResumePolicy#quiet-streams-and-dead-connections)).
///
/// After [`max_failed_reopens`](crate::resume::ResumePolicyBuilder::max_failed_reopens) reopens in a
/// row that deliver nothing, or once the [reopen budget](crate::resume::ReopenBudget) is spent (a
/// server that cuts the stream after every few messages), it yields the last error, unchanged
/// in code and message, with a [`ResumeHistory`] as its source, and ends. A status the server
/// sent on purpose (say INVALID_ARGUMENT), a fail-fast code and a clean end end the stream at
/// once.
///
/// It is lazy: nothing is called until it is first polled, which must happen inside a Tokio
/// runtime (its timer is Tokio's). It holds its timer and the factory's future inline, so it is
/// not `Unpin`: pin it (`std::pin::pin!`, `tokio::pin!` or `Box::pin`) before calling
/// `StreamExt::next`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tonic_retry_testkit::pb::{echo_client::EchoClient, CountRequest};
/// # use tonic_retry_testkit::{Action, Script, ScriptedServer};
/// # // A server whose first stream breaks off with UNAVAILABLE after 400 messages.
/// # let server = ScriptedServer::start(Script::new().count(Action::stream_then_fail(
/// #     400, tonic::Code::Unavailable, "restarting"))).await;
/// # let addr = server.uri().to_string();
/// use futures::StreamExt;
/// use tonic_retry::{ResumableStream, ResumePolicy};
///
/// let client = EchoClient::connect(addr).await?;
/// let policy = ResumePolicy::builder()
///     .idle_timeout(std::time::Duration::from_secs(30))
///     .build()?;
/// let mut numbers = std::pin::pin!(ResumableStream::with_policy(
///     policy,
///     // Open the call, asking for what follows the cursor (`None` the first time).
///     move |cursor: Option<u64>| {
///         let mut client = client.clone();
///         async move {
///             let start_after = cursor.unwrap_or(0);
///             client.count(CountRequest { start_after, count: 1_000, padding_len: 0 }).await
///         }
///     },
///     // The cursor of a message.
///     |message| message.seq,
/// ));
/// let mut last = 0;
/// while let Some(message) = numbers.next().await {
///     let message = message?; // only errors the policy does not reopen on reach here
///     assert_eq!(message.seq, last + 1, "nothing lost, nothing twice");
///     last = message.seq;
/// }
/// assert_eq!(last, 1_000);
/// assert_eq!(numbers.reopens(), 1);
/// # Ok(()) }
/// ```
#[pin_project]
pub struct ResumableStream<F, Fut, R, K, C>
where
    R: OpenedStream,
{
    #[pin]
    state: State<Fut, R::Stream>,
    #[pin]
    timer: Option<Sleep>,
    factory: F,
    cursor_fn: K,
    ctl: Control<C>,
}

/// Failures kept for the history: the most recent ones, enough to tell a story, bounded so that
/// a stream reopened for days does not grow without end.
const MAX_RECORDS: usize = 32;

/// The bookkeeping of a stream, apart from its pinned parts.
struct Control<C> {
    policy: ResumePolicy,
    jitter: Jitter,
    cursor: Option<C>,
    /// With an ordered cursor: whether a message's cursor comes after the last delivered one.
    is_after: Option<fn(&C, &C) -> bool>,
    /// Whether a message needs more than the plain bookkeeping: an ordered cursor to check, or
    /// failures to clear. One flag, so that the usual message pays for one test, not two.
    check_messages: bool,
    /// Set at the first poll.
    started: Option<Instant>,
    /// Whether the timer holds a deadline (an unrepresentable one leaves it unarmed: never).
    timer_armed: bool,
    /// Messages (and response headers) that arrived, as a counter: cheaper than a clock read.
    /// Response headers that arrived; with the messages delivered and dropped, what the
    /// watchdog counts as activity (see `activity`): a message bumps `delivered` alone.
    opened: u64,
    /// `activity()` when the watchdog was last armed.
    activity_at_arm: u64,
    /// Failures in a row since a message last arrived.
    failures: u32,
    reopens: u64,
    delivered: u64,
    /// Messages the current open of the call delivered.
    /// `delivered` when the current open of the call started: it delivered the difference.
    delivered_before_open: u64,
    /// Replayed messages dropped by the ordered-cursor check, over the stream's life.
    replays_dropped: u64,
    /// Replayed messages dropped in the current open of the call.
    dropped_here: u64,
    budget: Budget,
    /// The most recent failures, oldest first.
    history: Vec<ReopenRecord>,
}

/// The reopen budget's bucket, in messages: a reopen costs `cost`, a delivered message gives
/// back one, up to `capacity`.
///
/// The refills are counted at a failure, not per message: one credit per message delivered
/// since the last count, capped, is the same sum as capped increments of one, and it keeps the
/// budget off the per-message path.
#[derive(Debug, Clone, Copy)]
struct Budget {
    credits: u64,
    capacity: u64,
    cost: u64,
    /// `delivered` when the credits were last counted.
    counted_at: u64,
}

impl Budget {
    fn new(budget: ReopenBudget) -> Budget {
        Budget {
            credits: budget.capacity(),
            capacity: budget.capacity(),
            cost: budget.cost(),
            counted_at: 0,
        }
    }

    /// Adds the refills of the messages delivered since the last count.
    fn count_refills(&mut self, delivered: u64) {
        let refills = delivered.wrapping_sub(self.counted_at);
        self.counted_at = delivered;
        self.credits = self.credits.saturating_add(refills).min(self.capacity);
    }

    fn allows_reopen(&self) -> bool {
        self.credits >= self.cost
    }

    fn take(&mut self) {
        self.credits = self.credits.saturating_sub(self.cost);
    }
}

/// What a poll of a stream of `T` gives.
type Polled<T> = Poll<Option<Result<T, Status>>>;

/// What to do after a failure.
enum Next {
    /// Reopen after this delay (one the clock cannot represent: never).
    Reopen(Duration),
    End(Status),
}

impl<F, Fut, R, K, C> ResumableStream<F, Fut, R, K, C>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
    R: OpenedStream,
    K: FnMut(&R::Message) -> C,
    C: Clone,
{
    /// A stream with the default [`ResumePolicy`], opened by `factory` and resumed from the
    /// cursor `cursor` takes from each message.
    pub fn new(factory: F, cursor: K) -> Self {
        ResumableStream::with_policy(ResumePolicy::default(), factory, cursor)
    }

    /// A stream reopened by `policy`, opened by `factory` and resumed from the cursor `cursor`
    /// takes from each message.
    pub fn with_policy(policy: ResumePolicy, factory: F, cursor: K) -> Self {
        let jitter = match policy.jitter_seed {
            Some(seed) => Jitter::seeded(seed),
            None => Jitter::from_entropy(),
        };
        let budget = Budget::new(policy.reopen_budget());
        ResumableStream {
            state: State::Start,
            timer: None,
            factory,
            cursor_fn: cursor,
            ctl: Control {
                policy,
                jitter,
                cursor: None,
                is_after: None,
                check_messages: false,
                started: None,
                timer_armed: false,
                opened: 0,
                activity_at_arm: 0,
                failures: 0,
                reopens: 0,
                delivered: 0,
                delivered_before_open: 0,
                replays_dropped: 0,
                dropped_here: 0,
                budget,
                history: Vec::new(),
            },
        }
    }

    /// Starts after `cursor` instead of from the beginning: the first open gets
    /// `Some(cursor)`. For resuming from a position saved elsewhere.
    #[must_use]
    pub fn starting_after(mut self, cursor: C) -> Self {
        self.ctl.cursor = Some(cursor);
        self
    }

    /// Declares the cursor *ordered*: every message comes after the one before it, so that a
    /// message whose cursor is at or before the last delivered one is a replay. Such messages
    /// are dropped, not delivered: the caller sees each message once even from a server that
    /// ignores the cursor and sends a reopened call from the start.
    ///
    /// Without it, "nothing twice" rests on the server honouring the cursor. The check costs one
    /// comparison per message. Dropped messages are counted
    /// ([`replays_dropped`](ResumableStream::replays_dropped)) and logged (once per open, at
    /// debug level); they do not refill the [reopen budget](crate::resume::ReopenBudget), since they
    /// are no progress. Dropping rather than failing keeps the stream going when the server
    /// merely replays; a server that goes backwards for good shows as a stream that delivers
    /// nothing new, which the reopen bounds and the caller's own deadline handle.
    ///
    /// ```
    /// # async fn doc(client: tonic_retry_testkit::pb::echo_client::EchoClient<tonic::transport::Channel>) {
    /// use tonic_retry::ResumableStream;
    /// use tonic_retry_testkit::pb::CountRequest;
    ///
    /// let numbers = ResumableStream::new(
    ///     move |cursor: Option<u64>| {
    ///         let mut client = client.clone();
    ///         async move {
    ///             let request = CountRequest { start_after: cursor.unwrap_or(0), count: 100, padding_len: 0 };
    ///             client.count(request).await
    ///         }
    ///     },
    ///     |message| message.seq,
    /// )
    /// .ordered_cursor();
    /// # drop(numbers); }
    /// ```
    #[must_use]
    pub fn ordered_cursor(mut self) -> Self
    where
        C: Ord,
    {
        self.ctl.is_after = Some(|new, last| new > last);
        self.ctl.check_messages = true;
        self
    }
}

impl<F, Fut, R, K, C> ResumableStream<F, Fut, R, K, C>
where
    R: OpenedStream,
{
    /// How many times the call was reopened so far.
    pub fn reopens(&self) -> u64 {
        self.ctl.reopens
    }

    /// Failures in a row since a message last arrived (0 while messages flow).
    pub fn consecutive_failures(&self) -> u32 {
        self.ctl.failures
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.ctl.delivered
    }

    /// Replayed messages dropped so far by the [ordered-cursor](ResumableStream::ordered_cursor)
    /// check.
    pub fn replays_dropped(&self) -> u64 {
        self.ctl.replays_dropped
    }

    /// The cursor of the last delivered message: where a reopen resumes.
    pub fn cursor(&self) -> Option<&C> {
        self.ctl.cursor.as_ref()
    }

    /// The policy the stream follows.
    pub fn policy(&self) -> &ResumePolicy {
        &self.ctl.policy
    }
}

impl<F, Fut, R, K, C> Stream for ResumableStream<F, Fut, R, K, C>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
    R: OpenedStream,
    K: FnMut(&R::Message) -> C,
    C: Clone,
{
    type Item = Result<R::Message, Status>;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The per-message path, kept apart from the state machine and small enough to be
        // inlined into the caller's loop: a message that needs no check is handed on here,
        // everything else goes out of line to `poll_slow`. Inlined together, the whole
        // machine's stack frame (kilobytes: it opens calls) was set up for every message, 12% of
        // a raw `Streaming`'s time; a bigger fast path kept `StreamExt::next` from inlining it.
        //
        // The message is moved out of what the inner stream wrote and the item rebuilt around
        // it, not lent to the cursor function and handed on as it came: lent, it was copied
        // per message into the slot the out-of-line path returns through, a 48-byte copy whose
        // 16-byte loads straddle the inner stream's 8-byte stores. The CPU cannot forward such
        // loads from its store buffer and stalls each until the stores land: 11% of the
        // consumer's time for a dozen instructions, which callgrind does not see. Moved, it
        // is read with 8-byte loads (`benches/instructions.rs`, mode `stream-time`). Rebuilding
        // the slow path's item too would keep the message in registers down to the caller (the
        // consumer then beats a raw `Streaming`), but the fast path grows past what a loop
        // with several call sites inlines, and not inlined it loses more than it gains.
        let this = self.as_mut().project();
        let polled = match this.state.project() {
            StateProj::Streaming { stream } => match stream.poll_next(cx) {
                Poll::Ready(Some(Ok(message))) if !this.ctl.check_messages => {
                    this.ctl.deliver_unchecked((this.cursor_fn)(&message));
                    return Poll::Ready(Some(Ok(message)));
                }
                polled => Some(polled),
            },
            _ => None,
        };
        self.poll_slow(cx, polled)
    }
}

impl<F, Fut, R, K, C> ResumableStream<F, Fut, R, K, C>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
    R: OpenedStream,
    K: FnMut(&R::Message) -> C,
    C: Clone,
{
    /// What `poll_next` did not hand on: a message to check (an ordered cursor, or failures to
    /// clear) is handed on here unless it is a replay; the rest goes to the machine. Out of
    /// line, as the per-message path's size decides whether the caller's loop inlines it.
    #[inline(never)]
    fn poll_slow(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        polled: Option<Polled<R::Message>>,
    ) -> Polled<R::Message> {
        let message = match polled {
            Some(Poll::Ready(Some(Ok(message)))) if self.ctl.check_messages => message,
            polled => return self.poll_machine(cx, polled),
        };
        let this = self.as_mut().project();
        if this.ctl.deliver_checked((this.cursor_fn)(&message)) {
            return Poll::Ready(Some(Ok(message)));
        }
        // A replay, dropped: the machine polls again.
        drop(message);
        self.poll_machine(cx, None)
    }

    /// The state machine; `polled` is what the open stream just gave, if `poll_next` polled it.
    #[inline(never)]
    fn poll_machine(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut polled: Option<Polled<R::Message>>,
    ) -> Polled<R::Message> {
        let mut this = self.project();
        loop {
            let (failure, kind) = match this.state.as_mut().project() {
                StateProj::Start => {
                    let future = (this.factory)(this.ctl.cursor.clone());
                    this.state.set(State::Opening { future });
                    this.ctl.on_open(this.timer.as_mut());
                    continue;
                }
                StateProj::Opening { future } => match future.poll(cx) {
                    Poll::Ready(Ok(opened)) => {
                        this.state.set(State::Streaming {
                            stream: opened.into_stream(),
                        });
                        this.ctl.touch();
                        continue;
                    }
                    Poll::Ready(Err(status)) => (status, None),
                    Poll::Pending => {
                        let Some(period) = this.ctl.policy.open_timeout() else {
                            return Poll::Pending;
                        };
                        ready!(this.ctl.poll_watchdog(this.timer.as_mut(), period, cx));
                        this.ctl.hung_open()
                    }
                },
                StateProj::Streaming { stream } => {
                    match polled.take().unwrap_or_else(|| stream.poll_next(cx)) {
                        Poll::Ready(Some(Ok(message))) => {
                            if this.ctl.deliver(this.cursor_fn, &message) {
                                return Poll::Ready(Some(Ok(message)));
                            }
                            continue;
                        }
                        Poll::Ready(Some(Err(status))) => (status, None),
                        Poll::Ready(None) => {
                            this.state.set(State::Done);
                            return Poll::Ready(None);
                        }
                        Poll::Pending => {
                            // Quiet is healthy: only a server that promised a heartbeat is watched.
                            let Some(period) = this.ctl.policy.heartbeat_timeout else {
                                return Poll::Pending;
                            };
                            ready!(this.ctl.poll_watchdog(this.timer.as_mut(), period, cx));
                            this.ctl.broken_heartbeat()
                        }
                    }
                }
                StateProj::Backoff => {
                    if !this.ctl.timer_armed {
                        // A delay the clock cannot represent: wait for ever, as asked.
                        return Poll::Pending;
                    }
                    if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    this.state.set(State::Start);
                    continue;
                }
                StateProj::Done => return Poll::Ready(None),
            };
            match this.ctl.on_failure(failure, kind) {
                Next::Reopen(delay) if delay.is_zero() => this.state.set(State::Start),
                Next::Reopen(delay) => {
                    this.ctl.arm(this.timer.as_mut(), Some(delay));
                    this.state.set(State::Backoff);
                }
                Next::End(status) => {
                    this.state.set(State::Done);
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
    }
}

impl<F, Fut, R, K, C> FusedStream for ResumableStream<F, Fut, R, K, C>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
    R: OpenedStream,
    K: FnMut(&R::Message) -> C,
    C: Clone,
{
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<F, Fut, R, K, C> fmt::Debug for ResumableStream<F, Fut, R, K, C>
where
    R: OpenedStream,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumableStream")
            .field("state", &self.state.name())
            .field("reopens", &self.ctl.reopens)
            .field("consecutive_failures", &self.ctl.failures)
            .field("delivered", &self.ctl.delivered)
            .field("replays_dropped", &self.ctl.replays_dropped)
            .field("policy", &self.ctl.policy)
            .finish_non_exhaustive()
    }
}

/// Tokio's own bound for "never" (`tokio::time::sleep(Duration::MAX)` sleeps this long): about
/// 30 years, which its timer represents.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`, capped at the far future; `None` only if even that overflows the clock.
fn deadline_after(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after.min(FAR_FUTURE))
}

impl<C> Control<C> {
    fn now_since_start(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |started| {
            Instant::now().saturating_duration_since(started)
        })
    }

    /// Moves the timer to `after` from now (`None`: never), creating it the first time.
    fn arm(&mut self, timer: Pin<&mut Option<Sleep>>, after: Option<Duration>) {
        let deadline = after.and_then(|after| deadline_after(Instant::now(), after));
        self.timer_armed = deadline.is_some();
        if let Some(deadline) = deadline {
            arm_timer(timer, deadline);
        }
    }

    /// A call is being opened: start the watchdog on the open, if there is one.
    fn on_open(&mut self, timer: Pin<&mut Option<Sleep>>) {
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        self.delivered_before_open = self.delivered;
        self.dropped_here = 0;
        if let Some(period) = self.policy.open_timeout() {
            self.activity_at_arm = self.activity();
            self.arm(timer, Some(period));
        }
    }

    /// Response headers arrived: the stream is not idle.
    fn touch(&mut self) {
        self.opened = self.opened.wrapping_add(1);
    }

    /// What arrived so far, as one counter that moves whenever anything arrives: cheaper than a
    /// clock read, and nothing to bump per message.
    fn activity(&self) -> u64 {
        self.opened
            .wrapping_add(self.delivered)
            .wrapping_add(self.replays_dropped)
    }

    /// A message arrived: records it and returns `true`, or, with an ordered cursor, drops a
    /// replayed one (at or before the cursor) and returns `false`.
    fn deliver<M>(&mut self, cursor_fn: &mut impl FnMut(&M) -> C, message: &M) -> bool {
        let cursor = cursor_fn(message);
        if self.check_messages {
            return self.deliver_checked(cursor);
        }
        self.deliver_unchecked(cursor);
        true
    }

    /// Records a message that needs no check (`check_messages` is off): the per-message path.
    #[inline(always)]
    fn deliver_unchecked(&mut self, cursor: C) {
        self.cursor = Some(cursor);
        // Wrapping, not saturating: one instruction, and 2^64 messages take centuries.
        self.delivered = self.delivered.wrapping_add(1);
    }

    /// `deliver` with an ordered cursor or after failures.
    #[inline(always)]
    fn deliver_checked(&mut self, cursor: C) -> bool {
        if let (Some(is_after), Some(last)) = (self.is_after, &self.cursor)
            && !is_after(&cursor, last)
        {
            self.on_replayed();
            return false;
        }
        self.deliver_unchecked(cursor);
        if self.failures > 0 {
            self.flowing_again();
        }
        true
    }

    /// A failure: messages are checked until one arrives.
    fn count_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.check_messages = true;
    }

    /// The first message after failures.
    #[cold]
    fn flowing_again(&mut self) {
        tracing::debug!(
            reopens = self.reopens,
            after_failures = self.failures,
            "resumable stream flowing again"
        );
        self.failures = 0;
        self.check_messages = self.is_after.is_some();
        if let Some(throttle) = &self.policy.throttle {
            throttle.record_success();
        }
    }

    /// A replayed message was dropped: a sign of life, but no progress.
    fn on_replayed(&mut self) {
        if self.dropped_here == 0 {
            tracing::debug!(
                reopens = self.reopens,
                delivered = self.delivered,
                "resumable stream dropping messages at or before its cursor: the server \
                 replays what was already delivered"
            );
        }
        self.dropped_here = self.dropped_here.saturating_add(1);
        self.replays_dropped = self.replays_dropped.saturating_add(1);
    }

    /// Ready when a whole `period` passed with nothing arriving; pending otherwise.
    fn poll_watchdog(
        &mut self,
        mut timer: Pin<&mut Option<Sleep>>,
        period: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if !self.timer_armed {
                return Poll::Pending;
            }
            let Some(sleep) = timer.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            ready!(sleep.poll(cx));
            if self.activity() == self.activity_at_arm {
                return Poll::Ready(());
            }
            // Something arrived during the last period: watch another one.
            self.activity_at_arm = self.activity();
            self.arm(timer.as_mut(), Some(period));
        }
    }

    fn hung_open(&self) -> (Status, Option<FailureKind>) {
        let idle = self.policy.open_timeout().unwrap_or_default();
        let status = Status::unavailable(format!(
            "no response headers within the idle timeout of {idle:?}: the server did not \
             answer, or the call went down a dead connection"
        ));
        (status, Some(FailureKind::IdleTimeout))
    }

    fn broken_heartbeat(&self) -> (Status, Option<FailureKind>) {
        let heartbeat = self.policy.heartbeat_timeout.unwrap_or_default();
        let status = Status::unavailable(format!(
            "no message within the heartbeat timeout of {heartbeat:?}: the server stalled, or \
             the connection is half-open"
        ));
        (status, Some(FailureKind::IdleTimeout))
    }

    /// The stream (or the attempt to open it) ended with `status`: reopen, or end with the
    /// status to yield. `forced` is the kind of a failure this crate decided on (a watchdog),
    /// which always asks for a reopen.
    fn on_failure(&mut self, status: Status, forced: Option<FailureKind>) -> Next {
        let verdict = match forced {
            Some(kind) => Verdict::Reopen(kind),
            None => classify_status(&status, &self.policy),
        };
        let kind = match verdict {
            Verdict::End(reason, kind) => {
                if self.failures == 0 {
                    // A status the server sent with nothing failing before it: as it came.
                    return Next::End(status);
                }
                self.count_failure();
                self.record(&status, kind, None);
                return Next::End(self.give_up(status, reason, false));
            }
            Verdict::Reopen(kind) => kind,
        };
        self.count_failure();
        let failed_reopens = self.failures - 1;
        let throttle = self.policy.throttle.as_ref();
        if let Some(throttle) = throttle {
            throttle.record_failure();
        }
        let mut budget_spent = false;
        self.budget.count_refills(self.delivered);
        let stop = if failed_reopens >= self.policy.max_failed_reopens {
            Some(StopReason::AttemptsExhausted)
        } else if !self.budget.allows_reopen() {
            budget_spent = true;
            Some(StopReason::Throttled)
        } else if throttle.is_some_and(|throttle| !throttle.allows_reopen()) {
            Some(StopReason::Throttled)
        } else {
            None
        };
        let delay = match stop {
            Some(_) => None,
            None => self
                .policy
                .backoff
                .delay(self.failures, self.jitter.next_unit()),
        };
        self.record(&status, kind, delay);
        let Some(delay) = delay else {
            let reason = stop.unwrap_or(StopReason::BackoffExhausted);
            return Next::End(self.give_up(status, reason, budget_spent));
        };
        self.budget.take();
        self.reopens = self.reopens.saturating_add(1);
        tracing::info!(
            reopen = self.reopens,
            failure = self.failures,
            delivered = self.delivered,
            code = code_name(status.code()),
            kind = %kind,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            message = status.message(),
            "reopening resumable stream"
        );
        if let (Some(hook), Some(record)) = (&self.policy.on_reopen, self.history.last()) {
            hook(record);
        }
        Next::Reopen(delay)
    }

    fn record(&mut self, status: &Status, kind: FailureKind, delay: Option<Duration>) {
        let record = ReopenRecord {
            failure: self.failures,
            code: status.code(),
            message: status.message().to_owned(),
            kind,
            at: self.now_since_start(),
            delivered: self.delivered.wrapping_sub(self.delivered_before_open),
            delay,
        };
        self.delivered_before_open = self.delivered;
        if self.history.len() >= MAX_RECORDS {
            self.history.remove(0);
        }
        self.history.push(record);
    }

    /// The caller's error: the last failure's status, unchanged, with the history as its source.
    fn give_up(&mut self, status: Status, stop: StopReason, budget_spent: bool) -> Status {
        tracing::debug!(
            reopens = self.reopens,
            failures = self.failures,
            code = code_name(status.code()),
            reason = %stop,
            budget_spent,
            "resumable stream giving up"
        );
        let failures = std::mem::take(&mut self.history);
        let (reopens, delivered, elapsed) = (self.reopens, self.delivered, self.now_since_start());
        let budget = budget_spent.then(|| self.policy.reopen_budget());
        with_history(status, |cause| ResumeHistory {
            failures,
            stop,
            budget,
            reopens,
            delivered,
            elapsed,
            cause,
        })
    }
}
