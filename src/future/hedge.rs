//! A hedged call (gRFC A6 `hedgingPolicy`): several attempts of one call in flight at once.
//!
//! ```text
//! start ─> first attempt ──(delay, or a non-fatal status)──> hedge ... up to max_attempts
//!              │
//!              ├─ any attempt's response headers (or OK) ─> commit to it, cancel the others
//!              ├─ a fatal status ────────────────────────> commit to it: the caller's error
//!              └─ all failed, nothing more to send ──────> the last failure
//! ```
//!
//! The attempts read one request through the replay body's hedged readers; the call's deadline
//! bounds them all. Dropping an attempt's future cancels it (the transport resets its stream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Code;
use tonic::body::Body;
use tower::Service;

use super::{Call, GRPC_PREVIOUS_RPC_ATTEMPTS};
use crate::BoxError;
use crate::body::{FIRST_READER, ReaderId};
use crate::classify::{Classified, Failure, Pushback, classify_response, classify_service_error};
use crate::deadline::arm_timer;
use crate::history::{AttemptRecord, StopReason};
use crate::kind::FailureKind;
use crate::metrics::Counters;
use crate::response_body::ResponseBody;
use crate::retry_policy::{HedgingPolicy, MAX_SERVER_DELAY};
use crate::telemetry::AttemptKind;

/// The attempts of a hedged call and when the next may go out.
#[pin_project(project = HedgesProj)]
pub(super) struct Hedges<F> {
    policy: HedgingPolicy,
    in_flight: Vec<InFlight<F>>,
    /// When the next hedge goes out, unless one of the attempts answers first.
    next_at: Instant,
    /// Why no more hedges go out, once something said so.
    stop: Option<StopReason>,
    /// Armed for `next_at` while attempts wait for it.
    #[pin]
    timer: Option<Sleep>,
}

/// One attempt in flight.
struct InFlight<F> {
    future: Pin<Box<F>>,
    reader: ReaderId,
    /// Its number among the call's attempts, from 1.
    number: u32,
    started: Instant,
}

impl<F> Hedges<F> {
    /// The hedges of a call whose first attempt, `first`, went out at `started`.
    #[cold]
    pub(super) fn start(policy: HedgingPolicy, first: F, started: Instant) -> Pin<Box<Hedges<F>>> {
        let next_at = started
            .checked_add(policy.current_delay())
            .unwrap_or(started);
        let stop = started
            .checked_add(policy.current_delay())
            .is_none()
            .then_some(StopReason::AttemptsExhausted);
        let mut in_flight = Vec::with_capacity(policy.max_attempts() as usize);
        in_flight.push(InFlight {
            future: Box::pin(first),
            reader: FIRST_READER,
            number: 1,
            started,
        });
        Box::pin(Hedges {
            policy,
            in_flight,
            next_at,
            stop,
            timer: None,
        })
    }
}

/// Drives a hedged call until one attempt commits it or none is left. Never inlined: the
/// retrying call's state machine stays as small as it was without hedging.
#[inline(never)]
pub(super) fn poll<S, B>(
    hedges: Pin<&mut Hedges<S::Future>>,
    call: &mut Call<S>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody<B>>, BoxError>>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    let mut this = hedges.project();
    loop {
        // The call's deadline bounds every attempt.
        if call.deadline().is_some()
            && let Some(timer) = call.timer().as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            cancel_all(this.in_flight, call);
            let cut = call.deadline_failure();
            return Poll::Ready(Err(call.give_up_at_deadline(cut)));
        }

        let mut index = 0;
        while index < this.in_flight.len() {
            let outcome = match this.in_flight[index].future.as_mut().poll(cx) {
                Poll::Pending => {
                    index += 1;
                    continue;
                }
                Poll::Ready(Ok(response)) => classify_response(response),
                Poll::Ready(Err(error)) => Classified::Failed(classify_service_error(error.into())),
            };
            let attempt = this.in_flight.swap_remove(index);
            match outcome {
                // An attempt cut from the request (it outgrew the buffer while this one lagged)
                // cannot send it whole, whatever it heard: only the one that reads on may win.
                Classified::Pass(_) if !call.body.reader_live(attempt.reader) => {
                    let cut = Failure::local(
                        Code::Cancelled,
                        FailureKind::RequestBodyFailed,
                        "request outgrew the replay buffer while another hedge read ahead".into(),
                    );
                    if let Some(error) = failed(&mut this, call, attempt, cut) {
                        return Poll::Ready(Err(error));
                    }
                }
                Classified::Pass(mut response) => {
                    let now = Instant::now();
                    this.policy
                        .record_latency(now.saturating_duration_since(attempt.started));
                    // Dropping the losers cancels them. Their time so far is not a latency: a loser
                    // cut at the delay plus the winner's time, taken as one, would pull the
                    // percentile up by that much at every recompute, a ratchet.
                    for loser in this.in_flight.drain(..) {
                        call.telemetry
                            .attempt_ended(Code::Cancelled, loser.started, now);
                    }
                    call.body
                        .commit_to(attempt.reader, &call.spare.shared.buffer_budget);
                    let (on_ok, telemetry) = call.passed(&mut response, attempt.started);
                    return Poll::Ready(Ok(
                        response.map(|body| ResponseBody::new(body, on_ok, telemetry))
                    ));
                }
                Classified::Failed(failure) => {
                    if let Some(error) = failed(&mut this, call, attempt, failure) {
                        return Poll::Ready(Err(error));
                    }
                }
            }
        }

        let now = Instant::now();
        if this.stop.is_none() {
            if call.attempts >= this.policy.max_attempts() {
                *this.stop = Some(StopReason::AttemptsExhausted);
            } else if !call.body.replayable() {
                *this.stop = Some(StopReason::BufferLimit);
            } else if call.deadline().is_some_and(|deadline| deadline <= now) {
                *this.stop = Some(StopReason::Deadline);
            }
        }
        if let Some(reason) = *this.stop {
            if this.in_flight.is_empty() {
                return Poll::Ready(Err(call.give_up_on_last(reason)));
            }
            // Wait for the attempts in flight: they were polled above.
            return Poll::Pending;
        }

        if *this.next_at > now {
            arm_timer(this.timer.as_mut(), *this.next_at);
            if let Some(timer) = this.timer.as_mut().as_pin_mut()
                && timer.poll(cx).is_ready()
            {
                continue;
            }
            return Poll::Pending;
        }

        // A hedge is due. gRFC A6: the throttle counts hedges as it counts retries.
        if !this.policy.permit_hedge() || !call.spare.shared.gate.permit_retry() {
            *this.stop = Some(StopReason::Throttled);
            continue;
        }
        match call.retry_service().poll_ready(cx) {
            // The attempts in flight and the deadline were polled above: any of them wakes us.
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => {
                // The service cannot take more attempts; those in flight go on.
                call.slow().last_failure = Some(classify_service_error(error.into()));
                *this.stop = Some(StopReason::NotRetryable);
                continue;
            }
            Poll::Ready(Ok(())) => {}
        }
        let Some((body, reader)) = call.body.hedge_attempt() else {
            *this.stop = Some(StopReason::BufferLimit);
            continue;
        };
        let mut request = call.head.request(body, &call.spare.origin);
        let headers = request.headers_mut();
        headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(call.attempts));
        call.arm_attempt(headers, true, now);
        let future = call.retry_service().call(request);
        call.attempts += 1;
        call.sent += 1;
        call.telemetry.attempt_started(AttemptKind::Hedge, now);
        let counters = &call.spare.shared.counters;
        Counters::bump(&counters.hedges);
        tracing::debug!(attempt = call.sent, "sending a hedged attempt");
        this.in_flight.push(InFlight {
            future: Box::pin(future),
            reader,
            number: call.sent,
            started: now,
        });
        match now.checked_add(this.policy.current_delay()) {
            Some(next_at) => *this.next_at = next_at,
            None => *this.stop = Some(StopReason::AttemptsExhausted),
        }
    }
}

/// An attempt failed: record it, and decide whether it ends the call (returned: the caller's
/// error) or lets the next hedge go out.
fn failed<S, F>(
    this: &mut HedgesProj<'_, F>,
    call: &mut Call<S>,
    attempt: InFlight<F>,
    failure: Failure,
) -> Option<BoxError> {
    call.body.close_reader(attempt.reader);
    let now = Instant::now();
    let started = call.started;
    call.slow().history.push(AttemptRecord {
        number: attempt.number,
        code: failure.code(),
        message: failure.status.message().to_owned(),
        kind: failure.kind,
        never_sent: failure.never_sent,
        transparent: false,
        started_at: attempt.started.saturating_duration_since(started),
        duration: now.saturating_duration_since(attempt.started),
        delay_before: Duration::ZERO,
    });
    call.telemetry
        .attempt_ended(failure.code(), attempt.started, now);
    // A request that outgrew the replay buffer keeps only the attempt that read furthest: the
    // others were cut, and say nothing about the call.
    if failure.kind == FailureKind::RequestBodyFailed
        && !call.body.replayable()
        && !this.in_flight.is_empty()
    {
        return None;
    }
    let non_fatal = !failure.retry_cannot_help()
        && (failure.never_sent || this.policy.non_fatal_codes().contains(failure.code()));
    if !non_fatal {
        // A fatal status commits the call to it: the others are cancelled, and their readers
        // cut, so that nothing of the request stays held for them.
        cancel_all(this.in_flight, call);
        call.body
            .commit_to(attempt.reader, &call.spare.shared.buffer_budget);
        let reason = if call.policy().fail_fast_codes().contains(failure.code()) {
            StopReason::FailFast
        } else {
            StopReason::NotRetryable
        };
        return Some(call.give_up(failure, reason));
    }
    call.spare.shared.gate.on_retryable_failure();
    match failure.pushback {
        // A non-fatal status lets the next hedge go out at once.
        Pushback::None => *this.next_at = now.min(*this.next_at),
        // The server's pushback delays the next hedge, whatever the delay said.
        Pushback::Wait(delay) => match now.checked_add(delay.min(MAX_SERVER_DELAY)) {
            Some(at) => *this.next_at = at,
            None => *this.stop = Some(StopReason::Pushback),
        },
        Pushback::Stop => *this.stop = Some(StopReason::Pushback),
    }
    call.slow().last_failure = Some(failure);
    None
}

/// Drops the attempts in flight, which cancels them.
fn cancel_all<S, F>(in_flight: &mut Vec<InFlight<F>>, call: &mut Call<S>) {
    let now = Instant::now();
    for attempt in in_flight.drain(..) {
        call.telemetry
            .attempt_ended(Code::Cancelled, attempt.started, now);
    }
}
