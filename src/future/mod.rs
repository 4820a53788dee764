//! The response future: one call's attempts, as a state machine driven by `loop`/`match`.
//!
//! ```text
//!            ┌──────── retry, no delay ────────┐
//!            v                                 │
//! start ─> Attempt ── failed ─> decide ──> Backoff ──> Ready ──> Attempt ...
//!            │                    │
//!            └─ passed ─> Done    └─ stop ─> Done (caller's Status + CallHistory)
//! ```
//!
//! The happy path (one attempt, no time limit) keeps only what it needs inline: the future
//! stays small (it is moved as it is built, and every in-flight call holds one) and allocates
//! nothing for retries. Everything else (the one `Sleep` that serves as the attempt's deadline
//! timer and as the backoff timer, the time limits, the history, the retry service) lives in
//! one box, allocated when the call has a time limit or at its first failure.

mod hedge;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Code;
use tonic::body::Body;
use tower::Service;
use tracing::Span;

use crate::BoxError;
use crate::body::CallBody;
use crate::classify::{Failure, classify_head, classify_service_error};
use crate::connection::AfterAttemptTimeout;
use crate::deadline::{GRPC_TIMEOUT, arm_timer, encode_grpc_timeout};
use crate::head::{RequestHead, grpc_path};
use crate::history::{AttemptRecord, CallHistory, StopReason, with_history};
use crate::kind::FailureKind;
use crate::metrics::Counters;
use crate::response_body::{ResponseBody, ends_ok};
use crate::retry_policy::{Decision, Progress, RetryPolicy, debits_throttle, decide};
use crate::shared::{Shared, Spare};
use crate::telemetry::{AttemptKind, CallTelemetry};

use self::hedge::Hedges;

/// The header that tells the server how many attempts came before this one (gRFC A6).
const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// The future of a call made through [`Retry`](crate::Retry).
#[pin_project]
pub struct ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    #[pin]
    state: State<S::Future>,
    call: Call<S>,
    spans: Spans,
}

#[pin_project(project = StateProj)]
enum State<F> {
    /// An attempt is in flight.
    Attempt {
        #[pin]
        future: F,
    },
    /// A hedged call's attempts are in flight.
    Hedging { hedges: Pin<Box<Hedges<F>>> },
    /// Waiting for the backoff delay.
    Backoff,
    /// Waiting for the inner service to accept the next attempt.
    Ready,
    /// The caller has its result.
    Done,
}

/// Everything about the call but its pinned state.
struct Call<S> {
    /// The service's state, and through it the layer's.
    spare: Arc<Spare<S>>,
    policy: CallPolicy,
    head: RequestHead,
    body: CallBody,
    /// When the call started, by tokio's clock, like every other time of the call: under a
    /// paused clock, histories and backoffs agree.
    started: Instant,
    /// Counted attempts sent (transparent retries are not counted): the first attempt and the
    /// retries.
    attempts: u32,
    /// All attempts sent.
    sent: u32,
    /// What a call with a time limit, or one that failed once, needs: boxed, so that a call
    /// that passes at once without a time limit neither carries it nor allocates it.
    slow: Option<Pin<Box<Slow<S>>>>,
    /// The call's OpenTelemetry metrics (zero-sized without the `opentelemetry` feature).
    telemetry: CallTelemetry,
}

impl<S> Drop for Call<S> {
    #[inline]
    fn drop(&mut self) {
        self.body.release(&self.spare.shared.buffer_budget);
    }
}

/// The call's state off the happy path.
#[pin_project]
struct Slow<S> {
    /// The attempt's deadline while an attempt runs, the backoff's end while backing off, the
    /// call's deadline while waiting for the service.
    #[pin]
    timer: Option<Sleep>,
    cold: Cold<S>,
}

struct Cold<S> {
    /// The service retries go through: a clone of `spare`, made at the first retry.
    service: Option<S>,
    /// The call's timeout and deadline, from its `grpc-timeout` or its policy.
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    /// When the attempt in flight must end: the call's deadline or the per-attempt timeout.
    attempt_deadline: Option<Instant>,
    /// When the attempt in flight started (the first one started with the call).
    attempt_started: Instant,
    backoff_step: u32,
    transparent_used: bool,
    /// How the attempt in flight (or the next one) came about.
    delay_before: Duration,
    transparent: bool,
    /// The failure that the next attempt retries; the caller gets it if that attempt never starts.
    last_failure: Option<Failure>,
    /// When the attempt that the next one retries started, if it ran out of time unanswered.
    timed_out_attempt: Option<Instant>,
    history: Vec<AttemptRecord>,
}

/// The policy a call follows: its method's from the layer's table, or its own, set on the
/// request (a `RetryPolicy` in its extensions).
enum CallPolicy {
    Table(usize),
    /// Shared rather than boxed: a smaller drop, which the happy path then inlines.
    Own(Arc<RetryPolicy>),
}

enum Next {
    Retry(Duration),
    GiveUp(BoxError),
}

/// How an attempt's failure relates to its time limits.
enum Timeout {
    /// Within its time: the failure is decided on as it is.
    None(Failure),
    /// The attempt's own timeout passed: it failed, and may be retried.
    Attempt(Failure),
    /// The call's deadline passed: the caller gets this error.
    CallDeadline(BoxError),
}

impl<S, B> ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    /// Starts a call: its first attempt goes through `ready` (polled ready by the caller), its
    /// retries through a clone of `spare`.
    pub(crate) fn start(ready: &mut S, spare: Arc<Spare<S>>, mut request: Request<Body>) -> Self {
        let shared: &Shared = &spare.shared;
        Counters::bump(&shared.counters.calls);
        shared.gate.on_call();
        let path = request.uri().path();
        let started = Instant::now();
        let telemetry = CallTelemetry::start(shared, &request, spare.target.as_ref(), started);
        let (mut head, caller_timeout) = RequestHead::save(&request, &spare.origin);
        // A generated client's request carries only its `GrpcMethod`: no lookup for a policy.
        let own_policy = if head.has_other_extensions() {
            request.extensions().get::<RetryPolicy>()
        } else {
            None
        };
        let policy = match own_policy {
            Some(own) => CallPolicy::Own(Arc::new(own.clone())),
            // A table with only a default policy needs no method name.
            None if shared.policies.has_only_default() => CallPolicy::Table(0),
            None => CallPolicy::Table(shared.policies.lookup(grpc_path(path))),
        };
        let spans = Spans::new(path);
        let resolved = policy.resolve(shared);
        let timeout = match (caller_timeout, resolved.call_timeout()) {
            (Some(caller), Some(policy)) => Some(caller.min(policy)),
            (caller, policy) => caller.or(policy),
        };
        let attempt_timeout = resolved.attempt_timeout();
        // The request is changed in place (its head is large: moving it costs more than the rest).
        let body = std::mem::replace(request.body_mut(), Body::empty());
        let mut body = CallBody::new(body, resolved.buffer_limit(), &shared.buffer_budget);
        let hedging = match resolved.hedging() {
            None => None,
            Some(hedging) => {
                hedging.on_call();
                // Before the first attempt reads the body: its readers must all be woken.
                body.enable_hedging();
                Some(hedging.clone())
            }
        };
        *request.body_mut() = body.first_attempt();
        let slow = (timeout.is_some() || attempt_timeout.is_some()).then(|| {
            let mut slow = Slow::new(started);
            let cold = slow.as_mut().project().cold;
            cold.timeout = timeout;
            cold.deadline = timeout.and_then(|timeout| started.checked_add(timeout));
            if cold.deadline.is_none() && caller_timeout.is_some() {
                // No deadline to say what is left: retries send the caller's header as it is.
                head.keep_grpc_timeout(request.headers());
            }
            // The server learns a deadline the policy set, as it learns the caller's own.
            let rewrite = timeout != caller_timeout;
            slow.as_mut()
                .arm_attempt(attempt_timeout, request.headers_mut(), rewrite, started);
            slow
        });
        // Built in place, in both arms: the future is large, and each move of it is a copy.
        macro_rules! response_future {
            ($state:expr) => {
                ResponseFuture {
                    state: $state,
                    call: Call {
                        spare,
                        policy,
                        head,
                        body,
                        started,
                        attempts: 1,
                        sent: 1,
                        slow,
                        telemetry,
                    },
                    spans,
                }
            };
        }
        match hedging {
            None => response_future!(State::Attempt {
                future: ready.call(request)
            }),
            Some(hedging) => response_future!(State::Hedging {
                hedges: Hedges::start(hedging, ready.call(request), started),
            }),
        }
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // A handle of its own on the call's span (none when nothing traces): entering it must
        // not borrow `spans`, which a retry changes.
        let call_span = this.spans.call().cloned();
        let _entered = call_span.as_ref().map(Span::enter);
        loop {
            let timeout = match this.state.as_mut().project() {
                StateProj::Attempt { future } => {
                    match this.spans.in_attempt(|| future.poll(cx)) {
                        Poll::Ready(Ok(mut response)) => match classify_head(&mut response) {
                            None => {
                                let started = this.call.attempt_started();
                                let (on_ok, telemetry) = this.call.passed(&mut response, started);
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(
                                    response.map(|body| ResponseBody::new(body, on_ok, telemetry))
                                ));
                            }
                            Some(failure) => Timeout::None(failure),
                        },
                        Poll::Ready(Err(error)) => {
                            let failure = classify_service_error(error.into());
                            if matches!(
                                failure.kind,
                                FailureKind::TransportTimeout | FailureKind::AttemptTimeout
                            ) {
                                // The transport enforces the deadline we sent it (and a tower
                                // `Timeout` below the layer its own); when one wins the race against
                                // our timer, the call's deadline still decides.
                                this.call.timed_out(Instant::now(), failure)
                            } else {
                                Timeout::None(failure)
                            }
                        }
                        Poll::Pending => {
                            let Some(slow) = this.call.slow.as_mut() else {
                                return Poll::Pending;
                            };
                            let slow = slow.as_mut().project();
                            let Some(timer) = slow.timer.as_pin_mut() else {
                                return Poll::Pending;
                            };
                            if slow.cold.attempt_deadline.is_none() || timer.poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            let now = Instant::now();
                            let failure = this.call.attempt_timeout_failure();
                            this.call.timed_out(now, failure)
                        }
                    }
                }
                StateProj::Hedging { hedges } => {
                    let result = ready!(hedge::poll(hedges.as_mut(), this.call, cx));
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Backoff => {
                    if let Some(timer) = this.call.timer().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    enter_ready(this.state.as_mut(), this.call);
                    continue;
                }
                StateProj::Ready => match this.call.retry_service().poll_ready(cx) {
                    Poll::Pending => {
                        // A service that is not ready (a full `Buffer`, a concurrency limit, a
                        // balancer with no endpoint) must not hold the call past its deadline:
                        // the timer was armed for it on entering this state.
                        if this.call.deadline().is_some()
                            && let Some(timer) = this.call.timer().as_pin_mut()
                            && timer.poll(cx).is_ready()
                        {
                            let error = this.call.give_up_on_last(StopReason::Deadline);
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => match this.call.next_request() {
                        Ok(request) => {
                            this.spans.next_attempt(this.call.sent);
                            let future = this
                                .spans
                                .in_attempt(|| this.call.retry_service().call(request));
                            this.state.set(State::Attempt { future });
                            continue;
                        }
                        Err(reason) => {
                            let error = this.call.give_up_on_last(reason);
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    },
                    Poll::Ready(Err(error)) => {
                        // The service cannot take the attempt: count it as one that failed
                        // before it was sent.
                        this.call.slow().attempt_started = Instant::now();
                        this.call.sent += 1;
                        this.call.attempts += 1;
                        Timeout::None(classify_service_error(error.into()))
                    }
                },
                StateProj::Done => {
                    return Poll::Ready(Err(
                        "tonic-retry ResponseFuture polled after completion".into()
                    ));
                }
            };
            let next = match timeout {
                Timeout::None(failure) | Timeout::Attempt(failure) => {
                    this.call.after_failure(failure)
                }
                Timeout::CallDeadline(error) => Next::GiveUp(error),
            };
            match next {
                Next::Retry(delay) => match Instant::now().checked_add(delay) {
                    Some(end) if !delay.is_zero() => {
                        arm_timer(this.call.timer(), end);
                        this.state.set(State::Backoff);
                    }
                    // `decide` caps every delay; an unrepresentable end is no reason to panic.
                    _ => enter_ready(this.state.as_mut(), this.call),
                },
                Next::GiveUp(error) => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

/// Waits for the service to take the next attempt, with the timer on the call's deadline.
fn enter_ready<F, S>(mut state: Pin<&mut State<F>>, call: &mut Call<S>) {
    if let Some(deadline) = call.deadline() {
        arm_timer(call.timer(), deadline);
    }
    state.set(State::Ready);
}

impl<S> Slow<S> {
    /// The state of a call that started at `started`, before anything happened to it.
    fn new(started: Instant) -> Pin<Box<Slow<S>>> {
        Box::pin(Slow {
            timer: None,
            cold: Cold {
                service: None,
                timeout: None,
                deadline: None,
                attempt_deadline: None,
                attempt_started: started,
                backoff_step: 0,
                transparent_used: false,
                delay_before: Duration::ZERO,
                transparent: false,
                last_failure: None,
                timed_out_attempt: None,
                history: Vec::new(),
            },
        })
    }

    /// Sets when the attempt starting at `now` must end (the call's deadline or the
    /// `attempt_timeout`), arms the timer for it, and tells the server in `grpc-timeout` when the
    /// caller's own header no longer says it (`rewrite`, or a per-attempt timeout).
    fn arm_attempt(
        self: Pin<&mut Self>,
        attempt_timeout: Option<Duration>,
        headers: &mut HeaderMap,
        rewrite: bool,
        now: Instant,
    ) {
        let this = self.project();
        let deadline = this.cold.deadline;
        if deadline.is_none() && attempt_timeout.is_none() {
            return;
        }
        let attempt_end = attempt_timeout.and_then(|timeout| now.checked_add(timeout));
        let attempt_deadline = match (deadline, attempt_end) {
            (Some(call), Some(attempt)) => Some(call.min(attempt)),
            (call, attempt) => call.or(attempt),
        };
        this.cold.attempt_deadline = attempt_deadline;
        if let Some(end) = attempt_deadline {
            arm_timer(this.timer, end);
            if rewrite || attempt_end.is_some() {
                headers.insert(
                    GRPC_TIMEOUT,
                    encode_grpc_timeout(end.saturating_duration_since(now)),
                );
            }
        }
    }
}

/// The call's span and its attempt's, boxed only when a subscriber enables either: a call that
/// nothing traces carries a null pointer, not two disabled spans (80 bytes).
struct Spans(Option<Box<SpanPair>>);

impl Drop for Spans {
    /// The spans' own drop is out of line: a call that nothing traces only checks the pointer.
    #[inline]
    fn drop(&mut self) {
        if let Some(pair) = self.0.take() {
            drop_spans(pair);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_spans(pair: Box<SpanPair>) {
    drop(pair);
}

struct SpanPair {
    call: Span,
    /// The span of the attempt in flight.
    attempt: Span,
}

impl Spans {
    /// Inlined: on the happy path with nothing tracing, this is one load of the level filter
    /// (one check for both spans).
    #[inline]
    fn new(path: &str) -> Spans {
        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return Spans(None);
        }
        Spans::enabled(path)
    }

    #[cold]
    fn enabled(path: &str) -> Spans {
        let call = call_span(path);
        let attempt = attempt_span(&call, 1);
        if call.is_disabled() && attempt.is_disabled() {
            return Spans(None);
        }
        Spans(Some(Box::new(SpanPair { call, attempt })))
    }

    fn call(&self) -> Option<&Span> {
        self.0.as_ref().map(|pair| &pair.call)
    }

    /// Runs `f` in the span of the attempt in flight.
    fn in_attempt<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(pair) => pair.attempt.in_scope(f),
            None => f(),
        }
    }

    /// Opens the span of attempt number `attempt`.
    fn next_attempt(&mut self, attempt: u32) {
        match &mut self.0 {
            Some(pair) => pair.attempt = attempt_span(&pair.call, attempt),
            None => {
                let attempt = attempt_span(&Span::none(), attempt);
                if !attempt.is_disabled() {
                    let call = Span::none();
                    self.0 = Some(Box::new(SpanPair { call, attempt }));
                }
            }
        }
    }
}

/// The call's span, for the request path `path`. Its fields are computed only when a subscriber
/// enables it.
fn call_span(path: &str) -> Span {
    tracing::debug_span!(
        "grpc_retry",
        rpc.service =
            crate::retry_policy::split_path(grpc_path(path)).map_or(path, |(service, _)| service),
        rpc.method =
            crate::retry_policy::split_path(grpc_path(path)).map_or("", |(_, method)| method),
    )
}

/// An attempt's span, inside the call's: what the inner service logs while the attempt runs
/// lands in it.
fn attempt_span(call: &Span, attempt: u32) -> Span {
    tracing::debug_span!(parent: call, "attempt", attempt)
}

impl CallPolicy {
    fn resolve<'a>(&'a self, shared: &'a Shared) -> &'a RetryPolicy {
        match self {
            CallPolicy::Table(index) => shared.policies.policy(*index),
            CallPolicy::Own(policy) => policy,
        }
    }
}

impl<S: Clone> Call<S> {
    /// The service for retries, cloned from the spare when the first retry needs it: a call
    /// that succeeds at once clones nothing.
    fn retry_service(&mut self) -> &mut S {
        let spare = Arc::clone(&self.spare);
        self.slow().service.get_or_insert_with(|| {
            spare
                .service
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }
}

impl<S> Call<S> {
    fn policy(&self) -> &RetryPolicy {
        self.policy.resolve(&self.spare.shared)
    }

    /// The call's state off the happy path, allocated the first time it is needed.
    fn slow(&mut self) -> &mut Cold<S> {
        self.slow_pinned().project().cold
    }

    /// The call's one timer.
    fn timer(&mut self) -> Pin<&mut Option<Sleep>> {
        self.slow_pinned().project().timer
    }

    fn slow_pinned(&mut self) -> Pin<&mut Slow<S>> {
        let started = self.started;
        self.slow.get_or_insert_with(|| Slow::new(started)).as_mut()
    }

    /// The call's state off the happy path, if it has any.
    fn cold(&self) -> Option<&Cold<S>> {
        self.slow.as_ref().map(|slow| &slow.cold)
    }

    /// When the attempt in flight started (the call's one, when it is not hedged).
    fn attempt_started(&self) -> Instant {
        self.cold()
            .map_or(self.started, |cold| cold.attempt_started)
    }

    fn deadline(&self) -> Option<Instant> {
        self.cold().and_then(|cold| cold.deadline)
    }

    /// Arms the attempt starting at `now`: see [`Slow::arm_attempt`].
    fn arm_attempt(&mut self, headers: &mut HeaderMap, rewrite: bool, now: Instant) {
        let attempt_timeout = self.policy().attempt_timeout();
        self.slow_pinned()
            .arm_attempt(attempt_timeout, headers, rewrite, now);
    }

    /// The next attempt's request, or why none can be sent: the request can no longer be
    /// replayed, or the call's deadline passed while the service was getting ready (an attempt
    /// never goes out with no time left, which `grpc-timeout` could not even say).
    fn next_request(&mut self) -> Result<Request<Body>, StopReason> {
        let now = Instant::now();
        if self.deadline().is_some_and(|deadline| deadline <= now) {
            return Err(StopReason::Deadline);
        }
        let body = self.body.next_attempt().ok_or(StopReason::BufferLimit)?;
        let mut request = self.head.request(body, &self.spare.origin);
        let cold = self.slow();
        let transparent = cold.transparent;
        let delay_before = cold.delay_before;
        cold.attempt_started = now;
        if let Some(started) = cold.timed_out_attempt.take() {
            request
                .extensions_mut()
                .insert(AfterAttemptTimeout::new(started));
        }
        let headers = request.headers_mut();
        // grpc-go's count: retries before this attempt, this one included if it is one;
        // transparent retries are not retries.
        let retries = self.attempts - u32::from(transparent);
        if retries > 0 {
            headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(retries));
        }
        self.arm_attempt(headers, true, now);
        self.sent += 1;
        self.telemetry
            .attempt_started(AttemptKind::retry(transparent), now);
        let counters = &self.spare.shared.counters;
        if transparent {
            Counters::bump(&counters.transparent_retries);
        } else {
            self.attempts += 1;
            Counters::bump(&counters.retries);
        }
        // Counted now that it has elapsed: a call dropped during its backoff waited less.
        counters.add_retry_delay(delay_before);
        Ok(request)
    }

    /// Which time limit, if any, a failure at `now` hit: the call's deadline (stop, with the last
    /// real outcome) or the attempt's own timeout (a failure to decide on).
    fn timed_out(&mut self, now: Instant, failure: Failure) -> Timeout {
        let Some(cold) = self.cold() else {
            return Timeout::None(failure);
        };
        if cold.deadline.is_some_and(|deadline| now >= deadline) {
            let cut = self.deadline_failure();
            self.record(&cut);
            return Timeout::CallDeadline(self.give_up_at_deadline(cut));
        }
        if cold.attempt_deadline.is_some_and(|end| now >= end) {
            return Timeout::Attempt(self.attempt_timeout_failure());
        }
        Timeout::None(failure)
    }

    /// What the call's deadline did to the attempts it cut.
    fn deadline_failure(&self) -> Failure {
        let timeout = self.cold().and_then(|cold| cold.timeout);
        Failure::local(
            Code::DeadlineExceeded,
            FailureKind::DeadlineExceeded,
            format!("deadline of {:?} exceeded", timeout.unwrap_or_default()),
        )
    }

    /// The caller's error once the deadline passed. An attempt the deadline cut has no outcome
    /// of its own; an earlier attempt's says more about why the call failed than `cut` does.
    fn give_up_at_deadline(&mut self, cut: Failure) -> BoxError {
        let failure = self.slow().last_failure.take().unwrap_or(cut);
        self.give_up(failure, StopReason::Deadline)
    }

    fn attempt_timeout_failure(&self) -> Failure {
        let message = format!(
            "attempt timed out after {:?}",
            self.policy().attempt_timeout().unwrap_or_default()
        );
        Failure::local(Code::DeadlineExceeded, FailureKind::AttemptTimeout, message)
    }

    /// The call committed. Returns the throttle to credit when the call ends OK (gRFC A6
    /// credits calls that end OK, which a Trailers-Only head says at once and trailers say
    /// later), and the call's metrics, which end with it.
    ///
    /// A call that needed more than one attempt carries its history in the response's
    /// extensions; one that passed at once carries nothing, and costs nothing.
    // Inlined into the happy path, which runs it once per call; the hedged path has its own copy.
    #[inline(always)]
    fn passed<B>(
        &mut self,
        response: &mut Response<B>,
        attempt_started: Instant,
    ) -> (Option<crate::RetryThrottle>, CallTelemetry) {
        self.body.commit(&self.spare.shared.buffer_budget);
        let telemetry = self
            .telemetry
            .committed(attempt_started, response.headers());
        if self.sent > 1 {
            let history = self.history(StopReason::Succeeded, None);
            response.extensions_mut().insert(history);
        }
        let throttle = self.spare.shared.gate.throttle().cloned();
        let on_ok = match throttle {
            Some(throttle) if ends_ok(response.headers()) => {
                throttle.record_success();
                None
            }
            throttle => throttle,
        };
        if self.sent > 1 {
            tracing::debug!(attempt = self.sent, "call succeeded after retrying");
        } else {
            tracing::trace!(attempt = 1, "attempt passed");
        }
        (on_ok, telemetry)
    }

    fn after_failure(&mut self, failure: Failure) -> Next {
        self.record(&failure);
        // gRFC A6: every retryable failure takes a token, attempt timeouts and failures that
        // never reached the server included, so that a server that stopped answering engages
        // the throttle too.
        if debits_throttle(self.policy(), &failure) {
            self.spare.shared.gate.on_retryable_failure();
        }
        let replayable = self.body.replayable();
        let attempts = self.attempts;
        let cold = self.slow();
        let progress = Progress {
            attempts,
            backoff_step: cold.backoff_step,
            transparent_used: cold.transparent_used,
            replayable,
            remaining: cold
                .deadline
                .map(|deadline| deadline.saturating_duration_since(Instant::now())),
            random: self.spare.shared.jitter.next_unit(),
        };
        let decision = decide(self.policy(), &failure, progress);
        // The throttle is asked last, once the retry is otherwise certain: a budget spends a
        // token when asked.
        let decision = match decision {
            Decision::Retry {
                transparent: false, ..
            } if !self.spare.shared.gate.permit_retry() => Decision::Stop(StopReason::Throttled),
            decision => decision,
        };
        match decision {
            Decision::Retry {
                delay,
                transparent,
                restart_backoff,
            } => {
                tracing::debug!(
                    attempt = self.sent,
                    code = ?failure.code(),
                    kind = %failure.kind,
                    delay_ms = delay.as_millis() as u64,
                    transparent,
                    "attempt failed; retrying"
                );
                if let Some(hook) = &self.spare.shared.on_retry {
                    let method = grpc_path(self.head.path()).trim_start_matches('/');
                    (hook.0)(&crate::RetryEvent {
                        method,
                        attempt: self.sent,
                        code: failure.code(),
                        message: failure.status.message(),
                        kind: failure.kind,
                        delay,
                        transparent,
                    });
                }
                let cold = self.slow();
                cold.transparent = transparent;
                cold.delay_before = delay;
                if transparent {
                    cold.transparent_used = true;
                } else {
                    cold.backoff_step = if restart_backoff {
                        0
                    } else {
                        cold.backoff_step.saturating_add(1)
                    };
                }
                cold.timed_out_attempt = matches!(
                    failure.kind,
                    FailureKind::AttemptTimeout | FailureKind::TransportTimeout
                )
                .then_some(cold.attempt_started);
                cold.last_failure = Some(failure);
                Next::Retry(delay)
            }
            Decision::Stop(reason) => Next::GiveUp(self.give_up(failure, reason)),
        }
    }

    fn record(&mut self, failure: &Failure) {
        let now = Instant::now();
        let (number, started) = (self.sent, self.started);
        let cold = self.slow();
        let attempt_started = cold.attempt_started;
        cold.history.push(AttemptRecord {
            number,
            code: failure.code(),
            message: failure.status.message().to_owned(),
            kind: failure.kind,
            never_sent: failure.never_sent,
            transparent: cold.transparent,
            started_at: attempt_started.saturating_duration_since(started),
            duration: now.saturating_duration_since(attempt_started),
            delay_before: cold.delay_before,
        });
        self.telemetry
            .attempt_ended(failure.code(), attempt_started, now);
    }

    fn give_up_on_last(&mut self, reason: StopReason) -> BoxError {
        match self.slow().last_failure.take() {
            Some(failure) => self.give_up(failure, reason),
            None => "tonic-retry: no attempt to report".into(),
        }
    }

    /// The caller's error: the last attempt's status, unchanged, with the history as its source.
    fn give_up(&mut self, failure: Failure, reason: StopReason) -> BoxError {
        self.telemetry.call_ended(failure.code());
        let counters = &self.spare.shared.counters;
        match reason {
            StopReason::FailFast => Counters::bump(&counters.fail_fast),
            StopReason::AttemptsExhausted => Counters::bump(&counters.exhausted),
            StopReason::Throttled => Counters::bump(&counters.throttled),
            _ => {}
        }
        tracing::debug!(
            attempts = self.sent,
            code = ?failure.code(),
            kind = %failure.kind,
            reason = %reason,
            "giving up"
        );
        let status = with_history(failure.status, |cause| self.history(reason, cause));
        Box::new(status)
    }

    /// The call's history so far, taken out of the call.
    fn history(&mut self, stop: StopReason, cause: Option<tonic::Status>) -> CallHistory {
        let path = grpc_path(self.head.path())
            .trim_start_matches('/')
            .to_owned();
        let target = match self.head.authority(&self.spare.origin) {
            Some(authority) => Some(authority.to_string()),
            None => self.spare.target.as_deref().map(str::to_owned),
        };
        CallHistory {
            path,
            target,
            attempts: std::mem::take(&mut self.slow().history),
            sent: self.sent,
            stop,
            elapsed: self.started.elapsed(),
            cause,
        }
    }
}

impl<S> std::fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<Body>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("path", &self.call.head.path())
            .field("attempts", &self.call.sent)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every in-flight call holds its future, and building it moves it: what the happy path
    /// does not need lives in the `Slow` box. (It was 760 bytes over a `Channel`, then 336; the
    /// request head is most of what is left, and a retry needs it.)
    #[test]
    fn the_call_future_stays_small() {
        let size = std::mem::size_of::<ResponseFuture<tonic::transport::Channel>>();
        eprintln!(
            "ResponseFuture<Channel>: {size} B; Call: {} B; head: {} B; body: {} B; Slow: {} B",
            std::mem::size_of::<Call<tonic::transport::Channel>>(),
            std::mem::size_of::<RequestHead>(),
            std::mem::size_of::<CallBody>(),
            std::mem::size_of::<Slow<tonic::transport::Channel>>(),
        );
        // The OpenTelemetry recorder adds the call's method and target labels.
        let limit = if cfg!(feature = "opentelemetry") {
            256
        } else {
            248
        };
        assert!(size <= limit, "ResponseFuture<Channel> is {size} bytes");
    }
}
